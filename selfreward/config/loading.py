"""Loading params: YAML recipes (a key given twice is an error), `--set key=value` overrides, and each
value checked against its field's type hint; the built Config is validated once (`from_dict`)."""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Literal

import yaml

from selfreward.config.schema import Config, ConfigError, _check


def _coerce(value, hint, key):
    """Check one YAML value against a field's type hint; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is Literal:
        choices = typing.get_args(hint)
        _check(value in choices, key, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"expected a number, got {value!r}")
        _check(math.isfinite(value), key, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if hint is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if hint is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    if hint is dict:
        value = {} if value is None else value
        _check(isinstance(value, dict) and all(isinstance(k, str) for k in value), key,
               f"expected a mapping of names to values, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {hint}")


def build(cls, data, prefix: str = ""):
    """A dataclass of the schema from a mapping, each value checked against its type; not yet validated."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build(hint, value if value is not None else {}, where)
        else:
            kwargs[key] = _coerce(value, hint, where)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {part} is not a section")
        node[parts[-1]] = value
    return data


def from_dict(data: dict, source: str = "params") -> Config:
    """The validated Config of a mapping (a params file's, or a run's resolved config); the one place
    where a whole Config is validated."""
    try:
        cfg = build(Config, data)
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return from_dict(apply_overrides(data, overrides or []), str(path))


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key {key!r} given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)
