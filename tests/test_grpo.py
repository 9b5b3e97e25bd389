"""GRPO baseline (issue #22): the step Gaussians, log-probabilities, advantages and the clipped
loss by hand (capo.method.grpo), and ``capo train objective=grpo`` (capo.stages.grpo) on the tiny
shapes bases and on tiny real-class SDXL / SD3."""

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from capo import artifacts
from capo.config import ConfigError, to_dict
from capo.method import grpo as G
from capo.stages import grpo as S
from capo.stages import train

SIG = lambda d: 1 / (1 + math.exp(-d))  # noqa: E731


# ----------------------------------------------------------------------------- the steps
def test_gaussian_log_prob_by_hand():
    x = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    mean = torch.tensor([[0.0, -0.5], [1.0, 1.0]])
    std = torch.tensor([0.5, 2.0])  # per item
    want = [np.mean([-(xv - m) ** 2 / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi)
                     for xv, m in zip(x[b].tolist(), mean[b].tolist())]) for b, s in enumerate(std.tolist())]
    assert torch.allclose(G.gaussian_log_prob(x, mean, std), torch.tensor(want, dtype=torch.float32), atol=1e-6)
    normal = torch.distributions.Normal(mean, std[:, None]).log_prob(x).mean(1)
    assert torch.allclose(G.gaussian_log_prob(x, mean, std), normal, atol=1e-6)
    with pytest.raises(ValueError, match="std > 0"):
        G.gaussian_log_prob(x, mean, 0.0)


def test_ddim_step_by_hand():
    # abar_t = 0.5, abar_prev = 0.8, eta = 1: s^2 = (0.2 / 0.5)(1 - 0.5 / 0.8) = 0.15;
    # x0 = (1 - sqrt(0.5) 0.5) / sqrt(0.5); mu = sqrt(0.8) x0 + sqrt(1 - 0.8 - 0.15) 0.5
    x, eps = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64)
    mu, s = G.ddim_step(x, eps, 0.5, 0.8, 1.0)
    x0 = (1 - math.sqrt(0.5) * 0.5) / math.sqrt(0.5)
    assert math.isclose(float(s), math.sqrt(0.15), rel_tol=1e-12)
    assert math.isclose(float(mu), math.sqrt(0.8) * x0 + math.sqrt(0.05) * 0.5, rel_tol=1e-12)
    mu0, s0 = G.ddim_step(x, eps, 0.5, 0.8, 0.0)  # eta = 0: deterministic DDIM
    assert float(s0) == 0 and math.isclose(float(mu0), math.sqrt(0.8) * x0 + math.sqrt(0.2) * 0.5, rel_tol=1e-12)
    with pytest.raises(ValueError, match="eta"):
        G.ddim_step(x, eps, 0.5, 0.8, 1.5)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_step_equals_diffusers_ddim(eta):
    """DDIMScheduler.step with eta and its variance noise z is mu + s z (shapes world's trailing DDIM)."""
    from diffusers import DDIMScheduler

    from capo.worlds.shapes.pipeline import DDPM_SCHEDULER_CONFIG

    sch = DDIMScheduler.from_config(DDPM_SCHEDULER_CONFIG, timestep_spacing="trailing", set_alpha_to_one=False,
                                    clip_sample=False)
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (sch.timesteps[0], sch.timesteps[4], sch.timesteps[-1]):
        prev = int(t) - 1000 // 10
        a_t = float(sch.alphas_cumprod[t])
        a_p = float(sch.alphas_cumprod[prev]) if prev >= 0 else float(sch.final_alpha_cumprod)
        mu, s = G.ddim_step(x, eps, a_t, a_p, eta)
        want = sch.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(mu + s * z, want, rtol=1e-6, atol=1e-6)


