"""How far a fine-tuned model moved from its base: a Monte Carlo estimate of the
reverse-process KL term (``capo.method.divergence``) on the policy's own samples, and
the distance between the denoisers' weights, so methods can be compared at matched
divergence.

Per image (prompt record ``p``, image ``k`` in ``range(n)``; rows in that order, prompt-major,
as ``capo generate`` writes them):

1. ``x0 ~ p_theta``: the policy's sample from noise seeded by
   ``generate.item_seed(seed, prompt_id, k)`` (the seed ``capo generate`` / ``capo eval``
   give the same image), with the policy's sampler, ``steps`` and ``guidance`` (defaults:
   the model's; CFG included, i.e. the images as evaluated; ``guidance=1.0`` samples the
   conditional model the bound is about). Or the caller's ``latents`` (below).
2. ``n_t`` draws of ``(t, eps)`` from one ``torch.Generator`` seeded by
   ``SeedSequence([item_seed(seed, prompt_id, k), 0xD1F])`` (a stream apart from the
   sampling noise, which uses ``item_seed`` itself): first ``u ~ U[0, 1)`` (``n_t``,
   float64), then ``eps ~ N(0, I)`` (``n_t`` latents). ``t`` as in ``capo train``
   (``stages.train.draw_times_and_noise``): DDPM ``timestep = floor(u T)`` (uniform over
   ``0..T-1``), flow ``t = clamp(u, 1e-3, 1 - 1e-3)`` and the model's time ``1000 t``. The
   draws depend on ``(seed, prompt_id, k)`` alone: not on the model (so two models are
   compared on common random numbers), the batch size or the other records.
3. ``x_t = alpha_t x0 + sigma_t eps``; both networks predict on the same ``x_t`` with the
   same conditioning (the reference's text encoding of the prompt, conditional, no CFG;
   the trainer's cached embeddings are the base's too), outputs converted to eps;
   ``D = -w_t lambda'_t mean_CHW(eps_theta - eps_ref)^2`` per draw
   (``divergence_of_predictions``), and the row's ``divergence`` is the mean over the
   ``n_t`` draws.

``divergence_summary`` averages the rows with a 95% bootstrap CI over prompts. With
``weighting="elbo"``, ``kl_scale(model.latent_shape) * mean`` estimates the path KL in nats
(``capo.method.divergence``: assumptions, and why the default is ``constant``).
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
from capo.eval.winrate import bootstrap_mean
from capo.method.divergence import divergence_factor, divergence_of_predictions, param_distance
from capo.method.schedules import add_noise, alphas_cumprod_of, ddpm_terms, flow_terms
from capo.samples import item_seed

STREAM = 0xD1F  # the divergence draws' stream key next to the item seed
FLOW_T_CLAMP = 1e-3  # as stages.train.draw_times_and_noise


def times_from_uniform(model, u):
    """``u ~ U[0, 1)`` (float64) -> (schedule terms, model time) with capo train's t distribution."""
    import torch

    if model.prediction_type == "flow":
        t = u.clamp(FLOW_T_CLAMP, 1 - FLOW_T_CLAMP)
        return flow_terms(t), (t * 1000).float()
    abar = alphas_cumprod_of(model.train_scheduler())
    ts = (u * len(abar)).long().clamp(max=len(abar) - 1)
    return ddpm_terms(abar, ts), ts.to(torch.long)


def item_draws(seed: int, prompt_id: str, k: int, n_t: int, latent_shape: Sequence[int]):
    """``u`` (n_t,) float64 and ``eps`` (n_t, C, H, W) float32 of image ``k`` of ``prompt_id``."""
    import torch

    s = int(np.random.SeedSequence([item_seed(seed, prompt_id, k), STREAM]).generate_state(1, np.uint64)[0])
    g = torch.Generator().manual_seed(s)
    u = torch.rand(n_t, generator=g, dtype=torch.float64)
    eps = torch.randn((n_t, *latent_shape), generator=g)
    return u, eps


def _check_pair(model, reference) -> None:
    import torch

    if model.prediction_type != reference.prediction_type:
        raise ValueError(f"model predicts {model.prediction_type!r} but the reference {reference.prediction_type!r}: "
                         "the divergence needs two models of one base")
    ls_m, ls_r = getattr(model, "latent_shape", None), getattr(reference, "latent_shape", None)
    if ls_m is not None and ls_r is not None and tuple(ls_m) != tuple(ls_r):
        raise ValueError(f"latent shapes differ: model {tuple(ls_m)}, reference {tuple(ls_r)}")
    if model.prediction_type != "flow":
        a, b = alphas_cumprod_of(model.train_scheduler()), alphas_cumprod_of(reference.train_scheduler())
        if a.shape != b.shape or not torch.allclose(a, b):
            raise ValueError("model and reference have different training noise schedules")


def _sample_latents(model, prompts, seeds, steps, guidance, batch_size):
    """The policy's latents without decoding images (``sample_latents`` of the shared
    sampler; ``sample`` for a model without it)."""
    if hasattr(model, "sample_latents"):
        model.eval()
        return model.sample_latents(prompts, seeds, steps, guidance).float().cpu()
    return model.sample(prompts, seeds, steps=steps, guidance=guidance, batch_size=batch_size)[1].float().cpu()


