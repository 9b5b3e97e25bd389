"""Stage `score`: reward models over a samples directory, one table per reward model.

For each reward ``name`` it writes ``<out>/<name>/scores.parquet`` (``prompt_id``,
``sample_id``, ``<name>``) and a ``manifest.json`` naming the samples run it scored and
the reward's declared BT transform, so adding a reward never re-scores the others and
``capo pairs`` can refuse tables of different samples directories. ``out`` defaults to
``<samples>/rewards``. Under ``accelerate launch`` the images are split across processes
(row ``i`` to process ``i % world``) and gathered by the main process.
"""

from __future__ import annotations

import time
from dataclasses import field
from pathlib import Path
from typing import ClassVar

import numpy as np

from capo import artifacts
from capo.config import stage_config, to_dict
from capo.dist import partial_state, prepare_out_dir
from capo.progress import progress
from capo.samples import load_images, load_samples  # noqa: F401 (re-exported)
from capo.rewards import load_reward, REWARDS


@stage_config
class ScoreConfig:
    samples: str  # a `capo generate` output directory
    rewards: list[str]  # reward model names (capo ls rewards)
    out: str | None = None  # default: <samples>/rewards
    batch_size: int = 64  # images per reward-model call
    reward_paths: dict[str, str] = field(default_factory=dict)  # reward -> local weights directory
    overwrite: bool = False
    quiet: bool = False

    RULES: ClassVar[dict[str, str]] = {"rewards": "@rewards", "batch_size": ">= 1"}

    def contradictions(self):
        if not self.rewards:
            yield "rewards: name at least one reward model (capo ls rewards)"
        if len(set(self.rewards)) != len(self.rewards):
            yield f"rewards: {self.rewards} names a reward twice"
        if extra := sorted(set(self.reward_paths) - set(self.rewards)):
            yield f"reward_paths: {', '.join(extra)} not among rewards {self.rewards}"


def run(cfg: ScoreConfig) -> dict:
    import pandas as pd

    t0 = time.time()
    state = partial_state()
    for name in cfg.rewards:
        REWARDS.get(name)  # unknown names fail before any work
    samples = Path(cfg.samples)
    smanifest, index = load_samples(samples)
    out_root = Path(cfg.out) if cfg.out else samples / "rewards"
    results = {}
    for name in cfg.rewards:
        rdir = out_root / name
        config = {"reward": name, "batch_size": cfg.batch_size, "reward_path": cfg.reward_paths.get(name)}
        inputs = {"samples": {"path": str(samples), "sha256": smanifest["run_key"]}}
        if cfg.reward_paths.get(name):
            inputs["reward_weights"] = cfg.reward_paths[name]
        manifest = artifacts.make_manifest("score", config, inputs)
        if artifacts.existing_run(rdir, manifest, cfg.overwrite) == "complete":
            results[name] = {"table": str(rdir / "scores.parquet"), "skipped": True}
            continue
        kwargs = {"path": cfg.reward_paths[name]} if cfg.reward_paths.get(name) else {}
        reward = load_reward(name, device=state.device, **kwargs)  # before anything is written
        if prepare_out_dir(state, rdir, manifest, cfg.overwrite):
            results[name] = {"table": str(rdir / "scores.parquet"), "skipped": True}
            continue
        mine = index.iloc[state.process_index::state.num_processes]
        scores = np.empty(len(mine))
        bar = progress(total=len(mine), desc=f"score {name}", unit="img",
                       disable=cfg.quiet or not state.is_local_main_process)
        for i in range(0, len(mine), cfg.batch_size):
            rows = mine.iloc[i:i + cfg.batch_size]
            scores[i:i + len(rows)] = np.asarray(reward(load_images(samples, rows["path"]), rows["prompt"].tolist()),
                                                 dtype=np.float64)
            bar.update(len(rows))
        bar.close()
        bad = ~np.isfinite(scores)
        if bad.any():
            rows = mine.loc[bad, ["prompt_id", "sample_id"]].head(10).to_dict("records")
            raise ValueError(f"reward {name!r} returned {int(bad.sum())} NaN/inf score(s), e.g. {rows}; "
                             "nothing was written")
        part = pd.DataFrame({"prompt_id": mine["prompt_id"].to_numpy(), "sample_id": mine["sample_id"].to_numpy(),
                             "_row": mine.index.to_numpy(), name: scores})
        artifacts.write_table(part, rdir / f"part-{state.process_index:03d}.parquet")
        state.wait_for_everyone()
        if state.is_main_process:
            parts = [artifacts.read_table(rdir / f"part-{r:03d}.parquet") for r in range(state.num_processes)]
            table = pd.concat(parts).sort_values("_row").drop(columns="_row").reset_index(drop=True)
            artifacts.write_table(table, rdir / "scores.parquet")
            for r in range(state.num_processes):
                (rdir / f"part-{r:03d}.parquet").unlink()
            artifacts.finish(rdir, manifest, files=["scores.parquet"], bt_transform=reward.bt_transform,
                             counts={"images": len(table)},
                             mean=float(table[name].mean()), seconds=round(time.time() - t0, 3))
        state.wait_for_everyone()
        results[name] = {"table": str(rdir / "scores.parquet"), "skipped": False}
    return {"rewards": results, "seconds": round(time.time() - t0, 3)}
