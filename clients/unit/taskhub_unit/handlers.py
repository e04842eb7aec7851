"""Built-in handlers, and how `--handler` names one.

- `data_processing`: the seed's DATA_PROCESSING example, `{"inputFile": "data.csv",
  "outputFormat": "json"}`: read the input (csv, tsv, json, jsonl), write it in the output format
  (json, jsonl, csv, tsv) to `outputFile` (default: the input's name with the new extension).
  Paths are relative to the unit's `--data-dir` and may not leave it.
- `sleep`: `{"seconds": 1, "steps": 10}` sleeps with progress and logs; `{"fail": "retryable"}`
  or `{"fail": "permanent"}` fails on purpose, `{"failAttempts": n}` fails the first n attempts.
- `echo`: logs `config.message` and returns the config.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskhub_unit.context import NonRetryableError, TaskContext

Handler = Callable[[TaskContext], Any]

INPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
OUTPUT_FORMATS = ("json", "jsonl", "csv", "tsv")


def sleep(ctx: TaskContext) -> Any:
    config = ctx.config
    try:
        seconds = float(config.get("seconds", 1.0))
        steps = max(1, int(config.get("steps", 10)))
    except (TypeError, ValueError) as exc:
        raise NonRetryableError(f"config.seconds/steps must be numbers: {exc}") from None
    fail = str(config.get("fail", "") or "")
    fail_attempts = int(config.get("failAttempts", 0) or 0)
    ctx.logger.info("sleeping %.2fs in %d steps on %s", seconds, steps, ctx.unit_id)
    for step in range(1, steps + 1):
        if ctx.sleep(seconds / steps):
            ctx.logger.warning("stopped early: %s", ctx.cancel_reason)
            return None
        ctx.progress(step * 100 / steps)
    if fail == "permanent":
        raise NonRetryableError("failing on purpose (config.fail = permanent)")
    if fail == "retryable" or ctx.attempt <= fail_attempts:
        raise RuntimeError(f"failing on purpose (attempt {ctx.attempt})")
    ctx.logger.info("done")
    return {"slept": seconds, "unit": ctx.unit_id, "attempt": ctx.attempt}


def echo(ctx: TaskContext) -> Any:
    message = ctx.config.get("message", "")
    ctx.logger.info("echo: %s", message)
    ctx.progress(100)
    return {"echo": ctx.config, "unit": ctx.unit_id}


def _inside(base: Path, name: Any, what: str) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise NonRetryableError(f"config.{what} is required (a file name under the unit's data directory)")
    root = base.resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise NonRetryableError(f"config.{what} {name!r} is outside the unit's data directory")
    return path


def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        if fmt in ("csv", "tsv"):
            return list(csv.DictReader(fh, delimiter="," if fmt == "csv" else "\t"))
        if fmt == "jsonl":
            rows = [json.loads(line) for line in fh if line.strip()]
        else:
            data = json.load(fh)
            rows = data if isinstance(data, list) else [data]
    if not all(isinstance(row, dict) for row in rows):
        raise NonRetryableError(f"{path.name}: every record must be a JSON object")
    return rows


def _write_rows(rows: list[dict[str, Any]], path: Path, fmt: str, ctx: TaskContext) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            if fmt == "json":
                json.dump(rows, fh, ensure_ascii=False, indent=2)
                fh.write("\n")
            elif fmt == "jsonl":
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                writer = csv.DictWriter(fh, fieldnames=columns, delimiter="," if fmt == "csv" else "\t")
                writer.writeheader()
                for index, row in enumerate(rows, 1):
                    writer.writerow({k: _cell(v) for k, v in row.items()})
                    if index % 1000 == 0:
                        ctx.progress(50 + 45 * index / len(rows))
        os.replace(tmp, path)  # readers never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return columns


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def data_processing(ctx: TaskContext) -> Any:
    config = ctx.config
    source = _inside(ctx.data_dir, config.get("inputFile"), "inputFile")
    out_format = str(config.get("outputFormat", "json")).lower()
    if out_format not in OUTPUT_FORMATS:
        raise NonRetryableError(f"config.outputFormat {out_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    in_format = INPUT_FORMATS.get(source.suffix.lower())
    if in_format is None:
        raise NonRetryableError(f"cannot read {source.name}: known input types are {', '.join(INPUT_FORMATS)}")
    if not source.is_file():
        raise NonRetryableError(f"input file not found: {config.get('inputFile')} (in {ctx.data_dir})")
    default_out = source.with_suffix(f".{out_format}")
    if default_out == source:
        default_out = source.with_suffix(f".out.{out_format}")
    target = _inside(ctx.data_dir, config.get("outputFile") or str(default_out), "outputFile")
    ctx.logger.info("reading %s (%s)", source.name, in_format)
    ctx.progress(5)
    try:
        rows = _read_rows(source, in_format)
    except (ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise NonRetryableError(f"cannot parse {source.name} as {in_format}: {exc}") from None
    ctx.logger.info("read %d record(s)", len(rows))
    ctx.progress(50)
    ctx.raise_if_cancelled()
    columns = _write_rows(rows, target, out_format, ctx)
    ctx.progress(100)
    ctx.logger.info("wrote %d record(s) to %s (%s)", len(rows), target.name, out_format)
    return {
        "inputFile": str(config.get("inputFile")),
        "outputFile": str(target.relative_to(ctx.data_dir.resolve())),
        "outputFormat": out_format,
        "records": len(rows),
        "columns": columns,
        "bytes": target.stat().st_size,
    }


BUILTINS: dict[str, Handler] = {"data_processing": data_processing, "sleep": sleep, "echo": echo}
DEFAULT_BY_TYPE: dict[str, str] = {"DATA_PROCESSING": "data_processing"}


def resolve_handler(spec: str | None, unit_type: str) -> Handler:
    """`sleep` / `echo` / `data_processing` (built-ins) or `package.module:function`; none given:
    the built-in for the unit type (DATA_PROCESSING -> data_processing)."""
    name = (spec or "").strip() or DEFAULT_BY_TYPE.get(unit_type, "")
    if not name:
        raise ValueError(
            f"no built-in handler for unit type {unit_type}; pass --handler package.module:function "
            f"(built-ins: {', '.join(BUILTINS)})"
        )
    if name in BUILTINS:
        return BUILTINS[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--handler {name!r}: use a built-in ({', '.join(BUILTINS)}) or package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--handler {name!r}: cannot import {module_name}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"--handler {name!r}: {module_name} has no attribute {attr}")
    if not callable(target):
        raise ValueError(f"--handler {name!r} is not callable")
    return target  # type: ignore[no-any-return]
