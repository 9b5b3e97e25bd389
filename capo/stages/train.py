"""Stage `train`: preference fine-tuning of a diffusion model's denoiser (DPO / IPO / CaPO).

One step, for B pairs ``(x+, x-)`` of cached latents with the prompt's cached text
embeddings (paper Eq. 5 and 8; METHOD.md):

1. draw ``t`` per pair (DDPM: integer timestep uniform in [0, T); flow: uniform in
   (0, 1)) and noise ``eps+``, ``eps-`` (shared by default, or independent);
2. ``x+_t = alpha_t x+ + sigma_t eps+`` and likewise ``x-_t`` (same ``t``);
3. squared eps errors of the policy and the frozen reference (under LoRA: the same
   network with its adapter disabled; with ``reference``: that model's denoiser, e.g. the
   base model when an online round continues from the previous round's checkpoint),
   model outputs converted to eps first;
4. ``R_theta = (-w_t lambda'_t)(err_ref - err_theta)`` with constant or sigmoid weighting;
5. the objective's loss on ``beta (R+ - R-)`` (CaPO's target: the pair's calibrated gap).

Pairs: the ``capo pairs`` table; with FRS and ``frs_fresh`` (the paper) a fresh pair is
drawn per prompt at every step from its ``X+`` / ``X-`` (``candidates.parquet``).

Reproducible and resumable: which prompts a micro-batch holds, its pair draws, ``t`` and
noise depend only on ``(seed, global micro-batch index, position)``, so a run resumed from
a checkpoint, or split over K processes with ``grad_accum / K``, sees the same data.
Checkpoints (``checkpoints/step-XXXXXX``) hold model, optimizer, scheduler, EMA and RNG
state; the final weights are a capo checkpoint in ``final/`` that ``load_model`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from capo import artifacts, tracking
from capo import models
from capo.models import COMPILE_RULE
from capo import plan
from capo.config import stage_config, to_dict
from capo.dist import accelerator as make_accelerator
from capo.dist import prepare_out_dir
from capo.method.implicit import implicit_reward, loss_factor, squared_error
from capo.method.schedules import add_noise, alphas_cumprod_of, ddpm_terms, eps_from_prediction, flow_terms
from capo.method.selection import frs
from capo.progress import progress
from capo.registry import OBJECTIVES
from capo.samples import LatentCache  # noqa: F401 (re-exported)
from capo.stages import grpo
from capo.stages.training import (TrainingDiverged, frozen_reference,
                                  latest_checkpoint, logged_step, make_optimizer, make_policy, reference_denoiser,
                                  rotate_checkpoints, save_final, use_checkpointing)


GRPO_KEYS = ("prompts", "rewards", "reward_weights", "reward_paths", "group_size", "advantage", "advantage_norm",
             "advantage_eps", "advantage_clip", "clip_range", "sample_steps", "noise_level", "guidance", "grpo_steps",
             "grpo_sde", "grpo_updates", "monitor_rewards")  # TrainConfig keys of objective=grpo alone (capo.stages.grpo)


@stage_config
class TrainConfig:
    model: str  # base model: registered name, pipeline dir or capo checkpoint
    out: str  # output directory
    pairs: str | None = None  # a `capo pairs` output directory (objective=grpo: its prompts and rewards, or prompts=)
    samples: str | None = None  # default: the samples directory recorded by the pairs' reward tables
    reference: str | None = None  # frozen reference model (default: the model trained; online CaPO: the base)
    objective: str = "capo"  # preference objective (capo ls objectives)
    beta: float = 500.0  # KL strength; errors are means over C x H x W (see capo.method.implicit)
    weighting: str = "constant"  # w_t: 1, or sigmoid(-lambda_t + b)
    bias: float = 1.5  # b of the sigmoid weighting
    noise: str = "shared"  # eps_w and eps_l of a pair: one draw, or two
    frs_fresh: bool = True  # FRS pairs: draw a fresh pair per prompt at each step
    # objective=grpo (capo.stages.grpo): online rollouts; beta is the KL coefficient; batch_size = prompts per rollout
    prompts: str | None = None  # grpo without pairs: a prompt set (file or named set) to roll out
    rewards: list[str] | None = None  # grpo with prompts: the reward models (with pairs: the pairs' rewards)
    reward_weights: list[float] | None = None  # grpo: weights of the rewards, normalised (default uniform)
    reward_paths: dict[str, str] = dataclasses.field(default_factory=dict)  # grpo: reward -> local weights dir
    monitor_rewards: list[str] = dataclasses.field(default_factory=list)  # grpo: scored on every rollout and logged, never trained on (e.g. a gold)
    group_size: int = 8  # grpo: images per prompt (G)
    advantage: str = "sum"  # grpo: per-image score: weighted raw rewards, calibrated win-rates, Pareto front
    advantage_norm: str = "std"  # grpo: (s - mean) / (std + advantage_eps) within the group, or s - mean
    advantage_eps: float = 1e-4  # grpo: added to the group std
    advantage_clip: float = 5.0  # grpo: advantages clipped to [-c, c]
    clip_range: float = 1e-4  # grpo: PPO clip of the importance ratio, [1 - e, 1 + e]
    sample_steps: int | None = None  # grpo: steps of the sampling chain (default: the model's)
    noise_level: float | None = None  # grpo: DDIM eta (default 1.0) or the flow SDE's a (default 0.7)
    guidance: float | None = None  # grpo: CFG scale of rollouts and log-probabilities (default: the model's)
    grpo_steps: int = 0  # grpo: denoising steps trained per update (0: every stochastic step)
    grpo_sde: str = "all"  # grpo: all steps stochastic (a random grpo_steps trained) | one random window of them
    grpo_updates: int = 1  # grpo: optimizer steps per rollout (its images split among them; > 1: the clip acts)
    lora_rank: int = 0  # 0: full fine-tuning; >0: LoRA of this rank on attention projections
    lora_alpha: float | None = None  # LoRA alpha (default: rank)
    lr: float = 1e-5  # AdamW learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then constant
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # pairs per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step per process
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # autocast dtype of the denoiser
    gradient_checkpointing: str = "auto"  # recompute activations in backward: auto = on for real backbones (SDXL, SD3)
    optimizer: str = "adamw"  # adamw (fused on CUDA) | adamw-8bit (bitsandbytes: pip install 'capo[bnb]')
    compile: str = "off"  # torch.compile of the denoiser: off | inductor | eager (dynamo only)
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions
    data_workers: int = 0  # processes assembling micro-batches (0: in the training process)
    ema: float = 0.0  # EMA decay of the trained weights (0: off); the final checkpoint uses EMA
    checkpoint_every: int = 50  # optimizer steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept (0: the newest until the run completes, then none)
    log_every: int = 10  # optimizer steps between metric lines
    seed: int = 0
    stop_after: int | None = None  # stop (as if killed) after this many steps; for tests and budgets
    dry_run: bool = False  # print the memory / time plan (capo.plan) and stop: nothing loaded or written
    overwrite: bool = False
    quiet: bool = False
    report_to: str = "none"  # experiment tracker (accelerate's) beside metrics.jsonl: see capo.tracking
    run_name: str | None = None  # the tracker's run name (default: the out directory's name)
    tracker_project: str | None = None  # the tracker's project (default: WANDB_PROJECT and the like, else capo)

    RULES: ClassVar[dict[str, str]] = {
        "objective": "@objectives", "beta": ">= 0", "weighting": "constant | sigmoid",
        "noise": "shared | independent", "lora_rank": ">= 0", "lora_alpha": "> 0", "lr": "> 0",
        "weight_decay": ">= 0", "warmup_steps": ">= 0", "steps": ">= 1", "batch_size": ">= 1", "grad_accum": ">= 1",
        "max_grad_norm": "> 0", "mixed_precision": "no | fp16 | bf16", "gradient_checkpointing": "auto | on | off",
        "optimizer": "adamw | adamw-8bit", "compile": COMPILE_RULE, "data_workers": ">= 0",
        "ema": "[0, 1)", "checkpoint_every": ">= 1",
        "keep_checkpoints": ">= 0", "log_every": ">= 1", "seed": ">= 0", "stop_after": ">= 0",
        "report_to": tracking.RULE, "rewards": "@rewards", "monitor_rewards": "@rewards", "reward_weights": ">= 0", "group_size": ">= 2",
        "advantage": "sum | calibrated | pareto", "advantage_norm": "std | none", "advantage_eps": "> 0",
        "advantage_clip": "> 0", "clip_range": "> 0", "sample_steps": ">= 1", "noise_level": "> 0", "guidance": ">= 0",
        "grpo_steps": ">= 0", "grpo_sde": "all | window", "grpo_updates": ">= 1"}

    LATER: ClassVar[dict] = {  # keys added later (capo.config.to_dict); none changes the numbers on a CPU
        "reference": None, "gradient_checkpointing": "auto", "optimizer": "adamw", "compile": "off", "tf32": True,
        "data_workers": 0, "dry_run": False,
        **{k: (lambda c: c.objective != "grpo") for k in GRPO_KEYS}}  # GRPO's keys: only in GRPO runs' manifests

    def contradictions(self):
        if self.lora_alpha is not None and self.lora_rank == 0:
            yield "lora_alpha: set, but lora_rank = 0 (full fine-tuning has no LoRA alpha)"
        if self.warmup_steps > self.steps:
            yield f"warmup_steps: {self.warmup_steps} is more than steps = {self.steps}"
        if err := tracking.missing(self.report_to):  # before anything is loaded or written
            yield err
        if self.objective == "grpo":
            yield from grpo.contradictions(self)
        else:
            if self.pairs is None:
                yield f"pairs: objective={self.objective} trains on a `capo pairs` output: give pairs=DIR"
            if self.beta == 0:
                yield f"beta: must be > 0 for objective={self.objective}"


# ----------------------------------------------------------------------------- data
class MicroBatches:
    """The micro-batches ``m`` of one process, in order, assembled from the pair source and the
    latent cache: ``(m, x_w, x_l, gap, hidden, pooled)``. Iterated directly, or by a
    ``DataLoader`` whose ``workers`` each build every ``workers``-th micro-batch (the loader
    returns them in order, so the bytes are the same whatever the worker count)."""

    def __init__(self, source: "PairSource", cache: LatentCache, seed: int, B: int, indices: list[int]):
        self.source, self.cache, self.seed, self.B, self.indices = source, cache, seed, B, indices

    def build(self, m: int):
        import torch

        batch = self.source.micro_batch(self.seed, m, self.B)
        pids = [b[0] for b in batch]
        x_w = self.cache.latents([(p, b[1]) for p, b in zip(pids, batch)])
        x_l = self.cache.latents([(p, b[2]) for p, b in zip(pids, batch)])
        gap = torch.tensor([b[3] for b in batch])
        hidden, pooled = self.cache.text(pids)
        return m, x_w, x_l, gap, hidden, pooled

    def iterate(self, workers: int, pin: bool):
        if workers == 0:
            return (self.build(m) for m in self.indices)
        import torch
        from torch.utils.data import DataLoader, IterableDataset

        outer = self

        class _Part(IterableDataset):
            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                k, w = (info.id, info.num_workers) if info else (0, 1)
                return (outer.build(m) for j, m in enumerate(outer.indices) if j % w == k)

        return iter(DataLoader(_Part(), batch_size=None, num_workers=workers, pin_memory=pin, prefetch_factor=2,
                               persistent_workers=False))


class PairSource:
    """The training pairs: fixed pairs from ``pairs.parquet`` or fresh FRS draws."""

    def __init__(self, pairs_dir: Path, fresh: bool):
        self.manifest = artifacts.read_json(pairs_dir / artifacts.MANIFEST)
        pairs = artifacts.read_table(artifacts.verify(pairs_dir, "pairs.parquet", "the training pairs"))
        first = pairs[pairs["draw"] == pairs.groupby("prompt_id")["draw"].transform("min")]
        self.prompts = first["prompt_id"].tolist()  # prompts with at least one pair
        self.fixed = {r.prompt_id: (int(r.pos_sample_id), int(r.neg_sample_id), float(r.target_gap))
                      for r in first.itertuples()}
        self.fresh = fresh and self.manifest["config"]["selector"] == "frs"
        if self.fresh:
            cand = artifacts.read_table(artifacts.verify(pairs_dir, "candidates.parquet", "the FRS candidates"))
            names = self.manifest["rewards"]
            sizes = cand.groupby("prompt_id").size()
            if sizes.nunique() != 1:
                raise ValueError("fresh FRS draws need the same number of samples for every prompt; "
                                 "set frs_fresh=false to train on the drawn pairs")
            N = int(sizes.iloc[0])
            cand = cand.set_index("prompt_id").loc[self.prompts].reset_index()
            self.N = N
            self.points = cand[[f"{r}_ca" for r in names]].to_numpy().reshape(len(self.prompts), N, len(names))
            self.sample_ids = cand["sample_id"].to_numpy().reshape(len(self.prompts), N)
            self.row = {p: i for i, p in enumerate(self.prompts)}
            self.weights = self.manifest["config"].get("weights")
            self.max_tries = self.manifest["config"].get("max_tries", 16)
        if not self.prompts:
            raise ValueError(f"{pairs_dir}: no pairs to train on")

    def micro_batch(self, seed: int, m: int, B: int) -> list[tuple[str, int, int, float]]:
        """Micro-batch ``m`` (global index): B (prompt_id, pos, neg, target_gap), from
        epoch permutations of the prompts that depend only on ``(seed, epoch)``."""
        n = len(self.prompts)
        start = m * B
        ids = []
        while len(ids) < B:
            epoch, off = divmod(start + len(ids), n)
            perm = np.random.default_rng([seed, 7, epoch]).permutation(n)
            ids += [self.prompts[i] for i in perm[off: off + B - len(ids)]]
        if not self.fresh:
            return [(p, *self.fixed[p]) for p in ids]
        rows = [self.row[p] for p in ids]
        sel = frs(self.points[rows], np.random.default_rng([seed, 11, m]), max_tries=self.max_tries,
                  weights=self.weights)
        out = []
        for j, p in enumerate(ids):
            if sel.valid[j, 0]:
                out.append((p, int(self.sample_ids[rows[j], sel.pos[j, 0]]), int(self.sample_ids[rows[j], sel.neg[j, 0]]),
                            float(sel.target_gap[j, 0])))
            else:  # every draw rejected: use the pair drawn by `capo pairs`
                out.append((p, *self.fixed[p]))
        return out


# ----------------------------------------------------------------------------- noise and times
def draw_times_and_noise(model, latents_shape, seed: int, m: int, shared: bool):
    """Per-pair ``t`` and noises for micro-batch ``m``; pair j's draws come from a generator
    seeded by ``(seed, m, j)`` alone. Returns (terms, t_model, eps_w, eps_l)."""
    import torch

    B = latents_shape[0]
    gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 13, m, j]).generate_state(1)[0]))
            for j in range(B)]
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    eps_w = torch.stack([torch.randn(latents_shape[1:], generator=g) for g in gens])
    eps_l = eps_w.clone() if shared else torch.stack([torch.randn(latents_shape[1:], generator=g) for g in gens])
    if model.prediction_type == "flow":
        t = u.clamp(1e-3, 1 - 1e-3)
        return flow_terms(t), (t * 1000).float(), eps_w, eps_l
    abar = alphas_cumprod_of(model.train_scheduler())
    ts = (u * len(abar)).long().clamp(max=len(abar) - 1)
    return ddpm_terms(abar, ts), ts, eps_w, eps_l


# ----------------------------------------------------------------------------- helpers


def _check_inputs(cfg: TrainConfig, pairs_dir: Path, samples: Path):
    pm = artifacts.read_json(pairs_dir / artifacts.MANIFEST) if (pairs_dir / artifacts.MANIFEST).is_file() else None
    if not pm or pm.get("stage") != "pairs" or not pm.get("complete"):
        raise artifacts.ArtifactError(f"{pairs_dir}: not a complete `capo pairs` output")
    sm = artifacts.read_json(samples / artifacts.MANIFEST)
    if pm.get("samples") and pm["samples"]["sha256"] != sm["run_key"]:
        raise artifacts.ArtifactError(
            f"{pairs_dir} was built from samples {pm['samples']['path']} ({pm['samples']['sha256'][:12]}), "
            f"not from {samples} ({sm['run_key'][:12]})")
    want = models.model_fingerprint(cfg.model)
    if sm["inputs"]["model"]["sha256"] != want:
        raise artifacts.ArtifactError(
            f"{samples} holds samples of model {sm['inputs']['model']['path']!r}, not of {cfg.model!r}: "
            "preference pairs must come from the model being trained (the paper uses only the base model's own samples)")
    return pm, sm


# The keys a sweep / reproduce sets itself on every run; the others may come in ``train_options``.
SET_BY_CALLER = ("model", "pairs", "out", "objective", "beta", "weighting", "bias", "noise", "lora_rank", "lr",
                 "steps", "batch_size", "seed", "checkpoint_every", "keep_checkpoints", "log_every", "quiet",
                 "samples", "reference", "stop_after", "dry_run", "overwrite", "report_to", "run_name")


def option_errors(options: dict, steps: int = 100, where: str = "train_options") -> list[str]:
    """What is wrong with extra ``capo train`` keys passed through a sweep or reproduce."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    errors = [f"{where}: {k!r} is not a capo train key" for k in options if k not in known]
    errors += [f"{where}: {k!r} is set by the caller (use its own key)" for k in options if k in SET_BY_CALLER]
    if not errors:
        try:
            TrainConfig(model="m", pairs="p", out="o", steps=steps, **options)
        except Exception as e:  # noqa: BLE001 - the config's own validation message
            errors.append(f"{where}: {e}")
    return errors


