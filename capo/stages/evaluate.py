"""Stage `eval`: evaluate models on a prompt set against the first (base) model.

Every model generates ``n`` images per prompt with the same per-item seeds
(``generate.item_seed``), so image k of prompt p is paired across models. Benchmarks:

* ``winrate``: per reward model, the win-rate (%) of each model's image over the base
  model's image for the same prompt and seed (ties count one half), the mean scores,
  and 95% bootstrap CIs over prompts (paper Tables 1, 2, 4). In the shapes world the
  ``shapes-gold`` reward is the hidden true preference: its win-rate is the gold one.
* ``geneval``: per-image correctness by GenEval's rules (``capo.eval.geneval``) on the
  detector's detections; task score = mean over images, overall = unweighted mean of
  the tags; deltas against the base with prompt-bootstrap CIs.
* ``compbench``: T2I-CompBench per-category scores (the shapes world's analogue through
  its evaluator; real models through BLIP-VQA / UniDet-style spatial / CLIPScore).
* ``divergence``: how far each model moved from the base on the win-rate prompts
  (``capo.eval.divergence``): the reverse-process KL term ``-w_t lambda'_t ||eps_theta -
  eps_ref||^2`` (constant weighting, mean over C x H x W) on the model's own images with
  ``n_t`` draws of (t, eps) per image, with a prompt-bootstrap CI, and the parameter
  distance ``||theta - theta_ref||``.

``limit`` draws a subset of K prompts per set stratified by tag / category (seeded by
``subset_seed``; ``capo.prompts.stratified_subset``), so a small subset still covers
every tag; ``results.json`` lists the tags each set covers (``strata``).

Layout of ``out``: ``samples/<label>/`` (a generate run per model),
``samples/<label>/rewards/<reward>/`` (score runs), ``results/<label>/<benchmark>.json``
(one per model and benchmark, with the manifest of the evaluation) and ``results.json``
(everything, the input of ``capo tables`` and ``capo compare``).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import field
from pathlib import Path
from typing import ClassVar

import numpy as np

from capo import artifacts
from capo import models
from capo.models import COMPILE_RULE
from capo.config import stage_config, to_dict
from capo.eval import divergence, geneval, protocol as P, t2i_compbench as T
from capo.eval.divergence import divergence_rows, param_distance_of
from capo.eval.dpg_bench import get_vqa, load_questions, PIC_NUM, score_images
from capo.eval.geneval import (
    clip_color_classifier,
    evaluate_objects,
    get_detector,
    result_record,
    select_objects,
    write_results_jsonl,
)
from capo.eval.image_sets import fingerprint, ImageSetError, read_image_set, to_samples_dir
from capo.eval.winrate import bootstrap_delta, win_rate
from capo.prompts import load_prompts, records_fingerprint, strata_of
from capo.registry import BENCHMARKS
from capo.samples import LatentCache, load_images
from capo.stages import generate, score
from capo.worlds.shapes.evaluator import detect_batch, score_compbench
from capo.worlds.shapes.pipeline import ShapesPipeline

SHAPES_REWARDS = ["shapes-pref", "shapes-vqa", "shapes-aesthetic", "shapes-gold"]
REAL_REWARDS = ["pickscore", "hps", "aesthetic", "vqascore"]


@stage_config
class EvalConfig:
    out: str  # output directory
    models: list[str] = field(default_factory=list)  # "label=spec" or spec; the FIRST is the base model
    images: list[str] = field(default_factory=list)  # instead of models: "label=DIR" image folders in capo's, GenEval's, T2I-CompBench's or DPG-Bench's layout, or prompt,path .jsonl/.csv tables; the FIRST is the base
    benchmarks: list[str] = field(default_factory=lambda: ["winrate"])  # benchmarks to run
    prompts: str | None = None  # win-rate prompts (default: shapes:geneval in the shapes world, parti otherwise)
    geneval_prompts: str | None = None  # GenEval-form set (default: shapes:geneval / geneval)
    compbench_prompts: list[str] | None = None  # CompBench sets (default: the world's categories)
    dpg_prompts: str | None = None  # DPG-Bench prompts (default: dpg-bench; SET@val / @test or a limit for a subset)
    dpg_vqa: str = "mplug"  # DPG-Bench VQA: mplug (upstream's, extra capo[dpg]) | blip-vqa (a named variant)
    dpg_questions: str | None = None  # DPG-Bench's dpg_bench.csv (default: the pinned upstream file, cached)
    rewards: list[str] | None = None  # reward models for win-rates (default: the world's set)
    n: int = 4  # images per prompt
    seed: int = 0  # base seed of the per-item seeds (shared by every model)
    limit: int | None = None  # K prompts of each prompt set, stratified by tag / category
    subset_seed: int = 0  # seed of the stratified subset
    n_t: int = 4  # divergence: (t, eps) draws per image
    detector: str = "auto"  # GenEval detector (auto: shapes for shapes models, else mask2former)
    compbench_detector: str = "auto"  # T2I-CompBench spatial / numeracy / 3d_spatial detector: unidet (upstream's, needs its detectron2 stack), owlv2 (open vocabulary), mask2former (COCO-80); auto: unidet if supplied, else owlv2
    steps: int | None = None  # sampler steps (default: each model's)
    guidance: float | None = None  # guidance scale (default: each model's)
    batch_size: int = 64  # images per sampler / reward call
    compile: str = "off"  # torch.compile of each model's denoiser for sampling (see capo generate)
    n_boot: int = 1000  # bootstrap resamples for the CIs
    overwrite: bool = False
    quiet: bool = False

    RULES: ClassVar[dict[str, str]] = {
        "benchmarks": "@benchmarks", "dpg_vqa": "mplug | blip-vqa", "rewards": "@rewards", "n": ">= 1", "seed": ">= 0",
        "limit": ">= 1", "subset_seed": ">= 0", "n_t": ">= 1", "detector": "auto | shapes | mask2former | mmdet",
        "compbench_detector": "auto | unidet | owlv2 | mask2former",
        "steps": ">= 1", "guidance": ">= 0", "batch_size": ">= 1", "n_boot": ">= 1", "compile": COMPILE_RULE}
    LATER: ClassVar[dict] = {"compile": "off"}  # keys added later (capo.config.to_dict)

    def contradictions(self):
        if not self.benchmarks:
            yield "benchmarks: name at least one"
        if bool(self.models) == bool(self.images):
            yield "name the models to evaluate (models=...) or image folders (images=...), one of the two"
        if self.images and "divergence" in self.benchmarks:
            yield "benchmarks: divergence needs the models themselves, not images= folders"
        if self.images and self.compile != "off":
            yield "compile: images= folders are scored as they are; nothing is sampled, so there is no denoiser to compile"
        if self.images and self.detector == "auto":
            yield "images=: name the detector (detector=shapes for shapes-world images, mask2former or mmdet)"
        try:
            parse_models(self.models or self.images)
        except ValueError as e:
            yield f"{'models' if self.models else 'images'}: {e}"


SHAPES_COMPBENCH = [f"shapes:compbench:{c}" for c in ("color", "shape", "texture", "spatial", "numeracy", "complex")]
REAL_COMPBENCH = [f"t2i-compbench:{c}" for c in ("color", "shape", "texture", "spatial", "non_spatial")]


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """``["base=shapes-sdxl", "runs/capo/final"]`` -> ``[(label, spec), ...]`` with unique labels."""
    out = []
    for s in specs:
        label, sep, spec = s.partition("=")
        if not sep:
            spec = s
            p = Path(s)
            label = p.parent.name if p.name == "final" else (p.name or s)
        label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "model"
        out.append((label, spec))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; name them as label=spec")
    if len(out) < 1:
        raise ValueError("eval needs at least one model or image folder")
    return out


def is_shapes_model(model) -> bool:
    return isinstance(model, ShapesPipeline)


# ----------------------------------------------------------------------------- per-image metrics
def geneval_rows(records_by_id: dict, index, images: np.ndarray, detector, color_fn=None,
                 samples: Path | None = None) -> list[dict]:
    """Per-image GenEval verdicts; each row also carries upstream's ``results.jsonl`` record
    (``upstream``: ``capo.eval.geneval.result_record``). ``color_fn`` classifies the colour of
    detections that carry none (the CLIP classifier for real detectors; built on first use)."""
    dets = detector(list(images))
    rows = []
    for (pid, sid, rel), img, d in zip(zip(index["prompt_id"], index["sample_id"], index["path"]), images, dets):
        rec = records_by_id[pid]
        if "tag" not in rec or "include" not in rec:
            raise ValueError(f"prompt {pid!r} has no GenEval metadata (tag, include): use a GenEval-form "
                             "prompt set such as geneval or shapes:geneval")
        objects = select_objects(d, rec["tag"])
        ok, reason = evaluate_objects(rec, objects, image=img, color_fn=color_fn)
        path = Path(rel) if samples is None else samples / rel
        rows.append({"prompt_id": pid, "sample_id": int(sid), "tag": rec["tag"], "correct": bool(ok), "reason": reason,
                     "upstream": result_record(str(path), rec, ok, reason, objects)})
    return rows


def lazy_color_fn(device=None):
    """GenEval's CLIP colour classifier, loaded the first time a detection needs a colour."""
    held: list = []

    def color_fn(image, det):
        if not held:
            held.append(clip_color_classifier(device=device))
        return held[0](image, det)

    return color_fn


