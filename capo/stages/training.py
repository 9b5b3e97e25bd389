"""What both trainers share (``capo.stages.train``'s preference objectives and
``capo.stages.grpo``): the frozen reference, the optimizer, mixed-precision and checkpointing
choices, and reading a run's checkpoints and metrics log back when it resumes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stops before the update; the message names the last good checkpoint."""


def logged_step(line: str) -> int | None:
    """The step of a metrics.jsonl line (None for a line torn by a kill)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p.parent for p in (out / "checkpoints").glob("step-*/trainer_state.json"))
    return done[-1] if done else None


def reference_denoiser(spec: str, denoiser):
    """The denoiser of model ``spec`` as a frozen reference for ``denoiser``: the same
    architecture is required (same parameter names and shapes)."""
    from capo.models import load_model

    ref = load_model(spec).denoiser
    mine = {k: tuple(v.shape) for k, v in denoiser.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
        raise ValueError(f"reference={spec}: its denoiser is not the architecture of the model trained "
                         f"(first differences: {diff}); the reference must be the base or a checkpoint of it")
    return ref


def frozen_reference(base, other, lora: bool, mixed_precision: str, device):
    """The frozen reference network: ``other`` (another model's denoiser, e.g. the base model in
    an online round) when given, else a copy of ``base`` (full fine-tuning) or None (LoRA: the
    policy with its adapter disabled). Under mixed precision it is kept in the compute dtype:
    it is never updated, so it needs no fp32 master copy (half the memory of a full copy)."""
    ref = other if other is not None else (None if lora else copy.deepcopy(base))
    if ref is None:
        return None
    ref = ref.to(device).requires_grad_(False).eval()
    dtype = compute_dtype(mixed_precision)
    return ref.to(dtype) if dtype is not None else ref


def compute_dtype(mixed_precision: str):
    """The autocast dtype of ``mixed_precision`` (None for ``no``)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


REAL_KINDS = ("sdxl", "sd3")  # model kinds of the real backbones (the shapes models are "sdxl-like", "sd3-like")


def use_checkpointing(setting: str, kind: str) -> bool:
    """``on`` / ``off``, or ``auto``: on for the real backbones (SDXL, SD3), off for the small
    shapes-world models (their activations are tiny and recomputation would only cost time)."""
    return setting == "on" or (setting == "auto" and kind in REAL_KINDS)


def make_optimizer(name: str, params, lr: float, weight_decay: float, fused: bool):
    """AdamW (PyTorch's fused kernel on CUDA), or bitsandbytes' 8-bit AdamW (optimizer state in
    8 bits: 2 bytes per parameter instead of 8)."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ValueError("optimizer=adamw-8bit needs the bitsandbytes package: pip install 'capo[bnb]' "
                         "(or use optimizer=adamw)") from None
    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
