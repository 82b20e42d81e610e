"""Read and write configs: YAML presets plus ``--set key=value`` overrides, into the frozen dataclasses
of ``rvc_index.config.schema``; an unknown or mistyped key is an error that names it.

YAML is read by a safe loader that also refuses aliases (a 400-byte alias bomb expands to gigabytes),
duplicate keys (YAML would keep the last silently) and nesting deeper than any config needs; a config
file is at most 1 MiB; values in messages are cut short (``schema.shown``)."""

from __future__ import annotations

import collections
import copy
import dataclasses
import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from rvc_index.config.schema import RETIRED_KEYS, Config, ConfigError, shown

DEFAULT_PRESET = "tips-plain"  # the closest blend to exact retrieval; `tips` adds alpha query expansion
MAX_CONFIG_BYTES = 2**20
MAX_DEPTH = 8  # a config nests two levels; values may be short lists
MAX_STRING_CHARS = 1024


class ConfigLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: fast, and it caps nesting
    """A safe YAML loader whose mappings refuse duplicate keys, naming the line."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                seen = first.setdefault((key_node.tag, key_node.value), line)
                if seen != line:
                    raise ConfigError(f"line {line}: duplicate key {shown(key_node.value)} (first at line {seen}); "
                                      "YAML would silently keep only the last")
        return super().construct_mapping(node, deep)


def _check_tree(root: yaml.Node) -> None:
    """Refuse aliases (a node reached twice: what makes an alias bomb) and nesting deeper than MAX_DEPTH."""
    seen: set[int] = set()
    queue = collections.deque([(root, 1)])  # breadth first: a repeat is found before the depth it builds
    while queue:
        node, depth = queue.popleft()
        line = node.start_mark.line + 1
        if id(node) in seen:
            raise ConfigError(f"line {line}: YAML aliases are not allowed in a config (the value anchored here is "
                              "used again): write the value out")
        if depth > MAX_DEPTH:
            raise ConfigError(f"line {line}: nested deeper than {MAX_DEPTH} levels")
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            queue.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            queue.extend((child, depth + 1) for child in node.value)


def parse_yaml(text: str) -> Any:
    """``text`` as plain data: safe tags only, no aliases, no duplicate keys, no deep nesting.
    Raises ConfigError or ``yaml.YAMLError``."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node)
        return loader.construct_document(node)
    except RecursionError:  # the pure-Python composer, where libyaml is missing
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if not isinstance(value, (str, int, float, bool, type(None))) or value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {shown(value)} is not one of {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, option, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {shown(value)} is not {' or '.join(map(_type_name, typing.get_args(tp)))}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {shown(value)}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {shown(value)}")
        if len(value) > MAX_STRING_CHARS or not value.isprintable():
            raise ConfigError(f"{key}: expected a line of at most {MAX_STRING_CHARS} printable characters, "
                              f"got {shown(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # a schema bug, not a user error


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{shown(key)[1:-1] if isinstance(key, str) else shown(key)}"
        if key not in names:
            if dotted in RETIRED_KEYS:
                raise ConfigError(f"config key '{dotted}' is no longer used: {RETIRED_KEYS[dotted]}")
            close = difflib.get_close_matches(str(key)[:100], names, n=1)
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
        raise ConfigError(f"--set expects key=value, got {shown(text)}")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {shown(key)[1:-1]}: cannot parse value {shown(raw)}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"--set {shown(key)[1:-1]}: {exc}") from None
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads on/off/yes/no as booleans: `memory_guard=off` means the word
    return key.strip(), value


def config_from_dict(data: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Build and validate a Config from a nested mapping plus ``key=value`` overrides."""
    tree = copy.deepcopy(data or {})  # overrides must not change the caller's mapping
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
    """Load a YAML preset (a file, or a shipped preset's name; defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config")
        try:
            data = parse_yaml(raw.decode("utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def dump_config(config: Config) -> str:
    """The resolved config as YAML text (what gets written beside every index)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
