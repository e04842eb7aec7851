"""A Server-Sent Events parser, as the WHATWG HTML standard's "event stream interpretation"
(section 9.2.6) says, fed raw bytes as they arrive.

What the standard asks and this does: lines end in CRLF, LF or CR (a CR at the end of one chunk
and an LF at the start of the next are one line ending); a leading UTF-8 BOM is dropped; a line
starting with ":" is a comment (keep-alives); `field: value` loses one space after the colon, a
line without a colon is a field with an empty value; `data` lines join with LF; `id` sets the last
event id (kept across events, ignored when it holds NUL); `retry` of ASCII digits only sets the
reconnection time; other fields are ignored; a blank line dispatches the event, unless its data
is empty; an event not ended by a blank line when the stream ends is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class RawEvent:
    id: str  # the last event id at dispatch (the standard's lastEventId; "" when none was set)
    event: str  # the event type ("message" when the stream named none)
    data: str


class SSEDecoder:
    """One per connection: an event still open when its connection ends is dropped with it. The
    last event id and reconnection time outlive it (the caller passes them to the next one)."""

    def __init__(self, last_event_id: str = "") -> None:
        # The standard's "last event ID string": what a reconnection sends as Last-Event-ID. It
        # takes the id buffer's value only at a blank line, so an event cut off mid-way (its `id:`
        # line received, its blank line not) is asked for again rather than skipped.
        self.last_event_id = last_event_id
        self._id = last_event_id
        self.retry_ms: int | None = None  # the last valid `retry:`; None until the stream sends one
        self._buffer = b""
        self._started = False
        self._cr_pending = False  # the previous chunk ended in CR: an LF opening this one is its pair
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[RawEvent]:
        """The events completed by `chunk`."""
        if not self._started:
            self._buffer += chunk
            if len(self._buffer) < len(BOM) and BOM.startswith(self._buffer):
                return []  # could still be a BOM split over chunks
            self._started = True
            chunk, self._buffer = self._buffer.removeprefix(BOM), b""
        if self._cr_pending and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        events: list[RawEvent] = []
        data = self._buffer + chunk
        start = 0
        for match in _LINE_END.finditer(data):
            event = self._line(data[start : match.start()].decode("utf-8", errors="replace"))
            start = match.end()
            if event is not None:
                events.append(event)
        # A CR closing the chunk ended its line; an LF opening the next chunk belongs to it.
        self._cr_pending = data.endswith(b"\r")
        self._buffer = data[start:]
        return events

    def _line(self, line: str) -> RawEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> RawEvent | None:
        self.last_event_id = self._id
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return RawEvent(id=self.last_event_id, event=event or "message", data="\n".join(data))
