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
from pathlib import Path

from capo import artifacts
from capo import dist
from capo.datasets.pickapic import import_pairs
from capo.experiments import budget, power
from capo.experiments.preset import (ReproduceConfig, benchmark_sets, cells, is_shapes, load_preset,  # noqa: F401 (the stage's config)
                                     out_dir, scaled, base_dir)
from capo.report import figures, tables
from capo.stages import evaluate, generate, merge, pairs, score, sweep, train
from capo.vocabulary import OBJECTIVES, label, seed_label
from capo.worlds.shapes.labelled import label_pairs


def run(cfg: ReproduceConfig) -> dict:
    if cfg.dry_run:
        memo: dict = {}  # prompt counts, shared by the plan and the power table's designs
        p = budget.experiment(cfg, memo=memo)
        g = budget.grpo_cells(cfg, memo=memo) if cfg.grpo else None
        table = power.preset_table(cfg, memo=memo)
        if not cfg.quiet:
            print(budget.render_experiment(p))
            if g is not None:
                print(budget.render_grpo_cells(g))
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
        b = root / base_dir(base)
        log(f"{base}: generate {cfg.train_limit or 'all'} prompts x {n_max}")
        dist.run_stage("generate", generate.GenerateConfig(model=base, prompts=cfg.train_prompts, out=str(b / "samples"),
                                                      n=n_max, limit=cfg.train_limit, seed=cfg.seed, compile=cfg.compile,
                                                      quiet=q), cfg.launch)
        dist.run_stage("score", score.ScoreConfig(samples=str(b / "samples"), rewards=list(cfg.rewards), quiet=q), cfg.launch)
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
            pair_dirs["human"] = b / "pairs" / "human"
            label_pairs(b / "samples", pair_dirs["human"], seed=cfg.seed)
        elif cfg.human_pairs:  # Table 4's Diffusion-DPO baseline: Pick-a-Pic v2's human labels
            import glob

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
                seed=cfg.seeds[0], train_options=dict(cfg.train_options), launch=cfg.launch, compile=cfg.compile, quiet=q,
                report_to=cfg.report_to, run_name=f"{base_dir(base)}.{lab}"))
            sel = res["selected"]
            selected[lab] = sel
            checkpoints[seed_label(lab, cfg.seeds[0])] = sel["checkpoint"]
            for s in cfg.seeds[1:]:
                log(f"{base}: train {lab} seed {s} at beta={sel['beta']:.6g}")
                d = b / "train" / seed_label(lab, s)
                dist.run_stage("train", train.TrainConfig(model=base, pairs=str(c["pairs"]), out=str(d), objective=c["objective"],
                                            beta=sel["beta_trained"], weighting=c["weighting"], bias=c["bias"],
                                            steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                            lora_rank=cfg.lora_rank, seed=s, checkpoint_every=cfg.steps, keep_checkpoints=0,
                                            log_every=max(1, cfg.steps // 5), quiet=q, report_to=cfg.report_to,
                                            run_name=sweep.run_label(f"{base_dir(base)}.{lab}", s, sel["beta"]),
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
                                         seed=cfg.seed, limit=cfg.eval_limit, compile=cfg.compile, quiet=q))
        if cfg.benchmarks:
            log(f"{base}: GenEval + CompBench")
            frs = [f"{lab}={ck}" for lab, ck in checkpoints.items() if lab.startswith("capo-frs.s")]
            geneval, compbench = benchmark_sets(cfg, base)
            evaluate.run(evaluate.EvalConfig(models=[f"base={base}"] + frs, out=str(b / "bench"),
                                             benchmarks=["geneval", "compbench"], geneval_prompts=geneval,
                                             compbench_prompts=compbench, n=cfg.eval_n, seed=cfg.seed, limit=cfg.eval_limit,
                                             compile=cfg.compile, quiet=q))
        summary[base] = {"models": len(checkpoints), "selected": {k: v["beta"] for k, v in selected.items()}}
    write_reports(root, reports, cfg)
    artifacts.unlock(root)
    log(f"done: {reports}/tables.md, {reports}/claims.md")
    return {"root": str(root), "reports": str(reports), "bases": summary, "seconds": round(time.time() - t0, 1)}


def write_reports(root: Path, reports: Path, cfg: ReproduceConfig) -> None:
    roles = dict(zip(cfg.rewards, cfg.roles))
    reports.mkdir(parents=True, exist_ok=True)
    tables.write(root, reports, roles, pref=cfg.rewards[0], with_paper=True, gold=cfg.gold,
                 command=f"capo reproduce --preset {cfg.preset}")
    figures.write_all(root, reports, roles, gold=cfg.gold)