def test_flow_sde_step_by_hand_and_as_flow_grpo_writes_it():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                  dtype=torch.float64)
    cap = 0.95
    for sigma, nxt in ((1.0, 0.95), (0.6, 0.5), (0.1, 0.0)):
        mu, s = G.flow_sde_step(x, v, sigma, nxt, 0.7, cap)
        # flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, transcribed
        dt = nxt - sigma
        std_dev_t = math.sqrt(sigma / (1 - (cap if sigma == 1 else sigma))) * 0.7
        want = x * (1 + std_dev_t ** 2 / (2 * sigma) * dt) + v * (1 + std_dev_t ** 2 * (1 - sigma) / (2 * sigma)) * dt
        torch.testing.assert_close(mu, want, rtol=1e-12, atol=1e-12)
        assert math.isclose(float(s), std_dev_t * math.sqrt(-dt), rel_tol=1e-12)
        # the brief's form: x + [v + sigma_t^2 / (2 t) (x + (1 - t) v)] dt
        torch.testing.assert_close(mu, x + (v + std_dev_t ** 2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt)
    mu, s = G.flow_sde_step(x, v, 0.6, 0.5, 0.0, cap)  # a = 0: the ODE's Euler step
    assert float(s) == 0 and torch.equal(mu, x + v * (0.5 - 0.6))


def _gaussian_data_chain(kind: str, n: int = 20000, steps: int = 200, data_std: float = 0.5):
    """Run the SDE / DDIM(eta=1) chain on 1-D Gaussian data N(0, data_std^2) with the exact
    velocity / eps; return the final std and the std expected along the way."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    s2 = data_std ** 2
    if kind == "flow":
        sig = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        mid = []
        for i in range(steps):
            a, b = float(sig[i]), float(sig[i + 1])
            V = (1 - a) ** 2 * s2 + a ** 2
            v = (a - (1 - a) * s2) / V * x  # E[eps - x0 | x_sigma]
            mu, s = G.flow_sde_step(x, v, a, b, 0.7, float(sig[1]))
            x = mu + s * torch.randn(x.shape, generator=g, dtype=torch.float64)
            if i == steps // 2 - 1:
                mid.append((x.std().item(), math.sqrt((1 - b) ** 2 * s2 + b ** 2)))
        return x.std().item(), mid
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)
    ts = list(range(999, -1, -1000 // steps))
    x = x  # x_T ~ N(0, 1) ~ marginal at abar_T ~ 0.005 (V ~ 1)
    mid = []
    for k, t in enumerate(ts):
        a_t = float(abar[t])
        a_p = float(abar[t - 1000 // steps]) if t - 1000 // steps >= 0 else 1.0 - 1e-12
        V = a_t * s2 + 1 - a_t
        eps = math.sqrt(1 - a_t) / V * x  # E[eps | x_t]
        mu, s = G.ddim_step(x, eps, a_t, a_p, 1.0)
        x = mu + s * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if k == len(ts) // 2:
            mid.append((x.std().item(), math.sqrt(a_p * s2 + 1 - a_p)))
    return x.std().item(), mid


@pytest.mark.parametrize("kind", ["flow", "ddim"])
def test_stochastic_chains_keep_the_marginals(kind):
    """With the exact velocity / eps of Gaussian data, the SDE (Flow-GRPO's sign conventions) and
    DDIM with eta = 1 end at the data distribution, and pass through the ODE's marginals."""
    end, mid = _gaussian_data_chain(kind)
    assert abs(end - 0.5) < 0.025, end  # a flipped sign of the score term ends at std 4.1
    got, want = mid[0]
    assert abs(got - want) < 0.03 * want, (got, want)


def test_step_kl_closed_form():
    g = torch.Generator().manual_seed(2)
    mp, mq = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    std = torch.tensor([0.5, 1.0, 2.0])
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mp, std[:, None, None]),
                                             torch.distributions.Normal(mq, std[:, None, None])).mean((1, 2))
    torch.testing.assert_close(G.step_kl(mp, mq, std), want)
    # by hand: means 1 apart, s = 0.5: 1 / (2 * 0.25) = 2
    assert math.isclose(float(G.step_kl(torch.ones(1, 3), torch.zeros(1, 3), 0.5)), 2.0)


