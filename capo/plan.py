"""The memory and time plan of a training run, without allocating the model (``capo train
dry_run=true``).

Parameters are counted exactly on PyTorch's meta device (``accelerate.init_empty_weights``):
for the registered real models from the architecture configs shipped in
``capo/models/configs`` (no download), for a diffusers folder from its own config, for the
shapes models from the model itself (a few MB). Bytes follow what ``capo train`` allocates:

* full fine-tuning: fp32 weights (4 B/param), fp32 gradients (4), AdamW moments (8; 8-bit
  AdamW: 2), and the frozen reference (2 under bf16/fp16 mixed precision, else 4);
* LoRA: the frozen base (= the reference: 2 under mixed precision, else 4 B/param) plus, per
  adapter parameter, fp32 weights, gradients and moments (16, or 10 with 8-bit AdamW);
* with FSDP (``shards``), weights, gradients and optimizer state are divided over the shards;
  the reference and the activations are per GPU.

Activations are derived from the architecture (``traced_activations``): the denoiser's forward
at the model's resolution in bf16 on the meta device, counting every tensor autograd saves for
backward (flash-attention-style attention; parameters excluded), with and without gradient
checkpointing (then: what the non-recomputed ops save + the checkpointed units' inputs + the
largest unit's own tensors). Nothing is calibrated on a measurement: against the anchor of
issue #9 (a bare PyTorch loop, random-init backbones of the real shapes at 1024 px, bf16, SDPA,
fused AdamW, gradient checkpointing, one H100, 2026) the plans of its four measured peaks are
within 6% (SDXL full 48.5 vs 46 GiB, SD3-M full 38.9 vs 38, SDXL LoRA r64 11.6 vs 11.4 at 4
pairs and 17.1 vs 16.9 at 8; in the tests). Without checkpointing no peak was measured: SDXL
needs 13.6 GiB per pair, so 4 pairs (97.5 GiB) do not fit on an 80 GB card. Time per step =
pairs per step / the anchor's training throughput on the named GPU.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from capo import models
from capo.models import CHECKPOINT_FILE
from capo.models.diffusers_backends import (SD3_DEFAULT_GUIDANCE, SD3_DEFAULT_STEPS, SDXL_DEFAULT_GUIDANCE,
                                            SDXL_DEFAULT_STEPS)
from capo.stages.grpo import Chain
from capo.stages.training import use_checkpointing

GIB = 2**30
CONFIGS = Path(__file__).parent / "models" / "configs"
SHIPPED = {"sdxl": ("sdxl", "UNet2DConditionModel", "sdxl-unet.json", (1024, 1024)),
           "sd3-medium": ("sd3", "SD3Transformer2DModel", "sd3-medium-transformer.json", (1024, 1024))}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # what capo train adapts (capo.stages.train)

# The anchor (issue #9): measured on one H100, bare bf16 loop, 1024 px, checkpointing, 2026. Its
# throughputs time the plans; its peaks check the architecture-derived memory (tests/test_plan.py).
ANCHOR = {
    "source": "issue #9 anchor: bare PyTorch loop, random-init real shapes, 1024 px, bf16, SDPA, fused AdamW, "
              "gradient checkpointing, policy fwd+bwd and reference fwd per pair; one H100 (2026)",
    # (kind, mode) -> (pairs per step, measured peak GiB, training pairs/s)
    "train": {("sdxl", "full"): (4, 46.0, 4.65), ("sd3", "full"): (4, 38.0, 3.62),
              ("sdxl", "lora64"): (4, 11.4, 3.71)},
    "train_lora64_8_pairs": {"sdxl": (8, 16.9, 4.70)},
    # kind -> images/s of the bare diffusers-style sampler, 50 steps with classifier-free guidance, 1024 px
    "sample": {"sdxl": 0.573, "sd3": 0.417},
}
GPUS = {"H100": "NVIDIA H100 80GB (SXM)"}  # throughput is known for these


def _meta_count(cls_name: str, config: dict, lora_rank: int) -> tuple[int, int]:
    import diffusers
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        m = getattr(diffusers, cls_name).from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return _count(m, lora_rank, torch)


def _count(module, lora_rank: int, torch) -> tuple[int, int]:
    params = sum(p.numel() for p in module.parameters())
    lora = sum(lora_rank * (m.in_features + m.out_features) for n, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and n.endswith(LORA_TARGETS))
    return params, lora


@functools.lru_cache(maxsize=None)
def _shipped_count(model: str, lora_rank: int) -> dict:
    """``count`` of a shipped architecture (built once per process: a 2.5B-parameter meta model
    takes seconds, and a plan needs it for the model and again for the anchor)."""
    kind, cls, f, res = SHIPPED[model]
    n, lora = _meta_count(cls, json.loads((CONFIGS / f).read_text()), lora_rank)
    return {"kind": kind, "params": n, "lora_params": lora, "resolution": res}


def kind_of(spec: str) -> str:
    """``sdxl`` | ``sd3`` | ``shapes`` of a model spec, without loading it: a registered real
    model, a diffusers folder (its ``model_index.json``), or a capo checkpoint (its base's)."""
    p = Path(spec)
    if (p / CHECKPOINT_FILE).is_file():
        return kind_of(json.loads((p / CHECKPOINT_FILE).read_text())["base"])
    if spec in SHIPPED:
        return SHIPPED[spec][0]
    if (p / "model_index.json").is_file():
        name = json.loads((p / "model_index.json").read_text()).get("_class_name", "")
        return "sd3" if "StableDiffusion3" in name else "sdxl"
    return "shapes"


def count(model: str, lora_rank: int = 0) -> dict:
    """``{"kind", "params", "lora_params", "resolution"}`` of a model spec, nothing allocated."""
    p = Path(model)
    if (p / CHECKPOINT_FILE).is_file():  # a fine-tuned checkpoint: its base's architecture
        return count(json.loads((p / CHECKPOINT_FILE).read_text())["base"], lora_rank)
    if model in SHIPPED:
        return dict(_shipped_count(model, lora_rank))
    for sub, cls, kind in (("unet", "UNet2DConditionModel", "sdxl"), ("transformer", "SD3Transformer2DModel", "sd3")):
        if (p / sub / "config.json").is_file():
            config = json.loads((p / sub / "config.json").read_text())
            n, lora = _meta_count(cls, config, lora_rank)
            side = int(config.get("sample_size", 0)) * 8  # latent side x the VAE factor
            return {"kind": kind, "params": n, "lora_params": lora, "resolution": (side, side) if side else None,
                    "arch": (cls, config)}
    import torch

    m = models.load_model(model)
    n, lora = _count(m.denoiser, lora_rank, torch)
    return {"kind": getattr(m, "kind", "other"), "params": n, "lora_params": lora,
            "resolution": tuple(getattr(m, "resolution", (0, 0)))}


def static_bytes(params: int, lora_params: int, lora: bool, mixed_precision: str, optimizer: str,
                 shards: int = 1) -> dict[str, float]:
    """Bytes per GPU of everything but activations (module docstring)."""
    half = mixed_precision in ("bf16", "fp16")
    moments = 2 if optimizer == "adamw-8bit" else 8
    if lora:
        return {"frozen base (reference)": params * (2 if half else 4), "adapter weights": lora_params * 4,
                "gradients": lora_params * 4, "optimizer state": lora_params * moments}
    return {"weights (fp32)": params * 4 / shards, "gradients": params * 4 / shards,
            "optimizer state": params * moments / shards, "reference": params * (2 if half else 4)}


# Units diffusers recomputes under gradient checkpointing (``_gradient_checkpointing_func``): the
# UNet's resnets and the transformer blocks inside its Transformer2DModels; SD3's joint blocks.
CHECKPOINT_UNITS = {"sdxl": ("ResnetBlock2D", "BasicTransformerBlock"), "sd3": ("JointTransformerBlock",)}


@functools.cache
def _flash_function():
    """An autograd function standing in for attention while tracing: an output of the right shape
    that saves what flash / memory-efficient attention saves for backward (q, k, v, out and the
    float32 log-sum-exp), not the (L x L) attention matrix of the math fallback."""
    import torch

    class FlashAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, g):  # never run: the trace has no backward
            raise RuntimeError("trace only")

    return FlashAttention


