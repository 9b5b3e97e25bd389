"""Two-level (prompt x training-seed) bootstrap: hand-computed cases, the single-seed reduction
to the prompt bootstrap, coverage on synthetic tables with known variances, paired contrasts,
verdicts and the "best beyond the CI" marks."""

from __future__ import annotations

import numpy as np
import pytest

from capo.eval.stats import (
    best_beyond_ci,
    bootstrap_contrasts,
    t_quantile,
    two_level_bootstrap,
    interval_text,
    verdict,
)
from capo.eval.winrate import bootstrap_delta, bootstrap_mean


def _ids(S, P, K):
    """Row ids of a full S x P x K table, rows ordered (seed, prompt, image)."""
    seed = np.repeat(np.arange(S), P * K)
    prompt = np.tile(np.repeat(np.arange(P), K), S)
    image = np.tile(np.arange(K), S * P)
    return seed, prompt, image


def _gaussian_table(rng, S, P, K, *, sd_prompt, sd_seed, sd_cell=0.1, sd_base=0.3, sd_image=0.5):
    """y[s, p, k] = a_p + b_s + c_sp + g_pk + e_spk, all effects centred normal: the true mean
    (over the populations of prompts and training seeds) is 0. g_pk is the base-image effect
    shared by every seed (win-rates against one base image per prompt and image seed)."""
    a = rng.normal(0, sd_prompt, (1, P, 1))
    b = rng.normal(0, sd_seed, (S, 1, 1))
    c = rng.normal(0, sd_cell, (S, P, 1))
    g = rng.normal(0, sd_base, (1, P, K))
    e = rng.normal(0, sd_image, (S, P, K))
    return (a + b + c + g + e).ravel()


# --------------------------------------------------------------------------- point estimate


def test_point_estimate_hand_computed():
    # seed s1: p -> [1, 0], q -> [1]        mean 2/3
    # seed s2: p -> [0],    q -> [1, 1, 0]  mean 2/4
    # mean over seeds (2/3 + 1/2) / 2 = 7/12 (the mean over the 7 images would be 4/7)
    values = [1, 0, 1, 0, 1, 1, 0]
    prompts = ["p", "p", "q", "p", "q", "q", "q"]
    seeds = ["s1", "s1", "s1", "s2", "s2", "s2", "s2"]
    r = two_level_bootstrap(values, prompts, seeds, n_boot=200)
    assert r["mean"] == pytest.approx(7 / 12)
    assert (r["n_images"], r["n_prompts"], r["n_seeds"]) == (7, 2, 2)
    assert r["ci_low"] <= r["mean"] <= r["ci_high"]


def test_single_seed_is_the_prompt_bootstrap():
    rng = np.random.default_rng(4)
    prompts = rng.integers(0, 37, size=300)
    values = (rng.random(300) < 0.6) + 0.0
    mine = two_level_bootstrap(values, prompts, ["only"] * 300, seed=11)
    ref = bootstrap_mean(values, prompts, seed=11)
    assert {k: mine[k] for k in ref} == ref  # same point estimate, same draws, same interval
    assert mine["n_seeds"] == 1 and mine["method"] == "prompt-percentile"
    other = rng.random(300)
    d = bootstrap_contrasts({"a": values, "b": other}, prompts, [0] * 300, seed=11).difference("a", "b")
    ref_d = bootstrap_delta(values, other, prompts, seed=11)
    for k in ("delta", "ci_low", "ci_high", "mean_a", "mean_b"):
        assert d[k] == pytest.approx(ref_d[k], rel=1e-12, abs=1e-12)


def test_constant_values_give_a_degenerate_interval():
    seed, prompt, _ = _ids(3, 5, 2)
    r = two_level_bootstrap(np.full(len(seed), 0.25), prompt, seed, n_boot=100)
    assert r["mean"] == r["ci_low"] == r["ci_high"] == pytest.approx(0.25)
    assert r["se"] == pytest.approx(0.0, abs=1e-12)


