"""Training loops for the shapes world's VAE and base models (from scratch, CPU).

Two top-to-bottom loops, plain arguments (the config/CLI layer lives elsewhere):

- ``train_vae``: ``AutoencoderKL`` on rendered scenes, loss ``MSE(x, D(z)) + kl_weight * KL``
  with ``z`` sampled from the posterior; afterwards ``scaling_factor`` is set to
  ``1 / std(posterior mean)`` over held-out scenes, so scaled latents have unit variance.
- ``train_base``: text encoder + denoiser trained jointly with the VAE frozen.
  sdxl-like: ``t ~ U{0..999}``, ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``, loss
  ``||eps_hat - eps||^2``. sd3-like: ``sigma = sigmoid(n)``, ``n ~ N(0, 1)`` (SD3's
  logit-normal), ``x_t = (1 - sigma) z + sigma eps``, loss ``||v_hat - (eps - z)||^2``.
  Prompts are dropped to ``""`` with probability ``prompt_dropout`` (for CFG). The
  shipped weights are an EMA of the trained weights.

Data are generated on the fly: ``grammar.sample_training_pair`` + ``render.render_batch``
with a ``numpy`` Generator seeded from ``seed``. With the same seed and ``steps`` binding
(not ``max_minutes``) a run is deterministic on a given machine/thread count.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import models as M
from .grammar import sample_training_pair, VOCAB
from .pipeline import ShapesPipeline, build_pipeline
from .render import render_batch


# ---------------------------------------------------------------------------- data
def training_batch(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    """``n`` (prompt, image) pairs from the world: prompts and uint8 ``(n, 32, 32, 3)``."""

    pairs = [sample_training_pair(rng) for _ in range(n)]
    prompts = [p for p, _ in pairs]
    return prompts, np.asarray(render_batch([s for _, s in pairs], size=M.IMAGE_SIZE))


def _render_chunk(args) -> tuple[list[str], np.ndarray]:
    seed, i, n = args
    return training_batch(np.random.default_rng([seed, i]), n)


@functools.lru_cache(maxsize=1)  # the VAE and both base models of one build share one pool
def render_pool(seed: int, n: int, workers: int = 1, chunk: int = 1024) -> tuple[list[str], np.ndarray]:
    """``n`` (prompt, image) pairs, chunk ``i`` drawn from ``Generator([seed, i])``: the pool
    depends on ``(seed, n, chunk)`` only, not on ``workers`` (processes that render chunks
    in parallel; rendering is ~0.4 ms/image on one core, the bottleneck of GPU training).
    The result is cached and shared: do not modify it."""
    jobs = [(seed, i, min(chunk, n - i * chunk)) for i in range(-(-n // chunk))]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return [p for ps, _ in parts for p in ps], np.concatenate([im for _, im in parts])


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in ``[-1, 1]``."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def deterministic(seed: int):
    """Seed torch and turn on deterministic algorithms for the duration (restored after)."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def lr_at(step: int, base_lr: float, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup to ``base_lr``, then constant or cosine (to 10% of base) over ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    raise ValueError(f"unknown lr schedule {schedule!r}; expected 'constant' or 'cosine'")


