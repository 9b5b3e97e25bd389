"""GRPO for diffusion and flow models: the math of the baseline (issue #22), pure.

Policy-gradient alignment treats the sampling chain ``x_T -> x_{T-1} -> ... -> x_0`` of a
text-to-image model as a policy whose actions are the denoising steps; each step is a
Gaussian, so its log-probability is closed-form (DDPO: Black et al. 2023, "Training Diffusion
Models with Reinforcement Learning", arXiv:2305.13301, code kvablack/ddpo-pytorch; Flow-GRPO:
Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", arXiv:2505.05470,
code yifan123/flow_grpo; DanceGRPO: Xue et al. 2025, arXiv:2505.07818). Notation of
``capo.method.schedules``.

**One step of the chain**, a Gaussian ``pi(x_next | x_t, c) = N(mu, s^2 I)``:

* DDIM with ``eta > 0`` (the UNet base; DDPO's ``ddim_step_with_logprob``: DDIM, Song et al.
  2021, arXiv:2010.02502, Eq. 12 and 16), at DDPM timesteps ``t -> t_prev`` with ``abar =
  alphas_cumprod``, ``t_prev = t - T / N`` as diffusers' DDIM (``abar_prev = final_alpha_cumprod``
  when ``t_prev < 0``; it is 1 under ``set_alpha_to_one``, and that last step is deterministic)::

      x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
      s      = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
      mu     = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps_hat

  (``eta = 1``: the DDPM posterior variance; ``eta = 0``: deterministic DDIM, no density).
* Rectified flow (the SD3-like base), Flow-GRPO's SDE with the marginals of the ODE
  ``dx = v dsigma``, ``x_sigma = (1 - sigma) x0 + sigma eps``, ``v = eps - x0`` (diffusers'
  convention: ``sigma = 1`` is noise), stepping ``sigma -> sigma_next``, ``dt = sigma_next -
  sigma < 0`` (flow_grpo ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py``, the paper's
  ODE-to-SDE conversion)::

      sigma_t = a * sqrt(sigma / (1 - sigma))        (sigma = 1 replaced by sigmas[1] in 1 - sigma)
      mu      = x + [v + sigma_t^2 / (2 sigma) (x + (1 - sigma) v)] dt
      s       = sigma_t * sqrt(-dt)

  ``a`` is the noise level (Flow-GRPO: 0.7). The drift term is ``-(sigma_t^2 / 2) * score``
  with the score of the flow, ``-(x + (1 - sigma) v) / sigma``, so the marginals stay those
  of the ODE for any ``a`` (tested on a Gaussian, where ``v`` is exact). DanceGRPO's SDE takes
  ``sigma_t = eta`` constant instead: not implemented.

**Log-probability** of the step actually taken, as DDPO and Flow-GRPO compute it: the mean
over the ``D = C x H x W`` dimensions of the per-dimension Gaussian log-density,
``log pi = (1/D) sum_d [-(x_next,d - mu_d)^2 / (2 s^2) - log s - log sqrt(2 pi)]``. (The sum
would be the exact log-density; the mean keeps the importance ratio ``exp(log pi -
log pi_old)`` near 1 at image sizes, as both codebases do: so does capo.)

**Group-relative advantages** (GRPO: Shao et al. 2024, arXiv:2402.03300; Flow-GRPO, DanceGRPO):
G images per prompt, ``A_i = (s_i - mean_g s) / (std_g s + eps)`` (``std`` with ddof 0, ``eps =
1e-4`` as flow_grpo's ``stat_tracking.py``; ``norm="none"``: mean-centred only, as Dr. GRPO,
Liu et al. 2025, arXiv:2503.20783), clipped to
``[-A_max, A_max]`` (flow_grpo's ``adv_clip_max``, 5). The score ``s`` of each image from L
rewards (:func:`group_scores`):

* ``sum``: ``s_i = sum_l w_l R_l(x_i)``, weighted raw scores (the anchors' multi-reward way);
* ``calibrated``: ``s_i = sum_l w_l R^l_ca(x_i)`` with ``R^l_ca`` CaPO's calibrated reward
  (Eq. 7) *within the group*: ``1/(G-1) sum_{j != i} sigmoid(T_l(R_l(x_i)) - T_l(R_l(x_j)))``,
  ``T_l`` the reward's BT transform: each reward's expected win-rate against the group, so
  rewards on different scales combine on one (``capo.method.calibration``);
* ``pareto``: ``s_i = -front_i``, minus the NSGA-II front index of ``x_i`` among the group
  over the L rewards (0: non-dominated; ``capo.method.selection.nondominated_sort``).

Weights ``w`` are normalised to sum to 1 (default uniform).

**Loss** per image and trained step (PPO's clipped surrogate, Schulman et al. 2017,
arXiv:1707.06347, with DDPO's per-step ratio, as flow_grpo's ``scripts/train_sd3.py``),
``r = exp(log pi_theta - log pi_old)``::

    L = max(-A r, -A clip(r, 1 - eps_clip, 1 + eps_clip)) + beta * KL_step

with ``KL_step = KL(pi_theta(. | x_t) || pi_ref(. | x_t))`` between the two Gaussians of the
step, equal variances, in closed form: ``(1/D) sum_d (mu_theta,d - mu_ref,d)^2 / (2 s^2)``
(per dimension, like the log-probability). Flow-GRPO's code divides by ``sigma_t^2`` instead
of the step variance ``s^2 = sigma_t^2 |dt|`` (its KL is ``|dt|`` times this one), so its
``beta = b`` weighs the KL as ``beta = b |dt|`` does here.

Tensors in, tensors out; nothing here knows about models, configs or paths.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from capo.method.calibration import calibrate
from capo.method.selection import nondominated_sort, normalise_weights

ADVANTAGES = ("sum", "calibrated", "pareto")
ADVANTAGE_NORMS = ("std", "none")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_item(v, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-item ``(B,)`` value shaped to broadcast against ``like`` ``(B, ...)``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())) if v.dim() else v


def _mean_but_batch(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x


# ----------------------------------------------------------------------------- one step of the chain
def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """``(1/D) sum_d log N(x_d; mean_d, std^2)`` per item: ``(B, ...) -> (B,)``; ``std``
    a scalar or ``(B,)``, > 0."""
    s = _per_item(std, mean)
    if bool((torch.as_tensor(std) <= 0).any()):
        raise ValueError("a Gaussian log-probability needs std > 0 (a deterministic step has no density)")
    lp = -((x - mean) ** 2) / (2 * s ** 2) - torch.log(s) - LOG_SQRT_2PI
    return _mean_but_batch(lp)


def ddim_std(abar_t, abar_prev, eta: float) -> torch.Tensor:
    """DDIM's ``sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)`` (Eq. 16)."""
    a_t, a_p = torch.as_tensor(abar_t, dtype=torch.float64), torch.as_tensor(abar_prev, dtype=torch.float64)
    return eta * torch.sqrt((1 - a_p) / (1 - a_t)) * torch.sqrt(1 - a_t / a_p)


