"""Preference-pair selection (the paper's Sec. 4.3): best/worst-of-N, SUM and FRS.

Inputs are calibrated rewards ``R_ca`` of shape ``(P, N, L)`` (P prompts, N samples
each, L reward models; ``(P, N)`` means L = 1). Outputs are sample indices into N.

* **best-worst** (single reward): ``x+ = argmax_i R_ca``, ``x- = argmin_i R_ca``
  (the paper's "top-1 / worst-1").
* **SUM**: weighted sum ``sum_j w_j R^j_ca`` (weights normalised to sum to 1; the paper
  uses uniform 1/L), then best/worst-of-N on it. Target gap = gap of the weighted sum.
* **FRS**, frontier-based rejection sampling: ``x`` dominates ``x'`` iff
  ``R^j_ca(x) >= R^j_ca(x')`` for every j and ``>`` for at least one.
  Upper Pareto set = points no other point dominates (non-dominated sorting's first
  front); lower Pareto set = points that dominate no other point. Points in both sets are
  removed; ``X+`` = the rest of the upper set, ``X-`` = the rest of the lower set
  (disjoint, so a point is never paired with itself). Pairs ``x+ ~ U(X+)``,
  ``x- ~ U(X-)``; the rejection rule (METHOD.md default): a drawn pair whose
  mean-calibrated gap ``Rbar_ca(x+) - Rbar_ca(x-)`` is <= 0 is rejected and redrawn, up
  to ``max_tries`` times; rejections are counted. Target gap = that mean gap
  (``Rbar_ca = (1/L) sum_j R^j_ca``, the paper's ensemble).

A prompt yields no pair (``valid = False``) when its best and worst scores tie (every
sample equally good: nothing to learn), when FRS leaves ``X+`` or ``X-`` empty, or when
every draw was rejected. Arrays in, arrays out (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from capo.vocabulary import PAIR_SELECTORS

SELECTORS = tuple(PAIR_SELECTORS)
_CHUNK = 16384  # prompts per block for the (chunk, N, N, L) dominance comparison


@dataclass
class PairSelection:
    """Selected pairs for P prompts and K draws per prompt (K = 1 unless FRS draws more)."""

    pos: np.ndarray  # (P, K) int, index of x+ among the N samples
    neg: np.ndarray  # (P, K) int, index of x-
    valid: np.ndarray  # (P, K) bool: a usable pair was found
    target_gap: np.ndarray  # (P, K) float, score(x+) - score(x-) (the CaPO target)
    score: np.ndarray  # (P, N) the scalar score the gap is taken on
    rejections: np.ndarray  # (P,) int, FRS pairs rejected (0 for other selectors)
    pos_set: np.ndarray | None = None  # (P, N) bool, FRS X+
    neg_set: np.ndarray | None = None  # (P, N) bool, FRS X-
    stats: dict = field(default_factory=dict)


def _as_points(calibrated: np.ndarray) -> np.ndarray:
    x = np.asarray(calibrated, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :, None]
    elif x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"expected calibrated rewards of shape (P, N) or (P, N, L), got {x.shape}")
    if x.shape[1] < 2:
        raise ValueError(f"pair selection needs N >= 2 samples per prompt, got N = {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ValueError("calibrated rewards contain NaN or inf")
    return x


def normalise_weights(weights, L: int, what: str = "rewards") -> np.ndarray:
    """Weights for ``L`` rewards (or merged models: ``what``), normalised to sum to 1
    (``None`` -> uniform 1/L). A count other than ``L``, non-finite, negative or all-zero
    weights raise."""
    if L < 1:
        raise ValueError(f"need at least one of the {what}")
    if weights is None:
        return np.full(L, 1.0 / L)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != L:
        raise ValueError(f"{w.shape[0]} weights given for {L} {what}")
    if not np.isfinite(w).all():
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative (>= 0), got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"weights must not all be zero, got {w.tolist()}")
    return w / w.sum()


def best_worst(score: np.ndarray) -> PairSelection:
    """Best-of-N as ``x+`` and worst-of-N as ``x-`` of a scalar score ``(P, N)``."""
    s = np.asarray(score, dtype=np.float64)
    pos, neg = s.argmax(1), s.argmin(1)
    gap = s[np.arange(len(s)), pos] - s[np.arange(len(s)), neg]
    valid = gap > 0
    return PairSelection(
        pos=pos[:, None], neg=neg[:, None], valid=valid[:, None], target_gap=gap[:, None],
        score=s, rejections=np.zeros(len(s), dtype=np.int64),
        stats={"prompts": len(s), "pairs": int(valid.sum()), "tied_prompts": int((~valid).sum())},
    )


def dominance(points: np.ndarray) -> np.ndarray:
    """``D[p, i, j] = True`` iff point i dominates point j within prompt p. ``(P, N, L) -> (P, N, N)``."""
    x = _as_points(points)
    P, N, _ = x.shape
    D = np.empty((P, N, N), dtype=bool)
    for s in range(0, P, _CHUNK):
        a, b = x[s : s + _CHUNK, :, None, :], x[s : s + _CHUNK, None, :, :]
        D[s : s + _CHUNK] = (a >= b).all(-1) & (a > b).any(-1)
    return D


def pareto_sets(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower Pareto sets, before overlap removal. ``(P, N, L) -> ((P, N), (P, N))`` bool.

    upper: no other point dominates it (the first non-dominated front);
    lower: it dominates no other point. A (N, L) input gives (N,) masks.
    """
    single = np.ndim(points) == 2  # one prompt's (N, L) point set
    D = dominance(np.asarray(points)[None] if single else points)
    upper, lower = ~D.any(1), ~D.any(2)
    return (upper[0], lower[0]) if single else (upper, lower)


