"""Benchmark: the training data path alone (issue #9), pairs/s at SDXL latent size.

Builds a synthetic cache in `capo generate`'s layout (shards of 16 prompts; per sample a
4 x 128 x 128 fp16 latent, per prompt SDXL-sized text embeddings 77 x 2048 and 1280), default
500 prompts x 16 samples (2 GB on disk, in --dir), then assembles micro-batches of B pairs of
random prompts (random order, so each batch touches many shards), three ways:

* old: the previous LatentCache, a whole shard loaded (safetensors.load_file) whenever a
  batch needs a row of a shard other than the one held;
* new: capo.stages.train.LatentCache, rows sliced from memory-mapped shards;
* new + DataLoader workers: capo.stages.train.MicroBatches with --workers processes.

Every path verifies each shard's integrity record once (sha256) on first use, as training
does; --batches sets how far that one-time cost is amortised.

Prints pairs/s per path (median of --repeats) and the ratio. Target on the 2-core CI machine:
at least 200 pairs/s with the new path (40x what one H100 consumes at 4.65 pairs/s).

    python bench/bench_data_path.py [--prompts 500] [--samples 16] [--batch 8] [--batches 300] \
        [--workers 2] [--repeats 3] [--dir /tmp/capo-bench-cache]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from capo import artifacts
from capo.stages.train import LatentCache, MicroBatches

SHARD = 16  # prompts per shard (capo generate's default)


def build_cache(d: Path, prompts: int, samples: int) -> Path:
    if (d / "cache" / "done").is_file():
        return d
    (d / "cache").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for s in range(0, prompts // SHARD):
        idx = list(range(s * SHARD, (s + 1) * SHARD))
        rows = [{"prompt_id": f"p{p:06d}", "sample_id": k, "prompt_idx": p} for p in idx for k in range(samples)]
        f = d / "cache" / f"shard-{s:05d}.safetensors"
        save_file({"latents": torch.randn((len(rows), 4, 128, 128), generator=g).half(),
                   "hidden": torch.randn((SHARD, 77, 2048), generator=g).half(),
                   "pooled": torch.randn((SHARD, 1280), generator=g).half()}, str(f))
        (d / "cache" / f"shard-{s:05d}.json").write_text(json.dumps(
            {"shard": s, "prompts": idx, "rows": rows, "file": artifacts.file_record(f)}))
    (d / "cache" / "done").write_text("")
    return d


class OldCache(LatentCache):
    """The previous read path: one whole shard in memory, replaced by a full load_file."""

    def _rows(self, name, where):
        out = []
        for s, i in where:
            if getattr(self, "_held", (None,))[0] != s:
                f = self.samples / "cache" / f"shard-{s:05d}.safetensors"
                if s not in self._checked:  # the old path verified each shard once too
                    artifacts.check_file(f, self.records.get(s), "bench", "")
                    self._checked.add(s)
                self._held = (s, load_file(str(f)))
            out.append(self._held[1][name][i])
        return torch.stack(out)


class RandomPairs:
    """Random prompts, two random samples each (what PairSource.micro_batch yields)."""

    def __init__(self, prompts: int, samples: int):
        self.prompts, self.samples = [f"p{p:06d}" for p in range(prompts)], samples

    def micro_batch(self, seed, m, B):
        rng = np.random.default_rng([seed, m])
        ps = rng.choice(len(self.prompts), size=B, replace=False)
        return [(self.prompts[p], *map(int, rng.choice(self.samples, 2, replace=False)), 0.1) for p in ps]


def rate(cache, a, workers: int) -> float:
    mb = MicroBatches(RandomPairs(a.prompts // SHARD * SHARD, a.samples), cache, 0, a.batch, list(range(a.batches)))
    t0 = time.perf_counter()
    for _ in mb.iterate(workers, pin=False):
        pass
    return a.batches * a.batch / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="pairs per micro-batch")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/capo-bench-cache")
    a = ap.parse_args()
    t0 = time.perf_counter()
    d = build_cache(Path(a.dir), a.prompts, a.samples)
    print(f"cache                : {a.prompts // SHARD * SHARD} prompts x {a.samples} samples, 4x128x128 fp16 latents "
          f"({sum(f.stat().st_size for f in (d / 'cache').glob('*.safetensors')) / 2**30:.2f} GiB; "
          f"ready in {time.perf_counter() - t0:.0f} s)")
    rows = {}
    for name, make, workers in (("old (whole-shard loads)", lambda: OldCache(d), 0),
                                ("new (memory-mapped rows)", lambda: LatentCache(d), 0),
                                (f"new + {a.workers} DataLoader workers", lambda: LatentCache(d), a.workers)):
        rows[name] = statistics.median(rate(make(), a, workers) for _ in range(a.repeats))
    for name, r in rows.items():
        print(f"{name:<32}: {r:8.1f} pairs/s")
    names = list(rows)
    print(f"new / old            : {rows[names[1]] / rows[names[0]]:.1f}x  (micro-batches of {a.batch} pairs, "
          f"{a.batches} per repeat, medians of {a.repeats})")


if __name__ == "__main__":
    main()
