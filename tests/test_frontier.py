"""capo.report.frontier (win-rate at matched divergence along a beta sweep) and the frontier figures."""

import json

import numpy as np
import pytest

from capo.report import figures, frontier

REWARDS = ["r-a", "r-b"]
GOLD = "gold"


def _wr(w, half=5.0):
    return {"win_rate": w, "ci_low": w - half, "ci_high": w + half, "mean_a": 0.0, "mean_b": 0.0}


def make_sweep(betas, divs, wins, *, objective="capo", selected=1, trained=None, gold=None):
    """A sweep.json dict: ``wins`` maps reward -> win-rate per grid point (CI = +-5)."""
    gold = gold if gold is not None else [55.0] * len(betas)
    grid = []
    for i, (b, d) in enumerate(zip(betas, divs)):
        wr = {r: _wr(ws[i]) for r, ws in wins.items()}
        wr[GOLD] = _wr(gold[i])
        grid.append({"beta": b, "beta_trained": b, "checkpoint": f"beta-{b:g}/final", "winrate": wr,
                     "divergence": {"mean": d, "ci_low": 0.9 * d, "ci_high": 1.1 * d}, "param_distance": 1.0,
                     "criterion": float(np.mean([wr[r]["win_rate"] for r in REWARDS]))})
    return {"grid": grid, "selected": {"index": selected, "beta": betas[selected], "checkpoint": "x"},
            "criterion": "mean-winrate", "criterion_rewards": list(REWARDS), "report_rewards": [GOLD],
            "trained": trained or list(REWARDS),
            "cell": {"objective": objective, "weighting": "constant", "bias": 1.5}}


# grid by beta; divergence falls as beta grows (the usual direction)
SW = make_sweep([10.0, 100.0, 1000.0], [0.4, 0.2, 0.1], {"r-a": [70.0, 60.0, 52.0], "r-b": [50.0, 56.0, 54.0]})


def test_curve_sorted_by_divergence():
    div, win, lo, hi = frontier.curve(SW, "r-a")
    np.testing.assert_allclose(div, [0.1, 0.2, 0.4])
    np.testing.assert_allclose(win, [52.0, 60.0, 70.0])
    np.testing.assert_allclose(lo, win - 5)
    np.testing.assert_allclose(hi, win + 5)
    with pytest.raises(KeyError, match="not in the sweep"):
        frontier.curve(SW, "nope")


def test_interpolation_between_points_and_exact_at_grid_point():
    between, exact, low_end, high_end = frontier.at_divergence(SW, "r-a", [0.3, 0.2, 0.1, 0.4])
    # 0.3 lies halfway between (0.2, 60) and (0.4, 70)
    assert between == {"level": 0.3, "win_rate": pytest.approx(65.0), "ci_low": pytest.approx(60.0),
                       "ci_high": pytest.approx(70.0), "interpolated": True}
    assert exact == {"level": 0.2, "win_rate": 60.0, "ci_low": 55.0, "ci_high": 65.0, "interpolated": False}
    assert low_end["win_rate"] == 52.0 and not low_end["interpolated"]
    assert high_end["win_rate"] == 70.0 and not high_end["interpolated"]
    # a quarter of the way from (0.1, 52) to (0.2, 60)
    (q,) = frontier.at_divergence(SW, "r-a", [0.125])
    assert q["win_rate"] == pytest.approx(54.0) and q["interpolated"]


def test_outside_the_range_is_none_never_extrapolated():
    for row in frontier.at_divergence(SW, "r-a", [0.05, 0.41, float("nan")]):
        assert row["win_rate"] is None and row["ci_low"] is None and row["ci_high"] is None
        assert row["interpolated"] is False
    assert frontier.at_divergence(make_sweep([1.0], [float("nan")], {"r-a": [60.0], "r-b": [60.0]}, selected=0),
                                  "r-a", [0.1])[0]["win_rate"] is None