def flash_attention(q, k, v, *args, **kwargs):
    """``F.scaled_dot_product_attention``'s stand-in while tracing (``_flash_function``)."""
    return _flash_function().apply(q, k, v)


@functools.lru_cache(maxsize=None)
def traced_activations(kind: str, cls_name: str, config_json: str, resolution: tuple) -> dict:
    """Bytes saved for backward per training pair (2 images) by the denoiser's forward at
    ``resolution`` in bf16, traced on the meta device (nothing allocated): ``off`` without
    checkpointing (every tensor saved by autograd, parameters excluded, each storage once);
    ``on`` with it: what the non-recomputed ops save + every checkpointed unit's inputs + the
    largest unit's own saved tensors (recomputed in the backward pass, one unit at a time).
    Attention saves what flash attention does (``flash_attention``)."""
    import diffusers
    import torch
    import torch.nn.functional as F

    config = {k: v for k, v in json.loads(config_json).items() if not k.startswith("_")}
    with torch.device("meta"):
        m = getattr(diffusers, cls_name).from_config(config).to(torch.bfloat16)
    params = {id(p) for p in m.parameters()}
    state = {"unit": None}
    outside, inside, inputs = {}, {}, {}

    def pre(mod, args, kwargs):
        if state["unit"] is None:
            state["unit"] = id(mod)
            inside[id(mod)] = {}
            for a in (*args, *kwargs.values()):
                if torch.is_tensor(a):
                    inputs[id(a)] = a.numel() * a.element_size()

    def post(mod, args, kwargs, out):
        if state["unit"] == id(mod):
            state["unit"] = None

    for mod in m.modules():
        if type(mod).__name__ in CHECKPOINT_UNITS[kind]:
            mod.register_forward_pre_hook(pre, with_kwargs=True)
            mod.register_forward_hook(post, with_kwargs=True)

    seen: set[int] = set()

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in seen:  # each storage once, where first saved
            seen.add(id(base))
            (outside if state["unit"] is None else inside[state["unit"]])[id(base)] = base.numel() * base.element_size()
        return t

    for p in m.parameters():
        p.requires_grad_(True)
    b, dt, c = 2, torch.bfloat16, m.config
    h, w = resolution[0] // 8, resolution[1] // 8
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = flash_attention
    try:
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x = torch.randn(b, c.in_channels, h, w, dtype=dt)
            if kind == "sdxl":
                pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
                m(x, torch.zeros(b, dtype=torch.long), encoder_hidden_states=torch.randn(b, 77, c.cross_attention_dim,
                                                                                         dtype=dt),
                  added_cond_kwargs={"text_embeds": torch.randn(b, pooled, dtype=dt),
                                     "time_ids": torch.randn(b, 6, dtype=dt)})
            else:
                m(hidden_states=x, timestep=torch.zeros(b), pooled_projections=torch.randn(b, c.pooled_projection_dim,
                                                                                            dtype=dt),
                  encoder_hidden_states=torch.randn(b, 77 + 256, c.joint_attention_dim, dtype=dt))
    finally:
        F.scaled_dot_product_attention = sdpa
    out, unit_in = sum(outside.values()), sum(inputs.values())
    own = [sum(d.values()) for d in inside.values()]
    return {"off": out + sum(own), "on": out + unit_in + max(own, default=0)}