def divergence_rows(model, reference, records: Sequence[dict], *, n: int = 2, seed: int = 0, n_t: int = 4,
                    steps: int | None = None, guidance: float | None = None, batch_size: int = 64,
                    weighting: str = "constant", bias: float = 1.5, latents=None) -> list[dict]:
    """Per-image divergence of ``model`` (the policy) from ``reference`` (its base model):
    ``[{"prompt_id", "sample_id", "divergence"}]``, ``n`` rows per record (module docstring).

    ``records``: dicts with ``prompt`` and ``prompt_id``. ``weighting``: ``constant`` |
    ``sigmoid`` (with ``bias`` = b) | ``elbo``. ``batch_size``: images per sampler call and
    noised latents per denoiser call; the rows do not depend on it. ``latents``: the
    policy's own latents ``(len(records) * n, C, H, W)`` in row order (e.g. the second
    output of ``model.sample`` with the same seeds, or ``LatentCache.latents`` of a
    ``capo generate`` run of the policy) instead of sampling them again.
    """
    import torch

    if n < 1 or n_t < 1 or batch_size < 1:
        raise ValueError(f"n, n_t and batch_size must be >= 1, got n={n}, n_t={n_t}, batch_size={batch_size}")
    divergence_factor(torch.zeros(1), torch.zeros(1), weighting, bias)  # validates the weighting name
    _check_pair(model, reference)
    for i, r in enumerate(records):
        if "prompt" not in r or "prompt_id" not in r:
            raise ValueError(f"record {i} lacks 'prompt' or 'prompt_id': {r!r}")
    items = [(r, k) for r in records for k in range(n)]
    if latents is not None:
        latents = torch.as_tensor(np.asarray(latents) if not torch.is_tensor(latents) else latents).float().cpu()
        shape = getattr(model, "latent_shape", None)
        want = (len(items), *shape) if shape is not None else None
        if latents.ndim != 4 or latents.shape[0] != len(items) or (want is not None and tuple(latents.shape) != want):
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected "
                             f"{want or (len(items), 'C', 'H', 'W')} ({len(records)} records x n={n}, in row order)")
    if not items:
        return []
    model.eval()
    reference.eval()
    dev_m, dev_r = model.device, reference.device
    rows: list[dict] = []
    with torch.no_grad():
        for lo in range(0, len(items), batch_size):
            chunk = items[lo:lo + batch_size]
            prompts = [r["prompt"] for r, _ in chunk]
            if latents is None:
                seeds = [item_seed(seed, r["prompt_id"], k) for r, k in chunk]
                x0 = _sample_latents(model, prompts, seeds, steps, guidance, batch_size)
            else:
                x0 = latents[lo:lo + len(chunk)]
            hidden, pooled = (v.float().cpu() for v in reference.encode_prompts(prompts))
            draws = [item_draws(seed, r["prompt_id"], k, n_t, x0.shape[1:]) for r, k in chunk]
            u = torch.cat([d[0] for d in draws])
            eps = torch.cat([d[1] for d in draws])
            terms, t_model = times_from_uniform(reference, u)
            # one row per draw, item-major: draw j of item i is row i * n_t + j
            x_t = add_noise(x0.repeat_interleave(n_t, 0), eps, terms.alpha, terms.sigma).float()
            h, p = hidden.repeat_interleave(n_t, 0), pooled.repeat_interleave(n_t, 0)
            d = torch.empty(len(u), dtype=torch.float64)
            for a in range(0, len(u), batch_size):  # noised latents per denoiser call
                s = slice(a, a + batch_size)
                pm = model.predict(x_t[s].to(dev_m), t_model[s].to(dev_m), h[s].to(dev_m), p[s].to(dev_m))
                pr = reference.predict(x_t[s].to(dev_r), t_model[s].to(dev_r), h[s].to(dev_r), p[s].to(dev_r))
                sub = type(terms)(*(v[s] for v in terms))
                d[s] = divergence_of_predictions(pm.float().cpu(), pr.float().cpu(), x_t[s], sub,
                                                 model.prediction_type, weighting, bias)
            per_image = d.view(len(chunk), n_t).mean(1)
            rows += [{"prompt_id": r["prompt_id"], "sample_id": int(k), "divergence": float(v)}
                     for (r, k), v in zip(chunk, per_image)]
    return rows


def divergence_summary(rows, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean divergence with a prompt-bootstrap CI (``winrate.bootstrap_mean``): ``{"mean",
    "ci_low", "ci_high", "n_images", "n_prompts", "n_boot", "seed", "ci"}``. ``rows``: the
    output of ``divergence_rows`` (or a DataFrame of it)."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    return bootstrap_mean([r["divergence"] for r in rows], [r["prompt_id"] for r in rows],
                          n_boot=n_boot, seed=seed, ci=ci)


def dense_denoiser_state(denoiser) -> dict:
    """The denoiser's dense state dict. ``load_model`` of a LoRA checkpoint already merges the
    adapter (``merge_and_unload``); a live peft wrapper (as in training) is merged on a copy,
    so the model itself is left untouched."""
    if hasattr(denoiser, "peft_config") and hasattr(denoiser, "merge_and_unload"):
        denoiser = copy.deepcopy(denoiser).merge_and_unload()
    return denoiser.state_dict()


def param_distance_of(model, reference) -> float:
    """``||theta - theta_ref||_2`` of the two denoisers' dense weights (``method.divergence.param_distance``)."""
    return param_distance(dense_denoiser_state(model.denoiser), dense_denoiser_state(reference.denoiser))
