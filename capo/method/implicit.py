"""The implicit reward of a diffusion model (Diffusion-DPO; the paper's Eq. 5) and its
loss weighting (Sec. 4.4).

Eq. 5::

    R_theta(x_t, c, t) = lambda'_t * ( ||eps_theta(x_t; c, t) - eps||^2
                                       - ||eps_ref(x_t; c, t) - eps||^2 )

With a weighting ``w_t`` the factor ``-lambda'_t`` becomes ``-w_t * lambda'_t``::

    R_theta = (-w_t lambda'_t) * ( err_ref - err_theta )

so ``R_theta > 0`` when the policy denoises ``x`` better than the reference.

Scale: ``err`` is the squared error averaged over C x H x W (not summed), as in the
public Diffusion-DPO code, so ``beta`` is on their scale. Their loss is
``-log sigmoid(-0.5 * beta_dpo * ((err_w - ref_w) - (err_l - ref_l)))``, which under
constant weighting equals our ``dpo_loss`` with ``beta = 0.5 * beta_dpo``
(their SDXL default ``beta_dpo = 5000`` is ``beta = 2500`` here).
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("constant", "sigmoid")


def squared_error(eps_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``||eps_hat - eps||^2`` as a mean over every non-batch dim (C x H x W): shape (B,)."""
    return (eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1)


def constant_factor(log_snr: torch.Tensor, dlog_snr_dt: torch.Tensor) -> torch.Tensor:
    """Constant weighting: ``-w_t lambda'_t = 1`` at every ``t``."""
    return torch.ones_like(dlog_snr_dt, dtype=torch.float64)


def sigmoid_factor(log_snr: torch.Tensor, dlog_snr_dt: torch.Tensor, b: float) -> torch.Tensor:
    """Sigmoid weighting (Sec. 4.4): ``w_t = sigmoid(-lambda_t + b)``; returns ``-w_t lambda'_t``.

    As ``b -> +inf``, ``w_t -> 1`` and the factor tends to the plain ``-lambda'_t``;
    as ``b -> -inf`` it tends to 0.
    """
    w = torch.sigmoid(-log_snr.double() + b)
    return -w * dlog_snr_dt.double()


def loss_factor(log_snr: torch.Tensor, dlog_snr_dt: torch.Tensor, weighting: str, b: float = 0.0) -> torch.Tensor:
    """The factor ``-w_t lambda'_t`` for a weighting name (``constant`` or ``sigmoid``)."""
    if weighting == "constant":
        return constant_factor(log_snr, dlog_snr_dt)
    if weighting == "sigmoid":
        return sigmoid_factor(log_snr, dlog_snr_dt, b)
    raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")


def implicit_reward(err_theta: torch.Tensor, err_ref: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``R_theta = (-w_t lambda'_t) (err_ref - err_theta)``, per item.

    ``err_*`` are per-item squared eps errors (``squared_error``); ``factor`` is
    ``loss_factor(...)`` at each item's ``t``. The reference errors carry no gradient.
    """
    return factor.to(err_theta.dtype) * (err_ref.detach() - err_theta)


def sample_pair_noise(
    shape: tuple[int, ...], shared: bool, generator: torch.Generator | None = None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise for the two members of B pairs, each of ``shape = (B, C, H, W)``.

    ``shared=True`` (default in capo, as public Diffusion-DPO code): ``eps+ = eps-``.
    ``shared=False`` (the paper's Eq. 8): independent ``eps+, eps-``.
    The time ``t`` is always shared within a pair (``x+_t`` and ``x-_t`` at the same ``t``).
    """
    eps_w = torch.randn(shape, generator=generator, dtype=dtype)
    eps_l = eps_w.clone() if shared else torch.randn(shape, generator=generator, dtype=dtype)
    return eps_w, eps_l
