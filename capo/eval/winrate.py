"""Win-rates and paired metric deltas with prompt-level bootstrap confidence intervals.

Win-rate of model A over model B (the paper's Tables 1, 2, 4, 5: "win-rate (%) over the base
model per reward model"): images are paired (the same prompt and sample index for A and B);
an image scores 1 if ``a > b``, 0.5 on a tie, 0 otherwise; the win-rate is 100 x the mean.

Confidence intervals come from a percentile bootstrap over *prompts*: prompts are drawn with
replacement and every image of a drawn prompt comes along, because images of one prompt are
not independent (the same text, often the same difficulty). The statistic of a resample is
the mean over its images (sum over drawn prompts / number of their images), matching the
point estimate. Vectorised: ``n_boot`` x ``n_prompts`` indices, one gather; fixed ``seed``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

N_BOOT = 2000
SEED = 0
CI = 0.95


def _as_float(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check(arrays: dict[str, np.ndarray], prompt_ids: Sequence) -> np.ndarray:
    n = len(prompt_ids)
    for name, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} values for {n} prompt ids")
    if n == 0:
        raise ValueError("no images to compare")
    for name, arr in arrays.items():
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            shown = ", ".join(f"row {i} (prompt {prompt_ids[i]!r}): {arr[i]}" for i in bad[:10])
            more = f" and {bad.size - 10} more" if bad.size > 10 else ""
            raise ValueError(f"{name} has {bad.size} NaN/inf value(s): {shown}{more}")
    ids = np.asarray([str(p) for p in prompt_ids], dtype=object)
    _, group = np.unique(ids, return_inverse=True)
    return group.reshape(-1)


def bootstrap_mean(values, prompt_ids: Sequence, *, n_boot: int = N_BOOT, seed: int = SEED,
                   ci: float = CI) -> dict:
    """Mean of per-image ``values`` with a prompt-level percentile bootstrap CI.

    Returns ``{"mean", "ci_low", "ci_high", "n_images", "n_prompts", "n_boot", "seed", "ci"}``.
    """
    v = _as_float(values, "values")
    group = _check({"values": v}, prompt_ids)
    return _bootstrap(v, group, n_boot=n_boot, seed=seed, ci=ci)


def _bootstrap(v: np.ndarray, group: np.ndarray, *, n_boot: int, seed: int, ci: float) -> dict:
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_prompts = int(group.max()) + 1
    sums = np.bincount(group, weights=v, minlength=n_prompts)
    counts = np.bincount(group, minlength=n_prompts).astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    block = max(1, 2_000_000 // n_prompts)  # bounds the (block, n_prompts) index matrix
    for s in range(0, n_boot, block):
        idx = rng.integers(0, n_prompts, size=(min(block, n_boot - s), n_prompts))
        stats[s:s + len(idx)] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return {"mean": float(v.mean()), "ci_low": float(lo), "ci_high": float(hi), "n_images": int(len(v)),
            "n_prompts": n_prompts, "n_boot": int(n_boot), "seed": int(seed), "ci": float(ci)}


def win_rate(scores_a, scores_b, prompt_ids: Sequence, *, n_boot: int = N_BOOT, seed: int = SEED,
             ci: float = CI) -> dict:
    """Win-rate (%) of A over B on paired per-image scores, with a prompt-bootstrap CI.

    Returns ``{"win_rate", "ci_low", "ci_high"`` (percent), ``"wins", "ties", "losses",
    "mean_a", "mean_b", "n_images", "n_prompts", "n_boot", "seed", "ci"}``.
    NaN or infinite scores are an error naming the rows.
    """
    a, b = _as_float(scores_a, "scores_a"), _as_float(scores_b, "scores_b")
    group = _check({"scores_a": a, "scores_b": b}, prompt_ids)
    outcome = (a > b) + 0.5 * (a == b)
    res = _bootstrap(outcome, group, n_boot=n_boot, seed=seed, ci=ci)
    return {"win_rate": 100 * res["mean"], "ci_low": 100 * res["ci_low"], "ci_high": 100 * res["ci_high"],
            "wins": int((a > b).sum()), "ties": int((a == b).sum()), "losses": int((a < b).sum()),
            "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            **{k: res[k] for k in ("n_images", "n_prompts", "n_boot", "seed", "ci")}}


def bootstrap_delta(values_a, values_b, prompt_ids: Sequence, *, n_boot: int = N_BOOT, seed: int = SEED,
                    ci: float = CI) -> dict:
    """Paired difference ``mean(a) - mean(b)`` of any per-image metric (a reward, GenEval
    correctness as 0/1, a T2I-CompBench score) with a prompt-bootstrap CI.

    Returns ``{"delta", "ci_low", "ci_high", "mean_a", "mean_b", "n_images", "n_prompts",
    "n_boot", "seed", "ci"}``.
    """
    a, b = _as_float(values_a, "values_a"), _as_float(values_b, "values_b")
    group = _check({"values_a": a, "values_b": b}, prompt_ids)
    res = _bootstrap(a - b, group, n_boot=n_boot, seed=seed, ci=ci)
    return {"delta": res["mean"], "ci_low": res["ci_low"], "ci_high": res["ci_high"],
            "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            **{k: res[k] for k in ("n_images", "n_prompts", "n_boot", "seed", "ci")}}
