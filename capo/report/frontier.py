"""Win-rate against divergence along a ``beta`` sweep: the frontier of one training cell.

Pure functions over ``sweep.json`` dicts (``capo.stages.sweep``): no paths, no plotting.
Each grid point of a sweep has a validation divergence from the base model
(``point["divergence"]["mean"]``) and, per reward, a validation win-rate over the base with
a prompt-bootstrap CI (``point["winrate"][reward]``: ``win_rate``, ``ci_low``, ``ci_high``,
in percent). Ordered by divergence these points are the cell's *frontier*: how much
win-rate it buys for how far it moves from the base. Comparing objectives at one ``beta``
compares different step sizes; comparing them at a matched divergence does not
(``at_divergence`` at the ``common_levels`` of several sweeps).

A reward name is one of the sweep's rewards (the criterion rewards and the report-only
rewards such as the gold) or ``"mean"`` (``MEAN``): the mean over the sweep's
``criterion_rewards`` of the win-rates at each grid point (``mean_winrate_curve``).

Grid points whose divergence or win-rate is missing or not finite are left out of a
curve. Interpolation is linear in (divergence, win-rate) and never extrapolates.
"""

from __future__ import annotations

import math

import numpy as np

MEAN = "mean"  # reward name of the mean over the sweep's criterion rewards
FIELDS = ("win_rate", "ci_low", "ci_high")


