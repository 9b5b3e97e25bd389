"""Sampling speed of the shapes world's base models at their default sampler settings.

    python bench/bench_shapes_sampling.py                      # fresh default-size models
    python bench/bench_shapes_sampling.py --pipeline DIR ...   # trained pipelines
    python bench/bench_shapes_sampling.py --compile inductor   # eager vs torch.compile'd denoiser

Prints images/s (median of ``--repeats`` runs of ``--n`` images, batch 64) per model.
Weights do not change the cost, so untrained default-size models give the same figure
as the shipped ones. Share of the CPU matters: run it on an otherwise idle machine.

``--compile BACKEND`` (issue #21: is a compiled denoiser worth it?) times the same images
with the eager denoiser and with ``torch.compile(denoiser, backend=BACKEND)``, alternating
runs so both see the same machine, and prints the compile time (first call), the median
ratio, and how many uint8 image values the compiled run changes (fused kernels reorder
float operations, so images are equal only up to rounding).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def bench(pipe, n: int, repeats: int, steps=None, guidance=None, batch_size=None) -> dict:
    prompts = ["a photo of a red circle and a blue square", "a photo of three triangles",
               "a photo of a diamond right of a circle", "a photo of a green square"]
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    pipe.sample(prompts[:2], [0, 1], steps=2)  # warm-up
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        pipe.sample(prompts, list(range(r * n, (r + 1) * n)), steps=steps, guidance=guidance, batch_size=batch_size)
        rates.append(n / (time.perf_counter() - t0))
    return {"kind": pipe.kind, "steps": steps or pipe.default_steps,
            "guidance": pipe.default_guidance if guidance is None else guidance,
            "img_per_s": float(np.median(rates)), "runs": [round(x, 2) for x in rates]}


def compare_compiled(pipe, n: int, repeats: int, backend: str) -> dict:
    """Eager vs compiled denoiser on the same prompts and seeds, runs alternating."""
    prompts = [f"a photo of {c} {s}" for c in ("a red", "a blue", "two green", "three")
               for s in ("circles", "squares", "triangles", "diamonds")]
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    seeds = list(range(n))
    eager = pipe.denoiser
    compiled = torch.compile(eager, backend=backend)
    pipe.sample(prompts[:2], [0, 1], steps=2)  # warm-up (eager)
    pipe.denoiser = compiled
    t0 = time.perf_counter()
    pipe.sample(prompts, seeds)  # compiles for this batch shape
    compile_s = time.perf_counter() - t0
    times = {"eager": [], "compiled": []}
    out = {}
    for _ in range(repeats):
        for name, den in (("eager", eager), ("compiled", compiled)):
            pipe.denoiser = den
            t0 = time.perf_counter()
            out[name] = pipe.sample(prompts, seeds)[0]
            times[name].append(time.perf_counter() - t0)
    pipe.denoiser = eager
    te, tc = float(np.median(times["eager"])), float(np.median(times["compiled"]))
    diff = np.abs(out["eager"].astype(int) - out["compiled"].astype(int))
    return {"kind": pipe.kind, "eager_img_per_s": n / te, "compiled_img_per_s": n / tc, "ratio": te / tc,
            "first_call_s": compile_s, "values_changed": int((diff > 0).sum()), "values": int(diff.size),
            "max_change": int(diff.max())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", nargs="*", default=None, help="saved ShapesPipeline directories")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--compile", default=None, metavar="BACKEND", help="also time a torch.compile'd denoiser")
    args = ap.parse_args(argv)

    from capo.worlds.shapes.pipeline import ShapesPipeline, build_pipeline

    if args.pipeline:
        pipes = [ShapesPipeline.from_pretrained(p) for p in args.pipeline]
    else:
        from capo.worlds.shapes.grammar import VOCAB

        torch.manual_seed(0)
        pipes = [build_pipeline(kind, VOCAB, size="default").eval() for kind in ("sdxl-like", "sd3-like")]
    print(f"torch threads: {torch.get_num_threads()}")
    for pipe in pipes:
        if args.compile:
            r = compare_compiled(pipe, args.n, args.repeats, args.compile)
            print(f"{r['kind']:10s} eager {r['eager_img_per_s']:5.1f} img/s, {args.compile} {r['compiled_img_per_s']:5.1f} "
                  f"img/s: {r['ratio']:.2f}x (first call {r['first_call_s']:.0f} s); {r['values_changed']} of "
                  f"{r['values']} uint8 values changed, by at most {r['max_change']}")
            continue
        r = bench(pipe, args.n, args.repeats, args.steps, args.guidance, args.batch_size)
        print(f"{r['kind']:10s} steps={r['steps']:3d} guidance={r['guidance']:.1f}  "
              f"{r['img_per_s']:6.1f} img/s  (runs: {r['runs']})")


if __name__ == "__main__":
    main()