def nondominated_sort(points: np.ndarray) -> np.ndarray:
    """NSGA-II front index of every point (0 = non-dominated). ``(P, N, L) -> (P, N)`` int.

    Fronts are peeled vectorised over prompts: front k = points dominated only by
    points of fronts < k. A (N, L) input gives (N,).
    """
    single = np.ndim(points) == 2  # one prompt's (N, L) point set
    D = dominance(np.asarray(points)[None] if single else points)
    P, N, _ = D.shape
    rank = np.full((P, N), -1, dtype=np.int64)
    remaining = np.ones((P, N), dtype=bool)
    k = 0
    while remaining.any():
        dominated = (D & remaining[:, :, None]).any(1)  # dominated by a remaining point
        front = remaining & ~dominated
        rank[front] = k
        remaining &= ~front
        k += 1
    return rank[0] if single else rank


def frs_sets(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FRS candidate sets ``X+`` and ``X-``: the Pareto sets with their overlap removed."""
    upper, lower = pareto_sets(points)
    both = upper & lower
    return upper & ~both, lower & ~both


def _draw(mask: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Uniform index among True entries of each row of ``mask`` (P, N), ``k`` draws: (P, k)."""
    keys = rng.random((mask.shape[0], k, mask.shape[1]))
    keys[~np.broadcast_to(mask[:, None, :], keys.shape)] = -1.0
    return keys.argmax(-1)


def frs(
    calibrated: np.ndarray,
    rng: np.random.Generator,
    num_draws: int = 1,
    max_tries: int = 16,
    weights=None,
) -> PairSelection:
    """Frontier-based rejection sampling (Sec. 4.3) with the documented rejection rule."""
    x = _as_points(calibrated)
    P, N, L = x.shape
    score = x @ normalise_weights(weights, L)  # Rbar_ca, the ensemble (mean for uniform weights)
    pos_set, neg_set = frs_sets(x)
    has_sets = pos_set.any(1) & neg_set.any(1)
    rows = np.arange(P)[:, None]
    pos = np.zeros((P, num_draws), dtype=np.int64)
    neg = np.zeros((P, num_draws), dtype=np.int64)
    valid = np.zeros((P, num_draws), dtype=bool)
    rejections = np.zeros(P, dtype=np.int64)
    todo = np.broadcast_to(has_sets[:, None], (P, num_draws)).copy()
    for _ in range(max_tries):
        if not todo.any():
            break
        p, n = _draw(pos_set, rng, num_draws), _draw(neg_set, rng, num_draws)
        ok = score[rows, p] - score[rows, n] > 0
        accept = todo & ok
        pos[accept], neg[accept] = p[accept], n[accept]
        valid |= accept
        rejections += (todo & ~ok).sum(1)
        todo &= ~ok
    gap = np.where(valid, score[rows, pos] - score[rows, neg], 0.0)
    return PairSelection(
        pos=pos, neg=neg, valid=valid, target_gap=gap, score=score, rejections=rejections,
        pos_set=pos_set, neg_set=neg_set,
        stats={
            "prompts": P, "pairs": int(valid.sum()), "rejections": int(rejections.sum()),
            "empty_frontier_prompts": int((~has_sets).sum()),
            "exhausted_draws": int((todo & has_sets[:, None]).sum()),
            "mean_pos_set": float(pos_set.sum(1).mean()), "mean_neg_set": float(neg_set.sum(1).mean()),
        },
    )


def select_pairs(
    calibrated: np.ndarray,
    selector: str = "best-worst",
    weights=None,
    rng: np.random.Generator | None = None,
    num_draws: int = 1,
    max_tries: int = 16,
) -> PairSelection:
    """Select preference pairs from calibrated rewards ``(P, N)`` or ``(P, N, L)``.

    ``selector``: ``best-worst`` (needs L = 1), ``sum`` or ``frs``; ``weights`` for SUM
    (and FRS's target); ``rng`` for FRS's draws.
    """
    x = _as_points(calibrated)
    L = x.shape[2]
    if selector == "best-worst":
        if L != 1:
            raise ValueError(f"best-worst selects on a single reward; got L = {L} rewards (use 'sum' or 'frs')")
        return best_worst(x[:, :, 0])
    if selector == "sum":
        return best_worst(x @ normalise_weights(weights, L))
    if selector == "frs":
        if rng is None:
            raise ValueError("frs draws pairs at random: pass rng=np.random.default_rng(seed)")
        return frs(x, rng, num_draws=num_draws, max_tries=max_tries, weights=weights)
    raise ValueError(f"unknown selector {selector!r}; known: {', '.join(SELECTORS)}")