def dry_run(cfg: TrainConfig) -> dict:
    """The plan of this run (``capo.plan``), printed; under FSDP (accelerate's
    ``ACCELERATE_USE_FSDP``) the sharded state is divided over ``WORLD_SIZE``."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if cfg.objective == "grpo":  # rollouts, updates and reference passes (capo.plan.grpo_plan)
        p = plan.grpo_plan(cfg.model, lora_rank=cfg.lora_rank, mixed_precision=cfg.mixed_precision,
                           optimizer=cfg.optimizer, checkpointing=cfg.gradient_checkpointing, batch_size=cfg.batch_size,
                           group_size=cfg.group_size, sample_steps=cfg.sample_steps, grpo_steps=cfg.grpo_steps,
                           grpo_updates=cfg.grpo_updates, grad_accum=cfg.grad_accum, beta=cfg.beta,
                           reference=cfg.reference is not None, guidance=cfg.guidance, noise_level=cfg.noise_level,
                           rewards=_grpo_reward_count(cfg), gpus=world, shards=world if fsdp else 1, steps=cfg.steps)
        if not cfg.quiet:
            print(plan.render_grpo(p))
        return {"dry_run": True, "plan": p, "skipped": False}
    p = plan.plan(cfg.model, lora_rank=cfg.lora_rank, mixed_precision=cfg.mixed_precision, optimizer=cfg.optimizer,
                  checkpointing=cfg.gradient_checkpointing, pairs_per_gpu=cfg.batch_size, accum=cfg.grad_accum,
                  gpus=world, shards=world if fsdp else 1, steps=cfg.steps)
    if not cfg.quiet:
        print(plan.render(p))
    return {"dry_run": True, "plan": p, "skipped": False}


def _grpo_reward_count(cfg: TrainConfig) -> int | None:
    """How many rewards a GRPO run scores with: ``rewards=``, else its pairs' manifest (None if
    it cannot be read here)."""
    if cfg.rewards:
        return len(cfg.rewards)
    try:
        return len(artifacts.read_json(Path(cfg.pairs) / artifacts.MANIFEST)["rewards"])
    except Exception:  # noqa: BLE001 - a plan does not need the pairs to exist yet
        return None


# ----------------------------------------------------------------------------- run
def run(cfg: TrainConfig) -> dict:
    if cfg.objective == "grpo":  # the online policy-gradient baseline (issue #22) has its own loop
        if cfg.dry_run:
            return dry_run(cfg)
        return grpo.run(cfg)
    runs = tracking.Runs()
    try:
        return _run(cfg, runs)
    finally:  # the tracker's run ends however the training does (complete, stopped, diverged)
        runs.finish()


def _run(cfg: TrainConfig, runs: tracking.Runs) -> dict:
    """One run in named phases: ``setup``, then per optimizer step ``train_step`` and
    ``log_and_checkpoint``, then ``finish``; ``Run`` holds what they share."""
    t_start = time.time()
    if cfg.dry_run:
        return dry_run(cfg)
    s = setup(cfg)
    if isinstance(s, dict):  # complete already
        return s
    acc = s.accelerator
    runs.start(acc, cfg.report_to, cfg.tracker_project, cfg.run_name or tracking.default_run_name(s.out), s.out,
               config={**dataclasses.asdict(cfg), "run_key": s.manifest["run_key"], "processes": acc.num_processes,
                       "effective_batch_pairs": s.manifest["config"]["effective_batch_pairs"]})
    bar = progress(total=cfg.steps, initial=s.step, desc="train", unit="step",
                   disable=cfg.quiet or not acc.is_local_main_process)
    world, rank = acc.num_processes, acc.process_index
    todo = [st * cfg.grad_accum * world + a * world + rank  # global micro-batch indices of this process
            for st in range(s.step, cfg.steps) for a in range(cfg.grad_accum)]
    batches = MicroBatches(s.source, s.cache, cfg.seed, cfg.batch_size, todo).iterate(
        cfg.data_workers, pin=acc.device.type == "cuda")
    s.t_window = time.time()
    while s.step < cfg.steps:
        train_step(s, batches)
        bar.update(1)
        log_and_checkpoint(s, bar)
        if cfg.stop_after is not None and s.step >= cfg.stop_after and s.step < cfg.steps:
            bar.close()
            return {"stopped_at": s.step, "skipped": False, "complete": False}
    bar.close()
    return finish(s, t_start)


@dataclasses.dataclass
class Run:
    """What the phases of a preference run share."""
    cfg: TrainConfig
    out: Path
    manifest: dict
    accelerator: object
    model: object
    objective: object
    source: object = None
    cache: object = None
    policy: object = None
    unwrapped: object = None
    reference: object = None
    opt: object = None
    sched: object = None
    params: list = dataclasses.field(default_factory=list)
    ema: list | None = None
    step: int = 0
    window: list = dataclasses.field(default_factory=list)
    grad_norms: list = dataclasses.field(default_factory=list)
    t_window: float = 0.0

    @property
    def metrics_f(self) -> Path:
        return self.out / "metrics.jsonl"

    def errors(self, net, x_t, t_model, hidden, pooled, terms, eps):
        """||eps - eps_hat(x_t, t)||^2 per image (Eq. 5's error) of denoiser ``net``."""
        self.model.denoiser = net  # model.predict runs model.denoiser
        pred = self.model.predict(x_t, t_model, hidden, pooled)
        eps_hat = eps_from_prediction(pred.float(), x_t, terms.alpha, terms.sigma, self.model.prediction_type)
        return squared_error(eps_hat, eps)

    def reference_errors(self, x_t, t_model, hidden, pooled, terms, eps):
        import torch

        with torch.no_grad(), self.accelerator.autocast():
            if self.reference is None:  # LoRA: the policy with its adapter disabled
                with self.unwrapped.disable_adapter():
                    return self.errors(self.unwrapped, x_t, t_model, hidden, pooled, terms, eps)
            return self.errors(self.reference, x_t, t_model, hidden, pooled, terms, eps)


def setup(cfg: TrainConfig) -> Run | dict:
    """Inputs checked and the manifest made (a complete run returns its manifest), the model,
    policy (full or LoRA), frozen reference, optimizer, EMA, the pairs and latent cache, and the
    state of a resumed run."""
    import torch
    from accelerate.utils import set_seed

    objective = OBJECTIVES.get(cfg.objective)
    pairs_dir = Path(cfg.pairs)
    pm_path = pairs_dir / artifacts.MANIFEST
    if not pm_path.is_file():
        raise artifacts.ArtifactError(f"{pairs_dir}: not a `capo pairs` output (no {artifacts.MANIFEST})")
    pm = artifacts.read_json(pm_path)
    samples = Path(cfg.samples or (pm.get("samples") or {}).get("path") or "")
    if not cfg.samples and not pm.get("samples"):
        raise ValueError(f"{pairs_dir}: its reward tables do not name a samples directory; pass samples=DIR")
    pm, sm = _check_inputs(cfg, pairs_dir, samples)

    out = Path(cfg.out)
    accelerator = make_accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                                   **tracking.accelerator_kwargs(cfg.report_to, out))
    config = tracking.unkeyed(to_dict(cfg)) | {"out": None, "overwrite": None, "quiet": None, "stop_after": None}
    manifest = artifacts.make_manifest("train", config, {
        "model": {"path": cfg.model, "sha256": sm["inputs"]["model"]["sha256"]},
        "pairs": {"path": str(pairs_dir), "sha256": pm["run_key"]},
        "samples": {"path": str(samples), "sha256": sm["run_key"]},
    }, processes=accelerator.num_processes)
    if cfg.reference:
        manifest["inputs"]["reference"] = {"path": cfg.reference, "sha256": models.model_fingerprint(cfg.reference)}
    manifest["config"]["effective_batch_pairs"] = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    if artifacts.existing_run(out, manifest, cfg.overwrite) == "complete":
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}
    model = models.load_model(cfg.model)  # inputs load before anything is written
    ref_net = reference_denoiser(cfg.reference, model.denoiser) if cfg.reference else None
    if prepare_out_dir(accelerator, out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}

    set_seed(cfg.seed)
    # Only the denoiser goes to the device: training reads cached latents and text embeddings,
    # so the frozen text encoders and VAE stay where they were loaded.
    for name, mod in model.modules().items():
        mod.requires_grad_(False)
    model.denoiser.requires_grad_(True)
    model.denoiser.to(accelerator.device)
    cuda = accelerator.device.type == "cuda"
    if cuda and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if use_checkpointing(cfg.gradient_checkpointing, getattr(model, "kind", "")):
        if not getattr(model.denoiser, "_supports_gradient_checkpointing", False):
            raise ValueError(f"gradient_checkpointing=on: {type(model.denoiser).__name__} does not support it")
        model.denoiser.enable_gradient_checkpointing()
    base = model.denoiser
    policy = make_policy(base, cfg)
    s = Run(cfg=cfg, out=out, manifest=manifest, accelerator=accelerator, model=model, objective=objective,
            source=PairSource(pairs_dir, cfg.frs_fresh), cache=LatentCache(samples),
            reference=frozen_reference(base, ref_net, cfg.lora_rank > 0, cfg.mixed_precision, accelerator.device))
    if cfg.compile != "off":
        policy = torch.compile(policy, backend=cfg.compile)
    policy.train()
    s.params = [p for p in policy.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, s.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, cfg.warmup_steps)))
    s.policy, s.opt, s.sched = accelerator.prepare(policy, opt, sched)
    s.ema = [p.detach().clone() for p in s.params] if cfg.ema > 0 else None

    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        s.step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        if s.ema is not None:
            for e, saved in zip(s.ema, torch.load(ckpt / "ema.pt")):
                e.copy_(saved)
        if not cfg.quiet and accelerator.is_main_process:
            print(f"train: resuming from {ckpt} (step {s.step})")
    s.unwrapped = accelerator.unwrap_model(s.policy)
    if accelerator.is_main_process and s.metrics_f.is_file():  # a resumed run: drop what was logged after the checkpoint
        artifacts.write_text(s.metrics_f, "".join(x + "\n" for x in s.metrics_f.read_text().splitlines()
                                                  if logged_step(x) is not None and logged_step(x) <= s.step))
    return s


