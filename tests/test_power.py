"""Power planning (capo.eval.power, capo.experiments.power): variance parts by the method of moments,
the interval stats.py reports for a design, the power formula against a closed form, and the
planner's recommended designs checked by simulation with capo's own interval code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from capo.eval import power as W
from capo.eval.stats import bootstrap_contrasts, two_level_bootstrap


def _ids(S, P, K):
    """Row ids of a full S x P x K table, rows ordered (seed, prompt, image)."""
    return np.repeat(np.arange(S), P * K), np.tile(np.repeat(np.arange(P), K), S)


def _normal_table(rng, parts: W.Parts, S, P, K, d=0.0):
    a = rng.normal(0, np.sqrt(parts.prompt), (1, P, 1))
    b = rng.normal(0, np.sqrt(parts.seed), (S, 1, 1))
    g = rng.normal(0, np.sqrt(parts.cell), (S, P, 1))
    e = rng.normal(0, np.sqrt(parts.image), (S, P, K))
    return (d + a + b + g + e).ravel()


def _win_tables(rng, S, P, K, delta, sd_seed=0.04, sd_cell=0.03, shared=0.8):
    """Per-image wins (100 / 0) of two arms over a base image: P(win) = 0.5 + delta_arm + a_p +
    b_s + c_sp + g_pk (prompt difficulty a ~ U(-0.25, 0.25) and base-image quality g shared by
    the arms; seed and seed x prompt effects per arm); the uniform deciding a win is shared by
    the arms with probability ``shared`` (the same initial noise gives similar images)."""
    a = rng.uniform(-0.25, 0.25, (1, P, 1))
    g = rng.normal(0, 0.05, (1, P, K))
    common = rng.random((S, P, K))
    out = {}
    for name, dl in (("new", delta), ("old", 0.0)):
        b = rng.normal(0, sd_seed, (S, 1, 1))
        c = rng.normal(0, sd_cell, (S, P, 1))
        u = np.where(rng.random((S, P, K)) < shared, common, rng.random((S, P, K)))
        out[name] = 100.0 * (u < np.clip(0.5 + dl + a + b + c + g, 0, 1)).ravel()
    return out


def _decided(d: dict) -> bool:
    return d["ci_low"] > 0 or d["ci_high"] < 0


# --------------------------------------------------------------------------- variance parts

def test_components_are_unbiased_for_known_parts():
    """The method-of-moments parts, averaged over 300 normal tables, land on the true ones."""
    truth = W.Parts(prompt=4.0, seed=9.0, cell=2.0, image=30.0)
    S, P, K = 4, 30, 3
    seed, prompt = _ids(S, P, K)
    rng = np.random.default_rng(11)
    raw = [W.components(_normal_table(rng, truth, S, P, K), prompt, seed)["raw"] for _ in range(300)]
    mean = {k: np.mean([r[k] for r in raw]) for k in raw[0]}
    # standard errors of the means over 300 tables: seed ~0.45 (3 df each), the rest well under 0.2
    assert mean["image"] == pytest.approx(30.0, abs=0.5)
    assert mean["cell"] == pytest.approx(2.0, abs=0.5)
    assert mean["prompt"] == pytest.approx(4.0, abs=0.5)
    assert mean["seed"] == pytest.approx(9.0, abs=1.5)


def test_components_reject_unbalanced_tables_and_one_seed():
    seed, prompt = _ids(2, 3, 2)
    with pytest.raises(ValueError, match="balanced"):
        W.components(np.zeros(11), prompt[:11], seed[:11])
    seed, prompt = _ids(1, 3, 2)
    with pytest.raises(ValueError, match="at least 2 training seeds"):
        W.components(np.zeros(6), prompt, seed)


def test_one_image_per_prompt_counts_the_residual_as_seed_by_prompt():
    S, P = 3, 20
    seed, prompt = _ids(S, P, 1)
    rng = np.random.default_rng(1)
    est = W.components(_normal_table(rng, W.Parts(1.0, 1.0, 0.0, 5.0), S, P, 1), prompt, seed)
    assert est["parts"].image == 0.0 and est["parts"].cell > 0


# --------------------------------------------------------------------------- the interval of a design

def test_half_width_from_mean_squares_is_stats_interval():
    """On one table, the half-width computed from the ANOVA mean squares (the ideal bootstrap)
    equals stats.two_level_bootstrap's (20,000 draws) within its bootstrap noise: the planner
    models the interval capo reports, not another one."""
    rng = np.random.default_rng(3)
    for parts, (S, P, K) in [(W.Parts(30.0, 4.0, 2.0, 400.0), (3, 40, 2)), (W.Parts(2.0, 20.0, 5.0, 300.0), (5, 30, 3)),
                             (W.Parts(80.0, 0.5, 1.0, 100.0), (4, 60, 1))]:
        seed, prompt = _ids(S, P, K)
        y = _normal_table(rng, parts, S, P, K)
        est = W.components(y, prompt, seed)
        ms = est["mean_squares"]
        u_P, u_S, u_C = (ms[k] / (S * P * K) for k in ("MS_P", "MS_S", "MS_SP"))
        h = float(W.half_widths(u_P, u_S, u_C, S, P))
        res = two_level_bootstrap(y, prompt, seed, n_boot=20_000)
        assert res["var_seed"] == pytest.approx(u_S, rel=0.04)
        assert (res["ci_high"] - res["ci_low"]) / 2 == pytest.approx(h, rel=0.03)


def test_power_is_the_noncentral_t_when_seeds_are_all_the_variance():
    """s2_prompt = s2_c = 0: the floor t_{S-1} sqrt(u_S) is the interval and theta / sqrt(u_S)
    is noncentral t with S - 1 df, so the quadrature must give scipy's nct probabilities."""
    from scipy.stats import nct, t

    for S in (2, 3, 5, 10):
        D = W.Design(W.Parts(0.0, 30.0, 0.0, 0.0), S, 50, 2)
        q = t.ppf(0.975, S - 1)
        for d in (2.0, 5.0, 9.0):
            ncp = d / D.se
            exact = nct.sf(q, S - 1, ncp) + nct.cdf(-q, S - 1, ncp)
            assert D.power(d) == pytest.approx(exact, abs=2e-3)


