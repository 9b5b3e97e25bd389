"""Scoring speed of the shapes world's reward models, at batch 64.

    python bench/bench_shapes_rewards.py                  # fresh default-size models
    python bench/bench_shapes_rewards.py --dir OUT        # trained ones (train_rewards(OUT))
    python bench/bench_shapes_rewards.py --artifacts      # the shipped ones

Prints images/s (median of ``--repeats`` runs over ``--n`` images) for shapes-pref,
shapes-vqa, shapes-aesthetic and shapes-gold (the hidden truth: detector + utility, no
network). Weights do not change the cost of the learned models, so untrained
default-size models give the same figures as trained ones. Share of the CPU matters:
run it on an otherwise idle machine (``--threads`` sets torch's thread count).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def bench(reward, images, prompts, repeats: int) -> float:
    reward(images[:4], prompts[:4])  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reward(images, prompts)
        rates.append(len(images) / (time.perf_counter() - t0))
    return float(np.median(rates))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="a train_rewards output directory")
    ap.add_argument("--artifacts", action="store_true", help="load the shipped reward models")
    ap.add_argument("--size", default="default", choices=["tiny", "default"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from pathlib import Path

    from capo.worlds.shapes import grammar
    from capo.worlds.shapes import rewards as R

    if args.threads:
        torch.set_num_threads(args.threads)
    records = grammar.prompt_sets(0)["geneval"]
    records = [records[i % len(records)] for i in range(args.n)]
    images = R.render_sampler()(records, np.random.default_rng(0))
    prompts = [r["prompt"] for r in records]

    models = {}
    for j, name in enumerate(R.LEARNED):
        if args.dir or args.artifacts:
            path = Path(args.dir) / name if args.dir else None
            models[name] = R.CLASSES[name].from_pretrained(path or R.artifact_dir(name), batch_size=args.batch_size)
        else:
            torch.manual_seed(j)
            models[name] = R.CLASSES[name].build(args.size, batch_size=args.batch_size)
    models[R.GOLD] = R.GoldReward()
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch_size}, {args.n} images")
    for name, reward in models.items():
        params = reward.n_params() if hasattr(reward, "n_params") else 0
        rate = bench(reward, images, prompts, args.repeats)
        print(f"{name:17s} {params:8d} params  {rate:8.1f} img/s")


if __name__ == "__main__":
    main()