class EMA:
    """Exponential moving average of parameters, decay warmed up as ``min(d, (1+n)/(10+n))``."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.n = 0

    @torch.no_grad()
    def update(self):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params):
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=2.0)


# ---------------------------------------------------------------------------- VAE
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, torch.Tensor]:
    """Encode (posterior mean) and decode; returns uint8 reconstructions and unscaled latents."""
    outs, zs = [], []
    dev = next(vae.parameters()).device
    for i in range(0, len(images), batch_size):
        z = vae.encode(images_to_tensor(images[i:i + batch_size]).to(dev)).latent_dist.mean
        x = vae.decode(z).sample
        outs.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        zs.append(z.cpu())
    return np.concatenate(outs), torch.cat(zs)


def train_vae(size: str = "default", steps: int = 3000, batch_size: int = 64, lr: float = 2e-3,
              warmup: int = 100, lr_schedule: str = "cosine", kl_weight: float = 1e-6, weight_decay: float = 0.0,
              recon_loss: str = "mse", vae=None,
              max_minutes: float | None = None, seed: int = 0, n_eval: int = 512, progress: bool = True,
              device: str = "cpu", pool_size: int = 0, workers: int = 1):
    """Train an ``AutoencoderKL`` on rendered scenes; returns ``(vae, figures)`` (the VAE on CPU).

    ``vae``: continue training this one instead of a fresh ``build_vae(size)``.
    ``device``: where to train (``cuda`` when there is one). ``pool_size``/``workers``: as
    in ``train_base`` (batches drawn from a pre-rendered pool instead of rendered per step).
    ``figures``: steps, seconds, s_per_step, final loss, held-out PSNR (dB), latent std
    and the ``scaling_factor`` written into the VAE config.
    """
    with deterministic(seed):
        rng = np.random.default_rng(seed)
        vae = (M.build_vae(size) if vae is None else vae).to(device)  # a given VAE is trained further
        t0 = time.perf_counter()
        pool = render_pool(seed, pool_size, workers)[1] if pool_size else None
        opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=weight_decay)
        bar = _progress(steps, "vae", progress)
        step, loss_ema = 0, None
        vae.train()
        while step < steps:
            if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr, warmup, steps, lr_schedule)
            images = training_batch(rng, batch_size)[1] if pool is None else pool[rng.integers(0, pool_size, batch_size)]
            x = images_to_tensor(images).to(device)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
            err = F.mse_loss(rec, x) if recon_loss == "mse" else F.l1_loss(rec, x)
            kl = post.kl().mean() / x[0].numel()  # per-pixel KL, same scale as the error
            loss = err + kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}")
        bar.close()
        seconds = time.perf_counter() - t0
        vae.eval()
        _, held_out = training_batch(np.random.default_rng(seed + 1_000_003), n_eval)
        rec, z = reconstruct(vae, held_out)
        std = float(z.std())
        vae.register_to_config(scaling_factor=1.0 / std)
        vae.to("cpu")
    return vae, {"device": str(device), "pool_size": pool_size, "steps": step, "seconds": seconds, "s_per_step": seconds / max(step, 1), "loss": loss_ema,
                 "psnr_db": psnr(held_out, rec), "latent_std": std, "latent_mean": float(z.mean()),
                 "scaling_factor": 1.0 / std, "params": M.n_params(vae)}


# ---------------------------------------------------------------------------- diffusion
def sample_timesteps(kind: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps in the ``predict`` convention: integers 0..999 (sdxl-like) or
    ``sigma * 1000`` with ``sigma = sigmoid(N(0, 1))`` (sd3-like)."""
    if kind == "sdxl-like":
        return torch.randint(0, 1000, (n,), generator=generator)
    return torch.sigmoid(torch.randn(n, generator=generator)) * 1000.0


