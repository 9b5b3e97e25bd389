"""Stage configs: dataclasses built from dicts, YAML files and ``key=value`` overrides.

Unknown keys are an error (with the known ones listed), so a typo never silently falls
back to a default. Every resolved config is written into its run's manifest.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(hints)}; known: {', '.join(sorted(known))}")
    return cls(**data)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def parse_overrides(pairs: list[str], cls: type | None = None) -> dict[str, Any]:
    """``["beta=5000", "objective=capo"]`` -> ``{"beta": 5000, "objective": "capo"}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = yaml.safe_load(value)
    if cls is not None:
        hints = typing.get_type_hints(cls)
        for k in out:
            if k not in hints:
                from_dict(cls, {k: None})  # raises the helpful unknown-key error
    return out
