"""Stage `online`: offline vs online (iterative) training at an equal budget, on the shapes
world (or any base model with rewards), under the fair-comparison protocol; writes
``online.md`` and one figure per base into ``reports``.

Per base model and objective (default CaPO and DPO) and number of rounds R in ``rounds``
(default 1, 2, 3; R = 1 is offline training, the paper's setting):

1. ``generate`` ``n`` images per training prompt from the base model and ``score`` them (the
   same samples serve every R); round 1 of an R-round run trains on the FRS pairs of the first
   ``n / R`` of them, and every later round samples ``n / R`` more per prompt from its previous
   round's checkpoint: every run generates ``n`` images per prompt and takes ``steps``
   optimizer steps in all (the equal budget);
2. ``sweep`` (``rounds=R``): beta chosen per (objective, R) on the validation prompts by the
   declared criterion (mean win-rate over the rewards; never the gold, never test prompts),
   training seed ``seeds[0]``; the other seeds run ``capo iterate`` at the selected beta;
3. ``eval`` on the test prompts of every run's last checkpoint and, for R > 1, of its earlier
   rounds' checkpoints (for the per-round curve): win-rates over the base under every reward
   and the gold, and the divergence from the base;
4. the report: per base, a table of win-rates and divergence (two-level CIs over prompts and
   training seeds), the head-to-head comparisons (online vs offline per objective; online
   CaPO vs online DPO at each R, which says whether calibration is what makes online training
   work) with verdicts from their CIs, and a figure of gold win-rate against divergence along
   the rounds.

Labels: ``<objective>-r<R>`` (the run's last checkpoint), ``<objective>-r<R>-round<r>`` (an
earlier round), ``.s<seed>`` per training seed. Every stage is skipped when complete, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import field
from pathlib import Path
from typing import ClassVar

from capo import artifacts
from capo.config import stage_config
from capo.experiments import online_grpo
from capo.experiments.online_grpo import contradictions
from capo.experiments.online_report import run_label, selected_entry, write_report
from capo.experiments.preset import base_dir
from capo.stages import evaluate, generate, iterate, pairs, score, sweep
from capo.vocabulary import seed_label
SINGLE_PROCESS = True  # drives other stages; refused under several processes (cli)


@stage_config
class OnlineConfig:
    out: str = "runs/online"  # experiment directory
    reports: str = "reports"  # where online.md and online_<base>.png go
    bases: list[str] = field(default_factory=lambda: ["shapes-sdxl", "shapes-sd3"])  # base models
    rewards: list[str] = field(default_factory=lambda: ["shapes-pref", "shapes-vqa", "shapes-aesthetic"])  # trained
    roles: list[str] = field(default_factory=lambda: ["MPS", "VQA", "VILA"])  # the paper's name for each reward
    gold: str | None = "shapes-gold"  # hidden true preference: reported, never used to select
    objectives: list[str] = field(default_factory=lambda: ["capo", "dpo"])  # objectives compared
    rounds: list[int] = field(default_factory=lambda: [1, 2, 3])  # R values (1: offline)
    calibration: str = "reference"  # later rounds: against the base's samples, or Eq. 7 (capo iterate)
    reference: str = "base"  # later rounds' KL reference (capo iterate)
    train_prompts: str = "shapes:train"  # preference-training prompts
    train_limit: int | None = 48  # first K training prompts
    n: int = 12  # images per training prompt in all, over the rounds (divisible by every R)
    val_prompts: str = "shapes:geneval@val"  # validation prompts: beta selection only
    val_limit: int | None = 20  # stratified subset of K validation prompts
    val_n: int = 1  # images per validation prompt
    eval_prompts: str = "shapes:geneval@test"  # test prompts: every reported figure
    eval_limit: int | None = None  # stratified subset of K test prompts
    eval_n: int = 1  # images per test prompt
    n_t: int = 2  # divergence draws per image
    betas: dict[str, list[float]] = field(default_factory=lambda: {
        "capo": [50.0, 500.0, 5000.0], "dpo": [50.0, 500.0, 5000.0]})  # grid per objective (constant-weighting units)
    widen: int = 0  # grid points added past an edge
    steps: int = 24  # optimizer steps per run, in all over its rounds
    batch_size: int = 8  # pairs per step
    lr: float = 1e-5  # AdamW learning rate
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds; the sweep trains on seeds[0]
    seed: int = 0  # data seed: training samples, pair draws, evaluation images
    grpo: list[str] = field(default_factory=list)  # GRPO cells: ADVANTAGE (the rewards' mix) or ADVANTAGE:REWARD; writes grpo.md (capo.experiments.online_grpo)
    grpo_betas: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1])  # GRPO's KL coefficient grid
    group_size: int = 4  # GRPO images per prompt per rollout (G); prompts per rollout follow from the equal budget
    grpo_options: dict = field(default_factory=dict)  # further capo train keys of the GRPO runs (sample_steps, grpo_steps, ...)
    quiet: bool = False

    RULES: ClassVar[dict[str, str]] = {
        "rewards": "@rewards", "gold": "@rewards", "objectives": "@objectives", "rounds": ">= 1",
        "calibration": "reference | self", "reference": "base | previous", "train_limit": ">= 1", "n": ">= 2",
        "val_limit": ">= 1", "val_n": ">= 1", "eval_limit": ">= 1", "eval_n": ">= 1", "n_t": ">= 1", "betas": "> 0",
        "widen": ">= 0", "steps": ">= 1", "batch_size": ">= 1", "lr": "> 0", "seeds": ">= 0", "seed": ">= 0",
        "grpo_betas": "> 0", "group_size": ">= 2"}
    LATER: ClassVar[dict] = {"grpo": [], "grpo_betas": lambda c: not c.grpo, "group_size": lambda c: not c.grpo,
                             "grpo_options": lambda c: not c.grpo}  # GRPO keys only in comparisons that have GRPO cells

    def contradictions(self):
        if len(self.rewards) != len(self.roles):
            yield f"roles: {len(self.rewards)} rewards but {len(self.roles)} roles"
        if missing := [o for o in self.objectives if o not in self.betas]:
            yield f"betas: no grid for objective(s) {', '.join(missing)}"
        if bad := [R for R in self.rounds if self.n % R or self.n // R < 2]:
            yield f"n: {self.n} images per prompt cannot be split into >= 2 per round for rounds {bad}"
        if bad := [R for R in self.rounds if self.steps < R]:
            yield f"steps: {self.steps} cannot be split over rounds {bad}"
        if len(set(self.rounds)) != len(self.rounds) or len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            yield "rounds, seeds: give distinct values (and at least one seed)"
        if 1 not in self.rounds:
            yield f"rounds: {self.rounds} lacks 1 (offline training, the baseline every online run is compared to)"
        if self.gold is not None and self.gold in self.rewards:
            yield f"gold: {self.gold} is also a training reward (the gold is never trained on)"
        if self.val_prompts == self.eval_prompts:
            yield f"val_prompts: the same set as eval_prompts ({self.val_prompts}); use SET@val / SET@test"
        if self.grpo:
            yield from contradictions(self)


def round_checkpoints(checkpoint: str, R: int) -> list[str]:
    """Every round's checkpoint of the run whose last checkpoint is ``checkpoint``."""
    if R == 1:
        return [checkpoint]
    run_dir = Path(checkpoint).parents[2]  # <run>/round-R/train/final
    return [str(iterate.round_checkpoint(run_dir, r)) for r in range(1, R + 1)]


