"""Loading params: YAML recipes (a key given twice is an error; `extends:` names the profile a recipe builds
on), `--set key=value` overrides, and each value checked against its field's type hint; the built Config is
validated once (`from_dict`)."""
from __future__ import annotations

from pathlib import Path

import yaml

from selfreward.config.schema import Config, ConfigError, build


def override_mapping(overrides: list[str] | dict) -> dict:
    """`--set` strings (`key.sub=value`, values parsed as YAML) as a mapping of dotted keys to values, in order
    (a key given twice keeps its last value); a mapping is returned as it is."""
    if isinstance(overrides, dict):
        return dict(overrides)
    found = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        found.pop(dotted.strip(), None)
        found[dotted.strip()] = value
    return found


def apply_overrides(data: dict, overrides: list[str] | dict) -> dict:
    """Apply overrides (`key.sub=value` strings, or a mapping of dotted keys to values) to a nested dict."""
    for dotted, value in override_mapping(overrides).items():
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
        if isinstance(cfg.seeds, list) and cfg.seeds and cfg.seed == 0:
            cfg.seed = cfg.seeds[0]  # with seeds, the first is the run's own
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | dict | None = None) -> Config:
    """The validated Config of a params file (with the profile it `extends`) and `--set` overrides (strings
    `key.sub=value`, or a mapping of dotted keys to values)."""
    return from_dict(apply_overrides(load_params(path), overrides or []), str(path))


def load_params(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A params file as one mapping: `extends: other.yaml` (relative to the file) names the profile it builds
    on, whose values it overrides section by section (a mapping merges, anything else is replaced)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a params file")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(p.name for p in seen)})")
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
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected the name of a params file, got {base!r}")
    return merged(load_params(path.parent / base, seen + (path.resolve(),)), data)


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` over it: mappings merge key by key, anything else is replaced."""
    result = dict(base)
    for key, value in changes.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


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