def compbench_rows(records_by_id: dict, index, images: np.ndarray, scorer) -> list[dict]:
    cats = [records_by_id[pid].get("category") or records_by_id[pid].get("tag") for pid in index["prompt_id"]]
    scores = scorer(list(images), [records_by_id[p] for p in index["prompt_id"]])
    return [{"prompt_id": pid, "sample_id": int(sid), "category": c, "score": float(s)}
            for pid, sid, c, s in zip(index["prompt_id"], index["sample_id"], cats, scores)]


def shapes_compbench_scorer():
    def score(images, records):
        return [score_compbench(r, d) for r, d in zip(records, detect_batch(np.stack(images)))]

    return score


def real_compbench_scorer(detector: str = "auto", device=None, protocols: dict | None = None):
    """T2I-CompBench's per-category scorers for real images (``capo.eval.t2i_compbench.category_scorer``;
    lazy: each category's models load on its first use). ``detector`` scores spatial, numeracy,
    3d_spatial and complex's spatial part (auto: upstream's UniDet when supplied, else OWLv2);
    ``protocols`` receives each built scorer's protocol entry (exact or variant, and why)."""
    cache: dict = {}

    def get(cat, records):
        if cat not in cache:
            kinds = {r["prompt"]: r["complex_kind"] for r in records if "complex_kind" in r} if cat == "complex" else None
            cache[cat] = T.category_scorer(cat, device=device, detector=None if detector == "auto" else detector,
                                           kinds=kinds)
            if protocols is not None:
                protocols[cat] = getattr(cache[cat], "protocol", None) or T.PROTOCOL.get(cat)
        return cache[cat]

    def score(images, records):
        out = [0.0] * len(records)
        by_cat: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_cat.setdefault(r.get("category"), []).append(i)
        for cat, idx in by_cat.items():
            if cat is None:
                raise ValueError("T2I-CompBench images need their category: name the prompt set "
                                 "(compbench_prompts=t2i-compbench:<category>)")
            vals = get(cat, [records[i] for i in idx])([images[i] for i in idx], [records[i]["prompt"] for i in idx])
            for i, v in zip(idx, vals):
                out[i] = float(v)
        return out

    return score


