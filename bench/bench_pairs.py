"""Benchmark: calibration (Eq. 7) + FRS pair selection (Sec. 4.3), vectorised.

Times the whole selection on P prompts x N samples x L rewards of random raw rewards
(default 100,000 x 16 x 3, the paper's data size) and prints medians over repeats.
Target on the 2-core CI machine: the whole selection in under 10 s.

    python bench/bench_pairs.py [--prompts 100000] [--samples 16] [--rewards 3] [--repeats 3]
"""

import argparse
import statistics
import time

import numpy as np

from capo.method import calibrate, select_pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--rewards", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(a.prompts, a.samples, a.rewards))
    t_cal, t_frs, t_all = [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        ca = calibrate(raw, transform=["identity"] * a.rewards, axis=1)
        t1 = time.perf_counter()
        sel = select_pairs(ca, "frs", rng=np.random.default_rng(0))
        t2 = time.perf_counter()
        t_cal.append(t1 - t0), t_frs.append(t2 - t1), t_all.append(t2 - t0)
    med = statistics.median(t_all)
    print(f"prompts x N x L      : {a.prompts} x {a.samples} x {a.rewards}  ({a.repeats} repeats, medians)")
    print(f"calibration          : {statistics.median(t_cal):.2f} s")
    print(f"FRS selection        : {statistics.median(t_frs):.2f} s")
    print(f"total                : {med:.2f} s  ->  {a.prompts / med:,.0f} prompts/s")
    print(f"pairs / rejections   : {sel.stats['pairs']} / {sel.stats['rejections']}; "
          f"mean |X+| {sel.stats['mean_pos_set']:.2f}, |X-| {sel.stats['mean_neg_set']:.2f}")


if __name__ == "__main__":
    main()
