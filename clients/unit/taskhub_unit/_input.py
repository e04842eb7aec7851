"""Typed handler input: a task's `config` checked against a dataclass before the handler runs.

`parse_input(Model, config)` returns a `Model` or raises `InvalidInput` naming the first field that
is wrong, as the config spells it (`config.inputFile`). A field `input_file` reads the config key
`input_file`, else its camelCase form `inputFile` (the hub's JSON is camelCase). Unknown keys are
ignored, as pydantic does by default. Checked: `str int float bool`, `Any`, `list[X]`,
`dict[str, X]`, `X | None`, unions, `Literal[...]`, enums and nested dataclasses; an int is
accepted where a float is wanted; anything else is checked with `isinstance` when it is a class.
A `__post_init__` that raises `ValueError` or `TypeError` is an invalid input too.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["InvalidInput", "parse_input"]


class InvalidInput(ValueError):
    """The config does not fit the handler's input type; `field` names where (`config.a.b`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


_KINDS = {str: "a string", bool: "true or false", list: "a list", dict: "an object"}


def _kind(expected: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "an object",
    }
    if expected in names:
        return names[expected]
    return f"{getattr(expected, '__name__', None) or expected}"


def parse_input(model: type[T], config: Any, where: str = "config") -> T:
    """`config` as a `model` (a dataclass), or InvalidInput naming the field."""
    if not dataclasses.is_dataclass(model):
        raise TypeError(f"{model!r} is not a dataclass")
    if not isinstance(config, dict):
        raise InvalidInput(where, f"expected an object, got {_shown(config)}")
    hints = typing.get_type_hints(model)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        if not field.init:
            continue
        key = field.name if field.name in config else _camel(field.name)
        path = f"{where}.{key}"
        if key not in config:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise InvalidInput(path, "is required")
            continue
        values[field.name] = _convert(hints.get(field.name, Any), config[key], path)
    try:
        return model(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(where, str(exc) or type(exc).__name__) from None


def _convert(expected: Any, value: Any, path: str) -> Any:
    if expected is Any or expected is object:
        return value
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [option for option in args if option is not type(None)]
        if len(options) == 1:  # `X | None`: X's own error, which may name a field inside it
            return _convert(options[0], value, path)
        problems = []
        for option in options:
            try:
                return _convert(option, value, path)
            except InvalidInput as exc:
                problems.append(exc.problem)
        raise InvalidInput(path, " or ".join(problems) if problems else f"got {_shown(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise InvalidInput(path, f"must be one of {', '.join(map(repr, args))}, got {_shown(value)}")
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, list):
            raise InvalidInput(path, f"expected a list, got {_shown(value)}")
        item = args[0] if args else Any
        return [_convert(item, element, f"{path}[{n}]") for n, element in enumerate(value)]
    if origin in (dict, typing.Dict):  # noqa: UP006
        if not isinstance(value, dict):
            raise InvalidInput(path, f"expected an object, got {_shown(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(expected) and isinstance(expected, type):
        return parse_input(expected, value, path)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        try:
            return expected(value)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in expected)
            raise InvalidInput(path, f"must be one of {allowed}, got {_shown(value)}") from None
    if expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise InvalidInput(path, f"expected a number, got {_shown(value)}")
    if expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InvalidInput(path, f"expected an integer, got {_shown(value)}")
    if isinstance(expected, type):
        if isinstance(value, expected):
            return value
        raise InvalidInput(path, f"expected {_kind(expected)}, got {_shown(value)}")
    return value  # a type this checker does not know (a TypeVar, a Protocol...): taken as it is
