"""Stage `reproduce`: everything the paper's Tables 1-5 need, on the shapes world, then reports,
under a protocol that makes the comparisons fair and decisive.

Per base model (default both: ``shapes-sdxl`` and ``shapes-sd3``), top to bottom:

1. ``generate`` N samples per training prompt (the largest N of ``n`` and ``n_ablation``);
   ``score`` them with the three rewards that play MPS, VQAScore and VILA;
2. ``pairs``: best-worst per reward (Table 1), SUM and FRS over the three (Table 2), FRS
   on the first N' samples for each ``n_ablation`` value, and the human-labelled pair set
   (Table 4's Pick-a-Pic analogue);
3. ``sweep`` per cell (objective x pairs x weighting): every ``beta`` of the objective's
   grid trained on ``seeds[0]``, evaluated on the *validation* prompts (``val_prompts``,
   disjoint from ``eval_prompts``), the value chosen by the declared ``criterion`` (mean
   win-rate over all L rewards by default; the gold reward is measured for the frontier
   figures and never read by it), the grid widened when the choice sits on its edge;
4. ``train`` the other ``seeds`` at each cell's selected ``beta``;
5. ``merge``: SOUP = slerp of the three single-reward models of each objective, each at its
   own selected ``beta``, per seed;
6. ``eval`` of every (cell, seed) model against the base on the *test* prompts (win-rates
   under the rewards and the gold), and GenEval / T2I-CompBench of the base and CaPO+FRS
   on the test halves of those sets (Table 3);

then ``capo tables``, the claims report and the figures into ``reports``. Model labels are
``<cell>.s<seed>``. Every stage is skipped when its complete output exists, so an
interrupted reproduce resumes where it stopped. Presets live in
``configs/reproduce-<preset>.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import field
from pathlib import Path
from typing import ClassVar

from capo import artifacts, tracking
from capo.config import stage_config
from capo.tables import OBJECTIVES, bias_name, label, seed_label

DEFAULT_BETAS = {o: [50.0, 150.0, 500.0, 1500.0, 5000.0] for o in OBJECTIVES}


@stage_config
class ReproduceConfig:
    preset: str = "quick"  # quick | full | a configs/reproduce-<preset>.yaml name (fields below override it)
    out: str | None = None  # experiment directory (default runs/reproduce-<preset>)
    reports: str | None = None  # where tables.md, claims.md and figures go (default <out>/reports)
    bases: list[str] = field(default_factory=lambda: ["shapes-sdxl", "shapes-sd3"])  # base models
    rewards: list[str] = field(default_factory=lambda: ["shapes-pref", "shapes-vqa", "shapes-aesthetic"])  # MPS, VQA, VILA roles
    roles: list[str] = field(default_factory=lambda: ["MPS", "VQA", "VILA"])  # the paper's name for each reward
    gold: str | None = "shapes-gold"  # hidden true preference: reported beside the rewards, never used to select
    human_pairs: bool = True  # Table 4: Diffusion-DPO on simulated human choices (shapes world only)
    train_prompts: str = "shapes:train"  # preference-training prompts
    train_limit: int | None = 64  # first K training prompts
    n: int = 8  # samples per training prompt (the paper's N = 16)
    n_ablation: list[int] = field(default_factory=list)  # other N for CaPO+FRS (the paper's 8 / 16 / 32)
    val_prompts: str = "shapes:geneval@val"  # validation prompts: beta selection only
    val_limit: int | None = None  # stratified subset of K validation prompts
    val_n: int = 2  # images per validation prompt
    eval_prompts: str = "shapes:geneval@test"  # test prompts: every reported figure
    eval_limit: int | None = None  # stratified subset of K test prompts per set
    eval_n: int = 2  # images per test prompt
    benchmarks: bool = True  # Table 3: GenEval + CompBench of base and CaPO+FRS (test halves)
    steps: int = 20  # optimizer steps per fine-tuning run
    batch_size: int = 8  # pairs per step
    lr: float = 1e-5  # AdamW learning rate
    betas: dict[str, list[float]] = field(default_factory=lambda: dict(DEFAULT_BETAS))  # grid per objective (constant-weighting units)
    widen: int = 2  # grid points added past an edge when the selected beta sits on it
    criterion: str = "mean-winrate"  # selection criterion (see capo.stages.sweep)
    divergence_budget: float | None = None  # budget criterion: largest validation divergence
    n_t: int = 2  # divergence draws per validation image
    weighting: str = "constant"  # loss weighting of Tables 1, 2, 4 (Table 5 varies it)
    bias: float = 1.5  # sigmoid bias b when weighting = sigmoid
    biases: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0])  # Table 5's sigmoid b values
    lora_rank: int = 0  # 0: full fine-tuning
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds; the sweep trains on seeds[0]
    seed: int = 0  # data seed: training samples, pair draws, evaluation images
    train_options: dict = field(default_factory=dict)  # further capo train keys of every run (mixed_precision, grad_accum, ...)
    pickapic: str | None = None  # Table 4 on real base models: Pick-a-Pic v2 parquet shards (a glob)
    pickapic_limit: int | None = None  # first K Pick-a-Pic comparisons (default: all)
    launch: str | None = None  # launcher of generate, score and every training run ("accelerate launch ...")
    gpus: int = 1  # GPUs per run the plan assumes (the runs themselves use what `accelerate launch` starts)
    gpu: str = "H100"  # the plan's GPU (capo.plan's measured throughput table)
    scale: float = 1.0  # < 1: the same preset at a tiny size (prompt counts and steps x scale; a smoke test)
    dry_run: bool = False  # print the plan (capo.plan.experiment) and the missing weights; run nothing
    pilot: str | None = None  # dry run: variance parts of the power table (runs, a tables.csv or a capo power JSON; default: the committed full run's)
    power_target: float = 5.0  # dry run: the win-rate difference (points) the power table plans for
    power_level: float = 0.8  # dry run: the probability of a decided verdict it asks for
    grpo: bool = False  # dry run: also plan the GRPO cells (issue #22; capo.plan.grpo_cells); not run by reproduce yet
    quiet: bool = False
    report_to: str = "none"  # experiment tracker of every training run (capo.tracking): <base>.<cell>.s<seed>.beta-<beta>

    RULES: ClassVar[dict[str, str]] = {
        "rewards": "@rewards", "gold": "@rewards", "train_limit": ">= 1", "n": ">= 2", "n_ablation": ">= 2",
        "val_limit": ">= 1", "val_n": ">= 1", "eval_limit": ">= 1", "eval_n": ">= 1", "steps": ">= 1",
        "batch_size": ">= 1", "lr": "> 0", "betas": "> 0", "widen": ">= 0", "criterion": "mean-winrate | budget",
        "divergence_budget": "> 0", "n_t": ">= 1", "weighting": "constant | sigmoid", "lora_rank": ">= 0",
        "seeds": ">= 0", "seed": ">= 0", "gpus": ">= 1", "scale": "(0, 1]", "pickapic_limit": ">= 1",
        "power_target": "> 0", "power_level": "(0, 1)",
        "report_to": tracking.RULE}
    LATER: ClassVar[dict] = {  # capo.config.to_dict: keys added after runs existed
        "train_options": {}, "pickapic": None, "pickapic_limit": None, "launch": None, "gpus": 1, "gpu": "H100",
        "scale": 1.0, "dry_run": False,
        **dict.fromkeys(("pilot", "power_target", "power_level"), lambda c: True),  # the dry run's power table only
        "grpo": lambda c: True}  # the dry run's GRPO cells only (reproduce does not run them yet)

    def contradictions(self):
        if len(self.rewards) != len(self.roles):
            yield f"roles: {len(self.rewards)} rewards but {len(self.roles)} roles"
        if missing := [o for o in OBJECTIVES if o not in self.betas]:
            yield f"betas: no grid for objective(s) {', '.join(missing)}"
        if unknown := sorted(set(self.betas) - set(OBJECTIVES)):
            yield f"betas: unknown objective(s) {', '.join(unknown)}; known: {', '.join(OBJECTIVES)}"
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            yield f"seeds: {self.seeds} must be a non-empty list of distinct integers"
        if self.val_prompts == self.eval_prompts:
            yield f"val_prompts: the same set as eval_prompts ({self.val_prompts}); use SET@val / SET@test"
        if self.gold is not None and self.gold in self.rewards:
            yield f"gold: {self.gold} is also a training reward (the gold is never trained on)"
        if self.criterion == "budget" and self.divergence_budget is None:
            yield "divergence_budget: criterion=budget needs it"
        from capo.stages.train import option_errors

        yield from option_errors(self.train_options, self.steps)
        real = [b for b in self.bases if not is_shapes(b)]
        if self.human_pairs and real and not self.pickapic:
            yield (f"human_pairs: the real base(s) {', '.join(real)} need labelled pairs: pickapic=GLOB of Pick-a-Pic "
                   "v2 parquet shards (or human_pairs=false)")
        if self.pickapic and not real:
            yield "pickapic: only for real base models (the shapes world simulates its human labels)"
        if err := tracking.missing(self.report_to):
            yield err
        if self.grpo and not self.dry_run:
            yield ("grpo: the GRPO cells are planned (capo reproduce --dry-run grpo=true) but not yet run by reproduce "
                   "(issue #22 item 3); train one with capo train objective=grpo")


def load_preset(name: str) -> dict:
    from capo.config import load_yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    path = Path(name) if Path(name).is_file() else root / f"reproduce-{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("reproduce-") for p in root.glob("reproduce-*.yaml"))
        raise ValueError(f"unknown reproduce preset {name!r}; known: {', '.join(known)} (or a YAML path)")
    return load_yaml(path)


def cells(cfg: ReproduceConfig, pair_dirs: dict[str, Path]) -> dict[str, dict]:
    """Every trained cell: label -> pairs dir, objective, weighting, bias, trained rewards."""
    out: dict[str, dict] = {}

    def add(lab, pairs_key, o, weighting, bias, trained):
        out[lab] = {"pairs": pair_dirs[pairs_key], "objective": o, "weighting": weighting, "bias": bias,
                    "trained": trained}

    for o in OBJECTIVES:
        for r in cfg.rewards:
            add(label(o, "single", r), f"single-{r}", o, cfg.weighting, cfg.bias, [r])
        for sel in ("sum", "frs"):
            add(label(o, sel), sel, o, cfg.weighting, cfg.bias, list(cfg.rewards))
    for b in cfg.biases:  # Table 5 (the default weighting's own cell is capo-frs itself)
        if not (cfg.weighting == "sigmoid" and b == cfg.bias):
            add(f"capo-frs-{bias_name(b)}", "frs", "capo", "sigmoid", b, list(cfg.rewards))
    if cfg.weighting != "constant":
        add("capo-frs-constant", "frs", "capo", "constant", cfg.bias, list(cfg.rewards))
    for k in cfg.n_ablation:
        if k != cfg.n:
            add(f"capo-frs-n{k}", f"frs-n{k}", "capo", cfg.weighting, cfg.bias, list(cfg.rewards))
    if cfg.human_pairs:
        add("dpo-human", "human", "dpo", cfg.weighting, cfg.bias, [])
    return out


def is_shapes(spec: str) -> bool:
    from capo.plan import kind_of

    return kind_of(spec) == "shapes"


def out_dir(cfg: ReproduceConfig) -> str:
    """The experiment directory: ``out``, else ``runs/reproduce-<preset>`` (``-x<scale>`` for a scaled run)."""
    return cfg.out or f"runs/reproduce-{cfg.preset}" + (f"-x{cfg.scale:g}" if cfg.scale != 1.0 else "")


def benchmark_sets(cfg: ReproduceConfig, base: str) -> tuple[str, list[str]]:
    """Table 3's prompt sets for ``base``: GenEval and the CompBench categories (the shapes
    world's for a shapes model), on the same half (``@val`` / ``@test``) as ``eval_prompts``."""
    from capo.stages import evaluate

    split = cfg.eval_prompts.rpartition("@")[2] if "@" in cfg.eval_prompts else None
    suffix = f"@{split}" if split in ("val", "test") else ""
    shapes = is_shapes(base)
    compbench = evaluate.SHAPES_COMPBENCH if shapes else evaluate.REAL_COMPBENCH
    return ("shapes:geneval" if shapes else "geneval") + suffix, [p + suffix for p in compbench]


