"""Benchmark: how often `capo compare --fail-if` fires on noise, and how often on a real regression.

Two forms of the same gate, on the shapes world (``shapes-sdxl``), at `capo compare`'s
defaults (a 32-prompt subset of ``shapes:geneval`` stratified by tag, 4 images per prompt,
1000 bootstrap resamples over prompts, the model's own sampler settings):

* point form: ``geneval.overall < -0.02`` and ``winrate.shapes-gold < 50``;
* CI form: ``geneval.overall:ci_high < 0`` and ``winrate.shapes-gold:ci_high < 50``.

Null (false alarms): the model against itself, its second side drawn from other image
seeds: repetition ``r`` (1..R) compares base@seed 0 (the side `capo compare` would draw)
with base@seed ``r`` (per-item seeds ``capo.stages.generate.item_seed(seed, prompt_id, k)``).
Those R repetitions share the first side, so they estimate the false-alarm rate given
that side; the table also gives the rate over every ordered pair of the R + 1 base sides
(``all pairs``: each one a null comparison; the unconditional rate, more precisely).

Detection: a worse checkpoint, the base denoiser with Gaussian noise added to every weight
tensor (``w += noise * std(w) * N(0, 1)``, one fixed draw, ``--noise``), against the base at
the same seeds, as `capo compare` pairs them: repetition ``r`` compares base@``r`` and
worse@``r``. Its GenEval drop is printed (mean over the repetitions' pooled images).

Measured (this script, defaults but ``--noise 0.05,0.1``: 40 repetitions, 121 sides of 128
images, sampling ~95% of the time; on the 2-core CPU shared with other jobs, 1 torch thread,
7-9 img/s: 2,120 s in two runs through ``--cache``; a default run's 81 sides took 9.8 s each
at 2 threads beside one other busy process, ~13 min, and would take ~6-7 min at the README's
idle 30 img/s. Results do not depend on the thread count: the sides are identical.)

| gate | null, base@0 fixed | null, all 1640 pairs | noise 0.05 (GenEval -0.016) | noise 0.1 (-0.033) |
|---|---|---|---|---|
| ``geneval.overall < -0.02`` | 29/40 (72.5%) | 37.7% | 18/40 (45%) | 25/40 (62.5%) |
| ``geneval.overall:ci_high < 0`` | 4/40 (10%) | 4.1% | 3/40 (7.5%) | 4/40 (10%) |
| ``winrate.shapes-gold < 50`` | 5/40 (12.5%) | 47.1% | 33/40 (82.5%) | 39/40 (97.5%) |
| ``winrate.shapes-gold:ci_high < 50`` | 0/40 (0%) | 2.3% | 13/40 (32.5%) | 14/40 (35%) |

The CI form's unconditional false-alarm rate is within 5% (GenEval 4.1%, gold 2.3%); with
the first side fixed it depends on that side's luck (base@0 is +0.92 sd in GenEval: 10%;
median over the 41 choices 2.5%, range 0-35%). The bootstrap's width is right on average
(sd / SE 1.02), but ``geneval.overall`` at 32 prompts rests on ~5 effective prompts (the
one single_object prompt carries 38% of its variance, the two two_object ones 32%), so its
percentile CI's tail is thin: 4.1% one-sided against 1.9% for the unweighted mean over
images. A 2-3 point GenEval drop is invisible to the CI gate at 32 x 4 (SE ~0.06).

Each side's images are generated once (``R + 1`` base sides, ``R`` worse sides) and scored
once (GenEval correctness by ``capo.stages.evaluate.geneval_rows`` with the shapes
detector; the ``shapes-gold`` reward); deltas and win-rates come from
``capo.stages.evaluate._geneval_deltas`` (the eval stage's per-image tag weights) and
``capo.eval.winrate``; the gates from ``capo.report.compare.check_gates``.

    python bench/bench_gate.py [--reps 40] [--noise 0.1] [--limit 32] [--n 4] [--cache sides.npz]
    python bench/bench_gate.py --calibrate 0.05,0.1,0.2     # GenEval drop per noise scale
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("CAPO_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np

GATES = {  # (metric, form) -> gate expression
    ("geneval.overall", "point"): "geneval.overall < -0.02",
    ("geneval.overall", "CI"): "geneval.overall:ci_high < 0",
    ("winrate.shapes-gold", "point"): "winrate.shapes-gold < 50",
    ("winrate.shapes-gold", "CI"): "winrate.shapes-gold:ci_high < 50",
}


def noisy(model, scale: float, seed: int = 0):
    """``model`` with ``w += scale * std(w) * N(0, 1)`` on every denoiser weight tensor (in place)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            if p.numel() > 1 and p.dtype.is_floating_point:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


