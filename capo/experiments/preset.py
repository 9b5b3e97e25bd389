"""A ``capo reproduce`` preset: its config (``ReproduceConfig``, presets in
``configs/reproduce-<preset>.yaml``), its cells, prompt sets and scaling. What the run
(``capo.experiments.reproduce``), its budget (``capo.experiments.budget``) and the power
planner (``capo.experiments.power``) all read.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import ClassVar

from capo import tracking
from capo.config import build, load_yaml, stage_config
from capo.models import COMPILE_RULE
from capo.plan import kind_of
from capo.prompts import load_prompts
from capo.stages import evaluate
from capo.stages.train import option_errors
from capo.vocabulary import bias_name, label, OBJECTIVES


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
    compile: str = "off"  # torch.compile of every sampling denoiser (training samples, validation, test, benchmarks); training's is train_options' compile
    pickapic: str | None = None  # Table 4 on real base models: Pick-a-Pic v2 parquet shards (a glob)
    pickapic_limit: int | None = None  # first K Pick-a-Pic comparisons (default: all)
    launch: str | None = None  # launcher of generate, score and every training run ("accelerate launch ...")
    gpus: int = 1  # GPUs per run the plan assumes (the runs themselves use what `accelerate launch` starts)
    gpu: str = "H100"  # the plan's GPU (capo.plan's measured throughput table)
    scale: float = 1.0  # < 1: the same preset at a tiny size (prompt counts and steps x scale; a smoke test)
    dry_run: bool = False  # print the plan (capo.experiments.budget.experiment) and the missing weights; run nothing
    pilot: str | None = None  # dry run: variance parts of the power table (runs, a tables.csv or a capo power JSON; default: the committed full run's)
    power_target: float = 5.0  # dry run: the win-rate difference (points) the power table plans for
    power_level: float = 0.8  # dry run: the probability of a decided verdict it asks for
    grpo: bool = False  # dry run: also plan the GRPO cells (capo.experiments.budget.grpo_cells); they run in capo online (configs/grpo-shapes.yaml)
    quiet: bool = False
    report_to: str = "none"  # experiment tracker of every training run (capo.tracking): <base>.<cell>.s<seed>.beta-<beta>

    RULES: ClassVar[dict[str, str]] = {
        "rewards": "@rewards", "gold": "@rewards", "train_limit": ">= 1", "n": ">= 2", "n_ablation": ">= 2",
        "val_limit": ">= 1", "val_n": ">= 1", "eval_limit": ">= 1", "eval_n": ">= 1", "steps": ">= 1",
        "batch_size": ">= 1", "lr": "> 0", "betas": "> 0", "widen": ">= 0", "criterion": "mean-winrate | budget",
        "divergence_budget": "> 0", "n_t": ">= 1", "weighting": "constant | sigmoid", "lora_rank": ">= 0",
        "seeds": ">= 0", "seed": ">= 0", "gpus": ">= 1", "scale": "(0, 1]", "pickapic_limit": ">= 1",
        "power_target": "> 0", "power_level": "(0, 1)", "compile": COMPILE_RULE,
        "report_to": tracking.RULE}
    LATER: ClassVar[dict] = {  # capo.config.to_dict: keys added after runs existed
        "train_options": {}, "pickapic": None, "pickapic_limit": None, "launch": None, "gpus": 1, "gpu": "H100",
        "scale": 1.0, "dry_run": False, "compile": "off",
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
            yield ("grpo: reproduce prices the GRPO cells (--dry-run grpo=true); the equal-budget comparison with CaPO "
                   "runs in capo online (capo online --config configs/grpo-shapes.yaml writes reports/grpo.md)")


def load_preset(name: str) -> dict:
    root = Path(__file__).resolve().parents[2] / "configs"
    path = Path(name) if Path(name).is_file() else root / f"reproduce-{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("reproduce-") for p in root.glob("reproduce-*.yaml"))
        raise ValueError(f"unknown reproduce preset {name!r}; known: {', '.join(known)} (or a YAML path)")
    return load_yaml(path)


def preset_config(preset: str, tokens: list[str] | tuple[str, ...] = ()) -> ReproduceConfig:
    """A preset (its name or a YAML path) as a ``ReproduceConfig``, key=value ``tokens`` over it."""
    data = {**load_preset(preset), "preset": Path(preset).stem.removeprefix("reproduce-")}
    return build(ReproduceConfig, None, tokens, defaults=data)


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
    return kind_of(spec) == "shapes"


def out_dir(cfg: ReproduceConfig) -> str:
    """The experiment directory: ``out``, else ``runs/reproduce-<preset>`` (``-x<scale>`` for a scaled run)."""
    return cfg.out or f"runs/reproduce-{cfg.preset}" + (f"-x{cfg.scale:g}" if cfg.scale != 1.0 else "")


def benchmark_sets(cfg: ReproduceConfig, base: str) -> tuple[str, list[str]]:
    """Table 3's prompt sets for ``base``: GenEval and the CompBench categories (the shapes
    world's for a shapes model), on the same half (``@val`` / ``@test``) as ``eval_prompts``."""
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

        return k(given if given is not None else (prompt_count(spec, None)[0] or 2))

    steps = max(1, round(cfg.steps * cfg.scale))
    options = dict(cfg.train_options)
    if "warmup_steps" in options:
        options["warmup_steps"] = min(steps, round(options["warmup_steps"] * cfg.scale))
    return dataclasses.replace(
        cfg, scale=1.0, train_options=options, train_limit=limit(cfg.train_prompts, cfg.train_limit),
        val_limit=limit(cfg.val_prompts, cfg.val_limit), eval_limit=limit(cfg.eval_prompts, cfg.eval_limit),
        pickapic_limit=k(cfg.pickapic_limit or cfg.train_limit or 2) if cfg.pickapic else None, steps=steps,
        out=out_dir(cfg))


def base_dir(spec: str) -> str:
    """The directory name of a base model inside an experiment directory: ``shapes-sdxl``, or a
    path's last component, with anything but ``[A-Za-z0-9_.-]`` replaced by ``-``."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec).name if Path(spec).exists() else spec)


# Full-set sizes of the named prompt sets, used when the files are not cached yet (upstream counts).
SET_SIZES = {"parti": 1632, "dpg-bench": 1065, "geneval": 553, "t2i-compbench": 300}


def prompt_count(spec: str, limit: int | None) -> tuple[int | None, bool]:
    """(number of prompts ``spec`` gives under ``limit``, exact?). Without the files: the limit,
    else half the upstream size for a ``@val`` / ``@test`` half, else the upstream size."""
    try:
        return len(load_prompts(spec, limit=limit)), True
    except Exception:  # noqa: BLE001 - files not here yet: estimate from the upstream size
        name, _, split = spec.partition("@")
        full = SET_SIZES.get(name.split(":")[0])
        if full is None:
            return limit, limit is not None
        n = full // 2 if split == "val" else (full - full // 2 if split == "test" else full)
        return (min(limit, n) if limit else n), False
