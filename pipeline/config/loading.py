"""Read and write configs: YAML presets plus ``--set key=value`` overrides, into the frozen dataclasses
of ``rvc_index.config.schema``; an unknown or mistyped key is an error that names it."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from rvc_index.config.schema import Config, ConfigError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, option, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not {' or '.join(map(_type_name, typing.get_args(tp)))}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # a schema bug, not a user error


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, f"{dotted}.")
        else:
            values[key] = _coerce(dotted, tp, value)
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML/JSON output)."""
    return dataclasses.asdict(config)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'index.nprobe=4'`` -> ``('index.nprobe', 4)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from exc
    return key.strip(), value


def config_from_dict(data: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Build and validate a Config from a nested mapping plus ``key=value`` overrides."""
    tree = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy of plain data
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _build(Config, tree).validate()


def preset_names() -> list[str]:
    """The presets shipped inside the package (``configs/*.yaml`` in a checkout)."""
    return sorted(p.name[:-5] for p in resources.files("rvc_index.presets").iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(value: str | Path) -> Path:
    """A preset file's path, or a bare preset name (``tips-plain``) looked up among the shipped presets."""
    path = Path(value)
    if path.exists() or path.suffix or "/" in str(value):
        return path
    shipped = resources.files("rvc_index.presets") / f"{value}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"{value}: no such preset (shipped: {', '.join(preset_names())}) and no such file")
    return Path(str(shipped))


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML preset (or defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def dump_config(config: Config) -> str:
    """The resolved config as YAML text (what gets written beside every index)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