def test_power_rises_with_every_dimension_and_min_detectable_inverts_it():
    parts = W.Parts(10.0, 8.0, 4.0, 900.0)
    base = W.Design(parts, 3, 50, 2)
    for other in (W.Design(parts, 5, 50, 2), W.Design(parts, 3, 100, 2), W.Design(parts, 3, 50, 4)):
        assert other.power(5.0) > base.power(5.0) and other.mean_half < base.mean_half
    mdd = base.min_detectable(0.8)
    assert base.power(mdd) == pytest.approx(0.8, abs=1e-3)
    assert W.Design(parts, 3, 50, 2).power(0.0) == pytest.approx(base.power(0.0))  # deterministic


def test_t_quantiles_match_scipy():
    from scipy.special import stdtrit

    df = np.exp(np.random.default_rng(0).uniform(0, 15, 2000))
    assert np.allclose(W.t_quantiles(0.975, df), stdtrit(df, 0.975), rtol=1e-5)


# --------------------------------------------------------------------------- validated by simulation

def _simulated_power(rng, make, S, P, K, reps, n_boot):
    """The share of simulated tables whose paired difference new - old has a CI excluding 0,
    through bootstrap_contrasts(...).difference: the code capo.report.tables uses."""
    seed, prompt = _ids(S, P, K)
    hits = 0
    for r in range(reps):
        tables = make(rng, S, P, K)
        hits += _decided(bootstrap_contrasts(tables, prompt, seed, n_boot=n_boot, seed=r).difference("new", "old"))
    return hits / reps


def _seeds_cost(S, P, K):
    """Training seeds dear (as on GPUs: a seed is a training run per cell), images cheap."""
    return {"value": 2000.0 * S + S * P * K, "unit": "units", "feasible": True}


