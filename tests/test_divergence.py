"""Divergence from the base model: the reverse-process KL term (capo.method.divergence) and
its Monte Carlo estimate on the policy's samples (capo.eval.divergence)."""

import math

import numpy as np
import pytest
import torch

from capo.eval.divergence import (
    divergence_rows,
    divergence_summary,
    item_draws,
    param_distance_of,
    times_from_uniform,
)
from capo.method.divergence import (
    divergence_factor,
    divergence_of_predictions,
    divergence_term,
    kl_scale,
    param_distance,
)
from capo.method.merging import merge
from capo.method.schedules import ddpm_terms, flow_terms
from conftest import PROMPTS, build_tiny  # shared test helpers

RECORDS = [{"prompt": p, "prompt_id": f"p{i}"} for i, p in enumerate(PROMPTS[:2])]
KW = dict(n=2, n_t=4, steps=2, guidance=1.0)  # small and cheap: no CFG branch while sampling


# ----------------------------------------------------------------------------- pure math
def test_hand_values_ddpm():
    """abar = (0.9, 0.5, 0.1), T = 3, timestep 1: lambda = log(0.5 / 0.5) = 0 and, by central
    differences, lambda' = (log(1/9) - log 9) / (2/3) = -3 log 9. eps_theta - eps_ref = (1, 2):
    mean square 2.5. constant: D = 2.5; elbo: 2.5 * 3 log 9 = 16.479;
    sigmoid b = 1.5: w = sigmoid(1.5) = 0.817574, D = 0.817574 * 16.479."""
    terms = ddpm_terms(torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64), torch.tensor([1]))
    x_t = torch.randn(1, 1, 1, 2)
    pred_theta, pred_ref = torch.tensor([[[[1.0, 2.0]]]]), torch.zeros(1, 1, 1, 2)
    elbo = 2.5 * 3 * math.log(9)
    for weighting, b, want in (("constant", 0.0, 2.5), ("elbo", 0.0, elbo), ("sigmoid", 1.5, 0.8175744761936437 * elbo)):
        d = divergence_of_predictions(pred_theta, pred_ref, x_t, terms, "epsilon", weighting, b)
        assert d.dtype == torch.float64 and d.shape == (1,)
        assert d.item() == pytest.approx(want, rel=1e-6), weighting


def test_hand_values_flow():
    """t = 0.5: lambda = 0, lambda' = -2 / (t (1 - t)) = -8; velocities (1, 2) vs (0, 0):
    eps_hat = x_t + (1 - t) v, so the eps gap is (0.5, 1), mean square 0.625.
    constant: 0.625; elbo: 8 * 0.625 = 5; sigmoid b = 0: w = 1/2, D = 2.5."""
    terms = flow_terms(torch.tensor([0.5]))
    x_t = torch.randn(1, 1, 1, 2)
    v_theta, v_ref = torch.tensor([[[[1.0, 2.0]]]]), torch.zeros(1, 1, 1, 2)
    for weighting, b, want in (("constant", 0.0, 0.625), ("elbo", 0.0, 5.0), ("sigmoid", 0.0, 2.5)):
        d = divergence_of_predictions(v_theta, v_ref, x_t, terms, "flow", weighting, b)
        assert d.item() == pytest.approx(want, rel=1e-6), weighting


def test_factor_limits_and_errors():
    lam = torch.linspace(-6, 6, 5, dtype=torch.float64)
    dlam = -torch.linspace(3, 40, 5, dtype=torch.float64)
    assert torch.equal(divergence_factor(lam, dlam, "elbo"), -dlam)
    assert torch.allclose(divergence_factor(lam, dlam, "sigmoid", b=math.inf), -dlam)  # w_t = 1 in the limit
    assert torch.equal(divergence_factor(lam, dlam, "constant"), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="constant, sigmoid, elbo"):
        divergence_factor(lam, dlam, "snr")
    with pytest.raises(ValueError, match="shape"):
        divergence_term(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1))
    assert kl_scale((4, 8, 8)) == 128.0


