"""Prompts of the shapes world: GenEval- and T2I-CompBench-style records, scenes that
satisfy them, fixed prompt sets and pretraining captions.

A prompt record is a dict in GenEval's metadata form::

    {"tag": ..., "prompt": ..., "include": [clause, ...], "exclude": [clause, ...]?}
    clause = {"class": shape, "count": n, "color"?: c, "texture"?: t, "size"?: s,
              "position"?: [relation, index of the clause it refers to]}

Relations are GenEval's "left of", "right of", "above", "below", plus "next to"
(CompBench). Records of CompBench categories carry ``"category"`` (equal to their tag);
records in ``prompt_sets`` carry an ``"id"``. Counting-type records (GenEval ``counting``,
CompBench ``numeracy``) exclude ``count + 1`` objects of each class, i.e. ask for exact
counts, as GenEval does. Classes within one record are distinct.

Tags, with a prompt of each:

- GenEval: ``single_object`` "a photo of a circle", ``two_object`` "a photo of a circle
  and a square", ``counting`` "a photo of three circles", ``colors`` "a photo of a red
  circle", ``position`` "a photo of a circle right of a square", ``color_attr`` "a photo
  of a red circle and a blue square" (phrasing of GenEval's ``create_prompts.py``);
- CompBench: ``color`` "a red circle and a blue square", ``shape`` "a large circle and a
  small square" (this world's shape-like attribute is size; CompBench's shape set also
  binds tall/short/small/long), ``texture`` "a striped circle and a dotted square",
  ``spatial`` "a circle on the left of a square", ``numeracy`` "one circle and two
  squares", ``complex`` "the large red circle is on the left of the striped square" (two
  or three attributes plus a relation; CompBench's ``complex_val.txt`` phrasing without
  the final full stop).

Every prompt has at most ``MAX_PROMPT_WORDS`` words, all in ``VOCAB``, and no punctuation.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from functools import lru_cache

import numpy as np

from .evaluator import compbench_position, relative_position
from .scene import COLORS, EXTENTS, MAX_OBJECTS, SHAPES, SIZES, TEXTURES, Obj, Scene
from capo.prompts import PromptError

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "numeracy", "complex")
TAGS = GENEVAL_TAGS + COMPBENCH_CATEGORIES
RELATIONS = ("left of", "right of", "above", "below", "next to")
NUMBERS = ("zero", "one", "two", "three", "four")
# How each benchmark words a relation ("A <words> B").
SPATIAL_WORDS = {"left of": "on the left of", "right of": "on the right of", "above": "on the top of",
                 "below": "on the bottom of", "next to": "next to"}
COMPLEX_WORDS = {"left of": "on the left of", "right of": "on the right of", "above": "on top of",
                 "below": "below", "next to": "next to"}
MAX_PROMPT_WORDS = 14
MAX_COUNT = 4  # GenEval counts 2..4; CompBench numeracy here 1..4 (at most MAX_OBJECTS objects)

EDGE = 0.03  # keep boxes this far (image fraction, ~1 px) inside the image
GAP = 0.07  # boxes at least this far apart on some axis (~2 px): never touching components
CLEAR_THRESHOLD = 0.2  # a sampled relation must also hold with GenEval's margin doubled
NEXT_TO_GAP = 0.15  # "next to" objects stand side by side, at most this far apart

_COLOR_NAMES = tuple(COLORS)
PLURALS = {s: s + "s" for s in SHAPES}

VOCAB = sorted(
    {"a", "an", "photo", "of", "and", "the", "is", "was"}
    | {w for words in list(SPATIAL_WORDS.values()) + list(COMPLEX_WORDS.values()) + list(RELATIONS)
       for w in words.split()}
    | set(NUMBERS[1:MAX_COUNT + 1]) | set(SHAPES) | set(PLURALS.values()) | set(COLORS) | set(TEXTURES)
    | set(SIZES)
)


def tokenize_words(prompt: str) -> list[str]:
    """Lower-cased words of a prompt (punctuation dropped), as a word-level tokenizer sees them."""
    return re.findall(r"[a-z]+", prompt.lower())


# --------------------------------------------------------------------------- phrasing

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(clause: dict, determiner: str = "article") -> str:
    """"a large striped red circle" / "two red circles" / "the red circle"; attributes in
    the order size, texture, colour."""
    words = [clause[k] for k in ("size", "texture", "color") if k in clause]
    count = clause["count"]
    noun = clause["class"] if count == 1 else PLURALS[clause["class"]]
    body = " ".join(words + [noun])
    if determiner == "the":
        return f"the {body}"
    if determiner == "number" or count > 1:
        return f"{NUMBERS[count]} {body}"
    return f"{_article(body)} {body}"


def _clause(shape: str, count: int = 1, **attributes) -> dict:
    clause = {"class": shape, "count": count}
    clause.update({k: v for k, v in attributes.items() if v is not None})
    return clause


def _record(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    record = {"tag": tag, "include": include}
    if exclude:
        record["exclude"] = exclude
    record["prompt"] = prompt
    if tag in COMPBENCH_CATEGORIES:
        record["category"] = tag
    return record


def _exact(include: list[dict]) -> list[dict]:
    return [{"class": c["class"], "count": c["count"] + 1} for c in include]


def _pair(tag: str, a: dict, b: dict, prefix: str = "") -> dict:
    return _record(tag, [a, b], f"{prefix}{_noun_phrase(a)} and {_noun_phrase(b)}")


def _relation(tag: str, a: dict, relation: str, b: dict) -> dict:
    """"A <relation> B": GenEval lists the reference object B first and gives A the position."""
    a = dict(a, position=[relation, 0])
    if tag == "position":
        prompt = f"a photo of {_noun_phrase(a)} {relation} {_noun_phrase(b)}"
    elif tag == "spatial":
        prompt = f"{_noun_phrase(a)} {SPATIAL_WORDS[relation]} {_noun_phrase(b)}"
    else:
        prompt = f"{_noun_phrase(a, 'the')} {{verb}} {COMPLEX_WORDS[relation]} {_noun_phrase(b, 'the')}"
    return _record(tag, [b, a], prompt)


# --------------------------------------------------------------------------- records

_PAIRS = [(a, b) for a in SHAPES for b in SHAPES if a != b]


@lru_cache(maxsize=None)
def _space(tag: str) -> tuple[str, ...]:
    """Every record of a tag (JSON strings, in a fixed order); not for ``complex``."""
    records: list[dict] = []
    if tag == "single_object":
        records = [_record(tag, [_clause(s)], f"a photo of {_noun_phrase(_clause(s))}") for s in SHAPES]
    elif tag == "two_object":
        records = [_pair(tag, _clause(a), _clause(b), "a photo of ") for a, b in _PAIRS]
    elif tag == "counting":
        for s, n in itertools.product(SHAPES, range(2, MAX_COUNT + 1)):
            inc = [_clause(s, n)]
            records.append(_record(tag, inc, f"a photo of {_noun_phrase(inc[0])}", _exact(inc)))
    elif tag == "colors":
        records = [_record(tag, [_clause(s, color=c)], f"a photo of {_noun_phrase(_clause(s, color=c))}")
                   for s, c in itertools.product(SHAPES, _COLOR_NAMES)]
    elif tag == "position":
        records = [_relation(tag, _clause(a), rel, _clause(b))
                   for (a, b), rel in itertools.product(_PAIRS, RELATIONS[:4])]
    elif tag in ("color_attr", "color"):
        prefix = "a photo of " if tag == "color_attr" else ""
        records = [_pair(tag, _clause(a, color=ca), _clause(b, color=cb), prefix)
                   for (a, b), (ca, cb) in itertools.product(_PAIRS, itertools.permutations(_COLOR_NAMES, 2))]
    elif tag == "shape":
        records = [_pair(tag, _clause(a, size=sa), _clause(b, size=sb))
                   for (a, b), (sa, sb) in itertools.product(_PAIRS, itertools.product(SIZES, SIZES))]
    elif tag == "texture":
        records = [_pair(tag, _clause(a, texture=ta), _clause(b, texture=tb))
                   for (a, b), (ta, tb) in itertools.product(_PAIRS, itertools.product(TEXTURES, TEXTURES))]
    elif tag == "spatial":
        records = [_relation(tag, _clause(a), rel, _clause(b)) for (a, b), rel in itertools.product(_PAIRS, RELATIONS)]
    elif tag == "numeracy":
        for k in (1, 2, 3):
            for shapes in itertools.permutations(SHAPES, k):
                for counts in itertools.product(range(1, MAX_COUNT + 1), repeat=k):
                    if sum(counts) > MAX_OBJECTS:
                        continue
                    inc = [_clause(s, n) for s, n in zip(shapes, counts)]
                    prompt = " and ".join(_noun_phrase(c, "number") for c in inc)
                    records.append(_record(tag, inc, prompt, _exact(inc)))
    else:
        raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")
    return tuple(json.dumps(r) for r in records)


def all_records(tag: str) -> list[dict]:
    """Every record of a tag, in a fixed order (``complex`` is too large: sample it)."""
    if tag == "complex":
        raise ValueError("'complex' records are sampled (sample_record), not enumerated")
    return [json.loads(r) for r in _space(tag)]


def _complex(rng: np.random.Generator) -> dict:
    a_shape, b_shape = _PAIRS[rng.integers(len(_PAIRS))]
    slots = [(o, k) for o in (0, 1) for k in ("size", "texture", "color")]
    chosen = [slots[i] for i in rng.choice(len(slots), size=int(rng.integers(2, 4)), replace=False)]
    values = {"size": SIZES, "texture": TEXTURES, "color": _COLOR_NAMES}
    attrs: list[dict] = [{}, {}]
    for o, k in chosen:
        attrs[o][k] = values[k][rng.integers(len(values[k]))]
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    record = _relation("complex", _clause(a_shape, **attrs[0]), relation, _clause(b_shape, **attrs[1]))
    record["prompt"] = record["prompt"].format(verb=("is", "was")[rng.integers(2)])
    return record


def sample_record(tag: str, rng: np.random.Generator) -> dict:
    """A random prompt record of a GenEval tag or CompBench category (uniform over the
    tag's records, except ``complex``, sampled compositionally)."""
    if tag == "complex":
        return _complex(rng)
    space = _space(tag)
    return json.loads(space[rng.integers(len(space))])


def content_key(record: dict) -> str:
    """What a record asks for, independent of tag and wording."""
    return json.dumps([record.get("include", []), record.get("exclude", [])], sort_keys=True)


def _rank(seed: int, record: dict) -> int:
    """A seeded pseudo-random rank of what a record asks for: records of different tags
    asking for the same thing (GenEval "a photo of two circles", CompBench "two
    circles") rank alike, so they tend to be held out together."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{content_key(record)}".encode(), digest_size=8).digest(), "big")


def named_prompt_set(name: str) -> list[dict]:
    """``capo.prompts``' named set ``shapes:<name>``: the records of ``prompt_sets(distinct=True)``
    (each prompt once; the evaluation sets repeat prompts to fill their tags)."""
    sets = prompt_sets(distinct=True)
    if name not in sets:
        raise PromptError(f"unknown shapes prompt set {name!r}; known: {', '.join('shapes:' + k for k in sets)}")
    return sets[name]


def prompt_sets(seed: int = 0, n_train: int = 6000, n_eval: int = 50, distinct: bool = False) -> dict[str, list[dict]]:
    """Training prompts and held-out evaluation sets, deterministic in ``seed``.

    Returns ``{"train": [...], "geneval": [...], "compbench:<category>": [...], ...}``.
    Per tag, a held-out part of the tag's records is drawn first: ``n_eval`` distinct
    records, or half of the tag's records where it has fewer than ``2 * n_eval`` (e.g.
    two of the four ``single_object`` prompts), those ranking first by ``_rank``. Every evaluation set has ``n_eval``
    records per tag, cycling through its held-out records where there are fewer (as
    GenEval draws several images per prompt). ``"geneval"`` holds all six GenEval tags.
    ``"train"`` has ``n_train`` records, an equal share per tag in random order, drawn
    from what no held-out record asks for (neither the same prompt nor the same
    clauses under another tag's wording), cycling where a tag has few.
    Ids: ``"train/000017"``, ``"geneval/position/004"``, ``"compbench:color/031"``.
    The small tags make prompts repeat within a set (the train set of seed 0 has about
    1,300 distinct prompts); ``distinct=True`` keeps only each set's first record of
    every prompt (ids unchanged), for consumers that want each prompt once and draw
    several images per prompt instead.
    """
    rng = np.random.default_rng(seed)
    held: dict[str, list[dict]] = {}
    for tag in TAGS:
        if tag == "complex":
            seen: dict[str, dict] = {}
            while len(seen) < n_eval:
                r = _complex(rng)
                seen.setdefault(r["prompt"], r)
            held[tag] = list(seen.values())
        else:
            records = all_records(tag)
            n_hold = min(n_eval, len(records) // 2)
            held[tag] = sorted(records, key=lambda r: _rank(seed, r))[:n_hold]
    held_keys = {content_key(r) for rs in held.values() for r in rs}
    held_prompts = {r["prompt"] for rs in held.values() for r in rs}

    def unseen(r: dict) -> bool:
        return content_key(r) not in held_keys and r["prompt"] not in held_prompts

    sets: dict[str, list[dict]] = {"train": [], "geneval": []}
    per_tag = math.ceil(n_train / len(TAGS))
    for tag in TAGS:
        name = "geneval" if tag in GENEVAL_TAGS else f"compbench:{tag}"
        prefix = f"geneval/{tag}" if tag in GENEVAL_TAGS else name
        sets.setdefault(name, [])
        sets[name] += [dict(held[tag][i % len(held[tag])], id=f"{prefix}/{i:03d}") for i in range(n_eval)]
        if tag == "complex":
            train = []
            while len(train) < per_tag:
                r = _complex(rng)
                if unseen(r):
                    train.append(r)
        else:
            pool = [r for r in map(json.loads, _space(tag)) if unseen(r)]
            if not pool:
                raise ValueError(f"no training records left for {tag!r}")
            order = np.concatenate([rng.permutation(len(pool)) for _ in range(math.ceil(per_tag / len(pool)))])
            train = [pool[i] for i in order[:per_tag]]
        sets["train"] += train
    order = rng.permutation(len(sets["train"]))[:n_train]
    sets["train"] = [dict(sets["train"][i], id=f"train/{j:06d}") for j, i in enumerate(order)]
    if distinct:
        for name, records in sets.items():
            seen_prompts: set[str] = set()
            sets[name] = [r for r in records if not (r["prompt"] in seen_prompts or seen_prompts.add(r["prompt"]))]
    return sets


# --------------------------------------------------------------------------- scenes

def clearly_holds(relation: str, box_a, box_b) -> bool:
    """"A ``relation`` B" holds beyond doubt: by GenEval's rule it is the only relation
    between the boxes and still holds with twice GenEval's margin, and CompBench's rule
    gives it full marks; "next to" means side by side, level, at most ``NEXT_TO_GAP`` apart."""
    if relation == "next to":
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box_a, box_b
        gap = max(bx0 - ax1, ax0 - bx1)
        level = abs((ay0 + ay1) - (by0 + by1)) / 2 < 0.05
        return level and 0 < gap <= NEXT_TO_GAP and compbench_position(relation, box_a, box_b) >= 1.0
    return (relative_position(box_a, box_b) == {relation}
            and relation in relative_position(box_a, box_b, CLEAR_THRESHOLD)
            and compbench_position(relation, box_a, box_b) >= 1.0)


def _place(specs: list[dict], relations: list[tuple[int, str, int]], rng: np.random.Generator,
           tries: int = 256) -> list[tuple[float, float]] | None:
    """Centres for objects ``specs`` (each with a ``size``), one at a time by rejection
    among ``tries`` uniform candidates: inside the image, at least ``GAP`` apart on some
    axis, and every ``(i, relation, j)`` clearly holding once ``i`` and ``j`` are placed.
    ``None`` if it gets stuck."""
    boxes = np.zeros((0, 4))
    for i, spec in enumerate(specs):
        r = EXTENTS[spec["size"]]
        xy = rng.uniform(EDGE + r, 1 - EDGE - r, size=(tries, 2))
        cand = np.concatenate([xy - r, xy + r], axis=1)  # (tries, 4) boxes
        apart = np.ones(tries, bool)
        for o in boxes:
            apart &= ((cand[:, 0] >= o[2] + GAP) | (o[0] >= cand[:, 2] + GAP)
                      | (cand[:, 1] >= o[3] + GAP) | (o[1] >= cand[:, 3] + GAP))
        todo = [(a, rel, b) for a, rel, b in relations if max(a, b) == i]
        for k in np.flatnonzero(apart):
            box = tuple(cand[k])
            if all(clearly_holds(rel, box if a == i else tuple(boxes[a]), box if b == i else tuple(boxes[b]))
                   for a, rel, b in todo):
                break
        else:
            return None
        boxes = np.vstack([boxes, cand[k]])
    return [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]


def _grid_place(specs: list[dict], relations: list[tuple[int, str, int]], rng: np.random.Generator,
                tries: int = 64) -> list[tuple[float, float]] | None:
    """Fallback for crowded scenes (e.g. four large objects), which uniform placement
    rarely packs: objects go to distinct cells of a 2x2 grid, jittered within their cell,
    kept ``GAP / 2`` off the inner cell borders; the same checks as ``_place``."""
    cell = (1 - 2 * EDGE) / 2
    for _ in range(tries):
        cells = rng.permutation(4)[:len(specs)]
        boxes = []
        for spec, c in zip(specs, cells):
            r = EXTENTS[spec["size"]]
            lo = np.array([EDGE + (c % 2) * (cell + GAP / 2) + r, EDGE + (c // 2) * (cell + GAP / 2) + r])
            hi = lo + max(cell - GAP / 2 - 2 * r, 0.0)
            x, y = rng.uniform(lo, hi)
            boxes.append((x - r, y - r, x + r, y + r))
        if all(_apart(b, boxes[:i]) for i, b in enumerate(boxes)) and all(
                clearly_holds(rel, boxes[a], boxes[b]) for a, rel, b in relations):
            return [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    return None


def _apart(box, others) -> bool:
    return all(box[0] >= o[2] + GAP or o[0] >= box[2] + GAP or box[1] >= o[3] + GAP or o[1] >= box[3] + GAP
               for o in others)


def _choice(options, rng: np.random.Generator):
    return options[rng.integers(len(options))]


def sample_scene(record: dict, rng: np.random.Generator, max_restarts: int = 100) -> Scene:
    """A random scene satisfying ``record``: exactly the objects its clauses ask for,
    unspecified attributes uniform, positions uniform subject to the record's relations
    holding clearly (``clearly_holds``) and to objects never overlapping. When placement
    gets stuck, unspecified sizes are redrawn, every tenth try on a 2x2 grid
    (``_grid_place``), and after half of ``max_restarts`` they are set to small."""
    specs, owner = [], []
    for ci, clause in enumerate(record.get("include", [])):
        for _ in range(clause["count"]):
            specs.append({k: clause.get(k) for k in ("color", "texture", "size")} | {"shape": clause["class"]})
            owner.append(ci)
    if not 1 <= len(specs) <= MAX_OBJECTS:
        raise ValueError(f"record asks for {len(specs)} objects; the world draws 1..{MAX_OBJECTS}")
    relations = []
    for ci, clause in enumerate(record.get("include", [])):
        if "position" in clause:
            relation, target = clause["position"]
            relations += [(i, relation, j) for i in range(len(specs)) if owner[i] == ci
                          for j in range(len(specs)) if owner[j] == target]
    for attempt in range(max_restarts):
        objs = [{"shape": s["shape"],
                 "color": s["color"] or _choice(_COLOR_NAMES, rng),
                 "texture": s["texture"] or _choice(TEXTURES, rng),
                 "size": s["size"] or (_choice(SIZES, rng) if attempt < max_restarts // 2 else "small")}
                for s in specs]
        centres = _place(objs, relations, rng)
        if centres is None and attempt % 10 == 9:
            centres = _grid_place(objs, relations, rng)
        if centres is not None:
            order = rng.permutation(len(objs))
            return Scene(tuple(Obj(**objs[i], x=float(centres[i][0]), y=float(centres[i][1])) for i in order))
    raise RuntimeError(f"could not place a scene for {record.get('prompt')!r}")


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A scene of 1..MAX_OBJECTS objects with every attribute uniform (distinct shapes not required)."""
    n = int(n_objects or rng.integers(1, MAX_OBJECTS + 1))
    record = {"include": [{"class": _choice(SHAPES, rng), "count": 1} for _ in range(n)]}
    return sample_scene(record, rng)


# --------------------------------------------------------------------------- captions

def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A caption listing every object with all its attributes ("a large striped red circle
    and two small blue squares"; identical objects grouped, groups in random order). A
    two-object scene whose objects stand in a clear relation is worded with it half of
    the time ("... left of ..."). If the caption would exceed ``MAX_PROMPT_WORDS``,
    random attributes are dropped until it fits (unmentioned attributes are then free,
    as in every other prompt)."""
    groups: dict[tuple, list[Obj]] = {}
    for o in scene.objects:
        groups.setdefault((o.shape, o.color, o.texture, o.size), []).append(o)
    clauses = [_clause(k[0], len(v), color=k[1], texture=k[2], size=k[3]) for k, v in groups.items()]
    clauses = [clauses[i] for i in rng.permutation(len(clauses))]
    relation = None
    if len(scene.objects) == 2 and len(clauses) == 2 and rng.random() < 0.5:
        (a, b) = [groups[(c["class"], c["color"], c["texture"], c["size"])][0] for c in clauses]
        held = [r for r in RELATIONS[:4] if clearly_holds(r, a.box, b.box)]
        relation = held[0] if held else None

    def text() -> str:
        if relation is not None:
            return f"{_noun_phrase(clauses[0])} {relation} {_noun_phrase(clauses[1])}"
        return " and ".join(_noun_phrase(c) for c in clauses)

    while len(tokenize_words(text())) > MAX_PROMPT_WORDS:
        slots = [(i, k) for i, c in enumerate(clauses) for k in ("size", "texture", "color") if k in c]
        i, k = slots[rng.integers(len(slots))]
        del clauses[i][k]
    return text()


def sample_training_pair(rng: np.random.Generator, p_caption: float = 0.5) -> tuple[str, Scene]:
    """A (prompt, scene) pair for pretraining a base model: with probability ``p_caption``
    a random scene and its full caption (``describe``), otherwise a record of a uniformly
    drawn tag and a scene satisfying it. Draws from all records, held-out ones included
    (the base model stands for a model pretrained on broad data)."""
    if rng.random() < p_caption:
        scene = random_scene(rng)
        return describe(scene, rng), scene
    record = sample_record(_choice(TAGS, rng), rng)
    return record["prompt"], sample_scene(record, rng)
