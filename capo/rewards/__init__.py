"""Reward models behind one protocol, each declaring its Bradley-Terry transform.

A reward model is a callable ``reward(images, prompts) -> np.ndarray (B,) float64`` with
attributes ``name`` and ``bt_transform`` (``identity`` | ``logit`` | ``temperature:T``,
see ``capo.method.calibration``), built by a factory registered in ``REWARDS``
(``capo ls rewards``). Factories import their heavy dependencies lazily, take
``device=None`` and an optional ``path`` (a local directory instead of the hub id), and
raise ``RewardLoadError`` naming the model and how to get it when weights are missing.
Images are uint8 ``(B, H, W, 3)``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from capo.registry import Registry

REWARDS = Registry("reward model")


class RewardModel(Protocol):
    name: str
    bt_transform: str

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray: ...


class RewardLoadError(RuntimeError):
    """Weights or packages for a reward model are missing; the message says how to get them."""


def load_reward(name: str, **kwargs) -> RewardModel:
    return REWARDS.get(name)(**kwargs)
