"""Stage `reproduce`: everything the paper's Tables 1-5 need, on the shapes world, then reports.

Per base model (default both: ``shapes-sdxl`` and ``shapes-sd3``), top to bottom:

1. ``generate`` N samples per training prompt; ``score`` them with the three rewards that
   play MPS, VQAScore and VILA;
2. ``pairs``: best-worst per reward (Table 1), SUM and FRS over the three (Table 2), and
   the human-labelled pair set (Table 4's Pick-a-Pic analogue);
3. ``train``: DPO / IPO / CaPO x {each single reward, SUM, FRS}; Diffusion-DPO on the
   human pairs; CaPO+FRS with constant and sigmoid b = 1.0 / 1.5 / 2.0 weighting (Table 5);
4. ``merge``: SOUP = slerp of the three single-reward models of each objective;
5. ``eval``: win-rates of every model over the base on held-out prompts (with the gold
   reward), and GenEval / T2I-CompBench of the base and CaPO+FRS (Table 3);

then ``capo tables`` and the figures into ``reports``. Every stage is skipped when its
complete output exists, so an interrupted reproduce resumes where it stopped.
Presets live in ``configs/reproduce-<preset>.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from capo import artifacts
from capo.tables import OBJECTIVES, label


@dataclass
class ReproduceConfig:
    preset: str = "quick"  # quick | full | a configs/reproduce-<preset>.yaml name (fields below override it)
    out: str | None = None  # experiment directory (default runs/reproduce-<preset>)
    reports: str | None = None  # where tables.md and figures go (default <out>/reports)
    bases: list[str] = field(default_factory=lambda: ["shapes-sdxl", "shapes-sd3"])  # base models
    rewards: list[str] = field(default_factory=lambda: ["shapes-pref", "shapes-vqa", "shapes-aesthetic"])  # MPS, VQA, VILA roles
    roles: list[str] = field(default_factory=lambda: ["MPS", "VQA", "VILA"])  # the paper's name for each reward
    gold: str | None = "shapes-gold"  # hidden true preference, evaluated beside the rewards (None: none)
    human_pairs: bool = True  # Table 4: Diffusion-DPO on simulated human choices (shapes world only)
    train_prompts: str = "shapes:train"  # preference-training prompts
    train_limit: int | None = 64  # first K training prompts
    n: int = 8  # samples per training prompt (the paper's N = 16)
    eval_prompts: str = "shapes:geneval"  # held-out win-rate prompts (Parti's role)
    eval_limit: int | None = 32  # first K held-out prompts per set
    eval_n: int = 2  # images per held-out prompt
    benchmarks: bool = True  # Table 3: GenEval + CompBench of base and CaPO+FRS
    steps: int = 20  # optimizer steps per fine-tuning run
    batch_size: int = 8  # pairs per step
    lr: float = 1e-5  # AdamW learning rate
    beta: dict[str, float] = field(default_factory=lambda: {"dpo": 500.0, "ipo": 500.0, "capo": 500.0})
    weighting: str = "constant"  # default loss weighting for Tables 1, 2, 4 (Table 5 varies it)
    bias: float = 1.5  # sigmoid bias b when weighting = sigmoid
    lora_rank: int = 0  # 0: full fine-tuning
    seed: int = 0
    quiet: bool = False


def load_preset(name: str) -> dict:
    from capo.config import load_yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    path = Path(name) if Path(name).is_file() else root / f"reproduce-{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("reproduce-") for p in root.glob("reproduce-*.yaml"))
        raise ValueError(f"unknown reproduce preset {name!r}; known: {', '.join(known)} (or a YAML path)")
    return load_yaml(path)


def run(cfg: ReproduceConfig) -> dict:
    from capo.stages import evaluate, generate, merge, pairs, score, train

    t0 = time.time()
    if len(cfg.rewards) != len(cfg.roles):
        raise ValueError(f"{len(cfg.rewards)} rewards but {len(cfg.roles)} roles")
    root = Path(cfg.out or f"runs/reproduce-{cfg.preset}")
    reports = Path(cfg.reports or root / "reports")
    q = cfg.quiet
    log = (lambda msg: None) if q else (lambda msg: print(f"reproduce [{time.time() - t0:6.0f}s] {msg}", flush=True))
    summary = {}
    for base in cfg.bases:
        b = root / _slug(base)
        log(f"{base}: generate {cfg.train_limit or 'all'} prompts x {cfg.n}")
        generate.run(generate.GenerateConfig(model=base, prompts=cfg.train_prompts, out=str(b / "samples"), n=cfg.n,
                                             limit=cfg.train_limit, seed=cfg.seed, quiet=q))
        score.run(score.ScoreConfig(samples=str(b / "samples"), rewards=list(cfg.rewards), quiet=q))
        tables = {r: str(b / "samples" / "rewards" / r / "scores.parquet") for r in cfg.rewards}
        pair_dirs = {}
        for r in cfg.rewards:
            pair_dirs[f"single-{r}"] = b / "pairs" / f"single-{r}"
            pairs.run(pairs.PairsConfig(rewards_tables=[tables[r]], out=str(pair_dirs[f"single-{r}"])))
        for sel in ("sum", "frs"):
            pair_dirs[sel] = b / "pairs" / sel
            pairs.run(pairs.PairsConfig(rewards_tables=list(tables.values()), out=str(pair_dirs[sel]), selector=sel,
                                        seed=cfg.seed))
        runs: dict[str, tuple] = {}  # label -> (pairs dir, objective, weighting, bias)
        for o in OBJECTIVES:
            for r in cfg.rewards:
                runs[label(o, "single", r)] = (pair_dirs[f"single-{r}"], o, cfg.weighting, cfg.bias)
            for sel in ("sum", "frs"):
                runs[label(o, sel)] = (pair_dirs[sel], o, cfg.weighting, cfg.bias)
        for w, bias in (("constant", cfg.bias), ("b1.0", 1.0), ("b1.5", 1.5), ("b2.0", 2.0)):
            weighting = "constant" if w == "constant" else "sigmoid"
            same = weighting == cfg.weighting and (weighting == "constant" or bias == cfg.bias)
            runs[f"capo-frs-{w}"] = runs[label("capo", "frs")] if same else (pair_dirs["frs"], "capo", weighting, bias)
        if cfg.human_pairs:
            from capo.worlds.shapes.labelled import label_pairs

            label_pairs(b / "samples", b / "pairs" / "human", seed=cfg.seed)
            runs["dpo-human"] = (b / "pairs" / "human", "dpo", cfg.weighting, cfg.bias)
        checkpoints: dict[str, str] = {}
        done_keys: dict[tuple, str] = {}
        for lab, (pdir, o, weighting, bias) in runs.items():
            key = (str(pdir), o, weighting, bias)
            if key in done_keys:  # the same experiment under two table labels
                checkpoints[lab] = done_keys[key]
                continue
            log(f"{base}: train {lab}")
            train.run(train.TrainConfig(model=base, pairs=str(pdir), out=str(b / "train" / lab), objective=o,
                                        beta=cfg.beta[o], weighting=weighting, bias=bias, steps=cfg.steps,
                                        batch_size=cfg.batch_size, lr=cfg.lr, lora_rank=cfg.lora_rank, seed=cfg.seed,
                                        checkpoint_every=cfg.steps, log_every=max(1, cfg.steps // 5), quiet=q))
            checkpoints[lab] = done_keys[key] = str(b / "train" / lab / "final")
        for o in OBJECTIVES:
            log(f"{base}: merge {o}-soup")
            merge.run(merge.MergeConfig(checkpoints=[checkpoints[label(o, "single", r)] for r in cfg.rewards],
                                        out=str(b / "merge" / f"{o}-soup"), method="slerp"))
            checkpoints[label(o, "soup")] = str(b / "merge" / f"{o}-soup")
        log(f"{base}: eval {len(checkpoints)} models")
        rewards = list(cfg.rewards) + ([cfg.gold] if cfg.gold else [])
        models = [f"base={base}"] + [f"{lab}={ck}" for lab, ck in checkpoints.items()]
        evaluate.run(evaluate.EvalConfig(models=models, out=str(b / "eval"), benchmarks=["winrate"],
                                         prompts=cfg.eval_prompts, rewards=rewards, n=cfg.eval_n, seed=cfg.seed,
                                         limit=cfg.eval_limit, quiet=q))
        if cfg.benchmarks:
            log(f"{base}: GenEval + CompBench")
            evaluate.run(evaluate.EvalConfig(models=[f"base={base}", f"capo-frs={checkpoints['capo-frs']}"],
                                             out=str(b / "bench"), benchmarks=["geneval", "compbench"],
                                             n=cfg.eval_n, seed=cfg.seed, limit=cfg.eval_limit, quiet=q))
        summary[base] = {"models": len(checkpoints)}
    write_reports(root, reports, cfg)
    log(f"done: {reports}/tables.md")
    return {"root": str(root), "reports": str(reports), "bases": summary, "seconds": round(time.time() - t0, 1)}


def _slug(spec: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec).name if Path(spec).exists() else spec)


def write_reports(root: Path, reports: Path, cfg: ReproduceConfig) -> None:
    from capo import figures, tables

    roles = dict(zip(cfg.rewards, cfg.roles))
    reports.mkdir(parents=True, exist_ok=True)
    md = tables.render(root, roles, pref=cfg.rewards[0], with_paper=True)
    cmd = f"capo reproduce --preset {cfg.preset}"
    artifacts.write_text(reports / "tables.md", f"<!-- made by `{cmd}`; experiment directory {root} -->\n" + md)
    figures.write_all(root, reports, roles, gold=cfg.gold)
