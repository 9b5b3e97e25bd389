"""Stage `merge`: SOUP, the merge of several fine-tuned checkpoints of one base model.

Task vectors (fine-tuned minus base; for LoRA checkpoints the dense ``s * B @ A``) are
merged linearly or by slerp with weights (``capo.method.merging``; slerp of more than two
models is sequential in the given order, so pass checkpoints in a fixed order, e.g. the
order of the reward list) and added to the base. The result is a full-weight capo
checkpoint in ``out`` (``models.load_model(out)`` reads it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar

from capo import artifacts
from capo import models
from capo.config import stage_config, to_dict
from capo.method.merging import apply_delta, lora_scaling, merge, merge_lora


@stage_config
class MergeConfig:
    checkpoints: list[str]  # capo checkpoints (e.g. runs/train-mps/final), all of one base model
    out: str  # output directory (a capo checkpoint)
    weights: list[float] | None = None  # merge weights, normalised (default uniform 1/L)
    method: str = "slerp"  # how task vectors combine (capo.method.merging)
    overwrite: bool = False

    RULES: ClassVar[dict[str, str]] = {"weights": ">= 0", "method": "slerp | linear"}

    def contradictions(self):
        if len(self.checkpoints) < 2:
            yield f"checkpoints: a merge needs at least two, got {len(self.checkpoints)}"
        if self.weights is not None:
            if len(self.weights) != len(self.checkpoints):
                yield f"weights: {len(self.weights)} weights for {len(self.checkpoints)} checkpoints"
            elif sum(self.weights) <= 0:
                yield f"weights: {self.weights} must have a positive sum"


def run(cfg: MergeConfig) -> dict:
    from safetensors.torch import load_file

    t0 = time.time()
    metas = []
    for c in cfg.checkpoints:
        f = Path(c) / models.CHECKPOINT_FILE
        if not f.is_file():
            raise artifacts.ArtifactError(f"{c}: not a capo checkpoint (no {models.CHECKPOINT_FILE})")
        metas.append(json.loads(f.read_text()))
    bases = {(m["base"], m["base_fingerprint"]) for m in metas}
    if len(bases) != 1:
        raise artifacts.ArtifactError("the checkpoints fine-tune different base models: "
                                      + "; ".join(f"{c} <- {m['base']}" for c, m in zip(cfg.checkpoints, metas)))
    base_spec = metas[0]["base"]
    config = to_dict(cfg) | {"out": None, "overwrite": None}
    manifest = artifacts.make_manifest("merge", config, {
        f"checkpoint_{i}": {"path": c, "sha256": m["fingerprint"]} for i, (c, m) in enumerate(zip(cfg.checkpoints, metas))})
    out = Path(cfg.out)
    if artifacts.existing_run(out, manifest, cfg.overwrite) == "complete":
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}

    base_state = {k: v.clone() for k, v in models.load_model(base_spec).denoiser.state_dict().items()}
    formats = {m["format"] for m in metas}
    if formats == {"full"}:
        states = [load_file(str(Path(c) / models.DENOISER_WEIGHTS)) for c in cfg.checkpoints]
        merged = merge(base_state, states, weights=cfg.weights, method=cfg.method)
    elif formats == {"lora"}:
        adapters, scalings = [], []
        for c in cfg.checkpoints:
            acfg = json.loads((Path(c) / "adapter" / "adapter_config.json").read_text())
            adapters.append(load_file(str(Path(c) / "adapter" / "adapter_model.safetensors")))
            scalings.append(lora_scaling(acfg["r"], acfg["lora_alpha"], acfg.get("use_rslora", False)))
        merged = apply_delta(base_state, merge_lora(adapters, scalings, weights=cfg.weights, method=cfg.method))
    else:
        raise ValueError(f"cannot merge a mix of full and LoRA checkpoints ({sorted(formats)})")
    artifacts.prepare_out_dir(out, manifest, cfg.overwrite)  # every input read: now write
    models.save_checkpoint(out, base_spec, denoiser_state=merged,
                    extra={"merged_from": cfg.checkpoints, "method": cfg.method, "weights": cfg.weights})
    done = artifacts.finish(out, manifest, seconds=round(time.time() - t0, 3))
    return {**done, "skipped": False}
