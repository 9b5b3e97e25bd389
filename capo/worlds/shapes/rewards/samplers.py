"""Image samplers for the reward models' data: ``sample_images(records, rng)`` callables
returning one uint8 ``(32, 32, 3)`` image per record.

The default, ``render_sampler``, renders a scene of the record and then, on purpose,
sometimes gets it wrong (a scene of a perturbed prompt: swapped colours, wrong counts,
flipped relations, other shapes; a missing or an extra object) and sometimes degrades it
(blur, noise, colour shift, fading), so the pool looks like a mediocre generator's
samples; ``pipeline_sampler`` draws a base model's samples and ``mixed_sampler`` mixes
samplers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .degradations import DEGRADATIONS, degrade
from ..grammar import sample_scene
from .negatives import perturb_prompt
from ..parsing import _prompt_text
from ..render import render_batch
from ..scene import MAX_OBJECTS, SHAPES, Scene

CONTENT_ERRORS = ("perturbed", "missing", "extra")


def _wrong_scene(record: dict, kind: str, rng: np.random.Generator) -> Scene | None:
    if kind == "perturbed":
        neg = perturb_prompt(record, rng)
        return None if neg is None else sample_scene(neg[0], rng)
    if kind == "extra":
        include = record.get("include", [])
        if sum(c["count"] for c in include) >= MAX_OBJECTS:
            return None
        extra = {"class": SHAPES[rng.integers(len(SHAPES))], "count": 1}
        return sample_scene({"include": list(include) + [extra]}, rng)
    scene = sample_scene(record, rng)  # "missing": drop one object (may leave the image empty)
    drop = rng.integers(len(scene))
    return Scene(tuple(o for i, o in enumerate(scene.objects) if i != drop))


def render_sampler(p_wrong: float = 0.35, p_degrade: float = 0.4) -> Callable:
    """``sample_images(records, rng) -> uint8 (B, 32, 32, 3)``: a rendered scene of each
    record; with probability ``p_wrong`` a content error instead (``CONTENT_ERRORS``, one
    drawn uniformly: a scene of a hard-negative prompt, one object missing, one extra
    object); then with probability ``p_degrade`` one or two ``DEGRADATIONS``."""
    def sample_images(records: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
        scenes = []
        for record in records:
            scene = None
            if rng.random() < p_wrong:
                kind = CONTENT_ERRORS[rng.integers(len(CONTENT_ERRORS))]
                try:
                    scene = _wrong_scene(record, kind, rng)
                except (RuntimeError, ValueError):
                    scene = None
            scenes.append(scene if scene is not None else sample_scene(record, rng))
        images = render_batch(scenes)
        for b in range(len(images)):
            if rng.random() < p_degrade:
                for k in rng.permutation(len(DEGRADATIONS))[:rng.integers(1, 3)]:
                    images[b] = degrade(images[b], DEGRADATIONS[k], rng)
        return images

    sample_images.description = f"rendered+perturbed (p_wrong={p_wrong}, p_degrade={p_degrade})"
    return sample_images


def pipeline_sampler(pipe, steps: int | None = None, guidance: float | None = None, batch_size: int = 64) -> Callable:
    """``sample_images`` drawing a base model's samples (``ShapesPipeline.sample``), one
    seed per image from ``rng``."""

    def sample_images(records: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
        if not len(records):
            return np.zeros((0, 32, 32, 3), np.uint8)
        seeds = rng.integers(0, 2 ** 31 - 1, len(records)).tolist()
        images, _ = pipe.sample([_prompt_text(r) for r in records], seeds, steps=steps, guidance=guidance,
                                batch_size=batch_size)
        return np.asarray(images)

    sample_images.description = f"base model {getattr(pipe, 'kind', '?')}"
    return sample_images


def mixed_sampler(samplers: Sequence[Callable], weights: Sequence[float]) -> Callable:
    """Each record's image from one of ``samplers``, drawn with probabilities ``weights``."""
    w = np.asarray(weights, np.float64) / np.sum(weights)

    def sample_images(records: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
        which = rng.choice(len(samplers), size=len(records), p=w)
        out = np.zeros((len(records), 32, 32, 3), np.uint8)
        for k, s in enumerate(samplers):
            idx = np.flatnonzero(which == k)
            if len(idx):
                out[idx] = s([records[i] for i in idx], rng)
        return out

    sample_images.description = " + ".join(f"{wk:.2f} {getattr(s, 'description', s)}" for s, wk in zip(samplers, w))
    return sample_images
