"""The outcome spool: a result survives the unit's death between its handler's return and the hub's
answer to the report.

Under `--data-dir`, in `.taskhub-unit/<unit id>/`: the agent writes each final outcome (complete or
fail, with its task id and attempt) to its own file, fsynced, before the reporter may send it, and
removes it once the hub has answered (accepted, a repeat of the accepted one, or refused as stale).
It keeps there too what the next process of this unit needs to replay them: its instance id and
its unit token, the token sealed with the enrolment key (HMAC-SHA256 keystream and tag): useless
to whoever reads the data dir without that key, and whoever has the key may register the unit
and get a token anyway. Files are readable by the owner only. A process that starts with spooled
outcomes sends them with that token before it registers (registering fails over every attempt the
unit held): the hub fences them as any report, so a stale one is refused and one already applied
is answered again and never applied twice. The handler does not run again for a replayed result.

One process per spool: a lock file (flock) held for the life of the process. A second process
with the same data dir and unit id runs without a spool (and says so). Without `--data-dir` there is
no spool, and the agent says in its log that a crash after a handler returns loses that result.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

log = logging.getLogger("taskhub_unit.agent")

SPOOL_DIR = ".taskhub-unit"
_OUTCOME = re.compile(r"^outcome-(\d+)-(\d+)\.json$")


def _write_durably(path: Path, data: dict[str, Any]) -> None:
    """Write `path` whole or not at all, on disk when this returns: a temporary file, fsync, rename,
    fsync of the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _stream(key: bytes, salt: bytes, n: int) -> bytes:
    blocks = (hmac.new(key, salt + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range(n // 32 + 1))
    return b"".join(blocks)[:n]


def seal(secret: str, key: str) -> str:
    """`secret` encrypted and authenticated with `key` (no dependency beyond the standard library)."""
    raw, salt, k = secret.encode("utf-8"), secrets.token_bytes(16), hashlib.sha256(key.encode("utf-8")).digest()
    body = bytes(a ^ b for a, b in zip(raw, _stream(k, salt, len(raw)), strict=True))
    tag = hmac.new(k, b"tag" + salt + body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(salt + tag + body).decode("ascii")


def unseal(sealed: str, key: str) -> str:
    """What `seal` sealed, or "" if it was sealed with another key (or is damaged)."""
    try:
        data = base64.urlsafe_b64decode(sealed.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return ""
    salt, tag, body = data[:16], data[16:32], data[32:]
    k = hashlib.sha256(key.encode("utf-8")).digest()
    if len(salt) < 16 or not hmac.compare_digest(tag, hmac.new(k, b"tag" + salt + body, hashlib.sha256).digest()[:16]):
        return ""
    raw = bytes(a ^ b for a, b in zip(body, _stream(k, salt, len(body)), strict=True))
    return raw.decode("utf-8", errors="replace")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool of one unit id under a data dir; `Spool(None, ...)` is none at all (a no-op)."""

    def __init__(self, data_dir: Path | None, unit_id: str) -> None:
        self.directory: Path | None = data_dir / SPOOL_DIR / unit_id if data_dir is not None else None
        self._lock_fd: int | None = None
        self.unit_id = unit_id

    @property
    def enabled(self) -> bool:
        return self._lock_fd is not None

    def open(self) -> bool:
        """Take the spool for this process. False (and a log line) when there is none to take."""
        if self.directory is None:
            log.warning(
                "no --data-dir: results are not spooled to disk; a result whose handler returned "
                "just before this process dies is lost (the task runs again)"
            )
            return False
        import fcntl  # POSIX; a platform without it runs without a spool

        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot use the spool in %s (%s): results are not spooled", self.directory, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning(
                "another process uses the spool in %s (same --data-dir and --id): this one runs without a spool",
                self.directory,
            )
            return False
        self._lock_fd = fd
        log.info("spooling results in %s", self.directory)
        return True

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # --- the process before this one -----------------------------------------------------------

    def state(self, key: str) -> dict[str, Any]:
        """What the last process of this unit left: {"instanceId", "token"} (empty if nothing; no
        token if it was sealed with another enrolment key than `key`)."""
        if not self.enabled or self.directory is None:
            return {}
        try:
            data = json.loads((self.directory / "state.json").read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        token = unseal(str(data.get("sealedToken") or ""), key)
        return {"instanceId": str(data.get("instanceId") or ""), **({"token": token} if token else {})}

    def save_state(self, instance_id: str, token: str, key: str) -> None:
        """Keep the instance id and the unit token (sealed with the enrolment key `key`)."""
        if self.enabled and self.directory is not None:
            state = {"instanceId": instance_id, "sealedToken": seal(token, key)}
            _write_durably(self.directory / "state.json", state)

    # --- outcomes ------------------------------------------------------------------------------

    def _path(self, task_id: int, attempt: int) -> Path:
        assert self.directory is not None
        return self.directory / f"outcome-{int(task_id)}-{int(attempt)}.json"

    def save(self, task_id: int, attempt: int, what: str, body: dict[str, Any]) -> None:
        """Spool a final outcome (`what`: complete or fail; `body`: its report), durably."""
        if self.enabled:
            _write_durably(self._path(task_id, attempt), {"taskId": task_id, "what": what, "body": body})

    def remove(self, task_id: int, attempt: int) -> None:
        if self.enabled:
            with contextlib.suppress(FileNotFoundError):
                self._path(task_id, attempt).unlink()

    def pending(self) -> list[dict[str, Any]]:
        """The spooled outcomes as batch report items (POST /tasks/reports), oldest task first."""
        if not self.enabled or self.directory is None:
            return []
        items = []
        for path in sorted(self.directory.iterdir()):
            match = _OUTCOME.match(path.name)
            if not match:
                continue
            try:
                data = json.loads(path.read_text("utf-8"))
                what, body = str(data["what"]), dict(data["body"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable spooled outcome %s: removed", path.name)
                path.unlink(missing_ok=True)
                continue
            item: dict[str, Any] = {"taskId": int(match[1]), "attempt": int(match[2]), "outcome": what}
            if what == "complete":
                item["result"] = body.get("result")
            else:
                item["error"] = str(body.get("error") or "failed")
                item["retryable"] = bool(body.get("retryable", True))
            items.append(item)
        return items
