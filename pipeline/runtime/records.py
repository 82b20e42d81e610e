"""Typed records and their JSON. A record is a dataclass whose field names are the JSON keys users read: it
is written with ``dataclasses.asdict`` (nothing else decides the JSON) and read back by its type hints.

``from_json`` is written here rather than taken from a library (dacite, cattrs, pydantic): reading back our own
reports needs only nested dataclasses, unions, tuples, lists, dicts and scalars, and no dependency is added
for it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class RecordError(ValueError):
    """JSON that is not the record it should be; the message names the field (``evaluation.latency.repeats``)."""


def from_json(cls: type[T], data: Any) -> T:
    """``data`` (parsed JSON) as a ``cls`` record: nested records, tuples where the hints say so, floats from
    whole numbers. Unknown keys are ignored (a newer writer's); a missing field without a default, or a value of
    another type, raises RecordError naming it."""
    return _value(cls, data, cls.__name__)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in sorted(args, key=lambda a: a is not type(None)):  # null first: it never fails deeper
            try:
                return _value(option, value, where)
            except RecordError:
                continue
        raise RecordError(f"{where}: {_shown(value)} is none of {', '.join(map(_name, args))}")
    if dataclasses.is_dataclass(hint):
        return _record(hint, value, where)
    if origin is Literal:
        if value not in args:
            raise RecordError(f"{where}: {_shown(value)} is not one of {args}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list, got {_shown(value)}")
        kinds = args if origin is tuple and args and args[-1] is not Ellipsis else (args[:1] or (Any,)) * len(value)
        if len(kinds) != len(value):
            raise RecordError(f"{where}: expected {len(kinds)} items, got {len(value)}")
        items = [_value(kind, item, f"{where}[{i}]") for i, (kind, item) in enumerate(zip(kinds, value))]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {_shown(value)}")
        kind = args[1] if args else Any
        return {key: _value(kind, item, f"{where}.{key}") for key, item in value.items()}
    if hint is type(None):
        if value is not None:
            raise RecordError(f"{where}: expected null, got {_shown(value)}")
        return None
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise RecordError(f"{where}: expected a whole number, got {_shown(value)}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise RecordError(f"{where}: expected {_name(hint)}, got {_shown(value)}")


def _record(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected an object, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name in data:
            values[field.name] = _value(hints[field.name], data[field.name], f"{where}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecordError(f"{where}.{field.name}: missing")
    return cls(**values)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