def train_step(s: Run, batches) -> None:
    """One optimizer step: ``grad_accum`` micro-batches of pairs, each noised at one drawn time
    (Eq. 5's errors of the policy and the frozen reference, the implicit rewards r_w, r_l), the
    objective (Eq. 4 / Eq. 8), the clipped update, and the EMA."""
    import torch

    cfg, acc, model, B = s.cfg, s.accelerator, s.model, s.cfg.batch_size
    for _ in range(cfg.grad_accum):
        m, x_w, x_l, gap, hidden, pooled = next(batches)  # m: the global micro-batch index
        x_w, x_l, gap = (v.to(acc.device, non_blocking=True) for v in (x_w, x_l, gap))
        hidden, pooled = (v.to(acc.device, non_blocking=True) for v in (hidden, pooled))
        terms, t_model, eps_w, eps_l = draw_times_and_noise(model, x_w.shape, cfg.seed, m, cfg.noise == "shared")
        terms = type(terms)(*(v.to(acc.device) for v in terms))
        t_model, eps_w, eps_l = t_model.to(acc.device), eps_w.to(acc.device), eps_l.to(acc.device)
        x_t = torch.cat([add_noise(x_w, eps_w, terms.alpha, terms.sigma), add_noise(x_l, eps_l, terms.alpha, terms.sigma)])
        eps = torch.cat([eps_w, eps_l])
        terms2 = type(terms)(*(torch.cat([v, v]) for v in terms))
        t2, h2, p2 = torch.cat([t_model, t_model]), torch.cat([hidden, hidden]), torch.cat([pooled, pooled])
        ref_err = s.reference_errors(x_t, t2, h2, p2, terms2, eps)
        with acc.accumulate(s.policy):
            with acc.autocast():
                err = s.errors(s.policy, x_t, t2, h2, p2, terms2, eps)
            factor = loss_factor(terms.log_snr, terms.dlog_snr_dt, cfg.weighting, cfg.bias).float()
            r = implicit_reward(err, ref_err, torch.cat([factor, factor]))
            loss, met = s.objective(r[:B], r[B:], cfg.beta, gap)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at step {s.step} (micro-batch {m}); stopped. "
                    f"Last good checkpoint: {latest_checkpoint(s.out) or 'none'}. Lower lr or beta, or check the "
                    "pairs' target gaps.")
            acc.backward(loss)
            if acc.sync_gradients:
                gn = acc.clip_grad_norm_(s.policy.parameters(), cfg.max_grad_norm or float("inf"))
                if not torch.isfinite(gn):
                    raise TrainingDiverged(
                        f"gradient norm is {gn.item()} at step {s.step}; stopped before the update. "
                        f"Last good checkpoint: {latest_checkpoint(s.out) or 'none'}. Lower lr or beta.")
                met["grad_norm"] = gn.detach()
            s.opt.step()
            s.sched.step()
            s.opt.zero_grad(set_to_none=True)
        s.window.append({"loss": loss.item(), **{k: v.item() for k, v in met.items() if k != "grad_norm"},
                         "target_gap": gap.float().mean().item()})  # the pairs' calibrated gap Delta R_ca
        if "grad_norm" in met:
            s.grad_norms.append(met["grad_norm"].item())
    s.step += 1
    if s.ema is not None:
        with torch.no_grad():
            for e, p in zip(s.ema, s.params):
                e.mul_(cfg.ema).add_(p.detach(), alpha=1 - cfg.ema)


