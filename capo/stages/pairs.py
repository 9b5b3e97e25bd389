"""Stage `pairs`: reward tables -> calibrated rewards -> preference pairs.

Reads one or more reward tables (parquet or CSV; columns ``prompt_id``, ``sample_id``
and one column per reward model), calibrates each reward per prompt (Eq. 7) after its
Bradley-Terry transform, selects pairs (best-worst, SUM or FRS; Sec. 4.3) and writes
into ``out``:

* ``pairs.parquet``: ``prompt_id, draw, pos_sample_id, neg_sample_id``, the calibrated
  rewards of both members (``pos_<reward>``, ``neg_<reward>``), ``pos_score``,
  ``neg_score`` and ``target_gap`` (the CaPO regression target);
* ``candidates.parquet``: every sample with its calibrated rewards, the selection score
  and, for FRS, membership of ``X+`` / ``X-`` (training draws fresh FRS pairs from it);
* ``manifest.json``: config, input fingerprints, versions, counts, timings.

With ``reference`` (reward tables of a *reference* model's samples of the same prompts, the
same reward columns), each sample is calibrated against the reference samples of its prompt
(``capo.method.calibration.calibrate_against``: its expected win-rate over the reference
model) instead of against its own siblings (Eq. 7); online CaPO (``capo iterate``) uses it to
keep the target's meaning fixed to the base model while the policy moves.
"""

from __future__ import annotations

import time
from dataclasses import field
from pathlib import Path
from typing import ClassVar

import numpy as np

from capo import artifacts
from capo.config import stage_config, to_dict
from capo.method.calibration import calibrate, calibrate_against, parse_transform
from capo.method.selection import normalise_weights, select_pairs
from capo.registry import SELECTORS

KEYS = ("prompt_id", "sample_id")


@stage_config
class PairsConfig:
    rewards_tables: list[str]  # reward tables (parquet/csv), joined on prompt_id, sample_id
    out: str  # output directory
    selector: str = "best-worst"  # pair selector (capo ls selectors)
    rewards: list[str] | None = None  # reward columns to use (default: every non-key column)
    weights: list[float] | None = None  # SUM / FRS-target weights, normalised to sum 1 (default uniform)
    transforms: dict[str, str] = field(default_factory=dict)  # reward -> identity | logit | temperature:T
    seed: int = 0  # FRS draws
    draws: int = 1  # FRS pairs drawn per prompt
    max_tries: int = 16  # FRS redraws of a rejected pair
    n: int | None = None  # use only samples with sample_id < n of each prompt, reference's too (default: all)
    reference: list[str] | None = None  # reward tables of reference samples: calibrate against them, not Eq. 7
    overwrite: bool = False

    RULES: ClassVar[dict[str, str]] = {
        "selector": "@selectors", "weights": ">= 0", "seed": ">= 0", "draws": ">= 1", "max_tries": ">= 1",
        "n": ">= 2"}
    LATER: ClassVar[dict] = {"reference": None}  # keys added later (capo.config.to_dict)

    def contradictions(self):
        if not self.rewards_tables:
            yield "rewards_tables: give at least one reward table"
        for name, spec in self.transforms.items():
            try:
                parse_transform(spec)
            except ValueError as e:
                yield f"transforms: {name}={spec!r}: {e}"
        if self.weights is not None:
            if self.rewards is not None and len(self.weights) != len(self.rewards):
                yield f"weights: {len(self.weights)} weights for {len(self.rewards)} rewards {self.rewards}"
            if sum(self.weights) <= 0:
                yield f"weights: {self.weights} must have a positive sum"
        if self.reference is not None and not self.reference:
            yield "reference: give at least one reward table (or leave it unset for Eq. 7)"


class PairsError(ValueError):
    """Bad reward tables or options; the message names the rows, columns or names at fault."""