@pytest.mark.parametrize("name, parts, cost", [
    ("seed-heavy", W.Parts(prompt=20.0, seed=15.0, cell=10.0, image=1500.0), None),
    ("image-heavy, seeds dear", W.Parts(prompt=5.0, seed=0.5, cell=5.0, image=2500.0), _seeds_cost),
])
def test_recommended_design_has_its_predicted_power_in_simulation(name, parts, cost):
    """Normal effects with known parts: the design the planner recommends for +5 points at 80%
    (cost: images x seeds, or seeds dear), simulated 800 times and put through capo's own
    interval (300 bootstrap draws instead of 2,000, for time: it moves the simulated power by
    about a point), decides the difference within 5 points of the predicted power (Monte-Carlo
    SE 1.4 points). With seeds dear the planner picks 3 seeds, where the half-width's spread
    (2 df) matters: there the plug-in reading (variances at their means) is more than 5 points
    off, so this test tells the two apart."""
    from scipy.special import ndtr

    target = 5.0
    rows = W.grid({name: {"known": parts}}, seeds=(3, 4, 5, 8, 10, 12), prompts=(50, 100, 200), images=(1, 2, 4, 8),
                  target=target, level=0.8, mdd=False, cost=cost)
    best = W.smallest(rows, 0.8)
    assert best is not None
    S, P, K = best["S"], best["P"], best["K"]
    predicted = W.power(parts, S, P, K, target)
    assert predicted >= 0.8

    def make(rng, S, P, K):
        y = _normal_table(rng, parts, S, P, K, d=target)
        return {"new": y, "old": np.zeros_like(y)}

    simulated = _simulated_power(np.random.default_rng(21), make, S, P, K, reps=800, n_boot=300)
    assert abs(simulated - predicted) < 0.05, (S, P, K, predicted, simulated)
    if cost is _seeds_cost:
        assert S == 3
        e = W.expected_mean_squares(parts, S, P, K)
        h = float(W.half_widths(e["E_P"], e["E_S"], e["E_C"], S, P))
        plug_in = ndtr((target - h) / np.sqrt(e["V"])) + ndtr((-target - h) / np.sqrt(e["V"]))
        assert abs(plug_in - simulated) > 0.05, (plug_in, simulated)


def test_planning_from_a_win_pilot_holds_in_simulation():
    """Win / loss outcomes (not normal): the parts measured on a large simulated pilot plan the
    design for +5 points at 80%; 600 simulated experiments at that design, through capo's own
    interval, decide the difference within 5 points of the predicted power."""
    rng = np.random.default_rng(5)
    S0, P0, K0 = 30, 300, 4
    seed, prompt = _ids(S0, P0, K0)
    pilots = [_win_tables(rng, S0, P0, K0, 0.05) for _ in range(3)]
    parts = W.pool([W.components(t["new"] - t["old"], prompt, seed)["parts"] for t in pilots])
    assert parts.image > 20 * max(parts.prompt, parts.seed, parts.cell)  # win noise dominates, as in capo's runs
    assert parts.seed == pytest.approx(2 * 4.0 ** 2, rel=0.35)  # b_new - b_old: 2 x (4 pp)^2
    rows = W.grid({"wins": {"measured": parts}}, seeds=(3, 5, 8, 10, 15, 20, 30), prompts=(50, 100), images=(1, 2, 4, 8),
                  target=5.0, level=0.8, mdd=False)
    best = W.smallest(rows, 0.8)
    S, P, K = best["S"], best["P"], best["K"]
    predicted = W.power(parts, S, P, K, 5.0)
    simulated = _simulated_power(np.random.default_rng(6), lambda r, S, P, K: _win_tables(r, S, P, K, 0.05),
                                 S, P, K, reps=600, n_boot=300)
    assert abs(simulated - predicted) < 0.05, (S, P, K, predicted, simulated)


# --------------------------------------------------------------------------- pilots without per-image data

def test_committed_defaults_are_the_committed_per_image_parts():
    """COMMITTED_FULL is what reports/power-full.json says (refresh both when the full run is
    re-run: capo power runs/reproduce-full --json reports/power-full.json)."""
    from conftest import ROOT

    pilot = json.loads((ROOT / "reports" / "power-full.json").read_text())["pilot"]
    assert pilot["kind"] == "per-image" and pilot["metric"] == "gold"
    assert set(pilot["bases"]) == set(W.COMMITTED_FULL["parts"])
    for b, parts in W.COMMITTED_FULL["parts"].items():
        e = pilot["bases"][b]
        assert tuple(e["design"]) == W.COMMITTED_FULL["design"], b
        assert len(e["comparisons"]) == 16, b
        for k, v in e["pooled"]["measured"].items():
            assert getattr(parts, k) == pytest.approx(v, abs=1e-3), (b, k)
        assert W.committed_scenarios(b) == {"measured": parts}
    # real bases take the shapes base of their family
    assert W.committed_scenarios("stabilityai/stable-diffusion-3-medium-diffusers") == {"measured": W.COMMITTED_FULL["parts"]["shapes-sd3"]}
    assert W.committed_scenarios("sd3-medium") == {"measured": W.COMMITTED_FULL["parts"]["shapes-sd3"]}
    assert W.committed_scenarios("sdxl") == {"measured": W.COMMITTED_FULL["parts"]["shapes-sdxl"]}