def log_and_checkpoint(s: Run, bar) -> None:
    """The metrics line (and the tracker's record) every ``log_every`` steps, means over the
    steps since the last one and over processes; a checkpoint every ``checkpoint_every``."""
    import torch

    cfg, acc = s.cfg, s.accelerator
    if s.step % cfg.log_every == 0 or s.step == cfg.steps:
        rec = {k: float(np.mean([w[k] for w in s.window])) for k in s.window[0]}
        rec = acc.reduce({k: torch.tensor(v, device=acc.device) for k, v in rec.items()}, "mean")
        rec = {"step": s.step, **{k: round(float(v), 6) for k, v in rec.items()}, "lr": s.sched.get_last_lr()[0],
               "grad_norm": round(float(np.mean(s.grad_norms)), 6),
               "pairs_per_s": round(len(s.window) * cfg.batch_size * acc.num_processes / (time.time() - s.t_window), 2)}
        if acc.is_main_process:
            with open(s.metrics_f, "a") as f:
                f.write(json.dumps(rec) + "\n")
            tracking.log(acc, rec)  # the same record to the tracker (none: nothing)
            bar.set_postfix(loss=rec["loss"], acc=rec["implicit_acc"])
        s.window, s.grad_norms, s.t_window = [], [], time.time()
    if s.step % cfg.checkpoint_every == 0 or s.step == cfg.steps:
        d = s.out / "checkpoints" / f"step-{s.step:06d}"
        acc.wait_for_everyone()
        acc.save_state(str(d))
        if acc.is_main_process:
            artifacts.follow_umask(d)
            if s.ema is not None:
                torch.save([e.cpu() for e in s.ema], d / "ema.pt")
            artifacts.write_json(d / "trainer_state.json", {"step": s.step})  # written last: checkpoint complete
            rotate_checkpoints(s.out, cfg.keep_checkpoints)
        acc.wait_for_everyone()