def diffusion_loss(pipe: ShapesPipeline, z0: torch.Tensor, prompts, noise: torch.Tensor, t: torch.Tensor,
                   alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """Mean-squared error of the model's native target (eps or velocity) at ``t``."""
    hidden, pooled = pipe.encode_prompts(prompts)
    if pipe.kind == "sdxl-like":
        if alphas_cumprod is None:
            alphas_cumprod = pipe.train_scheduler().alphas_cumprod
        abar = alphas_cumprod.to(z0.device)[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
        target = noise
    else:
        sigma = (t / 1000.0).view(-1, 1, 1, 1).to(z0.dtype)
        x_t = (1 - sigma) * z0 + sigma * noise
        target = noise - z0
    return F.mse_loss(pipe.predict(x_t, t, hidden, pooled), target)


def train_base(kind: str, vae, vocab=None, size: str = "default", steps: int = 4000, batch_size: int = 64,
               lr: float = 1e-3, warmup: int = 200, lr_schedule: str = "constant", weight_decay: float = 0.01,
               ema_decay: float = 0.999, prompt_dropout: float = 0.1, max_minutes: float | None = None,
               seed: int = 0, grad_clip: float = 1.0, progress: bool = True, pipe: ShapesPipeline | None = None,
               pool_size: int = 0, workers: int = 1, device: str = "cpu"):
    """Train text encoder + denoiser of ``kind`` on VAE latents of rendered scenes.

    Returns ``(pipeline, figures)``; the pipeline (on CPU) carries the EMA weights and
    ``vae`` (frozen). ``figures``: steps, seconds, s_per_step, final loss (running mean),
    parameter counts.

    ``pool_size``: 0 draws and encodes a fresh batch of scenes every step; ``n > 0``
    draws ``n`` pairs up front (``render_pool``, in ``workers`` processes; encoding each
    once, counted in ``seconds``) and then samples batches from that pool, which saves
    the per-step render + VAE-encoder cost (needed to keep a GPU busy).
    ``device``: where to train; noise and timesteps are drawn on the CPU from ``seed``
    either way, so the data stream does not depend on the device.
    """
    if vocab is None:
        vocab = VOCAB
    with deterministic(seed):
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        if pipe is None:
            pipe = build_pipeline(kind, vocab, size=size, vae=vae)
        pipe.to(device)
        vae = pipe.vae.eval().requires_grad_(False)
        modules = [pipe.text_encoder, pipe.denoiser]
        params = [p for m in modules for p in m.parameters()]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99),
                                 fused=str(device).startswith("cuda"))
        ema = EMA(params, ema_decay)
        acp = pipe.train_scheduler().alphas_cumprod if kind == "sdxl-like" else None
        for m in modules:
            m.train()
        t0 = time.perf_counter()
        pool_prompts, pool_latents = [], None
        if pool_size:
            pool_prompts, images = render_pool(seed, pool_size, workers)
            pool_latents = torch.cat([pipe.encode_images(images[i:i + 1024]) for i in range(0, pool_size, 1024)])
        bar = _progress(steps, kind, progress)
        step, loss_ema = 0, None
        while step < steps:
            if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr, warmup, steps, lr_schedule)
            if pool_latents is None:
                prompts, images = training_batch(rng, batch_size)
                z0 = pipe.encode_images(images)
            else:
                idx = rng.integers(0, pool_size, batch_size)
                prompts, z0 = [pool_prompts[i] for i in idx], pool_latents[torch.from_numpy(idx).to(device)]
            drop = rng.random(batch_size) < prompt_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop)]
            noise = torch.randn(z0.shape, generator=gen).to(device)
            t = sample_timesteps(kind, batch_size, gen).to(device)
            loss = diffusion_loss(pipe, z0, prompts, noise, t, acp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            ema.update()
            step += 1
            loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}")
        bar.close()
        seconds = time.perf_counter() - t0
        ema.copy_to(params)
        pipe.eval()
        pipe.to("cpu")
    return pipe, {"kind": kind, "device": str(device), "batch_size": batch_size, "pool_size": pool_size,
                  "stopped_by_time": step < steps, "steps": step, "seconds": seconds, "s_per_step": seconds / max(step, 1),
                  "loss": loss_ema, "params_denoiser": M.n_params(pipe.denoiser),
                  "params_text_encoder": M.n_params(pipe.text_encoder), "params_vae": M.n_params(pipe.vae)}


def sampling_speed(pipe: ShapesPipeline, prompts, n: int = 64, repeats: int = 3, **kw) -> float:
    """Median images/s of ``pipe.sample`` on ``n`` images (default sampler settings)."""
    rates = []
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    for r in range(repeats):
        t0 = time.perf_counter()
        pipe.sample(prompts, list(range(r * n, (r + 1) * n)), **kw)
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def copy_pipeline(pipe: ShapesPipeline) -> ShapesPipeline:
    return copy.deepcopy(pipe)
