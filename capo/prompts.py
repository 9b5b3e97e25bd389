"""Prompts for generation: a prompt file or a named prompt set -> validated records.

A spec is one of

* a ``.txt`` file, one prompt per line;
* a ``.jsonl`` file, one record per line with at least ``"prompt"`` (GenEval's
  ``evaluation_metadata.jsonl`` form works as is; an ``"id"`` is kept);
* ``shapes:<set>``: a prompt set of the embedded shapes world (``shapes:train``,
  ``shapes:geneval``, ``shapes:compbench:<category>``);
* a benchmark name known to ``capo.eval.prompts`` (``geneval``, ``parti``, ...).

Every record gets a ``prompt_id`` (its ``id`` if given, else its 0-based index as
``%05d``). Blank prompts, duplicate prompts, duplicate ids and prompts longer than
``max_words`` are errors naming the line numbers, never silently skipped or truncated.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

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
    if spec.startswith("shapes:"):
        from capo.worlds.shapes.grammar import prompt_sets

        sets = prompt_sets(distinct=True)  # each prompt once (the sets repeat prompts to fill tags)
        name = spec.split(":", 1)[1]
        if name not in sets:
            raise PromptError(f"unknown shapes prompt set {name!r}; known: {', '.join('shapes:' + k for k in sets)}")
        return [dict(r) for r in sets[name]]
    from capo.eval.prompts import load_prompt_set

    return [dict(r) for r in load_prompt_set(spec)]


def load_prompts(spec: str, limit: int | None = None, max_words: int = MAX_WORDS) -> list[dict]:
    """Validated prompt records for ``spec`` (see module docstring), the first ``limit`` if given."""
    path = Path(spec)
    records = _read_file(path) if path.is_file() else _named(spec)
    if not records:
        raise PromptError(f"{spec}: no prompts")
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
        raise PromptError(f"{spec}: " + "; ".join(problems))
    out = []
    for i, r in enumerate(records[:limit] if limit else records):
        r = {k: v for k, v in r.items() if k != "_line"}
        r["prompt"] = r["prompt"].strip()
        r["prompt_id"] = str(r.get("id", f"{i:05d}"))
        out.append(r)
    ids = [r["prompt_id"] for r in out]
    if len(set(ids)) != len(ids):
        raise PromptError(f"{spec}: duplicate prompt ids")
    return out


def records_fingerprint(records: list[dict]) -> str:
    """sha256 of the records' canonical JSON: the identity of a prompt set's content."""
    blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()
