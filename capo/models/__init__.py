"""Base text-to-image models behind one interface, a registry of names, and checkpoints.

Every model the stages touch offers (``ShapesPipeline`` is the reference implementation):

* ``prediction_type``: ``epsilon`` | ``v_prediction`` | ``flow`` (what ``predict`` returns)
* ``denoiser``: the ``nn.Module`` that preference training updates (UNet or transformer)
* ``encode_prompts(prompts) -> (hidden, pooled)``: text conditioning, cached by ``generate``
* ``predict(x_t, t_model, hidden, pooled)``: raw denoiser output; ``t_model`` is the
  diffusers timestep (DDPM: integers 0..T-1; flow: ``sigma * 1000``)
* ``train_scheduler()``: the training noise schedule (``alphas_cumprod`` for DDPM)
* ``sample(prompts, seeds, steps, guidance, batch_size) -> (uint8 images, latents)`` with
  per-item seeds (image k depends on ``seeds[k]`` alone)
* ``decode_latents(latents) -> uint8 images``

``load_model(spec)`` takes a registered name (``capo ls models``), a saved pipeline
directory, or a capo checkpoint directory (``capo_checkpoint.json``: a base model plus
fine-tuned denoiser weights, full or LoRA) and returns such a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from capo import artifacts
from capo.models.errors import ModelLoadError  # noqa: F401 - part of this package's interface
from capo.registry import MODELS, PIPELINE_DIRS

CHECKPOINT_FILE = "capo_checkpoint.json"
COMPILE_BACKENDS = ("off", "inductor", "eager")  # torch.compile of a denoiser (capo train; GuidedSampling.compile_denoiser)
COMPILE_RULE = " | ".join(COMPILE_BACKENDS)  # the RULES entry of a ``compile`` key
DENOISER_WEIGHTS = "denoiser.safetensors"


def load_model(spec: str):
    """A registered name, a saved ``ShapesPipeline`` directory, or a capo checkpoint."""
    p = Path(spec)
    if (p / CHECKPOINT_FILE).is_file():
        return load_checkpoint(p)
    for marker in PIPELINE_DIRS.names():  # a saved shapes pipeline or a diffusers directory
        if (p / marker).is_file():
            return PIPELINE_DIRS.get(marker)(p)
    if spec in MODELS:
        return MODELS.get(spec)()
    if p.exists():
        raise ModelLoadError(f"{spec}: neither a capo checkpoint ({CHECKPOINT_FILE}), a shapes pipeline "
                             "(capo_pipeline.json) nor a diffusers pipeline directory (model_index.json)")
    return MODELS.get(spec)()  # raises the unknown-name error with suggestions


def model_fingerprint(spec: str) -> str:
    """A stable identity of a model spec: the checkpoint's recorded identity, a directory's
    content hash, or the registered name itself."""
    p = Path(spec)
    if (p / CHECKPOINT_FILE).is_file():
        return json.loads((p / CHECKPOINT_FILE).read_text())["fingerprint"]
    if p.is_dir():
        return artifacts.fingerprint(p)
    if spec in MODELS:
        zoo_fp = MODELS.get(spec).__dict__.get("fingerprint")
        return zoo_fp() if callable(zoo_fp) else f"registered:{spec}"
    MODELS.get(spec)
    return spec


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(out_dir, base_spec: str, denoiser_state: dict | None = None, lora_model=None,
                    extra: dict | None = None) -> Path:
    """Write a fine-tuned checkpoint: the base model's spec and fingerprint, plus either the
    full denoiser state dict (``denoiser.safetensors``) or a peft LoRA adapter directory."""
    import hashlib

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (denoiser_state is None) == (lora_model is None):
        raise ValueError("save_checkpoint needs exactly one of denoiser_state (full) or lora_model (LoRA)")
    if denoiser_state is not None:
        state = {k: v.detach().contiguous().cpu() for k, v in denoiser_state.items()}
        with artifacts.atomic_path(out / DENOISER_WEIGHTS) as tmp:
            save_file(state, str(tmp))
        fmt, weights = "full", out / DENOISER_WEIGHTS
    else:
        lora_model.save_pretrained(out / "adapter")
        fmt, weights = "lora", out / "adapter" / "adapter_model.safetensors"
    meta = {"base": base_spec, "base_fingerprint": model_fingerprint(base_spec), "format": fmt,
            "files": {str(weights.relative_to(out)): artifacts.file_record(weights)}, **(extra or {})}
    h = hashlib.sha256(artifacts.sha256_file(weights).encode() + meta["base_fingerprint"].encode())
    meta["fingerprint"] = h.hexdigest()
    artifacts.write_json(out / CHECKPOINT_FILE, meta)
    return out


def check_checkpoint(path) -> dict:
    """A capo checkpoint's metadata, after the checks that need no weights loaded: valid JSON,
    its weight files intact (size and sha256 as recorded), its base model unchanged. Every
    failure is a ``ModelLoadError`` saying how to re-create it."""
    p = Path(path)
    try:
        meta = json.loads((p / CHECKPOINT_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p / CHECKPOINT_FILE}: not valid JSON ({e}); the checkpoint is damaged: re-create it "
                             "(rerun the train or merge command that wrote it with --overwrite)") from None
    for name, rec in (meta.get("files") or {}).items():  # before the (slow) base model loads
        try:
            artifacts.check_file(p / name, rec, f"the weights of checkpoint {p}",
                                 "re-create it: rerun the train or merge command that wrote it with --overwrite "
                                 "(a train run resumes from its newest intact checkpoint-<step>/)")
        except artifacts.ArtifactError as e:
            raise ModelLoadError(str(e)) from None
    if meta.get("format") == "full" and not (p / DENOISER_WEIGHTS).is_file():
        raise ModelLoadError(f"{p}: missing {DENOISER_WEIGHTS}")
    if meta.get("format") == "lora" and not (p / "adapter").is_dir():
        raise ModelLoadError(f"{p}: missing LoRA adapter directory 'adapter'")
    now = model_fingerprint(meta["base"])
    if now != meta["base_fingerprint"]:
        raise ModelLoadError(f"{p}: its base model {meta['base']!r} has changed since training "
                             f"(fingerprint {meta['base_fingerprint'][:12]} then, {now[:12]} now)")
    return meta


def check_model(spec: str) -> None:
    """The checks ``load_model`` makes before loading weights (a stage calls this for every model
    before it writes anything): a checkpoint's files intact, a name known, a path of a known kind."""
    p = Path(spec)
    if (p / CHECKPOINT_FILE).is_file():
        meta = check_checkpoint(p)
        check_model(meta["base"])
    elif not ((p / "capo_pipeline.json").is_file() or (p / "model_index.json").is_file()):
        if spec not in MODELS and p.exists():
            raise ModelLoadError(f"{spec}: neither a capo checkpoint ({CHECKPOINT_FILE}), a shapes pipeline "
                                 "(capo_pipeline.json) nor a diffusers pipeline directory (model_index.json)")
        MODELS.get(spec)  # an unknown name raises with suggestions


