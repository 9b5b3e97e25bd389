"""Win-rates and paired deltas: hand-computed cases and properties of the prompt bootstrap."""

from __future__ import annotations

import time

import numpy as np
import pytest

from capo.eval.winrate import bootstrap_delta, bootstrap_mean, win_rate


def test_hand_computed_with_ties():
    # outcomes: 1 > 0 win, 2 = 2 tie, 3 < 5 loss, 4 = 4 tie -> (1 + 0.5 + 0 + 0.5) / 4 = 50 %
    r = win_rate([1, 2, 3, 4], [0, 2, 5, 4], ["a", "b", "c", "d"])
    assert r["win_rate"] == pytest.approx(50.0)
    assert (r["wins"], r["ties"], r["losses"]) == (1, 2, 1)
    assert r["mean_a"] == pytest.approx(2.5) and r["mean_b"] == pytest.approx(2.75)
    assert r["n_images"] == 4 and r["n_prompts"] == 4


def test_all_ties_is_fifty_with_a_degenerate_interval():
    r = win_rate([0.3] * 6, [0.3] * 6, [0, 0, 1, 1, 2, 2])
    assert r["win_rate"] == r["ci_low"] == r["ci_high"] == 50.0


def test_point_estimate_is_the_mean_over_images():
    # prompt p: 3 wins; prompt q: 1 loss -> 3 / 4 images = 75 % (not the 50 % mean over prompts)
    r = win_rate([1, 1, 1, 0], [0, 0, 0, 1], ["p", "p", "p", "q"])
    assert r["win_rate"] == pytest.approx(75.0)


def _data(n_prompts, per_prompt=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_prompts), per_prompt)
    difficulty = rng.normal(size=n_prompts)[ids]
    a = difficulty + rng.normal(0.2, 1.0, size=len(ids))
    b = difficulty + rng.normal(0.0, 1.0, size=len(ids))
    return a, b, ids


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_interval_contains_point_estimate(seed):
    a, b, ids = _data(60, seed=seed)
    r = win_rate(a, b, ids, seed=seed)
    assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]
    d = bootstrap_delta(a, b, ids, seed=seed)
    assert d["ci_low"] <= d["delta"] <= d["ci_high"]


def test_interval_shrinks_with_more_prompts():
    widths = []
    for n in (20, 80, 500):
        a, b, ids = _data(n, seed=7)
        r = win_rate(a, b, ids)
        widths.append(r["ci_high"] - r["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] > 3 * widths[2]


def test_bootstrap_resamples_prompts_not_images():
    """10 prompts, each with 25 images of one outcome (A wins all of a prompt's images or loses
    all). Resampling prompts must give exactly the interval of the 10-image data with one image
    per prompt; resampling images (every image its own prompt) would be about 5x narrower."""
    outcome = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1], dtype=float)
    ids_one = [f"p{i}" for i in range(10)]
    one = win_rate(outcome, 1 - outcome, ids_one, seed=3)
    rep_ids = np.repeat(ids_one, 25)
    rep = np.repeat(outcome, 25)
    grouped = win_rate(rep, 1 - rep, rep_ids, seed=3)
    assert grouped["win_rate"] == one["win_rate"] == 70.0
    assert (grouped["ci_low"], grouped["ci_high"]) == (one["ci_low"], one["ci_high"])
    per_image = win_rate(rep, 1 - rep, np.arange(len(rep)), seed=3)
    assert grouped["ci_high"] - grouped["ci_low"] > 3 * (per_image["ci_high"] - per_image["ci_low"])
    assert grouped["n_prompts"] == 10 and per_image["n_prompts"] == 250


def test_fixed_seed_is_deterministic():
    a, b, ids = _data(50)
    assert win_rate(a, b, ids, seed=5) == win_rate(a, b, ids, seed=5)
    assert bootstrap_delta(a, b, ids, seed=5) == bootstrap_delta(a, b, ids, seed=5)
    assert bootstrap_delta(a, b, ids, seed=5)["ci_low"] != bootstrap_delta(a, b, ids, seed=6)["ci_low"]


def test_delta_is_paired():
    # A = B + 0.1 exactly: the paired difference is constant however noisy B is
    rng = np.random.default_rng(0)
    b = rng.normal(0, 10, size=200)
    d = bootstrap_delta(b + 0.1, b, np.repeat(np.arange(50), 4))
    assert d["delta"] == pytest.approx(0.1)
    assert d["ci_low"] == pytest.approx(0.1) and d["ci_high"] == pytest.approx(0.1)


def test_delta_on_geneval_correctness():
    a = [True, True, False, True]
    b = [False, True, False, False]
    d = bootstrap_delta(a, b, ["x", "x", "y", "z"])
    assert d["delta"] == pytest.approx(0.5) and d["mean_a"] == 0.75 and d["mean_b"] == 0.25
    m = bootstrap_mean(a, ["x", "x", "y", "z"])
    assert m["mean"] == 0.75 and m["ci_low"] <= 0.75 <= m["ci_high"]


def test_nan_scores_name_the_rows():
    a = [0.1, 0.2, float("nan"), 0.4]
    with pytest.raises(ValueError, match=r"scores_a has 1 NaN/inf value\(s\): row 2 \(prompt 'p2'\)"):
        win_rate(a, [0, 0, 0, 0], ["p0", "p1", "p2", "p3"])
    with pytest.raises(ValueError, match=r"values_b .* row 0"):
        bootstrap_delta([0, 0], [None, 1], ["a", "b"])


def test_shape_errors():
    with pytest.raises(ValueError, match="3 values for 2 prompt ids"):
        win_rate([1, 2, 3], [1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="no images"):
        win_rate([], [], [])
    with pytest.raises(ValueError, match="ci"):
        win_rate([1], [0], ["a"], ci=1.5)


def test_vectorised_and_fast():
    a, b, ids = _data(2000, per_prompt=10)
    t = time.perf_counter()
    r = win_rate(a, b, ids, n_boot=2000)
    assert time.perf_counter() - t < 5.0  # ~0.05 s here
    assert r["n_images"] == 20000 and r["n_boot"] == 2000
