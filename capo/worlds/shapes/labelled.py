"""The shapes world's human-labelled pair set (the Pick-a-Pic analogue, paper Table 4).

For each prompt of a samples directory, two of its images (a seeded random choice) are
shown to a simulated human who picks one by the hidden true preference
(``truth.simulate_choice``, Bradley-Terry on ``truth.utility`` with noise). The result is
a `capo pairs`-compatible directory (``pairs.parquet`` + ``manifest.json``, selector
``human``), so ``capo train`` fine-tunes on it exactly as on synthetic pairs
(Diffusion-DPO's setting: DPO on human choices; the target gap column is 1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from capo import artifacts
from capo.samples import load_images, load_samples
from . import truth


def label_pairs(samples: str | Path, out: str | Path, seed: int = 0, overwrite: bool = False) -> dict:
    import pandas as pd

    samples, out = Path(samples), Path(out)
    smanifest, index = load_samples(samples)
    manifest = artifacts.make_manifest("pairs", {"selector": "human", "seed": seed, "rewards": []},
                                       {"samples": {"path": str(samples), "sha256": smanifest["run_key"]}})
    manifest["samples"] = {"path": str(samples), "sha256": smanifest["run_key"]}
    if artifacts.prepare_out_dir(out, manifest, overwrite):
        return artifacts.read_json(out / artifacts.MANIFEST)
    t0 = time.time()
    records = {}
    for line in (samples / "prompts.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["prompt_id"]] = r
    rng = np.random.default_rng(seed)
    rows = []
    for pid, group in index.groupby("prompt_id", sort=True):
        if len(group) < 2:
            continue
        a, b = group.iloc[rng.choice(len(group), size=2, replace=False)].itertuples()
        imgs = load_images(samples, [a.path, b.path])
        choice = truth.simulate_choice(records[pid], imgs[0], imgs[1], rng)  # 0: a preferred, 1: b
        win, lose = (a, b) if choice == 0 else (b, a)
        rows.append({"prompt_id": pid, "draw": 0, "pos_sample_id": int(win.sample_id),
                     "neg_sample_id": int(lose.sample_id), "target_gap": 1.0})
    artifacts.write_table(pd.DataFrame(rows), out / "pairs.parquet")
    return artifacts.finish(out, manifest, counts={"pairs": len(rows)}, seconds=round(time.time() - t0, 3))
