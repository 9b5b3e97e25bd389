"""Power planning for capo's head-to-head comparisons: how many training seeds, prompts and
images per prompt a comparison needs before the 95% CI that ``capo.eval.stats`` reports can
decide a given difference. Arrays in, numbers out (the runs are read by ``capo.experiments.power``).

Design and model: those of ``capo.eval.stats``. A comparison A - B is evaluated with ``S``
training seeds per arm (seed i of A paired with seed i of B), ``P`` prompts and ``K`` images
per prompt, the same (seed, prompt, image) rows for both arms; its per-image value is the paired
difference ``y[s, p, k] = value_A - value_B`` (percentage points for win-rates). Random effects::

    y[s, p, k] = mu + a_p + b_s + g_sp + e_spk
    Var a = s2_prompt,  Var b = s2_seed,  Var g = s2_cell (seed x prompt),  Var e = s2_image

which is stats.py's cell model ``m[s, p] = mu + a_p + b_s + c_sp`` with ``c_sp = g_sp + mean_k
e_spk``, so ``s2_c = s2_cell + s2_image / K``. The estimate (the mean over seeds of each seed's
mean) has variance ``V = s2_prompt/P + s2_seed/S + s2_c/(S P)``.

1. Variance parts from a pilot (``components``): the ANOVA (method-of-moments) estimators of
   the balanced two-way crossed random model with K replicates per cell (Searle, Casella &
   McCulloch 1992, *Variance Components*, ch. 4, balanced data; Montgomery, *Design and
   Analysis of Experiments*, ch. 13, the two-factor factorial with random factors). With cell
   means m_sp, seed means m_s., prompt means m_.p and the grand mean m..::

       MS_P  = S K sum_p (m_.p - m..)^2 / (P - 1)                  E = s2_image + K s2_cell + S K s2_prompt
       MS_S  = P K sum_s (m_s. - m..)^2 / (S - 1)                  E = s2_image + K s2_cell + P K s2_seed
       MS_SP = K sum (m_sp - m_s. - m_.p + m..)^2 / ((S-1)(P-1))   E = s2_image + K s2_cell
       MS_E  = sum (y - m_sp)^2 / (S P (K - 1))                    E = s2_image

       s2_image = MS_E,  s2_cell = (MS_SP - MS_E)/K,  s2_prompt = (MS_P - MS_SP)/(S K),
       s2_seed = (MS_S - MS_SP)/(P K),

   each truncated at 0 (the usual practice; the untruncated values are returned too). With
   K = 1 the cell and image parts cannot be told apart: all of ``MS_SP`` is counted as s2_cell,
   the conservative choice (more images per prompt are then assumed not to help).

2. The interval stats.py would report for a design (S, P, K), S >= 2. Its bootstrap variances
   are, for the ideal bootstrap (n_boot -> infinity; capo's 2,000 draws add about 3% noise to
   each, ignored), exactly mean squares of the S x P table of cell means divided by S P
   (module docstring of stats.py; ``C*`` is the mean of the drawn cells' interaction
   residuals, whose ideal variance is ``SS_res / (S P)^2``)::

       u_P = MS_P / (S P K) ~ E_P chi2_{P-1} / (P-1),              E_P = s2_prompt/P + s2_c/(S P)
       u_S = MS_S / (S P K) ~ E_S chi2_{S-1} / (S-1),              E_S = s2_seed/S + s2_c/(S P)
       u_C = MS_SP / (S P K) ~ E_C chi2_{(S-1)(P-1)} / ((S-1)(P-1)), E_C = s2_c/(S P)

   for normal effects independent of one another and of the estimate ``theta ~ N(mu, V)``
   (Cochran's theorem on the balanced table; V = E_P + E_S - E_C). The half-width is
   ``stats._interval``'s, with q = (1 + ci)/2::

       x_P = max(u_P - u_C, 0),  se^2 = x_P + u_S,
       df  = max(se^4 / ([u_P^2/(P-1) + u_C^2/((S-1)(P-1))]_{x_P > 0} + u_S^2/(S-1)), S - 1)
       h(u) = max(t_{df, q} se, t_{S-1, q} sqrt(u_S))

3. Power: the verdict is decided (reproduced or contradicted) when the CI excludes zero,
   ``|theta| > h``. For a true difference d, since theta is independent of h::

       power(d) = E_u[ Phi((d - h(u)) / sqrt V) + Phi((-d - h(u)) / sqrt V) ]

   (the second term is a decision with the wrong sign: negligible once d is a few standard
   errors). The expectation over (u_P, u_S, u_C) is a product midpoint-quantile rule on their
   scaled chi-squares (``NODES``: 128 x 8 x 4 points; the seed part, with S - 1 df, is the one
   that matters). Checks: when s2_prompt = s2_c = 0 the seed floor binds and ``theta /
   sqrt(u_S)`` is a noncentral t, so power(d) = P(|T_{S-1}(d / sqrt V)| > t_{S-1, q})
   exactly (tested against scipy's ``nct``); a plug-in reading (u at its mean) is
   ``Phi((|d| - h(E)) / sqrt V)``, which overstates power at S = 3, because with 2 df the
   seed floor's 90th percentile is 1.8x its median and its 10th 0.4x. ``min_detectable``: the d with power(d)
   equal to the level (power rises with |d|). ``mean_half``: E_u[h(u)].

   With binary outcomes (wins) the effects are not normal; the prediction rests on theta and
   the seed means being near normal (means of P K and K images). Validated by simulation on
   normal and on win/loss tables (tests/test_power.py): within 5 points of the power of
   stats.py's own interval at designs this module recommends.

4. Parts from an interval alone (``parts_from_half_width``: reports that keep no per-image
   data, e.g. the committed ``reports/tables.csv``). A half-width h at (S0, P0, K0) bounds the
   seed-mean variance: h >= t_{S0-1} sqrt(u_S), with equality when the seed floor binds
   (x_P <= (t_{S0-1}^2 / t_df^2 - 1) u_S, i.e. up to 3.8 u_S at S0 = 3). Taking u_S = (h /
   t_{S0-1})^2 and s2_prompt = 0 leaves one number, E_S = s2_seed/S0 + s2_c/(S0 P0), whose split
   is not identified: ``SPLITS`` puts all of it on training seeds, on seed x prompt cells or on
   images, and the planner takes the worst case over them (``assess``). Designs that keep P0
   and K0 and change S have the same variance under every split (V = S0 E_S / S). A prompt
   part (x_P > 0, which the interval cannot rule out) would not shrink with more seeds: then
   these plans are optimistic, and only a pilot with per-image results can tell.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

CI = 0.95  # capo.eval.winrate.CI, the level of every interval capo reports
NODES = (128, 8, 4)  # quadrature points for u_S, u_P, u_C


# --------------------------------------------------------------------------- variance parts

@dataclass(frozen=True)
class Parts:
    """Variance parts of a paired difference, in the metric's units squared (pp^2 for
    win-rates): prompt ``a_p``, training seed ``b_s``, seed x prompt ``g_sp``, image ``e_spk``."""

    prompt: float
    seed: float
    cell: float
    image: float

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"variance part {k} must be finite and >= 0, got {v}")

    def c(self, K: int) -> float:
        """s2_c at K images per prompt: seed x prompt + image / K."""
        return self.cell + self.image / K

    def as_dict(self) -> dict:
        return asdict(self)


def _balanced(values, prompt_ids, seed_ids) -> tuple[np.ndarray, list, list]:
    """The (S, P, K) array of ``values``; every (seed, prompt) cell must hold K images."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) != len(prompt_ids) or len(v) != len(seed_ids):
        raise ValueError(f"values, prompt_ids and seed_ids must be 1-d of one length, got {v.shape}, "
                         f"{len(prompt_ids)}, {len(seed_ids)}")
    if not len(v):
        raise ValueError("no values")
    if not np.isfinite(v).all():
        raise ValueError(f"values has {int((~np.isfinite(v)).sum())} NaN/inf value(s)")
    prompts, pg = np.unique(np.asarray([str(p) for p in prompt_ids], dtype=object), return_inverse=True)
    seeds, sg = np.unique(np.asarray([str(s) for s in seed_ids], dtype=object), return_inverse=True)
    S, P = len(seeds), len(prompts)
    cell = sg.reshape(-1) * P + pg.reshape(-1)
    counts = np.bincount(cell, minlength=S * P)
    if counts.min() != counts.max():
        raise ValueError(f"variance parts need a balanced table: every (seed, prompt) cell the same number of "
                         f"images, got {counts.min()}-{counts.max()}")
    order = np.argsort(cell, kind="stable")
    return v[order].reshape(S, P, int(counts[0])), list(seeds), list(prompts)