def test_splits_of_an_interval_agree_at_the_pilot_design_and_part_elsewhere():
    """Every split of one half-width gives the same estimate variance at the pilot's prompts and
    images; more images help only when the variance is image noise."""
    sc = W.parts_from_half_width(10.0, 3, 50, 2)
    V = {n: W.expected_mean_squares(p, 8, 50, 2)["V"] for n, p in sc.items()}
    assert max(V.values()) == pytest.approx(min(V.values()))
    assert V["seeds"] == pytest.approx(3 * (10.0 / 4.302652729911275) ** 2 / 8)
    more = {n: W.expected_mean_squares(p, 3, 50, 8)["V"] for n, p in sc.items()}
    assert more["images"] < more["seed x prompt"] == more["seeds"]


# --------------------------------------------------------------------------- capo power and the dry run

def _write_eval(root, S=3, P=12, K=2, seed=0):
    """A reproduce-like run: <root>/toy-base/eval with per-image scores of the base and of
    capo/dpo/ipo trained on reward r1 for S seeds (labels <cell>.s<seed>), rewards r1 and gold."""
    rng = np.random.default_rng(seed)
    ev = root / "toy-base" / "eval"
    pid = np.repeat([f"p{i:02d}" for i in range(P)], K)
    sid = np.tile(np.arange(K), P)
    base = {"r1": rng.normal(size=P * K), "gold": rng.normal(size=P * K)}
    labels = {"toy-base": base}
    for o, eff in (("capo", 0.4), ("dpo", 0.1), ("ipo", 0.0)):
        for s in range(S):
            shift = eff + rng.normal(0, 0.1) + rng.normal(0, 0.2, P).repeat(K)
            labels[f"{o}-single-r1.s{s}"] = {r: base[r] + shift + rng.normal(0, 1, P * K) for r in ("r1", "gold")}
    for lab, cols in labels.items():
        d = ev / "results" / lab
        d.mkdir(parents=True)
        pd.DataFrame({"prompt_id": pid, "sample_id": sid, **cols}).to_parquet(d / "winrate_per_image.parquet")
    (ev / "results.json").write_text(json.dumps({
        "base": "toy-base", "results": {lab: {} for lab in labels}, "rewards": ["r1", "gold"],
        "n_prompts": {"toy": P}, "n_per_prompt": K}))
    return labels


