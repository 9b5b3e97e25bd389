"""Prompts for generation: a prompt file or a named prompt set -> validated records.

A spec is one of

* a ``.txt`` file, one prompt per line;
* a ``.jsonl`` file, one record per line with at least ``"prompt"`` (GenEval's
  ``evaluation_metadata.jsonl`` form works as is; an ``"id"`` is kept);
* ``shapes:<set>``: a prompt set of the embedded shapes world (``shapes:train``,
  ``shapes:geneval``, ``shapes:compbench:<category>``);
* a benchmark name known to ``capo.eval.prompts`` (``geneval``, ``parti``, ...);
* ``diffusiondb`` or ``diffusiondb:<metadata.parquet>``: DiffusionDB's prompts after capo's
  recipe (``capo.datasets.diffusiondb``: de-duplicated, length- and NSFW-filtered, in a seeded
  order, so ``limit=K`` is a seeded sample of K).

Every record gets a ``prompt_id`` (its ``id`` if given, else its 0-based index as
``%05d``). Blank prompts, duplicate prompts, duplicate ids and prompts longer than
``max_words`` are errors naming the line numbers, never silently skipped or truncated.
This validation, and the ids, are always those of the FULL set, whatever the split or limit.

Validation and test halves: a spec ending in ``@val`` or ``@test`` (``shapes:geneval@val``,
``parti@test``, ``prompts.jsonl@test``) is a deterministic half of the set, for choosing
settings on one half and reporting on the other:

* strata are the records' ``tag`` (else ``category``; records with neither form one
  stratum, ``UNTAGGED``);
* within a stratum, prompts are ranked by ``sha256("capo-split/" + prompt)`` (the stripped
  prompt text): the first ``floor(n / 2)`` go to ``val``, the other ``ceil(n / 2)`` to
  ``test``. So ``test`` holds every tag of the set (a tag with one prompt is in ``test``
  only), ``val`` every tag with at least two prompts, and the halves are disjoint and
  together the whole set;
* the split depends on the prompt texts and tags alone: not on any seed, limit, record
  order or call order. Records keep their full-set ``prompt_id``, so val and test ids
  never collide and stay the same under any ``limit``.

A file whose name itself ends in ``@...`` is read as that file; any other suffix after the
last ``@`` is an error.

Unions: ``A+B+...`` (``shapes:geneval@test+shapes:compbench:color@test``) is the records of
every part, each part loaded, validated and split on its own as above, in the order given.
Records keep their ids when no id repeats across the parts (the shapes world's sets: so a
prompt gets the same image seeds in a union as in its own set); otherwise every id becomes
``<part>/<its id>``. A prompt in two parts, or a part named twice, is an error naming them. A
file whose name contains ``+`` is read as that file.

Subsets: ``limit=K`` keeps the first ``K`` records (of the half, for a split spec); with
``stratify=True`` it draws ``K`` records stratified by tag/category instead
(``stratified_subset``): largest-remainder proportional allocation, at least one per
stratum when ``K`` >= the number of strata, within a stratum the first by
``sha256("capo-subset/<subset_seed>/" + prompt)``, returned in the set's order.
``strata_of(records)`` counts records per stratum (what a figure covers).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from capo.datasets import diffusiondb
from capo.eval.prompts import load_prompt_set
from capo.registry import WORLD_PROMPTS

MAX_WORDS = 200  # longer lines are almost always a malformed file (a paragraph, a binary blob)


class PromptError(ValueError):
    pass


def _read_file(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.splitlines()
    if path.suffix == ".jsonl":
        records = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                raise PromptError(f"{path}:{i}: blank line (a .jsonl prompt file needs one JSON record per line)")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise PromptError(f"{path}:{i}: a record needs a string field 'prompt'")
            records.append({**rec, "_line": i})
        return records
    if path.suffix in (".txt", ""):
        return [{"prompt": line.strip(), "_line": i} for i, line in enumerate(lines, 1)]
    raise PromptError(f"{path}: unknown prompt file type {path.suffix!r}; use .txt (one per line) or .jsonl")


def _named(spec: str) -> list[dict]:
    if spec == "diffusiondb" or spec.startswith("diffusiondb:"):
        return diffusiondb.load(spec.partition(":")[2] or None)
    family, _, name = spec.partition(":")
    if name and family in WORLD_PROMPTS:  # a world's own sets (capo.registry: imported only when named)
        return [dict(r) for r in WORLD_PROMPTS.get(family)(name)]
    return [dict(r) for r in load_prompt_set(spec)]


SPLITS = ("val", "test")
UNTAGGED = "(untagged)"  # the stratum of records with neither a tag nor a category


def stratum(record: dict) -> str:
    """A record's stratum: its ``tag``, else its ``category``, else ``UNTAGGED``."""
    key = record.get("tag") or record.get("category")
    return str(key) if key else UNTAGGED