def components(values, prompt_ids, seed_ids) -> dict:
    """Method-of-moments variance parts (module docstring, 1.) of per-image paired differences.

    Returns ``{"parts": Parts (truncated at 0), "raw": untruncated dict, "mean_squares": {MS_P,
    MS_S, MS_SP, MS_E}, "S", "P", "K", "mean"}``. Needs S >= 2 and P >= 2; K = 1 counts the
    residual as seed x prompt (no image part)."""
    y, seeds, prompts = _balanced(values, prompt_ids, seed_ids)
    S, P, K = y.shape
    if S < 2:
        raise ValueError("the seed part needs at least 2 training seeds (or several one-seed runs on the same "
                         "prompts and images, stacked as seeds)")
    if P < 2:
        raise ValueError("the prompt part needs at least 2 prompts")
    m = y.mean(axis=2)                       # (S, P) cell means
    ms, mp, mm = m.mean(axis=1), m.mean(axis=0), m.mean()
    MS_P = S * K * ((mp - mm) ** 2).sum() / (P - 1)
    MS_S = P * K * ((ms - mm) ** 2).sum() / (S - 1)
    MS_SP = K * ((m - ms[:, None] - mp[None, :] + mm) ** 2).sum() / ((S - 1) * (P - 1))
    if K > 1:
        MS_E = ((y - m[..., None]) ** 2).sum() / (S * P * (K - 1))
        raw = {"prompt": (MS_P - MS_SP) / (S * K), "seed": (MS_S - MS_SP) / (P * K),
               "cell": (MS_SP - MS_E) / K, "image": MS_E}
    else:
        MS_E = math.nan
        raw = {"prompt": (MS_P - MS_SP) / S, "seed": (MS_S - MS_SP) / P, "cell": MS_SP, "image": 0.0}
    parts = Parts(**{k: max(float(v), 0.0) for k, v in raw.items()})
    return {"parts": parts, "raw": {k: float(v) for k, v in raw.items()},
            "mean_squares": {"MS_P": float(MS_P), "MS_S": float(MS_S), "MS_SP": float(MS_SP), "MS_E": float(MS_E)},
            "S": S, "P": P, "K": K, "mean": float(mm)}


