"""The budget of a whole experiment (``capo reproduce --dry-run``): per base model the images to
generate, the reward evaluations, the training runs and their steps, GPU-hours on the measured
throughput table (``capo.plan.ANCHOR``), disk, and the weights missing from this machine; and
the GRPO cells a preset would add (issue #22). Nothing is loaded. A training run's own memory
and time plan is ``capo.plan``; this module prices a preset made of many of them.
"""

from __future__ import annotations

from capo import weights
from capo.experiments.preset import benchmark_sets, cells, prompt_count, scaled
from capo.plan import ANCHOR, GPUS, grpo_plan, kind_of, plan
from capo.vocabulary import OBJECTIVES

# Sizes of a generated sample on disk, per kind at the native resolution: the PNG (an estimate:
# a 1024 x 1024 RGB PNG of a generated image, ~1.5 MB; capo's assumption, not a measurement) and
# the training cache exactly as `capo generate` writes it (float32 latents (C, H/8, W/8) per image;
# float32 text embeddings per prompt: SDXL hidden (77, 2048) + pooled 1280; SD3 hidden
# (77 + 256 T5 tokens, 4096) + pooled 2048).
PNG_BYTES = 1.5e6
LATENT_BYTES = {"sdxl": 4 * 128 * 128 * 4, "sd3": 16 * 128 * 128 * 4}
TEXT_BYTES = {"sdxl": (77 * 2048 + 1280) * 4, "sd3": ((77 + 256) * 4096 + 2048) * 4}