def load_images_of(samples: Path, index) -> np.ndarray:
    return load_images(samples, index["path"])


# ----------------------------------------------------------------------------- run
def prompt_set_dir(prompt_set: str) -> str:
    """The directory name of a prompt set's samples: a named set as given, a file by its stem,
    with anything but ``[A-Za-z0-9_.-]`` replaced by ``-``; a name over 100 characters (a long
    union ``A+B+...``) keeps its first 80 and a hash of the whole."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(prompt_set).stem if Path(prompt_set).is_file() else prompt_set)
    if len(name) > 100:
        name = name[:80] + "-" + hashlib.sha256(prompt_set.encode()).hexdigest()[:12]
    return name


def run(cfg: EvalConfig) -> dict:
    import pandas as pd

    t0 = time.time()
    image_mode = bool(cfg.images)
    specs = parse_models(cfg.models or cfg.images)
    shapes = cfg.detector == "shapes" if image_mode else is_shapes_model(models.load_model(specs[0][1]))
    sets = benchmark_sets(cfg, image_mode, shapes)  # benchmark -> prompt sets (IMAGES: each folder's prompts)
    if "dpg" in sets:
        questions = load_questions(cfg.dpg_questions)  # a missing question file fails before any work
    all_sets = prompt_sets_of(sets)
    records = {ps: load_prompts(ps, limit=None if image_mode else cfg.limit, stratify=True, subset_seed=cfg.subset_seed)
               for ps in all_sets if ps != IMAGES}
    image_sets = read_image_folders(specs, sets, records) if image_mode else {}
    rewards = cfg.rewards if cfg.rewards is not None else (SHAPES_REWARDS if shapes else REAL_REWARDS)
    detector_name = ("shapes" if shapes else "mask2former") if cfg.detector == "auto" else cfg.detector

    out = Path(cfg.out)
    config = to_dict(cfg) | {"out": None, "overwrite": None, "quiet": None}
    if image_mode:
        inputs = {f"images:{ps}:{label}": {"path": str(s.root), "layout": s.layout, "sha256": fingerprint(s)}
                  for (ps, label), s in image_sets.items()}
    else:
        for _, spec in specs:  # a damaged checkpoint fails here, before anything is written
            models.check_model(spec)
        inputs = {f"model:{label}": {"path": spec, "sha256": models.model_fingerprint(spec)} for label, spec in specs}
    inputs |= {f"prompts:{ps}": {"path": ps, "sha256": records_fingerprint(r)} for ps, r in records.items()}
    manifest = artifacts.make_manifest("eval", config, inputs)
    if artifacts.prepare_out_dir(out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / "results.json"), "skipped": True}

    def samples_of(ps: str, label: str, spec: str) -> Path:
        d = out / "samples" / prompt_set_dir(ps) / label
        if image_mode:
            return to_samples_dir(image_sets[(ps, label)], d)
        generate.run(generate.GenerateConfig(model=spec, prompts=ps, out=str(d), n=cfg.n, seed=cfg.seed,
                                             limit=cfg.limit, stratify=True, subset_seed=cfg.subset_seed,
                                             steps=cfg.steps, guidance=cfg.guidance,
                                             batch_size=cfg.batch_size, cache="divergence" in cfg.benchmarks,
                                             compile=cfg.compile, quiet=cfg.quiet))
        return d

    def records_of(ps: str, label: str) -> list[dict]:
        return image_sets[(ps, label)].records if image_mode else records[ps]

    def per_image(bench: str, label: str, spec: str) -> pd.DataFrame:
        frames = []
        for ps in sets[bench]:
            d = samples_of(ps, label, spec)
            idx = artifacts.read_table(d / "index.parquet")
            by_id = {r["prompt_id"]: r for r in records_of(ps, label)}
            if bench == "winrate":
                score.run(score.ScoreConfig(samples=str(d), rewards=list(rewards), batch_size=cfg.batch_size,
                                            quiet=cfg.quiet))
                f = idx[["prompt_id", "sample_id"]].copy()
                for r in rewards:
                    f = f.merge(artifacts.read_table(d / "rewards" / r / "scores.parquet"), on=["prompt_id", "sample_id"])
            elif bench == "geneval":
                f = pd.DataFrame(geneval_rows(by_id, idx, load_images_of(d, idx), detector, color_fn, samples=d))
            elif bench == "dpg":
                f = dpg_frame(idx, d, questions, dpg_vqa, dpg_summaries.setdefault(spec, {}), ps)
            else:
                scorer = shapes_compbench_scorer() if shapes else real_compbench_scorer(cfg.compbench_detector,
                                                                                        protocols=compbench_protocols)
                f = pd.DataFrame(compbench_rows(by_id, idx, load_images_of(d, idx), scorer))
            f["prompt_id"] = ps + "/" + f["prompt_id"].astype(str)  # ids are unique per set only
            frames.append(f)
        f = pd.concat(frames, ignore_index=True)
        if "upstream" in f.columns:  # GenEval: upstream's results.jsonl beside capo's table
            write_results_jsonl(out / "results" / label / "geneval_results.jsonl", f.pop("upstream").tolist())
        artifacts.write_table(f, out / "results" / label / f"{bench}_per_image.parquet")
        return f

    dpg_summaries: dict = {}
    compbench_protocols: dict = {}  # category -> the protocol entry of the scorer that ran
    held_vqa: list = []

    def dpg_vqa():
        if not held_vqa:
            held_vqa.append(get_vqa(cfg.dpg_vqa))
        return held_vqa[0]

    color_fn = None
    if "geneval" in sets:
        if detector_name == "shapes":
            detector = lambda ims: detect_batch(np.stack(ims))  # noqa: E731
        else:
            detector = get_detector(detector_name)
            color_fn = lazy_color_fn()
    results: dict = {"base": specs[0][0], "models": dict(specs), "prompt_sets": sets,
                     "n_prompts": {ps: len(records_of(ps, specs[0][0])) for ps in all_sets},
                     "strata": {ps: strata_of(records_of(ps, specs[0][0])) for ps in all_sets},
                     "n_per_prompt": per_prompt_of(image_sets[next(iter(image_sets))]) if image_mode else cfg.n,
                     "images": {label: str(spec) for label, spec in specs} if image_mode else None,
                     "seed": cfg.seed, "rewards": list(rewards), "detector": detector_name,
                     "results": {label: {} for label, _ in specs}}
    memo: dict = {}  # one computation per (benchmark, model spec), however many labels name it
    frames = {bench: {label: memo[(bench, spec)] if (bench, spec) in memo else
                      memo.setdefault((bench, spec), per_image(bench, label, spec)) for label, spec in specs}
              for bench in sets if bench != "winrate" or "winrate" in cfg.benchmarks}
    if "divergence" in cfg.benchmarks:
        frames["divergence"] = divergence_frames(cfg, specs, sets["winrate"], records, samples_of)
    results["protocol"] = protocol_card(cfg, sets, records_of, specs, detector_name, shapes, rewards,
                                        image_sets, manifest, compbench_protocols)
    base_label = specs[0][0]
    for label, spec in specs:
        entry = results["results"][label]
        for bench in frames:
            if bench != "divergence" or label in frames["divergence"]:
                summary = BENCHMARKS.get(bench)  # capo.registry: the <bench>_summary functions below
                entry.update(summary(frames[bench], label, base_label, cfg.n_boot, dpg=dpg_summaries.get(spec)))
        if "divergence" in entry:
            artifacts.write_table(frames["divergence"][label]["rows"],
                                  out / "results" / label / "divergence_per_image.parquet")
        for bench in ("winrate", "geneval", "compbench", "dpg", "divergence"):
            if bench in entry:
                artifacts.write_json(out / "results" / label / f"{bench}.json",
                                     {"eval_run": manifest["run_key"], "model": dict(specs)[label],
                                      "prompt_sets": sets["winrate" if bench == "divergence" else bench],
                                      "result": entry[bench],
                                      "delta": entry.get(f"{bench}_delta")})
    artifacts.write_json(out / "results.json", results)
    artifacts.finish(out, manifest, counts={"models": len(specs), **{f"prompts:{k}": len(v) for k, v in records.items()}},
                     seconds=round(time.time() - t0, 3))
    return {**results, "skipped": False}


def benchmark_sets(cfg: EvalConfig, image_mode: bool, shapes: bool) -> dict[str, list[str]]:
    """Benchmark -> the prompt sets it reads: the config's, else the shapes world's or the real
    benchmark's own (image folders: ``IMAGES``, each folder's own prompts)."""
    sets = {}
    if "winrate" in cfg.benchmarks or "divergence" in cfg.benchmarks:
        sets["winrate"] = [cfg.prompts or (IMAGES if image_mode else "shapes:geneval" if shapes else "parti")]
    if "geneval" in cfg.benchmarks:
        sets["geneval"] = [cfg.geneval_prompts or (IMAGES if image_mode else "shapes:geneval" if shapes else "geneval")]
    if "compbench" in cfg.benchmarks:
        sets["compbench"] = list(cfg.compbench_prompts or ([IMAGES] if image_mode else
                                                           SHAPES_COMPBENCH if shapes else REAL_COMPBENCH))
    if "dpg" in cfg.benchmarks:
        if shapes:
            raise ValueError("benchmarks: dpg (DPG-Bench) has no shapes-world form; run it on real models or images")
        sets["dpg"] = [cfg.dpg_prompts or (IMAGES if image_mode else "dpg-bench")]
    return sets


# ----------------------------------------------------------------------------- per-benchmark summaries
# capo.registry.BENCHMARKS[bench](frames of every label, label, base label, n_boot, dpg=...) -> the results.json
# entries of one model: the benchmark's summary and, against the base, its paired deltas.
def _paired(frames: dict, label: str, base_label: str):
    return frames[label].merge(frames[base_label], on=["prompt_id", "sample_id"], suffixes=("", "@base"))


def winrate_summary(frames: dict, label: str, base_label: str, n_boot: int, **_) -> dict:
    """Per reward: the win-rate over the base with its CI, the mean score and its paired delta."""
    f = _paired(frames, label, base_label)
    pids = f["prompt_id"].to_numpy()
    rewards = [c for c in frames[label].columns if c not in ("prompt_id", "sample_id")]
    wr = {}
    for r in rewards:
        w = win_rate(f[r].to_numpy(), f[f"{r}@base"].to_numpy(), pids, n_boot=n_boot)
        d = bootstrap_delta(f[r].to_numpy(), f[f"{r}@base"].to_numpy(), pids, n_boot=n_boot)
        wr[r] = {**w, "score": w["mean_a"], "score_delta": d["delta"], "score_delta_ci": [d["ci_low"], d["ci_high"]]}
    return {"winrate": wr}


def geneval_summary(frames: dict, label: str, base_label: str, n_boot: int, **_) -> dict:
    """GenEval's per-tag and overall accuracy; against the base, their paired deltas."""
    out = {"geneval": geneval.summarize(frames[label].to_dict("records"))}
    if label != base_label:
        f = _paired(frames, label, base_label)
        out["geneval_delta"] = _geneval_deltas(f, f["prompt_id"].to_numpy(), n_boot, bootstrap_delta)
    return out


