"""The ``capo`` command line: thin click wrappers that parse options, build a stage config
and call ``capo.stages.<stage>.run(cfg)``. capo's modules load with the CLI (the stage commands'
help is read from their configs); heavy third-party packages load inside the stages that use them."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from capo import artifacts
from capo import export as model_export
from capo.artifacts import ArtifactError, no_trace_on_failure
from capo.config import build, ConfigError, rule_text
from capo.datasets import pickapic
from capo.eval import detectors  # noqa: F401 (registers OWLv2 and UniDet beside GenEval's detectors)
from capo.eval.geneval import DETECTORS
from capo.eval.image_sets import write_layout
from capo.eval.prompts import PROMPT_SETS
from capo.experiments import power as PW, reproduce as R
from capo.experiments.preset import preset_config
from capo.models import ModelLoadError
from capo.registry import all_registries, UnknownNameError
from capo.report import replication, tables as T
from capo.report.compare import check_gate_names, check_gates, compare_metrics, compare_table
from capo.rewards import RewardLoadError
from capo.stages import evaluate, pairs as pairs_stage
from capo.worlds.shapes import build as B, zoo


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _fail(msg: str) -> None:
    click.echo(f"capo: error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capo")
def main():
    """capo: Calibrated Preference Optimization for text-to-image diffusion.

    Typical flow: generate -> score -> pairs -> train -> merge -> eval -> tables.
    """

    if os.environ.get("CAPO_QUIET", "") not in ("", "0") or not sys.stderr.isatty():
        # library chatter (weight-loading bars, dtype notes) off; capo's own summaries stay
        for k, v in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                     ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
            os.environ.setdefault(k, v)


@main.command()
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--selector", default="best-worst", show_default=True, help="best-worst | sum | frs")
@click.option("--rewards", help="Comma-separated reward columns (default: all non-key columns).")
@click.option("--weights", help="Comma-separated weights for sum / the FRS target (default uniform).")
@click.option("--transform", "transforms", multiple=True, metavar="REWARD=SPEC",
              help="BT transform of a reward: identity | logit | temperature:T (repeatable).")
@click.option("--seed", default=0, show_default=True, help="Seed for FRS draws.")
@click.option("--draws", default=1, show_default=True, help="FRS pairs drawn per prompt.")
@click.option("--max-tries", default=16, show_default=True, help="FRS redraws of a rejected pair.")
@click.option("--n", "n", default=None, type=int, help="Use only the first n samples of each prompt (default: all).")
@click.option("--reference", "reference", multiple=True, type=click.Path(dir_okay=False),
              help="Reward table of a reference model's samples (repeatable): calibrate against them, not Eq. 7.")
@click.option("--overwrite", is_flag=True, help="Replace an output directory holding a different run.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def pairs(tables, out, selector, rewards, weights, transforms, seed, draws, max_tries, n, reference, overwrite, quiet):
    """Select preference pairs from reward TABLES (parquet/CSV: prompt_id, sample_id, one column per reward)."""
    try:
        tmap = {}
        for t in transforms:
            name, sep, spec = t.partition("=")
            if not sep:
                raise ValueError(f"--transform {t!r} is not of the form REWARD=SPEC")
            tmap[name] = spec
        w = [float(x) for x in _csv(weights)] if weights else None
        cfg = pairs_stage.PairsConfig(rewards_tables=list(tables), out=out, selector=selector, rewards=_csv(rewards),
                                weights=w, transforms=tmap, seed=seed, draws=draws, max_tries=max_tries, n=n,
                                reference=list(reference) or None, overwrite=overwrite)
        with no_trace_on_failure(cfg.out):
            res = pairs_stage.run(cfg)
    except (ValueError, ArtifactError, UnknownNameError) as e:
        _fail(str(e))
    if not quiet:
        if res["skipped"]:
            click.echo(f"pairs: {out} already holds this run (complete); nothing to do")
        else:
            c = res["counts"]
            click.echo(f"pairs: {c['pairs']} pairs from {c['prompts']} prompts ({cfg.selector}; "
                       f"{c['rejections']} rejected draws, {c['no_pair_prompts']} prompts without a pair) "
                       f"-> {out}/pairs.parquet in {res['seconds']:.2f}s")


@main.command(name="import")
@click.argument("source", type=click.Choice(["pickapic"]))
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", required=True, help="The model that will be trained (its VAE and text encoders encode the pairs).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Writes OUT/samples and OUT/pairs.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First K labelled, untied comparisons.")
@click.option("--overwrite", is_flag=True, help="Replace an output directory holding a different run.")
def import_(source, files, model, out, limit, overwrite):
    """Labelled preference pairs (Pick-a-Pic v2 parquet shards) -> capo samples + pairs for `capo train`."""
    try:
        with no_trace_on_failure(out):
            res = pickapic.import_pairs(list(files), model, out, limit=limit, overwrite=overwrite)
    except (ValueError, ArtifactError, UnknownNameError, ModelLoadError) as e:
        _fail(str(e))
    c = res["counts"]
    click.echo(f"import: {c['pairs']} pairs ({c['ties_or_unlabelled']} ties / unlabelled dropped of {c['rows']}) "
               f"-> {res['pairs']} in {res['seconds']:.1f}s; train with: capo train --model {model} "
               f"--pairs {res['pairs']} --objective dpo ...")


@main.command(name="layout")
@click.argument("samples", type=click.Path(file_okay=False, exists=True))
@click.argument("layout", type=click.Choice(["geneval", "t2i-compbench", "dpg-bench"]))
@click.argument("out", type=click.Path(file_okay=False))
def layout_(samples, layout, out):
    """Copy a `capo generate` directory into a benchmark's own layout (GenEval's <00000>/samples/,
    T2I-CompBench's samples/<prompt>_<000000>.png, DPG-Bench's 2x2 <id>.png) for upstream's tools."""

    try:
        path = write_layout(samples, layout, out)
    except (ValueError, ArtifactError) as e:
        _fail(str(e))
    click.echo(f"layout: {samples} -> {path} ({layout})")