# ----------------------------------------------------------------------------- advantages and loss
def test_group_advantages_by_hand():
    s = np.array([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    sd = math.sqrt((4 + 1 + 0 + 9) / 4)  # population std (ddof 0), as flow_grpo
    a = G.group_advantages(s, "std", eps=1e-4)
    np.testing.assert_allclose(a[0], np.array([-2, -1, 0, 3]) / (sd + 1e-4))
    assert (a[1] == 0).all()  # a tied group teaches nothing
    np.testing.assert_allclose(G.group_advantages(s, "none")[0], [-2, -1, 0, 3])
    np.testing.assert_allclose(G.group_advantages(s, "none", clip=1.5)[0], [-1.5, -1, 0, 1.5])
    with pytest.raises(ValueError, match="G >= 2"):
        G.group_advantages(np.ones((2, 1)))


def test_sum_scores_weighted_raw():
    r = np.array([[[1.0, 10.0], [2.0, 0.0]]])  # one group, 2 images, 2 rewards
    np.testing.assert_allclose(G.group_scores(r, "sum"), [[5.5, 1.0]])  # uniform 1/2
    np.testing.assert_allclose(G.group_scores(r, "sum", weights=[3, 1]), [[0.75 + 2.5, 1.5]])
    np.testing.assert_allclose(G.group_scores(r[..., 0], "sum"), [[1.0, 2.0]])  # (P, G): one reward


def test_calibrated_scores_by_hand():
    # one reward, identity, r = [0, 1, 1]: R_ca = [(s(-1) + s(-1)) / 2, (s(1) + s(0)) / 2, same]
    got = G.group_scores(np.array([[0.0, 1.0, 1.0]]), "calibrated")
    want = [SIG(-1), (SIG(1) + 0.5) / 2, (SIG(1) + 0.5) / 2]
    np.testing.assert_allclose(got[0], want)
    # two rewards, the first on temperature:10 (raw 0, 10, 20 -> BT 0, 1, 2), the second identity
    r = np.array([[[0.0, 3.0], [10.0, 0.0], [20.0, 0.0]]])
    got = G.group_scores(r, "calibrated", transforms=["temperature:10", "identity"])
    r1 = [(SIG(-1) + SIG(-2)) / 2, (SIG(1) + SIG(-1)) / 2, (SIG(2) + SIG(1)) / 2]
    r2 = [SIG(3), (SIG(-3) + 0.5) / 2, (SIG(-3) + 0.5) / 2]
    np.testing.assert_allclose(got[0], (np.array(r1) + np.array(r2)) / 2)
    assert math.isclose(got.mean(), 0.5)  # each reward's R_ca averages 1/2 within a group
    # scale-free: multiplying a reward by 100 moves the sum, not the calibrated score under temperature:1000
    r3 = r.copy()
    r3[..., 0] *= 100
    np.testing.assert_allclose(G.group_scores(r3, "calibrated", transforms=["temperature:1000", "identity"]), got)


def test_pareto_scores_by_hand():
    pts = np.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]])
    np.testing.assert_array_equal(G.group_scores(pts, "pareto"), [[-1, -1, -2, 0]])
    with pytest.raises(ValueError, match="unknown advantage"):
        G.group_scores(pts, "max")


def test_clipped_surrogate_and_loss_by_hand():
    lp_old = torch.zeros(4)
    lp = torch.tensor([0.1, 0.1, -0.1, 0.01])
    adv = torch.tensor([2.0, -1.0, 1.0, 3.0])
    per, ratio, clipped = G.clipped_surrogate(lp, lp_old, adv, 0.05)
    r = math.exp(0.1)
    want = [max(-2 * r, -2 * 1.05), max(1 * r, 1 * 1.05), max(-math.exp(-0.1), -0.95), -3 * math.exp(0.01)]
    torch.testing.assert_close(per, torch.tensor(want))
    assert clipped.tolist() == [True, True, True, False]
    kl = torch.tensor([0.2, 0.0, 0.4, 0.2])
    loss, met = G.grpo_loss(lp, lp_old, adv, 0.05, beta=0.5, kl=kl)
    assert math.isclose(loss.item(), np.mean(want) + 0.5 * 0.2, rel_tol=1e-6)
    assert math.isclose(met["clipfrac"].item(), 0.75) and math.isclose(met["kl"].item(), 0.2, rel_tol=1e-6)
    assert math.isclose(met["approx_kl"].item(), 0.5 * (0.01 + 0.01 + 0.01 + 0.0001) / 4, rel_tol=1e-5)
    # the gradient of the unclipped surrogate is -A r d(log pi): on-policy (r = 1), -A
    lp = torch.zeros(2, requires_grad=True)
    G.grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -2.0]), 0.2)[0].backward()
    torch.testing.assert_close(lp.grad, torch.tensor([-0.5, 1.0]))