def test_kl_constant_matches_gaussian_kl_of_ddpm_posterior_means():
    """The documented constant: sum over the DDPM chain of KL(N(mu_theta, s2) || N(mu_ref, s2)),
    s2 the posterior variance and mu = (x_t - beta / sqrt(1 - abar) eps) / sqrt(alpha), equals
    kl_scale * E_k[D_elbo] to first order (2% on SD's scaled-linear schedule, T = 1000)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    abar = sched.alphas_cumprod.double()
    beta = sched.betas.double()
    T, shape = len(abar), (4, 8, 8)
    g = torch.Generator().manual_seed(0)
    eps_theta, eps_ref = torch.randn(1, *shape, generator=g), torch.randn(1, *shape, generator=g)
    gap_sum = (eps_theta - eps_ref).double().pow(2).sum()
    k = torch.arange(1, T)  # steps k -> k - 1 (the decoder step k = 0 is left out)
    post_var = beta[k] * (1 - abar[k - 1]) / (1 - abar[k])
    mu_gap_sq = (beta[k] / (1 - abar[k]).sqrt()) ** 2 / (1 - beta[k]) * gap_sum  # x_t cancels
    exact = float((mu_gap_sq / (2 * post_var)).sum())
    terms = ddpm_terms(abar, torch.arange(T))
    factor = divergence_factor(terms.log_snr, terms.dlog_snr_dt, "elbo")
    d = divergence_term(eps_theta.expand(T, *shape), eps_ref.expand(T, *shape), factor)
    estimate = kl_scale(shape) * float(d.mean())
    assert estimate == pytest.approx(exact, rel=0.03)
    assert estimate < exact  # first order in the step: exp(x) - 1 > x


def test_param_distance_hand_value_and_errors():
    a = {"w": torch.tensor([3.0, 0.0]), "b": torch.zeros(1), "n": torch.tensor(7)}
    b = {"w": torch.tensor([0.0, 4.0]), "b": torch.zeros(1), "n": torch.tensor(9)}  # int buffers left out
    assert param_distance(a, b) == 5.0
    assert param_distance(a, a) == 0.0
    with pytest.raises(KeyError, match="only in state_b: 'extra'"):
        param_distance(a, {**b, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatch for 'w'"):
        param_distance(a, {**b, "w": torch.zeros(3)})


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per kind: the base path, the base model (reference), a policy to load weights into,
    and a task vector (random perturbation of the denoiser)."""
    from capo.models import load_model

    root = tmp_path_factory.mktemp("divergence")
    out = {}
    for kind in ("sdxl-like", "sd3-like"):
        path = build_tiny(root / kind, kind)
        ref, policy = load_model(str(path)), load_model(str(path))
        base = {k: v.clone() for k, v in ref.denoiser.state_dict().items()}
        g = torch.Generator().manual_seed(1)
        tuned = {k: v + 0.1 * (v.abs().mean() + 1e-3) * torch.randn(v.shape, generator=g) if v.is_floating_point()
                 else v for k, v in base.items()}
        out[kind] = (ref, policy, base, tuned)
    return out


def _set(policy, state):
    policy.denoiser.load_state_dict(state)
    return policy


@pytest.mark.parametrize("kind", ["sdxl-like", "sd3-like"])
def test_base_against_itself_is_zero(tiny, kind):
    ref, policy, base, _ = tiny[kind]
    _set(policy, base)
    rows = divergence_rows(policy, ref, RECORDS, weighting="elbo", **KW)  # the largest factor
    assert [(r["prompt_id"], r["sample_id"]) for r in rows] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    assert max(abs(r["divergence"]) for r in rows) < 1e-12
    assert param_distance_of(policy, ref) == 0.0


@pytest.mark.parametrize("kind", ["sdxl-like", "sd3-like"])
def test_grows_along_linear_merge(tiny, kind):
    ref, policy, base, tuned = tiny[kind]
    means, dists = [], []
    for a in (0.0, 0.25, 0.5, 1.0):
        _set(policy, merge(base, [base, tuned], weights=[1 - a, a], method="linear"))
        rows = divergence_rows(policy, ref, RECORDS, **KW)
        means.append(divergence_summary(rows, n_boot=200)["mean"])
        dists.append(param_distance_of(policy, ref))
    assert means[0] < 1e-12 and dists[0] == 0.0
    assert all(x < y for x, y in zip(means, means[1:])), means
    assert all(x < y for x, y in zip(dists, dists[1:])), dists
    assert dists[1] == pytest.approx(0.25 * dists[3], rel=1e-4)  # linear in a along the task vector