@main.command(name="ls")
@click.argument("kind", required=False)
def ls_(kind):
    """List registered names: models, rewards, benchmarks, prompt sets, detectors, selectors,
    objectives, transforms, world prompt families, saved-pipeline directory formats."""

    listed = {k: [(n, reg.doc(n)) for n in reg.names()] for k, reg in all_registries().items()}
    listed["prompt-sets"] = [(n, PROMPT_SETS[n].description) for n in sorted(PROMPT_SETS)]
    listed["detectors"] = [(n, " ".join((DETECTORS[n].__doc__ or "").split("\n\n")[0].split()).split(". ")[0])
                           for n in sorted(DETECTORS)]  # the first sentence of each factory's docstring
    kinds = [kind] if kind else sorted(listed)
    for k in kinds:
        if k not in listed:
            _fail(f"unknown kind {k!r}; known: {', '.join(sorted(listed))}")
        click.echo(f"{k}:")
        width = max([16, *(len(name) + 1 for name, _ in listed[k])])
        for name, doc in listed[k]:
            click.echo(f"  {name:<{width}} {doc}")


STAGES = {  # command -> (module, config class, one-line help)
    "generate": ("capo.stages.generate", "GenerateConfig", "Sample N images per prompt from a base model (per-item seeds)."),
    "score": ("capo.stages.score", "ScoreConfig", "Score a samples directory with reward models, one table each."),
    "train": ("capo.stages.train", "TrainConfig", "Preference fine-tuning: DPO / IPO / CaPO on pairs, or online GRPO (objective=grpo); full or LoRA."),
    "merge": ("capo.stages.merge", "MergeConfig", "SOUP: merge fine-tuned checkpoints (slerp or linear)."),
    "sweep": ("capo.stages.sweep", "SweepConfig",
              "Choose beta on validation prompts: train a grid, score it, select by a declared criterion."),
    "iterate": ("capo.stages.iterate", "IterateConfig",
                "Online training: rounds of sampling the policy, calibrating against the base, training on."),
    "online": ("capo.experiments.online", "OnlineConfig",
               "Offline vs online (R rounds) at an equal budget, beta selected per run; writes reports/online.md (with grpo=[...]: GRPO vs CaPO, reports/grpo.md)."),
    "eval": ("capo.stages.evaluate", "EvalConfig",
             "Evaluate models against the first (base): reward win-rates, GenEval, T2I-CompBench."),
}