def compbench_summary(frames: dict, label: str, base_label: str, n_boot: int, **_) -> dict:
    """T2I-CompBench's per-category means; against the base, each category's paired delta."""
    out = {"compbench": T.summarize(frames[label].to_dict("records"))}
    if label != base_label:
        f = _paired(frames, label, base_label)
        out["compbench_delta"] = {}
        for cat in sorted(f["category"].unique()):
            m = (f["category"] == cat).to_numpy()
            out["compbench_delta"][cat] = bootstrap_delta(f.loc[m, "score"].to_numpy(), f.loc[m, "score@base"].to_numpy(),
                                                          f.loc[m, "prompt_id"].to_numpy(), n_boot=n_boot)
    return out


def dpg_summary(frames: dict, label: str, base_label: str, n_boot: int, dpg: dict | None = None, **_) -> dict:
    """DPG-Bench's summary per prompt set (upstream's, kept while scoring); the overall paired delta."""
    out = {"dpg": next(iter(dpg.values())) if len(dpg) == 1 else dict(dpg)}
    if label != base_label:
        f = _paired(frames, label, base_label)
        f = f[f["score"].notna() & f["score@base"].notna()]  # prompts upstream drops (KeyError) in either
        out["dpg_delta"] = {"overall": bootstrap_delta(f["score"].to_numpy(float), f["score@base"].to_numpy(float),
                                                       f["prompt_id"].to_numpy(), n_boot=n_boot)}
    return out


