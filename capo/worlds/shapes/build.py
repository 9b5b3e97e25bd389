"""`capo world build` and `capo world show`: train the shapes world from scratch, and look at it.

``build`` runs top to bottom, deterministically from a seed:

1. a VAE (32x32x3 <-> 8x8x4) on rendered scenes;
2. the SDXL-like base model (UNet, DDPM eps) and the SD3-like one (MM-DiT, rectified flow)
   on VAE latents of rendered scenes with their captions;
3. the reward models (preference, VQA, aesthetic) on simulated human choices;
4. quality figures: per-tag GenEval-like accuracy of each base model (the world's
   evaluator on held-out prompts), sampling speed, reward accuracy against the truth;

and writes ``out/{sdxl-like,sd3-like}/`` (pipelines), ``out/rewards/<name>/``,
``out/manifest.json`` (config, figures, versions) and ``out/checksums.json`` (sha256 of
every file; the shipped artifacts are checked against it). The default ``out`` is the
shipped location, so a rebuild replaces what ``--model shapes-sdxl`` loads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from capo import artifacts
from capo import models
from capo.config import stage_config, to_dict
from capo.eval.geneval import evaluate_image, summarize
from capo.samples import item_seed
from . import zoo
from .evaluator import detect_batch
from .grammar import prompt_sets
from .pipeline import ShapesPipeline
from .pretrain import train_base, train_vae
from .rewards import train_rewards

CHECKSUMS = "checksums.json"


@stage_config
class WorldConfig:
    out: str | None = None  # default: the shipped location capo/worlds/shapes/artifacts
    size: str = "default"  # default | tiny (tests)
    seed: int = 0
    vae_minutes: float = 3.0  # CPU budget of each part (minutes); steps cap it too
    vae_steps: int = 3000
    base_minutes: float = 8.0  # 0 (or base_steps=0): keep the untrained or init= base models
    base_steps: int = 20000
    reward_minutes: float = 5.0
    vae_batch: int = 64  # scenes per VAE step
    base_batch: int = 64  # (prompt, scene) pairs per base-model step
    base_lr: float = 1e-3  # AdamW learning rate of the base models (after 200 warmup steps)
    base_lr_schedule: str = "constant"  # constant | cosine (to 10% of base_lr over base_steps)
    train: str = "sdxl-like,sd3-like"  # base models to train; with init=, the others are kept as they are
    pool: int = 0  # 0: render fresh scenes every step (CPU); n: pre-render n scenes once and draw batches from them (GPU)
    workers: int = 1  # processes rendering the pool
    device: str = "cpu"  # where the VAE and base models train (cuda when there is one); rewards train on the CPU
    rewards: bool = True  # false: keep init's reward models (if any) instead of training them
    guidance_sdxl: float = 3.0  # default classifier-free guidance of the SDXL-like sampler (DDIM, 20 steps)
    guidance_sd3: float = 2.0  # ... and of the SD3-like one (flow Euler, 20 steps)
    shift_sd3: float = 2.0  # SD3's timestep shift s of the flow sampler, sigma' = s sigma / (1 + (s - 1) sigma)
    init: str | None = None  # warm start: a directory with sdxl-like/ and sd3-like/ pipelines (their VAE too)
    reward_base_fraction: float = 0.3  # share of reward-training images sampled from the SDXL-like base model
    half: bool = True  # store weights in float16 (halves the shipped size; models compute in float32)
    eval_images: int = 16  # images per held-out GenEval prompt for the quality figures (only 2 single-object prompts)
    overwrite: bool = False
    quiet: bool = False

    RULES: ClassVar[dict[str, str]] = {
        "size": "default | tiny", "seed": ">= 0", "vae_minutes": "> 0", "vae_steps": ">= 1", "base_minutes": ">= 0",
        "base_steps": ">= 0", "reward_minutes": "> 0", "vae_batch": ">= 1", "base_batch": ">= 1", "base_lr": "> 0",
        "base_lr_schedule": "constant | cosine", "pool": ">= 0", "workers": ">= 1", "guidance_sdxl": ">= 0",
        "guidance_sd3": ">= 0", "shift_sd3": "> 0", "reward_base_fraction": "[0, 1]", "eval_images": ">= 1"}

    def contradictions(self):
        kinds = [k.strip() for k in self.train.split(",") if k.strip()]
        if not kinds or any(k not in ("sdxl-like", "sd3-like") for k in kinds):
            yield f"train = {self.train!r}: must name sdxl-like and/or sd3-like (comma-separated)"


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): artifacts.sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (CHECKSUMS, artifacts.MANIFEST, artifacts.LOCK)}


def verify(root: Path) -> list[str]:
    """Files whose sha256 differs from ``checksums.json`` (or that are missing / extra)."""
    want = artifacts.read_json(root / CHECKSUMS)
    have = checksums(root)
    bad = [f"{k}: expected {v[:12]}, got {have[k][:12]}" for k, v in want.items() if k in have and have[k] != v]
    bad += [f"{k}: missing" for k in want if k not in have]
    bad += [f"{k}: not in {CHECKSUMS}" for k in have if k not in want]
    return bad


def quality(pipe, records: list[dict], n: int, seed: int = 0) -> dict:
    """GenEval-like per-tag accuracy of a base model by the world's evaluator."""
    prompts = [r["prompt"] for r in records for _ in range(n)]
    seeds = [item_seed(seed, r.get("id", r["prompt"]), k) for r in records for k in range(n)]
    t0 = time.time()
    images, _ = pipe.sample(prompts, seeds)
    dt = time.time() - t0
    dets = detect_batch(images)
    rows = [{"tag": r["tag"], "correct": evaluate_image(r, d)[0], "prompt_id": r.get("id", r["prompt"])}
            for r, d in zip([r for r in records for _ in range(n)], dets)]
    s = summarize(rows)
    return {"geneval_overall": round(s["overall"], 4), "geneval_tags": {k: round(v, 4) for k, v in s["tags"].items()},
            "images": len(images), "images_per_s": round(len(images) / dt, 2)}