def experiment(cfg, memo: dict | None = None) -> dict:
    """The plan of a ``capo reproduce`` config (``ReproduceConfig``): per base model the images
    to generate, reward evaluations, training runs and steps, GPU-hours on ``cfg.gpu`` from the
    measured throughput table (``ANCHOR``), disk, and the weights missing from this machine.
    Nothing is loaded; prompt files are read when present. ``memo``: a dict that keeps the
    prompt counts between calls (a planner pricing many designs of one preset)."""

    def count(spec, limit):
        if memo is None:
            return prompt_count(spec, limit)
        if (spec, limit) not in memo:
            memo[(spec, limit)] = prompt_count(spec, limit)
        return memo[(spec, limit)]
    import collections
    import glob

    if cfg.gpu not in GPUS:
        raise ValueError(f"no throughput measured for GPU {cfg.gpu!r}; known: {', '.join(GPUS)}")
    cfg = scaled(cfg)
    opts = cfg.train_options
    pairs_per_step = cfg.batch_size * int(opts.get("grad_accum", 1)) * cfg.gpus
    L, gold = len(cfg.rewards), (1 if cfg.gold else 0)
    out = {"preset": cfg.preset, "gpu": cfg.gpu, "gpus": cfg.gpus, "bases": {}, "source": ANCHOR["source"],
           "pairs_per_step": pairs_per_step, "exact_counts": True}
    K, ok_k = count(cfg.train_prompts, cfg.train_limit)
    V, ok_v = count(cfg.val_prompts, cfg.val_limit)
    E, ok_e = count(cfg.eval_prompts, cfg.eval_limit)
    out["exact_counts"] = ok_k and ok_v and ok_e
    out["prompts"] = {"train": K, "val": V, "test": E}
    if K is None:
        raise ValueError(f"train_limit: needed for a plan ({cfg.train_prompts} cannot be counted here)")
    n_max = max([cfg.n, *cfg.n_ablation])
    cl = cells(cfg, collections.defaultdict(str))
    runs_sweep = sum(len(cfg.betas[c["objective"]]) for c in cl.values())
    runs_seeds = len(cl) * (len(cfg.seeds) - 1)
    soups = len(OBJECTIVES) * len(cfg.seeds)
    models_eval = 1 + len(cl) * len(cfg.seeds) + soups
    for base in cfg.bases:
        kind = kind_of(base)
        gen_train = K * n_max
        gen_val = (runs_sweep + 1) * V * cfg.val_n
        gen_eval = models_eval * E * cfg.eval_n
        gen_bench = 0
        if cfg.benchmarks:
            geneval, compbench = benchmark_sets(cfg, base)
            per_model = 0
            for spec in [geneval, *compbench]:
                c, ok = count(spec, cfg.eval_limit)
                per_model += c or 0
                out["exact_counts"] &= ok
            gen_bench = (1 + len(cfg.seeds)) * per_model * cfg.eval_n
        images = gen_train + gen_val + gen_eval + gen_bench
        reward_calls = gen_train * L + (gen_val + gen_eval) * (L + gold)
        runs = runs_sweep + runs_seeds
        steps = runs * cfg.steps
        pairs = steps * pairs_per_step
        mode = "lora64" if cfg.lora_rank else "full"
        thr_img = ANCHOR["sample"].get(kind)
        thr_pairs = ANCHOR["train"].get((kind, mode))
        h_sample = images / thr_img / 3600 if thr_img else None
        h_train = pairs / thr_pairs[2] / 3600 if thr_pairs else None
        disk = None
        if kind in LATENT_BYTES:
            disk = {"samples (PNG, estimate)": gen_train * PNG_BYTES,
                    "latent cache (float32)": gen_train * LATENT_BYTES[kind] + K * TEXT_BYTES[kind],
                    "evaluation images (PNG, estimate)": (gen_val + gen_eval + gen_bench) * PNG_BYTES}
        mem = None
        if kind != "shapes":
            mem = plan(base, lora_rank=cfg.lora_rank, mixed_precision=opts.get("mixed_precision", "no"),
                       optimizer=opts.get("optimizer", "adamw"), checkpointing=opts.get("gradient_checkpointing", "auto"),
                       pairs_per_gpu=cfg.batch_size, accum=int(opts.get("grad_accum", 1)), gpus=cfg.gpus,
                       gpu=cfg.gpu, steps=cfg.steps)
        out["bases"][base] = {
            "kind": kind, "cells": len(cl), "runs_sweep": runs_sweep, "runs_seeds": runs_seeds, "soups": soups,
            "models_eval": models_eval,
            "images": {"training samples": gen_train, "validation (beta selection)": gen_val,
                       "test (win-rates)": gen_eval, "benchmarks (GenEval, CompBench)": gen_bench, "total": images},
            "reward_evaluations": reward_calls, "training_runs": runs, "optimizer_steps": steps, "pairs": pairs,
            "gpu_hours": {"sampling": h_sample, "training": h_train,
                          "total": (h_sample + h_train) if h_sample is not None and h_train is not None else None},
            "disk_bytes": disk, "peak_gib_per_gpu": mem["peak_gib_per_gpu"] if mem else None,
            "static_gib_per_gpu": mem["static_gib_total"] if mem else None}
    names = list(cfg.bases) + list(cfg.rewards) + ([cfg.gold] if cfg.gold else [])
    names += [cfg.train_prompts, cfg.val_prompts, cfg.eval_prompts]
    if cfg.benchmarks and any(kind_of(b) != "shapes" for b in cfg.bases):
        names += ["geneval", "compbench"]
    miss = weights.missing(names)
    if cfg.human_pairs and cfg.pickapic and not glob.glob(cfg.pickapic):
        miss.append(weights.Need("Pick-a-Pic v2 train shards (Table 4's human labels)", "path", cfg.pickapic,
                                 "hf download yuvalkirstain/pickapic_v2 --repo-type dataset --include 'data/train-*' "
                                 f"--local-dir DIR  # then pickapic='DIR/data/train-*.parquet' (now {cfg.pickapic!r})"))
    out["missing"] = [{"what": m.what, "source": m.source, "fetch": m.fetch()} for m in miss]
    tot = [b["gpu_hours"]["total"] for b in out["bases"].values()]
    out["gpu_hours_total"] = sum(tot) if tot and all(t is not None for t in tot) else None
    out["days_on_gpus"] = out["gpu_hours_total"] / 24 / cfg.gpus if out["gpu_hours_total"] else None
    return out


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else ("-" if x is None else f"{x:,.1f}")