def test_batch_size_independent(tiny):
    ref, policy, _, tuned = tiny["sdxl-like"]
    _set(policy, tuned)
    big = divergence_rows(policy, ref, RECORDS, batch_size=64, weighting="sigmoid", **KW)
    small = divergence_rows(policy, ref, RECORDS, batch_size=3, weighting="sigmoid", **KW)
    assert [(r["prompt_id"], r["sample_id"]) for r in big] == [(r["prompt_id"], r["sample_id"]) for r in small]
    np.testing.assert_allclose([r["divergence"] for r in small], [r["divergence"] for r in big], rtol=1e-5)
    # one record alone gives its rows of the full run (draws depend on the item only)
    alone = divergence_rows(policy, ref, RECORDS[1:], weighting="sigmoid", **KW)
    np.testing.assert_allclose([r["divergence"] for r in alone], [r["divergence"] for r in big[2:]], rtol=1e-5)


@pytest.mark.parametrize("kind", ["sdxl-like", "sd3-like"])
def test_latents_reuse_gives_the_same_rows(tiny, kind):
    from capo.stages.generate import item_seed

    ref, policy, _, tuned = tiny[kind]
    _set(policy, tuned)
    prompts = [r["prompt"] for r in RECORDS for _ in range(2)]
    seeds = [item_seed(0, r["prompt_id"], k) for r in RECORDS for k in range(2)]
    _, latents = policy.sample(prompts, seeds, steps=KW["steps"], guidance=KW["guidance"], batch_size=8)
    inside = divergence_rows(policy, ref, RECORDS, **KW)
    reused = divergence_rows(policy, ref, RECORDS, latents=latents.numpy(), **KW)
    assert [r["sample_id"] for r in reused] == [r["sample_id"] for r in inside]
    np.testing.assert_allclose([r["divergence"] for r in reused], [r["divergence"] for r in inside], rtol=1e-5)
    with pytest.raises(ValueError, match="latents have shape"):
        divergence_rows(policy, ref, RECORDS, latents=latents[:3], **KW)


def test_times_match_the_trainer(tiny):
    """The same u gives the trainer's (t, model time): stages.train.draw_times_and_noise."""
    from capo.stages.train import draw_times_and_noise

    for kind in ("sdxl-like", "sd3-like"):
        ref = tiny[kind][0]
        terms, t_model, _, _ = draw_times_and_noise(ref, (3, 4, 8, 8), seed=5, m=2, shared=True)
        gens = [torch.Generator().manual_seed(int(np.random.SeedSequence([5, 13, 2, j]).generate_state(1)[0]))
                for j in range(3)]
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
        mine, mine_t = times_from_uniform(ref, u)
        assert torch.equal(mine.t, terms.t) and torch.equal(mine_t, t_model)
    u1, e1 = item_draws(0, "p0", 1, 3, (4, 8, 8))
    u2, e2 = item_draws(0, "p0", 1, 3, (4, 8, 8))
    assert torch.equal(u1, u2) and torch.equal(e1, e2) and not torch.equal(e1, item_draws(0, "p0", 0, 3, (4, 8, 8))[1])


def test_summary_and_lora_wrapper(tiny):
    import copy

    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from capo.method.merging import apply_delta, lora_delta

    rows = [{"prompt_id": p, "sample_id": k, "divergence": v}
            for p, k, v in (("a", 0, 1.0), ("a", 1, 3.0), ("b", 0, 2.0), ("b", 1, 2.0))]
    s = divergence_summary(rows, n_boot=300)
    assert s["mean"] == 2.0 and s["n_prompts"] == 2 and s["ci_low"] <= 2.0 <= s["ci_high"]

    ref, policy, base, _ = tiny["sdxl-like"]
    _set(policy, base)
    den = policy.denoiser
    try:
        policy.denoiser = get_peft_model(copy.deepcopy(den), LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_v"]))
        with torch.no_grad():
            for n_, p in policy.denoiser.named_parameters():
                if "lora_B" in n_:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n_)))
        dense = apply_delta(base, lora_delta(get_peft_model_state_dict(policy.denoiser), 2.0))
        want = param_distance(dense, base)
        assert want > 0 and param_distance_of(policy, ref) == pytest.approx(want, rel=1e-5)
        assert hasattr(policy.denoiser, "peft_config")  # merged on a copy: the wrapper is untouched
    finally:
        policy.denoiser = den