def load_rewards(paths: list[str], rewards: list[str] | None, n: int | None = None):
    """Read and join reward tables; validate keys, columns and values. Returns (df, reward names).
    With ``n``, only the samples with ``sample_id < n`` are kept (the first n of each prompt's
    per-item-seeded samples: the same images an ``n``-sample generation would have made)."""
    import pandas as pd

    if not paths:
        raise PairsError("no reward table given")
    df = None
    for p in paths:
        if (Path(p).parent / artifacts.MANIFEST).is_file():
            artifacts.verify(Path(p).parent, Path(p).name, "a reward table")
        t = artifacts.read_table(p)
        missing = [k for k in KEYS if k not in t.columns]
        if missing:
            raise PairsError(f"{p}: missing column(s) {', '.join(missing)}; a rewards table needs "
                             f"prompt_id, sample_id and one column per reward (has: {', '.join(map(str, t.columns))})")
        dup = t.duplicated(list(KEYS), keep=False)
        if dup.any():
            rows = t.loc[dup, list(KEYS)].head(5).to_dict("records")
            raise PairsError(f"{p}: {int(dup.sum())} rows repeat a (prompt_id, sample_id), e.g. {rows}")
        if df is None:
            df = t
            continue
        clash = (set(t.columns) & set(df.columns)) - set(KEYS)
        if clash:
            raise PairsError(f"{p}: reward column(s) {', '.join(sorted(clash))} already come from another table")
        joined = df.merge(t, on=list(KEYS), how="outer", indicator=True)
        if (joined["_merge"] != "both").any():
            n = int((joined["_merge"] != "both").sum())
            raise PairsError(f"{p}: {n} (prompt_id, sample_id) rows are not in every reward table: "
                             "the tables score different samples directories")
        df = joined.drop(columns="_merge")
    available = [c for c in df.columns if c not in KEYS]
    names = list(rewards) if rewards else available
    unknown = [r for r in names if r not in available]
    if unknown:
        raise PairsError(f"reward column(s) {', '.join(unknown)} not found; available: {', '.join(available)}")
    if not names:
        raise PairsError("the reward tables have no reward columns")
    values = df[names].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.nonzero(bad)
        pid, sid = df["prompt_id"].tolist(), df["sample_id"].tolist()
        where = [f"(prompt_id={pid[i]!r}, sample_id={sid[i]!r}, {names[j]})"
                 for i, j in list(zip(r, c))[:10]]
        raise PairsError(f"{int(bad.sum())} reward value(s) are NaN, infinite or not numbers: {', '.join(where)}")
    df = df[list(KEYS) + names].copy()
    df[names] = values
    if n is not None:
        df = df[df["sample_id"].astype(int) < n]
    counts = df.groupby("prompt_id").size()
    few = counts[counts < 2]
    if len(few):
        raise PairsError(f"{len(few)} prompt(s) have fewer than 2 samples (calibration needs N >= 2): "
                         f"{', '.join(map(repr, few.index[:10].tolist()))}")
    return df.sort_values(list(KEYS), kind="stable").reset_index(drop=True), names


def reference_rewards(paths: list[str], names: list[str], prompts: set, n: int | None = None):
    """The reference samples' rewards, indexed by prompt_id (rows sorted by sample_id within
    a prompt; with ``n``, the first n of each prompt): every prompt of the policy's tables
    must have the same number of them."""
    df, _ = load_rewards(paths, names, n=n)
    missing = sorted(prompts - set(df["prompt_id"]))
    if missing:
        raise PairsError(f"{len(missing)} prompt(s) have no reference samples in {', '.join(paths)}: "
                         f"{', '.join(map(repr, missing[:10]))}")
    df = df[df["prompt_id"].isin(prompts)]
    sizes = df.groupby("prompt_id").size()
    if sizes.nunique() != 1:
        raise PairsError(f"the reference tables hold different numbers of samples per prompt ({sorted(set(sizes))}); "
                         "calibration against a reference needs the same N for every prompt")
    out = df.set_index("prompt_id")[names]
    out.attrs["n_ref"] = int(sizes.iloc[0])
    return out


def table_provenance(paths: list[str]) -> tuple[dict | None, dict[str, str]]:
    """The samples run that ``capo score`` tables came from (must be one) and the BT
    transforms their rewards declared. Tables without a score manifest contribute nothing."""
    samples, declared = {}, {}
    for p in paths:
        mf = Path(p).parent / artifacts.MANIFEST
        if not mf.is_file():
            continue
        m = artifacts.read_json(mf)
        if m.get("stage") != "score":
            continue
        s = m["inputs"]["samples"]
        samples[p] = s
        if m.get("bt_transform"):
            declared[m["config"]["reward"]] = m["bt_transform"]
    if len({s["sha256"] for s in samples.values()}) > 1:
        lines = "; ".join(f"{p} scored {s['path']} ({s['sha256'][:12]})" for p, s in samples.items())
        raise PairsError(f"the reward tables come from different samples directories: {lines}")
    return (next(iter(samples.values())) if samples else None), declared