def pool(parts: Sequence[Parts]) -> Parts:
    """The mean of each part over several comparisons (or runs): a typical comparison's parts
    (the mean of unbiased estimates is unbiased for the mean part)."""
    if not parts:
        raise ValueError("nothing to pool")
    return Parts(**{k: float(np.mean([getattr(p, k) for p in parts])) for k in ("prompt", "seed", "cell", "image")})


# --------------------------------------------------------------------------- interval of a design

def expected_mean_squares(parts: Parts, S: int, P: int, K: int) -> dict:
    """``E_P, E_S, E_C`` (the expected u_P, u_S, u_C) and ``V`` (the estimate's variance)."""
    c = parts.c(K)
    E_C = c / (S * P)
    return {"E_P": parts.prompt / P + E_C, "E_S": parts.seed / S + E_C, "E_C": E_C,
            "V": parts.prompt / P + parts.seed / S + E_C}


@functools.lru_cache(maxsize=8)
def _t_table(q: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import stdtrit

    log_df = np.linspace(0.0, math.log(1e7), 8000)
    return log_df, stdtrit(np.exp(log_df), q)


def t_quantiles(q: float, df) -> np.ndarray:
    """Student's t ``q`` quantile for an array of df >= 1 (interpolated in log df on 8,000
    points; relative error below 1e-5; df > 1e7 as 1e7)."""
    log_df, t = _t_table(q)
    return np.interp(np.log(np.clip(np.asarray(df, dtype=np.float64), 1.0, 1e7)), log_df, t)


def _check_design(S: int, P: int, K: int) -> None:
    if int(S) != S or S < 2:
        raise ValueError(f"a design needs S >= 2 training seeds (a one-seed CI is conditional on its seed), got {S}")
    if int(P) != P or P < 2 or int(K) != K or K < 1:
        raise ValueError(f"a design needs P >= 2 prompts and K >= 1 images per prompt, got P = {P}, K = {K}")


@functools.lru_cache(maxsize=4096)
def _nodes(df: float, n: int) -> np.ndarray:
    """Midpoint quantiles of chi2_df / df: ``n`` equally weighted nodes."""
    from scipy.special import chdtri

    return chdtri(df, 1 - (np.arange(n) + 0.5) / n) / df


def half_widths(u_P, u_S, u_C, S: int, P: int, ci: float = CI) -> np.ndarray:
    """stats._interval's half-width from the bootstrap variances (arrays broadcast together)."""
    q = (1 + ci) / 2
    d_p, d_s, d_c = P - 1, S - 1, (S - 1) * (P - 1)
    u_P, u_S, u_C = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (u_P, u_S, u_C)))
    x_p = np.maximum(u_P - u_C, 0.0)
    var = x_p + u_S
    den = np.where(x_p > 0, u_P ** 2 / d_p + u_C ** 2 / d_c, 0.0) + u_S ** 2 / d_s
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(den > 0, var ** 2 / np.where(den > 0, den, 1.0), np.inf)
    df = np.maximum(df, d_s)
    half = np.maximum(t_quantiles(q, df) * np.sqrt(var), float(t_quantiles(q, d_s)) * np.sqrt(u_S))
    return np.where(var > 0, half, 0.0)