def divergence_summary(frames: dict, label: str, base_label: str, n_boot: int, **_) -> dict:
    """The reverse-process KL term from the base on the model's own images, and the parameter distance."""
    dv = frames[label]
    return {"divergence": {**divergence.divergence_summary(dv["rows"], n_boot=n_boot), "param_distance": dv["param_distance"]}}


IMAGES = "images"  # the prompt set of an image folder: the prompts its own layout names


def prompt_sets_of(sets: dict[str, list[str]]) -> list[str]:
    """Every prompt set the benchmarks use, once, sorted."""
    return sorted({p for v in sets.values() for p in v})


def read_image_folders(entries, sets, records) -> dict:
    """``{(prompt set, label): ImageSet}`` for ``images=`` folders, read and checked before any
    model loads; the folders of one prompt set must hold the same (prompt, image) items."""
    out = {}
    for ps in prompt_sets_of(sets):
        for label, path in entries:
            out[(ps, label)] = read_image_set(path, prompts=None if ps == IMAGES else records[ps])
        base = entries[0][0]
        items = {label: {(r["prompt_id"], r["sample_id"]) for r in out[(ps, label)].rows} for label, _ in entries}
        for label, _ in entries[1:]:
            if items[label] != items[base]:
                only_a = sorted(items[base] - items[label])
                only_b = sorted(items[label] - items[base])
                raise ImageSetError(
                    f"images {label!r} and {base!r} do not hold the same images of {ps!r}: "
                    f"{len(only_a)} only in {base!r} (e.g. {only_a[:3]}), {len(only_b)} only in {label!r} "
                    f"(e.g. {only_b[:3]}); comparisons pair image k of each prompt")
    return out