def run(cfg: PairsConfig) -> dict:
    import pandas as pd

    t0 = time.time()
    SELECTORS.get(cfg.selector)  # unknown names: error listing the known selectors
    for spec in cfg.transforms.values():
        parse_transform(spec)
    manifest = artifacts.make_manifest(
        "pairs", to_dict(cfg) | {"out": None, "overwrite": None},
        {f"rewards_table_{i}": p for i, p in enumerate(cfg.rewards_tables)}
        | {f"reference_table_{i}": p for i, p in enumerate(cfg.reference or [])},
    )
    samples, declared = table_provenance(cfg.rewards_tables)
    if samples:
        manifest["samples"] = samples
    if cfg.reference:
        ref_samples, ref_declared = table_provenance(cfg.reference)
        if ref_samples:
            manifest["reference_samples"] = ref_samples
        if clash := {r: (t, ref_declared[r]) for r, t in declared.items() if r in ref_declared and ref_declared[r] != t}:
            raise PairsError(f"reference tables declare other BT transforms than the reward tables: {clash}")
    out = Path(cfg.out)
    if artifacts.prepare_out_dir(out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}

    if cfg.n is not None and cfg.n < 2:
        raise PairsError(f"n must be at least 2 (calibration needs N >= 2 samples per prompt), got {cfg.n}")
    df, names = load_rewards(cfg.rewards_tables, cfg.rewards, n=cfg.n)
    unknown_t = sorted(set(cfg.transforms) - set(names))
    if unknown_t:
        raise PairsError(f"transforms given for reward(s) not selected: {', '.join(unknown_t)} (rewards: {', '.join(names)})")
    transforms = {r: cfg.transforms.get(r, declared.get(r, "identity")) for r in names}
    if cfg.selector == "best-worst" and len(names) != 1:
        raise PairsError(f"best-worst selects on one reward, got {len(names)} ({', '.join(names)}); "
                         "pass --rewards NAME, or use --selector sum|frs")
    if cfg.weights is not None:
        normalise_weights(cfg.weights, len(names))  # validates count and signs

    ref = reference_rewards(cfg.reference, names, set(df["prompt_id"]), n=cfg.n) if cfg.reference else None
    rng = np.random.default_rng(cfg.seed)
    pair_rows, cand_rows, stats = [], [], {"prompts": 0, "pairs": 0, "rejections": 0, "no_pair_prompts": 0}
    # Prompts with the same number of samples N are calibrated and selected together (vectorised).
    sizes = df.groupby("prompt_id", sort=False)["sample_id"].transform("size")
    for N, block in df.groupby(sizes, sort=True):
        P = len(block) // N
        raw = block[names].to_numpy().reshape(P, N, len(names))
        pids = block["prompt_id"].to_numpy().reshape(P, N)[:, 0]
        specs = [transforms[r] for r in names]
        if ref is None:
            ca = calibrate(raw, transform=specs, axis=1)  # Eq. 7
        else:
            ca = calibrate_against(raw, ref.loc[pids].to_numpy().reshape(P, -1, len(names)), transform=specs, axis=1)
        sel = select_pairs(ca, cfg.selector, weights=cfg.weights, rng=rng, num_draws=cfg.draws, max_tries=cfg.max_tries)
        sids = block["sample_id"].to_numpy().reshape(P, N)
        p_idx, k_idx = np.nonzero(sel.valid)
        pos, neg = sel.pos[p_idx, k_idx], sel.neg[p_idx, k_idx]
        rows = {"prompt_id": pids[p_idx], "draw": k_idx,
                "pos_sample_id": sids[p_idx, pos], "neg_sample_id": sids[p_idx, neg]}
        for j, r in enumerate(names):
            rows[f"pos_{r}"] = ca[p_idx, pos, j]
            rows[f"neg_{r}"] = ca[p_idx, neg, j]
        rows |= {"pos_score": sel.score[p_idx, pos], "neg_score": sel.score[p_idx, neg],
                 "target_gap": sel.target_gap[p_idx, k_idx]}
        pair_rows.append(pd.DataFrame(rows))
        cand = {"prompt_id": np.repeat(pids, N), "sample_id": sids.reshape(-1)}
        cand |= {f"{r}_ca": ca[:, :, j].reshape(-1) for j, r in enumerate(names)}
        cand["score"] = sel.score.reshape(-1)
        if sel.pos_set is not None:
            cand["in_pos_set"], cand["in_neg_set"] = sel.pos_set.reshape(-1), sel.neg_set.reshape(-1)
        cand_rows.append(pd.DataFrame(cand))
        stats["prompts"] += P
        stats["pairs"] += int(sel.valid.sum())
        stats["rejections"] += int(sel.rejections.sum())
        stats["no_pair_prompts"] += int((~sel.valid.any(1)).sum())

    pairs = pd.concat(pair_rows, ignore_index=True).sort_values(["prompt_id", "draw"], kind="stable")
    artifacts.write_table(pairs, out / "pairs.parquet")
    artifacts.write_table(pd.concat(cand_rows, ignore_index=True), out / "candidates.parquet")
    calibration = "eq7" if ref is None else f"against {ref.attrs['n_ref']} reference samples per prompt"
    done = artifacts.finish(out, manifest, files=["pairs.parquet", "candidates.parquet"], rewards=names,
                            transforms=transforms, calibration=calibration, counts=stats,
                            seconds=round(time.time() - t0, 3))
    return {**done, "skipped": False}