class Design:
    """One design (S, P, K) under one set of parts: the half-width's distribution on
    quadrature nodes, the power at any difference and the minimum detectable difference."""

    def __init__(self, parts: Parts, S: int, P: int, K: int, ci: float = CI, nodes: tuple = NODES):
        _check_design(S, P, K)
        self.parts, self.S, self.P, self.K, self.ci = parts, int(S), int(P), int(K), ci
        e = expected_mean_squares(parts, S, P, K)
        self.V, self.E = e["V"], e
        n_s, n_p, n_c = nodes
        u_S = e["E_S"] * _nodes(S - 1, n_s)[:, None, None]
        u_P = e["E_P"] * _nodes(P - 1, n_p)[None, :, None]
        u_C = e["E_C"] * _nodes((S - 1) * (P - 1), n_c)[None, None, :]
        self.h = half_widths(u_P, u_S, u_C, S, P, ci).ravel()

    @property
    def se(self) -> float:
        return math.sqrt(self.V)

    @property
    def mean_half(self) -> float:
        return float(self.h.mean())

    def power(self, d: float) -> float:
        """P(the CI excludes 0) for a true difference ``d`` (module docstring, 3.)."""
        from scipy.special import ndtr

        if self.V <= 0:
            return float(np.mean(np.abs(d) > self.h))
        sd = math.sqrt(self.V)
        return float(np.mean(ndtr((d - self.h) / sd) + ndtr((-d - self.h) / sd)))

    def min_detectable(self, level: float = 0.8) -> float:
        """The difference decided with probability ``level`` (Brent's root of power(d) - level on
        d >= 0; power rises with |d|)."""
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        from scipy.optimize import brentq

        hi = max(self.h.max(), 1e-12) + 10 * math.sqrt(max(self.V, 1e-24))
        if self.power(0.0) >= level:
            return 0.0
        return float(brentq(lambda d: self.power(d) - level, 0.0, hi, xtol=1e-4 * hi, rtol=1e-6))

    def summary(self, target: float | None = None, level: float = 0.8, mdd: bool = True) -> dict:
        """se, mean and median half-width, the difference decided with ``level`` (NaN when not
        ``mdd``) and the power at ``target``."""
        out = {"S": self.S, "P": self.P, "K": self.K, "se": self.se, "mean_half": self.mean_half,
               "median_half": float(np.median(self.h)), "level": level,
               "min_detectable": self.min_detectable(level) if mdd else math.nan}
        if target is not None:
            out["target"] = float(target)
            out["power"] = self.power(target)
        return out