def finish(s: Run, t_start: float) -> dict:
    """``final/`` (the EMA weights when ``ema`` > 0), the manifest, and (``keep_checkpoints=0``)
    no resume state left."""
    import shutil

    import torch

    cfg, acc = s.cfg, s.accelerator
    acc.wait_for_everyone()
    if s.ema is not None:  # the final weights are the EMA weights
        with torch.no_grad():
            for e, p in zip(s.ema, s.params):
                p.copy_(e)
    save_final(acc, s.policy, s.unwrapped, cfg, s.out,
               {"objective": cfg.objective, "beta": cfg.beta, "steps": cfg.steps, "train_run": s.manifest["run_key"]})
    if acc.is_main_process:
        lines = [json.loads(x) for x in s.metrics_f.read_text().splitlines()] if s.metrics_f.is_file() else []
        artifacts.finish(s.out, s.manifest, counts={"steps": cfg.steps, "prompts_with_pairs": len(s.source.prompts)},
                         final_metrics=lines[-1] if lines else None, seconds=round(time.time() - t_start, 3))
        if cfg.keep_checkpoints == 0:  # complete: final/ is what later stages read; drop the resume state
            shutil.rmtree(s.out / "checkpoints", ignore_errors=True)
    acc.wait_for_everyone()
    return {**artifacts.read_json(s.out / artifacts.MANIFEST), "skipped": False}
