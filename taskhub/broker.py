"""The embedded default's Celery broker: kombu's filesystem transport, with atomic message files.

kombu's own `_put` creates `<time>_<uuid>.<queue>.msg` and then writes into it, so a worker listing
the folder in between moves and reads an empty or half-written file and dies on the JSON
(`JSONDecodeError` in `_get`, seen as a Celery worker exiting and `make run` stopping the hub).
Here a message is written under a name no reader matches and renamed into place: a rename within
one directory is atomic, so a reader sees a whole message or none. Registered under kombu's
`filesystem` alias (taskhub/celery.py), so `filesystem://` URLs use it in every process.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's name: read in order
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # matches no queue's pattern
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