def scaled(cfg: ReproduceConfig) -> ReproduceConfig:
    """The same experiment at ``cfg.scale`` of its size: every prompt count, the optimizer steps
    and their warm-up times ``scale`` (at least 2 prompts, 1 step); everything else as the preset
    says."""
    import dataclasses
    import math

    if cfg.scale == 1.0:
        return cfg

    def k(n):
        return max(2, math.ceil(n * cfg.scale))

    def limit(spec, given):
        from capo.plan import _prompt_count

        return k(given if given is not None else (_prompt_count(spec, None)[0] or 2))

    steps = max(1, round(cfg.steps * cfg.scale))
    options = dict(cfg.train_options)
    if "warmup_steps" in options:
        options["warmup_steps"] = min(steps, round(options["warmup_steps"] * cfg.scale))
    return dataclasses.replace(
        cfg, scale=1.0, train_options=options, train_limit=limit(cfg.train_prompts, cfg.train_limit),
        val_limit=limit(cfg.val_prompts, cfg.val_limit), eval_limit=limit(cfg.eval_prompts, cfg.eval_limit),
        pickapic_limit=k(cfg.pickapic_limit or cfg.train_limit or 2) if cfg.pickapic else None, steps=steps,
        out=out_dir(cfg))


def run(cfg: ReproduceConfig) -> dict:
    from capo.dist import run_stage
    from capo.stages import evaluate, generate, merge, pairs, score, sweep, train

    if cfg.dry_run:
        from capo import plan

        from capo.stages import power

        memo: dict = {}  # prompt counts, shared by the plan and the power table's designs
        p = plan.experiment(cfg, memo=memo)
        g = plan.grpo_cells(cfg, memo=memo) if cfg.grpo else None
        table = power.preset_table(cfg, memo=memo)
        if not cfg.quiet:
            print(plan.render_experiment(p))
            if g is not None:
                print(plan.render_grpo_cells(g))
            print(table)
        return {"dry_run": True, "plan": p, "grpo": g, "root": None, "reports": None, "bases": {}, "seconds": 0.0}
    cfg = scaled(cfg)
    t0 = time.time()
    root = Path(out_dir(cfg))
    reports = Path(cfg.reports or root / "reports")
    root.mkdir(parents=True, exist_ok=True)
    artifacts.lock(root)  # one reproduce per experiment directory
    for d in (root, reports):  # what a killed run was writing when it died
        if d.is_dir():
            artifacts.remove_stale_temps(d)
    q = cfg.quiet
    log = (lambda msg: None) if q else (lambda msg: print(f"reproduce [{time.time() - t0:6.0f}s] {msg}", flush=True))
    summary = {}
    gold = [cfg.gold] if cfg.gold else []
    n_max = max([cfg.n, *cfg.n_ablation])
    for base in cfg.bases:
        b = root / _slug(base)
        log(f"{base}: generate {cfg.train_limit or 'all'} prompts x {n_max}")
        run_stage("generate", generate.GenerateConfig(model=base, prompts=cfg.train_prompts, out=str(b / "samples"),
                                                      n=n_max, limit=cfg.train_limit, seed=cfg.seed, quiet=q), cfg.launch)
        run_stage("score", score.ScoreConfig(samples=str(b / "samples"), rewards=list(cfg.rewards), quiet=q), cfg.launch)
        tables = {r: str(b / "samples" / "rewards" / r / "scores.parquet") for r in cfg.rewards}
        pair_dirs: dict[str, Path] = {}
        for r in cfg.rewards:
            pair_dirs[f"single-{r}"] = b / "pairs" / f"single-{r}"
            pairs.run(pairs.PairsConfig(rewards_tables=[tables[r]], out=str(pair_dirs[f"single-{r}"]), n=cfg.n))
        for sel, k in [("sum", cfg.n), ("frs", cfg.n)] + [(f"frs-n{k}", k) for k in cfg.n_ablation if k != cfg.n]:
            pair_dirs[sel] = b / "pairs" / sel
            pairs.run(pairs.PairsConfig(rewards_tables=list(tables.values()), out=str(pair_dirs[sel]),
                                        selector=sel.split("-")[0], seed=cfg.seed, n=k))
        if cfg.human_pairs and is_shapes(base):
            from capo.worlds.shapes.labelled import label_pairs

            pair_dirs["human"] = b / "pairs" / "human"
            label_pairs(b / "samples", pair_dirs["human"], seed=cfg.seed)
        elif cfg.human_pairs:  # Table 4's Diffusion-DPO baseline: Pick-a-Pic v2's human labels
            import glob

            from capo.datasets.pickapic import import_pairs

            shards = sorted(glob.glob(cfg.pickapic))
            if not shards:
                raise FileNotFoundError(f"pickapic: no file matches {cfg.pickapic!r}")
            log(f"{base}: import Pick-a-Pic pairs from {len(shards)} shard(s)")
            got = import_pairs(shards, base, b / "human", limit=cfg.pickapic_limit)
            pair_dirs["human"] = Path(got["pairs"])
        checkpoints: dict[str, str] = {}  # "<cell>.s<seed>" -> checkpoint
        selected: dict[str, dict] = {}
        for lab, c in cells(cfg, pair_dirs).items():
            log(f"{base}: sweep {lab}")
            res = sweep.run(sweep.SweepConfig(
                model=base, pairs=str(c["pairs"]), out=str(b / "sweep" / lab), objective=c["objective"],
                betas=list(cfg.betas[c["objective"]]), widen=cfg.widen, criterion=cfg.criterion,
                divergence_budget=cfg.divergence_budget, trained=c["trained"] or None, rewards=list(cfg.rewards),
                report_rewards=gold, val_prompts=cfg.val_prompts, val_limit=cfg.val_limit, val_n=cfg.val_n,
                eval_seed=cfg.seed, n_t=cfg.n_t, base_cache=str(b / "val-base"), weighting=c["weighting"],
                bias=c["bias"], lora_rank=cfg.lora_rank, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size,
                seed=cfg.seeds[0], train_options=dict(cfg.train_options), launch=cfg.launch, quiet=q,
                report_to=cfg.report_to, run_name=f"{_slug(base)}.{lab}"))
            sel = res["selected"]
            selected[lab] = sel
            checkpoints[seed_label(lab, cfg.seeds[0])] = sel["checkpoint"]
            for s in cfg.seeds[1:]:
                log(f"{base}: train {lab} seed {s} at beta={sel['beta']:.6g}")
                d = b / "train" / seed_label(lab, s)
                run_stage("train", train.TrainConfig(model=base, pairs=str(c["pairs"]), out=str(d), objective=c["objective"],
                                            beta=sel["beta_trained"], weighting=c["weighting"], bias=c["bias"],
                                            steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                            lora_rank=cfg.lora_rank, seed=s, checkpoint_every=cfg.steps, keep_checkpoints=0,
                                            log_every=max(1, cfg.steps // 5), quiet=q, report_to=cfg.report_to,
                                            run_name=sweep.run_label(f"{_slug(base)}.{lab}", s, sel["beta"]),
                                            **cfg.train_options), cfg.launch)
                checkpoints[seed_label(lab, s)] = str(d / "final")
        for o in OBJECTIVES:
            for s in cfg.seeds:
                lab = seed_label(label(o, "soup"), s)
                merge.run(merge.MergeConfig(checkpoints=[checkpoints[seed_label(label(o, "single", r), s)]
                                                         for r in cfg.rewards],
                                            out=str(b / "merge" / lab), method="slerp"))
                checkpoints[lab] = str(b / "merge" / lab)
        artifacts.write_json(b / "selected.json", selected)
        log(f"{base}: eval {len(checkpoints)} models on {cfg.eval_prompts}")
        models = [f"base={base}"] + [f"{lab}={ck}" for lab, ck in checkpoints.items()]
        evaluate.run(evaluate.EvalConfig(models=models, out=str(b / "eval"), benchmarks=["winrate"],
                                         prompts=cfg.eval_prompts, rewards=list(cfg.rewards) + gold, n=cfg.eval_n,
                                         seed=cfg.seed, limit=cfg.eval_limit, quiet=q))
        if cfg.benchmarks:
            log(f"{base}: GenEval + CompBench")
            frs = [f"{lab}={ck}" for lab, ck in checkpoints.items() if lab.startswith("capo-frs.s")]
            geneval, compbench = benchmark_sets(cfg, base)
            evaluate.run(evaluate.EvalConfig(models=[f"base={base}"] + frs, out=str(b / "bench"),
                                             benchmarks=["geneval", "compbench"], geneval_prompts=geneval,
                                             compbench_prompts=compbench, n=cfg.eval_n, seed=cfg.seed, limit=cfg.eval_limit, quiet=q))
        summary[base] = {"models": len(checkpoints), "selected": {k: v["beta"] for k, v in selected.items()}}
    write_reports(root, reports, cfg)
    artifacts.unlock(root)
    log(f"done: {reports}/tables.md, {reports}/claims.md")
    return {"root": str(root), "reports": str(reports), "bases": summary, "seconds": round(time.time() - t0, 1)}


def _slug(spec: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec).name if Path(spec).exists() else spec)


def write_reports(root: Path, reports: Path, cfg: ReproduceConfig) -> None:
    from capo import figures, tables

    roles = dict(zip(cfg.rewards, cfg.roles))
    reports.mkdir(parents=True, exist_ok=True)
    tables.write(root, reports, roles, pref=cfg.rewards[0], with_paper=True, gold=cfg.gold,
                 command=f"capo reproduce --preset {cfg.preset}")
    figures.write_all(root, reports, roles, gold=cfg.gold)
