"""Calibrated rewards (Eq. 7): hand values, invariants, property tests against brute force."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from capo.method import bt_transform, calibrate
from capo.method import calibration as C

LOG3 = math.log(3)


def brute_force(r):
    r = np.asarray(r, dtype=float)
    P, N = r.shape
    out = np.zeros_like(r)
    for p in range(P):
        for i in range(N):
            out[p, i] = sum(1 / (1 + math.exp(-(r[p, i] - r[p, j]))) for j in range(N) if j != i) / (N - 1)
    return out


def test_hand_values():
    # N = 2, R = [0, log 3]: sigmoid(-log 3) = 1/4, sigmoid(log 3) = 3/4
    assert np.allclose(calibrate([[0.0, LOG3]]), [[0.25, 0.75]])
    # N = 3, R = [0, 0, log 3]: x0 = (1/2 + 1/4) / 2 = 3/8, x1 = 3/8, x2 = (3/4 + 3/4) / 2 = 3/4
    assert np.allclose(calibrate([[0.0, 0.0, LOG3]]), [[0.375, 0.375, 0.75]])


def test_transforms_hand_values():
    # logit: p = [1/2, 3/4] -> [0, log 3];  temperature 0.1: [0, 0.1 log 3] / 0.1 -> [0, log 3]
    assert np.allclose(calibrate([[0.5, 0.75]], transform="logit"), [[0.25, 0.75]])
    assert np.allclose(calibrate([[0.0, 0.1 * LOG3]], transform="temperature:0.1"), [[0.25, 0.75]])
    assert np.allclose(bt_transform([0.5, 0.75], "logit"), [0.0, LOG3])


def test_invariants_range_mean_shift():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 5, size=(200, 16))
    ca = calibrate(r)
    assert ca.min() >= 0 and ca.max() <= 1
    assert np.allclose(ca.mean(1), 0.5, atol=1e-12)
    shifted = r + rng.normal(0, 100, size=(200, 1))  # a different constant for each prompt
    assert np.allclose(calibrate(shifted), ca, atol=1e-9)


def test_per_reward_transforms_on_sample_axis():
    rng = np.random.default_rng(1)
    r = np.stack([rng.normal(size=(5, 8)), rng.uniform(0.01, 0.99, size=(5, 8)), rng.uniform(size=(5, 8))], -1)
    ca = calibrate(r, transform=["identity", "logit", "temperature:0.2"], axis=1)
    assert ca.shape == (5, 8, 3)
    assert np.allclose(ca[..., 0], calibrate(r[..., 0]))
    assert np.allclose(ca[..., 1], calibrate(r[..., 1], transform="logit"))
    assert np.allclose(ca[..., 2], calibrate(r[..., 2] / 0.2))
    assert np.allclose(ca.mean(1), 0.5)


def test_chunked_equals_unchunked(monkeypatch):
    r = np.random.default_rng(2).normal(size=(37, 6))
    full = calibrate(r)
    monkeypatch.setattr(C, "_CHUNK", 5)
    assert np.array_equal(calibrate(r), full)


@pytest.mark.parametrize(
    "rewards,transform,match",
    [
        ([[0.0, np.nan, 1.0]], "identity", "non-finite"),
        ([[0.0, np.inf]], "identity", "non-finite"),
        ([[1.0]], "identity", "N >= 2"),
        ([[0.0, 1.0]], "softmax", "known: identity"),
        ([[0.0, 1.0]], "temperature:-1", "positive"),
        ([[0.0, 1.5]], "logit", r"\[0, 1\]"),
    ],
)
def test_errors(rewards, transform, match):
    with pytest.raises(ValueError, match=match):
        calibrate(rewards, transform=transform)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 7)),
              elements=st.floats(-30, 30, allow_nan=False)))
def test_property_matches_brute_force(r):
    ca = calibrate(r)
    assert np.allclose(ca, brute_force(r), atol=1e-12)
    assert np.allclose(ca.mean(1), 0.5, atol=1e-12)
    assert (ca >= 0).all() and (ca <= 1).all()


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 6)),
              elements=st.floats(-5, 5, allow_nan=False)),
       st.floats(-1e3, 1e3))
def test_property_order_preserving_and_shift_invariant(r, c):
    ca = calibrate(r)
    assert np.allclose(calibrate(r + c), ca, atol=1e-9)
    for p in range(r.shape[0]):  # a higher reward never gets a lower calibrated reward
        order = np.argsort(r[p], kind="stable")
        assert (np.diff(ca[p][order]) >= -1e-12).all()


# ---------------------------------------------------------------- against a reference set (issue #13)
def test_against_reference_hand_values():
    # policy x = [log 3], reference y = [0, log 3]: (sigmoid(log 3) + sigmoid(0)) / 2 = (3/4 + 1/2) / 2 = 5/8
    assert np.allclose(C.win_rates_against([[LOG3]], [[0.0, LOG3]]), [[0.625]])
    # two policy samples against one reference sample: sigmoid(0 - log 3) = 1/4, sigmoid(2 log 3 - log 3) = 3/4
    assert np.allclose(C.win_rates_against([[0.0, 2 * LOG3]], [[LOG3]]), [[0.25, 0.75]])
    # the BT transform applies to both sets: logit of p = [3/4] against p = [1/2] -> sigmoid(log 3) = 3/4
    assert np.allclose(C.calibrate_against([[0.75]], [[0.5]], "logit"), [[0.75]])


@given(arrays(np.float64, (3, 5), elements=st.floats(-8, 8)))
@settings(max_examples=40, deadline=None)
def test_against_itself_without_self_pairs_is_eq7(r):
    assert np.allclose(C.win_rates_against(r, r, exclude_self=True), calibrate(r))
    # with the self-pair kept it is the Eq. 7 value pulled towards 1/2 by one sigmoid(0) term: (N-1)/N Eq7 + 1/(2N)
    assert np.allclose(C.win_rates_against(r, r), (4 * calibrate(r) + 0.5) / 5)


@given(arrays(np.float64, (2, 4), elements=st.floats(-6, 6)), arrays(np.float64, (2, 3), elements=st.floats(-6, 6)))
@settings(max_examples=40, deadline=None)
def test_against_reference_range_order_and_complement(x, y):
    w = C.win_rates_against(x, y)
    assert w.shape == x.shape and np.all((w >= 0) & (w <= 1))
    # order-preserving within a prompt, and P(x > y) + P(y > x) = 1 on average: mean_i w(x_i | y) + mean_j w(y_j | x) = 1
    for p in range(2):
        assert np.all(np.diff(w[p, np.argsort(x[p])]) >= -1e-12)
    assert np.allclose(w.mean(1) + C.win_rates_against(y, x).mean(1), 1.0)


def test_against_reference_same_distribution_is_one_half():
    # Policy and reference samples from one distribution: the mean calibrated reward estimates
    # P(x > y) = 1/2. 4,000 prompts x 8 vs 8 samples: the per-prompt mean has sd <= 0.2 (a bound for
    # a mean of bounded, positively correlated terms), so the grand mean's sd is <= 0.2 / sqrt(4000)
    # = 0.0032; tolerance 0.02 is over 6 sd. A shifted policy (+1 logit) must clearly exceed 1/2.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    assert abs(C.win_rates_against(x, y).mean() - 0.5) < 0.02
    assert C.win_rates_against(x + 1.0, y).mean() > 0.6


def test_against_reference_errors():
    with pytest.raises(ValueError, match="leading"):
        C.win_rates_against(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="same samples"):
        C.win_rates_against(np.zeros((2, 3)), np.ones((2, 3)), exclude_self=True)
    with pytest.raises(ValueError, match="non-finite"):
        C.win_rates_against(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        C.win_rates_against(np.zeros((1, 2)), np.array([[np.inf, 0.0]]))