def power(parts: Parts, S: int, P: int, K: int, d: float, ci: float = CI) -> float:
    """P(stats.py's CI excludes 0) at design (S, P, K) for a true difference ``d``."""
    return Design(parts, S, P, K, ci).power(d)


def min_detectable(parts: Parts, S: int, P: int, K: int, level: float = 0.8, ci: float = CI) -> float:
    """The true difference whose CI excludes 0 with probability ``level`` at (S, P, K)."""
    return Design(parts, S, P, K, ci).min_detectable(level)


# --------------------------------------------------------------------------- parts from an interval alone

SPLITS = {  # name -> (share of E_S on training seeds, share of the rest on seed x prompt cells)
    "seeds": (1.0, 0.0),
    "seed x prompt": (0.0, 1.0),
    "images": (0.0, 0.0),
}


def seed_variance_from_half_width(half: float, S: int, ci: float = CI) -> float:
    """u_S = (h / t_{S-1, q})^2: the seed means' variance when the seed floor sets the
    half-width (an upper bound on u_S otherwise)."""
    if S < 2:
        raise ValueError("a one-seed interval carries no seed variance")
    return (half / float(t_quantiles((1 + ci) / 2, S - 1))) ** 2


def parts_from_seed_variance(u_S: float, S: int, P: int, K: int, split: str) -> Parts:
    """Parts whose E_S at (S, P, K) is ``u_S``, all of it on ``split`` (``SPLITS``); s2_prompt = 0."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    f_seed, f_cell = SPLITS[split]
    c = (1 - f_seed) * S * P * u_S
    return Parts(prompt=0.0, seed=f_seed * S * u_S, cell=f_cell * c, image=(1 - f_cell) * K * c)


def parts_from_half_width(half: float, S: int, P: int, K: int, ci: float = CI) -> dict[str, Parts]:
    """Every split's parts (``SPLITS``) of one reported half-width at design (S, P, K)."""
    u = seed_variance_from_half_width(half, S, ci)
    return {name: parts_from_seed_variance(u, S, P, K, name) for name in SPLITS}


# The defaults where no pilot is given: the committed `capo reproduce --preset full` run's
# per-image gold win-rate differences, as `capo power` measured them (reports/power-full.json,
# `capo power runs/reproduce-full --json reports/power-full.json`): per base, the method-of-moments
# parts (1. above) averaged over the 16 head-to-head comparisons, in pp^2. With one image per
# prompt the image part cannot be told from the seed x prompt part and is counted there (more
# images per prompt are assumed not to help). tests/test_power.py checks these numbers against
# the committed JSON. (Until 2026-12-04 the defaults were u_S from the intervals of
# reports/tables.csv, with no prompt part: optimistic about designs with few prompts.)
COMMITTED_FULL = {
    "source": "reports/power-full.json (capo power on the committed full run's per-image results): the mean "
              "variance parts of the gold win-rate differences of its 16 head-to-head comparisons per base",
    "design": (12, 50, 1),
    "metric": "gold win-rate difference (pp)",
    "parts": {"shapes-sd3": Parts(prompt=147.2789, seed=8.5614, cell=2204.7368, image=0.0),
              "shapes-sdxl": Parts(prompt=187.3686, seed=8.3565, cell=1238.6847, image=0.0)},
}


def committed_scenarios(base: str) -> dict[str, Parts]:
    """The default parts for a base: the committed full run's own base, or for real models the
    shapes base of the same family (sdxl -> shapes-sdxl, sd3 -> shapes-sd3)."""
    parts = COMMITTED_FULL["parts"]
    sd3 = any(k in base.lower() for k in ("sd3", "stable-diffusion-3"))
    key = base if base in parts else ("shapes-sd3" if sd3 else "shapes-sdxl")
    return {"measured": parts[key]}