def run(cfg: WorldConfig) -> dict:
    import torch

    t0 = time.time()
    kinds = ("sdxl-like", "sd3-like")
    train = [k.strip() for k in cfg.train.split(",") if k.strip()]
    out = Path(cfg.out) if cfg.out else zoo.ARTIFACTS
    manifest = artifacts.make_manifest("world-build", to_dict(cfg) | {"out": None, "overwrite": None, "quiet": None}, {})
    if artifacts.prepare_out_dir(out, manifest, cfg.overwrite):
        return artifacts.read_json(out / artifacts.MANIFEST)
    say = (lambda m: None) if cfg.quiet else (lambda m: print(f"world [{time.time() - t0:6.0f}s] {m}", flush=True))
    figures: dict = {}
    pipes = {}
    if cfg.init:
        pipes = {k: ShapesPipeline.from_pretrained(Path(cfg.init) / k) for k in kinds}
        vae, figures["vae"] = pipes["sdxl-like"].vae, {"init": str(cfg.init)}
        if (Path(cfg.init) / artifacts.MANIFEST).exists():  # keep the recipe of the warm start
            init_manifest = artifacts.read_json(Path(cfg.init) / artifacts.MANIFEST)
            figures["init"] = {k: init_manifest.get(k) for k in ("config", "figures", "git", "versions", "seconds")}
    else:
        say("VAE")
        vae, figures["vae"] = train_vae(size=cfg.size, steps=cfg.vae_steps, max_minutes=cfg.vae_minutes,
                                        batch_size=cfg.vae_batch, seed=cfg.seed, progress=not cfg.quiet,
                                        device=cfg.device, pool_size=cfg.pool, workers=cfg.workers)
    held_out = prompt_sets(seed=cfg.seed, distinct=True)["geneval"]
    for kind in kinds:
        if cfg.base_steps > 0 and cfg.base_minutes > 0 and (kind in train or not cfg.init):
            say(f"base model {kind}")
            pipe, figures[kind] = train_base(kind, vae, size=cfg.size, steps=cfg.base_steps,
                                             max_minutes=cfg.base_minutes, seed=cfg.seed, progress=not cfg.quiet,
                                             pipe=pipes.get(kind), batch_size=cfg.base_batch, device=cfg.device,
                                             lr=cfg.base_lr, lr_schedule=cfg.base_lr_schedule,
                                             pool_size=cfg.pool, workers=cfg.workers)
        else:
            pipe, figures[kind] = pipes[kind], {"init": str(cfg.init), "steps": 0}
        pipe.default_guidance = cfg.guidance_sdxl if kind == "sdxl-like" else cfg.guidance_sd3
        if kind == "sd3-like":
            pipe.scheduler_config = dict(pipe.scheduler_config, shift=cfg.shift_sd3)
        if cfg.half:  # what is shipped is the float16 rounding; measure that
            pipe.to(dtype=torch.float16).save_pretrained(out / kind)
            pipe.to(dtype=torch.float32)
        else:
            pipe.save_pretrained(out / kind)
        figures[kind]["quality"] = quality(pipe.to(cfg.device), held_out, cfg.eval_images, cfg.seed)
        figures[kind]["quality"]["device"] = str(cfg.device)
        pipe.to("cpu")
        say(f"{kind}: {figures[kind]['quality']}")
    if not cfg.rewards and cfg.init and (Path(cfg.init) / "rewards").is_dir():
        import shutil

        shutil.copytree(Path(cfg.init) / "rewards", out / "rewards")
        figures["rewards"] = artifacts.read_json(out / "rewards" / "figures.json")
    elif cfg.rewards:
        say("reward models")
        figures["rewards"] = train_rewards(out / "rewards", seed=cfg.seed, minutes=cfg.reward_minutes, size=cfg.size,
                                           base=out / "sdxl-like" if cfg.reward_base_fraction > 0 else None,
                                           base_fraction=cfg.reward_base_fraction, prompt_seed=cfg.seed)
    artifacts.write_json(out / CHECKSUMS, checksums(out))
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return artifacts.finish(out, manifest, figures=figures, total_mb=round(size_mb, 2),
                            seconds=round(time.time() - t0, 1))


