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

Activations are not derived from the architecture: they come from measured peaks, the
anchor of issue #9 (a bare PyTorch loop, random-init backbones of the real shapes at
1024 px, bf16, SDPA, fused AdamW, gradient checkpointing, one H100, 2026): per pair,
(measured peak - the static bytes above) / pairs. Against that same anchor the full
fine-tuning rows agree by construction; the LoRA row calibrated at 4 pairs predicts the
8-pair peak (an out-of-sample check, in the tests). Activations scale with the pixel count;
without gradient checkpointing they are not estimated (no measurement). Time per step =
pairs per step / the anchor's training throughput on the named GPU.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

GIB = 2**30
CONFIGS = Path(__file__).parent / "models" / "configs"
SHIPPED = {"sdxl": ("sdxl", "UNet2DConditionModel", "sdxl-unet.json", (1024, 1024)),
           "sd3-medium": ("sd3", "SD3Transformer2DModel", "sd3-medium-transformer.json", (1024, 1024))}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # what capo train adapts (capo.stages.train)

# The anchor (issue #9): measured on one H100, bare bf16 loop, 1024 px, checkpointing, 2026.
ANCHOR = {
    "source": "issue #9 anchor: bare PyTorch loop, random-init real shapes, 1024 px, bf16, SDPA, fused AdamW, "
              "gradient checkpointing, policy fwd+bwd and reference fwd per pair; one H100 (2026)",
    # (kind, mode) -> (pairs per step, measured peak GiB, training pairs/s)
    "train": {("sdxl", "full"): (4, 46.0, 4.65), ("sd3", "full"): (4, 38.0, 3.62),
              ("sdxl", "lora64"): (4, 11.4, 3.71)},
    "train_lora64_8_pairs": {"sdxl": (8, 16.9, 4.70)},  # held out: checked against the prediction
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


def count(model: str, lora_rank: int = 0) -> dict:
    """``{"kind", "params", "lora_params", "resolution"}`` of a model spec, nothing allocated."""
    from capo.models import CHECKPOINT_FILE

    p = Path(model)
    if (p / CHECKPOINT_FILE).is_file():  # a fine-tuned checkpoint: its base's architecture
        return count(json.loads((p / CHECKPOINT_FILE).read_text())["base"], lora_rank)
    if model in SHIPPED:
        return dict(_shipped_count(model, lora_rank))
    for sub, cls, kind in (("unet", "UNet2DConditionModel", "sdxl"), ("transformer", "SD3Transformer2DModel", "sd3")):
        if (p / sub / "config.json").is_file():
            n, lora = _meta_count(cls, json.loads((p / sub / "config.json").read_text()), lora_rank)
            return {"kind": kind, "params": n, "lora_params": lora, "resolution": None}
    import torch

    from capo.models import load_model  # the shapes models: small enough to count for real

    m = load_model(model)
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


def activation_per_pair(kind: str, lora: bool, checkpointing: bool, resolution) -> float | None:
    """GiB of activations per training pair from the anchor (None: no measurement)."""
    mode = "lora64" if lora else "full"
    if not checkpointing or (kind, mode) not in ANCHOR["train"]:
        return None
    pairs, peak, _ = ANCHOR["train"][(kind, mode)]
    n = _shipped_count({"sdxl": "sdxl", "sd3": "sd3-medium"}[kind], 64 if lora else 0)
    static = sum(static_bytes(n["params"], n["lora_params"], lora, "bf16", "adamw").values()) / GIB
    scale = 1.0 if not resolution else (resolution[0] * resolution[1]) / (1024 * 1024)
    return (peak - static) / pairs * scale


def plan(model: str, *, lora_rank: int = 0, mixed_precision: str = "no", optimizer: str = "adamw",
         checkpointing: str = "auto", pairs_per_gpu: int = 8, accum: int = 1, gpus: int = 1, shards: int = 1,
         gpu: str = "H100", steps: int = 100) -> dict:
    """The plan: parameters, bytes per component, activations, peak per GPU, time per step.
    ``checkpointing``: on | off | auto (on for the real backbones, as capo train)."""
    if gpu not in GPUS:
        raise ValueError(f"no throughput measured for GPU {gpu!r}; known: {', '.join(GPUS)}")
    c = count(model, lora_rank)
    lora = lora_rank > 0
    from capo.stages.train import use_checkpointing

    checkpointing = use_checkpointing(checkpointing, c["kind"])
    st = static_bytes(c["params"], c["lora_params"], lora, mixed_precision, optimizer, shards)
    act = activation_per_pair(c["kind"], lora, checkpointing, c["resolution"])
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
    lines.append(f"  {'activations':<26} " + (f"{a:8.2f} GiB per pair x {p['pairs_per_gpu']}" if a is not None else
                                              "not estimated (no measurement for this model / setting)"))
    lines.append(f"  {'peak per GPU':<26} " + (f"{p['peak_gib_per_gpu']:8.1f} GiB" if p["peak_gib_per_gpu"] is not None
                                               else f">= {p['static_gib_total']:.1f} GiB (activations not included)"))
    if p["seconds_per_step"] is not None:
        lines.append(f"  {'time per step':<26} {p['seconds_per_step']:8.2f} s on one {GPUS[p['gpu']]} "
                     f"({p['steps']} steps: {p['hours']:.2f} h)")
    else:
        lines.append(f"  {'time per step':<26} not estimated (no throughput measured for this model on {p['gpu']})")
    lines.append(f"  source: {p['source']}")
    return "\n".join(lines)