# --------------------------------------------------------------------------- planning

def assess(scenarios: Mapping[str, Parts], S: int, P: int, K: int, target: float, level: float = 0.8,
           ci: float = CI, mdd: bool = True) -> dict:
    """A design under several candidate parts: the worst case (lowest power at ``target``,
    largest half-width and minimum detectable difference) and the scenario that sets it
    (``"every split alike"`` when they all give the same power)."""
    rows = {name: Design(p, S, P, K, ci).summary(target, level, mdd) for name, p in scenarios.items()}
    worst = min(rows, key=lambda n: rows[n]["power"])
    if len(rows) > 1 and max(r["power"] for r in rows.values()) - rows[worst]["power"] < 1e-6:
        worst = "every split alike"
    low = rows[worst] if worst in rows else next(iter(rows.values()))
    return {"S": S, "P": P, "K": K, "target": float(target), "level": level,
            "power": low["power"], "mean_half": max(r["mean_half"] for r in rows.values()),
            "min_detectable": max(r["min_detectable"] for r in rows.values()), "se": max(r["se"] for r in rows.values()),
            "worst": worst, "scenarios": rows}


def images_cost(S: int, P: int, K: int) -> dict:
    """The cost proxy without a cost model: images evaluated per cell over all seeds (S P K)."""
    return {"value": float(S * P * K), "unit": "images x seeds", "feasible": True}


def grid(scenario_sets: Mapping[str, Mapping[str, Parts]], seeds: Iterable[int], prompts: Iterable[int],
         images: Iterable[int], target: float, level: float = 0.8, ci: float = CI,
         cost: Callable[[int, int, int], dict] | None = None, mdd: bool = True) -> list[dict]:
    """Every design of the grid, assessed for every named set of scenarios (e.g. one per base
    or per comparison); ``power`` / ``min_detectable`` of a row are the worst over the sets
    (``mdd`` False: power only, faster). Rows sorted by cost (``images_cost`` without a cost
    model)."""
    cost = cost or images_cost
    rows = []
    for S in sorted(set(seeds)):
        for P in sorted(set(prompts)):
            for K in sorted(set(images)):
                per = {name: assess(sc, S, P, K, target, level, ci, mdd) for name, sc in scenario_sets.items()}
                worst = min(per, key=lambda n: per[n]["power"])
                rows.append({"S": S, "P": P, "K": K, "cost": cost(S, P, K), "power": per[worst]["power"],
                             "min_detectable": max(r["min_detectable"] for r in per.values()),
                             "mean_half": max(r["mean_half"] for r in per.values()), "worst": worst, "per": per})
    rows.sort(key=lambda r: (not r["cost"]["feasible"], r["cost"]["value"] if r["cost"]["value"] is not None
                             else math.inf, r["S"] * r["P"] * r["K"]))
    return rows


def smallest(rows: Sequence[dict], level: float = 0.8) -> dict | None:
    """The cheapest feasible design whose power reaches ``level`` (None when none does)."""
    ok = [r for r in rows if r["cost"]["feasible"] and r["power"] >= level]
    return min(ok, key=lambda r: (r["cost"]["value"] if r["cost"]["value"] is not None else math.inf,
                                  r["S"] * r["P"] * r["K"]), default=None)


def smallest_under(rows: Sequence[dict], level: float, scenario: str) -> dict | None:
    """The cheapest feasible design reaching ``level`` when ``scenario`` holds (in every set)."""
    ok = [r for r in rows if r["cost"]["feasible"]
          and all(a["scenarios"][scenario]["power"] >= level for a in r["per"].values())]
    return min(ok, key=lambda r: (r["cost"]["value"] if r["cost"]["value"] is not None else math.inf,
                                  r["S"] * r["P"] * r["K"]), default=None)


