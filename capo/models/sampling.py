"""Classifier-free-guided sampling, shared by every base model (the shapes world's two and
the diffusers backends SDXL / SD3).

``GuidedSampling`` is a mixin. The model provides ``predict(x_t, t, hidden, pooled)``
(its native output: eps, velocity, ...), ``encode_prompts(prompts) -> (hidden, pooled)``,
``unconditional(n)``, ``sampler(steps)`` (a diffusers scheduler with its timesteps set),
``initial_noise(seeds)`` (item k from seed k alone, on the model's device),
``decode_latents``, ``modules()`` (component name -> ``nn.Module``), ``denoiser``,
``latent_shape``, ``resolution``, ``default_steps``, ``default_guidance`` and
``default_batch_size``; the mixin adds ``eval``, ``device`` and ``compile_denoiser``.

CFG (Ho & Salimans): ``out = out(x, "") + g (out(x, c) - out(x, "")))``, both branches in
one batched call of size 2B; with ``g == 1`` only the conditional branch is computed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from capo.models import COMPILE_BACKENDS, COMPILE_RULE


def _stacked(cond: tuple, uncond: tuple | None, guidance: float) -> tuple | None:
    """(uncond; cond) stacked along the batch for one guided denoiser call; None: no guidance."""
    if uncond is None or guidance == 1.0:
        return None
    return torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]])


class GuidedSampling:
    def eval(self):
        """Every component in eval mode."""
        for m in self.modules().values():
            m.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Where the denoiser (and so sampling) runs."""
        return next(self.denoiser.parameters()).device

    @staticmethod
    def _t_vector(t, b: int, device) -> torch.Tensor:
        """A timestep (scalar or per item) as a vector of ``b`` items on ``device``."""
        t = torch.as_tensor(t, device=device)
        return t.expand(b) if t.ndim == 0 else t

    def model_time(self, sched, i: int, t) -> torch.Tensor:
        """The timestep the denoiser is called with at step ``i`` (default: ``t``)."""
        return t

    def guided_predict(self, x_t, t, cond: tuple, uncond: tuple | None, guidance: float) -> torch.Tensor:
        """``uncond + g (cond - uncond)``; ``uncond=None`` or ``g == 1``: the conditional alone."""
        return self._guided(x_t, t, cond, _stacked(cond, uncond, guidance), guidance)

    def _guided(self, x_t, t, cond: tuple, both: tuple | None, guidance: float) -> torch.Tensor:
        """``guided_predict`` with the (uncond, cond) conditioning already stacked (``_stacked``)."""
        if both is None:
            return self.predict(x_t, t, *cond)
        t2 = self._t_vector(t, x_t.shape[0], x_t.device).repeat(2)
        u, c = self.predict(torch.cat([x_t, x_t]), t2, *both).chunk(2)
        return u + guidance * (c - u)

    def compile_denoiser(self, backend: str = "inductor"):
        """``torch.compile`` the denoiser's forward in place (``nn.Module.compile``: its state
        dict, config and parameters stay as they are); ``"off"`` leaves it eager. Images then
        equal the eager ones up to float rounding (inductor fuses kernels; ``"eager"`` traces
        with dynamo only and changes nothing). Fresh models of one architecture reuse the
        compiled graph, so a process compiles once however many checkpoints it samples."""
        if backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile: unknown backend {backend!r}; expected one of {COMPILE_RULE}")
        if backend != "off" and getattr(self, "_compiled_with", None) != backend:  # a cached model: once
            self.denoiser.compile(backend=backend)
            self._compiled_with = backend
        return self

    @torch.no_grad()
    def sample_latents(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None,
                       guidance: float | None = None) -> torch.Tensor:
        """One batch of scaled latents (float32) for ``prompts[k]`` with seed ``seeds[k]``."""
        steps = int(steps or self.default_steps)
        guidance = float(self.default_guidance if guidance is None else guidance)
        cond = self.encode_prompts(prompts)
        uncond = self.unconditional(len(prompts)) if guidance != 1.0 else None
        sched = self.sampler(steps)
        x = self.initial_noise(seeds) * float(getattr(sched, "init_noise_sigma", 1.0))
        both = _stacked(cond, uncond, guidance)  # once, not at every step
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            out = self._guided(x_in, self.model_time(sched, i, t), cond, both, guidance)
            x = sched.step(out.float(), t, x, return_dict=False)[0]
        return x.float()

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int | None = None,
               guidance: float | None = None, batch_size: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """Images uint8 ``(N, H, W, 3)`` and scaled latents ``(N, C, h, w)`` (CPU, float32)
        for ``prompts[k]`` with seed ``seeds[k]``, in batches of ``batch_size``; item k does
        not depend on the batch it lands in."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        bs = int(batch_size or self.default_batch_size)
        self.eval()
        images, latents = [], []
        for i in range(0, len(prompts), bs):
            z = self.sample_latents(list(prompts[i:i + bs]), list(seeds[i:i + bs]), steps, guidance)
            latents.append(z.cpu())
            images.append(self.decode_latents(z))
        if not latents:
            c, h, w = self.latent_shape
            return np.zeros((0, *self.resolution, 3), np.uint8), torch.zeros(0, c, h, w)
        return np.concatenate(images), torch.cat(latents)
