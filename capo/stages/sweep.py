"""Stage `sweep`: choose ``beta`` for one training cell on validation prompts, never on test
prompts and never with the gold reward.

A *cell* is everything about a fine-tuning run except ``beta``: base model, pairs
(objective's data: one reward's best-worst pairs, SUM or FRS pairs, ...), objective,
weighting and sigmoid bias ``b``, steps, lr. Top to bottom:

1. the base model's images on the validation prompts (``val_prompts``, e.g.
   ``shapes:geneval@val``: a stratified half of the held-out set, disjoint from ``@test``),
   ``val_n`` per prompt with the evaluation's per-item seeds, scored by every reward in
   ``rewards`` and ``report_rewards``; cached in ``base_cache`` (shared by every sweep of
   one base model);
2. for each ``beta`` of the grid: ``capo train`` (``<out>/beta-<value>/``; with ``rounds > 1``
   ``capo iterate``, online training over R rounds from the same pairs), then the trained
   model's images on the same prompts and seeds, scored the same way; per reward its
   win-rate over the base (prompt-bootstrap CI), the divergence from the base
   (``capo.eval.divergence``: constant weighting, ``n_t`` draws per image, on the
   model's own validation samples) and the parameter distance ``||theta - theta_ref||``;
3. the **criterion** picks the grid point: ``mean-winrate`` (default) = the mean over
   ``rewards`` (all L evaluation rewards, not only the trained ones) of the validation
   win-rate over the base, so hacking one reward at the others' expense is not rewarded;
   ``budget`` = the mean win-rate over the *trained* rewards among the grid points whose
   validation divergence is at most ``divergence_budget``. ``report_rewards`` (the gold
   reward of the shapes world) are measured for the frontier figures but never read by
   the criterion.
4. when the chosen value lies at an edge of the grid, the grid is widened past that edge
   (geometrically, the ratio of the two outermost values) up to ``widen`` times, so the
   selected value is bracketed, or ``sweep.json`` says that it is not.

``beta`` values are given in constant-weighting units: with ``weighting=sigmoid`` the
trained value is ``beta / E_t[-w_t lambda'_t]`` (the mean loss factor over the training
``t`` distribution of the model's schedule, ``factor_scale``), so one grid serves both
weightings (the factor is far above 1 on DDPM schedules). ``beta_scale=none`` trains the
grid values as given.

Writes ``<out>/sweep.json`` (every grid point's validation figures, the selected value and
its checkpoint) and a manifest. Every training run and validation file is reused when
complete, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import field
from pathlib import Path
from typing import ClassVar

import numpy as np

from capo import artifacts, tracking
from capo import dist
from capo import models
from capo.models import COMPILE_RULE
from capo.config import stage_config, to_dict
from capo.eval.divergence import divergence_rows, divergence_summary, param_distance_of, times_from_uniform
from capo.eval.winrate import win_rate
from capo.method.implicit import loss_factor
from capo.method.schedules import alphas_cumprod_of
from capo.prompts import load_prompts, records_fingerprint
from capo.rewards import load_reward
from capo.samples import item_seed
from capo.stages import iterate, train
from capo.stages.train import option_errors

CRITERIA = ("mean-winrate", "budget")
SINGLE_PROCESS = True  # drives other stages; refused under several processes (cli)


@stage_config
class SweepConfig:
    model: str  # base model (registered name, pipeline dir or capo checkpoint)
    pairs: str  # a `capo pairs` output directory
    out: str  # output directory: beta-<value>/ training runs, sweep.json
    objective: str = "capo"  # preference objective (capo ls objectives)
    betas: list[float] = field(default_factory=lambda: [50.0, 150.0, 500.0, 1500.0, 5000.0])  # grid, constant-weighting units
    beta_scale: str = "auto"  # auto: sigmoid weighting trains beta / E_t[-w_t lambda'_t]; none: as given
    widen: int = 2  # grid points added past an edge when the selected value sits on it
    criterion: str = "mean-winrate"  # selection criterion (module docstring)
    divergence_budget: float | None = None  # budget criterion: largest validation divergence allowed
    trained: list[str] | None = None  # rewards the cell trains on (budget criterion); default: the pairs' rewards
    rewards: list[str] = field(default_factory=lambda: ["shapes-pref", "shapes-vqa", "shapes-aesthetic"])  # criterion rewards
    report_rewards: list[str] = field(default_factory=list)  # measured, never used for selection (e.g. shapes-gold)
    val_prompts: str = "shapes:geneval@val"  # validation prompts (disjoint from the test split)
    val_limit: int | None = None  # stratified subset of K validation prompts
    val_n: int = 2  # images per validation prompt
    eval_seed: int = 0  # base seed of the validation images' per-item seeds
    n_t: int = 2  # divergence draws (t, eps) per validation image
    base_cache: str | None = None  # directory for the base model's validation scores (default <out>/base-val)
    weighting: str = "constant"  # loss weighting w_t
    bias: float = 1.5  # sigmoid bias b
    noise: str = "shared"  # pair noise: eps_w = eps_l, or drawn apart
    lora_rank: int = 0  # 0: full fine-tuning
    lr: float = 1e-5  # AdamW learning rate
    steps: int = 100  # optimizer steps per run (in all, over its rounds)
    batch_size: int = 8  # pairs per step
    rounds: int = 1  # > 1: each grid point trains online for R rounds (capo iterate) from these pairs
    calibration: str = "reference"  # rounds > 1: calibration of later rounds (capo iterate)
    reference: str = "base"  # rounds > 1: KL reference of later rounds (capo iterate)
    seed: int = 0  # training seed of the sweep's runs
    train_options: dict = field(default_factory=dict)  # further capo train keys of every run (mixed_precision, ...)
    launch: str | None = None  # launcher of each training run, e.g. "accelerate launch --num_processes 8" (capo.dist.run_stage)
    batch: int = 64  # images per sampler / reward call
    compile: str = "off"  # torch.compile of the validation sampler's denoisers (as capo generate's compile)
    n_boot: int = 1000  # bootstrap resamples for the CIs
    overwrite: bool = False
    quiet: bool = False
    report_to: str = "none"  # experiment tracker of every training run (capo train; capo.tracking)
    run_name: str | None = None  # the cell's tracker name: runs <run_name>.s<seed>.beta-<beta> (default: out's name)

    RULES: ClassVar[dict[str, str]] = {
        "objective": "@objectives", "betas": "> 0", "beta_scale": "auto | none", "widen": ">= 0",
        "criterion": "mean-winrate | budget", "divergence_budget": "> 0", "trained": "@rewards", "rewards": "@rewards",
        "report_rewards": "@rewards", "val_limit": ">= 1", "val_n": ">= 1", "eval_seed": ">= 0", "n_t": ">= 1",
        "weighting": "constant | sigmoid", "noise": "shared | independent", "lora_rank": ">= 0", "lr": "> 0",
        "steps": ">= 1", "batch_size": ">= 1", "rounds": ">= 1", "calibration": "reference | self",
        "reference": "base | previous", "seed": ">= 0", "batch": ">= 1", "n_boot": ">= 1",
        "compile": COMPILE_RULE, "report_to": tracking.RULE}
    LATER: ClassVar[dict] = {"rounds": 1, "calibration": lambda c: c.rounds == 1,  # capo.config.to_dict:
                             "reference": lambda c: c.rounds == 1,  # online keys matter only with rounds > 1
                             "train_options": {}, "launch": None, "compile": "off"}

    def contradictions(self):
        if not self.betas:
            yield "betas: give at least one value"
        elif len(set(self.betas)) != len(self.betas):
            yield f"betas: {self.betas} repeats a value"
        if not self.rewards:
            yield "rewards: the criterion needs at least one reward"
        if self.criterion == "budget" and self.divergence_budget is None:
            yield "divergence_budget: criterion=budget needs it (the largest validation divergence allowed)"
        if self.steps < self.rounds:
            yield f"steps: {self.steps} cannot be split over rounds = {self.rounds}"
        yield from option_errors(self.train_options, self.steps)
        if (self.train_options or self.launch) and self.rounds > 1:
            yield "train_options, launch: only for rounds = 1 (capo iterate sets its own training keys)"
        if leak := sorted(set(self.rewards) & set(self.report_rewards)):
            yield f"report_rewards: {', '.join(leak)} also criterion rewards (report-only rewards are never selected on)"
        if err := tracking.missing(self.report_to):
            yield err


def fmt_beta(beta: float) -> str:
    """A directory-safe, exact-enough name for a grid value: 500 -> "500", 0.05 -> "0.05"."""
    return f"{beta:.6g}"


def run_label(cell: str, seed: int, beta: float) -> str:
    """The tracker run name of ``cell`` trained with ``seed`` at ``beta``: ``capo-frs.s0.beta-500``."""
    return f"{cell}.s{seed}.beta-{fmt_beta(beta)}"


def factor_scale(model, weighting: str, bias: float, m: int = 4096) -> float:
    """``E_t[-w_t lambda'_t]`` over capo train's ``t`` distribution of ``model`` (a midpoint
    rule with ``m`` points; exactly the mean over every DDPM timestep). 1 for constant."""
    import torch

    if weighting == "constant":
        return 1.0
    if model.prediction_type != "flow":
        m = len(alphas_cumprod_of(model.train_scheduler()))
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    terms, _ = times_from_uniform(model, u)
    return float(loss_factor(terms.log_snr, terms.dlog_snr_dt, weighting, bias).mean())


# ----------------------------------------------------------------------------- validation images
_MODELS: dict = {}
_REWARDS: dict = {}


def _model(spec: str):
    key = (spec, models.model_fingerprint(spec))
    if key not in _MODELS:
        if len(_MODELS) > 2:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = models.load_model(spec)
    return _MODELS[key]


def _reward(name: str):
    if name not in _REWARDS:
        _REWARDS[name] = load_reward(name)
    return _REWARDS[name]


def sample_and_score(model, records: list[dict], n: int, seed: int, rewards: list[str], batch: int):
    """Images of ``model`` for ``records`` x ``n`` (per-item seeds as ``capo generate``),
    scored by ``rewards``. Returns (DataFrame prompt_id, sample_id, <reward>..., latents)."""
    import pandas as pd

    items = [(r, k) for r in records for k in range(n)]
    prompts = [r["prompt"] for r, _ in items]
    seeds = [item_seed(seed, r["prompt_id"], k) for r, k in items]
    images, latents = model.sample(prompts, seeds, steps=None, guidance=None, batch_size=batch)
    df = pd.DataFrame({"prompt_id": [r["prompt_id"] for r, _ in items], "sample_id": [k for _, k in items]})
    for name in rewards:
        rm = _reward(name)
        vals = np.concatenate([np.asarray(rm(images[i:i + batch], prompts[i:i + batch]), dtype=np.float64)
                               for i in range(0, len(items), batch)])
        bad = ~np.isfinite(vals)
        if bad.any():
            raise ValueError(f"reward {name!r} returned {int(bad.sum())} NaN/inf score(s) on validation images")
        df[name] = vals
    return df, latents


def base_validation(cfg: SweepConfig, records: list[dict], rewards: list[str]):
    """The base model's validation scores, computed once per (model, prompts, n, seed, rewards)."""
    d = Path(cfg.base_cache or Path(cfg.out) / "base-val")
    sampler = {"compile": cfg.compile} if cfg.compile != "off" else {}  # eager keys stay as they were
    key = artifacts.run_key({"n": cfg.val_n, "seed": cfg.eval_seed, "rewards": sorted(rewards)} | sampler,
                            {"model": models.model_fingerprint(cfg.model), "prompts": records_fingerprint(records)})
    f = d / f"scores-{key[:16]}.parquet"
    if f.is_file():
        return artifacts.read_table(f)
    df, _ = sample_and_score(_model(cfg.model).compile_denoiser(cfg.compile), records, cfg.val_n, cfg.eval_seed,
                             rewards, cfg.batch)
    artifacts.write_table(df, f)
    return df


def validate(cfg: SweepConfig, spec: str, records: list[dict], base_scores, rewards: list[str]) -> dict:
    """Validation figures of checkpoint ``spec``: win-rates over the base per reward,
    divergence (mean, CI), parameter distance."""
    model, base = (_model(s).compile_denoiser(cfg.compile) for s in (spec, cfg.model))  # one sampler for both
    df, latents = sample_and_score(model, records, cfg.val_n, cfg.eval_seed, rewards, cfg.batch)
    f = df.merge(base_scores, on=["prompt_id", "sample_id"], suffixes=("", "@base"))
    if len(f) != len(df):
        raise artifacts.ArtifactError(f"{spec}: validation images do not match the base model's cache")
    pids = f["prompt_id"].to_numpy()
    wr = {r: win_rate(f[r].to_numpy(), f[f"{r}@base"].to_numpy(), pids, n_boot=cfg.n_boot) for r in rewards}
    div = divergence_rows(model, base, records, n=cfg.val_n, seed=cfg.eval_seed, n_t=cfg.n_t, batch_size=cfg.batch,
                          latents=latents)
    return {"winrate": {r: {k: w[k] for k in ("win_rate", "ci_low", "ci_high", "mean_a", "mean_b")}
                        for r, w in wr.items()},
            "divergence": divergence_summary(div, n_boot=cfg.n_boot),
            "param_distance": param_distance_of(model, base)}


# ----------------------------------------------------------------------------- selection
def criterion_value(point: dict, cfg: SweepConfig, trained: list[str]) -> float | None:
    """The declared criterion at one grid point (None: not admissible under the budget)."""
    wr = point["winrate"]
    if cfg.criterion == "mean-winrate":
        return float(np.mean([wr[r]["win_rate"] for r in cfg.rewards]))
    if point["divergence"]["mean"] > cfg.divergence_budget:
        return None
    return float(np.mean([wr[r]["win_rate"] for r in trained]))


def select(values: list[float | None]) -> int | None:
    """Index of the best admissible value (the first of equals), None if none is admissible."""
    ok = [(v, -i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    return -max(ok)[1] if ok else None


# ----------------------------------------------------------------------------- run
def run(cfg: SweepConfig) -> dict:

    t0 = time.time()
    records = load_prompts(cfg.val_prompts, limit=cfg.val_limit, stratify=True)
    pm = artifacts.read_json(Path(cfg.pairs) / artifacts.MANIFEST)
    trained = list(cfg.trained or pm.get("rewards") or cfg.rewards)
    if cfg.criterion == "budget":
        missing = [r for r in trained if r not in cfg.rewards]
        if missing:
            raise ValueError(f"trained reward(s) {', '.join(missing)} are not among the criterion rewards")
    out = Path(cfg.out)
    config = tracking.unkeyed(to_dict(cfg)) | {"out": None, "overwrite": None, "quiet": None, "base_cache": None,
                                               "batch": None}
    manifest = artifacts.make_manifest("sweep", config, {
        "model": {"path": cfg.model, "sha256": models.model_fingerprint(cfg.model)},
        "pairs": {"path": cfg.pairs, "sha256": pm["run_key"]},
        "val_prompts": {"path": cfg.val_prompts, "sha256": records_fingerprint(records)}})
    if artifacts.prepare_out_dir(out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / "sweep.json"), "skipped": True}
    log = (lambda m: None) if cfg.quiet else (lambda m: print(f"sweep [{time.time() - t0:5.0f}s] {m}", flush=True))

    rewards = list(cfg.rewards) + list(cfg.report_rewards)
    cell = cfg.run_name or tracking.default_run_name(out)
    base_scores = base_validation(cfg, records, rewards)
    scale = 1.0 if cfg.beta_scale == "none" else factor_scale(_model(cfg.model), cfg.weighting, cfg.bias)
    grid = sorted(float(b) for b in cfg.betas)
    points: dict[float, dict] = {}
    widened = 0
    while True:
        for beta in grid:
            if beta in points:
                continue
            d = out / f"beta-{fmt_beta(beta)}"
            log(f"{cfg.objective} beta={fmt_beta(beta)} (trained as {beta / scale:.4g})")
            if cfg.rounds == 1:
                dist.run_stage("train", train.TrainConfig(model=cfg.model, pairs=cfg.pairs, out=str(d), objective=cfg.objective,
                                            beta=beta / scale, weighting=cfg.weighting, bias=cfg.bias, noise=cfg.noise,
                                            lora_rank=cfg.lora_rank, lr=cfg.lr, steps=cfg.steps,
                                            batch_size=cfg.batch_size, seed=cfg.seed, checkpoint_every=cfg.steps,
                                            keep_checkpoints=0, log_every=max(1, cfg.steps // 5), quiet=True,
                                            report_to=cfg.report_to, run_name=run_label(cell, cfg.seed, beta),
                                            **cfg.train_options), cfg.launch)
                ckpt = d / "final"
            else:
                ckpt = Path(iterate.run(iterate.IterateConfig(
                    model=cfg.model, pairs=cfg.pairs, out=str(d), rounds=cfg.rounds, calibration=cfg.calibration,
                    reference=cfg.reference, objective=cfg.objective, beta=beta / scale, weighting=cfg.weighting,
                    bias=cfg.bias, noise=cfg.noise, lora_rank=cfg.lora_rank, lr=cfg.lr, steps=cfg.steps,
                    batch_size=cfg.batch_size, seed=cfg.seed, batch=cfg.batch, quiet=True, report_to=cfg.report_to,
                    run_name=run_label(cell, cfg.seed, beta)))["final"])
            vf = d / "validation.json"
            vkey = artifacts.run_key({"val": [cfg.val_n, cfg.eval_seed, cfg.n_t, sorted(rewards)]},
                                     {"train": artifacts.read_json(d / artifacts.MANIFEST)["run_key"],
                                      "prompts": records_fingerprint(records)})
            v = artifacts.read_json(vf) if vf.is_file() else None
            if not v or v.get("key") != vkey:
                v = {"key": vkey, **validate(cfg, str(ckpt), records, base_scores, rewards)}
                artifacts.write_json(vf, v)
            points[beta] = {"beta": beta, "beta_trained": beta / scale, "checkpoint": str(ckpt),
                            **{k: v[k] for k in ("winrate", "divergence", "param_distance")}}
        values = [criterion_value(points[b], cfg, trained) for b in grid]
        best = select(values)
        at_edge = best is not None and len(grid) > 1 and best in (0, len(grid) - 1)
        if not at_edge or widened >= cfg.widen:
            break
        ratio = grid[-1] / grid[-2] if best == len(grid) - 1 else grid[1] / grid[0]
        grid = grid + [grid[-1] * ratio] if best == len(grid) - 1 else [grid[0] / ratio] + grid
        widened += 1
        log(f"selected value at the grid's edge: widened to {[fmt_beta(b) for b in grid]}")
    if best is None:
        raise ValueError(f"no grid point is admissible: every validation divergence exceeds the budget "
                         f"{cfg.divergence_budget} (smallest {min(p['divergence']['mean'] for p in points.values()):.4g})")
    rows = [{**points[b], "criterion": values[i]} for i, b in enumerate(grid)]
    result = {"cell": {k: getattr(cfg, k) for k in ("model", "pairs", "objective", "weighting", "bias", "steps", "lr",
                                                     "rounds")},
              "criterion": cfg.criterion, "criterion_rewards": list(cfg.rewards), "trained": trained,
              "report_rewards": list(cfg.report_rewards), "divergence_budget": cfg.divergence_budget,
              "val_prompts": cfg.val_prompts, "val_prompt_ids": [r["prompt_id"] for r in records],
              "val_n": cfg.val_n, "scale": scale, "grid": rows, "widened": widened,
              "selected": {"index": best, "beta": grid[best], "beta_trained": grid[best] / scale,
                           "checkpoint": rows[best]["checkpoint"], "criterion": values[best]},
              "bracketed": len(grid) > 2 and 0 < best < len(grid) - 1}
    artifacts.write_json(out / "sweep.json", result)
    artifacts.finish(out, manifest, selected=result["selected"], bracketed=result["bracketed"], widened=widened,
                     grid=[{"beta": r["beta"], "criterion": r["criterion"], "divergence": r["divergence"]["mean"],
                            "winrate": {k: v["win_rate"] for k, v in r["winrate"].items()}} for r in rows],
                     seconds=round(time.time() - t0, 3))
    log(f"selected beta={fmt_beta(grid[best])} ({'bracketed' if result['bracketed'] else 'at the grid edge'})")
    return {**result, "skipped": False}


def summary(cfg: SweepConfig, res: dict) -> str:
    """``capo sweep``'s closing line."""
    sel = res["selected"]
    return (f"sweep: beta={sel['beta']:.6g} selected ({res['criterion']} {sel['criterion']:.2f}; "
            f"{'bracketed' if res['bracketed'] else 'at the grid edge'}) -> {cfg.out}/sweep.json")
