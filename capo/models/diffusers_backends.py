"""Real SDXL and SD3 pipelines behind capo's model interface (see ``capo.models``).

``SDXLModel`` wraps a ``diffusers.StableDiffusionXLPipeline``; ``SD3Model`` wraps a
``diffusers.StableDiffusion3Pipeline``. Both offer what ``ShapesPipeline`` offers (the
reference implementation): ``prediction_type``, ``denoiser``, ``encode_prompts``,
``predict``, ``train_scheduler``, ``sample``, ``decode_latents``, ``encode_images``,
``eval``, ``to``, ``kind``, ``default_steps``, ``default_guidance``.

SDXL (``prediction_type`` from the scheduler config: ``epsilon`` for SDXL base)
    Text: CLIP ViT-L (``text_encoder``) and OpenCLIP bigG (``text_encoder_2``, with
    projection). ``hidden`` = concat of both penultimate hidden states, ``(B, 77, 2048)``;
    ``pooled`` = ``text_encoder_2``'s projected pooled output, ``(B, 1280)`` (exactly
    ``StableDiffusionXLPipeline.encode_prompt``). The UNet's added conditioning is
    ``text_embeds = pooled`` and ``time_ids = (H, W, 0, 0, H, W)`` for the native
    resolution ``H = W = unet.sample_size * vae_scale_factor`` (1024).
    Timesteps ``t_model``: DDPM integers ``0..999``. Sampler (paper, Sec. 5): DDIM
    (eta = 0), guidance 7.5, 50 steps; ``DDIMScheduler`` built from the checkpoint's own
    scheduler config (SDXL base ships "leading" spacing, ``steps_offset = 1``).
    Unconditional branch of classifier-free guidance: zeros when the pipeline config says
    ``force_zeros_for_empty_prompt`` (SDXL base does), otherwise the empty prompt, as in
    diffusers.

SD3 (``prediction_type = "flow"``)
    Text: CLIP-L + CLIP-G (penultimate hidden states, concatenated and zero-padded to the
    T5 width) followed along the sequence axis by T5-XXL's last hidden state (zeros when
    T5 is dropped, ``text_encoder_3=None``); ``pooled`` = concat of both CLIP projections
    (``(B, 2048)``). Exactly ``StableDiffusion3Pipeline.encode_prompt``.
    Rectified flow ``x_t = (1 - sigma) x_0 + sigma eps``; the transformer predicts the
    velocity ``v = eps - x_0`` at ``t_model = sigma * 1000`` (float). To an eps
    prediction (METHOD.md): ``eps_hat = x_t + (1 - sigma) v_hat``.
    Sampler (paper: "flow DPM-solver, guidance 5.0, 50 steps"): diffusers'
    ``DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
    flow_shift=<the checkpoint's shift>)`` (2nd-order DPM-Solver++ on the shifted flow
    sigmas). That scheduler rounds its ``timesteps`` to integers; the transformer is
    conditioned on the exact ``sigma * 1000`` instead (what SD3 is trained on and what
    ``FlowMatchEulerDiscreteScheduler`` passes). ``sampler="euler"`` gives
    diffusers' flow Euler instead.

Latents in and out of this module are *scaled* latents,
``z = (vae_posterior_mean - shift_factor) * scaling_factor`` (SDXL: no shift, scaling
0.13025; SD3: shift 0.0609, scaling 1.5035, read from the VAE config).

Per-item seeds: in ``sample``, item k's initial latent noise is
``torch.randn(latent_shape, generator=torch.Generator(device).manual_seed(seeds[k]))``
on the model's device, and both samplers are deterministic afterwards, so an image does
not depend on the batch it was drawn in. (The noise depends on the device *type*: CUDA
and CPU generators differ, as everywhere in diffusers.)

Dtypes: ``to(device, dtype)`` moves every component; the VAE stays in float32 when its
config says ``force_upcast`` and ``dtype`` is float16 (SDXL's VAE overflows in fp16).
``predict`` casts its inputs to the denoiser's dtype and returns ``x_t``'s dtype; sampling
keeps latents in float32.

Weights: ``load_sdxl`` / ``load_sd3_medium`` (registered as ``sdxl`` / ``sd3-medium``)
take a local directory or load the hub id from the local Hugging Face cache; a missing
copy raises ``ModelLoadError`` saying how to get it. ``load_diffusers_dir`` reads
``model_index.json`` and picks the wrapper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from capo.models.errors import ModelLoadError
from capo.models.sampling import GuidedSampling

SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
SD3_HUB_ID = "stabilityai/stable-diffusion-3-medium-diffusers"

# The paper's sampler settings (Sec. 5).
SDXL_DEFAULT_STEPS, SDXL_DEFAULT_GUIDANCE = 50, 7.5
SD3_DEFAULT_STEPS, SD3_DEFAULT_GUIDANCE = 50, 5.0
SD3_MAX_SEQUENCE_LENGTH = 256  # T5 tokens (StableDiffusion3Pipeline's default)
DEFAULT_BATCH_SIZE = 4  # images per denoiser batch in `sample` (x2 with guidance)
FLOW_SAMPLERS = ("dpm", "euler")


class _DiffusersModel(GuidedSampling):
    """What SDXL and SD3 share: noise, guidance, the sampling loop, the VAE."""

    kind = ""
    pipeline_class = ""
    denoiser_name = ""

    def __init__(self, pipe, default_steps: int, default_guidance: float, resolution: tuple[int, int] | None = None):
        self.pipe = pipe
        self.denoiser = getattr(pipe, self.denoiser_name)
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.default_steps = int(default_steps)
        self.default_guidance = float(default_guidance)
        native = int(self.denoiser.config.sample_size) * int(pipe.vae_scale_factor)
        self.resolution = tuple(int(r) for r in (resolution or (native, native)))
        f = int(pipe.vae_scale_factor)
        if self.resolution[0] % f or self.resolution[1] % f:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE factor {f}")

    # ------------------------------------------------------------------ components
    def modules(self) -> dict:
        """Every ``nn.Module`` of the pipeline that is present (T5 may be dropped)."""
        names = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
        mods = {n: getattr(self.pipe, n, None) for n in names}
        mods[self.denoiser_name] = self.denoiser
        return {n: m for n, m in mods.items() if m is not None}

    def to(self, device=None, dtype=None):
        upcast_vae = dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))
        for name, m in self.modules().items():
            m.to(device=device, dtype=torch.float32 if (name == "vae" and upcast_vae) else dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = int(self.pipe.vae_scale_factor)
        return (int(self.denoiser.config.in_channels), self.resolution[0] // f, self.resolution[1] // f)

    # ------------------------------------------------------------------ VAE
    @property
    def vae_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def encode_images(self, images) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> scaled latents ``(mean - shift) * scaling`` (posterior mean)."""
        x = torch.as_tensor(np.asarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return ((mean.float() - self.vae_shift) * self.vae_scaling)

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents -> uint8 ``(B, H, W, 3)``."""
        z = latents.to(self.device, torch.float32) / self.vae_scaling + self.vae_shift
        with torch.no_grad():
            x = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ text
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden, pooled)`` from the pipeline's own ``encode_prompt`` (no guidance)."""
        out = self.pipe.encode_prompt(prompt=list(prompts), device=self.device, num_images_per_prompt=1,
                                      do_classifier_free_guidance=False, **self._encode_kwargs())
        hidden, pooled = out[0], out[2]
        return hidden, pooled

    def _encode_kwargs(self) -> dict:
        return {}

    def unconditional(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional branch of classifier-free guidance for ``n`` items."""
        return self.encode_prompts([""] * n)

    # ------------------------------------------------------------------ denoiser / sampling (GuidedSampling)
    default_batch_size = DEFAULT_BATCH_SIZE

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Per-item noise: item k from ``torch.Generator(device).manual_seed(seeds[k])`` alone."""
        dev = self.device
        return torch.stack([
            torch.randn(self.latent_shape, generator=torch.Generator(dev).manual_seed(int(s)), device=dev,
                        dtype=torch.float32)
            for s in seeds])

    def sampler(self, steps: int):
        raise NotImplementedError


class SDXLModel(_DiffusersModel):
    """``StableDiffusionXLPipeline`` behind capo's model interface (DDPM, DDIM sampler)."""

    kind = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    denoiser_name = "unet"

    def __init__(self, pipe, default_steps: int = SDXL_DEFAULT_STEPS, default_guidance: float = SDXL_DEFAULT_GUIDANCE,
                 resolution: tuple[int, int] | None = None):
        super().__init__(pipe, default_steps, default_guidance, resolution)
        self.prediction_type = str(pipe.scheduler.config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelLoadError(f"SDXL scheduler prediction_type {self.prediction_type!r} is not supported "
                                 "(expected epsilon or v_prediction)")

    def train_scheduler(self):
        """``DDPMScheduler`` with the checkpoint's beta schedule (``alphas_cumprod``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def sampler(self, steps: int):
        """DDIM, eta = 0, from the checkpoint's scheduler config."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps, device=self.device)
        return sched

    def time_ids(self, b: int, dtype, device) -> torch.Tensor:
        """SDXL micro-conditioning ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``."""
        h, w = self.resolution
        return torch.tensor([h, w, 0, 0, h, w], dtype=dtype, device=device).expand(b, -1)

    def unconditional(self, n: int):
        if self.pipe.config.get("force_zeros_for_empty_prompt", False):
            hidden, pooled = self.encode_prompts([""])
            return torch.zeros_like(hidden).expand(n, -1, -1), torch.zeros_like(pooled).expand(n, -1)
        return super().unconditional(n)

    def predict(self, x_t: torch.Tensor, t_model, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Raw UNet output (eps for SDXL base) at DDPM timesteps ``t_model`` (scalar or ``(B,)``)."""
        b, dt = x_t.shape[0], self.dtype
        t = self._t_vector(t_model, b, x_t.device)
        cond = {"text_embeds": pooled.to(dt), "time_ids": self.time_ids(b, dt, x_t.device)}
        out = self.denoiser(x_t.to(dt), t, encoder_hidden_states=hidden.to(dt), added_cond_kwargs=cond,
                            return_dict=False)[0]
        return out.to(x_t.dtype)


class SD3Model(_DiffusersModel):
    """``StableDiffusion3Pipeline`` behind capo's model interface (rectified flow)."""

    kind = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser_name = "transformer"
    prediction_type = "flow"

    def __init__(self, pipe, default_steps: int = SD3_DEFAULT_STEPS, default_guidance: float = SD3_DEFAULT_GUIDANCE,
                 resolution: tuple[int, int] | None = None, sampler: str = "dpm",
                 max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH):
        super().__init__(pipe, default_steps, default_guidance, resolution)
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"unknown SD3 sampler {sampler!r}; known: {', '.join(FLOW_SAMPLERS)}")
        self.sampler_name = sampler
        self.max_sequence_length = int(max_sequence_length)
        p = int(getattr(self.denoiser.config, "patch_size", 1))
        if any(n % p for n in self.latent_shape[1:]):
            raise ValueError(f"latent size {self.latent_shape[1:]} is not a multiple of the patch size {p}")

    @property
    def shift(self) -> float:
        return float(self.pipe.scheduler.config.get("shift", 1.0))

    def train_scheduler(self):
        """``FlowMatchEulerDiscreteScheduler`` with the checkpoint's config (shift 3.0 for SD3-M)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def sampler(self, steps: int):
        """Flow DPM-Solver++ (2nd order) on the shifted flow sigmas, or flow Euler."""
        from diffusers import DPMSolverMultistepScheduler

        if self.sampler_name == "euler":
            sched = self.train_scheduler()
        else:
            cfg = self.pipe.scheduler.config
            sched = DPMSolverMultistepScheduler(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
                                                use_flow_sigmas=True, prediction_type="flow_prediction",
                                                flow_shift=self.shift, solver_order=2, algorithm_type="dpmsolver++")
        sched.set_timesteps(steps, device=self.device)
        return sched

    def model_time(self, sched, i: int, t) -> torch.Tensor:
        return sched.sigmas[i].to(self.device, torch.float32) * 1000.0  # exact sigma * 1000

    def _encode_kwargs(self) -> dict:
        return {"prompt_2": None, "prompt_3": None, "max_sequence_length": self.max_sequence_length}

    def predict(self, x_t: torch.Tensor, t_model, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Raw transformer output: velocity ``eps - x_0`` at ``t_model = sigma * 1000``."""
        b, dt = x_t.shape[0], self.dtype
        t = self._t_vector(t_model, b, x_t.device).float()  # float32 even in fp16, as the SD3 pipeline
        out = self.denoiser(hidden_states=x_t.to(dt), timestep=t, encoder_hidden_states=hidden.to(dt),
                            pooled_projections=pooled.to(dt), return_dict=False)[0]
        return out.to(x_t.dtype)


# ---------------------------------------------------------------------------- loading
WRAPPERS = {cls.pipeline_class: cls for cls in (SDXLModel, SD3Model)}


def _how_to_get(hub_id: str, gated: bool = False) -> str:
    gate = (" It is a gated model: accept its licence on the model page and log in (`hf auth login`) first."
            if gated else "")
    return (f"Download it on a connected machine with `hf download {hub_id}` (older huggingface_hub: "
            f"`huggingface-cli download {hub_id}`), or `hf download {hub_id} --local-dir DIR` and pass "
            f"path=DIR (or the directory itself as the model spec).{gate}")


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _load_pipeline(source, class_name: str, dtype=None, drop_t5: bool = False, local_files_only: bool = False):
    kwargs = {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if drop_t5:
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    if local_files_only:
        kwargs["local_files_only"] = True
    return _pipeline_class(class_name).from_pretrained(str(source), **kwargs)


def load_diffusers_dir(path, device=None, dtype=None, drop_t5: bool = False, **wrapper_kwargs):
    """A saved diffusers pipeline directory -> ``SDXLModel`` or ``SD3Model`` (chosen by
    ``model_index.json``'s ``_class_name``). ``drop_t5`` loads SD3 without T5."""
    p = Path(path)
    index = p / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{p}: not a diffusers pipeline directory (no model_index.json)")
    name = json.loads(index.read_text()).get("_class_name", "")
    if name not in WRAPPERS:
        raise ModelLoadError(f"{p}: pipeline class {name!r} is not supported; supported: {', '.join(sorted(WRAPPERS))}")
    if drop_t5 and name != SD3Model.pipeline_class:
        raise ValueError("drop_t5 applies to SD3 pipelines only")
    try:
        pipe = _load_pipeline(p, name, dtype=dtype, drop_t5=drop_t5)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{p}: cannot load the {name}: {e}") from e
    model = WRAPPERS[name](pipe, **wrapper_kwargs)
    return model.to(device, dtype).eval()


def _load_registered(hub_id: str, class_name: str, path=None, device=None, dtype=None, drop_t5: bool = False,
                     local_files_only: bool = False, gated: bool = False, **wrapper_kwargs):
    if path is not None:
        if not (Path(path) / "model_index.json").is_file():
            raise ModelLoadError(f"{path}: no diffusers pipeline there (no model_index.json); expected a local copy "
                                 f"of {hub_id}. {_how_to_get(hub_id, gated)}")
        return load_diffusers_dir(path, device=device, dtype=dtype, drop_t5=drop_t5, **wrapper_kwargs)
    try:
        pipe = _load_pipeline(hub_id, class_name, dtype=dtype, drop_t5=drop_t5, local_files_only=local_files_only)
    except OSError as e:  # huggingface_hub's offline / not-found / gated errors are all OSErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load {hub_id}: no usable local copy and the hub could not provide it "
                             f"({first}). {_how_to_get(hub_id, gated)}") from e
    return WRAPPERS[class_name](pipe, **wrapper_kwargs).to(device, dtype).eval()


def _hub_fingerprint(hub_id: str) -> str:
    """``hub:<id>@<cached snapshot commit>`` (or without the commit when not cached)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        f = try_to_load_from_cache(hub_id, "model_index.json")
        if isinstance(f, str):
            return f"hub:{hub_id}@{Path(f).parent.name}"
    except Exception:  # noqa: BLE001 - a fingerprint must never fail the caller
        pass
    return f"hub:{hub_id}"


def load_sdxl(path=None, device=None, dtype=None, local_files_only: bool = False, **wrapper_kwargs) -> SDXLModel:
    """SDXL base 1.0 (``stabilityai/stable-diffusion-xl-base-1.0``) or a local copy at ``path``."""
    return _load_registered(SDXL_HUB_ID, SDXLModel.pipeline_class, path, device, dtype,
                            local_files_only=local_files_only, **wrapper_kwargs)


def load_sd3_medium(path=None, device=None, dtype=None, drop_t5: bool = False, local_files_only: bool = False,
                    **wrapper_kwargs) -> SD3Model:
    """SD3 medium (``stabilityai/stable-diffusion-3-medium-diffusers``, gated) or a local copy;
    ``drop_t5=True`` loads it without the T5 text encoder."""
    return _load_registered(SD3_HUB_ID, SD3Model.pipeline_class, path, device, dtype, drop_t5=drop_t5,
                            local_files_only=local_files_only, gated=True, **wrapper_kwargs)


load_sdxl.fingerprint = lambda: _hub_fingerprint(SDXL_HUB_ID)
load_sd3_medium.fingerprint = lambda: _hub_fingerprint(SD3_HUB_ID)
