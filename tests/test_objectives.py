"""Implicit reward (Eq. 5), loss weighting (Sec. 4.4) and DPO / IPO / CaPO (Eq. 4, 8)."""

import math

import pytest
import torch
import torch.nn.functional as F

from capo.method import capo_loss, dpo_loss, implicit_reward, ipo_loss, loss_factor
from capo.method.implicit import sample_pair_noise, squared_error


def test_constant_factor_is_one_everywhere():
    lam = torch.linspace(-10, 10, 7, dtype=torch.float64)
    dlam = -torch.linspace(1, 100, 7, dtype=torch.float64)
    assert torch.equal(loss_factor(lam, dlam, "constant"), torch.ones(7, dtype=torch.float64))


def test_sigmoid_factor_hand_values():
    # lambda = 0, lambda' = -8: b = 0 -> w = 1/2, factor 4; b = 1.5 -> w = sigmoid(1.5) = 0.817574, factor 6.54059
    lam, dlam = torch.zeros(2, dtype=torch.float64), torch.full((2,), -8.0, dtype=torch.float64)
    assert torch.allclose(loss_factor(lam, dlam, "sigmoid", b=0.0), torch.tensor([4.0, 4.0], dtype=torch.float64))
    assert torch.allclose(loss_factor(lam, dlam, "sigmoid", b=1.5), torch.full((2,), 8 * 0.8175744761936437, dtype=torch.float64))


def test_sigmoid_factor_limits():
    lam = torch.linspace(-8, 8, 9, dtype=torch.float64)
    dlam = -torch.linspace(2, 50, 9, dtype=torch.float64)
    assert torch.allclose(loss_factor(lam, dlam, "sigmoid", b=60.0), -dlam)  # w_t -> 1: plain -lambda'
    assert torch.allclose(loss_factor(lam, dlam, "sigmoid", b=-60.0), torch.zeros(9, dtype=torch.float64), atol=1e-12)
    f = [loss_factor(lam, dlam, "sigmoid", b=b) for b in (-1.0, 1.0, 2.0)]
    assert (f[0] < f[1]).all() and (f[1] < f[2]).all()  # monotone in b


def test_unknown_weighting():
    with pytest.raises(ValueError, match="constant, sigmoid"):
        loss_factor(torch.zeros(1), torch.zeros(1), "snr")


def test_implicit_reward_hand_value_and_sign():
    # R = factor * (err_ref - err_theta) = 2 * (0.5 - 0.2) = 0.6 (policy better -> positive)
    r = implicit_reward(torch.tensor([0.2, 0.7]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 2.0]))
    assert torch.allclose(r, torch.tensor([0.6, -0.4]))


def test_policy_equal_reference_gives_zero_reward_and_log2_dpo():
    g = torch.Generator().manual_seed(0)
    eps, pred = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    err = squared_error(pred, eps)
    r = implicit_reward(err, err.clone(), torch.rand(4, generator=g) * 10)
    assert torch.equal(r, torch.zeros(4))
    loss, m = dpo_loss(r, r, beta=5000.0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-7)
    assert m["implicit_acc"].item() == 0.5  # all ties count one half


def test_squared_error_is_mean_over_chw():
    eps = torch.zeros(2, 3, 2, 2)
    pred = torch.ones(2, 3, 2, 2)
    pred[1] *= 2
    assert torch.allclose(squared_error(pred, eps), torch.tensor([1.0, 4.0]))


def test_objective_hand_values():
    # u = beta (r_w - r_l) = 2 (0.3 - 0.1) = 0.4
    # DPO: -log sigmoid(0.4) = log(1 + e^-0.4) = 0.513015; IPO: (1 - 0.4)^2 = 0.36
    # CaPO with target 0.25: (0.25 - 0.4)^2 = 0.0225
    r_w, r_l = torch.tensor([0.3]), torch.tensor([0.1])
    assert math.isclose(dpo_loss(r_w, r_l, 2.0)[0].item(), math.log1p(math.exp(-0.4)), rel_tol=1e-6)
    assert math.isclose(ipo_loss(r_w, r_l, 2.0)[0].item(), 0.36, rel_tol=1e-6)
    assert math.isclose(capo_loss(r_w, r_l, 2.0, torch.tensor([0.25]))[0].item(), 0.0225, rel_tol=1e-5)


def test_ipo_is_capo_with_unit_targets():
    g = torch.Generator().manual_seed(3)
    r_w, r_l = torch.randn(16, generator=g), torch.randn(16, generator=g)
    a, _ = ipo_loss(r_w, r_l, 3.0, reduction="none")
    b, _ = capo_loss(r_w, r_l, 3.0, torch.ones(16), reduction="none")
    assert torch.allclose(a, b)


def test_capo_needs_target():
    with pytest.raises(ValueError, match="target_gap"):
        capo_loss(torch.zeros(1), torch.zeros(1), 1.0, None)


def test_metrics_hand_values():
    r_w, r_l = torch.tensor([1.0, 0.0, 2.0, 0.5]), torch.tensor([0.0, 1.0, 2.0, 0.0])
    _, m = dpo_loss(r_w, r_l, 1.0)
    assert m["implicit_acc"].item() == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert m["reward_margin"].item() == pytest.approx((1 - 1 + 0 + 0.5) / 4)
    assert m["reward_w"].item() == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("fn,target", [(dpo_loss, None), (ipo_loss, None), (capo_loss, 0.8)])
def test_gradients_push_preferred_reward_up_from_zero(fn, target):
    r_w, r_l = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    loss, _ = fn(r_w, r_l, 1.0, None if target is None else torch.tensor([target]))
    loss.backward()
    assert r_w.grad.item() < 0 < r_l.grad.item()


def test_capo_stationary_at_target():
    # the CaPO loss is minimised (zero, zero gradient) where beta (r_w - r_l) equals the gap
    r_w = torch.tensor([0.3], requires_grad=True)
    loss, _ = capo_loss(r_w, torch.tensor([0.1]), 2.0, torch.tensor([0.4]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and r_w.grad.abs().item() < 1e-6


def test_matches_public_diffusion_dpo_scale():
    # Diffusion-DPO: -logsigmoid(-0.5 * beta_dpo * ((e_w - ref_w) - (e_l - ref_l))) == dpo_loss with beta = beta_dpo / 2
    g = torch.Generator().manual_seed(5)
    e_w, e_l, ref_w, ref_l = (torch.rand(8, generator=g) * 1e-3 for _ in range(4))
    theirs = -F.logsigmoid(-0.5 * 5000 * ((e_w - ref_w) - (e_l - ref_l))).mean()
    one = torch.ones(8)
    ours, _ = dpo_loss(implicit_reward(e_w, ref_w, one), implicit_reward(e_l, ref_l, one), beta=2500.0)
    assert torch.allclose(ours, theirs, rtol=1e-5)


def test_pair_noise_shared_and_independent():
    a_w, a_l = sample_pair_noise((2, 4, 8, 8), shared=True, generator=torch.Generator().manual_seed(0))
    b_w, b_l = sample_pair_noise((2, 4, 8, 8), shared=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a_w, a_l) and not torch.equal(b_w, b_l)
    assert torch.equal(a_w, b_w)  # same generator state -> same first draw