class Sides:
    """Per-image GenEval correctness and gold reward of one model at one base seed."""

    def __init__(self, records, n: int, batch_size: int):
        import pandas as pd

        from capo.rewards import load_reward
        from capo.worlds.shapes.evaluator import detect_batch

        self.records, self.n, self.batch_size = records, n, batch_size
        self.items = [(r, k) for r in records for k in range(n)]
        self.prompts = [r["prompt"] for r, _ in self.items]
        self.index = pd.DataFrame({"prompt_id": [r["prompt_id"] for r, _ in self.items],
                                   "sample_id": [k for _, k in self.items]})
        self.pids = self.index["prompt_id"].to_numpy()
        self.tags = np.array([r["tag"] for r, _ in self.items])
        self.by_id = {r["prompt_id"]: r for r in records}
        self.detector = lambda ims: detect_batch(np.stack(ims))  # noqa: E731
        self.gold = load_reward("shapes-gold")
        self.sample_seconds = 0.0
        self.score_seconds = 0.0

    def __call__(self, model, seed: int) -> dict:
        import torch

        from capo.stages.evaluate import geneval_rows
        from capo.samples import item_seed

        seeds = [item_seed(seed, r["prompt_id"], k) for r, k in self.items]
        t0 = time.perf_counter()
        with torch.inference_mode():
            images, _ = model.sample(self.prompts, seeds, batch_size=self.batch_size)
        t1 = time.perf_counter()
        rows = geneval_rows(self.by_id, self.index, images, self.detector)
        gold = np.asarray(self.gold(images, self.prompts), dtype=np.float64)
        self.sample_seconds += t1 - t0
        self.score_seconds += time.perf_counter() - t1
        return {"correct": np.array([r["correct"] for r in rows], dtype=np.float64), "gold": gold}


