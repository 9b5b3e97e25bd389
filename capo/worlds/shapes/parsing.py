"""Prompt parsing for the shapes world: the inverse of ``grammar``, used by its truth and its rewards.

Prompts are strings (or prompt records, whose ``"prompt"`` is used); the gold reward
parses strings back to records with ``parse_prompt``, which inverts every phrasing of
``grammar`` (GenEval, CompBench and pretraining captions). ``rewards.negatives`` perturbs parsed
prompts into hard negatives.
"""

from __future__ import annotations

from .grammar import COMPLEX_WORDS, NUMBERS, PLURALS, RELATIONS, SPATIAL_WORDS, _article, tokenize_words
from .scene import COLORS, SHAPES, SIZES, TEXTURES


# A parsed prompt ("phrase"): {"prefix": bool ("a photo of"), "nps": [np, ...],
# "relation": None | relation, "style": "raw" | "spatial" | "complex", "verb": None | "is" | "was"}
# np = {"det": "article" | "number" | "the", "count": n, "shape": s, "size"?, "texture"?, "color"?}
# Relation prompts have two nps in text order, "A <relation> B".

_STYLE_WORDS = {"raw": {r: r for r in RELATIONS}, "spatial": SPATIAL_WORDS, "complex": COMPLEX_WORDS}
_REL_PHRASES = sorted({tuple(words.split()): rel for table in _STYLE_WORDS.values()
                       for rel, words in table.items()}.items(),
                      key=lambda kv: -len(kv[0]))
_REL_START = {words[0] for words, _ in _REL_PHRASES}
_ATTR_VALUES = {"size": SIZES, "texture": TEXTURES, "color": tuple(COLORS)}
_ATTR_OF = {v: k for k, vs in _ATTR_VALUES.items() for v in vs}
_ATTR_ORDER = ("size", "texture", "color")
_SHAPE_OF = {**{s: (s, False) for s in SHAPES}, **{PLURALS[s]: (s, True) for s in SHAPES}}
_NUMBER = {w: i for i, w in enumerate(NUMBERS) if i > 0}


def _parse_np(words: list[str], prompt: str) -> dict:
    if len(words) < 2:
        raise ValueError(f"cannot parse {prompt!r}: expected a noun phrase, got {' '.join(words)!r}")
    det, *attrs, noun = words
    if det in ("a", "an"):
        np_ = {"det": "article", "count": 1}
    elif det == "the":
        np_ = {"det": "the", "count": 1}
    elif det in _NUMBER:
        np_ = {"det": "number", "count": _NUMBER[det]}
    else:
        raise ValueError(f"cannot parse {prompt!r}: {det!r} is not a determiner")
    if noun not in _SHAPE_OF:
        raise ValueError(f"cannot parse {prompt!r}: {noun!r} is not a shape")
    shape, plural = _SHAPE_OF[noun]
    if plural != (np_["count"] > 1):
        raise ValueError(f"cannot parse {prompt!r}: {det} {noun!r} disagree in number")
    np_["shape"] = shape
    for a in attrs:
        if a not in _ATTR_OF or _ATTR_OF[a] in np_:
            raise ValueError(f"cannot parse {prompt!r}: unexpected word {a!r}")
        np_[_ATTR_OF[a]] = a
    return np_


def parse_phrase(prompt: str) -> dict:
    """Parse a world prompt into its phrase structure (see the comment above); raises
    ``ValueError`` for text the world's grammar does not produce."""
    w = tokenize_words(prompt)
    prefix = w[:3] == ["a", "photo", "of"]
    if prefix:
        w = w[3:]
    at = next((i for i, x in enumerate(w) if x in _REL_START), None)
    if at is None:
        groups, cur = [], []
        for x in w:
            if x == "and":
                groups.append(cur)
                cur = []
            else:
                cur.append(x)
        groups.append(cur)
        return {"prefix": prefix, "nps": [_parse_np(g, prompt) for g in groups], "relation": None,
                "style": None, "verb": None}
    left, verb = w[:at], None
    if left and left[-1] in ("is", "was"):
        verb, left = left[-1], left[:-1]
    for words, relation in _REL_PHRASES:
        if tuple(w[at:at + len(words)]) == words:
            break
    else:
        raise ValueError(f"cannot parse {prompt!r}: unknown relation at {' '.join(w[at:])!r}")
    right = w[at + len(words):]
    if verb:
        style = "complex"
    elif words[0] == "on" or (words == ("next", "to") and not prefix):
        style = "spatial"
    else:
        style = "raw"
    return {"prefix": prefix, "nps": [_parse_np(left, prompt), _parse_np(right, prompt)], "relation": relation,
            "style": style, "verb": verb}


def _np_text(np_: dict) -> str:
    words = [np_[k] for k in _ATTR_ORDER if k in np_]
    count = np_["count"]
    body = " ".join(words + [np_["shape"] if count == 1 else PLURALS[np_["shape"]]])
    if np_["det"] == "the":
        return f"the {body}"
    if np_["det"] == "number" or count > 1:
        return f"{NUMBERS[count]} {body}"
    return f"{_article(body)} {body}"


def phrase_text(phrase: dict) -> str:
    """The prompt of a phrase structure (inverse of ``parse_phrase`` on world prompts)."""
    nps = [_np_text(n) for n in phrase["nps"]]
    if phrase["relation"] is None:
        body = " and ".join(nps)
    else:
        rel = _STYLE_WORDS[phrase["style"]][phrase["relation"]]
        verb = f" {phrase['verb']}" if phrase["verb"] else ""
        body = f"{nps[0]}{verb} {rel} {nps[1]}"
    return f"a photo of {body}" if phrase["prefix"] else body


def phrase_record(phrase: dict) -> dict:
    """The prompt record of a phrase: clauses in ``grammar``'s order (a relation "A rel B"
    is ``[B, A with position [rel, 0]]``); prompts whose noun phrases all start with a
    number and carry no attribute (GenEval counting, CompBench numeracy) ask for exact
    counts (an exclude clause of ``count + 1``)."""
    clauses = [{"class": n["shape"], "count": n["count"], **{k: n[k] for k in _ATTR_ORDER if k in n}}
               for n in phrase["nps"]]
    record = {"prompt": phrase_text(phrase)}
    if phrase["relation"] is not None:
        a, b = clauses
        record["include"] = [b, dict(a, position=[phrase["relation"], 0])]
        return record
    record["include"] = clauses
    if all(n["det"] == "number" and not any(k in n for k in _ATTR_ORDER) for n in phrase["nps"]):
        record["exclude"] = [{"class": c["class"], "count": c["count"] + 1} for c in clauses]
    return record


def parse_prompt(prompt: str | dict) -> dict:
    """A prompt record (``include``/``exclude`` clauses, as ``grammar`` writes them) for a
    world prompt; records pass through unchanged."""
    if isinstance(prompt, dict):
        return prompt
    return phrase_record(parse_phrase(prompt))


def _prompt_text(prompt: str | dict) -> str:
    return prompt["prompt"] if isinstance(prompt, dict) else str(prompt)
