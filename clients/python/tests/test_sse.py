"""The SSE parser on raw byte streams: the cases of the WHATWG standard's event stream
interpretation, each fed whole and split at every byte boundary (a network delivers any split)."""

from __future__ import annotations

import pytest

from taskhub_client.sse import RawEvent, SSEDecoder


def parse(stream: bytes, *, split: int | None = None) -> tuple[list[RawEvent], SSEDecoder]:
    decoder = SSEDecoder()
    chunks = [stream] if split is None else [stream[:split], stream[split:]]
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events, decoder


def every_split(stream: bytes) -> list[tuple[list[RawEvent], SSEDecoder]]:
    return [parse(stream)] + [parse(stream, split=n) for n in range(1, len(stream))]


def byte_by_byte(stream: bytes) -> list[RawEvent]:
    decoder = SSEDecoder()
    return [event for n in range(len(stream)) for event in decoder.feed(stream[n : n + 1])]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending_ends_lines_and_events(ending: bytes) -> None:
    stream = ending.join([b"id: 1", b"event: status", b'data: {"taskId": 7}', b"", b"data: second", b"", b""])
    for events, _ in every_split(stream):
        assert events == [RawEvent("1", "status", '{"taskId": 7}'), RawEvent("1", "message", "second")]
    assert byte_by_byte(stream) == every_split(stream)[0][0]


def test_a_cr_and_an_lf_split_over_two_chunks_are_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the LF a second line ending, it would dispatch "a" here, before the blank line below.
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r\n") == [RawEvent("", "message", "a\nb")]


def test_data_lines_join_with_line_feeds_and_one_space_after_the_colon_is_dropped() -> None:
    stream = b"data:no space\ndata:  two spaces\ndata\ndata: last\n\n"
    for events, _ in every_split(stream):
        assert events == [RawEvent("", "message", "no space\n two spaces\n\nlast")]


def test_comments_and_keepalives_dispatch_nothing() -> None:
    stream = b": keep-alive\n\n:\n\ndata: x\n: a comment inside an event\n\n"
    for events, _ in every_split(stream):
        assert events == [RawEvent("", "message", "x")]


def test_a_blank_line_with_no_data_dispatches_nothing_but_resets_the_event_type() -> None:
    stream = b"event: ignored\n\ndata: y\n\n"
    for events, _ in every_split(stream):
        assert events == [RawEvent("", "message", "y")]


def test_an_empty_data_field_is_an_event_with_empty_data() -> None:
    for events, _ in every_split(b"data\n\ndata:\n\n"):
        assert events == [RawEvent("", "message", ""), RawEvent("", "message", "")]


def test_the_id_persists_across_events_and_an_empty_id_resets_it() -> None:
    stream = b"id: 5\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"
    for events, decoder in every_split(stream):
        assert [(e.id, e.data) for e in events] == [("5", "a"), ("5", "b"), ("", "c")]
        assert decoder.last_event_id == ""


def test_an_id_holding_nul_is_ignored() -> None:
    for events, _ in every_split(b"id: 3\ndata: a\n\nid: 4\x005\ndata: b\n\n"):
        assert [e.id for e in events] == ["3", "3"]


def test_an_id_only_block_moves_the_last_event_id_without_an_event() -> None:
    events, decoder = parse(b"id: 9\n\n")
    assert events == [] and decoder.last_event_id == "9"


def test_the_last_event_id_moves_only_when_its_event_is_complete() -> None:
    # The reconnection must ask again for an event whose blank line never arrived.
    decoder = SSEDecoder("4")
    assert decoder.feed(b"id: 5\ndata: cut off") == []
    assert decoder.last_event_id == "4"
    assert SSEDecoder(decoder.last_event_id).feed(b"id: 5\ndata: whole\n\n") == [RawEvent("5", "message", "whole")]


def test_retry_takes_only_ascii_digits() -> None:
    for stream, expected in [
        (b"retry: 2500\n\n", 2500),
        (b"retry: 2500\nretry: 1.5\n\n", 2500),
        (b"retry: -1\n\n", None),
        (b"retry:\n\n", None),
        (b"retry: \xd9\xa3\n\n", None),  # ARABIC-INDIC DIGIT THREE: a digit, but not ASCII
    ]:
        for _, decoder in every_split(stream):
            assert decoder.retry_ms == expected, stream


def test_unknown_fields_are_ignored_and_a_field_without_colon_has_an_empty_value() -> None:
    for events, _ in every_split(b"foo: bar\nevent\ndata: z\n\n"):
        assert events == [RawEvent("", "message", "z")]


def test_an_event_without_its_blank_line_at_the_end_of_the_stream_is_not_dispatched() -> None:
    for events, _ in every_split(b"data: complete\n\ndata: incomplete\n"):
        assert events == [RawEvent("", "message", "complete")]


def test_a_leading_bom_is_dropped_once_even_split_across_chunks() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    for events, _ in every_split(stream):
        # The second BOM is inside the stream: it makes the field name "\ufeffdata", an unknown field.
        assert events == [RawEvent("", "message", "a")]
    assert byte_by_byte(stream) == [RawEvent("", "message", "a")]


def test_utf8_split_inside_a_character_is_decoded_whole() -> None:
    stream = "data: 任务 ✓\n\n".encode()
    for events, _ in every_split(stream):
        assert events == [RawEvent("", "message", "任务 ✓")]