def activation_per_pair(kind: str, checkpointing: bool, resolution, arch=None,
                        mixed_precision: str = "bf16") -> float | None:
    """GiB of activations per training pair, from the architecture (``traced_activations``;
    ``arch`` = (class name, config dict), default the shipped one of ``kind``). bf16 / fp16 as
    traced; fp32 twice that. LoRA saves the same activations (the frozen base still passes
    gradients to the adapters' inputs) plus rank-sized intermediates, not counted. None for a
    model the trace does not know (the shapes world's)."""
    if kind not in CHECKPOINT_UNITS or not resolution:
        return None
    if arch is None:
        model = {"sdxl": "sdxl", "sd3": "sd3-medium"}[kind]
        arch = (SHIPPED[model][1], json.loads((CONFIGS / SHIPPED[model][2]).read_text()))
    t = traced_activations(kind, arch[0], json.dumps(arch[1], sort_keys=True), tuple(resolution))
    factor = 1.0 if mixed_precision in ("bf16", "fp16") else 2.0
    return t["on" if checkpointing else "off"] * factor / GIB


def plan(model: str, *, lora_rank: int = 0, mixed_precision: str = "no", optimizer: str = "adamw",
         checkpointing: str = "auto", pairs_per_gpu: int = 8, accum: int = 1, gpus: int = 1, shards: int = 1,
         gpu: str = "H100", steps: int = 100) -> dict:
    """The plan: parameters, bytes per component, activations, peak per GPU, time per step.
    ``checkpointing``: on | off | auto (on for the real backbones, as capo train)."""
    if gpu not in GPUS:
        raise ValueError(f"no throughput measured for GPU {gpu!r}; known: {', '.join(GPUS)}")
    c = count(model, lora_rank)
    lora = lora_rank > 0
    checkpointing = use_checkpointing(checkpointing, c["kind"])
    st = static_bytes(c["params"], c["lora_params"], lora, mixed_precision, optimizer, shards)
    act = activation_per_pair(c["kind"], checkpointing, c["resolution"], c.get("arch"), mixed_precision)
    peak = sum(st.values()) / GIB + (act * pairs_per_gpu if act is not None else 0.0)
    thr = ANCHOR["train"].get((c["kind"], "lora64" if lora else "full"))
    per_step = pairs_per_gpu * accum / thr[2] if thr else None
    return {"model": model, **c, "lora_rank": lora_rank, "static_gib": {k: v / GIB for k, v in st.items()},
            "activations_gib_per_pair": act, "pairs_per_gpu": pairs_per_gpu, "gpus": gpus, "shards": shards,
            "checkpointing": checkpointing,
            "peak_gib_per_gpu": peak if act is not None else None, "static_gib_total": sum(st.values()) / GIB,
            "gpu": gpu, "seconds_per_step": per_step, "hours": per_step * steps / 3600 if per_step else None,
            "steps": steps, "source": ANCHOR["source"]}