def protocol_card(cfg, sets, records_of, models, detector_name, shapes, rewards, image_sets, manifest,
                  compbench_protocols: dict) -> dict:
    """The evaluation's protocol card (``capo.eval.protocol``)."""
    base = models[0][0]
    card = {"capo": manifest.get("versions", {}).get("capo"), "git": manifest.get("git_commit"),
            "seed": None if cfg.images else cfg.seed, "source": "images" if cfg.images else "models",
            "images_per_prompt": per_prompt_of(image_sets[next(iter(image_sets))]) if image_sets else cfg.n,
            "prompt_sets": {}}
    for ps in prompt_sets_of(sets):
        recs = records_of(ps, base)
        card["prompt_sets"][ps] = P.prompt_set_part(ps, recs, records_fingerprint(recs),
                                                    None if cfg.images else cfg.limit, cfg.subset_seed)
    if "geneval" in sets:
        card["geneval"] = P.geneval_part(detector_name)
    if "compbench" in sets:
        cats = sorted({r.get("category") or r.get("tag") for ps in sets["compbench"] for r in records_of(ps, base)} - {None})
        card["compbench"] = P.compbench_part(cats, shapes, compbench_protocols)
    if "dpg" in sets:
        card["dpg"] = P.dpg_part(cfg.dpg_vqa, cfg.dpg_questions)
    if "winrate" in sets and "winrate" in cfg.benchmarks:
        card["winrate"] = P.winrate_part(list(rewards))
    return card