def run(cfg: OnlineConfig) -> dict:
    t0 = time.time()
    root, reports = Path(cfg.out), Path(cfg.reports)
    root.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale_temps(root)
    q = cfg.quiet
    log = (lambda m: None) if q else (lambda m: print(f"online [{time.time() - t0:6.0f}s] {m}", flush=True))
    gold = [cfg.gold] if cfg.gold else []
    summary = {}
    for base in cfg.bases:
        t_base = time.time()
        b = root / base_dir(base)
        b.mkdir(parents=True, exist_ok=True)
        artifacts.lock(b)  # one process per base: two processes may run the two bases of one comparison
        log(f"{base}: generate {cfg.train_limit or 'all'} prompts x {cfg.n}")
        generate.run(generate.GenerateConfig(model=base, prompts=cfg.train_prompts, out=str(b / "samples"), n=cfg.n,
                                             limit=cfg.train_limit, seed=cfg.seed, quiet=q))
        # GRPO's over-optimisation figure measures the gold in units of the base samples' spread
        score.run(score.ScoreConfig(samples=str(b / "samples"), rewards=list(cfg.rewards) + (gold if cfg.grpo else []),
                                    quiet=q))
        tables = [str(b / "samples" / "rewards" / r / "scores.parquet") for r in cfg.rewards]
        models: dict[str, str] = {}
        selected: dict[str, dict] = {}
        for R in cfg.rounds:
            k = cfg.n // R
            pairs_dir = b / "pairs" / f"frs-n{k}"
            pairs.run(pairs.PairsConfig(rewards_tables=tables, out=str(pairs_dir), selector="frs", seed=cfg.seed, n=k))
            for o in cfg.objectives:
                lab = run_label(o, R)
                log(f"{base}: sweep {lab} ({R} round{'s' * (R > 1)} of {k} images per prompt)")
                res = sweep.run(sweep.SweepConfig(
                    model=base, pairs=str(pairs_dir), out=str(b / "sweep" / lab), objective=o, betas=list(cfg.betas[o]),
                    widen=cfg.widen, rewards=list(cfg.rewards), report_rewards=gold, val_prompts=cfg.val_prompts,
                    val_limit=cfg.val_limit, val_n=cfg.val_n, eval_seed=cfg.seed, n_t=cfg.n_t,
                    base_cache=str(b / "val-base"), lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size,
                    rounds=R, calibration=cfg.calibration, reference=cfg.reference, seed=cfg.seeds[0], quiet=q))
                sel = res["selected"]
                selected[lab] = selected_entry(res)
                finals = {cfg.seeds[0]: sel["checkpoint"]}
                for s in cfg.seeds[1:]:
                    log(f"{base}: {lab} seed {s} at beta={sel['beta']:.6g}")
                    finals[s] = iterate.run(iterate.IterateConfig(
                        model=base, pairs=str(pairs_dir), out=str(b / "runs" / seed_label(lab, s)), rounds=R,
                        calibration=cfg.calibration, reference=cfg.reference, objective=o, beta=sel["beta_trained"],
                        lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, seed=s, quiet=True))["final"]
                for s, ck in finals.items():
                    for r, rck in enumerate(round_checkpoints(ck, R), start=1):
                        models[seed_label(run_label(o, R, r), s)] = rck
        if cfg.grpo:
            online_grpo.run_cells(cfg, base, b, models, selected, log)
        artifacts.write_json(b / "selected.json", selected)
        log(f"{base}: eval {len(models)} checkpoints on {cfg.eval_prompts}")
        evaluate.run(evaluate.EvalConfig(
            models=[f"base={base}"] + [f"{lab}={ck}" for lab, ck in models.items()], out=str(b / "eval"),
            benchmarks=["winrate", "divergence"], prompts=cfg.eval_prompts, rewards=list(cfg.rewards) + gold,
            n=cfg.eval_n, n_t=cfg.n_t, seed=cfg.seed, limit=cfg.eval_limit, quiet=q))
        wall = artifacts.read_json(b / "wall.json")["seconds"] if (b / "wall.json").is_file() else 0.0
        artifacts.write_json(b / "wall.json", {"seconds": round(wall + time.time() - t_base, 1)})  # over resumptions
        artifacts.unlock(b)
        summary[base] = {"models": len(models), "selected": {k2: v["beta"] for k2, v in selected.items()}}
    paths = (online_grpo.write_report if cfg.grpo else write_report)(root, reports, cfg)
    log(f"done: {', '.join(map(str, paths))}")
    return {"root": str(root), "reports": [str(p) for p in paths], "bases": summary,
            "seconds": round(time.time() - t0, 1)}


def summary(cfg: OnlineConfig, res: dict) -> str:
    """``capo online``'s closing line."""
    return f"online: {len(res['bases'])} base(s) in {res['seconds']:.0f}s -> {', '.join(res['reports'])}"