def frontier(rows: Sequence[dict]) -> list[dict]:
    """The efficient designs: feasible, sorted by cost, each with a smaller minimum detectable
    difference than every cheaper one."""
    out, best = [], math.inf
    for r in sorted((r for r in rows if r["cost"]["feasible"] and r["cost"]["value"] is not None),
                    key=lambda r: (r["cost"]["value"], r["min_detectable"])):
        if r["min_detectable"] < best - 1e-9:
            out.append(r)
            best = r["min_detectable"]
    return out


# --------------------------------------------------------------------------- a CPU cost model for the shapes presets

# The README's benchmark table: `capo reproduce --preset full` on the 2-core CPU (2026-12-02), per
# base: generate + score + pairs of 4,096 training samples 290 s, sweeps + seeds 2,296 s for the
# plan's 147 training runs of 40 steps x 16 pairs (94,080 pairs; the 105 sweep runs with their
# 5,300 validation images), eval of 73 models x 50 x 2 = 7,300 test images 629 s, benchmarks 121 s
# (1,416 images). A validation image costs what a test image does (sampling + rewards), so the
# training runs' share is 2,296 - 0.0862 x 5,300 = 1,839 s over 94,080 pairs: 0.0195 s per pair
# (a 40 x 16 run 12.5 s; `bench/bench_training_run.py` times one at 19.3 s under cProfile, cold).
# Per base 290 + 1,839 + 0.0862 x (5,300 + 8,716) = 3,337 s, both 6,674 s against 6,736 s measured.
_IMAGE_S = 629 / 7300  # per validation, test or benchmark image (sampling + rewards)
CPU_RATES = {
    "source": "README benchmark table, capo reproduce --preset full on the 2-core CPU (2026-12-02)",
    "train_sample_s": 290 / 4096,                 # generate + score + pairs, per training sample
    "pair_s": (2296 - _IMAGE_S * 5300) / 94080,   # one pair through a training step (policy fwd+bwd, reference fwd)
    "eval_image_s": _IMAGE_S,
}


def cpu_seconds(base_plan: Mapping) -> float:
    """Predicted 2-core CPU wall time of one shapes base of a ``capo.experiments.budget.experiment`` plan:
    training samples, pairs trained, and images sampled and scored (validation, test, benchmarks)."""
    im = base_plan["images"]
    return (CPU_RATES["train_sample_s"] * im["training samples"]
            + CPU_RATES["pair_s"] * base_plan["pairs"]
            + CPU_RATES["eval_image_s"] * (im["validation (beta selection)"] + im["test (win-rates)"]
                                           + im["benchmarks (GenEval, CompBench)"]))


# --------------------------------------------------------------------------- text

def design_name(r: Mapping) -> str:
    return f"{r['S']} x {r['P']} x {r['K']}"


def fmt_cost(c: Mapping) -> str:
    v, unit = c["value"], c["unit"]
    if v is None:
        return "-"
    text = f"{v:,.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    return text + ("" if c["feasible"] else f" ({c.get('note', 'not feasible')})")


def render_rows(rows: Sequence[dict], target: float, level: float, mark: Mapping[tuple, str] | None = None) -> list[str]:
    """A markdown table of designs: half-width, the difference decided with ``level``, the power
    at ``target``, the cost."""
    mark = mark or {}
    out = [f"| design (seeds x prompts x images) | mean half-width | decided with {level:.0%} | "
           f"P(+{target:g} decided) | cost |", "|---|---|---|---|---|"]
    for r in rows:
        tag = mark.get((r["S"], r["P"], r["K"]), "")
        out.append(f"| {design_name(r)}{' ' + tag if tag else ''} | ±{r['mean_half']:.1f} | +{r['min_detectable']:.1f} | "
                   f"{r['power']:.0%} | {fmt_cost(r['cost'])} |")
    return out


def sentence(r: Mapping, level: float) -> str:
    """"5 seeds x 200 prompts x 4 images: +3.0 points decided with 80% probability, 4,100 H100-hours"."""
    return (f"{r['S']} seeds x {r['P']} prompts x {r['K']} images: +{r['min_detectable']:.1f} points decided with "
            f"{level:.0%} probability, {fmt_cost(r['cost'])}")
