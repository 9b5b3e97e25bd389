"""Pair selection (Sec. 4.3): best-worst, SUM, Pareto sets and FRS on hand-made point sets."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from capo.method import frs_sets, nondominated_sort, pareto_sets, select_pairs
from capo.method.selection import dominance

# A dominates everything; B, D, E dominate only C; C dominates nothing.
A, B, C, D, E = (0.9, 0.9), (0.5, 0.5), (0.1, 0.1), (0.9, 0.1), (0.1, 0.9)


def test_dominance_hand():
    Dm = dominance(np.array([[A, B, C, D, E]]))[0]
    expect = np.zeros((5, 5), bool)
    expect[0, [1, 2, 3, 4]] = True  # A dominates B, C, D (0.9>=0.9, 0.9>0.1), E
    expect[[1, 3, 4], 2] = True  # B, D, E dominate C
    assert np.array_equal(Dm, expect)


def test_pareto_sets_hand():
    upper, lower = pareto_sets(np.array([A, B, C, D, E]))
    assert upper.tolist() == [True, False, False, False, False]
    assert lower.tolist() == [False, False, True, False, False]
    assert nondominated_sort(np.array([A, B, C, D, E])).tolist() == [0, 1, 2, 1, 1]


def test_overlap_is_removed():
    # a = (0.9, 0.5) dominates c = (0.5, 0.1); b = (0.0, 0.6) is non-dominated AND dominates
    # nothing, so it is in both sets and removed: X+ = {a}, X- = {c}
    pts = np.array([(0.9, 0.5), (0.0, 0.6), (0.5, 0.1)])
    upper, lower = pareto_sets(pts)
    assert upper.tolist() == [True, True, False] and lower.tolist() == [False, True, True]
    pos, neg = frs_sets(pts[None])
    assert pos[0].tolist() == [True, False, False] and neg[0].tolist() == [False, False, True]


def test_duplicates_do_not_dominate_each_other():
    pts = np.array([(0.5, 0.5), (0.5, 0.5), (0.2, 0.2)])
    upper, lower = pareto_sets(pts)
    assert upper.tolist() == [True, True, False] and lower.tolist() == [False, False, True]


def test_all_incomparable_prompt_yields_no_pair():
    pts = np.array([[(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]])
    sel = select_pairs(pts, "frs", rng=np.random.default_rng(0))
    assert not sel.valid.any() and sel.stats["empty_frontier_prompts"] == 1


def test_best_worst_and_ties():
    sel = select_pairs(np.array([[0.2, 0.9, 0.1, 0.5], [0.5, 0.5, 0.5, 0.5]]), "best-worst")
    assert sel.pos[:, 0].tolist()[0] == 1 and sel.neg[0, 0] == 2
    assert sel.target_gap[0, 0] == pytest.approx(0.8)
    assert sel.valid[:, 0].tolist() == [True, False]  # all tied: nothing to learn


def test_sum_hand():
    # weights (3, 1) -> (0.75, 0.25); scores: s0 = .75*.9+.25*.1 = .70, s1 = .75*.2+.25*.9 = .375,
    # s2 = .75*.5+.25*.5 = .5 -> x+ = 0, x- = 1, gap .325
    pts = np.array([[(0.9, 0.1), (0.2, 0.9), (0.5, 0.5)]])
    sel = select_pairs(pts, "sum", weights=[3, 1])
    assert (sel.pos[0, 0], sel.neg[0, 0]) == (0, 1)
    assert sel.target_gap[0, 0] == pytest.approx(0.325)
    uniform = select_pairs(pts, "sum")  # (.5, .55, .5): x+ = 1
    assert uniform.pos[0, 0] == 1


def rejection_case():
    # U1 (1.0, 0.0) dominates Z (0.9, 0.0); H (0.2, 0.95) dominates L (0.15, 0.9).
    # X+ = {U1 (mean .5), H (.575)}, X- = {Z (.45), L (.525)}: the pair (U1, L) has gap < 0
    return np.array([[(1.0, 0.0), (0.9, 0.0), (0.2, 0.95), (0.15, 0.9)]])


def test_frs_rejects_negative_gap_pairs_and_counts_them():
    pts = rejection_case()
    pos, neg = frs_sets(pts)
    assert pos[0].tolist() == [True, False, True, False] and neg[0].tolist() == [False, True, False, True]
    sel = select_pairs(pts, "frs", rng=np.random.default_rng(0), num_draws=400)
    assert sel.valid.all()
    assert sel.rejections[0] > 0  # (U1, L) is drawn a quarter of the time and rejected
    pairs = set(zip(sel.pos[0].tolist(), sel.neg[0].tolist()))
    assert pairs == {(0, 1), (2, 1), (2, 3)}  # every accepted pair; never (0, 3)
    assert (sel.target_gap[0] > 0).all()
    mean = pts[0].mean(1)
    assert np.allclose(sel.target_gap[0], mean[sel.pos[0]] - mean[sel.neg[0]])


def test_frs_draws_are_uniform_over_candidates():
    pts = np.array([[A, B, C, D, E, (0.05, 0.05)]])  # X+ = {A}, X- = {(0.05, 0.05)}
    sel = select_pairs(pts, "frs", rng=np.random.default_rng(0), num_draws=10)
    assert (sel.pos == 0).all() and (sel.neg == 5).all()
    # five mutually non-dominated points above one dominated point: X+ has 5, X- has 1
    ring = [(np.cos(a), np.sin(a)) for a in np.linspace(0.1, 1.4, 5)]
    sel = select_pairs(np.array([ring + [(0.0, 0.0)]]), "frs", rng=np.random.default_rng(1), num_draws=5000)
    freq = np.bincount(sel.pos[0], minlength=6)[:5] / 5000
    assert np.allclose(freq, 0.2, atol=0.03)


def test_frs_deterministic_given_seed():
    pts = np.random.default_rng(0).uniform(size=(50, 16, 3))
    a = select_pairs(pts, "frs", rng=np.random.default_rng(7))
    b = select_pairs(pts, "frs", rng=np.random.default_rng(7))
    assert np.array_equal(a.pos, b.pos) and np.array_equal(a.neg, b.neg)


def test_frs_invariants_random():
    pts = np.random.default_rng(3).uniform(size=(300, 16, 3))
    sel = select_pairs(pts, "frs", rng=np.random.default_rng(3), num_draws=4)
    Dm = dominance(pts)
    p_idx, k_idx = np.nonzero(sel.valid)
    pos, neg = sel.pos[p_idx, k_idx], sel.neg[p_idx, k_idx]
    assert (pos != neg).all()  # never a point with itself
    assert not Dm[p_idx, :, pos].any()  # a positive is never dominated
    assert not Dm[p_idx, neg, :].any()  # a negative dominates nothing
    assert (sel.target_gap[sel.valid] > 0).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"selector": "top-k"}, "known: best-worst, sum, frs"),
        ({"selector": "best-worst"}, "single reward"),
        ({"selector": "frs"}, "rng"),
        ({"selector": "sum", "weights": [1, 2]}, "2 weights given for 3 rewards"),
        ({"selector": "sum", "weights": [1, -1, 1]}, "non-negative"),
    ],
)
def test_select_pairs_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_pairs(np.random.default_rng(0).uniform(size=(2, 4, 3)), **kwargs)


def brute_sets(pts):
    n = len(pts)
    dom = lambda a, b: all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
    upper = [not any(dom(pts[j], pts[i]) for j in range(n) if j != i) for i in range(n)]
    lower = [not any(dom(pts[i], pts[j]) for j in range(n) if j != i) for i in range(n)]
    return upper, lower


@settings(max_examples=80, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 9), st.integers(1, 4)),
              elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])))
def test_property_pareto_sets_match_brute_force(pts):
    upper, lower = pareto_sets(pts)
    bu, bl = brute_sets(pts.tolist())
    assert upper.tolist() == bu and lower.tolist() == bl
    rank = nondominated_sort(pts)
    assert ((rank == 0) == upper).all()
    for i, j in itertools.product(range(len(pts)), repeat=2):  # a dominator sits in an earlier front
        if dominance(pts[None])[0, i, j]:
            assert rank[i] < rank[j]
