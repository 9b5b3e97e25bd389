"""The benchmarks' spatial rules as pure math on boxes (``(x0, y0, x1, y1)``): GenEval's
``relative_position`` and T2I-CompBench's ``determine_position``, exactly as upstream writes
them. One implementation for every caller: the real benchmarks (``capo.eval.geneval``,
``capo.eval.t2i_compbench``) and the shapes world's evaluator and grammar.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Box = Sequence[float]
POSITION_THRESHOLD = 0.1  # GenEval: margin of the centre offset, a fraction of the two boxes' size
IOU_THRESHOLD = 0.1  # T2I-CompBench: boxes overlapping more score iou_threshold / IoU
DISTANCE_THRESHOLD = 150.0  # T2I-CompBench: "next to" within this many pixels of the detector's input frame


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      position_threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A to box B; upstream ``relative_position``.

    ``offset = centre_a - centre_b``; each axis is shrunk towards 0 by the margin
    ``position_threshold * (size_a + size_b)`` on that axis (widths for x, heights for y),
    clipped at 0. If both shrunk components are below 1e-3 in magnitude: no relation.
    Otherwise ``(dx, dy) = shrunk / |offset|`` (the norm of the *unshrunk* offset), and
    ``dx < -0.5`` -> "left of", ``dx > 0.5`` -> "right of", ``dy < -0.5`` -> "above",
    ``dy > 0.5`` -> "below" (image y grows downwards).
    """
    boxes = np.array([list(box_a)[:4], list(box_b)[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - position_threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def determine_position(locality: str | None, box1: Box, box2: Box, iou_threshold: float = IOU_THRESHOLD,
                       distance_threshold: float = DISTANCE_THRESHOLD) -> float:
    """Soft score in [0, 1] that object 1 stands in ``locality`` to object 2; upstream
    ``determine_position``. Boxes are ``(x0, y0, x1, y1)`` in the detector's 479-px frame.

    ``dx = cx2 - cx1``, ``dy = cy2 - cy1`` (centres), IoU without the +1 convention.
    * "next to" / "on side of" / "near": 1 if ``|dx| < 150`` or ``|dy| < 150``, else
      ``150 / max(|dx|, |dy|)``.
    * "on the right of": needs ``dx < 0`` and ``|dx| > |dy|``; then 1 if ``IoU < 0.1``, else
      ``0.1 / IoU``; otherwise 0. "on the left of": the same with ``dx > 0``.
    * "on the bottom of": ``dy < 0`` and ``|dy| > |dx|``; "on the top of": ``dy > 0`` and
      ``|dy| > |dx|``; same IoU rule.
    * anything else, including "on top of" (found by ``find_locality`` but not handled
      upstream), scores 0.
    """
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    x_overlap = max(0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    y_overlap = max(0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = x_overlap * y_overlap
    union = ((box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter)
    iou = inter / union if union > 0 else 0.0  # upstream divides unguarded

    def by_iou() -> float:
        return 1.0 if iou < iou_threshold else iou_threshold / iou

    if locality in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    if locality == "on the right of":
        return by_iou() if dx < 0 and abs(dx) > abs(dy) else 0.0
    if locality == "on the left of":
        return by_iou() if dx > 0 and abs(dx) > abs(dy) else 0.0
    if locality == "on the bottom of":
        return by_iou() if dy < 0 and abs(dy) > abs(dx) else 0.0
    if locality == "on the top of":
        return by_iou() if dy > 0 and abs(dy) > abs(dx) else 0.0
    return 0.0
