"""Calibrated rewards (the paper's Eq. 6-7) and the Bradley-Terry transforms before them.

Eq. 7, for the ``N`` reference samples ``x_1..x_N`` of one prompt ``c``::

    R_ca(x_i, c) = 1/(N-1) * sum_{j != i} sigmoid( R(x_i, c) - R(x_j, c) )

an estimate of the expected win-rate ``P(x_i > p_ref | c)`` (Eq. 6) under the
Bradley-Terry model of Eq. 2. It lies in [0, 1]; the mean over the N samples of a
prompt is exactly 1/2 (each unordered pair contributes ``sigmoid(d) + sigmoid(-d) = 1``);
it is invariant to adding a constant to one prompt's rewards.

Rewards not trained as BT logits are mapped onto a BT scale first (METHOD.md, Eq. 2):

* ``identity``        BT-trained logit rewards (PickScore, MPS, HPS)
* ``logit``           probabilities (VQAScore's P(yes)): ``log(p / (1 - p))``, ``p`` clipped
                      to ``[1e-6, 1 - 1e-6]``
* ``temperature:T``   bounded scores (an aesthetic score): ``R / T``

Against a reference sample set (online CaPO, issue #13): the M samples ``x_1..x_M`` of a
*policy* calibrated against N samples ``y_1..y_N`` of the *reference* model for the same
prompt::

    R_ca(x_i, c) = 1/N * sum_j sigmoid( R(x_i, c) - R(y_j, c) )

the expected win-rate of ``x_i`` over the reference (Eq. 6 with ``p_ref`` the reference
model, not the policy), a target whose meaning stays fixed while the policy moves. Eq. 7 is
the special case ``x = y`` with the self-pair ``j = i`` left out (``exclude_self``).

Arrays in, arrays out (numpy), vectorised over any number of prompts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TRANSFORMS = ("identity", "logit", "temperature:T")
LOGIT_CLIP = 1e-6
_CHUNK = 8192  # prompts per block: bounds the (chunk, N, N) pairwise matrix in memory


def parse_transform(spec: str) -> tuple[str, float | None]:
    """``"identity" | "logit" | "temperature:T"`` -> ``(name, T or None)``; clear errors otherwise."""
    name, _, arg = str(spec).partition(":")
    if name in ("identity", "logit") and not arg:
        return name, None
    if name == "temperature":
        try:
            T = float(arg)
        except ValueError:
            T = float("nan")
        if not np.isfinite(T) or T <= 0:
            raise ValueError(f"temperature transform needs a positive number, e.g. 'temperature:0.1'; got {spec!r}")
        return name, T
    raise ValueError(f"unknown BT transform {spec!r}; known: {', '.join(TRANSFORMS)}")


def bt_transform(rewards: np.ndarray, spec: str) -> np.ndarray:
    """Map raw rewards onto a Bradley-Terry logit scale (see module docstring)."""
    name, T = parse_transform(spec)
    r = np.asarray(rewards, dtype=np.float64)
    if name == "identity":
        return r
    if name == "logit":
        if np.any((r < 0) | (r > 1)):
            raise ValueError("logit transform expects probabilities in [0, 1]")
        p = np.clip(r, LOGIT_CLIP, 1 - LOGIT_CLIP)
        return np.log(p) - np.log1p(-p)
    return r / T


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 (1 + tanh(x / 2)): overflow-free, and sigmoid(d) + sigmoid(-d) == 1 to rounding.
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _check_finite(r: np.ndarray) -> None:
    bad = ~np.isfinite(r)
    if bad.any():
        where = np.argwhere(bad)[:10].tolist()
        raise ValueError(f"{int(bad.sum())} non-finite reward(s) (NaN or inf) at index {where}")


def win_rates(rewards: np.ndarray) -> np.ndarray:
    """Eq. 7 along the last axis: ``(..., N)`` BT-scale rewards -> ``(..., N)`` in [0, 1]."""
    r = np.asarray(rewards, dtype=np.float64)
    N = r.shape[-1]
    if N < 2:
        raise ValueError(f"calibration needs N >= 2 samples per prompt, got N = {N}")
    _check_finite(r)
    flat = r.reshape(-1, N)
    out = np.empty_like(flat)
    for s in range(0, flat.shape[0], _CHUNK):
        block = flat[s : s + _CHUNK]
        pair = _sigmoid(block[:, :, None] - block[:, None, :])  # sigmoid(R_i - R_j), (B, N, N)
        # the diagonal holds sigmoid(0) = 1/2 exactly; drop it from the sum over j != i
        out[s : s + _CHUNK] = (pair.sum(-1) - 0.5) / (N - 1)
    return out.reshape(r.shape)


def win_rates_against(rewards: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Cross-set calibration along the last axis: policy ``(..., M)`` against reference
    ``(..., N)`` BT-scale rewards -> ``(..., M)`` in [0, 1], ``1/N sum_j sigmoid(R_i - R^ref_j)``.
    ``exclude_self``: the two sets are the same samples (M = N) and ``j = i`` is left out
    (then this is Eq. 7, :func:`win_rates`)."""
    r = np.asarray(rewards, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if r.shape[:-1] != ref.shape[:-1]:
        raise ValueError(f"policy rewards {r.shape} and reference rewards {ref.shape} differ in their leading "
                         "(prompt) axes: calibrate each prompt against its own reference samples")
    if exclude_self:
        if r.shape != ref.shape or not np.array_equal(r, ref):
            raise ValueError("exclude_self: the policy and reference sets must be the same samples")
        return win_rates(r)
    N = ref.shape[-1]
    if N < 1:
        raise ValueError("calibration against a reference needs N >= 1 reference samples per prompt")
    _check_finite(r), _check_finite(ref)
    M = r.shape[-1]
    flat, flat_ref = r.reshape(-1, M), ref.reshape(-1, N)
    out = np.empty_like(flat)
    for s in range(0, flat.shape[0], _CHUNK):
        pair = _sigmoid(flat[s : s + _CHUNK, :, None] - flat_ref[s : s + _CHUNK, None, :])  # (B, M, N)
        out[s : s + _CHUNK] = pair.mean(-1)
    return out.reshape(r.shape)


def _bt_stack(r: np.ndarray, transform: str | Sequence[str], axis: int) -> np.ndarray:
    """The BT transform of ``r``: one spec for all, or one per index of the last axis."""
    if isinstance(transform, str):
        return bt_transform(r, transform)
    specs = list(transform)
    if r.ndim < 2 or r.shape[-1] != len(specs):
        raise ValueError(f"{len(specs)} transforms given but the last axis of rewards has size {r.shape[-1:]}")
    if axis % r.ndim == r.ndim - 1:
        raise ValueError("with one transform per reward (last axis), the sample axis must be another axis")
    return np.stack([bt_transform(r[..., j], s) for j, s in enumerate(specs)], axis=-1)


def calibrate_against(
    rewards: np.ndarray,
    reference: np.ndarray,
    transform: str | Sequence[str] = "identity",
    axis: int = -1,
) -> np.ndarray:
    """Rewards of policy samples calibrated against reference samples of the same prompts
    (see the module docstring), after their BT transform. ``rewards`` ``(P, M[, L])`` and
    ``reference`` ``(P, N[, L])`` with the samples along ``axis``; ``transform`` as in
    :func:`calibrate`. Returns the shape of ``rewards``, in [0, 1]."""
    r, ref = np.asarray(rewards, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    t, t_ref = _bt_stack(r, transform, axis), _bt_stack(ref, transform, axis)
    out = win_rates_against(np.moveaxis(t, axis, -1), np.moveaxis(t_ref, axis, -1))
    return np.moveaxis(out, -1, axis)


def calibrate(
    rewards: np.ndarray,
    transform: str | Sequence[str] = "identity",
    axis: int = -1,
) -> np.ndarray:
    """Calibrated rewards ``R_ca`` (Eq. 7) of raw rewards, per prompt and per reward model.

    ``rewards``: the samples of each prompt along ``axis`` (default last), e.g. ``(P, N)``.
    ``transform``: one BT transform spec for all, or a sequence of specs, one per index
    of the LAST axis (then ``rewards`` is ``(P, N, L)`` and ``axis`` the sample axis, 1).
    Returns an array of the same shape, in [0, 1].
    """
    t = _bt_stack(np.asarray(rewards, dtype=np.float64), transform, axis)
    moved = np.moveaxis(t, axis, -1)
    return np.moveaxis(win_rates(moved), -1, axis)
