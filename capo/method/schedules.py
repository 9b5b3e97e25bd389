"""Noise schedules as log-SNR: the terms every objective needs at a time ``t``.

Notation (METHOD.md, "Notation"; the paper's Sec. 3):

=============  ===========================================================
symbol         meaning
=============  ===========================================================
``x``          clean image or VAE latent
``eps``        Gaussian noise, ``N(0, I)``
``t``          continuous time in (0, 1); discrete schedules use
               ``t = timestep / T`` (``T`` = number of training timesteps)
``alpha_t``    signal scale, ``x_t = alpha_t * x + sigma_t * eps``
``sigma_t``    noise scale
``lambda_t``   log-SNR, ``log(alpha_t^2 / sigma_t^2)``
``lambda'_t``  ``d lambda_t / dt`` (negative: SNR falls as t grows)
=============  ===========================================================

Two families:

* discrete DDPM (SD1.5, SDXL, the shapes world's UNet): ``alpha_t^2 = abar_t``,
  ``sigma_t^2 = 1 - abar_t``; ``lambda'_t`` by central finite differences over
  the discrete schedule (one-sided at the two ends), in units of ``t``.
* rectified flow (SD3): ``alpha_t = 1 - t``, ``sigma_t = t``,
  ``lambda_t = 2 log((1 - t) / t)``, ``lambda'_t = -2 / (t (1 - t))``.

Tensors in, tensors out; nothing here knows about models, configs or paths.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


class ScheduleTerms(NamedTuple):
    """Per-item schedule terms at the sampled times (all shaped like ``t``)."""

    t: torch.Tensor  # continuous time in (0, 1)
    alpha: torch.Tensor  # alpha_t
    sigma: torch.Tensor  # sigma_t
    log_snr: torch.Tensor  # lambda_t
    dlog_snr_dt: torch.Tensor  # lambda'_t


def ddpm_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``lambda_k = log(abar_k / (1 - abar_k))`` for every discrete timestep ``k``."""
    abar = alphas_cumprod.double()
    return torch.log(abar) - torch.log1p(-abar)


def ddpm_dlog_snr_dt(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``lambda'_t`` on the discrete grid ``t_k = k / T`` by finite differences.

    Central differences inside, one-sided at ``k = 0`` and ``k = T - 1``
    (``torch.gradient`` with spacing ``1 / T``).
    """
    lam = ddpm_log_snr(alphas_cumprod)
    T = lam.shape[0]
    return torch.gradient(lam, spacing=1.0 / T)[0]


def ddpm_terms(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> ScheduleTerms:
    """Schedule terms at integer ``timesteps`` of a discrete DDPM schedule."""
    ts = timesteps.long().to(alphas_cumprod.device)
    T = alphas_cumprod.shape[0]
    if ts.numel() and (int(ts.min()) < 0 or int(ts.max()) >= T):
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got [{int(ts.min())}, {int(ts.max())}]")
    abar = alphas_cumprod.double()[ts]
    lam = ddpm_log_snr(alphas_cumprod)[ts]
    dlam = ddpm_dlog_snr_dt(alphas_cumprod)[ts]
    return ScheduleTerms(ts.double() / T, abar.sqrt(), (1 - abar).sqrt(), lam, dlam)


def flow_terms(t: torch.Tensor) -> ScheduleTerms:
    """Rectified-flow terms at continuous ``t`` in (0, 1) (SD3; METHOD.md)."""
    t = t.double()
    if t.numel() and (float(t.min()) <= 0.0 or float(t.max()) >= 1.0):
        raise ValueError("rectified-flow t must lie strictly inside (0, 1)")
    lam = 2.0 * (torch.log1p(-t) - torch.log(t))  # lambda_t = 2 log((1 - t) / t)
    dlam = -2.0 / (t * (1.0 - t))  # lambda'_t = -2 / (t (1 - t))
    return ScheduleTerms(t, 1.0 - t, t, lam, dlam)


def alphas_cumprod_of(scheduler) -> torch.Tensor:
    """``abar`` of a diffusers DDPM-family scheduler (``DDPMScheduler``, ``DDIMScheduler``...)."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError(
            f"{type(scheduler).__name__} has no alphas_cumprod: it is not a discrete DDPM "
            "schedule (use flow_terms for rectified-flow schedulers)"
        )
    return torch.as_tensor(abar, dtype=torch.float64)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-item vector (B,) to broadcast against (B, ...)."""
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())).to(like.dtype)


def eps_from_prediction(
    pred: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """Convert a model output to an eps prediction ``eps_hat`` before any error is taken.

    With ``x_t = alpha x + sigma eps``:

    * ``epsilon``:      ``eps_hat = pred``
    * ``v_prediction``: ``v = alpha eps - sigma x``  ->  ``eps_hat = sigma x_t + alpha v``
      (valid for variance-preserving schedules, ``alpha^2 + sigma^2 = 1``)
    * ``sample``:       ``eps_hat = (x_t - alpha x_hat) / sigma``
    * ``flow``:         ``v = eps - x`` with ``alpha = 1 - t`` -> ``eps_hat = x_t + (1 - t) v``,
      so ``||eps_hat - eps||^2 = (1 - t)^2 ||v_hat - v||^2`` (METHOD.md).
    """
    a, s = _bcast(alpha, pred), _bcast(sigma, pred)
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return s * x_t + a * pred
    if prediction_type == "sample":
        return (x_t - a * pred) / s
    if prediction_type == "flow":
        return x_t + a * pred
    raise ValueError(f"unknown prediction_type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")


def add_noise(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Forward process ``x_t = alpha_t x + sigma_t eps`` (per-item alpha, sigma)."""
    return _bcast(alpha, x) * x + _bcast(sigma, x) * eps
