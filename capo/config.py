"""Stage configs: dataclasses built from dicts, YAML files and ``key=value`` overrides.

Unknown keys are an error (with the known ones listed), so a typo never silently falls
back to a default. Every resolved config is written into its run's manifest.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar
from capo.registry import all_registries

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
    """The config as a dict (what manifests record and run keys hash). Keys a stage gained after
    runs of it existed (its ``LATER`` ClassVar: key -> the value that leaves behaviour as it was,
    or a predicate of the config saying when the key does not matter) are left out then, so the
    run keys of those runs, and their resumption, stay valid."""
    d = dataclasses.asdict(cfg)
    for k, unchanged in getattr(type(cfg), "LATER", {}).items():
        if k in d and (unchanged(cfg) if callable(unchanged) else d[k] == unchanged):
            del d[k]
    return d


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


def _unwrap_optional(hint):
    """``Optional[X]`` / ``X | None`` -> ``X``; any other hint unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner[0] if len(inner) == 1 else hint
    return hint


def _coerce(cls, key: str, value: Any) -> Any:
    """Coerce a command-line value to the field's declared type (lists from commas)."""
    hint = _unwrap_optional(typing.get_type_hints(cls)[key])
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
        what = {int: "an integer", float: "a number"}.get(target, f"a {getattr(target, '__name__', target)}")
        raise ConfigError(f"invalid {cls.__name__}: {key} = {value!r}: must be {what}") from None
    return value


def build(cls: type[T], config_path: str | None, tokens: list[str] | tuple[str, ...],
          defaults: dict[str, Any] | None = None) -> T:
    """A stage config from ``defaults``, an optional YAML file over them and command-line tokens.

    Tokens are ``key=value``, ``--key value``, ``--key=value`` or ``--flag`` (booleans);
    dashes in keys become underscores; values are parsed as YAML (``5e-6``, ``true``,
    ``[a, b]``); list fields also take comma-separated values. Later tokens win over the
    file; unknown keys are an error listing the known ones.
    """
    import yaml

    data = {**(defaults or {}), **(load_yaml(config_path) if config_path else {})}
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


# ---------------------------------------------------------------------------- validation
# Every stage config is a ``@stage_config`` dataclass: its fields are checked when it is
# built (from the command line, a YAML file or Python), before a stage creates anything.
# Types come from the annotations (ints are integers, floats are finite, lists hold their
# element type); a class's ``RULES`` adds a range or a set of names per key, written as
#   "> 0", ">= 1", "<= 1", "[0, 1]", "(0, 1]"       ranges (also for each element of a list)
#   "a | b | c"                                     one of these names
#   "@objectives", "@rewards", ...                  a name registered there (capo ls)
# and its ``contradictions()`` yields a message per combination of keys that cannot hold.
_RANGE = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])\s*$")
_BOUND = re.compile(r"^\s*(>=|<=|>|<)\s*(\S+)\s*$")


def _rule_error(rule: str, v: Any) -> str | None:
    """What is wrong with ``v`` under ``rule`` (None if nothing)."""
    if rule.startswith("@"):
        reg = all_registries()[rule[1:]]
        if v not in reg:
            near = difflib.get_close_matches(str(v), reg.names(), 3, 0.5)
            return (f"unknown {reg.kind}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                    + f"; known: {', '.join(reg.names())}")
        return None
    if m := _RANGE.match(rule):
        lo, hi = float(m.group(2)), float(m.group(3))
        ok = (v > lo if m.group(1) == "(" else v >= lo) and (v < hi if m.group(4) == ")" else v <= hi)
        return None if ok else f"must be in {rule}"
    if m := _BOUND.match(rule):
        op, x = m.group(1), float(m.group(2))
        ok = {">": v > x, ">=": v >= x, "<": v < x, "<=": v <= x}[op]
        return None if ok else f"must be {rule}"
    names = [s.strip() for s in rule.split("|")]
    if v not in names:
        near = difflib.get_close_matches(str(v), names, 1, 0.5)
        return f"must be one of {' | '.join(names)}" + (f" (did you mean {near[0]}?)" if near else "")
    return None


def _type_error(hint, v: Any) -> str | None:
    """What is wrong with ``v`` as a value of type ``hint`` (None if nothing). Floats must be finite."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        inner = _unwrap_optional(hint)
        return None if inner is hint else _type_error(inner, v)
    if origin is list:
        if not isinstance(v, list):
            return "must be a list"
        return next((f"item {x!r} {e}" for x in v if (e := _type_error(args[0], x))), None) if args else None
    if origin is dict:
        if not isinstance(v, dict):
            return "must be a mapping"
        return next((f"{k}: {e}" for k, x in v.items() if (e := _type_error(args[1], x))), None) if args else None
    if hint is bool:
        return None if isinstance(v, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "must be an integer"
    if hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "must be a number"
        return None if math.isfinite(v) else "must be a finite number"
    if hint is str:
        return None if isinstance(v, str) and v.strip() else "must be a non-empty string"
    return None


def _elements(hint, v: Any) -> list:
    """The values a rule applies to: the value itself, the items of a list, the values of a dict."""
    if v is None:
        return []
    origin = typing.get_origin(_unwrap_optional(hint))
    if origin is list:
        return list(v)
    if origin is dict:
        return [x for vals in v.values() for x in (vals if isinstance(vals, list) else [vals])]
    return [v]


def problems(cfg) -> list[str]:
    """Every broken rule of a config, one message each, naming the key, the value and what is allowed."""
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    rules = getattr(cls, "RULES", {})
    out = []
    for f in dataclasses.fields(cls):
        v = getattr(cfg, f.name)
        if err := _type_error(hints[f.name], v):
            out.append(f"{f.name} = {v!r}: {err}")
            continue
        rule = rules.get(f.name)
        bad = next(((x, e) for x in _elements(hints[f.name], v) if (e := _rule_error(rule, x))), None) if rule else None
        if bad:
            x, err = bad
            out.append(f"{f.name} = {v!r}: " + (err if x is v else f"item {x!r} {err}"))
    if not out and hasattr(cfg, "contradictions"):
        out += list(cfg.contradictions())
    return out


def validate(cfg) -> None:
    """Raise ``ConfigError`` (one line, every problem) if ``cfg`` breaks a rule."""
    errs = problems(cfg)
    if errs:
        raise ConfigError(f"invalid {type(cfg).__name__}: " + "; ".join(errs))


def stage_config(cls: type[T]) -> type[T]:
    """``@dataclass`` whose instances are validated (``validate``) as soon as they are built."""
    cls.__post_init__ = validate  # set before dataclass() so that __init__ calls it
    return dataclasses.dataclass(cls)


def rule_text(cls, key: str) -> str:
    """The allowed values of ``key`` for ``--help``."""
    rule = getattr(cls, "RULES", {}).get(key, "")
    if rule.startswith("@"):
        return f"capo ls {rule[1:]}"
    return f"in {rule}" if _RANGE.match(rule) else rule
