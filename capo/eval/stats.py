"""Comparisons between training methods over prompts AND training seeds, and their verdicts.

Setting: each method (an *arm*) is trained with ``S`` training seeds; every seed's model is
evaluated on the same ``P`` prompts x ``K`` images (a prompt's image ``k`` is paired with the base
model's image of that prompt and image seed). One value per image ``y[s, p, k]``: a win over the
base (1 / 0.5 / 0), a GenEval correctness (0 / 1), a score delta. Prompts and training seeds are
both samples from populations, so both vary a method's result; a CI over prompts alone is too
narrow as soon as seeds disagree.

Point estimate (``two_level_bootstrap``)::

    theta = (1 / S) sum_s  mean_s,    mean_s = sum_p sum_k y[s, p, k] / n_s     (n_s: seed s's images)

the mean over seeds of each seed's mean over its images; with one seed, the mean over images
(``capo.eval.winrate.bootstrap_mean``); with K images in every cell, the grand mean.

Crossed (two-level) bootstrap. A resample draws ``P`` prompts with replacement (every image of a
drawn prompt comes along, for every seed) and, independently, ``S`` seeds with replacement. Its
statistic is the estimator above on the drawn (seed, prompt) cells::

    T* = (1 / S) sum_i  [ sum_j sum[s_i, p_j] / sum_j count[s_i, p_j] ]

(``sum`` / ``count``: a cell's value sum and image count), i.e. with K images in every cell the
mean of the S x P drawn cells. The same prompt draw also gives ``A*`` (all seeds, drawn prompts)
and the same seed draw ``B*`` (drawn seeds, all prompts); ``C* = T* - A* - B* + theta`` is the
interaction part. Prompt indices come from ``default_rng(seed)`` in the blocks of
``winrate._bootstrap`` (so one seed reproduces it draw for draw), seed indices from
``default_rng([seed, 1])``. ``n_boot`` resamples, vectorised (one gather per seed and block).

Why not the percentile interval of ``T*``. In a crossed design with cell means
``m[s, p] = mu + a_p + b_s + c_sp`` (prompt, seed and cell effects, variances s2_a, s2_b, s2_c;
``c`` holds the seed x prompt interaction and the image noise / K) the variance of theta is
``V = s2_a/P + s2_b/S + s2_c/(S P)``. The ideal bootstrap gives ``Var A* = (P-1)/P (s2_a +
s2_c/S)/P``, ``Var B* = (S-1)/S (s2_b + s2_c/P)/S`` and ``Var C* = (S-1)(P-1)/(S P) s2_c/(S P)``
(McCullagh 2000, "Resampling and exchangeable arrays"): the seed term is shrunk by (S-1)/S (2/3
for S = 3), the cell term is counted up to three times, and no percentile of 3 seed values
carries the heavy tails of a variance known to 2 degrees of freedom. Simulated coverage of the
95 % percentile interval with S = 3: 0.82-0.98 (0.83 when seeds dominate).

Interval (S >= 2). The draws' variances, small-sample corrected, are the unbiased two-way ANOVA
mean squares (divided by S P)::

    u_P = P/(P-1) Var A*              E = s2_a/P + s2_c/(S P)        P - 1 df
    u_S = S/(S-1) Var B*              E = s2_b/S + s2_c/(S P)        S - 1 df
    u_C = S P/((S-1)(P-1)) Var C*     E = s2_c/(S P)                 (S-1)(P-1) df

    x_P  = max(u_P - u_C, 0)                                          (E = s2_a/P)
    se^2 = x_P + u_S                                                  (E = V before the max)
    df   = se^4 / (u_P^2/(P-1) + u_C^2/((S-1)(P-1)) + u_S^2/(S-1))   (Satterthwaite; the first two
           terms only when x_P > 0; at least S - 1)
    half = max(t_df se, t_{S-1} sqrt(u_S))                (t_d: the (1 + ci)/2 quantile, d df)
    CI   = theta -+ half

Why. ``theta - mu = X + Y`` with ``X`` the mean prompt effect (variance s2_a/P, estimated by
``x_P`` from many degrees of freedom) and ``Y = mean(b) + mean(c)``, the mean of the seed means'
deviations, whose variance ``u_S`` estimates from only S - 1 df; for normal data
``Y / sqrt(u_S)`` is exactly Student's t with S - 1 df. The Satterthwaite interval alone
under-covers when Y dominates (0.91-0.93 at S = 3), because its estimated df is large exactly
when ``u_S`` came out small; the floor ``t_{S-1} sqrt(u_S)`` is the exact interval for Y alone
and closes that gap, while when X dominates the Satterthwaite term (about P - 1 df) is the
larger. Other constructions simulated (normal effects, S = 3, P = 30-100, K = 2-4, 3,000-8,000
repetitions each): Satterthwaite alone 0.91-0.97; every ANOVA share widened by the t of its own
df (Graybill-Wang) 0.93-0.97, but 0.91 for a paired difference (prompt effects cancel) whose
seed variance is 2-10 times the cell variance, the usual case with hundreds of prompts;
Banerjee's sum of squared half-widths 0.95-0.98. This one: 0.942-0.966 over 26 regimes with a
prompt effect (2,000 repetitions each, this code); up to 0.98 where cell noise is nearly all the
variance (then ``u_S``'s 2 df are too pessimistic). tests/test_stats.py checks 400 repetitions in
a seed-dominated and a prompt-dominated regime.

The price, and why a shorter interval cannot be valid: with S = 3, 2 df cannot tell "no seed
variance" from "seed variance a few times the cell noise" (P(u_S < u_C) is 0.18 even when
s2_b/S = 4 s2_c/(S P)), so any interval valid whatever the seed variance has a half-width of
at least about ``t_2 sqrt(u_S)`` = 4.3 ``sqrt(u_S)``: when the seed means carry most of the
variance, 2.2 times the normal interval even if the seeds do not really differ. Shortening it
when ``u_S`` is close to ``u_C`` (treating the cell part as known) buys power at the cost of
that 0.91. For win-rates (0/1 per image, two arms sharing most of the initial noise, seed SD
0.5-1 pp) at P = 50, K = 4, S = 3, a +8 pp difference is reproduced 55-60 % of the time and
+16 pp about 95 %; with S = 5, +8 pp about 96 % (P = 50) and 99 % (P = 100). More seeds help
most (t_4 = 2.78, t_9 = 2.26).

The interval is symmetric and not clipped to the metric's range. With unequal image counts the
decomposition is approximate (the estimator is a ratio).

One seed (S = 1): the seed variance is not estimable; the interval is the percentile prompt
bootstrap of ``winrate.bootstrap_mean``, identical to it (same draws), and ``se`` is
``sqrt(P/(P-1) Var A*)``. It is conditional on that seed: say so when reporting.

Contrasts (``bootstrap_contrasts``): every arm is resampled with the SAME prompt and seed draws,
on the same (seed, prompt, image) rows, so ``difference(a, b)`` applies the construction above
to the paired draws ``A*_a - A*_b``, ``B*_a - B*_b``, ``C*_a - C*_b`` (exactly the draws of the
per-image differences, since arms share image counts): the delta's interval has the same
coverage. Seed ids pair seed i of every arm; with independently trained arms that pairing is
arbitrary but harmless (the difference's seed effect ``b_a - b_b`` is estimated as any other).

Verdicts (``verdict``): "reproduced" when the whole CI lies strictly on the expected side of 0,
"contradicted" when strictly on the other, otherwise (0 inside, or an end exactly 0)
"inconclusive". ``best_beyond_ci`` marks a table column's best arm "best" only when its
difference with every other arm is decisive.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from capo.eval.winrate import CI, N_BOOT, SEED

VERDICTS = ("reproduced", "contradicted", "inconclusive")


# --------------------------------------------------------------------------- Student's t

@functools.lru_cache(maxsize=1024)
def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (``q`` in [0.5, 1)) of Student's t with ``df`` > 0 degrees of freedom
    (not necessarily an integer)."""
    from scipy.stats import t

    if not 0.5 <= q < 1:
        raise ValueError(f"q must lie in [0.5, 1), got {q}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    return float(t.ppf(q, df))


def _ids(ids, n: int, name: str) -> np.ndarray:
    if len(ids) != n:
        raise ValueError(f"{name} has {len(ids)} entries for {n} values")
    return np.asarray([str(i) for i in ids], dtype=object)


def _layout(prompt_ids, seed_ids, n: int) -> dict:
    """Group indices of every row, and a check that every (seed, prompt) cell has images."""
    if n == 0:
        raise ValueError("no images to compare")
    prompts, pg = np.unique(_ids(prompt_ids, n, "prompt_ids"), return_inverse=True)
    seeds, sg = np.unique(_ids(seed_ids, n, "seed_ids"), return_inverse=True)
    pg, sg = pg.reshape(-1), sg.reshape(-1)
    P, S = len(prompts), len(seeds)
    counts = np.bincount(sg * P + pg, minlength=S * P).reshape(S, P)
    empty = np.argwhere(counts == 0)
    if len(empty):
        shown = ", ".join(f"(seed {seeds[s]!r}, prompt {prompts[p]!r})" for s, p in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise ValueError(f"every training seed must be evaluated on every prompt; {len(empty)} "
                         f"(seed, prompt) cell(s) have no images: {shown}{more}")
    return {"pg": pg, "sg": sg, "P": P, "S": S, "prompts": prompts, "seeds": seeds,
            "counts": counts.astype(np.float64)}


def _values(values, lay: dict, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if len(v) != len(lay["pg"]):
        raise ValueError(f"{name} has {len(v)} values for {len(lay['pg'])} rows (prompt_ids/seed_ids)")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        shown = ", ".join(f"row {i} (seed {lay['seeds'][lay['sg'][i]]!r}, prompt "
                          f"{lay['prompts'][lay['pg'][i]]!r}): {v[i]}" for i in bad[:10])
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        raise ValueError(f"{name} has {bad.size} NaN/inf value(s): {shown}{more}")
    return v


def _check_args(n_boot: int, ci: float, S: int, P: int) -> None:
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if n_boot < (2 if S > 1 else 1):
        raise ValueError(f"n_boot must be >= {2 if S > 1 else 1}, got {n_boot}")
    if S > 1 and P < 2:
        raise ValueError(f"the two-level interval needs at least 2 prompts, got {P}")


# --------------------------------------------------------------------------- resampling

def _draws(arms: dict[str, np.ndarray], lay: dict, n_boot: int, seed: int) -> dict:
    """Per arm: the point estimate and the (n_boot,) draws ``A*`` (drawn prompts, all seeds),
    ``B*`` (drawn seeds, all prompts) and ``T*`` (drawn seeds x drawn prompts); one set of
    prompt and seed indices for all arms."""
    pg, sg, P, S, counts = lay["pg"], lay["sg"], lay["P"], lay["S"], lay["counts"]
    cell = sg * P + pg
    sums = {k: np.bincount(cell, weights=v, minlength=S * P).reshape(S, P) for k, v in arms.items()}
    # mean_s over seed s's rows (v[mask].mean(): with S = 1 exactly winrate's v.mean())
    seed_means = {k: np.array([v[sg == s].mean() for s in range(S)]) for k, v in arms.items()}
    out = {k: {"point": float(np.mean(m)), "A": np.empty(n_boot), "B": np.empty(n_boot),
               "T": np.empty(n_boot)} for k, m in seed_means.items()}
    rng = np.random.default_rng(seed)
    seed_idx = np.random.default_rng([seed, 1]).integers(0, S, size=(n_boot, S))
    block = max(1, 2_000_000 // P)  # winrate._bootstrap's blocks: the same prompt draws
    for start in range(0, n_boot, block):
        idx = rng.integers(0, P, size=(min(block, n_boot - start), P))
        rows = slice(start, start + len(idx))
        sidx = seed_idx[rows]
        cnt = np.stack([counts[s][idx].sum(axis=1) for s in range(S)])        # (S, b)
        for k, d in out.items():
            # (S, b): each seed's mean over the drawn prompts
            ratio = np.stack([sums[k][s][idx].sum(axis=1) for s in range(S)]) / cnt
            d["A"][rows] = ratio.mean(axis=0)
            d["T"][rows] = ratio[sidx, np.arange(len(idx))[:, None]].mean(axis=1)
            d["B"][rows] = seed_means[k][sidx].mean(axis=1)
    return out


def _interval(point: float, A: np.ndarray, B: np.ndarray, T: np.ndarray, *, P: int, S: int,
              ci: float) -> dict:
    """The CI of the module docstring from one arm's (or a paired difference's) draws."""
    if S == 1:  # winrate.bootstrap_mean: percentile interval of the prompt bootstrap
        alpha = (1 - ci) / 2
        lo, hi = np.quantile(A, [alpha, 1 - alpha])
        u_p = P / (P - 1) * float(A.var(ddof=1)) if P > 1 and len(A) > 1 else 0.0
        return {"mean": point, "ci_low": float(lo), "ci_high": float(hi), "se": math.sqrt(u_p),
                "df": math.nan, "method": "prompt-percentile", "var_prompt": u_p,
                "var_seed": math.nan, "var_cell": math.nan}
    d_p, d_s, d_c = P - 1, S - 1, (S - 1) * (P - 1)
    u_p = P / d_p * float(A.var(ddof=1))                          # E = s2_a/P + s2_c/(S P)
    u_s = S / d_s * float(B.var(ddof=1))                          # E = s2_b/S + s2_c/(S P)
    u_c = S * P / d_c * float((T - A - B + point).var(ddof=1))    # E = s2_c/(S P)
    x_p = max(u_p - u_c, 0.0)                                     # E = s2_a/P
    var = x_p + u_s                                               # se^2
    q = (1 + ci) / 2
    if var <= 0:
        return {"mean": point, "ci_low": point, "ci_high": point, "se": 0.0, "df": math.inf,
                "method": "two-level", "var_prompt": 0.0, "var_seed": 0.0, "var_cell": u_c}
    # Satterthwaite: df = var^2 / sum (term^2 / its df), over u_P, u_C (if x_P > 0) and u_S; the
    # difference u_P - u_C can push it below every term's df: bounded below by S - 1
    df = var ** 2 / ((u_p ** 2 / d_p + u_c ** 2 / d_c if x_p > 0 else 0.0) + u_s ** 2 / d_s)
    df = max(df, d_s)
    half = max(t_quantile(q, df) * math.sqrt(var),            # Satterthwaite t interval
               t_quantile(q, d_s) * math.sqrt(u_s))            # floor: t interval of the seed means
    return {"mean": point, "ci_low": point - half, "ci_high": point + half, "se": math.sqrt(var),
            "df": df, "method": "two-level", "var_prompt": x_p, "var_seed": u_s, "var_cell": u_c}


def _meta(lay: dict, n_boot: int, seed: int, ci: float) -> dict:
    return {"n_images": int(len(lay["pg"])), "n_prompts": lay["P"], "n_seeds": lay["S"],
            "n_boot": int(n_boot), "seed": int(seed), "ci": float(ci)}


# --------------------------------------------------------------------------- public API

def two_level_bootstrap(values, prompt_ids: Sequence, seed_ids: Sequence, *, n_boot: int = N_BOOT,
                        seed: int = SEED, ci: float = CI) -> dict:
    """Mean over training seeds of each seed's mean over its images, with a CI over prompts AND
    seeds (module docstring). ``values``, ``prompt_ids``, ``seed_ids``: one entry per image.

    Returns ``{"mean", "ci_low", "ci_high", "se", "df", "method", "var_prompt", "var_seed",
    "var_cell", "n_images", "n_prompts", "n_seeds", "n_boot", "seed", "ci"}``. With S >= 2:
    ``method`` "two-level", ``var_prompt`` = x_P, ``var_seed`` = u_S (the seed means' spread,
    cell noise included), ``se**2 = var_prompt + var_seed``, ``var_cell`` = u_C, ``df``
    Satterthwaite's. With one seed: "prompt-percentile", ``var_prompt`` = u_P = ``se**2``, the
    others NaN.
    """
    lay = _layout(prompt_ids, seed_ids, len(values))
    _check_args(n_boot, ci, lay["S"], lay["P"])
    d = _draws({"values": _values(values, lay, "values")}, lay, n_boot, seed)["values"]
    return {**_interval(d["point"], d["A"], d["B"], d["T"], P=lay["P"], S=lay["S"], ci=ci),
            **_meta(lay, n_boot, seed, ci)}


@dataclass
class Contrasts:
    """Per-arm summaries (``arms[name]``: ``two_level_bootstrap``'s dict) and the shared draws
    behind ``difference``."""

    arms: dict[str, dict]
    meta: dict
    draws: dict[str, dict] = field(repr=False)

    def difference(self, a: str, b: str) -> dict:
        """``mean(a) - mean(b)`` with the paired CI. Returns ``{"delta", "ci_low", "ci_high", "se",
        "df", "method", "var_prompt", "var_seed", "var_cell", "a", "b", "mean_a", "mean_b",
        "n_images", "n_prompts", "n_seeds", "n_boot", "seed", "ci"}`` (as ``two_level_bootstrap``,
        for the per-image differences)."""
        for arm in (a, b):
            if arm not in self.draws:
                raise ValueError(f"unknown arm {arm!r}; arms: {sorted(self.draws)}")
        da, db = self.draws[a], self.draws[b]
        res = _interval(da["point"] - db["point"], da["A"] - db["A"], da["B"] - db["B"],
                        da["T"] - db["T"], P=self.meta["n_prompts"], S=self.meta["n_seeds"],
                        ci=self.meta["ci"])
        return {"delta": res.pop("mean"), **res, "a": a, "b": b, "mean_a": da["point"],
                "mean_b": db["point"], **self.meta}


def _per_arm(ids, arms: Sequence[str], name: str):
    """``ids`` shared by every arm, or a dict arm -> ids that must agree row by row."""
    if ids is None or not isinstance(ids, Mapping):
        return ids
    missing = [a for a in arms if a not in ids]
    if missing:
        raise ValueError(f"{name} has no entry for arm(s) {missing}")
    ref_arm = arms[0]
    ref = [str(i) for i in ids[ref_arm]]
    for arm in arms[1:]:
        other = [str(i) for i in ids[arm]]
        if len(other) != len(ref):
            raise ValueError(f"arm {arm!r} has {len(other)} rows in {name}, arm {ref_arm!r} has "
                             f"{len(ref)}: all arms must be evaluated on the same (seed, prompt, "
                             f"image) rows")
        diff = [i for i, (x, y) in enumerate(zip(ref, other)) if x != y]
        if diff:
            shown = ", ".join(f"row {i}: {ref[i]!r} vs {other[i]!r}" for i in diff[:5])
            more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            raise ValueError(f"arm {arm!r} differs from arm {ref_arm!r} in {name} at {len(diff)} "
                             f"row(s) ({shown}{more}): all arms must be evaluated on the same "
                             f"(seed, prompt, image) rows, in the same order")
    return ids[ref_arm]


def bootstrap_contrasts(values: Mapping[str, np.ndarray], prompt_ids, seed_ids, *, image_ids=None,
                        n_boot: int = N_BOOT, seed: int = SEED, ci: float = CI) -> Contrasts:
    """Paired two-level bootstraps of several arms (methods) on the same rows.

    ``values``: arm -> per-image values. ``prompt_ids``, ``seed_ids`` and the optional
    ``image_ids``: one sequence for all arms, or a dict arm -> sequence (each arm's own table),
    then checked to agree row by row; a difference is a ValueError naming the arm, the field
    and the rows. With ``image_ids``, a (seed, prompt, image) row appearing twice is an error.
    """
    arms = list(values)
    if not arms:
        raise ValueError("no arms to compare")
    prompt_ids = _per_arm(prompt_ids, arms, "prompt_ids")
    seed_ids = _per_arm(seed_ids, arms, "seed_ids")
    image_ids = _per_arm(image_ids, arms, "image_ids")
    n = len(prompt_ids)
    lay = _layout(prompt_ids, seed_ids, n)
    if image_ids is not None:
        keys = np.char.add(np.char.add(lay["seeds"][lay["sg"]].astype(str), "\x1f"),
                           np.char.add(lay["prompts"][lay["pg"]].astype(str), "\x1f"))
        keys = np.char.add(keys, _ids(image_ids, n, "image_ids").astype(str))
        uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = [tuple(k.split("\x1f")) for k in uniq[counts > 1][:5]]
            raise ValueError(f"{int((counts > 1).sum())} (seed, prompt, image) row(s) appear more "
                             f"than once, e.g. {dup}")
    _check_args(n_boot, ci, lay["S"], lay["P"])
    arrays = {a: _values(values[a], lay, f"arm {a!r}") for a in arms}
    draws = _draws(arrays, lay, n_boot, seed)
    meta = _meta(lay, n_boot, seed, ci)
    summaries = {a: {**_interval(d["point"], d["A"], d["B"], d["T"], P=lay["P"], S=lay["S"], ci=ci),
                     **meta} for a, d in draws.items()}
    return Contrasts(arms=summaries, meta=meta, draws=draws)


ZERO_RTOL = 1e-9  # an interval end within this fraction of the interval's scale of 0 *is* 0


def verdict(ci_low: float, ci_high: float, expected_sign: int = +1) -> str:
    """"reproduced" if the CI lies strictly on the ``expected_sign`` side of 0 (``ci_low > 0`` for
    +1, ``ci_high < 0`` for -1), "contradicted" if strictly on the other side, else
    "inconclusive": a CI containing 0, ends included (``[0, 0.1]`` is inconclusive).

    An end that is 0 up to rounding counts as 0: win-rates are multiples of 1/(prompts x
    images), and a bootstrap quantile summed in floating point lands at ``7e-15`` instead of 0,
    which must not decide a verdict. "Up to rounding" is ``ZERO_RTOL`` times the larger end's
    magnitude, so the rule does not depend on the metric's unit."""
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign!r}")
    lo, hi = float(ci_low), float(ci_high)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"not a confidence interval: [{ci_low}, {ci_high}]")
    lo, hi = (lo, hi) if expected_sign == 1 else (-hi, -lo)  # flip: now "expected" means > 0
    tol = ZERO_RTOL * max(abs(lo), abs(hi))
    return "reproduced" if lo > tol else "contradicted" if hi < -tol else "inconclusive"


def interval_text(mean: float, ci_low: float, ci_high: float, digits: int = 1, sign: bool = True) -> str:
    """``"+5.5 [+0.04, +11.0]"``: a statistic and its CI with ``digits`` decimals (``sign``: a
    leading + on positives). An end that would print as 0 but is not 0 (beyond ``ZERO_RTOL``,
    as in ``verdict``) gets the decimals its first significant digit needs, so a decided
    verdict never sits beside an interval printed as touching zero."""
    scale = max(abs(float(ci_low)), abs(float(ci_high)))

    def end(v: float) -> str:
        v = float(v)
        d = digits
        if abs(v) <= ZERO_RTOL * scale:
            v = 0.0
        while v != 0.0 and round(v, d) == 0 and d < digits + 6:
            d += 1
        return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"

    return f"{float(mean):{'+' if sign else ''}.{digits}f} [{end(ci_low)}, {end(ci_high)}]"


def best_beyond_ci(contrasts: Contrasts, arms: Sequence[str], higher: bool = True) -> dict[str, str]:
    """Marks for one table column. The arm with the best mean (highest, or lowest with
    ``higher=False``; the first listed on an exact tie) is "best" only if its paired difference
    with EVERY other arm has a CI strictly beyond 0 in its favour; otherwise it and every arm
    whose difference with it has a CI containing 0 are "tied", the rest "". One arm: "best"."""
    arms = list(arms)
    if not arms:
        raise ValueError("no arms to rank")
    unknown = [a for a in arms if a not in contrasts.arms]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; arms: {sorted(contrasts.arms)}")
    sign = 1 if higher else -1
    best = max(arms, key=lambda a: sign * contrasts.arms[a]["mean"])  # max keeps the first on ties
    decisive = {}
    for a in arms:
        if a != best:
            d = contrasts.difference(best, a)
            decisive[a] = verdict(d["ci_low"], d["ci_high"], sign) == "reproduced"
    if all(decisive.values()):
        return {a: "best" if a == best else "" for a in arms}
    return {a: "tied" if a == best or not decisive[a] else "" for a in arms}