def test_capo_power_on_per_image_runs_and_its_json(tmp_path):
    from capo.experiments import power as PW
    from capo.cli import main

    labels = _write_eval(tmp_path / "run")
    out = tmp_path / "power.json"
    r = CliRunner().invoke(main, ["power", str(tmp_path / "run"), "--rewards", "r1", "--roles", "MPS", "--gold", "gold",
                                  "--seeds", "3,5,10", "--images", "2,4", "--target", "20", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "capo-single-r1 vs dpo-single-r1" in r.output and "capo-single-r1 vs ipo-single-r1" in r.output
    assert "Smallest design" in r.output and "images x seeds" in r.output
    # the parts are components() of the paired gold-win differences, rows (seed, prompt, image)
    S, P, K = 3, 12, 2
    base = labels["toy-base"]["gold"]
    y = np.concatenate([100.0 * (labels[f"capo-single-r1.s{s}"]["gold"] > base)
                        - 100.0 * (labels[f"dpo-single-r1.s{s}"]["gold"] > base) for s in range(S)])
    seed, prompt = _ids(S, P, K)
    want = W.components(y, prompt, seed)["parts"]
    saved = json.loads(out.read_text())
    got = saved["pilot"]["bases"]["toy-base"]["comparisons"][0]
    assert got["name"] == "capo-single-r1 vs dpo-single-r1"
    assert got["scenarios"]["measured"] == pytest.approx(want.as_dict())
    # the JSON is a pilot: the same plan again
    again = PW.main([str(out)], target=20, seeds=[3, 5, 10], images=[2, 4])
    assert again.split("## base")[1].split("|")[:40] == r.output.split("## base")[1].split("|")[:40]


def test_two_one_seed_runs_stack_as_seeds(tmp_path):
    """Runs holding the same prompts and images add their seeds (e.g. two one-seed quick runs)."""
    from capo.experiments import power as PW

    for j in range(2):
        _write_eval(tmp_path / f"run{j}", S=1, seed=j)
    # the same base images in both runs (same data seed): copy run0's base into run1
    src = tmp_path / "run0" / "toy-base" / "eval" / "results" / "toy-base" / "winrate_per_image.parquet"
    dst = tmp_path / "run1" / "toy-base" / "eval" / "results" / "toy-base" / "winrate_per_image.parquet"
    dst.write_bytes(src.read_bytes())
    pilot = PW.load_pilot([str(tmp_path / "run0"), str(tmp_path / "run1")], ["r1"], ["MPS"], "gold")
    assert pilot["bases"]["toy-base"]["design"] == [2, 12, 2]
    with pytest.raises(ValueError, match="at least 2 training seeds"):
        PW.load_pilot([str(tmp_path / "run0")], ["r1"], ["MPS"], "gold")


def test_reproduce_dry_run_prints_the_power_table(tmp_path):
    from capo.cli import main

    r = CliRunner().invoke(main, ["reproduce", "--preset", "full", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "power (capo.eval.power)" in r.output and "(this preset)" in r.output
    assert "defaults from the committed full run" in r.output and "147 / 8.6 / 2205 pp² shapes-sd3" in r.output
    # the preset as re-planned on those parts: 12 seeds x the 177 held-out test prompts is the
    # smallest design of the grid that decides +5 with 80% probability on both bases
    assert "| 12 x 177 x 1 (this preset) (smallest at 80%) |" in r.output
    assert "smallest design deciding +5 with 80% probability on every base: 12 seeds x 177 prompts" in r.output
    assert "10 x 177 x 1" in r.output and "CPU-hours" in r.output
    assert "(shapes:geneval@test+6 more sets has 177 prompts)" in r.output
    # on the old test set (50 prompts) nothing reaches it: the prompt part does not shrink with seeds
    r = CliRunner().invoke(main, ["reproduce", "--preset", "full", "--dry-run", "eval_prompts=shapes:geneval@test"])
    assert r.exit_code == 0, r.output
    assert "no design of the grid decides +5 with 80% probability" in r.output
    assert "(shapes:geneval@test has 50 prompts)" in r.output
    # a pilot: the parts `capo power --json` measured on a run (one base: it stands for both)
    _write_eval(tmp_path / "run")
    js = tmp_path / "power.json"
    r = CliRunner().invoke(main, ["power", str(tmp_path / "run"), "--rewards", "r1", "--roles", "MPS", "--gold", "gold",
                                  "--seeds", "3", "--images", "2", "--json", str(js)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["reproduce", "--preset", "full", "--dry-run", f"pilot={js}", "power_target=30"])
    assert r.exit_code == 0, r.output
    assert f"pilot {js}" in r.output and "smallest design deciding +30" in r.output


def test_committed_full_run_parts_say_prompts_not_seeds_limit_it():
    """README's reading of reports/power-full.json (the 12-seed full run's per-image parts): at
    12 x 50 x 1 a typical comparison decides +5 less than half the time, 60 seeds on the same 50
    prompts still fall short of 80% (the prompt part does not shrink with seeds), and
    12 x 200 x 1 passes 80% on both bases."""
    from capo.experiments import power as PW

    pilot = PW.json_pilot(Path(__file__).resolve().parents[1] / "reports" / "power-full.json")
    for base, (now_lo, now_hi) in {"shapes-sd3": (0.35, 0.5), "shapes-sdxl": (0.4, 0.55)}.items():
        typical = pilot["bases"][base]["pooled"]["measured"]
        assert typical.prompt > 10 * typical.seed
        assert now_lo < W.power(typical, 12, 50, 1, 5.0) < now_hi
        assert W.power(typical, 60, 50, 1, 5.0) < 0.8 < W.power(typical, 12, 200, 1, 5.0)
