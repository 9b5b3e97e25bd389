"""Rasterise scenes: anti-aliased 32x32 RGB images, vectorised over all objects of a batch.

Each pixel is the mean over ``SUPERSAMPLE x SUPERSAMPLE`` sub-pixel samples (a box
filter), so object edges take intermediate values. With ``A`` the fraction of a pixel's
samples inside an object and ``D`` the fraction inside it *and* on a texture mark, the
pixel is ``background + A * (colour - background) - D * (1 - SHADE) * colour``; objects
never overlap, so their contributions add. Deterministic: no randomness anywhere.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .scene import BACKGROUND, COLORS, EXTENTS, SHADE, TEXTURE_PERIOD, Scene

SUPERSAMPLE = 4
_BG = np.asarray(BACKGROUND, np.float32)
_RGB = {name: np.asarray(rgb, np.float32) for name, rgb in COLORS.items()}


def coverage(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of ``shape`` at object coordinates ``(u, v)`` (broadcast), see ``scene``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":
        return (np.abs(u) <= (v + 1.0) * 0.5) & (v <= 1.0)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def _marks(texture: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Texture-mark mask (N, Q, Q) for per-object textures ``texture`` (N,) at sample
    coordinates ``xs``, ``ys`` (N, Q) given in image fractions."""
    fx = np.mod(xs / TEXTURE_PERIOD, 1.0)
    fy = np.mod(ys / TEXTURE_PERIOD, 1.0)
    stripe = (fy < 0.5)[:, :, None]
    dot = ((fy >= 0.25) & (fy < 0.75))[:, :, None] & ((fx >= 0.25) & (fx < 0.75))[:, None, :]
    striped = (texture == "striped")[:, None, None]
    dotted = (texture == "dotted")[:, None, None]
    return (striped & stripe) | (dotted & dot)


def render_batch(scenes: Sequence[Scene], size: int = 32) -> np.ndarray:
    """Render scenes to a ``(B, size, size, 3)`` uint8 array."""
    B = len(scenes)
    items = [(b, o) for b, scene in enumerate(scenes) for o in scene.objects]
    pad = int(math.ceil(2 * max(EXTENTS.values()) * size)) + 3
    canvas = np.zeros((B, size + 2 * pad, size + 2 * pad, 3), np.float32)
    groups: dict[tuple[str, str], list[tuple[int, object]]] = {}
    for b, o in items:
        groups.setdefault((o.shape, o.size), []).append((b, o))
    offsets = (np.arange(SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    for (shape, size_name), group in groups.items():
        r = EXTENTS[size_name] * size  # half-extent in pixels
        P = int(math.ceil(2 * r)) + 2  # patch side in pixels
        cx = np.array([o.x for _, o in group], np.float32) * size
        cy = np.array([o.y for _, o in group], np.float32) * size
        ox = np.floor(cx - r).astype(np.int64) - 1  # patch origin (pixels)
        oy = np.floor(cy - r).astype(np.int64) - 1
        sub = (np.arange(P, dtype=np.float32)[:, None] + offsets[None, :]).reshape(-1)  # (Q,)
        xs = ox[:, None] + sub[None, :]  # (N, Q) sample x in pixels
        ys = oy[:, None] + sub[None, :]
        u = ((xs - cx[:, None]) / r)[:, None, :]
        v = ((ys - cy[:, None]) / r)[:, :, None]
        inside = coverage(shape, u, v)
        texture = np.array([o.texture for _, o in group])
        marked = inside & _marks(texture, xs / size, ys / size)
        N = len(group)
        A = inside.reshape(N, P, SUPERSAMPLE, P, SUPERSAMPLE).mean((2, 4), dtype=np.float32)
        D = marked.reshape(N, P, SUPERSAMPLE, P, SUPERSAMPLE).mean((2, 4), dtype=np.float32)
        rgb = np.stack([_RGB[o.color] for _, o in group])  # (N, 3)
        contrib = A[..., None] * (rgb - _BG)[:, None, None, :] - D[..., None] * ((1 - SHADE) * rgb)[:, None, None, :]
        for i, (b, _) in enumerate(group):
            y0, x0 = oy[i] + pad, ox[i] + pad
            canvas[b, y0:y0 + P, x0:x0 + P] += contrib[i]
    image = canvas[:, pad:pad + size, pad:pad + size] + _BG
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """Render one scene to a ``(size, size, 3)`` uint8 array."""
    return render_batch([scene], size)[0]