def test_additive_table_recovers_the_corrected_variance_shares():
    """y = b_s + a_p exactly (no interaction): the corrected bootstrap variances are the
    unbiased var(b)/S and var(a)/P (sample variances, ddof=1) up to Monte Carlo error, the cell
    share is 0, and the half-width is max(t_df se, t_{S-1} sqrt(u_S)) with Satterthwaite's df."""
    S, P, K = 3, 40, 2
    seed, prompt, _ = _ids(S, P, K)
    b = np.array([-1.0, 0.0, 1.0])                     # sample variance 1
    a = np.random.default_rng(0).normal(0, 0.5, P)
    r = two_level_bootstrap(b[seed] + a[prompt], prompt, seed, n_boot=4000, seed=1)
    assert r["mean"] == pytest.approx(a.mean())
    u_s, x_p = r["var_seed"], r["var_prompt"]
    assert u_s == pytest.approx(1 / S, rel=0.1)
    assert x_p == pytest.approx(a.var(ddof=1) / P, rel=0.1)
    assert r["var_cell"] == pytest.approx(0.0, abs=1e-12)
    assert r["se"] == pytest.approx(np.sqrt(u_s + x_p))
    assert r["df"] == pytest.approx((u_s + x_p) ** 2 / (x_p ** 2 / (P - 1) + u_s ** 2 / (S - 1)))
    half = max(t_quantile(0.975, r["df"]) * r["se"], t_quantile(0.975, S - 1) * np.sqrt(u_s))
    assert r["ci_high"] - r["mean"] == pytest.approx(half)
    assert r["mean"] - r["ci_low"] == pytest.approx(half)


def test_prompt_dominated_interval_is_the_satterthwaite_t():
    """Seeds identical (u_S = u_C = 0): the interval is the t interval of the prompt share with
    P - 1 df."""
    S, P, K = 3, 25, 2
    seed, prompt, _ = _ids(S, P, K)
    a = np.random.default_rng(1).normal(0, 1.0, P)
    r = two_level_bootstrap(a[prompt], prompt, seed, n_boot=3000)
    assert r["var_seed"] == pytest.approx(0.0, abs=1e-20)
    assert r["df"] == pytest.approx(P - 1)
    assert r["var_prompt"] == pytest.approx(a.var(ddof=1) / P, rel=0.1)
    assert r["ci_high"] - r["mean"] == pytest.approx(t_quantile(0.975, P - 1) * r["se"])


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.7, 1, 2, 2.6, 3, 4, 7.3, 29, 49, 98, 153.9, 1000, 250_000, 5e6):
        for q in (0.6, 0.95, 0.975, 0.995):
            assert t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)


def test_fixed_seed_is_deterministic():
    seed, prompt, _ = _ids(3, 20, 2)
    y = _gaussian_table(np.random.default_rng(0), 3, 20, 2, sd_prompt=0.2, sd_seed=0.1)
    assert two_level_bootstrap(y, prompt, seed, seed=5) == two_level_bootstrap(y, prompt, seed, seed=5)


# --------------------------------------------------------------------------- coverage

REGIMES = {
    # share of the variance of the mean: seeds ~85 %, prompts ~8 %, cells ~7 %
    "seed-dominated": dict(sd_prompt=0.1, sd_seed=0.15),
    # prompts ~80 %, seeds ~5 %, cells ~15 %
    "prompt-dominated": dict(sd_prompt=0.3, sd_seed=0.02),
}


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_coverage_of_the_two_level_interval(regime):
    """400 synthetic S = 3, P = 50, K = 4 tables with known prompt and seed variance (true mean
    0): the 95 % interval covers 0 in 93-97 % of them."""
    S, P, K, reps = 3, 50, 4, 400
    seed, prompt, _ = _ids(S, P, K)
    rng = np.random.default_rng({"seed-dominated": 101, "prompt-dominated": 202}[regime])
    covered, shares = 0, []
    for r in range(reps):
        y = _gaussian_table(rng, S, P, K, **REGIMES[regime])
        res = two_level_bootstrap(y, prompt, seed, seed=r)
        covered += res["ci_low"] <= 0.0 <= res["ci_high"]
        shares.append([res["var_seed"], res["var_prompt"]] / np.float64(res["se"] ** 2))
    seed_share, prompt_share = np.mean(shares, axis=0)
    if regime == "seed-dominated":
        assert seed_share > 0.6
    else:
        assert prompt_share > 0.6
    assert 0.93 <= covered / reps <= 0.97, covered / reps


# --------------------------------------------------------------------------- contrasts


def _win_tables(rng, deltas, S=3, P=50, K=4, sd_seed=0.01, shared=0.8):
    """Per-image wins (1/0) over the base model for several arms. P(win) of arm m, seed s,
    prompt p, image k is 0.5 + delta_m + a_p + b_ms + g_pk (a_p ~ U(-0.25, 0.25) prompt
    difficulty and g_pk ~ N(0, 0.05) base-image quality, shared by all arms and seeds;
    b_ms ~ N(0, sd_seed) the training seed). The uniform deciding a win is shared by the arms
    with probability ``shared`` (the same initial noise gives similar images), so it is
    marginally uniform: the true win-rate of arm m is 0.5 + delta_m (exactly for equal deltas;
    up to the rare clipping at 1 for the largest)."""
    a = rng.uniform(-0.25, 0.25, (1, P, 1))
    g = rng.normal(0, 0.05, (1, P, K))
    common = rng.random((S, P, K))
    out = {}
    for name, delta in deltas.items():
        b = rng.normal(0, sd_seed, (S, 1, 1))
        u = np.where(rng.random((S, P, K)) < shared, common, rng.random((S, P, K)))
        out[name] = (u < np.clip(0.5 + delta + a + b + g, 0, 1)).astype(float).ravel()
    return out


