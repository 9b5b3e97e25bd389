"""Image degradations of the reward models' data (blur, noise, colour shift, fading), so
that the pool looks like a mediocre generator's samples (``samplers.render_sampler``).
"""

from __future__ import annotations

import numpy as np

from ..scene import BACKGROUND

_BG = np.asarray(BACKGROUND, np.float64)
DEGRADATIONS = ("blur", "noise", "color_shift", "fade")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = 3
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    h = sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * h[i:i + img.shape[0]] for i in range(2 * r + 1))


def degrade(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One degradation of a uint8 (H, W, 3) image, strengths uniform in ranges that take
    the truth's detector from unharmed to lost: gaussian ``blur`` (sigma 0.4-1.0 px),
    additive ``noise`` (std 4-24; hurts the aesthetic, barely the detector),
    ``color_shift`` (a per-channel offset of up to 30 on the objects, not the
    background), ``fade`` (5-30% of the way to the background)."""
    x = image.astype(np.float64)
    if kind == "blur":
        x = _blur(x, rng.uniform(0.4, 1.0))
    elif kind == "noise":
        x = x + rng.normal(0, rng.uniform(4, 24), x.shape)
    elif kind == "color_shift":
        ink = np.clip(np.sqrt(((x - _BG) ** 2).sum(-1, keepdims=True)) / 150.0, 0, 1)
        x = x + ink * rng.uniform(-30, 30, 3)
    elif kind == "fade":
        x = x + rng.uniform(0.05, 0.3) * (_BG - x)
    else:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