def _fields_help(module: str, cls_name: str) -> str:
    """The config's fields with their defaults and comments, read from the dataclass source."""
    cls = getattr(importlib.import_module(module), cls_name)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
                for f in dataclasses.fields(cls)}
    rows = []
    for line in inspect.getsource(cls).splitlines()[2:]:
        m = re.match(r"\s+(\w+): ([^=#]+?)(?: = ([^#]+?))?\s*(?:# (.*))?$", line)
        if m and m.group(1) in defaults:
            name, comment, value = m.group(1), m.group(4), defaults[m.group(1)]
            shown = "(required)" if value is dataclasses.MISSING else "= " + json.dumps(value)
            allowed = rule_text(cls, name)
            rows.append(f"  {name:<16} {shown:<22} {f'[{allowed}] ' if allowed else ''}{comment or ''}")
    return ("\b\nKeys (key=value or --key value; a YAML --config file gives defaults; [allowed values]):\n"
            + "\n".join(rows))


def _relaunch(k: int) -> None:
    """Re-run this command under torchrun with k processes (gloo on CPU, nccl on GPUs)."""
    argv = sys.argv[1:]
    i = argv.index("--num-processes") if "--num-processes" in argv else None
    if i is not None:
        del argv[i:i + 2]
    else:
        argv = [a for a in argv if not a.startswith("--num-processes=")]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The command's own arguments travel in CAPO_ARGV: torchrun's parser would take
    # abbreviations of its options (--n, --no...) out of them otherwise.
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={k}", f"--master_port={port}",
           "-m", "capo"]

    sys.exit(subprocess.run(cmd, env={**os.environ, "CAPO_ARGV": json.dumps(argv)}).returncode)


