"""The shapes world's hidden "true" human preference.

A simulated rater's utility for an image ``x`` of a prompt record ``c`` is::

    utility(c, x) = ALIGNMENT_WEIGHT * alignment(c, x) + (1 - ALIGNMENT_WEIGHT) * aesthetic(x)

with ``ALIGNMENT_WEIGHT = 0.6``, and a rater prefers ``a`` to ``b`` with the
Bradley-Terry probability ``sigmoid((utility(c, a) - utility(c, b)) / TEMPERATURE)``.

- ``alignment`` (does the image show what was asked?) is graded: the mean credit over the
  record's parts, i.e. each include clause (its objects present, with its attributes,
  weighted by detection confidence; extra objects cost where an exact count is asked
  for), each relation (graded by how far the offset points the right way) and each
  other exclude clause.
- ``aesthetic`` (is it pleasing?) looks at the image alone: a clean background, crisp
  edges, a composition balanced about the centre, few and large objects, and warm
  colours (red, orange, yellow liked more than green, purple, blue). It pulls against
  alignment on purpose: it dislikes the four objects a counting prompt asks for, the
  off-centre object a position prompt implies, and a blue object a colour prompt asks
  for.

Nothing here is visible to the trained models; rewards and evaluations built on it
stand in for human raters.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from capo.worlds.shapes.parsing import parse_prompt
from .evaluator import ATTRIBUTES, compbench_position, detect, segment
from .scene import BACKGROUND

ALIGNMENT_WEIGHT = 0.6
TEMPERATURE = 0.1  # Bradley-Terry temperature of the simulated rater (utility units)
# Aesthetic terms, each in [0, 1], and their weights (sum 1).
AESTHETIC_WEIGHTS = {
    "clean": 0.15,  # background free of noise: exp(-noise / CLEAN_SCALE)
    "sharp": 0.15,  # solid pixels (ink >= 0.6) among visible ones (ink >= 0.2); blur lowers it
    "balance": 0.25,  # 1 - 2 * distance of the ink's centre of mass from the image centre
    "simplicity": 0.15,  # 1 / (1 + (objects - 1) / 2); 0 for an empty image
    "presence": 0.10,  # ink area up to PRESENCE_AREA of the image (bigger is better, then flat)
    "warmth": 0.20,  # ink-weighted (R - B) / 510 + 1/2
}
CLEAN_SCALE = 6.0  # per-channel noise standard deviation at which "clean" is 1/e
INK_SCALE = 150.0  # RGB distance from the background at which a pixel counts as fully inked
PRESENCE_AREA = 0.12  # ink area, as a fraction of the image, that maxes out "presence"
_BG = np.asarray(BACKGROUND, np.float64)


# --------------------------------------------------------------------------- alignment

def _direction(relation: str, box_a, box_b, side: float) -> float:
    """Graded "A relation B" in [0, 1]: GenEval's shrunk offset (see
    ``evaluator.relative_position``) projected on the relation's direction, ``c``, gives
    ``clip(0.5 + c, 0, 1)`` (1 from where GenEval says it holds, c > 0.5; 0.5 side by side
    on the other axis; 0 opposite); "next to" uses CompBench's soft score."""
    if relation == "next to":
        return compbench_position(relation, box_a, box_b, side)
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box_a[:4], box_b[:4]
    ox, oy = (ax0 + ax1) / 2 - (bx0 + bx1) / 2, (ay0 + ay1) / 2 - (by0 + by1) / 2
    norm = math.hypot(ox, oy)
    if norm == 0:
        return 0.0
    rx = math.copysign(max(abs(ox) - 0.1 * (ax1 - ax0 + bx1 - bx0), 0.0), ox) / norm
    ry = math.copysign(max(abs(oy) - 0.1 * (ay1 - ay0 + by1 - by0), 0.0), oy) / norm
    c = {"left of": -rx, "right of": rx, "above": -ry, "below": ry}[relation]
    return float(min(max(0.5 + c, 0.0), 1.0))