@pytest.mark.parametrize("S, P, delta", [(3, 50, 0.20), (5, 100, 0.08)])
def test_planted_difference_is_reproduced(S, P, delta):
    """A planted win-rate difference is "reproduced" in >= 95 of 100 synthetic tables (K = 4).
    With S = 3 the interval must allow for a seed variance known to 2 df (t_2 = 4.30): +8 pp at
    P = 50 is reproduced only 55-60 % of the time, +20 pp about 99 %; with S = 5 seeds and
    P = 100 prompts +8 pp about 99 % (module docstring, "The price")."""
    seed, prompt, image = _ids(S, P, 4)
    rng = np.random.default_rng(7)
    got = []
    for r in range(100):
        tables = _win_tables(rng, {"new": delta, "old": 0.0}, S=S, P=P)
        d = bootstrap_contrasts(tables, prompt, seed, image_ids=image, seed=r).difference("new", "old")
        assert d["delta"] == pytest.approx(tables["new"].mean() - tables["old"].mean())
        got.append(verdict(d["ci_low"], d["ci_high"], +1))
    assert got.count("reproduced") >= 95, got.count("reproduced")


def test_no_difference_is_inconclusive():
    seed, prompt, image = _ids(3, 50, 4)
    rng = np.random.default_rng(8)
    got = []
    for r in range(200):
        c = bootstrap_contrasts(_win_tables(rng, {"a": 0.0, "b": 0.0}), prompt, seed,
                                image_ids=image, seed=r)
        d = c.difference("a", "b")
        got.append(verdict(d["ci_low"], d["ci_high"], +1))
    assert got.count("inconclusive") >= 180, got.count("inconclusive")


def test_difference_is_paired_and_antisymmetric():
    seed, prompt, _ = _ids(3, 30, 2)
    tables = _win_tables(np.random.default_rng(3), {"a": 0.1, "b": 0.0, "c": -0.1}, P=30, K=2)
    c = bootstrap_contrasts(tables, prompt, seed, n_boot=500)
    ab, ba = c.difference("a", "b"), c.difference("b", "a")
    assert ab["delta"] == pytest.approx(c.arms["a"]["mean"] - c.arms["b"]["mean"])
    assert ab["delta"] == pytest.approx(-ba["delta"])
    assert (ab["ci_low"], ab["ci_high"]) == pytest.approx((-ba["ci_high"], -ba["ci_low"]))
    # the per-arm summary is two_level_bootstrap with the same draws
    alone = two_level_bootstrap(tables["a"], prompt, seed, n_boot=500)
    assert {k: c.arms["a"][k] for k in alone} == pytest.approx(alone)
    # pairing: the difference of an arm with itself shifted by a constant is exact
    shifted = bootstrap_contrasts({"x": tables["a"] + 0.05, "y": tables["a"]}, prompt, seed, n_boot=500)
    d = shifted.difference("x", "y")
    assert (d["delta"], d["ci_low"], d["ci_high"]) == pytest.approx((0.05, 0.05, 0.05))


def test_contrasts_reject_rows_that_differ():
    seed, prompt, image = _ids(2, 3, 2)
    vals = {"a": np.zeros(12), "b": np.ones(12)}
    other_prompts = prompt.copy()
    other_prompts[[4, 5]] = other_prompts[[5, 4]] + 1
    with pytest.raises(ValueError, match=r"arm 'b' differs from arm 'a' in prompt_ids at 2 row\(s\)"):
        bootstrap_contrasts(vals, {"a": prompt, "b": other_prompts}, seed)
    with pytest.raises(ValueError, match=r"arm 'b' has 11 rows in seed_ids"):
        bootstrap_contrasts(vals, prompt, {"a": seed, "b": seed[:11]})
    with pytest.raises(ValueError, match=r"image_ids has no entry for arm\(s\) \['b'\]"):
        bootstrap_contrasts(vals, prompt, seed, image_ids={"a": image})
    with pytest.raises(ValueError, match=r"arm 'b' has 11 values for 12 rows"):
        bootstrap_contrasts({"a": np.zeros(12), "b": np.ones(11)}, prompt, seed)
    bad = np.ones(12)
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"arm 'b' has 1 NaN/inf value\(s\): row 3 \(seed '0', prompt '1'\)"):
        bootstrap_contrasts({"a": np.zeros(12), "b": bad}, prompt, seed)
    with pytest.raises(ValueError, match="appear more than once"):
        bootstrap_contrasts(vals, prompt, seed, image_ids=np.zeros(12, dtype=int))
    # seed 1 never saw prompt 2
    keep = ~((seed == 1) & (prompt == 2))
    with pytest.raises(ValueError, match=r"\(seed '1', prompt '2'\)"):
        two_level_bootstrap(np.zeros(keep.sum()), prompt[keep], seed[keep])
    with pytest.raises(ValueError, match="unknown arm"):
        bootstrap_contrasts(vals, prompt, seed, n_boot=10).difference("a", "z")


