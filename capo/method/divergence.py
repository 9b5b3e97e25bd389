"""How far a fine-tuned model has moved from its reference: the per-item reverse-process KL
term of DPOK / Diffusion-DPO, and the distance between weights.

Notation (METHOD.md "Notation"; paper symbol -> name in code)
    x0                  ``x0``                 clean latent, drawn from the *policy* p_theta
    eps                 ``eps``                forward noise, N(0, I)
    t                   ``terms.t``            time in (0, 1) (DDPM: timestep / T)
    x_t                 ``x_t``                alpha_t x0 + sigma_t eps
    lambda_t            ``terms.log_snr``      log-SNR log(alpha_t^2 / sigma_t^2)
    lambda'_t           ``terms.dlog_snr_dt``  d lambda_t / dt (negative)
    w_t                 ``weighting``, ``b``   loss weighting (Sec. 4.4)
    eps_theta, eps_ref  ``eps_theta``, ``eps_ref``
                                               eps predictions of policy and reference at the
                                               same x_t with the same prompt c (conditional,
                                               no CFG); model outputs converted by
                                               ``schedules.eps_from_prediction``
    C x H x W           ``latent_shape``       size of one latent
    theta, theta_ref    ``state_a``, ``state_b``  denoiser weights

The term (per item; what ``divergence_term`` returns)::

    D(x0, t, eps) = -w_t lambda'_t * ||eps_theta(x_t; c, t) - eps_ref(x_t; c, t)||^2

with ``||.||^2`` the MEAN over C x H x W (``implicit.squared_error``: the scale of capo's
implicit reward, Eq. 5), so ``D >= 0`` and ``D = 0`` when the two networks agree. It is
the implicit reward's own factor times the squared gap between the two networks: under
the same weighting, ``R_theta = (-w_t lambda'_t)(err_ref - err_theta)`` and ``D`` share
their scale, so ``beta * D`` is on the scale of ``beta * R_theta``.

Weightings (``divergence_factor``; the factor ``-w_t lambda'_t``):

* ``constant`` (default): ``-w_t lambda'_t = 1``, capo's "constant weighting". Finite and
  of low variance on every schedule (no ``1 / t`` blow-up at the ends), so it is the one to
  compare runs with, DDPM and flow bases included (as far as any number that depends on
  the schedule can be); it is a *weighted* KL (below), not the KL itself.
* ``sigmoid``: ``w_t = sigmoid(-lambda_t + b)`` (Sec. 4.4), as ``implicit.loss_factor``:
  use the training run's weighting and ``b`` to measure the divergence its objective saw.
* ``elbo``: ``w_t = 1``, the plain ``-lambda'_t`` (the limit ``b -> +inf`` of the sigmoid
  weighting); the only weighting for which the constant below turns ``D`` into the KL.
  Its Monte Carlo estimate is noisy: ``-lambda'_t`` spans 6.5 .. 696 on SD's
  scaled-linear DDPM schedule and ``2 / (t (1 - t))`` (8 .. 2002 at capo's clamp
  ``t in [1e-3, 1 - 1e-3]``) on rectified flow, where the integral even diverges
  logarithmically at ``t -> 0`` when the two velocities differ there
  (``eps_hat - eps_ref = (1 - t)(v_hat - v_ref)`` does not vanish), so a flow model's
  ELBO-weighted value depends on the clamp and should not be compared with a DDPM's.

The constant (DPOK, Fan et al. 2023: the lemma bounding the KL of the final images by
the sum of the per-step KLs of the reverse chain; Diffusion-DPO, Wallace et al. 2024: the
same bound in the derivation of Eq. 5's loss; VDM, Kingma et al. 2021: its continuous-time
limit in log-SNR). Under the usual assumptions

1. both reverse processes are Gaussian, ``p(x_s | x_t) = q(x_s | x_t, x0_hat)``, the
   forward posterior around the model's own ``x0`` prediction, with the posterior
   variance (DDPM's ancestral sampler; for flow models the stochastic sampler with the
   same marginals, not the deterministic Euler ODE, which has no path density);
2. ``p(x_T)`` is the same ``N(0, I)`` for both;
3. ``x_t`` is drawn from the forward process ``q(x_t | x0)`` instead of the policy's own
   reverse marginal (Diffusion-DPO's approximation ``p_theta(x_1:T | x0) ~ q(x_1:T | x0)``;
   it makes the estimate an approximation of the bound, no longer a bound),

one reverse step ``t -> s`` has ``KL = (1/2)(exp(lambda_s - lambda_t) - 1) ||eps_theta -
eps_ref||^2_sum``; to first order in the step, ``(1/2)(-lambda'_t) dt ||.||^2_sum``. Summing
the steps (chain rule; the data-processing inequality makes the path KL an upper bound on
the KL of the final images)::

    KL(p_theta(x0) || p_ref(x0))  <=  KL(p_theta(x_0:T) || p_ref(x_0:T))
        ~=  (C * H * W / 2) * E_{x0 ~ p_theta, t ~ U(0,1), eps ~ N(0,I)}[ D_elbo(x0, t, eps) ]

(``kl_scale(latent_shape) = C * H * W / 2``; ``mean`` over C x H x W times C x H x W is the
sum the Gaussian KL has; ``t ~ U(0, 1)`` is the training distribution of capo's trainer:
DDPM integer timesteps uniform in [0, T) with ``t = k / T`` and ``lambda'`` in units of t,
flow ``t`` uniform in (0, 1) clamped to [1e-3, 1 - 1e-3]). The first-order sum is 2%
(SD's scaled-linear schedule, T = 1000) to 3% (linear) below the exact discrete one,
which ``tests/test_divergence.py`` checks against the Gaussian KL of the DDPM posterior
means. With another weighting the same constant gives the path KL with each time's
contribution reweighted by ``w_t`` (constant weighting: by ``1 / (-lambda'_t)``, i.e. the
squared eps gap integrated uniformly in t instead of in lambda).

``param_distance``: ``||theta - theta_ref||_2`` over the floating tensors of two state dicts.

Tensors in, tensors out; nothing here knows about models, prompts or paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from capo.method.implicit import loss_factor, squared_error
from capo.method.schedules import ScheduleTerms, eps_from_prediction

WEIGHTINGS = ("constant", "sigmoid", "elbo")


def divergence_factor(log_snr: torch.Tensor, dlog_snr_dt: torch.Tensor, weighting: str = "constant",
                      b: float = 1.5) -> torch.Tensor:
    """The factor ``-w_t lambda'_t`` (float64) for ``constant`` (1), ``sigmoid``
    (``w_t = sigmoid(-lambda_t + b)``) or ``elbo`` (``w_t = 1``: ``-lambda'_t``)."""
    if weighting == "elbo":
        return -dlog_snr_dt.double()
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")
    return loss_factor(log_snr, dlog_snr_dt, weighting, b).double()


def divergence_term(eps_theta: torch.Tensor, eps_ref: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``D = (-w_t lambda'_t) * mean_CHW (eps_theta - eps_ref)^2`` per item: shape (B,), float64.

    ``eps_*`` are eps predictions ``(B, C, H, W)`` at the same ``x_t``; ``factor`` is
    ``divergence_factor(...)`` at each item's ``t``.
    """
    if eps_theta.shape != eps_ref.shape:
        raise ValueError(f"eps_theta has shape {tuple(eps_theta.shape)}, eps_ref {tuple(eps_ref.shape)}")
    return factor.double() * squared_error(eps_theta, eps_ref).double()


def divergence_of_predictions(pred_theta: torch.Tensor, pred_ref: torch.Tensor, x_t: torch.Tensor,
                              terms: ScheduleTerms, prediction_type: str, weighting: str = "constant",
                              b: float = 1.5) -> torch.Tensor:
    """``D`` from raw model outputs: both converted to eps (``eps_from_prediction``), then
    ``divergence_term`` with ``divergence_factor(terms..., weighting, b)``. Shape (B,)."""
    eps_theta = eps_from_prediction(pred_theta.float(), x_t, terms.alpha, terms.sigma, prediction_type)
    eps_ref = eps_from_prediction(pred_ref.float(), x_t, terms.alpha, terms.sigma, prediction_type)
    return divergence_term(eps_theta, eps_ref, divergence_factor(terms.log_snr, terms.dlog_snr_dt, weighting, b))


def kl_scale(latent_shape: Sequence[int]) -> float:
    """``C * H * W / 2``: times the mean of ``D`` under the ``elbo`` weighting, the path-KL
    estimate in nats (module docstring: assumptions)."""
    return math.prod(int(s) for s in latent_shape) / 2.0


def param_distance(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]) -> float:
    """``||theta_a - theta_b||_2`` over the floating-point tensors of two state dicts (summed
    in float64). Both must have the same keys and shapes; integer and bool buffers must
    match in kind and are left out (they have no meaningful distance)."""
    missing, extra = state_a.keys() - state_b.keys(), state_b.keys() - state_a.keys()
    if missing or extra:
        parts = [f"{what} {', '.join(repr(k) for k in sorted(keys)[:5])}{' ...' if len(keys) > 5 else ''}"
                 for what, keys in (("only in state_a:", missing), ("only in state_b:", extra)) if keys]
        raise KeyError("state dicts have different keys (different architectures, or an unmerged LoRA "
                       "wrapper on one side?): " + "; ".join(parts))
    total = 0.0
    for key, a in state_a.items():
        b = state_b[key]
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch for {key!r}: {tuple(a.shape)} vs {tuple(b.shape)}")
        if torch.is_floating_point(a) != torch.is_floating_point(b):
            raise TypeError(f"dtype kind mismatch for {key!r}: {a.dtype} vs {b.dtype}")
        if torch.is_floating_point(a):
            total += float((a.detach().cpu().double() - b.detach().cpu().double()).pow(2).sum())
    return math.sqrt(total)