def alignment_parts(record: dict, detections: Sequence[dict], side: float = 32.0) -> list[float]:
    """Credits in [0, 1] of a record's parts, in order: each include clause, then each
    relation, then each exclude clause that is not an exact-count clause.

    - clause: its ``count`` best-matching detections of the class (by attributes matched,
      then confidence) each earn ``confidence * fraction of the clause's attributes
      matched``; the credit is their sum over ``count`` (missing objects earn 0). Where
      the record asks for exactly ``count`` (an exclude clause of ``count + 1``, as in
      counting prompts), ``n > count`` objects of the class scale it by ``count / n``;
    - relation: ``_direction`` for every (object, target object) pair, averaged;
    - other exclude clauses: 1 if fewer than ``count`` objects of the class, else 0.
    """
    by_class: dict[str, list[dict]] = {}
    for d in detections:
        by_class.setdefault(d["class"], []).append(d)
    include = record.get("include", [])
    # classes asked for exactly: an include clause of count n and an exclude clause of n + 1
    exact = {c["class"] for c in include for e in record.get("exclude", [])
             if e["class"] == c["class"] and e["count"] == c["count"] + 1}
    taken: list[list[dict]] = []
    parts = []
    for clause in include:
        attrs = [k for k in ATTRIBUTES if k in clause]

        def quality(d: dict) -> float:
            return sum(d[k] == clause[k] for k in attrs) / len(attrs) if attrs else 1.0

        found = sorted(by_class.get(clause["class"], []), key=lambda d: (-quality(d), -d["score"]))
        n_class = len(found)
        found = found[:clause["count"]]
        taken.append(found)
        credit = sum(d["score"] * quality(d) for d in found) / clause["count"]
        if clause["class"] in exact and n_class > clause["count"]:
            credit *= clause["count"] / n_class  # asked for exactly ``count``: extras cost
        parts.append(credit)
    for clause, found in zip(include, taken):
        if "position" in clause:
            relation, target = clause["position"]
            pairs = [(d, t) for d in found for t in taken[target]]
            parts.append(float(np.mean([_direction(relation, d["box"], t["box"], side) for d, t in pairs]))
                         if pairs else 0.0)
    for clause in record.get("exclude", []):
        if clause["class"] not in exact:
            parts.append(float(len(by_class.get(clause["class"], [])) < clause["count"]))
    return parts


def alignment(record: dict, image: np.ndarray | None, detections: Sequence[dict] | None = None) -> float:
    """Graded prompt alignment in [0, 1]: the mean of ``alignment_parts``. Pass
    ``detections`` (of ``image``) to skip detection; ``image`` may then be ``None`` (32 px)."""
    if "include" not in record and record.get("prompt"):  # text only (a .txt prompt file): parse it

        record = {**record, **parse_prompt(record["prompt"])}  # a prompt outside the grammar: ValueError
    dets = detect(image) if detections is None else detections
    side = 32.0 if image is None else float(np.shape(image)[0])
    parts = alignment_parts(record, dets, side=side)
    if not parts:  # nothing to align with: the mean would be NaN and poison every utility after it
        raise ValueError(f"prompt {record.get('prompt', record.get('prompt_id'))!r} names no object the shapes world "
                         "knows (no include, relation or exclude clause): the shapes world's truth, gold reward "
                         "and labelled pairs need prompts of its grammar (shapes:train, shapes:geneval, ...)")
    return float(np.mean(parts))


# --------------------------------------------------------------------------- aesthetic