def _stage_command(name: str, module: str, cls_name: str, doc: str):
    @main.command(name=name, help=doc + "\n\n" + _fields_help(module, cls_name),
                  context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
    @click.option("--num-processes", default=1, show_default=True,
                  help="Processes to launch (torchrun); or use `accelerate launch -m capo ...`.")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(config_path, num_processes, args):

        stage = importlib.import_module(module)
        if getattr(stage, "SINGLE_PROCESS", False) and max(num_processes, int(os.environ.get("WORLD_SIZE", "1"))) > 1:
            _fail(f"{name} runs in one process (it drives other stages and their output directories); "
                  "run its train / generate stages under accelerate separately, or drop --num-processes")
        if num_processes > 1 and "WORLD_SIZE" not in os.environ:
            _relaunch(num_processes)
        t0 = time.time()
        try:
            cfg = build(getattr(stage, cls_name), config_path, args)
            with no_trace_on_failure(_out_of(cfg)):
                res = stage.run(cfg)
        except (ConfigError, ValueError, ArtifactError, UnknownNameError, ModelLoadError, FileNotFoundError) as e:
            _fail(str(e))
        except RuntimeError as e:
            if type(e).__name__ in ("TrainingDiverged", "RewardLoadError"):
                _fail(str(e))
            raise
        if not getattr(cfg, "quiet", False) and int(os.environ.get("RANK", "0")) == 0:
            click.echo(_summary(name, stage, cfg, res, time.time() - t0))

    return _cmd


def _out_of(cfg) -> str | None:
    """The directory a stage writes (score: under its samples by default)."""
    out = getattr(cfg, "out", None)
    if out is None and getattr(cfg, "samples", None) and hasattr(cfg, "rewards"):
        out = str(Path(cfg.samples) / "rewards")
    return out


def _summary(name: str, stage, cfg, res: dict, seconds: float) -> str:
    """The line a stage command prints: the stage's own ``summary(cfg, res)`` when it has one."""
    out = getattr(cfg, "out", None) or getattr(cfg, "samples", "")
    if res.get("dry_run"):
        return f"{name}: dry run, nothing loaded or written"
    if res.get("skipped"):
        return f"{name}: {out} already holds this run (complete); nothing to do"
    if res.get("complete") is False:
        return f"{name}: stopped at step {res.get('stopped_at')} (resume by running the same command) -> {out}"
    if hasattr(stage, "summary"):
        return stage.summary(cfg, res)
    counts = res.get("counts") or {k: v["table"] for k, v in res.get("rewards", {}).items()}
    return f"{name}: {counts} -> {out} in {seconds:.1f}s"


for _name, (_module, _cls, _doc) in STAGES.items():
    _stage_command(_name, _module, _cls, _doc)


@main.command(name="export", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("checkpoint")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def export_(checkpoint, config_path, args):
    """A capo checkpoint as a diffusers pipeline directory (full or merged) or diffusers LoRA weights,
    with a Hub model card (README.md): capo export CHECKPOINT out=DIR [results=EVAL/results.json]."""

    try:
        res = model_export.run(model_export.config_from_cli(checkpoint, args, config_path))
    except (ConfigError, ValueError, ArtifactError, UnknownNameError, ModelLoadError, FileNotFoundError) as e:
        _fail(str(e))
    click.echo(f"export: {checkpoint} -> {res['out']} ({res['kind']}"
               + (f", {res['pipeline_class']}" if res["pipeline_class"] else "") + f"; {len(res['files'])} files)")


export_.help += "\n\n" + _fields_help("capo.export", "ExportConfig")


@main.command()
@click.argument("model_a")
@click.argument("model_b")
@click.option("--prompts", default=None,
              help="Win-rate prompt set (default: shapes:geneval / parti) or file; SET@val / SET@test for a half.")
@click.option("--limit", default=32, show_default=True,
              help="K prompts of each set, a subset stratified by tag / category.")
@click.option("--n", "n", default=4, show_default=True, help="Images per prompt.")
@click.option("--benchmarks", default="winrate,geneval", show_default=True, help="winrate, geneval, compbench.")
@click.option("--rewards", help="Reward models for win-rates (default: the world's set).")
@click.option("--out", default=None, help="Output directory (default runs/compare/<A>-vs-<B>).")
@click.option("--fail-if", "gates", multiple=True, metavar="EXPR",
              help="Exit 1 when EXPR holds (repeatable): 'METRIC[:FIELD] OP NUMBER', FIELD value (default) | "
                   "ci_low | ci_high of the 95% CI, e.g. 'geneval.overall:ci_high < 0' (the whole CI below 0, "
                   "recommended), 'winrate.shapes-gold:ci_high < 50', 'geneval.overall < -0.02'.")
@click.option("--seed", default=0, show_default=True)
@click.option("--images", is_flag=True,
              help="MODEL_A / MODEL_B are image folders (capo's, GenEval's, T2I-CompBench's, DPG-Bench's layout, "
                   "or a prompt,path .jsonl/.csv), paired by prompt and image number; nothing is generated.")
@click.option("--detector", default="auto", show_default=True,
              help="GenEval detector: shapes | mask2former | mmdet (auto: from the model; name it with --images).")
@click.option("--quiet", "-q", is_flag=True)
def compare(model_a, model_b, prompts, limit, n, benchmarks, rewards, out, gates, seed, images, detector, quiet):
    """Compare MODEL_B against MODEL_A on the same prompts and seeds; print a markdown delta table.

    MODEL_A / MODEL_B: registered names, pipeline dirs or checkpoints (label=spec to name them),
    or with --images two image folders.
    A point gate ('geneval.overall < -0.02') fires on noise alone in a good share of runs
    (38% of null comparisons at the defaults, bench/bench_gate.py); a CI gate
    ('geneval.overall:ci_high < 0') only when the whole 95% CI is below the line (4%).
    """

    try:
        labels = evaluate.parse_models([model_a, model_b])
        out = out or f"runs/compare/{labels[0][0]}-vs-{labels[1][0]}"
        which = {"images": [model_a, model_b]} if images else {"models": [model_a, model_b]}
        cfg = evaluate.EvalConfig(**which, prompts=prompts, out=out, benchmarks=_csv(benchmarks),
                                  rewards=_csv(rewards), n=n, seed=seed, limit=limit, detector=detector, quiet=quiet)
        check_gate_names(list(gates), cfg.benchmarks,
                         cfg.rewards if cfg.rewards is not None else evaluate.SHAPES_REWARDS + evaluate.REAL_REWARDS)
        res = evaluate.run(cfg)
        label = labels[1][0]
        click.echo(compare_table(res, label))
        fired = check_gates(compare_metrics(res, label), list(gates))
    except (ValueError, ArtifactError, UnknownNameError, ModelLoadError) as e:
        _fail(str(e))
    if fired:
        click.echo("REGRESSION: " + "; ".join(fired), err=True)
        sys.exit(1)


@main.group()
def world():
    """The embedded shapes world: build it from scratch, show its samples, check its artifacts."""


@world.command(name="build", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               help="Train the world's VAE, both base models and the reward models (about 30 min on a CPU).\n\n"
                    + _fields_help("capo.worlds.shapes.build", "WorldConfig"))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def world_build(args):

    try:
        cfg = build(B.WorldConfig, None, args)
        with no_trace_on_failure(cfg.out):
            res = B.run(cfg)
    except (ConfigError, ValueError, ArtifactError) as e:
        _fail(str(e))
    figs = res.get("figures", {})
    for kind in ("sdxl-like", "sd3-like"):
        if kind in figs:
            click.echo(f"{kind}: {figs[kind].get('quality')}")
    click.echo(f"world: built in {res.get('seconds', 0):.0f}s, {res.get('total_mb')} MB")


@world.command(name="show")
@click.option("--model", default="shapes-sdxl", show_default=True)
@click.option("--out", default="reports/world_shapes-sdxl.png", show_default=True)
@click.option("--per-tag", default=4, show_default=True, type=click.IntRange(min=1), help="Images per GenEval tag.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def world_show(model, out, per_tag, seed):
    """Write a PNG grid of a model's samples per GenEval tag, framed by the evaluator's verdict."""
    try:
        path = B.show(model, out, per_tag, seed)
    except ModelLoadError as e:
        _fail(str(e))
    click.echo(f"world show: -> {path}")


@world.command(name="verify")
def world_verify():
    """Check the shipped artifacts against their checksums."""
    if not (zoo.ARTIFACTS / "checksums.json").is_file():
        _fail(f"{zoo.ARTIFACTS}: no shipped world (run `capo world build`)")
    bad = B.verify(zoo.ARTIFACTS)
    if bad:
        _fail("shipped artifacts differ from checksums.json: " + "; ".join(bad[:10]))
    click.echo(f"world: {zoo.ARTIFACTS} matches checksums.json")


@main.command()
@click.option("--root", required=True, type=click.Path(file_okay=False), help="A `capo reproduce` experiment directory.")
@click.option("--out", default=None,
              help="A directory: write tables.md, tables.csv, tables.tex and claims.md there (default: print the markdown).")
@click.option("--with-paper", is_flag=True, help="Add the paper's own numbers beside each table.")
@click.option("--rewards", default="shapes-pref,shapes-vqa,shapes-aesthetic", show_default=True,
              help="Rewards in the roles of MPS, VQA, VILA.")
@click.option("--roles", default="MPS,VQA,VILA", show_default=True)
@click.option("--gold", default="shapes-gold", show_default=True, help="Hidden-truth reward for the matched-divergence table.")
def tables(root, out, with_paper, rewards, roles, gold):
    """Render the paper's Tables 1-5, head-to-head tests, the beta sweep and the claims report."""
    rw, rl = _csv(rewards), _csv(roles)
    try:
        if out:
            paths = T.write(root, out, dict(zip(rw, rl)), pref=rw[0], with_paper=with_paper, gold=gold,
                            command="capo tables --root " + root)
            click.echo("tables: -> " + ", ".join(str(p) for p in paths))
        else:
            click.echo(T.render(root, dict(zip(rw, rl)), pref=rw[0], with_paper=with_paper, gold=gold))
    except (FileNotFoundError, KeyError, ValueError) as e:
        _fail(str(e))


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the markdown here (default: print).")
@click.option("--rewards", default="shapes-pref,shapes-vqa,shapes-aesthetic", show_default=True,
              help="Rewards in the roles of MPS, VQA, VILA.")
@click.option("--roles", default="MPS,VQA,VILA", show_default=True)
def replicate(runs, out, rewards, roles):
    """Compare the claims of independent `capo reproduce` runs (NAME=DIR ...), e.g. disjoint seed sets.

    Exits 1 when a claim or comparison is reproduced in one run and contradicted in another.
    """

    rw, rl = _csv(rewards), _csv(roles)
    named = {}
    for r in runs:
        name, sep, root = r.partition("=")
        named[name if sep else Path(r).name] = root if sep else r
    try:
        md, conflicts = replication.render(named, dict(zip(rw, rl)), pref=rw[0])
    except (FileNotFoundError, KeyError, ValueError) as e:
        _fail(str(e))
    if out:
        artifacts.write_text(out, md)
        click.echo(f"replicate: {len(conflicts)} conflict(s) -> {out}")
    else:
        click.echo(md)
    if conflicts:
        sys.exit(1)


@main.command(name="power")
@click.argument("runs", nargs=-1, required=True)
@click.option("--target", default=5.0, show_default=True, help="The true difference to decide (points of win-rate).")
@click.option("--power", "level", default=0.8, show_default=True, help="The probability of a decided verdict to reach.")
@click.option("--metric", default="gold", show_default=True,
              help="gold (the gold reward's win-rate) | claim (each comparison's own metric) | a reward name.")
@click.option("--seeds", default="3,5,8,10,12,15,20", show_default=True, help="Training seeds of the design grid.")
@click.option("--prompts", default=None, help="Test prompts of the grid (default: the pilot's P, 2P, 4P).")
@click.option("--images", default="1,2,4,8", show_default=True, help="Images per prompt of the grid.")
@click.option("--preset", default=None, help="Cost each design with this reproduce preset's plan (GPU-hours; CPU "
              "hours for the shapes presets); default: images x seeds.")
@click.option("--design", default=None, metavar="S,P,K", help="The design of a tables.csv pilot (default: its tables.md).")
@click.option("--rewards", default="shapes-pref,shapes-vqa,shapes-aesthetic", show_default=True,
              help="Rewards in the roles of MPS, VQA, VILA.")
@click.option("--roles", default="MPS,VQA,VILA", show_default=True)
@click.option("--gold", default="shapes-gold", show_default=True, help="The hidden-truth reward.")
@click.option("--detail", is_flag=True, help="Also print every design's power for every comparison.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Write the variance parts and the plan as JSON (a pilot for a later `capo power`).")
def power_(runs, target, level, metric, seeds, prompts, images, preset, design, rewards, roles, gold, detail, json_out):
    """Power planning: the variance parts of every head-to-head comparison of a pilot (RUN...: reproduce
    or eval runs with per-image results, a tables.csv, or a `capo power --json` file) and, for a target
    difference, the half-width and probability of a decided verdict per design (seeds x prompts x images
    per prompt), and the smallest design reaching --power (capo.eval.power; capo.experiments.power)."""
    def ints(v, name):
        try:
            return [int(x) for x in _csv(v)] if v else None
        except ValueError:
            _fail(f"--{name}: comma-separated integers expected, got {v!r}")

    try:
        text = PW.main(list(runs), target=target, level=level, metric=metric, seeds=ints(seeds, "seeds"),
                       prompts=ints(prompts, "prompts"), images=ints(images, "images"), preset=preset,
                       design=tuple(ints(design, "design")) if design else None, rewards=_csv(rewards),
                       roles=_csv(roles), gold=gold or None, detail=detail, json_out=json_out)
    except (FileNotFoundError, KeyError, ValueError) as e:
        _fail(str(e))
    click.echo(text, nl=False)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--preset", default="quick", show_default=True,
              help="quick | full | paper-sdxl | paper-sd3 | ... (configs/reproduce-*.yaml) or a YAML path.")
@click.option("--dry-run", is_flag=True, help="Print the plan (images, reward calls, runs, GPU-hours, disk, "
              "missing weights with the command that fetches each) and stop.")
@click.option("--scale", type=float, default=None, help="Run the same preset at this fraction of its size "
              "(prompt counts and steps), e.g. 0.001 for a smoke test.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def reproduce(preset, dry_run, scale, args):
    """Run everything Tables 1-5 need (reusing finished stages), then write reports.

    The shapes-world presets run anywhere on a CPU; paper-sdxl / paper-sd3 are the paper's own setup
    on real weights (GPUs). Extra key=value arguments override the preset (capo reproduce --preset
    quick steps=10).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _fail("reproduce runs in one process (it drives the other stages); run it plainly and give "
              "launch='accelerate launch ...' to run its generate, score and training stages on every GPU")
    try:
        extra = (["dry_run=true"] if dry_run else []) + ([f"scale={scale}"] if scale is not None else [])
        cfg = preset_config(preset, [*args, *extra])
        if cfg.dry_run:
            R.run(cfg)
            return
        with no_trace_on_failure(R.out_dir(cfg)):
            res = R.run(cfg)
    except (ConfigError, ValueError, ArtifactError, ModelLoadError, RewardLoadError, FileNotFoundError) as e:
        _fail(str(e))
    click.echo(f"reproduce: {res['bases']} in {res['seconds']:.0f}s -> {res['reports']}/tables.md")


reproduce.help += "\n\n" + _fields_help("capo.experiments.reproduce", "ReproduceConfig")


if __name__ == "__main__":
    main()
