"""The build driver, ``train_rewards`` (``capo world build`` calls it): data, training and
held-out figures of the three learned rewards, written to a directory.

Training (``train_rewards``), all from scratch on CPU, deterministic in ``seed`` when the
step counts (not the time budget) bind:

- data: ``images_per_record`` images for each of ``n_records`` training prompts
  (``grammar.prompt_sets(prompt_seed)["train"]``), drawn by a ``sample_images(records,
  rng)`` callable (``samplers``; by default ``render_sampler``). Every image is labelled
  once by the hidden truth (detections, alignment, aesthetic);
- each learned model: its loss in ``training``;
- figures: ``metrics.evaluate_rewards`` on held-out prompts and images.

The learned models are imperfect on purpose (small, briefly trained, noisy labels): that
is what makes calibration and multi-reward selection matter. ``train_rewards`` measures
each against the hidden truth on held-out prompts and images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..grammar import prompt_sets
from .metrics import evaluate_rewards
from .models import AESTHETIC, CLASSES, GOLD, LEARNED, PREF, VQA, GoldReward, _check_size
from ..pipeline import ShapesPipeline
from .samplers import mixed_sampler, pipeline_sampler, render_sampler
from .training import _pool, _torch_threads, train_aesthetic, train_pref, train_vqa


TRAIN_DEFAULTS = {
    # per size: data and steps. Step counts bind on an idle 2-core CPU; ``minutes`` is a cap.
    "tiny": dict(n_records=48, images_per_record=3, n_eval_records=24, eval_images_per_record=2,
                 steps={PREF: 30, VQA: 30, AESTHETIC: 30}, batch_size={PREF: 16, VQA: 16, AESTHETIC: 32},
                 lr={PREF: 2e-3, VQA: 2e-3, AESTHETIC: 2e-3}, vqa_targets="binary", vqa_negatives=1),
    "default": dict(n_records=2500, images_per_record=3, n_eval_records=600, eval_images_per_record=2,
                    steps={PREF: 450, VQA: 450, AESTHETIC: 300}, batch_size={PREF: 64, VQA: 64, AESTHETIC: 128},
                    lr={PREF: 1e-3, VQA: 1e-3, AESTHETIC: 1e-3}, vqa_targets="binary", vqa_negatives=1),
}
# Shares of ``minutes`` per phase (data generation and labelling, each model, evaluation).
TIME_SHARES = {"data": 0.15, PREF: 0.33, VQA: 0.28, AESTHETIC: 0.19, "eval": 0.05}


def _heldout_records(prompt_seed: int, n: int, rng: np.random.Generator) -> list[dict]:
    sets = prompt_sets(prompt_seed)
    held = [r for name, rs in sets.items() if name != "train" for r in rs]
    return [held[i] for i in np.sort(rng.permutation(len(held))[:n])]


def train_rewards(out_dir, seed: int = 0, minutes: float = 5.0, size: str = "default",
                  sample_images: Callable | None = None, base=None, base_fraction: float = 0.5,
                  prompt_seed: int = 0, threads: int | None = 1, show_progress: bool = True, **overrides) -> dict:
    """Train ``shapes-pref``, ``shapes-vqa`` and ``shapes-aesthetic`` from scratch and
    measure them against the hidden truth on held-out prompts; write each to
    ``out_dir/<name>/`` and the figures to ``out_dir/figures.json``; return the figures.

    Deterministic in ``seed`` (torch seeds and numpy Generators derived from it) as long
    as the step counts bind, not ``minutes`` (a wall-clock cap on each model's training,
    ``TIME_SHARES`` of it; data generation and evaluation are never cut).
    ``sample_images(records, rng)`` draws the images (default ``render_sampler()``);
    ``base`` (a ``ShapesPipeline`` or its directory) mixes in that base model's samples
    with probability ``base_fraction`` (slow: a default-size base model samples ~20
    images/s on one CPU thread, so 0.3 of the default pool adds about 3 minutes; proxies
    trained on renders alone score the base model's own samples close to chance, see the
    figures of a run with and without). Training prompts are
    ``prompt_sets(prompt_seed)["train"]``; held-out prompts are drawn from its other sets.
    ``overrides`` replace entries of ``TRAIN_DEFAULTS[size]`` (e.g. ``n_records=500``,
    ``steps={...}``). ``threads``: torch threads while training (1 is fastest on a
    shared 2-core CPU).

    Figures: per reward, ``pairwise_agreement`` with the truth's utility on held-out
    pairs (same prompt, two images), ``choice_agreement`` with one simulated rater's
    choices (the utility's own is the ceiling); for ``shapes-vqa`` AUC and accuracy on
    (image, own prompt) and (image, hard negative) pairs labelled by the truth; for
    ``shapes-aesthetic`` the correlation with ``truth.aesthetic``; ``conflict``: how
    ``shapes-aesthetic`` and ``shapes-vqa`` disagree on the held-out images.
    """
    import torch

    _check_size(size)
    t_start = time.monotonic()
    budget = 60.0 * float(minutes)
    cfg = dict(TRAIN_DEFAULTS[size])
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"unknown training option {key!r}; expected one of {sorted(cfg)}")
        cfg[key] = dict(cfg[key], **value) if isinstance(cfg[key], dict) else value
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if sample_images is None:
        sample_images = render_sampler()
        if base is not None:
            pipe = base if isinstance(base, ShapesPipeline) else ShapesPipeline.from_pretrained(base)
            sample_images = mixed_sampler([sample_images, pipeline_sampler(pipe)], [1 - base_fraction, base_fraction])
    source = getattr(sample_images, "description", repr(sample_images))
    ss = np.random.SeedSequence(seed)
    rng_train, rng_neg, rng_eval, rng_eval_neg, rng_pref, rng_vqa, rng_aes, rng_choice = (
        np.random.default_rng(s) for s in ss.spawn(8))

    def deadline(phase: str) -> float:
        return time.monotonic() + TIME_SHARES[phase] * budget

    with _torch_threads(threads):
        t0 = time.monotonic()
        train_records = prompt_sets(prompt_seed)["train"]
        chosen = np.sort(rng_train.permutation(len(train_records))[:cfg["n_records"]])
        train_records = [train_records[i] for i in chosen]
        k = cfg["images_per_record"]
        pool = _pool(train_records, k, sample_images, rng_train, rng_neg, "reward data (train)", show_progress)
        eval_records = _heldout_records(prompt_seed, cfg["n_eval_records"], rng_eval)
        k_eval = cfg["eval_images_per_record"]
        heldout = _pool(eval_records, k_eval, sample_images, rng_eval, rng_eval_neg, "reward data (held-out)",
                        show_progress)
        data = {"source": source, "train_records": len(train_records), "images_per_record": k,
                "train_images": int(len(pool["images"])), "eval_records": len(eval_records),
                "eval_images": int(len(heldout["images"])),
                "train_prompts_distinct": len({r["prompt"] for r in train_records}),
                "train_alignment_mean": float(pool["alignment"].mean()),
                "train_aesthetic_mean": float(pool["aesthetic"].mean()),
                "seconds": round(time.monotonic() - t0, 1)}

        models, training = {}, {}
        trainers = {
            PREF: lambda m, dl: train_pref(m, pool, k, rng_pref, cfg["steps"][PREF], cfg["batch_size"][PREF],
                                           cfg["lr"][PREF], dl, show_progress),
            VQA: lambda m, dl: train_vqa(m, pool, rng_vqa, cfg["steps"][VQA], cfg["batch_size"][VQA],
                                         cfg["lr"][VQA], dl, show_progress, targets=cfg["vqa_targets"],
                                         negatives=cfg["vqa_negatives"]),
            AESTHETIC: lambda m, dl: train_aesthetic(m, pool, rng_aes, cfg["steps"][AESTHETIC],
                                                     cfg["batch_size"][AESTHETIC], cfg["lr"][AESTHETIC], dl,
                                                     show_progress),
        }
        for j, name in enumerate(LEARNED):
            torch.manual_seed(seed * 1000 + j)
            model = CLASSES[name].build(size)
            training[name] = dict(trainers[name](model, deadline(name)), params=model.n_params())
            models[name] = model

        t0 = time.monotonic()
        rewards = dict(models, **{GOLD: GoldReward()})
        figures = evaluate_rewards(rewards, heldout, k_eval, rng_choice)
        figures["seconds"] = round(time.monotonic() - t0, 1)

    result = {"seed": seed, "size": size, "prompt_seed": prompt_seed, "minutes_budget": minutes,
              "config": cfg, "data": data, "training": training, "heldout": figures,
              "seconds_total": round(time.monotonic() - t_start, 1)}
    for name, model in models.items():
        model.info = {"seed": seed, "size": size, "data": data, "training": training[name],
                      "config": {k_: (v[name] if isinstance(v, dict) and name in v else v) for k_, v in cfg.items()},
                      "heldout": _model_figures(figures, name)}
        model.save_pretrained(out / name)
    (out / "figures.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=_json_default) + "\n")
    return result


def _model_figures(figures: dict, name: str) -> dict:
    out = {"pairwise_agreement": figures["pairwise_agreement"].get(name),
           "choice_agreement": figures["choice_agreement"].get(name)}
    if name == VQA and "vqa" in figures:
        out["vqa"] = figures["vqa"]
    if name == AESTHETIC and "aesthetic" in figures:
        out["aesthetic"] = figures["aesthetic"]
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def figures_table(result: dict) -> str:
    """A short markdown table of ``train_rewards``' held-out figures."""
    h = result["heldout"]
    rows = ["| reward | params | steps | agreement with utility | with simulated choices |",
            "|---|---:|---:|---:|---:|"]
    for name in (*LEARNED, GOLD):
        tr = result["training"].get(name, {})
        rows.append(f"| {name} | {tr.get('params', '-')} | {tr.get('steps', '-')} | "
                    f"{h['pairwise_agreement'][name]:.3f} | {h['choice_agreement'][name]:.3f} |")
    rows.append(f"| (simulated rater ceiling) | | | | {h['choice_agreement']['utility (ceiling)']:.3f} |")
    lines = ["\n".join(rows)]
    if "vqa" in h:
        lines.append(f"shapes-vqa: AUC {h['vqa']['auc']:.3f}, accuracy {h['vqa']['accuracy']:.3f} "
                     f"(n={h['vqa']['n']}, yes-rate {h['vqa']['yes_rate']:.2f})")
    if "aesthetic" in h:
        lines.append(f"shapes-aesthetic: Pearson {h['aesthetic']['pearson']:.3f}, "
                     f"Spearman {h['aesthetic']['spearman']:.3f} with truth.aesthetic")
    if "conflict" in h:
        c = h["conflict"]
        lines.append(f"conflict: corr(aesthetic, vqa) {c['pearson_aesthetic_vqa']:.3f} "
                     f"(truth: corr(aesthetic, alignment) {c['truth_pearson_aesthetic_alignment']:.3f}); "
                     f"pair disagreement {c['pair_disagreement_aesthetic_vqa']:.3f} "
                     f"(truth {c['truth_pair_disagreement_aesthetic_alignment']:.3f})")
    return "\n\n".join(lines)