def test_non_monotone_divergence_uses_divergence_order():
    # divergence by beta: 0.3, 0.1, 0.2 -> by divergence: (0.1, 40), (0.2, 80), (0.3, 60)
    sw = make_sweep([1.0, 2.0, 3.0], [0.3, 0.1, 0.2], {"r-a": [60.0, 40.0, 80.0], "r-b": [50.0, 50.0, 50.0]})
    div, win, _, _ = frontier.curve(sw, "r-a")
    np.testing.assert_allclose(div, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(win, [40.0, 80.0, 60.0])
    a, b = frontier.at_divergence(sw, "r-a", [0.15, 0.25])
    assert a["win_rate"] == pytest.approx(60.0) and b["win_rate"] == pytest.approx(70.0)
    # equal divergences are merged into their mean
    tie = make_sweep([1.0, 2.0, 3.0], [0.1, 0.2, 0.2], {"r-a": [40.0, 60.0, 80.0], "r-b": [50.0, 50.0, 50.0]})
    at, mid = frontier.at_divergence(tie, "r-a", [0.2, 0.15])
    assert at["win_rate"] == pytest.approx(70.0) and not at["interpolated"]
    assert mid["win_rate"] == pytest.approx(55.0)


def test_mean_curve_over_criterion_rewards():
    div, win, lo, hi = frontier.mean_winrate_curve(SW)
    np.testing.assert_allclose(div, [0.1, 0.2, 0.4])
    np.testing.assert_allclose(win, [53.0, 58.0, 60.0])  # gold is not a criterion reward
    np.testing.assert_allclose(lo, win - 5)
    np.testing.assert_allclose(frontier.curve(SW, "mean")[1], win)
    (row,) = frontier.at_divergence(SW, frontier.MEAN, [0.3])
    assert row["win_rate"] == pytest.approx(59.0)


def test_common_levels_inside_the_overlap():
    other = make_sweep([10.0, 100.0, 1000.0], [0.05, 0.15, 0.3], {"r-a": [60.0] * 3, "r-b": [50.0] * 3})
    levels = frontier.common_levels([SW, other], k=3)
    assert len(levels) == 3 and levels == sorted(levels)
    assert all(0.1 < x < 0.3 for x in levels)  # overlap [0.1, 0.3]
    np.testing.assert_allclose(levels, [0.15, 0.2, 0.25])
    for sw in (SW, other):
        assert all(r["win_rate"] is not None for r in frontier.at_divergence(sw, "r-a", levels))
    far = make_sweep([10.0, 100.0], [1.0, 2.0], {"r-a": [60.0] * 2, "r-b": [50.0] * 2}, selected=0)
    assert frontier.common_levels([SW, far]) == []
    assert frontier.common_levels([]) == []
    assert frontier.common_levels([SW], k=1) == [pytest.approx(0.25)]


def _write_cell(root, base, cell, sweep):
    d = root / base / "sweep" / cell
    d.mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps(sweep))


def test_frontier_plots_write_pngs(tmp_path):
    root, reports = tmp_path / "exp", tmp_path / "reports"
    wins = {"r-a": [70.0, 60.0, 52.0], "r-b": [50.0, 56.0, 54.0]}
    _write_cell(root, "shapes-toy", "capo-frs", make_sweep([10.0, 100.0, 1000.0], [0.4, 0.2, 0.1], wins))
    _write_cell(root, "shapes-toy", "dpo-sum",
                make_sweep([10.0, 100.0, 1000.0], [0.8, 0.3, 0.05], wins, objective="dpo"))
    _write_cell(root, "shapes-toy", "dpo-single-r-a",
                make_sweep([10.0, 100.0, 1000.0], [0.8, 0.3, 0.05], wins, objective="dpo", trained=["r-a"],
                           gold=[48.0, 56.0, 53.0]))
    names = {"r-a": "A", "r-b": "B", GOLD: "gold"}
    written = figures.frontier_plots(root / "shapes-toy", reports, names)
    assert [p.name for p in written] == ["frontier_shapes-toy.png", "overopt_shapes-toy.png"]
    for p in written:
        assert p.is_file() and p.stat().st_size > 1024
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures.frontier_plots(tmp_path / "no-such-base", reports, names) == []
    # write_all picks the sweeps up (no eval/results.json here) and skips bases without them
    (root / "other-base").mkdir()
    out = figures.write_all(root, tmp_path / "r2", {"r-a": "A", "r-b": "B"}, gold=GOLD)
    assert sorted(p.name for p in out) == ["frontier_shapes-toy.png", "overopt_shapes-toy.png"]