# ----------------------------------------------------------------------------- the chain on the bases
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from conftest import build_tiny

    from capo.models import load_model

    root = tmp_path_factory.mktemp("grpo-bases")
    return {k: (root / k, load_model(str(build_tiny(root / k, kind=k)))) for k in ("sdxl-like", "sd3-like")}


@pytest.mark.parametrize("kind", ["sdxl-like", "sd3-like"])
def test_deterministic_chain_is_the_models_sampler(bases, kind):
    """With every step deterministic the chain is the model's own sampler (DDIM eta = 0 / flow Euler):
    same timesteps, guidance and step formula."""
    _, model = bases[kind]
    chain = S.Chain(model, 3, None)
    prompts, seeds = ["a photo of a red circle", "a photo of two squares"], [5, 6]
    with torch.no_grad():
        cond = model.encode_prompts(prompts)
        lat, lp = S.sample_chain(model, model.denoiser, chain, cond, model.unconditional(2), 3.0, seeds,
                                 [False] * 3, contextlib.nullcontext)
    want = model.sample_latents(prompts, seeds, steps=3, guidance=3.0)
    torch.testing.assert_close(lat[:, -1], want, rtol=1e-5, atol=1e-5)
    assert torch.isnan(lp).all()


@pytest.mark.parametrize("kind", ["sdxl-like", "sd3-like"])
def test_rollout_log_probs_by_hand(bases, kind):
    """Each stochastic step's log-probability is the Gaussian density (torch.distributions) of the
    step taken, around a mean recomputed here from the model's guided output with the DDIM /
    Flow-GRPO formula written out, with the noise drawn from the image's own generator."""
    _, model = bases[kind]
    chain = S.Chain(model, 3, None)
    prompts, seeds, g = ["a photo of a red circle", "a photo of two squares"], [5, 6], 2.0
    with torch.no_grad():
        cond, unc = model.encode_prompts(prompts), model.unconditional(2)
        lat, lp = S.sample_chain(model, model.denoiser, chain, cond, unc, g, seeds, [True] * 3,
                                 contextlib.nullcontext)
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
        for i in range(3):
            x, t = lat[:, i], chain.t_model[i]
            out = model.guided_predict(x, t, cond, unc, g).double()
            xd = x.double()
            if kind == "sd3-like":
                sig, nxt = float(chain.sigmas[i]), float(chain.sigmas[i + 1])
                st = 0.7 * math.sqrt(sig / (1 - (float(chain.sigmas[1]) if sig == 1 else sig)))
                mu = xd + (out + st ** 2 / (2 * sig) * (xd + (1 - sig) * out)) * (nxt - sig)
                std = st * math.sqrt(sig - nxt)
            else:
                sch = model.sampler(3)
                tt = int(sch.timesteps[i])
                a_t = float(sch.alphas_cumprod[tt])
                a_p = float(sch.alphas_cumprod[tt - 1000 // 3]) if tt - 1000 // 3 >= 0 else float(sch.final_alpha_cumprod)
                std = math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))  # eta = 1
                x0 = (xd - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
                mu = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - std ** 2) * out
            z = torch.stack([torch.randn(x.shape[1:], generator=gg) for gg in gens]).double()
            torch.testing.assert_close(lat[:, i + 1].double(), mu + std * z, rtol=1e-4, atol=1e-4)
            want = torch.distributions.Normal(mu, std).log_prob(lat[:, i + 1].double()).mean((1, 2, 3))
            torch.testing.assert_close(lp[:, i].double(), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- capo train objective=grpo
def _grpo(chain_dir, out, **kw):
    args = dict(model=str(chain_dir / "base"), pairs=str(chain_dir / "pairs-frs"), out=str(out), objective="grpo",
                beta=0.01, steps=4, batch_size=2, group_size=4, lr=1e-3, log_every=1, checkpoint_every=2,
                clip_range=0.2, quiet=True) | kw
    return train.run(train.TrainConfig(**args))


def test_config_rules():
    with pytest.raises(ConfigError, match="pairs, prompts"):
        train.TrainConfig(model="m", out="o", objective="grpo")
    with pytest.raises(ConfigError, match="rewards"):
        train.TrainConfig(model="m", out="o", objective="grpo", prompts="shapes:train")
    with pytest.raises(ConfigError, match="give pairs=DIR"):
        train.TrainConfig(model="m", out="o", objective="dpo")
    with pytest.raises(ConfigError, match="beta: must be > 0 for objective=capo"):
        train.TrainConfig(model="m", pairs="p", out="o", beta=0.0)
    with pytest.raises(ConfigError, match="equal micro-batches"):
        train.TrainConfig(model="m", pairs="p", out="o", objective="grpo", batch_size=3, group_size=3, grpo_updates=2)
    with pytest.raises(ConfigError, match="grpo_sde"):
        train.TrainConfig(model="m", pairs="p", out="o", objective="grpo", grpo_sde="some")
    train.TrainConfig(model="m", pairs="p", out="o", objective="grpo", beta=0.0)  # GRPO without KL (Flow-GRPO's default)
    # GRPO's keys are not in other objectives' configs (their run keys are as before)
    d = to_dict(train.TrainConfig(model="m", pairs="p", out="o", objective="dpo"))
    assert not set(train.GRPO_KEYS) & set(d)
    assert set(train.GRPO_KEYS) <= set(to_dict(train.TrainConfig(model="m", pairs="p", out="o", objective="grpo")))


def test_train_grpo_on_pairs_resumes_exactly(tiny_chain, tmp_path):
    """Two rewards from FRS pairs, calibrated advantages, two updates per rollout in two micro-batches, a
    KL to the reference; the budget by hand; a run killed after step 2 resumes to the same weights."""
    kw = dict(advantage="calibrated", grpo_updates=2, grad_accum=2, group_size=4, batch_size=2)
    res = _grpo(tiny_chain, tmp_path / "a", **kw)
    assert res["complete"] and res["counts"] == {"steps": 4, "rollouts": 2, "prompts": 4}
    # 2 rollouts x 2 prompts x 4 images; 3 steps of chain; CFG doubles each pass; each image trained once per rollout
    assert res["budget"] == {"rollout_images": 16, "rollout_passes": 16 * 3 * 2, "update_passes": 16 * 3 * 2,
                             "reference_passes": 16 * 3 * 2}
    assert res["chain"]["rewards"] == ["toy-bright", "toy-red"]
    assert res["chain"]["transforms"] == ["temperature:10", "identity"]
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert lines[0]["ratio"] == 1.0 and lines[0]["kl"] == 0.0  # on-policy, and the policy is the reference
    assert lines[0]["score"] == pytest.approx(0.5)  # calibrated scores average 1/2 in every group
    assert lines[1]["kl"] > 0 and "reward_toy-red" in lines[0]
    stopped = _grpo(tiny_chain, tmp_path / "b", stop_after=2, **kw)
    assert stopped == {"stopped_at": 2, "skipped": False, "complete": False}
    again = _grpo(tiny_chain, tmp_path / "b", **kw)
    assert again["complete"] and again["budget"] == res["budget"]
    f = "final/denoiser.safetensors"
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert _grpo(tiny_chain, tmp_path / "a", **kw)["skipped"]
    from capo.models import load_model

    assert load_model(str(tmp_path / "a" / "final")).denoiser is not None


def test_one_update_increases_the_surrogate(tiny_chain, tmp_path):
    """The trained weights raise mean_i,j A_i pi_theta(x_{j+1} | x_j) / pi_old on the rollout they were
    trained on (GRPO's surrogate; 0 at the old policy since advantages have mean 0)."""
    from capo.models import load_model
    from capo.rewards import load_reward

    res = _grpo(tiny_chain, tmp_path / "g", steps=1, beta=0.0, lr=1e-4, pairs=str(tiny_chain / "pairs-bw"),
                group_size=8)
    base, new = load_model(str(tiny_chain / "base")), load_model(str(tmp_path / "g" / "final"))
    records = [json.loads(x) for x in (tiny_chain / "samples" / "prompts.jsonl").read_text().splitlines()]
    idx = S.rollout_prompts(len(records), 0, 0, 2, 1, 0)
    seeds = [S.image_seed(0, 0, records[i]["prompt_id"], k) for i in idx for k in range(8)]
    prompts = [records[i]["prompt"] for i in idx for _ in range(8)]
    chain = S.Chain(base, base.default_steps, None)
    with torch.no_grad():
        cond, unc = base.encode_prompts(prompts), base.unconditional(len(prompts))
        lat, old = S.sample_chain(base, base.denoiser, chain, cond, unc, base.default_guidance, seeds, [True] * 3,
                                  contextlib.nullcontext)
        raw = np.asarray(load_reward("toy-bright")(base.decode_latents(lat[:, -1]), prompts))
        adv = torch.tensor(G.group_advantages(G.group_scores(raw.reshape(2, 8)), clip=5.0).reshape(-1))

        def surrogate(m):
            tot = 0.0
            for j in range(3):
                pred = S.guided(m, m.denoiser, lat[:, j], chain.t_model[j], cond, unc, m.default_guidance)
                mean, std = chain.step(j, lat[:, j], pred)
                tot += (adv * torch.exp(G.gaussian_log_prob(lat[:, j + 1], mean, std) - old[:, j])).mean().item()
            return tot / 3

    assert res["final_metrics"]["reward_toy-bright"] == pytest.approx(raw.mean(), rel=1e-6)  # the same rollout
    assert abs(surrogate(base) - float(adv.mean())) < 1e-5
    assert surrogate(new) > surrogate(base) + 1e-4


def test_trained_reward_goes_up_on_toy_bright(tiny_chain, tmp_path):
    """Ten steps of GRPO on toy-bright (the UNet base): the rollouts' reward rises, and so does the
    reward of the model's own deterministic sampler on fixed seeds."""
    from conftest import PROMPTS

    from capo.models import load_model

    _grpo(tiny_chain, tmp_path / "up", steps=10, beta=0.0, lr=3e-3, pairs=str(tiny_chain / "pairs-bw"),
          batch_size=4, group_size=8, checkpoint_every=10)
    lines = [json.loads(x)["reward_toy-bright"] for x in (tmp_path / "up" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(lines[-3:]) > lines[0] + 0.03, lines

    def bright(spec):
        im, _ = load_model(spec).sample([PROMPTS[i % 4] for i in range(32)], list(range(32)))
        return im.reshape(32, -1).mean(1).mean() / 25.5

    assert bright(str(tmp_path / "up" / "final")) > bright(str(tiny_chain / "base")) + 0.03


def test_flow_base_window_and_prompts(tmp_path):
    """The SD3-like base from prompts= and rewards=: a one-step SDE window per rollout (Flow-GRPO-Fast),
    Pareto advantages, LoRA with the adapter-disabled reference."""
    from conftest import PROMPTS, build_tiny

    build_tiny(tmp_path / "base", kind="sd3-like")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    res = train.run(train.TrainConfig(model=str(tmp_path / "base"), prompts=str(tmp_path / "p.txt"),
                                      rewards=["toy-bright", "toy-red"], out=str(tmp_path / "o"), objective="grpo",
                                      beta=0.1, steps=2, batch_size=2, group_size=4, grpo_steps=1, grpo_sde="window",
                                      advantage="pareto", lora_rank=2, lr=1e-3, log_every=1, quiet=True))
    assert res["chain"] == {"steps": 3, "noise_level": 0.7, "trained_steps": 1, "guidance": 2.0,
                            "rewards": ["toy-bright", "toy-red"], "transforms": ["temperature:10", "identity"]}
    assert res["budget"]["update_passes"] == 2 * 8 * 1 * 2  # 2 steps x 8 images x one trained step x CFG
    assert res["inputs"]["prompts"]["path"] == str(tmp_path / "p.txt")
    lines = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["ratio"] == 1.0 and lines[0]["score"] <= 0  # minus Pareto front indices
    from safetensors.torch import load_file

    lora_b = [v for k, v in load_file(str(tmp_path / "o" / "final" / "adapter" / "adapter_model.safetensors")).items()
              if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the adapter (zero at init) was trained


@pytest.mark.parametrize("builder", ["build_sdxl", "build_sd3"])
def test_grpo_trains_the_real_classes(tmp_path, builder):
    """Tiny random SDXL / SD3 of the real diffusers classes (DDIM eta; flow SDE on the checkpoint's shift)."""
    import helpers as B

    from capo.models import load_model

    model = str(getattr(B, builder)(tmp_path / "model"))
    (tmp_path / "p.txt").write_text("a red cube\ntwo blue spheres\n")
    res = train.run(train.TrainConfig(model=model, prompts=str(tmp_path / "p.txt"), rewards=["toy-bright"],
                                      out=str(tmp_path / "o"), objective="grpo", beta=0.05, steps=2, batch_size=1,
                                      group_size=2, sample_steps=2, lr=1e-3, log_every=1, quiet=True,
                                      lora_rank=2 if builder == "build_sdxl" else 0))
    assert res["complete"] and res["chain"]["steps"] == 2
    m = load_model(model)
    chain = S.Chain(m, 2, None)
    assert chain.stochastic == ([0] if builder == "build_sdxl" else [0, 1])  # SDXL-like DDIM: alpha_0 = 1, last step exact
    assert res["chain"]["trained_steps"] == len(chain.stochastic)
    lines = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["ratio"] == pytest.approx(1.0, abs=1e-5) and all(np.isfinite(x["loss"]) for x in lines)
    assert load_model(str(tmp_path / "o" / "final")).denoiser is not None


def test_step_subset_per_update(tiny_chain, tmp_path):
    """grpo_steps=2 of the 3 stochastic steps (DanceGRPO / Flow-GRPO's timestep fraction): rollouts
    still run all 3 steps, each update trains 2 of them."""
    res = _grpo(tiny_chain, tmp_path / "k", steps=2, grpo_steps=2, group_size=4, batch_size=2)
    assert res["chain"]["trained_steps"] == 2
    assert res["budget"] == {"rollout_images": 16, "rollout_passes": 16 * 3 * 2, "update_passes": 16 * 2 * 2,
                             "reference_passes": 16 * 2 * 2}


def test_iterate_rounds_of_grpo(tiny_chain, tmp_path):
    """`capo iterate objective=grpo`: round 2 continues GRPO from round 1's checkpoint with the KL
    to the base model (its own sampled pairs give only the prompts and rewards: GRPO rolls out)."""
    from capo.stages import iterate

    res = iterate.run(iterate.IterateConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"),
                                            out=str(tmp_path / "it"), rounds=2, steps=2, objective="grpo", beta=0.01,
                                            batch_size=2, batch=8, lr=1e-3, quiet=True))
    r1, r2 = res["rounds"]
    tm = artifacts.read_json(tmp_path / "it" / "round-2" / "train" / artifacts.MANIFEST)
    assert tm["config"]["objective"] == "grpo" and tm["config"]["model"] == r1["checkpoint"]
    assert tm["inputs"]["reference"]["path"] == str(tiny_chain / "base")
    assert tm["budget"]["rollout_images"] == 2 * 8  # one step of 2 prompts x group_size 8


def test_monitor_rewards_are_logged_never_trained(tmp_path):
    """A monitor reward (the shapes world's gold in capo online's GRPO cells) is scored on every
    rollout and logged as monitor_<name>: its value is the reward a run training on it logs for
    the same (base-policy) rollout, and the trained weights are those of the run without it."""
    from conftest import PROMPTS, build_tiny

    build_tiny(tmp_path / "base")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")

    def run(out, rewards, monitor=()):
        train.run(train.TrainConfig(model=str(tmp_path / "base"), prompts=str(tmp_path / "p.txt"), rewards=rewards,
                                    monitor_rewards=list(monitor), out=str(tmp_path / out), objective="grpo",
                                    beta=0.1, steps=1, batch_size=2, group_size=2, grpo_steps=1, lr=1e-3,
                                    log_every=1, quiet=True))
        return json.loads((tmp_path / out / "metrics.jsonl").read_text().splitlines()[0])

    both = run("both", ["toy-bright", "toy-red"])
    mon = run("mon", ["toy-bright"], ["toy-red"])
    plain = run("plain", ["toy-bright"])
    assert mon["monitor_toy-red"] == pytest.approx(both["reward_toy-red"], abs=1e-6)
    assert "reward_toy-red" not in mon and "monitor_toy-red" not in plain
    f = "final/denoiser.safetensors"
    assert (tmp_path / "mon" / f).read_bytes() == (tmp_path / "plain" / f).read_bytes()
    with pytest.raises(ConfigError, match="monitor_rewards: toy-red also trained on"):
        train.TrainConfig(model="m", prompts="p", out="o", objective="grpo", rewards=["toy-red"],
                          monitor_rewards=["toy-red"])
