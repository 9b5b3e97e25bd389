"""What both trainers share (``capo.stages.train``'s preference objectives and
``capo.stages.grpo``): the frozen reference, the optimizer, mixed-precision and checkpointing
choices, and reading a run's checkpoints and metrics log back when it resumes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from capo import models
from capo.models import save_checkpoint


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
    ref = models.load_model(spec).denoiser
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


def make_policy(base, cfg):
    """The trained network: ``base`` itself (full fine-tuning) or a peft LoRA of rank
    ``cfg.lora_rank`` on its attention projections, the frozen base then in the compute dtype (it
    is the reference too: no fp32 copy) and the adapter in fp32 (its optimizer state too)."""
    if cfg.lora_rank == 0:
        return base
    from peft import LoraConfig, get_peft_model

    targets = sorted({n.split(".")[-1] for n, m in base.named_modules() if n.endswith(("to_q", "to_k", "to_v"))}
                     | {"to_out.0"})
    if (half := compute_dtype(cfg.mixed_precision)) is not None:
        base.to(half)
    policy = get_peft_model(base, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                             init_lora_weights="gaussian", target_modules=targets))
    for p in policy.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return policy


def rotate_checkpoints(out: Path, keep: int) -> None:
    """Keep the newest ``max(1, keep)`` complete checkpoints under ``out/checkpoints``."""
    import shutil

    done = sorted(p.parent for p in (out / "checkpoints").glob("step-*/trainer_state.json"))
    for old in done[:-max(1, keep)]:
        shutil.rmtree(old)


def save_final(accelerator, policy, unwrapped, cfg, out: Path, extra: dict) -> None:
    """``out/final``: the full denoiser's state dict (gathered from every shard under FSDP: a
    collective, so every process calls this) or the LoRA adapter, as a capo checkpoint."""
    state = accelerator.get_state_dict(policy) if cfg.lora_rank == 0 else None
    if state is not None:  # a compiled module's keys carry torch.compile's wrapper prefix
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if accelerator.is_main_process:
        if cfg.lora_rank > 0:
            save_checkpoint(out / "final", cfg.model, lora_model=unwrapped, extra=extra)
        else:
            save_checkpoint(out / "final", cfg.model, denoiser_state=state, extra=extra)