def render_experiment(p: dict) -> str:
    approx = "" if p["exact_counts"] else " (≈: some prompt files are not cached; upstream set sizes used)"
    pr = p["prompts"]
    lines = [f"plan: capo reproduce --preset {p['preset']} on {p['gpus']} x {GPUS[p['gpu']]}{approx}",
             f"  prompts: {_n(pr['train'])} training, {_n(pr['val'])} validation, {_n(pr['test'])} test; "
             f"{_n(p['pairs_per_step'])} pairs per optimizer step (batch x grad_accum x {p['gpus']} GPUs)"]
    for base, b in p["bases"].items():
        lines.append(f"  {base} ({b['kind']}): {b['cells']} cells, {b['runs_sweep']} sweep runs + {b['runs_seeds']} "
                     f"more seeds = {b['training_runs']} training runs ({_n(b['optimizer_steps'])} steps, "
                     f"{_n(b['pairs'])} pairs), {b['soups']} soups, {b['models_eval']} models evaluated")
        for k, v in b["images"].items():
            lines.append(f"    images {k:<34} {_n(v):>14}")
        lines.append(f"    reward evaluations {'':<24} {_n(b['reward_evaluations']):>14}")
        g = b["gpu_hours"]
        lines.append("    GPU-hours: " + (f"sampling {_n(g['sampling'])} + training {_n(g['training'])} = {_n(g['total'])}"
                                         if g["total"] is not None else
                                         f"sampling {_n(g['sampling'])}, training {_n(g['training'])} "
                                         "(- : no measured throughput for this model / setting)")
                     + "; reward scoring not included (no measured throughput)")
        if b["peak_gib_per_gpu"] is not None or b["static_gib_per_gpu"] is not None:
            lines.append("    memory per GPU (capo train dry_run): " + (
                f"{b['peak_gib_per_gpu']:.1f} GiB peak" if b["peak_gib_per_gpu"] is not None
                else f">= {b['static_gib_per_gpu']:.1f} GiB before activations"))
        if b["disk_bytes"]:
            lines.append("    disk: " + ", ".join(f"{k} {v / 1e9:,.0f} GB" for k, v in b["disk_bytes"].items()))
    if p["gpu_hours_total"] is not None:
        lines.append(f"  total: {p['gpu_hours_total']:,.0f} GPU-hours ({p['days_on_gpus']:,.1f} days on {p['gpus']} GPUs)")
    lines.append(f"  throughput: {p['source']}; sampling {ANCHOR['sample']} images/s at 50 steps with CFG")
    if p["missing"]:
        lines.append(f"  missing on this machine ({len(p['missing'])}):")
        for m in p["missing"]:
            lines.append(f"    - {m['what']} [{m['source']}]: {m['fetch']}")
    else:
        lines.append("  every weight and data file is on this machine")
    return "\n".join(lines)


