"""Where the time of one `capo reproduce --preset full` training run goes (issue #21: measure
first). A run of the full preset is one `capo sweep` grid point: `capo train` (40 steps of 16
pairs) and the validation of its checkpoint (50 prompts x 1 image: sampling, three rewards and
the gold, the divergence with 2 draws). This times one such grid point on a shapes base, in
phases, and prints cProfile's heaviest functions by their own time.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 CAPO_CACHE=... python bench/bench_training_run.py [shapes-sdxl] [--top 25]

Prints: seconds per phase (generate + score + pairs of the training samples are set-up, not
part of a run), and the profile of the grid point. One run on a noisy machine: read ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capo.stages import generate, pairs, score, sweep  # noqa: E402

REWARDS = ["shapes-pref", "shapes-vqa", "shapes-aesthetic"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="shapes-sdxl")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--prompts", type=int, default=32, help="training prompts of the pairs (the preset has 128)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="capo-bench-run-"))
    t = time.perf_counter()
    generate.run(generate.GenerateConfig(model=args.model, prompts="shapes:train", out=str(root / "samples"), n=16,
                                         limit=args.prompts, quiet=True))
    score.run(score.ScoreConfig(samples=str(root / "samples"), rewards=REWARDS, quiet=True))
    tables = [str(root / "samples" / "rewards" / r / "scores.parquet") for r in REWARDS]
    pairs.run(pairs.PairsConfig(rewards_tables=tables, out=str(root / "pairs"), selector="frs"))
    setup_s = time.perf_counter() - t
    cfg = sweep.SweepConfig(model=args.model, pairs=str(root / "pairs"), out=str(root / "sweep"), objective="capo",
                            betas=[500.0], widen=0, rewards=REWARDS, report_rewards=["shapes-gold"],
                            val_prompts="shapes:geneval@val", val_n=1, n_t=2, steps=40, batch_size=16, lr=1e-5,
                            base_cache=str(root / "val-base"), quiet=True)
    # the base model's validation scores are computed once per base and cached: time them apart
    t = time.perf_counter()
    from capo.prompts import load_prompts

    records = load_prompts(cfg.val_prompts, limit=cfg.val_limit, stratify=True)
    sweep.base_validation(cfg, records, REWARDS + ["shapes-gold"])
    base_val_s = time.perf_counter() - t
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    sweep.run(cfg)
    prof.disable()
    point_s = time.perf_counter() - t
    train_s = float(__import__("json").loads((root / "sweep" / "beta-500" / "manifest.json").read_text())["seconds"])
    print(f"model {args.model}: set-up (generate + score + pairs of {args.prompts} x 16 samples) {setup_s:.1f} s; "
          f"base validation (once per base) {base_val_s:.1f} s")
    print(f"one grid point {point_s:.1f} s = capo train {train_s:.1f} s + validation and overhead "
          f"{point_s - train_s:.1f} s")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
    print(buf.getvalue())


if __name__ == "__main__":
    main()