def load_checkpoint(path):
    """Load a capo checkpoint: its base model with the fine-tuned denoiser weights applied
    (LoRA adapters are merged into the weights)."""
    from safetensors.torch import load_file

    p = Path(path)
    meta = check_checkpoint(p)
    model = load_model(meta["base"])
    if meta["format"] == "full":
        if not (p / DENOISER_WEIGHTS).is_file():
            raise ModelLoadError(f"{p}: missing {DENOISER_WEIGHTS}")
        try:
            state = load_file(str(p / DENOISER_WEIGHTS))
        except Exception as e:  # safetensors' SafetensorError on a truncated or foreign file
            raise ModelLoadError(f"{p / DENOISER_WEIGHTS}: cannot read the checkpoint's weights ({e}); re-create it: "
                                 "rerun the train or merge command that wrote it with --overwrite") from None
        model.denoiser.load_state_dict(state)
    elif meta["format"] == "lora":
        from peft import PeftModel

        if not (p / "adapter").is_dir():
            raise ModelLoadError(f"{p}: missing LoRA adapter directory 'adapter'")
        model.denoiser = PeftModel.from_pretrained(model.denoiser, str(p / "adapter")).merge_and_unload()
    else:
        raise ModelLoadError(f"{p}: unknown checkpoint format {meta['format']!r}")
    model.denoiser.eval()
    return model
