"""Schedules: log-SNR and its derivative, hand-computed (METHOD.md, Notation)."""

import math

import pytest
import torch

from capo.method import schedules as S


def test_flow_terms_hand_values():
    # t = 0.5: alpha = sigma = 0.5, lambda = 2 log 1 = 0, lambda' = -2 / (0.5 * 0.5) = -8
    # t = 0.25: lambda = 2 log 3 = 2.19722, lambda' = -2 / (0.25 * 0.75) = -10.6667
    tt = S.flow_terms(torch.tensor([0.5, 0.25]))
    assert torch.allclose(tt.alpha, torch.tensor([0.5, 0.75], dtype=torch.float64))
    assert torch.allclose(tt.sigma, torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert torch.allclose(tt.log_snr, torch.tensor([0.0, 2 * math.log(3)], dtype=torch.float64))
    assert torch.allclose(tt.dlog_snr_dt, torch.tensor([-8.0, -2 / 0.1875], dtype=torch.float64))


def test_flow_derivative_matches_finite_difference():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (S.flow_terms(t + h).log_snr - S.flow_terms(t - h).log_snr) / (2 * h)
    assert torch.allclose(S.flow_terms(t).dlog_snr_dt, fd, rtol=1e-6)


def test_flow_rejects_endpoints():
    with pytest.raises(ValueError, match="strictly inside"):
        S.flow_terms(torch.tensor([0.0, 0.5]))


def test_ddpm_log_snr_and_derivative_hand_values():
    # abar = [0.9, 0.5, 0.2, 0.1], T = 4, spacing h = 1/4
    # lambda = [log 9, 0, log 0.25, -log 9]
    # lambda'_0 = (0 - log 9) / h;  lambda'_1 = (log .25 - log 9) / 2h
    # lambda'_2 = (-log 9 - 0) / 2h; lambda'_3 = (-log 9 - log .25) / h
    abar = torch.tensor([0.9, 0.5, 0.2, 0.1], dtype=torch.float64)
    l9, lq = math.log(9), math.log(0.25)
    assert torch.allclose(S.ddpm_log_snr(abar), torch.tensor([l9, 0.0, lq, -l9], dtype=torch.float64))
    expect = [-l9 / 0.25, (lq - l9) / 0.5, -l9 / 0.5, (-l9 - lq) / 0.25]
    assert torch.allclose(S.ddpm_dlog_snr_dt(abar), torch.tensor(expect, dtype=torch.float64))
    tt = S.ddpm_terms(abar, torch.tensor([1, 3]))
    assert torch.allclose(tt.t, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert torch.allclose(tt.alpha ** 2 + tt.sigma ** 2, torch.ones(2, dtype=torch.float64))
    assert torch.allclose(tt.dlog_snr_dt, torch.tensor([expect[1], expect[3]], dtype=torch.float64))


def test_ddpm_terms_from_diffusers_scheduler():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    abar = S.alphas_cumprod_of(sched)
    tt = S.ddpm_terms(abar, torch.arange(1000))
    assert (tt.log_snr[1:] < tt.log_snr[:-1]).all()  # SNR falls with t
    assert (tt.dlog_snr_dt < 0).all()
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        S.ddpm_terms(abar, torch.tensor([1000]))


def test_alphas_cumprod_of_rejects_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(TypeError, match="flow_terms"):
        S.alphas_cumprod_of(FlowMatchEulerDiscreteScheduler())


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_eps_from_prediction_recovers_eps_vp(kind):
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    abar = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = S.add_noise(x, eps, a, s)
    pred = {"epsilon": eps, "v_prediction": a.view(-1, 1, 1, 1).float() * eps - s.view(-1, 1, 1, 1).float() * x,
            "sample": x}[kind]
    assert torch.allclose(S.eps_from_prediction(pred, x_t, a, s, kind), eps, atol=1e-5)


def test_eps_from_flow_velocity_and_error_scale():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    tt = S.flow_terms(torch.tensor([0.3, 0.8]))
    x_t = S.add_noise(x, eps, tt.alpha, tt.sigma)
    v = eps - x
    assert torch.allclose(S.eps_from_prediction(v, x_t, tt.alpha, tt.sigma, "flow"), eps, atol=1e-5)
    v_hat = v + 0.1 * torch.randn(v.shape, generator=g)
    e = (S.eps_from_prediction(v_hat, x_t, tt.alpha, tt.sigma, "flow") - eps).pow(2).flatten(1).sum(1)
    ev = (v_hat - v).pow(2).flatten(1).sum(1)
    # ||eps_hat - eps||^2 = (1 - t)^2 ||v_hat - v||^2
    assert torch.allclose(e, (1 - tt.t.float()) ** 2 * ev, rtol=1e-4)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="known: epsilon"):
        S.eps_from_prediction(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1), "x0")