def ddim_step(x_t: torch.Tensor, eps_hat: torch.Tensor, abar_t, abar_prev, eta: float):
    """Mean and std of DDIM's step ``x_t -> x_prev`` with noise ``eta`` (Eq. 12): ``(mu, s)``,
    ``s`` per item ``(B,)`` (or a scalar for scalar ``abar``)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1] (1: the DDPM posterior), got {eta}")
    s = ddim_std(abar_t, abar_prev, eta)
    a_t, a_p = _per_item(abar_t, x_t), _per_item(abar_prev, x_t)
    x0 = (x_t - torch.sqrt(1 - a_t) * eps_hat) / torch.sqrt(a_t)
    direction = torch.sqrt((1 - a_p - _per_item(s, x_t) ** 2).clamp_min(0.0)) * eps_hat
    return torch.sqrt(a_p) * x0 + direction, s.to(x_t.dtype)


def flow_sde_std(sigma, sigma_next, noise_level: float, sigma_cap) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-GRPO's ``sigma_t = a sqrt(sigma / (1 - sigma))`` (with ``sigma = 1`` replaced by
    ``sigma_cap`` in ``1 - sigma``) and the step's std ``sigma_t sqrt(-dt)``."""
    sg, sn = torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(sigma_next, dtype=torch.float64)
    denom = 1 - torch.where(sg >= 1, torch.as_tensor(float(sigma_cap), dtype=torch.float64), sg)
    sigma_t = noise_level * torch.sqrt(sg / denom)
    return sigma_t, sigma_t * torch.sqrt(sg - sn)


