"""Stage `generate`: N samples per prompt from a base model, with per-item seeds.

Output directory layout (GenEval-style image folders, plus a training cache)::

    out/
      manifest.json          config, model + prompt fingerprints, versions, counts, timings
      prompts.jsonl          the prompt records, each with its prompt_id and index
      index.parquet          one row per image: prompt_id, sample_id, prompt_idx, seed, path
      images/<i:05d>/metadata.jsonl  the prompt record as upstream's (GenEval layout; ``i`` is the
                                     prompt's upstream line, ``image_folders``)
      images/<i:05d>/samples/<k:04d>.png
      cache/shard-<s:05d>.safetensors   latents (items) + text embeddings (prompts)
      cache/shard-<s:05d>.json          the shard's index rows; written last = shard done

Image k of prompt p starts from noise seeded by ``item_seed(seed, prompt_id, k)`` alone,
so it is the same whatever the batch size, process count or resume point. Work is cut
into shards of ``shard_prompts`` prompts; under ``accelerate launch`` / ``torchrun``
process r takes shards ``s % world == r``. A killed run resumes: shards whose ``.json``
exists are skipped, the others are redone from scratch (their files are rewritten
atomically, so nothing is duplicated or half-written).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from capo import artifacts
from capo import models
from capo.models import COMPILE_RULE
from capo.config import stage_config, to_dict
from capo.dist import partial_state, prepare_out_dir
from capo.eval.geneval import upstream_metadata
from capo.progress import progress
from capo.prompts import load_prompts, records_fingerprint
from capo.samples import image_folders, item_seed, shard_done, write_png  # noqa: F401 (re-exported)


@stage_config
class GenerateConfig:
    model: str  # registered name (capo ls models), pipeline dir or capo checkpoint
    prompts: str  # .txt / .jsonl file or a named set (shapes:train, geneval, ...)
    out: str  # output directory
    n: int = 16  # samples per prompt (the paper's N)
    seed: int = 0  # base seed of the per-item seeds
    steps: int | None = None  # sampler steps (default: the model's)
    guidance: float | None = None  # classifier-free guidance scale (default: the model's)
    batch_size: int = 64  # images per sampler call
    shard_prompts: int = 16  # prompts per resumable shard
    limit: int | None = None  # first K prompts only (or a stratified subset of K with stratify)
    stratify: bool = False  # limit draws K prompts stratified by tag / category (capo.prompts)
    subset_seed: int = 0  # seed of the stratified subset
    cache: bool = True  # keep latents + text embeddings for training
    compile: str = "off"  # torch.compile of the denoiser (eager: dynamo only); inductor changes images by float rounding
    overwrite: bool = False
    quiet: bool = False

    RULES: ClassVar[dict[str, str]] = {
        "n": ">= 1", "seed": ">= 0", "steps": ">= 1", "guidance": ">= 0", "batch_size": ">= 1",
        "shard_prompts": ">= 1", "limit": ">= 1", "subset_seed": ">= 0", "compile": COMPILE_RULE}
    LATER: ClassVar[dict] = {"compile": "off"}  # keys added later (capo.config.to_dict)


def run(cfg: GenerateConfig) -> dict:
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    t0 = time.time()
    state = partial_state()
    records = load_prompts(cfg.prompts, limit=cfg.limit, stratify=cfg.stratify, subset_seed=cfg.subset_seed)
    config = to_dict(cfg) | {"out": None, "overwrite": None, "quiet": None}
    manifest = artifacts.make_manifest("generate", config, {
        "model": {"path": cfg.model, "sha256": models.model_fingerprint(cfg.model)},
        "prompts": {"path": cfg.prompts, "sha256": records_fingerprint(records)},
    })
    out = Path(cfg.out)
    if artifacts.existing_run(out, manifest, cfg.overwrite) == "complete":
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}
    model = models.load_model(cfg.model)  # inputs load before anything is written
    if prepare_out_dir(state, out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}
    if state.is_main_process and not (out / "prompts.jsonl").is_file():
        artifacts.write_text(out / "prompts.jsonl", "".join(
            json.dumps({**r, "prompt_idx": i}, ensure_ascii=False) + "\n" for i, r in enumerate(records)))

    folders = image_folders(records)
    model.to(state.device)
    model.compile_denoiser(cfg.compile)
    n_shards = math.ceil(len(records) / cfg.shard_prompts)
    mine = [s for s in range(n_shards) if s % state.num_processes == state.process_index and not shard_done(out, s)]
    todo_images = sum(min(cfg.shard_prompts, len(records) - s * cfg.shard_prompts) for s in mine) * cfg.n
    bar = progress(total=todo_images, desc=f"generate[{state.process_index}]", unit="img",
                   disable=cfg.quiet or not state.is_local_main_process)
    for s in mine:
        shard = list(range(s * cfg.shard_prompts, min((s + 1) * cfg.shard_prompts, len(records))))
        items = [(p, k) for p in shard for k in range(cfg.n)]
        prompts = [records[p]["prompt"] for p, _ in items]
        seeds = [item_seed(cfg.seed, records[p]["prompt_id"], k) for p, k in items]
        images, latents = [], []
        for i in range(0, len(items), cfg.batch_size):
            im, z = model.sample(prompts[i:i + cfg.batch_size], seeds[i:i + cfg.batch_size], steps=cfg.steps,
                                 guidance=cfg.guidance, batch_size=cfg.batch_size)
            images.append(im), latents.append(z.cpu())
            bar.update(len(im))
        images = np.concatenate(images)
        rows = []
        for (p, k), img, sd in zip(items, images, seeds):
            folder = out / "images" / folders[p]
            rel = f"images/{folders[p]}/samples/{k:04d}.png"
            write_png(out / rel, img)
            if k == 0:
                artifacts.write_text(folder / "metadata.jsonl", json.dumps(upstream_metadata(records[p])) + "\n")
            rows.append({"prompt_id": records[p]["prompt_id"], "sample_id": k, "prompt_idx": p, "seed": sd,
                         "path": rel, "prompt": records[p]["prompt"]})
        if cfg.cache:
            with torch.no_grad():
                hidden, pooled = model.encode_prompts([records[p]["prompt"] for p in shard])
            tensors = {"latents": torch.cat(latents).float().contiguous(),
                       "hidden": hidden.float().cpu().contiguous(), "pooled": pooled.float().cpu().contiguous()}
            with artifacts.atomic_path(out / "cache" / f"shard-{s:05d}.safetensors") as tmp:
                save_file(tensors, str(tmp))
        cached = out / "cache" / f"shard-{s:05d}.safetensors"
        artifacts.write_json(out / "cache" / f"shard-{s:05d}.json",
                             {"shard": s, "prompts": shard, "rows": rows,
                              "file": artifacts.file_record(cached) if cfg.cache else None})
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        rows = []
        for s in range(n_shards):
            rows += artifacts.read_json(out / "cache" / f"shard-{s:05d}.json")["rows"]
        index = pd.DataFrame(rows)
        artifacts.write_table(index, out / "index.parquet")
        final = artifacts.finish(out, manifest, files=["index.parquet"], counts={"prompts": len(records), "images": len(index),
                                                        "shards": n_shards},
                                 processes=state.num_processes, seconds=round(time.time() - t0, 3))
    state.wait_for_everyone()
    final = artifacts.read_json(out / artifacts.MANIFEST)
    return {**final, "skipped": False}
