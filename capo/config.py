"""Stage configs: dataclasses built from dicts, YAML files and ``key=value`` overrides.

Unknown keys are an error (with the known ones listed), so a typo never silently falls
back to a default. Every resolved config is written into its run's manifest.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
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


def _coerce(cls, key: str, value: Any) -> Any:
    """Coerce a command-line value to the field's declared type (lists from commas)."""
    hint = typing.get_type_hints(cls)[key]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X] / X | None -> X
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else hint
    args = [hint]
    origin = typing.get_origin(hint)
    if origin is list and isinstance(value, str):
        import yaml

        return [yaml.safe_load(v.strip()) for v in value.split(",") if v.strip()]
    if origin is list and value is not None and not isinstance(value, list):
        return [value]
    target = args[0] if args and len(args) == 1 else hint
    if value is None or isinstance(value, bool) or target is bool:
        return value
    try:
        if target is str and not isinstance(value, str):
            return str(value)
        if target is float and isinstance(value, (str, int)):
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        if target is int and isinstance(value, str):
            return int(value)
    except ValueError:
        raise ConfigError(f"{cls.__name__}.{key} must be a {target.__name__}, got {value!r}") from None
    return value


def build(cls: type[T], config_path: str | None, tokens: list[str] | tuple[str, ...]) -> T:
    """A stage config from an optional YAML file and command-line tokens.

    Tokens are ``key=value``, ``--key value``, ``--key=value`` or ``--flag`` (booleans);
    dashes in keys become underscores; values are parsed as YAML (``5e-6``, ``true``,
    ``[a, b]``); list fields also take comma-separated values. Later tokens win over the
    file; unknown keys are an error listing the known ones.
    """
    import yaml

    data = load_yaml(config_path) if config_path else {}
    hints = typing.get_type_hints(cls)
    toks = list(tokens)
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.startswith("--"):
            key, sep, value = tok[2:].partition("=")
            key = key.replace("-", "_")
            if not sep:
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                if hints.get(key) is bool and (nxt is None or nxt.startswith("--") or "=" in nxt):
                    value = "true"
                elif nxt is None:
                    raise ConfigError(f"option --{key} needs a value")
                else:
                    value = nxt
                    i += 1
        elif "=" in tok:
            key, _, value = tok.partition("=")
            key = key.strip().replace("-", "_")
        else:
            raise ConfigError(f"unexpected argument {tok!r}: use key=value or --key value")
        if key not in hints:
            from_dict(cls, {key: None})  # raises the helpful unknown-key error
        data[key] = yaml.safe_load(value) if isinstance(value, str) else value
        i += 1
    for key in list(data):
        if key in hints:
            data[key] = _coerce(cls, key, data[key])
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data]
    if missing:
        raise ConfigError(f"missing required {cls.__name__} key(s): {', '.join(missing)} "
                          f"(give them as --{missing[0].replace('_', '-')} VALUE or {missing[0]}=VALUE)")
    return from_dict(cls, data)