def strata_of(records: list[dict]) -> dict[str, int]:
    """Records per stratum (tag / category -> count), in order of first appearance."""
    out: dict[str, int] = {}
    for r in records:
        k = stratum(r)
        out[k] = out.get(k, 0) + 1
    return out


def _by_stratum(records: list[dict]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(stratum(r), []).append(i)
    return groups


def _rank(records: list[dict], idx: list[int], salt: str) -> list[int]:
    key = lambda i: hashlib.sha256((salt + records[i]["prompt"].strip()).encode()).hexdigest()  # noqa: E731
    return sorted(idx, key=key)


def split_records(records: list[dict], split: str) -> list[dict]:
    """The ``val`` or ``test`` half of ``records`` (see the module docstring), in their order."""
    if split not in SPLITS:
        raise PromptError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    keep = []
    for idx in _by_stratum(records).values():
        ranked = _rank(records, idx, "capo-split/")
        n_val = len(ranked) // 2
        keep += ranked[:n_val] if split == "val" else ranked[n_val:]
    return [records[i] for i in sorted(keep)]


def allocate(sizes: list[int], k: int) -> list[int]:
    """Largest-remainder proportional allocation of ``k`` draws over strata of ``sizes``.

    Quotas ``k * n_s / N``; floors first, the remaining draws to the largest remainders
    (ties: the earlier stratum). When ``k`` >= the number of strata, a stratum left at 0
    takes one draw from the stratum most above its quota (ties: more draws, then earlier).
    """
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot draw {k} of {total}")
    alloc = [k * n // total for n in sizes]
    rems = sorted(range(len(sizes)), key=lambda s: (-(k * sizes[s] % total), s))
    for s in rems[:k - sum(alloc)]:
        alloc[s] += 1
    if k >= len(sizes):
        for s in range(len(sizes)):
            if alloc[s] == 0:
                # excess over quota, times total to stay in integers
                donor = max((t for t in range(len(sizes)) if alloc[t] > 1),
                            key=lambda t: (alloc[t] * total - k * sizes[t], alloc[t], -t))
                alloc[donor] -= 1
                alloc[s] = 1
    return alloc


def stratified_subset(records: list[dict], k: int, seed: int = 0) -> list[dict]:
    """``k`` records stratified by tag / category (see ``allocate``), in their original order;
    within a stratum the first by ``sha256("capo-subset/<seed>/" + prompt)``."""
    if k >= len(records):
        return list(records)
    groups = list(_by_stratum(records).values())
    keep = []
    for idx, n in zip(groups, allocate([len(g) for g in groups], k)):
        keep += _rank(records, idx, f"capo-subset/{seed}/")[:n]
    return [records[i] for i in sorted(keep)]


def _parse_spec(spec: str) -> tuple[str, str | None]:
    """``"shapes:geneval@val"`` -> ``("shapes:geneval", "val")``; a file named as given wins."""
    if "@" not in spec or Path(spec).is_file():
        return spec, None
    base, _, split = spec.rpartition("@")
    if split not in SPLITS:
        raise PromptError(f"{spec}: unknown split suffix '@{split}' (known: {', '.join('@' + s for s in SPLITS)}); "
                          f"and no file named {spec!r}")
    if not base:
        raise PromptError(f"{spec}: no prompt set before '@{split}'")
    return base, split


def union_parts(spec: str) -> list[str]:
    """``"A+B"`` -> ``["A", "B"]``; a single set (or a file whose name contains ``+``) -> ``[spec]``."""
    if "+" not in spec or Path(spec).is_file():
        return [spec]
    parts = [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise PromptError(f"{spec}: an empty part in a union of prompt sets (A+B+...)")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise PromptError(f"{spec}: {', '.join(twice)} named twice in a union of prompt sets")
    return parts


def short_name(spec: str, width: int = 60) -> str:
    """``spec`` for a message: a union longer than ``width`` characters as its first part and
    how many more (``"shapes:geneval@test+6 more sets"``)."""
    parts = union_parts(spec)
    return spec if len(parts) == 1 or len(spec) <= width else f"{parts[0]}+{len(parts) - 1} more sets"


def load_prompts(spec: str, limit: int | None = None, max_words: int = MAX_WORDS, *, stratify: bool = False,
                 subset_seed: int = 0) -> list[dict]:
    """Validated prompt records for ``spec`` (see module docstring).

    ``limit``: the first ``limit`` records, or with ``stratify=True`` a subset of that size
    stratified by tag / category (``stratified_subset`` with ``subset_seed``). A ``@val`` /
    ``@test`` suffix of ``spec`` selects that half first; ids are always the full set's. A union
    ``A+B`` is its parts' records (ids ``<part>/<id>`` if the parts' ids collide), then the limit.
    """
    if limit is not None and limit < 0:
        raise PromptError(f"{spec}: limit must be >= 0 (0 or None: every prompt), got {limit}")
    parts = union_parts(spec)
    out = _load_union(spec, parts, max_words) if len(parts) > 1 else _load_set(spec, max_words)
    if limit:
        out = stratified_subset(out, limit, subset_seed) if stratify else out[:limit]
    return out


def _load_union(spec: str, parts: list[str], max_words: int) -> list[dict]:
    """Every part's records in order; ids kept if unique across the parts, else ``<part>/<id>``."""
    out, seen = [], {}
    for part in parts:
        for r in _load_set(part, max_words):
            if r["prompt"] in seen:
                raise PromptError(f"{spec}: prompt {r['prompt']!r} is in both {seen[r['prompt']]} and {part}")
            seen[r["prompt"]] = part
            out.append((part, r))
    ids = [r["prompt_id"] for _, r in out]
    unique = len(set(ids)) == len(ids)
    return [r if unique else {**r, "prompt_id": f"{part}/{r['prompt_id']}"} for part, r in out]


def _load_set(spec: str, max_words: int) -> list[dict]:
    """One set's (or half's) validated records, ids of the full set."""
    base, split = _parse_spec(spec)
    path = Path(base)
    records = _read_file(path) if path.is_file() else _named(base)
    if not records:
        raise PromptError(f"{base}: no prompts")
    where = lambda r, i: f"line {r['_line']}" if "_line" in r else f"record {i}"  # noqa: E731
    problems = []
    blank = [where(r, i) for i, r in enumerate(records) if not r["prompt"].strip()]
    if blank:
        problems.append(f"blank prompt at {', '.join(blank[:10])}")
    long = [where(r, i) for i, r in enumerate(records) if len(r["prompt"].split()) > max_words]
    if long:
        problems.append(f"prompt longer than {max_words} words at {', '.join(long[:10])}")
    seen = defaultdict(list)
    for i, r in enumerate(records):
        seen[r["prompt"].strip()].append(where(r, i))
    dups = [f"{p!r} at {' and '.join(w)}" for p, w in seen.items() if p and len(w) > 1]
    if dups:
        problems.append(f"duplicate prompt {'; '.join(dups[:5])}")
    if problems:
        raise PromptError(f"{base}: " + "; ".join(problems))
    out = []
    for i, r in enumerate(records):  # ids of the full set, before any split or limit
        r = {k: v for k, v in r.items() if k != "_line"}
        r["prompt"] = r["prompt"].strip()
        r["prompt_id"] = str(r.get("id", f"{i:05d}"))
        out.append(r)
    ids = [r["prompt_id"] for r in out]
    if len(set(ids)) != len(ids):
        raise PromptError(f"{base}: duplicate prompt ids")
    return split_records(out, split) if split else out


def records_fingerprint(records: list[dict]) -> str:
    """sha256 of the records' canonical JSON: the identity of a prompt set's content."""
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()