def show(model: str, out: str, per_tag: int = 4, seed: int = 0) -> Path:
    """A PNG grid of ``model``'s samples, one row per GenEval tag, each image framed green
    (the evaluator says correct) or red (wrong), with the prompt above it."""
    from PIL import Image, ImageDraw

    held = prompt_sets(seed=seed, distinct=True)["geneval"]
    tags = list(dict.fromkeys(r["tag"] for r in held))
    chosen = [[r for r in held if r["tag"] == t][:per_tag] for t in tags]
    flat = [r for row in chosen for r in row]
    pipe = models.load_model(model)
    images, _ = pipe.sample([r["prompt"] for r in flat], [item_seed(seed, r["id"], 0) for r in flat])
    verdicts = [evaluate_image(r, d)[0] for r, d in zip(flat, detect_batch(images))]
    cell, pad, text_h, label_w = 128, 6, 26, 110
    W = label_w + per_tag * (cell + pad)
    H = len(tags) * (cell + text_h + pad)
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    i = 0
    for row, (tag, recs) in enumerate(zip(tags, chosen)):
        y = row * (cell + text_h + pad)
        draw.text((4, y + text_h + cell // 2 - 6), tag, fill="black")
        for col, r in enumerate(recs):
            x = label_w + col * (cell + pad)
            words = r["prompt"].removeprefix("a photo of ")
            draw.text((x, y), words[:22], fill="black")
            draw.text((x, y + 12), words[22:44], fill="black")
            canvas.paste(Image.fromarray(images[i]).resize((cell - 6, cell - 6), Image.NEAREST), (x + 3, y + text_h + 3))
            draw.rectangle([x, y + text_h, x + cell - 1, y + text_h + cell - 1], outline="green" if verdicts[i] else "red",
                           width=3)
            i += 1
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return Path(out)

