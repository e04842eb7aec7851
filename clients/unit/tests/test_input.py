"""Typed handler input: what `parse_input` accepts, and how a config that does not fit is named."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from taskhub_unit import InvalidInput, NonRetryableError, TaskContext
from taskhub_unit._input import parse_input
from taskhub_unit.worker import bind


class Fmt(enum.Enum):
    JSON = "json"
    CSV = "csv"


@dataclass
class Window:
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("end is before start")


@dataclass
class Job:
    input_file: str
    ratio: float = 1.0
    fmt: Fmt = Fmt.JSON
    mode: Literal["fast", "exact"] = "fast"
    tags: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    window: Window | None = None
    extra: Any = None


def test_a_config_fits_its_dataclass_with_camel_case_keys_and_defaults() -> None:
    job = parse_input(Job, {"inputFile": "a.csv", "ratio": 2, "fmt": "csv", "window": {"start": 1, "end": 3}})
    assert job == Job("a.csv", 2.0, Fmt.CSV, window=Window(1, 3))
    assert isinstance(job.ratio, float)
    assert parse_input(Job, {"input_file": "b.csv", "unknown": 1}).input_file == "b.csv"  # unknown keys ignored


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({}, "config.inputFile", "is required"),
        ({"inputFile": 3}, "config.inputFile", "expected a string, got 3"),
        ({"inputFile": "a", "ratio": True}, "config.ratio", "expected a number"),
        ({"inputFile": "a", "fmt": "xml"}, "config.fmt", "must be one of 'json', 'csv'"),
        ({"inputFile": "a", "mode": "slow"}, "config.mode", "must be one of 'fast', 'exact'"),
        ({"inputFile": "a", "tags": ["x", 2]}, "config.tags[1]", "expected a string"),
        ({"inputFile": "a", "limits": {"rows": "many"}}, "config.limits.rows", "expected an integer"),
        ({"inputFile": "a", "window": {"start": 1}}, "config.window.end", "is required"),
        ({"inputFile": "a", "window": {"start": 5, "end": 1}}, "config.window", "end is before start"),
        ([1, 2], "config", "expected an object"),
    ],
)
def test_a_config_that_does_not_fit_names_the_field(config: Any, field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_input(Job, config)
    assert caught.value.field == field
    assert says in caught.value.problem


def ctx(config: Any) -> TaskContext:
    return TaskContext({"id": 7, "attempt": 2, "config": config})


def test_a_typed_handler_gets_its_input_parsed_and_a_bad_one_never_runs_it() -> None:
    calls: list[tuple[Job, int]] = []

    def handle(job: Job, ctx: TaskContext) -> str:
        calls.append((job, ctx.attempt))
        return job.input_file

    call = bind(handle)
    assert call(ctx({"inputFile": "a.csv"})) == "a.csv" and calls == [(Job("a.csv"), 2)]
    with pytest.raises(NonRetryableError, match=r"invalid input: config\.inputFile: is required"):
        call(ctx({"ratio": 1}))
    assert len(calls) == 1


def test_the_input_type_may_be_given_and_a_dict_or_no_annotation_passes_the_config() -> None:
    given = bind(lambda job, ctx: job, Job)
    assert given(ctx({"inputFile": "x"})) == Job("x")

    def raw(config: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return config

    assert bind(raw)(ctx({"a": 1})) == {"a": 1}
    plain = bind(lambda ctx: ctx.id)
    assert plain(ctx({})) == 7


def test_a_handler_of_the_wrong_shape_is_refused_when_registered() -> None:
    with pytest.raises(TypeError, match="must take"):
        bind(lambda: None)
    with pytest.raises(TypeError, match="takes only"):
        bind(lambda ctx: None, Job)
    with pytest.raises(TypeError, match="not a dataclass"):
        bind(lambda job, ctx: None, int)
