"""Preference objectives on implicit rewards: DPO, IPO (Eq. 4) and CaPO (Eq. 8).

Each takes the implicit rewards of the preferred and rejected members of B pairs,
``r_w = R_theta(x+_t)`` and ``r_l = R_theta(x-_t)`` (``implicit.implicit_reward``),
and returns ``(loss, metrics)``. With ``u = beta (r_w - r_l)``:

* DPO  (Eq. 4):  ``g(u) = -log sigmoid(u)``
* IPO  (Eq. 4):  ``g(u) = (1 - u)^2``
* CaPO (Eq. 8):  ``g(u) = (Delta R_ca - u)^2`` with ``Delta R_ca = R_ca(x+) - R_ca(x-)``
  the calibrated reward gap of the pair (``calibration.calibrate``). IPO is CaPO with
  every target gap equal to 1.

``metrics`` (detached): ``implicit_acc`` (fraction of pairs with ``r_w > r_l``, ties
count one half), ``reward_margin`` (mean ``r_w - r_l``), ``reward_w``, ``reward_l``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from capo import vocabulary


def _metrics(r_w: torch.Tensor, r_l: torch.Tensor) -> dict[str, torch.Tensor]:
    d = (r_w - r_l).detach()
    acc = (d > 0).float() + 0.5 * (d == 0).float()
    return {
        "implicit_acc": acc.mean(),
        "reward_margin": d.mean(),
        "reward_w": r_w.detach().mean(),
        "reward_l": r_l.detach().mean(),
    }


def _reduce(per_pair: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "none":
        return per_pair
    raise ValueError(f"unknown reduction {reduction!r}; known: mean, none")


def dpo_loss(r_w, r_l, beta: float, target_gap=None, reduction: str = "mean"):
    """DPO (Eq. 4 with ``g(u) = -log sigmoid(u)``); ``target_gap`` is ignored."""
    u = beta * (r_w - r_l)
    return _reduce(-F.logsigmoid(u), reduction), _metrics(r_w, r_l)


def ipo_loss(r_w, r_l, beta: float, target_gap=None, reduction: str = "mean"):
    """IPO (Eq. 4 with ``g(u) = (1 - u)^2``); ``target_gap`` is ignored (it is 1)."""
    u = beta * (r_w - r_l)
    return _reduce((1.0 - u) ** 2, reduction), _metrics(r_w, r_l)


def capo_loss(r_w, r_l, beta: float, target_gap, reduction: str = "mean"):
    """CaPO (Eq. 8): ``(Delta R_ca - beta (r_w - r_l))^2``, ``target_gap`` = ``Delta R_ca`` per pair."""
    if target_gap is None:
        raise ValueError("capo_loss needs target_gap: the calibrated reward gap R_ca(x+) - R_ca(x-) of each pair")
    u = beta * (r_w - r_l)
    gap = torch.as_tensor(target_gap, dtype=u.dtype, device=u.device)
    return _reduce((gap - u) ** 2, reduction), _metrics(r_w, r_l)


OBJECTIVES = {name: globals()[f"{name}_loss"] for name in vocabulary.OBJECTIVES}  # name -> loss (capo.vocabulary)