def grpo_cells(cfg, *, group_size: int = 8, sample_steps: int | None = None, grpo_steps: int = 0,
               grpo_updates: int = 1, steps: int | None = None, batch_size: int | None = None,
               betas: int | None = None, beta: float = 1.0, memo: dict | None = None) -> dict:
    """The GRPO cells a ``capo reproduce`` config (``ReproduceConfig``) would add (issue #22): one
    per reward set (each training reward alone, and the mix of all of them when there are several)
    and advantage (``sum``, ``calibrated``), each swept over ``betas`` KL coefficients (default:
    as many as the CaPO grid) on ``seeds[0]`` and trained on the other seeds at the selected one,
    evaluated on the validation and test prompts as the DPO / CaPO cells. Per run, the GRPO keys:
    ``batch_size`` prompts per GPU per rollout (default the preset's ``batch_size``), ``group_size``,
    ``sample_steps`` (default the model's), ``grpo_steps`` (0: all), ``grpo_updates``, ``steps``
    (default the preset's); ``beta`` > 0 prices the reference pass. GPU-hours: the runs'
    (``grpo_plan`` on ``cfg.gpus`` GPUs) and the sampling of their validation and test images."""
    cfg = scaled(cfg)
    opts = cfg.train_options
    steps = cfg.steps if steps is None else steps
    B = cfg.batch_size if batch_size is None else batch_size
    n_betas = len(cfg.betas["capo"]) if betas is None else betas
    L, gold = len(cfg.rewards), (1 if cfg.gold else 0)
    sets = [(f"single-{r}", 1) for r in cfg.rewards] + ([("mix", L)] if L > 1 else [])
    labels = [(f"grpo-{adv}-{s}", n) for s, n in sets for adv in ("sum", "calibrated")]
    runs_sweep, runs_seeds = len(labels) * n_betas, len(labels) * (len(cfg.seeds) - 1)
    runs = runs_sweep + runs_seeds

    def prompts(spec, limit):
        if memo is not None and (spec, limit) in memo:
            return memo[(spec, limit)]
        got = prompt_count(spec, limit)
        if memo is not None:
            memo[(spec, limit)] = got
        return got

    (V, ok_v), (E, ok_e) = prompts(cfg.val_prompts, cfg.val_limit), prompts(cfg.eval_prompts, cfg.eval_limit)
    out = {"cells": [lab for lab, _ in labels], "runs_sweep": runs_sweep, "runs_seeds": runs_seeds,
           "training_runs": runs, "betas": n_betas, "exact_counts": ok_v and ok_e, "gpus": cfg.gpus, "gpu": cfg.gpu,
           "keys": {"group_size": group_size, "batch_size": B, "sample_steps": sample_steps, "grpo_steps": grpo_steps,
                    "grpo_updates": grpo_updates, "steps": steps, "beta": beta}, "bases": {}}
    for base in cfg.bases:
        kind = kind_of(base)
        p = grpo_plan(base, lora_rank=cfg.lora_rank, mixed_precision=opts.get("mixed_precision", "no"),
                      optimizer=opts.get("optimizer", "adamw"), checkpointing=opts.get("gradient_checkpointing", "auto"),
                      batch_size=B, group_size=group_size, sample_steps=sample_steps, grpo_steps=grpo_steps,
                      grpo_updates=grpo_updates, grad_accum=int(opts.get("grad_accum", 1)), beta=beta,
                      gpus=cfg.gpus, gpu=cfg.gpu, steps=steps)
        r = p["per_run_per_gpu"]
        per_run = {k: r[k] * cfg.gpus for k in ("rollout_images", "rollout_passes", "update_passes", "reference_passes")}
        rollout_images = runs * per_run["rollout_images"]
        gen_val = runs_sweep * V * cfg.val_n
        gen_eval = len(labels) * len(cfg.seeds) * E * cfg.eval_n
        reward_calls = (sum(n for _, n in labels) * (n_betas + len(cfg.seeds) - 1) * per_run["rollout_images"]
                        + (gen_val + gen_eval) * (L + gold))
        thr_img = ANCHOR["sample"].get(kind)
        h_eval = (gen_val + gen_eval) / thr_img / 3600 if thr_img else None
        sec = p["pass_seconds"]
        h = None
        if sec is not None:
            h = {"rollouts": runs * per_run["rollout_passes"] * sec["forward"] / 3600,
                 "updates": runs * per_run["update_passes"] * sec["forward_backward"] / 3600,
                 "reference": runs * per_run["reference_passes"] * sec["forward"] / 3600, "evaluation": h_eval}
            h["total"] = sum(h.values())
        dpo_pairs = cfg.steps * cfg.batch_size * int(opts.get("grad_accum", 1)) * cfg.gpus
        out["bases"][base] = {
            "kind": kind, "sample_steps": p["sample_steps"], "trained_steps": p["trained_steps"], "cfg": p["cfg"],
            "per_run": per_run, "dpo_run_passes": 2 * dpo_pairs,
            "images": {"rollouts (training)": rollout_images, "validation (beta selection)": gen_val,
                       "test (win-rates)": gen_eval, "total": rollout_images + gen_val + gen_eval},
            "reward_evaluations": reward_calls, "gpu_hours": h,
            "peak_gib_per_gpu": p["peak_gib_per_gpu"], "static_gib_per_gpu": p["static_gib_total"]}
    tot = [b["gpu_hours"]["total"] if b["gpu_hours"] else None for b in out["bases"].values()]
    out["gpu_hours_total"] = sum(tot) if tot and all(t is not None for t in tot) else None
    return out


