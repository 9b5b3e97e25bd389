"""``ShapesPipeline``: one text-to-image base model of the shapes world.

Two kinds, mirroring the two base models of the paper:

``"sdxl-like"`` (``prediction_type="epsilon"``)
    ``UNet2DConditionModel`` on VAE latents; discrete DDPM forward process with
    ``T = 1000`` steps, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the model
    predicts ``eps``. Timestep tensor ``t``: integers in ``0..999`` (``t = 999`` is the
    noisiest). Sampling: DDIM, eta = 0, "trailing" timestep spacing, classifier-free
    guidance.

``"sd3-like"`` (``prediction_type="flow"``)
    ``SD3Transformer2DModel`` on VAE latents; rectified flow,
    ``x_t = (1 - sigma) x_0 + sigma eps`` with ``sigma in [0, 1]``; the model predicts
    the velocity ``v = eps - x_0`` (diffusers/SD3 convention, ``dx/dsigma``). Timestep
    tensor ``t = sigma * 1000`` (float), exactly what diffusers'
    ``FlowMatchEulerDiscreteScheduler`` passes to the SD3 transformer. Sampling: flow
    Euler, ``x <- x + (sigma_next - sigma) * v``, over sigmas ``linspace(1, 1/N, N)``
    then 0, shifted by ``sigma' = s sigma / (1 + (s - 1) sigma)`` with ``s =
    scheduler_config["shift"]`` (SD3 uses 3.0 at 1024 px; this world uses the value in
    its scheduler config, 1.0 by default = no shift), with classifier-free guidance.
    To convert to an eps prediction (METHOD.md): ``eps_hat = x_t + (1 - sigma) v_hat``.

Both kinds share: a word-level tokenizer, a CLIP text encoder (hidden states for
cross/joint attention, pooled output for the added/pooled conditioning), and an
``AutoencoderKL``. Latents handed in and out of this class are *scaled* latents,
``z = vae_mean * vae.config.scaling_factor`` (unit variance, as in SD/SDXL/SD3; no shift).
Images are uint8 ``(B, 32, 32, 3)``.

Per-item seeds: in ``sample``, image ``k``'s initial noise is
``torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(seeds[k]))`` and both
samplers are deterministic afterwards, so results do not depend on the batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from capo.models.sampling import GuidedSampling

from . import models as M

KINDS = {"sdxl-like": "epsilon", "sd3-like": "flow"}
DENOISER_DIR = {"sdxl-like": "unet", "sd3-like": "transformer"}
CONFIG_NAME = "capo_pipeline.json"

# Default sampler settings (chosen for >= 10 img/s at batch 64 on a 2-core CPU).
DEFAULT_STEPS = {"sdxl-like": 20, "sd3-like": 20}
DEFAULT_GUIDANCE = {"sdxl-like": 3.0, "sd3-like": 2.0}  # the shipped world's (see WorldConfig)
DEFAULT_BATCH_SIZE = 64

# SDXL's scaled-linear beta schedule.
DDPM_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)
FLOW_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def default_scheduler_config(kind: str) -> dict:
    return dict(DDPM_SCHEDULER_CONFIG if kind == "sdxl-like" else FLOW_SCHEDULER_CONFIG)


class ShapesPipeline(GuidedSampling):
    """Tokenizer + text encoder + VAE + denoiser + scheduler config of one base model."""

    def __init__(self, tokenizer, text_encoder, vae, denoiser, kind: str, scheduler_config: dict | None = None,
                 default_steps: int | None = None, default_guidance: float | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae
        self.denoiser = denoiser
        self.kind = kind
        self.prediction_type = KINDS[kind]
        self.scheduler_config = dict(scheduler_config or default_scheduler_config(kind))
        self.default_steps = int(default_steps or DEFAULT_STEPS[kind])
        self.default_guidance = float(default_guidance if default_guidance is not None else DEFAULT_GUIDANCE[kind])

    # ------------------------------------------------------------------ components
    @property
    def vae_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    def modules(self) -> dict:
        return {"text_encoder": self.text_encoder, "vae": self.vae, DENOISER_DIR[self.kind]: self.denoiser}

    def to(self, device=None, dtype=None):
        for m in self.modules().values():
            m.to(device=device, dtype=dtype)
        return self

    def train_scheduler(self):
        """The training-time noise schedule (``DDPMScheduler`` or ``FlowMatchEulerDiscreteScheduler``)."""
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        cls = DDPMScheduler if self.kind == "sdxl-like" else FlowMatchEulerDiscreteScheduler
        return cls.from_config(self.scheduler_config)

    # ------------------------------------------------------------------ encoders
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts), padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP hidden states ``(B, L, D)`` and pooled output ``(B, D)`` (gradients flow
        if enabled, so the text encoder can be trained)."""
        out = self.text_encoder(input_ids=self.tokenize(prompts).to(self.device))
        return out.last_hidden_state, out.pooler_output

    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> scaled latents ``(B, 4, 8, 8)`` (posterior mean)."""
        x = torch.as_tensor(np.asarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mean * self.vae_scaling

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents -> uint8 ``(B, 32, 32, 3)``."""
        with torch.no_grad():
            x = self.vae.decode(latents.to(self.device) / self.vae_scaling).sample
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ denoiser
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Raw model output: eps (sdxl-like, ``t`` integer DDPM timesteps 0..999) or
        velocity ``eps - x_0`` (sd3-like, ``t = sigma * 1000``). ``t`` may be a scalar or
        a ``(B,)`` tensor."""
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        if self.kind == "sdxl-like":
            time_ids = torch.tensor(M.SDXL_TIME_IDS, dtype=x_t.dtype, device=x_t.device).expand(b, -1)
            return self.denoiser(x_t, t, encoder_hidden_states=hidden,
                                 added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        return self.denoiser(hidden_states=x_t, encoder_hidden_states=hidden, pooled_projections=pooled,
                             timestep=t.to(x_t.dtype)).sample

    def unconditional(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional branch of classifier-free guidance: the empty prompt."""
        return self.encode_prompts([""] * n)

    # ------------------------------------------------------------------ sampling (GuidedSampling)
    default_batch_size = DEFAULT_BATCH_SIZE
    latent_shape = (M.LATENT_CHANNELS, M.LATENT_SIZE, M.LATENT_SIZE)
    resolution = (M.IMAGE_SIZE, M.IMAGE_SIZE)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Per-item noise: item k from ``torch.Generator().manual_seed(seeds[k])`` alone (on
        the CPU, then moved: the same noise on every device). Both samplers start from N(0, I)."""
        return torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds]).to(self.device)

    def sampler(self, steps: int):
        """DDIM (eta = 0, trailing spacing) or flow Euler (with the config's shift)."""
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        if self.kind == "sdxl-like":
            sched = DDIMScheduler.from_config(self.scheduler_config, timestep_spacing="trailing",
                                              set_alpha_to_one=False, clip_sample=False)
        else:
            sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(steps, device=self.device)
        return sched

    # ------------------------------------------------------------------ persistence
    def pipeline_config(self) -> dict:
        return {"kind": self.kind, "prediction_type": self.prediction_type, "default_steps": self.default_steps,
                "default_guidance": self.default_guidance, "vae_scaling_factor": self.vae_scaling,
                "denoiser": DENOISER_DIR[self.kind], "scheduler": self.scheduler_config}

    def save_pretrained(self, directory) -> Path:
        """Each component via its own ``save_pretrained`` (safetensors), the scheduler
        config, and ``capo_pipeline.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(d / "tokenizer")
        for name, m in self.modules().items():
            if hasattr(m, "register_to_config"):  # diffusers records where a model was loaded from;
                m.register_to_config(_name_or_path=name)  # keep saved configs free of local paths
            m.save_pretrained(d / name, safe_serialization=True)
        self.train_scheduler().save_pretrained(d / "scheduler")
        (d / CONFIG_NAME).write_text(json.dumps(self.pipeline_config(), indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def from_pretrained(cls, directory) -> "ShapesPipeline":
        from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{d}: missing {CONFIG_NAME} (not a saved ShapesPipeline)")
        cfg = json.loads((d / CONFIG_NAME).read_text())
        kind = cfg["kind"]
        den = DENOISER_DIR[kind]
        for name in ("tokenizer", "text_encoder", "vae", den):
            if not (d / name).is_dir():
                raise FileNotFoundError(f"{d}: missing component {name!r} (expected directory {d / name})")
        den_cls = UNet2DConditionModel if kind == "sdxl-like" else SD3Transformer2DModel
        pipe = cls(
            tokenizer=PreTrainedTokenizerFast.from_pretrained(d / "tokenizer"),
            # weights may be stored in float16 (the shipped world is); compute in float32
            text_encoder=CLIPTextModel.from_pretrained(d / "text_encoder", dtype=torch.float32),
            vae=AutoencoderKL.from_pretrained(d / "vae", torch_dtype=torch.float32),
            denoiser=den_cls.from_pretrained(d / den, torch_dtype=torch.float32),
            kind=kind, scheduler_config=cfg["scheduler"],
            default_steps=cfg["default_steps"], default_guidance=cfg["default_guidance"])
        return pipe.eval()


def build_pipeline(kind: str, vocab, size: str = "default", vae=None) -> ShapesPipeline:
    """A freshly initialised pipeline of ``kind`` and ``size`` (``vae`` reused if given)."""
    tok = M.build_tokenizer(vocab)
    te = M.build_text_encoder(size, vocab_size=len(tok))
    den = M.build_unet(size) if kind == "sdxl-like" else M.build_transformer(size)
    return ShapesPipeline(tok, te, vae if vae is not None else M.build_vae(size), den, kind=kind)
