"""Hard negatives: a world prompt changed by one perturbation (a swapped, changed or added
attribute, a changed count or shape, a flipped relation). ``shapes-vqa`` trains on and is
measured with them, and ``samplers.render_sampler`` renders them as content errors; the
truth, not the kind of perturbation, labels each (image, prompt) pair.
"""

from __future__ import annotations

import copy
from itertools import combinations
from typing import Sequence

import numpy as np

from ..grammar import MAX_PROMPT_WORDS, tokenize_words
from ..parsing import _ATTR_ORDER, _ATTR_VALUES, _prompt_text, parse_phrase, parse_prompt, phrase_record, phrase_text
from ..scene import MAX_OBJECTS, SHAPES


PERTURBATIONS = ("swap_attribute", "change_attribute", "add_attribute", "change_count", "change_shape",
                 "flip_relation")
_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _options(phrase: dict, kind: str) -> list:
    nps = phrase["nps"]
    if kind == "swap_attribute":  # e.g. swap colours between objects
        return [(k, i, j) for k in _ATTR_ORDER for i, j in combinations(range(len(nps)), 2)
                if k in nps[i] and k in nps[j] and nps[i][k] != nps[j][k]]
    if kind == "change_attribute":
        return [(i, k) for i, n in enumerate(nps) for k in _ATTR_ORDER if k in n]
    if kind == "add_attribute":
        return [(i, k) for i, n in enumerate(nps) for k in _ATTR_ORDER if k not in n]
    if kind == "change_count":
        total = sum(n["count"] for n in nps)
        return [(i, c) for i, n in enumerate(nps) if n["det"] != "the"
                for c in range(1, MAX_OBJECTS + 1) if c != n["count"] and total - n["count"] + c <= MAX_OBJECTS]
    if kind == "change_shape":
        used = {n["shape"] for n in nps}
        return [(i, s) for i in range(len(nps)) for s in SHAPES if s not in used]
    if kind == "flip_relation":
        return [] if phrase["relation"] is None else [None]
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")


def perturb_phrase(phrase: dict, kind: str, rng: np.random.Generator) -> dict | None:
    """A copy of ``phrase`` changed by one ``kind`` of ``PERTURBATIONS`` (``None`` when the
    kind does not apply): swap an attribute between two objects, change or add an
    attribute, change a count, change a shape, flip a relation ("next to" becomes a
    direction)."""
    opts = _options(phrase, kind)
    if not opts:
        return None
    out = copy.deepcopy(phrase)
    nps = out["nps"]
    opt = opts[rng.integers(len(opts))]
    if kind == "swap_attribute":
        k, i, j = opt
        nps[i][k], nps[j][k] = nps[j][k], nps[i][k]
    elif kind in ("change_attribute", "add_attribute"):
        i, k = opt
        values = [v for v in _ATTR_VALUES[k] if v != nps[i].get(k)]
        nps[i][k] = values[rng.integers(len(values))]
    elif kind == "change_count":
        i, c = opt
        nps[i]["count"] = c
        if c > 1:  # "a square" -> "two squares": a number, as the text now reads
            nps[i]["det"] = "number"
    elif kind == "change_shape":
        i, s = opt
        nps[i]["shape"] = s
    else:
        rel = out["relation"]
        out["relation"] = _FLIP[rel] if rel in _FLIP else tuple(_FLIP)[rng.integers(len(_FLIP))]
    if len(tokenize_words(phrase_text(out))) > MAX_PROMPT_WORDS:
        return None
    return out


def perturb_prompt(prompt: str | dict, rng: np.random.Generator,
                   kinds: Sequence[str] = PERTURBATIONS) -> tuple[dict, str] | None:
    """A hard-negative record for ``prompt``: one perturbation, its kind drawn uniformly
    among those of ``kinds`` that apply. Returns ``(record, kind)`` or ``None``. The new
    prompt may still describe a given image (a colour the prompt left free, a relation
    that also holds): label pairs with the truth, not with the kind."""
    phrase = parse_phrase(_prompt_text(prompt))
    kinds = [k for k in kinds if _options(phrase, k)]
    while kinds:
        kind = kinds[rng.integers(len(kinds))]
        new = perturb_phrase(phrase, kind, rng)
        if new is not None:
            return phrase_record(new), kind
        kinds.remove(kind)
    return None


def hard_negative(record: dict, records: Sequence[dict], rng: np.random.Generator) -> tuple[dict, str]:
    """``perturb_prompt(record)``, or another of ``records`` (an easy negative) when no
    perturbation applies."""
    neg = perturb_prompt(record, rng)
    if neg is None:
        neg = (parse_prompt(records[int(rng.integers(len(records)))]["prompt"]), "other_prompt")
    return neg