def render_grpo_cells(g: dict) -> str:
    k = g["keys"]
    approx = "" if g["exact_counts"] else " (≈: prompt files not cached; upstream set sizes used)"
    lines = [f"  GRPO cells (grpo=true: priced here; the comparison runs in capo online, configs/grpo-shapes.yaml){approx}: {len(g['cells'])} cells "
             f"(each training reward alone{' and their mix' if any(c.endswith('-mix') for c in g['cells']) else ''}"
             f" x advantage sum | calibrated), {g['runs_sweep']} sweep runs ({g['betas']} KL coefficients each) + "
             f"{g['runs_seeds']} more seeds = {g['training_runs']} training runs",
             f"    per run: {k['steps']} steps of batch_size {k['batch_size']} prompts x group_size {k['group_size']} "
             f"images per GPU, sample_steps {k['sample_steps'] or 'the model’s'}, grpo_steps {k['grpo_steps'] or 'all'}, "
             f"grpo_updates {k['grpo_updates']}, "
             + ("beta > 0 (a reference pass per trained pass)" if k["beta"] > 0 else "beta = 0 (no reference pass)")]
    for base, b in g["bases"].items():
        r = b["per_run"]
        lines.append(f"    {base} ({b['kind']}): N = {b['sample_steps']} chain steps, K = {b['trained_steps']} trained, "
                     f"c = {b['cfg']}; per run {_n(r['rollout_images'])} rollout images, {_n(r['rollout_passes'])} "
                     f"rollout passes, {_n(r['update_passes'])} forward+backward passes (a DPO / CaPO run: "
                     f"{_n(b['dpo_run_passes'])}, on offline samples)")
        for key, v in b["images"].items():
            lines.append(f"      images {key:<32} {_n(v):>14}")
        lines.append(f"      reward evaluations {'':<22} {_n(b['reward_evaluations']):>14}")
        h = b["gpu_hours"]
        lines.append("      GPU-hours: " + (f"rollouts {_n(h['rollouts'])} + updates {_n(h['updates'])} + reference "
                                           f"{_n(h['reference'])} + evaluation sampling {_n(h['evaluation'])} = "
                                           f"{_n(h['total'])}" if h else "- (no measured throughput for this model)")
                     + "; reward scoring not included")
        if b["peak_gib_per_gpu"] is not None or b["static_gib_per_gpu"] is not None:
            lines.append("      memory per GPU (capo train objective=grpo dry_run): " + (
                f"{b['peak_gib_per_gpu']:.1f} GiB peak" if b["peak_gib_per_gpu"] is not None
                else f">= {b['static_gib_per_gpu']:.1f} GiB before activations"))
    if g["gpu_hours_total"] is not None:
        lines.append(f"  GRPO total: {g['gpu_hours_total']:,.0f} GPU-hours ({g['gpu_hours_total'] / 24 / g['gpus']:,.1f} "
                     f"days on {g['gpus']} GPUs), beside the plan above")
    return "\n".join(lines)