def dpg_frame(idx, samples: Path, questions, vqa, summaries: dict, ps: str):
    """DPG-Bench on one model's images: ``{prompt_id: [images]}`` (generated: the first 4 of each
    prompt, tiled as upstream's 2x2 grid; an image folder: its grid files) scored by
    ``capo.eval.dpg_bench.score_images``; one row per prompt (``score`` = the mean over tiles
    of the questions after the dependency rule), the summary kept in ``summaries[ps]``."""
    import pandas as pd

    images: dict[str, list] = {}
    for pid, sid, rel in sorted(zip(idx["prompt_id"], idx["sample_id"], idx["path"]), key=lambda t: (t[0], t[1])):
        images.setdefault(str(pid), []).append(str(samples / rel))
    grids = all(len(v) == 1 for v in images.values())
    value = {pid: (v[0] if grids else v[:PIC_NUM]) for pid, v in images.items()}
    pic_num = PIC_NUM if grids else min(PIC_NUM, min(len(v) for v in images.values()))
    res = score_images(value, vqa, questions=questions, expected_ids=list(value), pic_num=pic_num)
    summaries[ps] = res["summary"]
    return pd.DataFrame([{"prompt_id": r["item_id"], "sample_id": 0, "score": r["score"], "error": r["error"]}
                         for r in res["prompts"]])