def flow_sde_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, noise_level: float, sigma_cap):
    """Mean and std of Flow-GRPO's SDE step ``sigma -> sigma_next`` (module docstring):
    ``mu = x + [v + sigma_t^2 / (2 sigma) (x + (1 - sigma) v)] dt``, ``s = sigma_t sqrt(-dt)``.
    ``noise_level = 0`` is the Euler step of the ODE."""
    if noise_level < 0:
        raise ValueError(f"the flow SDE's noise level must be >= 0, got {noise_level}")
    sigma_t, s = flow_sde_std(sigma, sigma_next, noise_level, sigma_cap)
    sg, dt = _per_item(sigma, x), _per_item(torch.as_tensor(sigma_next, dtype=torch.float64)
                                             - torch.as_tensor(sigma, dtype=torch.float64), x)
    st2 = _per_item(sigma_t, x) ** 2
    mu = x + (v + st2 / (2 * sg) * (x + (1 - sg) * v)) * dt
    return mu, s.to(x.dtype)


def step_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std) -> torch.Tensor:
    """``KL(N(mean_p, s^2 I) || N(mean_q, s^2 I))`` per dimension: ``(1/D) sum_d (mean_p,d -
    mean_q,d)^2 / (2 s^2)``, ``(B, ...) -> (B,)``."""
    s = _per_item(std, mean_p)
    return _mean_but_batch((mean_p - mean_q) ** 2 / (2 * s ** 2))


# ----------------------------------------------------------------------------- advantages
def group_scores(rewards: np.ndarray, how: str = "sum", transforms=None, weights=None) -> np.ndarray:
    """One score per image from ``rewards`` ``(P, G, L)`` (P groups of G images, L rewards; or
    ``(P, G)``): ``sum`` | ``calibrated`` | ``pareto`` (module docstring). ``transforms``: the
    BT transform of each reward (``calibrated``; default identity). Returns ``(P, G)``."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 2:
        r = r[:, :, None]
    if r.ndim != 3:
        raise ValueError(f"expected rewards of shape (P, G) or (P, G, L), got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("rewards contain NaN or inf")
    L = r.shape[2]
    if how == "sum":
        return r @ normalise_weights(weights, L)
    if how == "calibrated":
        specs = list(transforms) if transforms is not None else ["identity"] * L
        return calibrate(r, transform=specs, axis=1) @ normalise_weights(weights, L)
    if how == "pareto":
        return -nondominated_sort(r).astype(np.float64)
    raise ValueError(f"unknown advantage {how!r}; known: {', '.join(ADVANTAGES)}")


def group_advantages(scores: np.ndarray, norm: str = "std", eps: float = 1e-4, clip: float | None = None) -> np.ndarray:
    """``A = (s - mean_g s) / (std_g s + eps)`` within each group (row) of ``scores`` ``(P, G)``;
    ``norm="none"``: ``s - mean_g s``; then clipped to ``[-clip, clip]``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"group-relative advantages need scores (P, G) with G >= 2, got {s.shape}")
    a = s - s.mean(1, keepdims=True)
    if norm == "std":
        a = a / (s.std(1, keepdims=True) + eps)
    elif norm != "none":
        raise ValueError(f"unknown advantage norm {norm!r}; known: {', '.join(ADVANTAGE_NORMS)}")
    return np.clip(a, -clip, clip) if clip is not None else a


# ----------------------------------------------------------------------------- loss
def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per item, ``max(-A r, -A clip(r, 1 - e, 1 + e))`` with ``r =
    exp(log_prob - old_log_prob)``: ``(loss (B,), ratio (B,), clipped (B,) bool)``."""
    ratio = torch.exp(log_prob - old_log_prob)
    adv = advantages.to(ratio.dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio, (ratio - 1.0).abs() > clip_range


def grpo_loss(log_prob, old_log_prob, advantages, clip_range: float, beta: float = 0.0, kl=None):
    """The mean over items of ``clipped_surrogate + beta * kl`` and detached metrics
    (``policy_loss``, ``kl``, ``ratio``, ``clipfrac``, ``approx_kl`` = mean (log r)^2 / 2)."""
    per, ratio, clipped = clipped_surrogate(log_prob, old_log_prob, advantages, clip_range)
    loss = per.mean()
    kl_mean = kl.mean() if kl is not None else torch.zeros((), dtype=loss.dtype, device=loss.device)
    if beta:
        loss = loss + beta * kl_mean
    d = (log_prob - old_log_prob).detach()
    return loss, {"policy_loss": per.detach().mean(), "kl": kl_mean.detach(), "ratio": ratio.detach().mean(),
                  "clipfrac": clipped.float().mean(), "approx_kl": 0.5 * (d ** 2).mean()}