def _num(x) -> float:
    """``x`` as a float; NaN when missing or not a number."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _mean_rewards(sweep: dict) -> list[str]:
    rewards = list(sweep.get("criterion_rewards") or [])
    if not rewards:
        raise KeyError("sweep has no criterion_rewards to average for the 'mean' curve")
    return rewards


def rewards_of(sweep: dict) -> list[str]:
    """Reward names a curve can be drawn for: the criterion rewards, then the report-only
    rewards (the gold), each only if at least one grid point measured it."""
    names = list(sweep.get("criterion_rewards") or []) + list(sweep.get("report_rewards") or [])
    grid = sweep.get("grid") or []
    return [r for r in dict.fromkeys(names) if any(r in (p.get("winrate") or {}) for p in grid)]


def _point_values(point: dict, sweep: dict, reward: str) -> tuple[float, float, float]:
    """(win_rate, ci_low, ci_high) of one grid point; NaN where not measured."""
    wr = point.get("winrate") or {}
    if reward == MEAN:
        vals = np.array([[_num((wr.get(r) or {}).get(k)) for k in FIELDS] for r in _mean_rewards(sweep)])
        return tuple(float(v) for v in vals.mean(axis=0))  # NaN if any reward is missing
    w = wr.get(reward) or {}
    return tuple(_num(w.get(k)) for k in FIELDS)


def points(sweep: dict, reward: str) -> list[dict]:
    """The grid points of ``sweep`` in grid order (by ``beta``) as flat dicts: ``index``
    (position in ``sweep["grid"]``), ``beta``, ``divergence``, ``win_rate``, ``ci_low``,
    ``ci_high``, ``selected`` (the sweep's chosen point). Values may be NaN; nothing is
    dropped. Raises ``KeyError`` when no grid point has ``reward``."""
    grid = sweep.get("grid") or []
    if reward != MEAN and grid and not any(reward in (p.get("winrate") or {}) for p in grid):
        raise KeyError(f"reward {reward!r} is not in the sweep; known: {', '.join(rewards_of(sweep))}")
    sel = (sweep.get("selected") or {}).get("index")
    out = []
    for i, p in enumerate(grid):
        w, lo, hi = _point_values(p, sweep, reward)
        div = _num((p.get("divergence") or {}).get("mean"))
        out.append({"index": i, "beta": _num(p.get("beta")), "divergence": div, "win_rate": w, "ci_low": lo,
                    "ci_high": hi, "selected": i == sel})
    return out


def _sorted_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in rows if math.isfinite(r["divergence"]) and math.isfinite(r["win_rate"])]
    # stable: ties in divergence keep grid (beta) order
    rows = sorted(rows, key=lambda r: r["divergence"])
    return tuple(np.array([r[k] for r in rows], dtype=np.float64)
                 for k in ("divergence", "win_rate", "ci_low", "ci_high"))


def curve(sweep: dict, reward: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(divergence, win_rate, ci_low, ci_high)`` of the grid points of ``sweep`` under
    ``reward`` (or ``"mean"``), sorted by divergence (ties keep ``beta`` order). Points with
    a non-finite divergence or win-rate are left out; CI bounds may be NaN."""
    if reward == MEAN:
        return mean_winrate_curve(sweep)
    return _sorted_arrays(points(sweep, reward))


def mean_winrate_curve(sweep: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``curve`` of the mean over ``sweep["criterion_rewards"]`` (the reward name ``"mean"``):
    at each grid point the mean of the per-reward win-rates, which is the ``mean-winrate``
    selection criterion. Its CI bounds are the means of the per-reward bounds: an
    approximation (the mean's own bootstrap CI would be narrower when the rewards disagree
    across prompts and is not recoverable from the summaries), for display only. A grid point
    missing any criterion reward is left out."""
    return _sorted_arrays(points(sweep, MEAN))


def _collapse_ties(div, *ys):
    """Merge points of equal divergence into one (the mean of their values), so the curve is
    a function of divergence."""
    u, inv = np.unique(div, return_inverse=True)
    if len(u) == len(div):
        return (div, *ys)
    counts = np.bincount(inv)
    out = []
    for y in ys:
        s = np.zeros(len(u))
        np.add.at(s, inv, y)
        out.append(s / counts)  # NaN in a tie stays NaN
    return (u, *out)


def at_divergence(sweep: dict, reward: str, levels) -> list[dict]:
    """Win-rate of ``sweep`` under ``reward`` (or ``"mean"``) at each divergence in
    ``levels``: ``[{"level", "win_rate", "ci_low", "ci_high", "interpolated"}]``.

    The curve is the grid points sorted by divergence (not by ``beta``: when divergence is
    not monotone in ``beta``, the points are simply re-ordered; points of equal divergence
    are merged into their mean). A level equal to a point's divergence takes that point's
    values (``interpolated`` False); a level strictly between two consecutive points takes
    the linear interpolation between them in (divergence, win-rate) (``interpolated``
    True). The CI bounds are interpolated the same way: an approximation (the bootstrap CI
    of a model between the two grid points was never measured). A level outside the curve's
    divergence range (or a curve with no points) gives None values and ``interpolated``
    False: nothing is extrapolated."""
    div, win, lo, hi = curve(sweep, reward)
    div, win, lo, hi = _collapse_ties(div, win, lo, hi)
    out = []
    for level in levels:
        level = float(level)
        row = {"level": level, "win_rate": None, "ci_low": None, "ci_high": None, "interpolated": False}
        if len(div) and math.isfinite(level) and div[0] <= level <= div[-1]:
            j = int(np.searchsorted(div, level, side="left"))
            if div[j] == level:
                vals = (win[j], lo[j], hi[j])
            else:  # div[j - 1] < level < div[j]
                t = (level - div[j - 1]) / (div[j] - div[j - 1])
                vals = tuple(y[j - 1] + t * (y[j] - y[j - 1]) for y in (win, lo, hi))
                row["interpolated"] = True
            for k, v in zip(FIELDS, vals):
                row[k] = float(v) if math.isfinite(v) else None
        out.append(row)
    return out


def divergence_range(sweep: dict, reward: str | None = None) -> tuple[float, float] | None:
    """(smallest, largest) finite divergence of the sweep's grid points (with a finite
    win-rate under ``reward`` when given); None when there is none."""
    if reward is None:
        d = np.array([_num((p.get("divergence") or {}).get("mean")) for p in sweep.get("grid") or []])
    else:
        d = curve(sweep, reward)[0]
    d = d[np.isfinite(d)] if len(d) else d
    return (float(d.min()), float(d.max())) if len(d) else None


def common_levels(sweeps: list[dict], k: int = 3, reward: str | None = None) -> list[float]:
    """``k`` divergence levels at which every sweep of ``sweeps`` can be read without
    extrapolation: inside the overlap ``[max of the smallest divergences, min of the
    largest]`` of their curves (restricted to points with a finite win-rate under
    ``reward`` when given).

    The levels are the overlap's evenly spaced interior quantiles ``lo + (hi - lo) * i /
    (k + 1)`` for ``i = 1..k`` (strictly inside, so no level rests on one sweep's end point
    alone); an overlap of a single point gives that point. An empty list when ``sweeps`` is
    empty, ``k < 1``, a sweep has no usable point, or the ranges do not overlap."""
    if not sweeps or k < 1:
        return []
    ranges = [divergence_range(s, reward) for s in sweeps]
    if any(r is None for r in ranges):
        return []
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo > hi:
        return []
    if lo == hi:
        return [lo]
    return [lo + (hi - lo) * i / (k + 1) for i in range(1, k + 1)]
