"""The shapes world's object detector and its GenEval / T2I-CompBench scorers.

``detect`` segments an image into objects without any learned model:

1. pixels farther than ``SEGMENT_THRESHOLD`` (RGB distance; in noisy images
   ``NOISE_MARGIN`` noise standard deviations of it, see ``noise_level``) from the
   background colour are foreground; 4-connected components of them are candidate
   objects, and those smaller than ``MIN_AREA`` pixels are dropped as specks
   (``segment``);
2. colour: every pixel of a component (and its one-pixel rim) is explained as
   ``p = a * c + (1 - alpha) * background`` for each palette colour ``c`` (least squares
   in RGB); the colour with the smallest residual wins. ``alpha`` is the pixel's
   coverage, ``a / alpha`` its shade (1 = colour, ``SHADE`` = texture mark);
3. shape: for each shape, the extent that matches the component's soft area
   (``sum(alpha)``) and the centre implied by its centroid give a template, rendered
   like the renderer does; the template closest to the coverage map (L1) wins. Its
   extent gives the size class and the bounding box;
4. texture: the fitted object is re-rendered with each texture (and each phase of its
   pattern, in quarter-period steps, since a generator may shift it); the rendering
   closest to the image (squared error) wins.

Every detection carries a ``score`` in [0, 1], a confidence that falls with the
template misfit and the colour residual, so blurred or noisy (generated) images give
lower scores rather than confident nonsense.

The scorers follow the benchmarks' own rules, adapted to this world where the text
says how (see ``score_geneval`` and ``score_compbench``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from capo.method.positions import determine_position, relative_position  # the benchmarks' rules, one implementation

from .render import SUPERSAMPLE, coverage
from .scene import BACKGROUND, COLORS, EXTENTS, FILL, SHADE, SHAPES, TEXTURE_PERIOD, TEXTURES

SEGMENT_THRESHOLD = 40.0  # RGB distance from the background for a foreground pixel
MIN_AREA = 6  # pixels; smaller components are specks
NOISE_MARGIN = 3.5  # noisy images: foreground beyond this many noise standard deviations
SIZE_BOUNDARY = 0.5 * (EXTENTS["small"] + EXTENTS["large"])  # half-extent, image fractions

_BG = np.asarray(BACKGROUND, np.float64)
_COLOR_NAMES = tuple(COLORS)
_RGB = np.asarray([COLORS[c] for c in _COLOR_NAMES], np.float64)  # (K, 3)
# Per colour, the 3x2 basis [c, -bg] of p - bg = a c - alpha bg and its pseudo-inverse.
_BASES = np.stack([np.stack([c, -_BG], axis=1) for c in _RGB])  # (K, 3, 2)
_PINVS = np.stack([np.linalg.pinv(M) for M in _BASES])  # (K, 2, 3)


# --------------------------------------------------------------------------- detection

def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean (H, W) mask: ``(labels, count)``, labels 1..count
    and 0 for background. Pure numpy: min-label propagation with pointer jumping."""
    H, W = mask.shape
    n = H * W
    big = np.int64(n)
    lab = np.where(mask, np.arange(n, dtype=np.int64).reshape(H, W), big)
    while True:
        m = lab.copy()
        np.minimum(m[1:, :], lab[:-1, :], out=m[1:, :])
        np.minimum(m[:-1, :], lab[1:, :], out=m[:-1, :])
        np.minimum(m[:, 1:], lab[:, :-1], out=m[:, 1:])
        np.minimum(m[:, :-1], lab[:, 1:], out=m[:, :-1])
        m = np.where(mask, m, big)
        flat = m.ravel()
        fg = flat < big
        flat[fg] = np.minimum(flat[fg], flat[flat[fg]])  # pointer jumping
        if np.array_equal(m, lab):
            break
        lab = m
    roots, labels = np.unique(lab, return_inverse=True)
    labels = labels.reshape(H, W) + 1
    if roots[-1] == big:
        labels[lab == big] = 0
        count = len(roots) - 1
    else:
        count = len(roots)
    return labels.astype(np.int32), count


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _supersamples(y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample coordinates (pixels) of the window, as a column and a row."""
    off = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    xs = (x0 + np.arange(w)[:, None] + off[None, :]).reshape(-1)
    ys = (y0 + np.arange(h)[:, None] + off[None, :]).reshape(-1)
    return ys[:, None], xs[None, :]


def _pool(samples: np.ndarray, h: int, w: int) -> np.ndarray:
    """Box-filter sub-pixel samples (..., h*S, w*S) down to pixels (..., h, w)."""
    ph = np.repeat(np.eye(h), SUPERSAMPLE, axis=1) / SUPERSAMPLE  # (h, hS)
    pw = np.repeat(np.eye(w), SUPERSAMPLE, axis=1) / SUPERSAMPLE  # (w, wS)
    return ph @ samples.astype(np.float64) @ pw.T


def _texture_hypotheses(side: float, ys: np.ndarray, xs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mark masks ``(M, hS, wS)`` for every texture and every phase of its pattern in
    quarter-period steps (generated images may shift the pattern), with their names;
    ``ys`` (hS, 1), ``xs`` (1, wS) are sub-pixel sample coordinates in pixels."""
    period = TEXTURE_PERIOD * side
    q = np.arange(4)[:, None, None] / 4
    fy = np.mod(ys[None] / period + q, 1.0)  # (4, hS, 1)
    fx = np.mod(xs[None] / period + q, 1.0)  # (4, 1, wS)
    stripes = np.broadcast_to(fy < 0.5, (4, ys.shape[0], xs.shape[1]))
    dy, dx = (fy >= 0.25) & (fy < 0.75), (fx >= 0.25) & (fx < 0.75)
    dots = (dy[:, None] & dx[None, :]).reshape(16, ys.shape[0], xs.shape[1])
    solid = np.zeros((1, ys.shape[0], xs.shape[1]), bool)
    names = ["solid"] + ["striped"] * 4 + ["dotted"] * 16
    return names, np.concatenate([solid, stripes, dots])


def noise_level(image: np.ndarray) -> float:
    """Per-channel noise standard deviation, estimated robustly from the median absolute
    difference of horizontally adjacent pixels (0 for a clean rendering, whose flat
    background dominates; ``median |N(0, 2 s^2)| = 0.954 s`` for white noise ``s``)."""
    return float(np.median(np.abs(np.diff(np.asarray(image, np.float64), axis=1)))) / 0.954


def segment(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Foreground components of an (H, W, 3) image (step 1 of ``detect``): ``(labels,
    count)``, labels 1..count for components of at least ``MIN_AREA`` pixels, else 0."""
    img = np.asarray(image, np.float64)
    threshold = max(SEGMENT_THRESHOLD, NOISE_MARGIN * math.sqrt(3) * noise_level(img))
    labels, count = label_components(np.sqrt(((img - _BG) ** 2).sum(-1)) > threshold)
    big = np.bincount(labels.ravel(), minlength=count + 1) >= MIN_AREA
    big[0] = False
    relabel = np.zeros(count + 1, np.int32)
    relabel[big] = np.arange(1, big.sum() + 1)
    return relabel[labels], int(big.sum())


def detect(image: np.ndarray) -> list[dict]:
    """Objects in an (H, W, 3) uint8 image, most confident first.

    Each detection: ``class`` (shape), ``color``, ``texture``, ``size``, ``box``
    ``(x0, y0, x1, y1)`` and ``centroid`` ``(cx, cy)`` in pixels (continuous, pixel
    ``i`` spans ``[i, i + 1)``), ``area`` (soft, pixels) and ``score`` in [0, 1].
    """
    img = np.asarray(image, np.float64)
    side = float(min(img.shape[:2]))
    labels, count = segment(img)
    diff, noise = img - _BG, noise_level(img)
    out = [d for k in range(1, count + 1) for d in [_describe(diff, labels, k, side, noise)] if d is not None]
    out.sort(key=lambda d: -d["score"])
    return out


def detect_batch(images: np.ndarray) -> list[list[dict]]:
    """``detect`` over a (B, H, W, 3) batch."""
    return [detect(im) for im in images]


def _describe(diff: np.ndarray, labels: np.ndarray, k: int, side: float, noise: float) -> dict | None:
    """Classify component ``k``; ``diff`` is the image minus the background colour,
    ``noise`` the image's noise level (``noise_level``)."""
    H, W, _ = diff.shape
    comp = labels == k
    region = _dilate(comp) & ((labels == 0) | comp)
    ys, xs = np.nonzero(region)
    P = diff[ys, xs]  # (n, 3)
    # 2. colour: least-squares fit of p - bg = a c - alpha bg for each palette colour c
    coef = np.einsum("kij,nj->kni", _PINVS, P)  # (K, n, 2): (a, alpha)
    fit = np.einsum("kij,knj->kni", _BASES, coef)
    err = ((P[None] - fit) ** 2).sum(-1)[:, comp[ys, xs]].mean(1)  # (K,)
    ci = int(np.argmin(err))
    color_rms = math.sqrt(err[ci] / 3)
    alpha = np.clip(coef[ci, :, 1], 0.0, 1.0)
    # 3. shape: coverage map on a window around the component vs. area-matched templates
    y0, x0 = max(ys.min() - 2, 0), max(xs.min() - 2, 0)
    y1, x1 = min(ys.max() + 3, H), min(xs.max() + 3, W)
    h, w = y1 - y0, x1 - x0
    amap = np.zeros((h, w))
    amap[ys - y0, xs - x0] = alpha
    A = amap.sum()
    if A <= 0:
        return None
    gy, gx = np.mgrid[y0:y1, x0:x1] + 0.5
    my, mx = (amap * gy).sum() / A, (amap * gx).sum() / A
    sy, sx = _supersamples(y0, x0, h, w)
    fits = []
    for shape in SHAPES:
        r = math.sqrt(A / (4 * FILL[shape]))
        cy = my - r / 3 if shape == "triangle" else my  # a triangle's centroid is r/3 below its box centre
        inside = coverage(shape, (sx - mx) / r, (sy - cy) / r)
        fits.append((np.abs(amap - _pool(inside, h, w)).sum() / A, shape, r, cy, inside))
    fits.sort(key=lambda f: f[0])
    misfit, shape, r, cy, inside = fits[0]
    runner_up = fits[1][0]
    # 4. texture: re-render the fitted object with every texture hypothesis, keep the closest
    t = _pool(inside, h, w)
    rgb = _RGB[ci]
    window = diff[y0:y1, x0:x1]
    base = t[..., None] * (rgb - _BG)
    names, marks = _texture_hypotheses(side, sy, sx)
    D = _pool(inside[None] & marks, h, w)
    sse = ((window[None] - (base[None] - D[..., None] * ((1 - SHADE) * rgb))) ** 2).sum((1, 2, 3))
    best = {name: float(sse[[i for i, n in enumerate(names) if n == name]].min()) for name in TEXTURES}
    ranked = sorted(best, key=best.get)
    texture = ranked[0]
    gap = (best[ranked[1]] - best[ranked[0]]) / (A * ((1 - SHADE) * rgb) @ ((1 - SHADE) * rgb) * 0.1 + 1e-9)
    size = "large" if r / side > SIZE_BOUNDARY else "small"
    # confidence that this is an object of this class (a detector's score): template misfit,
    # shape ambiguity, colour residual. Texture ambiguity is an attribute's uncertainty, kept
    # apart ("texture_score") so that it cannot sink GenEval's 0.9 counting threshold.
    shape_conf = math.exp(-max(misfit - 0.12, 0.0) / 0.15)
    margin_conf = min(max((runner_up - misfit) / 0.08, 0.0), 1.0)
    texture_conf = min(max(gap, 0.0), 1.0)
    color_conf = math.exp(-max(color_rms - 6.0 - noise, 0.0) / 15.0)
    score = shape_conf * (0.5 + 0.5 * margin_conf) * color_conf
    return {
        "class": shape, "color": _COLOR_NAMES[ci], "texture": texture, "size": size,
        "box": (float(mx - r), float(cy - r), float(mx + r), float(cy + r)),
        "centroid": (float(mx), float(my)), "area": float(A), "score": float(min(max(score, 0.0), 1.0)),
        "texture_score": float(texture_conf),
    }


# --------------------------------------------------------------------------- relations

GENEVAL_THRESHOLD = 0.3  # GenEval's default detection-score threshold ...
GENEVAL_COUNTING_THRESHOLD = 0.9  # ... and the stricter one for its "counting" tag
COMPBENCH_IOU_THRESHOLD = 0.1  # T2I-CompBench determine_position defaults
COMPBENCH_NEXT_TO = 150 / 512  # its distance_threshold (150 px on 512 px images), as a fraction
COUNTING_TAGS = ("counting", "numeracy")
ATTRIBUTES = ("color", "texture", "size")


def compbench_position(relation: str, box_a: Sequence[float], box_b: Sequence[float], side: float = 1.0,
                       iou_threshold: float = COMPBENCH_IOU_THRESHOLD,
                       next_to: float = COMPBENCH_NEXT_TO) -> float:
    """Soft score in [0, 1] that "A ``relation`` B", T2I-CompBench's rule
    (``determine_position`` in ``UniDet_eval/2D_spatial_eval.py`` of
    Karine-Huang/T2I-CompBench): for left/right/above/below the centre offset must point
    the right way and dominate the other axis; it scores 1 if the boxes' IoU is below
    ``iou_threshold`` and ``iou_threshold / IoU`` otherwise. "next to" scores 1 when
    either centre distance is below ``next_to`` (a fraction of ``side``) and decays as
    ``next_to / distance`` beyond. Relations are named as in GenEval ("above" = CompBench's
    "on the top of", "below" = "on the bottom of")."""
    if relation not in LOCALITY:
        raise ValueError(f"unknown relation {relation!r}")
    return determine_position(LOCALITY[relation], box_a, box_b, iou_threshold=iou_threshold,
                              distance_threshold=next_to * side)


# GenEval's relation names -> T2I-CompBench's localities
LOCALITY = {"left of": "on the left of", "right of": "on the right of", "above": "on the top of",
            "below": "on the bottom of", "next to": "next to"}


def _holds(relation: str, box_a, box_b, side: float) -> bool:
    if relation == "next to":
        return compbench_position(relation, box_a, box_b, side) >= 1.0
    return relation in relative_position(box_a, box_b)


# --------------------------------------------------------------------------- scorers

def _by_class(detections: Sequence[dict], threshold: float) -> dict[str, list[dict]]:
    """Detections above ``threshold``, grouped by class, most confident first."""
    groups: dict[str, list[dict]] = {}
    for d in sorted(detections, key=lambda d: -d["score"]):
        if d["score"] > threshold:
            groups.setdefault(d["class"], []).append(d)
    return groups


def _matches(clause: dict, d: dict) -> bool:
    return d["class"] == clause["class"] and all(d[k] == clause[k] for k in ATTRIBUTES if k in clause)


def score_geneval(record: dict, detections: Sequence[dict], threshold: float = GENEVAL_THRESHOLD,
                  counting_threshold: float = GENEVAL_COUNTING_THRESHOLD, side: float = 32.0) -> bool:
    """GenEval's verdict (``evaluate`` in ``evaluation/evaluate_images.py``) for one image.

    Detections scoring above ``threshold`` (``counting_threshold`` for counting tags) are
    grouped by class, most confident first. For each ``include`` clause the ``count``
    most confident objects of its class are taken; there must be ``count`` of them, and
    all of them must carry the clause's colour (and, in this world, its texture and
    size when given); with ``position: [relation, j]`` every one of them must stand in
    that relation (``relative_position``; "next to" by CompBench's rule) to every object
    taken for clause ``j``, which must itself have matched. An ``exclude`` clause fails
    the image when at least ``count`` objects of its class are detected.
    """
    thr = counting_threshold if record.get("tag") in COUNTING_TAGS else threshold
    objects = _by_class(detections, thr)
    matched: list[list[dict] | None] = []
    correct = True
    for clause in record.get("include", []):
        found = objects.get(clause["class"], [])[:clause["count"]]
        ok = len(found) >= clause["count"] and all(_matches(clause, d) for d in found)
        if ok and "position" in clause:
            relation, target = clause["position"]
            group = matched[target]
            ok = group is not None and all(_holds(relation, d["box"], t["box"], side) for d in found for t in group)
        matched.append(found if ok else None)
        correct &= ok
    for clause in record.get("exclude", []):
        if len(objects.get(clause["class"], [])) >= clause["count"]:
            correct = False
    return bool(correct)


def _spatial(clauses: Sequence[dict], objects: dict[str, list[dict]], side: float) -> float:
    """CompBench's spatial score: 0.25 per object found (its detector confidence, here the
    detection is thresholded instead) + 0.5 * ``compbench_position``; below 0.5 it is 0."""
    (b, a) = clauses  # the relation clause comes second and refers to the first
    relation = a["position"][0]
    found_a, found_b = objects.get(a["class"], [])[:1], objects.get(b["class"], [])[:1]
    score = 0.25 * bool(found_a) + 0.25 * bool(found_b)
    if found_a and found_b:
        score += 0.5 * compbench_position(relation, found_a[0]["box"], found_b[0]["box"], side)
    return score if score >= 0.5 else 0.0


def score_compbench(record: dict, detections: Sequence[dict], threshold: float = GENEVAL_THRESHOLD,
                    side: float = 32.0) -> float:
    """T2I-CompBench-style score in [0, 1] for one image, by the record's category.

    - ``color``, ``shape`` (size binding in this world), ``texture``: the fraction of
      noun phrases (include clauses) for which ``count`` detected objects of that class
      carry all of the phrase's attributes (CompBench asks BLIP-VQA about each phrase and
      multiplies; a fraction grades partial binding linearly instead);
    - ``spatial``: CompBench's UniDet rule, see ``_spatial``;
    - ``numeracy``: per noun, weight ``1 / nouns``: half for the class being present,
      half for its count being exact (CompBench's ``numeracy_eval.py``);
    - ``complex``: the mean of the attribute-binding part and the spatial part
      (CompBench's 3-in-1 averages its attribute, spatial and non-spatial scores; there
      is no non-spatial part here).
    """
    category = record.get("category", record.get("tag"))
    include = record.get("include", [])
    objects = _by_class(detections, threshold)

    def bound(clause: dict) -> float:
        return float(sum(_matches(clause, d) for d in objects.get(clause["class"], [])) >= clause["count"])

    if category in ("color", "shape", "texture"):
        return float(np.mean([bound(c) for c in include]))
    if category == "spatial":
        return _spatial(include, objects, side)
    if category == "numeracy":
        score = 0.0
        for c in include:
            n = len(objects.get(c["class"], []))
            score += (0.5 * (n > 0) + 0.5 * (n == c["count"])) / len(include)
        return score
    if category == "complex":
        return 0.5 * float(np.mean([bound(c) for c in include])) + 0.5 * _spatial(include, objects, side)
    raise ValueError(f"record has no CompBench category: {category!r}")