def metrics(model_side: dict, base_side: dict, tags, pids, n_boot: int) -> dict:
    """`compare_metrics`-shaped ``geneval.overall`` and ``winrate.shapes-gold`` of model vs base."""
    import pandas as pd

    from capo.eval.winrate import bootstrap_delta, win_rate
    from capo.stages.evaluate import _geneval_deltas

    f = pd.DataFrame({"tag": tags, "correct": model_side["correct"], "correct@base": base_side["correct"]})
    g = _geneval_deltas(f, pids, n_boot, bootstrap_delta)["overall"]
    w = win_rate(model_side["gold"], base_side["gold"], pids, n_boot=n_boot)
    return {"geneval.overall": {"value": g["delta"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "kind": "delta"},
            "winrate.shapes-gold": {"value": w["win_rate"], "ci_low": w["ci_low"], "ci_high": w["ci_high"],
                                    "kind": "%"}}


def overall(tags, side: dict) -> float:
    """GenEval overall of one side (the unweighted mean over tags, ``capo.eval.geneval.summarize``)."""
    from capo.eval.geneval import summarize

    return summarize([{"tag": t, "correct": c} for t, c in zip(tags, side["correct"])])["overall"]


def fires(m: dict) -> dict:
    from capo.report.compare import check_gates

    return {key: bool(check_gates(m, [expr])) for key, expr in GATES.items()}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def rate(flags: list[bool]) -> str:
    k, n = int(sum(flags)), len(flags)
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=40, help="repetitions of the null and of the worse model")
    ap.add_argument("--noise", default="0.1", help="relative weight noise of the worse checkpoint (several: "
                    "comma-separated, one worse checkpoint and column each)")
    ap.add_argument("--limit", type=int, default=32, help="prompts (stratified subset of shapes:geneval)")
    ap.add_argument("--n", type=int, default=4, help="images per prompt")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (capo eval's default)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--model", default="shapes-sdxl")
    ap.add_argument("--cache", default=None, metavar="NPZ",
                    help="keep the per-image results of every side here and reuse them when the settings match")
    ap.add_argument("--calibrate", default=None, metavar="SCALES",
                    help="only print the GenEval drop of each noise scale (comma-separated) on all of "
                         "shapes:geneval x --n images, seed 0")
    a = ap.parse_args(argv)

    import torch

    from capo.models import load_model
    from capo.prompts import load_prompts, strata_of

    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    if a.calibrate:
        records = load_prompts("shapes:geneval")
        sides = Sides(records, a.n, a.batch_size)
        base = sides(load_model(a.model).eval(), 0)
        ov = lambda side: overall(sides.tags, side)  # noqa: E731
        print(f"{a.model}: GenEval overall {ov(base):.3f} on {len(records)} prompts x {a.n}")
        for scale in [float(x) for x in a.calibrate.split(",")]:
            s = sides(noisy(load_model(a.model).eval(), scale), 0)
            m = metrics(s, base, sides.tags, sides.pids, a.n_boot)
            g, w = m["geneval.overall"], m["winrate.shapes-gold"]
            print(f"noise {scale:g}: overall {ov(s):.3f}, delta {g['value']:+.3f} [{g['ci_low']:+.3f}, "
                  f"{g['ci_high']:+.3f}], gold win-rate {w['value']:.1f} [{w['ci_low']:.1f}, {w['ci_high']:.1f}]"
                  f"  ({time.perf_counter() - t_start:.0f}s)", flush=True)
        return

    records = load_prompts("shapes:geneval", limit=a.limit, stratify=True)
    sides = Sides(records, a.n, a.batch_size)
    scales = [float(x) for x in str(a.noise).split(",")]
    print(f"{a.model}: {len(records)} prompts of shapes:geneval (stratified: "
          + ", ".join(f"{t} {c}" for t, c in strata_of(records).items())
          + f") x {a.n} images; {a.reps} repetitions; worse = weight noise {', '.join(map(str, scales))}; "
          f"{torch.get_num_threads()} torch threads", flush=True)

    # side results: {"base" | "noise<scale>": {seed: {"correct", "gold"}}}
    got: dict[str, dict[int, dict]] = {"base": {}, **{f"noise{x:g}": {} for x in scales}}
    key = f"{a.model}/{a.limit}/{a.n}/{a.batch_size}"
    if a.cache and os.path.isfile(a.cache):
        with np.load(a.cache) as z:
            if str(z["key"]) == key:
                for name in z.files:
                    if name != "key":
                        which, seed, field = name.split("-")
                        got.setdefault(which, {}).setdefault(int(seed), {})[field] = z[name]
    n_cached = sum(len(got[w]) for w in ["base"] + [f"noise{x:g}" for x in scales])
    if n_cached:
        print(f"  reusing {n_cached} sides from {a.cache}", flush=True)
    models = {"base": lambda: load_model(a.model).eval(),
              **{f"noise{x:g}": (lambda x: lambda: noisy(load_model(a.model).eval(), x))(x) for x in scales}}
    loaded: dict = {}
    n_sides = a.reps + 1 + a.reps * len(scales)
    for s in range(a.reps + 1):
        for which in models:
            if s not in got[which] and (which == "base" or s >= 1):
                if which not in loaded:
                    loaded[which] = models[which]()
                got[which][s] = sides(loaded[which], s)
        if s % 5 == 0 or s == a.reps:
            print(f"  seeds 0-{s} done ({time.perf_counter() - t_start:.0f}s)", flush=True)
            if a.cache:
                with open(a.cache + ".tmp", "wb") as fh:
                    np.savez(fh, key=key, **{f"{w}-{sd}-{f}": v for w, d in got.items()
                                             for sd, side in d.items() for f, v in side.items()})
                os.replace(a.cache + ".tmp", a.cache)
    t_gen = time.perf_counter()
    base = got["base"]

    def run(pairs):
        out, vals = [], []
        for model_side, base_side in pairs:
            m = metrics(model_side, base_side, sides.tags, sides.pids, a.n_boot)
            out.append(fires(m))
            vals.append(m)
        return out, vals

    null, null_m = run([(base[r], base[0]) for r in range(1, a.reps + 1)])
    pairs = [(i, j) for i in range(a.reps + 1) for j in range(a.reps + 1) if i != j]
    allp, allp_m = run([(base[i], base[j]) for i, j in pairs])
    det = {x: run([(got[f"noise{x:g}"][r], base[r]) for r in range(1, a.reps + 1)]) for x in scales}
    t_end = time.perf_counter()

    print()
    print(f"| gate | form | null: base@0 vs base@r (false alarms) | null: all {len(allp)} ordered pairs "
          + "".join(f"| worse (noise {x:g}) vs base, same seeds (detections) " for x in scales) + "|")
    print("|---|---|---|---|" + "---|" * len(scales))
    for k, expr in GATES.items():
        print(f"| `{expr}` | {k[1]} | {rate([f[k] for f in null])} | {rate([f[k] for f in allp])} "
              + "".join(f"| {rate([f[k] for f in det[x][0]])} " for x in scales) + "|")
    print()
    print("rates: count / repetitions = % [95% Wilson interval]")
    print()
    print("deltas (model - base; win-rate in %): mean and sd over the comparisons; the bootstrap's standard "
          "error is the mean CI width / 3.92, so sd / SE > 1 means CIs narrower than the spread")
    for name in ("geneval.overall", "winrate.shapes-gold"):
        for label, ms in (("null base@0 vs base@r", null_m), ("null all pairs", allp_m),
                          *((f"noise {x:g} vs base", det[x][1]) for x in scales)):
            v = np.array([m[name]["value"] for m in ms])
            se = np.mean([m[name]["ci_high"] - m[name]["ci_low"] for m in ms]) / 3.92
            print(f"  {name:20s} {label:22s} mean {v.mean():+8.3f}  sd {v.std(ddof=1):7.3f}  "
                  f"bootstrap SE {se:7.3f}  sd/SE {v.std(ddof=1) / se:5.2f}")
    ov = lambda side: overall(sides.tags, side)  # noqa: E731
    o = np.array([ov(base[s]) for s in range(a.reps + 1)])
    gold = np.array([base[s]["gold"].mean() for s in range(a.reps + 1)])
    print()
    print("the first side held fixed: CI-form false-alarm rate over the other base sides, for each of the "
          f"{a.reps + 1} base sides as the fixed one")
    for key in [k for k in GATES if k[1] == "CI"]:
        by_first = np.array([np.mean([f[key] for f, (i, j) in zip(allp, pairs) if j == first])
                             for first in range(a.reps + 1)])
        print(f"  `{GATES[key]}`: median {100 * np.median(by_first):.1f}%, range {100 * by_first.min():.1f}-"
              f"{100 * by_first.max():.1f}%, {int((by_first > 0.05).sum())} of {a.reps + 1} above 5%; "
              f"base@0 {100 * by_first[0]:.1f}%")
    z = lambda x: (x[0] - x.mean()) / x.std(ddof=1)  # noqa: E731
    print(f"  base@0 among the base sides: GenEval overall {o[0]:.3f} (z {z(o):+.2f}; sides {o.min():.3f}-"
          f"{o.max():.3f}), mean gold {gold[0]:.4f} (z {z(gold):+.2f})")
    # why the tag-weighted overall is noisier than its image count suggests: a few heavily
    # weighted prompts carry its variance (per prompt: weight^2 x the variance of a paired
    # 4-image mean difference at that prompt's accuracy over the base sides)
    acc = np.stack([base[s]["correct"] for s in range(a.reps + 1)]).mean(0)
    counts = {t: int((sides.tags == t).sum()) for t in set(sides.tags)}
    w = np.array([len(sides.tags) / (len(counts) * counts[t]) for t in sides.tags])
    import pandas as pd

    vp = pd.Series(w ** 2 * 2 * acc * (1 - acc)).groupby(sides.pids).mean() / a.n
    share = vp.groupby([sides.by_id[i]["tag"] for i in vp.index]).sum() / vp.sum()
    print(f"  geneval.overall rests on {vp.sum() ** 2 / (vp ** 2).sum():.1f} effective prompts of {len(vp)}; "
          "share of its variance by tag: " + ", ".join(f"{t} {100 * v:.0f}%" for t, v in share.items()))
    ob = np.mean([ov(base[r]) for r in range(1, a.reps + 1)])
    for x in scales:
        ow = np.mean([ov(got[f"noise{x:g}"][r]) for r in range(1, a.reps + 1)])
        wr = np.mean([m["winrate.shapes-gold"]["value"] for m in det[x][1]])
        print(f"worse, noise {x:g}: GenEval overall {ow:.3f} vs base {ob:.3f} ({ow - ob:+.3f}), gold win-rate "
              f"{wr:.1f} (means over the {a.reps} repetitions' seeds)")
    print(f"wall time {t_end - t_start:.0f}s: sampling {sides.sample_seconds:.0f}s, scoring "
          f"{sides.score_seconds:.0f}s ({n_sides - n_cached} new sides of {len(sides.items)} images), "
          f"bootstraps {t_end - t_gen:.0f}s ({len(null) + len(allp) + a.reps * len(scales)} comparisons)"
          + (f"; {n_cached} sides reused from {a.cache}" if n_cached else ""))


if __name__ == "__main__":
    main()