def render(p: dict) -> str:
    lines = [f"plan: {p['model']} ({p['kind']}), {p['params']:,} denoiser parameters"
             + (f", LoRA r{p['lora_rank']}: {p['lora_params']:,} trainable" if p["lora_rank"] else ", full fine-tuning")]
    for k, v in p["static_gib"].items():
        lines.append(f"  {k:<26} {v:8.2f} GiB" + (f" (1/{p['shards']} shard)" if p["shards"] > 1 and
                                                      k in ("weights (fp32)", "gradients", "optimizer state") else ""))
    a = p["activations_gib_per_pair"]
    lines.append(f"  {'activations':<26} " + (
        f"{a:8.2f} GiB per pair x {p['pairs_per_gpu']} (traced from the architecture, checkpointing "
        f"{'on' if p['checkpointing'] else 'off'})" if a is not None else "not estimated (not a traced architecture)"))
    lines.append(f"  {'peak per GPU':<26} " + (f"{p['peak_gib_per_gpu']:8.1f} GiB" if p["peak_gib_per_gpu"] is not None
                                               else f">= {p['static_gib_total']:.1f} GiB (activations not included)"))
    if p["seconds_per_step"] is not None:
        lines.append(f"  {'time per step':<26} {p['seconds_per_step']:8.2f} s on one {GPUS[p['gpu']]} "
                     f"({p['steps']} steps: {p['hours']:.2f} h)")
    else:
        lines.append(f"  {'time per step':<26} not estimated (no throughput measured for this model on {p['gpu']})")
    lines.append(f"  throughput source: {p['source']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- GRPO (issue #22)
# A GRPO step is priced from the same anchors as a DPO step (``ANCHOR``), per image and pass:
# * one denoiser forward pass (one image through the denoiser once; a guided call is 2) =
#   1 / (sampling images/s x 50 steps x 2): the anchor's sampler makes 100 passes per image
#   (its VAE decode and text encoding are inside that time, so decodes are not priced again);
# * one policy forward+backward = 1 / (2 x training pairs/s) minus one forward pass: the anchor's
#   pair is 2 images, each through the policy forward+backward and the reference forward.
# So with beta > 0 (a reference pass per trained pass) the update is priced exactly at the DPO
# anchor's per-image rate; reward calls are counted, not priced (no measured throughput).
SAMPLE_PASSES = 50 * 2  # denoiser passes per image of the sampling anchor (50 steps, CFG)
LATENT_CHANNELS = {"sdxl": 4, "sd3": 16}


def pass_seconds(kind: str, lora: bool, gpu: str = "H100") -> dict | None:
    """Seconds per image of one denoiser forward (``forward``) and one policy forward+backward
    (``forward_backward``) on ``gpu``, from ``ANCHOR`` (comment above); None without anchors."""
    if gpu not in GPUS:
        raise ValueError(f"no throughput measured for GPU {gpu!r}; known: {', '.join(GPUS)}")
    img = ANCHOR["sample"].get(kind)
    thr = ANCHOR["train"].get((kind, "lora64" if lora else "full"))
    if img is None or thr is None:
        return None
    fwd = 1.0 / (img * SAMPLE_PASSES)
    return {"forward": fwd, "forward_backward": 1.0 / (2 * thr[2]) - fwd}


def grpo_chain(model: str, sample_steps: int | None = None, noise_level: float | None = None,
               guidance: float | None = None) -> dict:
    """``{"steps": N, "stochastic": steps with a density, "guidance", "cfg": c}`` of the GRPO
    chain ``capo train objective=grpo`` would run (``capo.stages.grpo.Chain``), without loading
    a real model: the registered SDXL / SD3-M defaults (50 steps; guidance 7.5 / 5.0; every step
    stochastic: a flow SDE step always has a density, and SDXL base's scheduler has
    ``set_alpha_to_one: false``, so its last DDIM step has one too); a diffusers folder's own
    scheduler config; a shapes model is small and loaded."""
    p = Path(model)
    if (p / CHECKPOINT_FILE).is_file() and kind_of(model) != "shapes":
        return grpo_chain(json.loads((p / CHECKPOINT_FILE).read_text())["base"], sample_steps, noise_level, guidance)
    kind = kind_of(model)
    if kind == "shapes":

        m = models.load_model(model)
        n = int(sample_steps or m.default_steps)
        stochastic = len(Chain(m, n, noise_level).stochastic)
        g = float(m.default_guidance if guidance is None else guidance)
    else:
        steps0, g0 = (SDXL_DEFAULT_STEPS, SDXL_DEFAULT_GUIDANCE) if kind == "sdxl" else (SD3_DEFAULT_STEPS,
                                                                                          SD3_DEFAULT_GUIDANCE)
        n, g = int(sample_steps or steps0), float(g0 if guidance is None else guidance)
        stochastic = n
        sched = p / "scheduler" / "scheduler_config.json"
        if kind == "sdxl" and sched.is_file():  # the folder's DDIM: its last step may have no density

            class _Schedule:  # what Chain reads of a DDPM model
                prediction_type = "epsilon"

                def sampler(self, steps):
                    from diffusers import DDIMScheduler

                    s = DDIMScheduler.from_config(json.loads(sched.read_text()))
                    s.set_timesteps(steps)
                    return s

            stochastic = len(Chain(_Schedule(), n, noise_level).stochastic)
    return {"steps": n, "stochastic": stochastic, "guidance": g, "cfg": 1 if g == 1.0 else 2}


def grpo_plan(model: str, *, lora_rank: int = 0, mixed_precision: str = "no", optimizer: str = "adamw",
              checkpointing: str = "auto", batch_size: int = 8, group_size: int = 8, sample_steps: int | None = None,
              grpo_steps: int = 0, grpo_updates: int = 1, grad_accum: int = 1, beta: float = 500.0,
              reference: bool = False, guidance: float | None = None, noise_level: float | None = None,
              rewards: int | None = None, gpus: int = 1, shards: int = 1, gpu: str = "H100", steps: int = 100) -> dict:
    """The plan of a ``capo train objective=grpo`` run (``capo.stages.grpo``), per GPU (its
    ``batch_size`` prompts): B prompts x G images along N chain steps, c = 2 with CFG; K trained
    steps; U = ``grpo_updates`` optimizer steps per rollout. Per rollout: B·G·N·c denoiser
    forward passes (the rollout), B·G·K·c forward+backward passes (the update), B·G·K·c reference
    forward passes when beta > 0, B·G VAE decodes, B·G reward calls per reward. Memory: as a
    DPO run's (``static_bytes``), except that the reference is held only when beta > 0 and it is
    a copy (full fine-tuning, or ``reference`` = another model): under LoRA the reference is the
    frozen base with its adapter disabled; plus the rollout's stored latents (float32, B·G·(N+1)
    per image chain) and log-probabilities; activations of one micro-batch of B·G/(U·grad_accum)
    images, c times (CFG batches both branches)."""
    import math

    if (batch_size * group_size) % (grpo_updates * grad_accum):
        raise ValueError(f"batch_size x group_size = {batch_size * group_size} images per rollout cannot be split into "
                         f"grpo_updates x grad_accum = {grpo_updates * grad_accum} equal micro-batches")
    c = count(model, lora_rank)
    ch = grpo_chain(model, sample_steps, noise_level, guidance)
    lora = lora_rank > 0
    checkpointing = use_checkpointing(checkpointing, c["kind"])
    B, G, N, cfg_mult, U = batch_size, group_size, ch["steps"], ch["cfg"], grpo_updates
    K = min(grpo_steps or ch["stochastic"], ch["stochastic"])
    n_img = B * G
    st = static_bytes(c["params"], c["lora_params"], lora, mixed_precision, optimizer, shards)
    half = mixed_precision in ("bf16", "fp16")
    ref_copy = beta > 0 and (not lora or reference)  # a copy held (capo.stages.training.frozen_reference)
    if lora:
        name = "frozen base" + (" (reference: adapter off)" if beta > 0 and not reference else "")
        st = {(name if k == "frozen base (reference)" else k): v for k, v in st.items()}
        if ref_copy:
            st["reference"] = c["params"] * (2 if half else 4)
    elif not ref_copy:
        del st["reference"]
    res = c["resolution"]
    if c["kind"] in LATENT_CHANNELS and res:
        st["rollout latents + log-probs"] = n_img * ((N + 1) * LATENT_CHANNELS[c["kind"]] * (res[0] // 8)
                                                     * (res[1] // 8) + N) * 4
    micro = n_img // (U * grad_accum)
    act = activation_per_pair(c["kind"], checkpointing, res, c.get("arch"), mixed_precision)
    pairs_held = micro * cfg_mult / 2  # activation_per_pair is per 2 images
    peak = sum(st.values()) / GIB + (act * pairs_held if act is not None else 0.0)
    per_rollout = {"rollout_images": n_img, "rollout_passes": n_img * N * cfg_mult,
                   "update_passes": n_img * K * cfg_mult, "reference_passes": n_img * K * cfg_mult * (beta > 0),
                   "vae_decodes": n_img, "reward_calls": n_img * rewards if rewards is not None else None,
                   "reward_calls_per_reward": n_img}
    rollouts = math.ceil(steps / U)
    run = {"rollouts": rollouts, "rollout_images": rollouts * n_img, "rollout_passes": rollouts * n_img * N * cfg_mult,
           "update_passes": steps * (n_img // U) * K * cfg_mult,
           "reference_passes": steps * (n_img // U) * K * cfg_mult * (beta > 0)}
    sec = pass_seconds(c["kind"], lora, gpu)
    seconds = hours = None
    if sec is not None:
        seconds = {"rollout": per_rollout["rollout_passes"] * sec["forward"],
                   "update": per_rollout["update_passes"] * sec["forward_backward"],
                   "reference": per_rollout["reference_passes"] * sec["forward"]}
        seconds["total"] = sum(seconds.values())
        hours = (run["rollout_passes"] * sec["forward"] + run["update_passes"] * sec["forward_backward"]
                 + run["reference_passes"] * sec["forward"]) / 3600
    return {"model": model, "objective": "grpo", **c, "lora_rank": lora_rank, "beta": beta,
            "reference_copy": ref_copy, "batch_size": B, "group_size": G, "sample_steps": N, "trained_steps": K,
            "stochastic_steps": ch["stochastic"], "guidance": ch["guidance"], "cfg": cfg_mult, "grpo_updates": U,
            "grad_accum": grad_accum, "micro_images": micro, "rewards": rewards,
            "static_gib": {k: v / GIB for k, v in st.items()}, "static_gib_total": sum(st.values()) / GIB,
            "activations_gib_per_pair": act, "activation_pairs": pairs_held, "checkpointing": checkpointing,
            "peak_gib_per_gpu": peak if act is not None else None, "gpus": gpus, "shards": shards,
            "per_rollout": per_rollout, "per_run_per_gpu": run, "pass_seconds": sec,
            "seconds_per_rollout": seconds, "seconds_per_step": seconds["total"] / U if seconds else None,
            "hours": hours, "gpu_hours": hours * gpus if hours is not None else None,
            "gpu": gpu, "steps": steps, "source": ANCHOR["source"]}


def render_grpo(p: dict) -> str:
    """``capo train objective=grpo dry_run=true``'s text."""
    B, G, N, K, c, U = (p[k] for k in ("batch_size", "group_size", "sample_steps", "trained_steps", "cfg",
                                       "grpo_updates"))
    lines = [f"plan: {p['model']} ({p['kind']}), GRPO, {p['params']:,} denoiser parameters"
             + (f", LoRA r{p['lora_rank']}: {p['lora_params']:,} trainable" if p["lora_rank"] else ", full fine-tuning"),
             f"  per GPU and rollout: B={B} prompts x G={G} images, N={N} chain steps"
             f"{' with CFG (c=2)' if c == 2 else ' without CFG (c=1)'}, K={K} trained steps, "
             f"{U} optimizer step(s) per rollout, beta={p['beta']:g}"]
    for k, v in p["static_gib"].items():
        lines.append(f"  {k:<36} {v:8.2f} GiB" + (f" (1/{p['shards']} shard)" if p["shards"] > 1 and
                                                      k in ("weights (fp32)", "gradients", "optimizer state") else ""))
    if not p["reference_copy"] and not p["lora_rank"]:
        lines.append(f"  {'reference':<36} {0:8.2f} GiB (beta = 0: no reference held, no reference pass)")
    a = p["activations_gib_per_pair"]
    lines.append(f"  {'activations':<36} " + (
        f"{a:8.2f} GiB per pair x {p['activation_pairs']:g} (a micro-batch of {p['micro_images']} images x c = "
        f"{c}; traced, checkpointing {'on' if p['checkpointing'] else 'off'})"
        if a is not None else "not estimated (not a traced architecture)"))
    lines.append(f"  {'peak per GPU':<36} " + (f"{p['peak_gib_per_gpu']:8.1f} GiB" if p["peak_gib_per_gpu"] is not None
                                               else f">= {p['static_gib_total']:.1f} GiB (activations not included)"))
    r = p["per_rollout"]
    calls = (f"{r['reward_calls']:,} reward calls ({p['rewards']} reward(s))" if r["reward_calls"] is not None
             else f"{r['reward_calls_per_reward']:,} reward calls per reward")
    lines.append(f"  per rollout per GPU: {r['rollout_passes']:,} forward passes (B·G·N·c), {r['update_passes']:,} "
                 f"forward+backward (B·G·K·c), {r['reference_passes']:,} reference forward, "
                 f"{r['vae_decodes']:,} VAE decodes, {calls}")
    s = p["seconds_per_rollout"]
    if s is not None:
        ps = p["pass_seconds"]
        lines.append(f"  {'time per rollout':<36} rollout {s['rollout']:.1f} s + update {s['update']:.1f} s + reference "
                     f"{s['reference']:.1f} s = {s['total']:.1f} s on one {GPUS[p['gpu']]} ({p['steps']} steps, "
                     f"{p['per_run_per_gpu']['rollouts']} rollouts: {p['hours']:.2f} h"
                     + (f", {p['gpu_hours']:,.1f} GPU-hours on {p['gpus']} GPUs" if p["gpus"] > 1 else "") + ")")
        lines.append(f"  priced per image: a forward pass {ps['forward'] * 1e3:.2f} ms (the sampling anchor / "
                     f"{SAMPLE_PASSES} passes), a forward+backward {ps['forward_backward'] * 1e3:.2f} ms (the training "
                     "anchor's per-image time minus its reference pass); VAE decodes inside the sampling anchor, "
                     "reward calls not priced")
    else:
        lines.append(f"  {'time per rollout':<36} not estimated (no throughput measured for this model on {p['gpu']})")
    lines.append(f"  throughput source: {p['source']}")
    return "\n".join(lines)