def aesthetic_terms(images: np.ndarray) -> dict[str, np.ndarray]:
    """The aesthetic terms (``AESTHETIC_WEIGHTS``) of a (B, H, W, 3) uint8 batch, each (B,)."""
    x = np.asarray(images, np.float64)
    B, H, W, _ = x.shape
    dist = np.sqrt(((x - _BG) ** 2).sum(-1))  # (B, H, W)
    ink = np.clip(dist / INK_SCALE, 0.0, 1.0)
    mass = ink.sum((1, 2))
    noise = np.median(np.abs(np.diff(x, axis=2)).reshape(B, -1), axis=1) / 0.954  # as evaluator.noise_level
    clean = np.exp(-noise / CLEAN_SCALE)
    visible = (ink >= 0.2).sum((1, 2))
    sharp = np.where(visible > 0, (ink >= 0.6).sum((1, 2)) / np.maximum(visible, 1), 0.0)
    ys, xs = (np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W
    safe = np.maximum(mass, 1e-9)
    com_y = (ink.sum(2) * ys).sum(1) / safe
    com_x = (ink.sum(1) * xs).sum(1) / safe
    balance = np.where(mass > 0, np.clip(1 - 2 * np.hypot(com_x - 0.5, com_y - 0.5), 0, 1), 0.0)
    objects = np.array([segment(x[b])[1] for b in range(B)])
    simplicity = np.where(objects > 0, 1 / (1 + (objects - 1) / 2), 0.0)
    presence = np.clip(mass / (H * W * PRESENCE_AREA), 0, 1)
    warm = ((x[..., 0] - x[..., 2]) / 510 + 0.5) * ink
    warmth = np.where(mass > 0, warm.sum((1, 2)) / safe, 0.0)
    return {"clean": clean, "sharp": sharp, "balance": balance, "simplicity": simplicity,
            "presence": presence, "warmth": warmth}


def aesthetic(images: np.ndarray) -> float | np.ndarray:
    """Image-only appeal in [0, 1]: ``sum_k AESTHETIC_WEIGHTS[k] * term_k``; a float for one
    (H, W, 3) image, an array for a (B, H, W, 3) batch."""
    x = np.asarray(images)
    single = x.ndim == 3
    terms = aesthetic_terms(x[None] if single else x)
    total = sum(w * terms[k] for k, w in AESTHETIC_WEIGHTS.items())
    return float(total[0]) if single else total


# --------------------------------------------------------------------------- preference

def utility(record: dict, image: np.ndarray, detections: Sequence[dict] | None = None) -> float:
    """``ALIGNMENT_WEIGHT * alignment + (1 - ALIGNMENT_WEIGHT) * aesthetic``, in [0, 1]."""
    return ALIGNMENT_WEIGHT * alignment(record, image, detections) + (1 - ALIGNMENT_WEIGHT) * aesthetic(image)


def utility_batch(records: Sequence[dict], images: np.ndarray) -> np.ndarray:
    """``utility`` of image ``i`` for record ``i``, (B,); the aesthetic part vectorised."""
    images = np.asarray(images)
    align = np.array([alignment(r, im) for r, im in zip(records, images)])
    return ALIGNMENT_WEIGHT * align + (1 - ALIGNMENT_WEIGHT) * aesthetic(images)


def preference_probability(utility_a, utility_b, temperature: float = TEMPERATURE):
    """Bradley-Terry ``P(a preferred to b) = sigmoid((u_a - u_b) / temperature)`` (broadcasts)."""
    z = (np.asarray(utility_a, np.float64) - np.asarray(utility_b, np.float64)) / temperature
    return 0.5 * (1 + np.tanh(z / 2))  # = sigmoid(z), without overflow


def simulate_choice(record: dict, img_a: np.ndarray, img_b: np.ndarray, rng: np.random.Generator,
                    noise: float = TEMPERATURE) -> int:
    """A simulated rater's pick between two images of ``record``: **0 if it prefers
    ``img_a``, 1 if ``img_b``**, drawn with ``P(0) = preference_probability(u_a, u_b, noise)``
    (``noise`` is the Bradley-Terry temperature; smaller = more decisive)."""
    p = preference_probability(utility(record, img_a), utility(record, img_b), noise)
    return int(rng.random() >= p)


def simulate_choices(records: Sequence[dict], imgs_a: np.ndarray, imgs_b: np.ndarray, rng: np.random.Generator,
                     noise: float = TEMPERATURE) -> np.ndarray:
    """``simulate_choice`` over a batch of pairs: (B,) int array, 0 = ``imgs_a[i]`` preferred."""
    p = preference_probability(utility_batch(records, imgs_a), utility_batch(records, imgs_b), noise)
    return (rng.random(len(p)) >= p).astype(np.int64)