# --------------------------------------------------------------------------- verdicts


def test_verdicts():
    assert verdict(0.01, 0.2) == "reproduced"
    assert verdict(-0.2, -0.01) == "contradicted"
    assert verdict(-0.1, 0.1) == "inconclusive"
    assert verdict(0.0, 0.1) == "inconclusive"     # touching zero counts as including it
    # an end that is zero up to floating-point rounding touches zero too (seen in a real run:
    # a bootstrap quantile of win-rates in steps of 2/3 pp summed to 6.9e-15, not 0)
    assert verdict(6.92779167366129e-15, 12.666666666666664) == "inconclusive"
    assert verdict(-2.000000000000014, -6.9e-15) == "inconclusive"
    assert verdict(-12.0, 7e-15, expected_sign=-1) == "inconclusive"
    # ... but the tolerance scales with the interval, so small units still decide
    assert verdict(1e-6, 5e-6) == "reproduced"
    assert verdict(0.001, 0.03) == "reproduced"
    assert verdict(-0.03, -0.001) == "contradicted"


def test_interval_text_never_prints_a_decided_end_as_zero():
    # the committed full run's two cases: decided, with an end that rounds to 0.0
    assert interval_text(5.5, 0.042546609981920724, 10.95745339001808) == "+5.5 [+0.04, +11.0]"
    assert verdict(0.042546609981920724, 10.95745339001808) == "reproduced"
    assert interval_text(-3.0, -5.966237967409243, -0.03376203259075705) == "-3.0 [-6.0, -0.03]"
    # an end that is zero up to rounding prints as zero, as verdict() reads it
    assert interval_text(6.0, 6.92779167366129e-15, 12.666666666666664) == "+6.0 [+0.0, +12.7]"
    assert interval_text(0.0, 0.0, 0.0, 3) == "+0.000 [+0.000, +0.000]"
    # ordinary ends keep their digits; unsigned for rates
    assert interval_text(-0.083, -0.2661, 0.0994, 3) == "-0.083 [-0.266, +0.099]"
    assert interval_text(64.2, 54.43, 73.94, sign=False) == "64.2 [54.4, 73.9]"
    assert interval_text(0.1, 0.0004, 0.3, 3) == "+0.100 [+0.0004, +0.300]"
    assert verdict(-0.1, 0.0) == "inconclusive"
    assert verdict(0.0, 0.0) == "inconclusive"
    assert verdict(-0.2, -0.01, expected_sign=-1) == "reproduced"
    assert verdict(0.01, 0.2, expected_sign=-1) == "contradicted"
    assert verdict(-0.1, 0.0, expected_sign=-1) == "inconclusive"
    with pytest.raises(ValueError, match="expected_sign"):
        verdict(0.1, 0.2, expected_sign=0)
    with pytest.raises(ValueError, match="not a confidence interval"):
        verdict(0.3, 0.2)
    with pytest.raises(ValueError, match="not a confidence interval"):
        verdict(float("nan"), 0.2)


# --------------------------------------------------------------------------- table marks


def test_best_beyond_ci_marks_a_decisive_best():
    seed, prompt, _ = _ids(3, 50, 4)
    tables = _win_tables(np.random.default_rng(21), {"capo": 0.25, "dpo": 0.01, "base": 0.0})
    c = bootstrap_contrasts(tables, prompt, seed)
    assert best_beyond_ci(c, ["base", "dpo", "capo"]) == {"capo": "best", "dpo": "", "base": ""}
    # lower is better: the same column read the other way has no decisive best
    low = best_beyond_ci(c, ["base", "dpo", "capo"], higher=False)
    assert low == {"base": "tied", "dpo": "tied", "capo": ""}
    assert best_beyond_ci(c, ["dpo"]) == {"dpo": "best"}


def test_best_beyond_ci_marks_ties():
    seed, prompt, _ = _ids(3, 50, 4)
    tables = _win_tables(np.random.default_rng(22), {"a": 0.1, "b": 0.1, "c": -0.2})
    c = bootstrap_contrasts(tables, prompt, seed)
    marks = best_beyond_ci(c, ["a", "b", "c"])
    assert marks == {"a": "tied", "b": "tied", "c": ""}
    with pytest.raises(ValueError, match="unknown arm"):
        best_beyond_ci(c, ["a", "zz"])