def per_prompt_of(image_set) -> int:
    counts: dict = {}
    for r in image_set.rows:
        counts[r["prompt_id"]] = counts.get(r["prompt_id"], 0) + 1
    return max(counts.values())


def divergence_frames(cfg: EvalConfig, specs, prompt_sets, records, samples_of) -> dict:
    """Per model (the base excluded): divergence rows on the win-rate prompts, from the
    latents of its evaluation images (the same images the win-rates score), and the
    parameter distance."""
    import pandas as pd

    base = models.load_model(specs[0][1])
    out = {}
    for label, spec in specs[1:]:
        model = models.load_model(spec)
        rows = []
        for ps in prompt_sets:
            d = samples_of(ps, label, spec)
            idx = artifacts.read_table(d / "index.parquet")
            lat = LatentCache(d).latents(list(zip(idx["prompt_id"], idx["sample_id"].astype(int))))
            part = pd.DataFrame(divergence_rows(model, base, records[ps], n=cfg.n, seed=cfg.seed, n_t=cfg.n_t,
                                                batch_size=cfg.batch_size, latents=lat))
            part["prompt_id"] = ps + "/" + part["prompt_id"].astype(str)
            rows.append(part)
        out[label] = {"rows": pd.concat(rows, ignore_index=True), "param_distance": param_distance_of(model, base)}
    return out


def _geneval_deltas(f, pids, n_boot, bootstrap_delta) -> dict:
    """Per-tag deltas, and the overall delta with each image weighted so that the weighted
    mean is GenEval's unweighted mean over tags."""
    out = {}
    tags = f["tag"].to_numpy()
    a, b = f["correct"].to_numpy(float), f["correct@base"].to_numpy(float)
    for tag in sorted(set(tags)):
        m = tags == tag
        out[tag] = bootstrap_delta(a[m], b[m], pids[m], n_boot=n_boot)
    counts = {t: int((tags == t).sum()) for t in set(tags)}
    w = np.array([len(tags) / (len(counts) * counts[t]) for t in tags])
    out["overall"] = bootstrap_delta(a * w, b * w, pids, n_boot=n_boot)
    return out


def summary(cfg: EvalConfig, res: dict) -> str:
    """``capo eval``'s closing line."""
    return f"eval: {len(res['models'])} models on {res['n_prompts']} x {res['n_per_prompt']} images -> {cfg.out}/results.json"
