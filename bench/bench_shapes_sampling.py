"""Sampling speed of the shapes world's base models at their default sampler settings.

    python bench/bench_shapes_sampling.py                      # fresh default-size models
    python bench/bench_shapes_sampling.py --pipeline DIR ...   # trained pipelines

Prints images/s (median of ``--repeats`` runs of ``--n`` images, batch 64) per model.
Weights do not change the cost, so untrained default-size models give the same figure
as the shipped ones. Share of the CPU matters: run it on an otherwise idle machine.
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", nargs="*", default=None, help="saved ShapesPipeline directories")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
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
        r = bench(pipe, args.n, args.repeats, args.steps, args.guidance, args.batch_size)
        print(f"{r['kind']:10s} steps={r['steps']:3d} guidance={r['guidance']:.1f}  "
              f"{r['img_per_s']:6.1f} img/s  (runs: {r['runs']})")


if __name__ == "__main__":
    main()
