"""SDXL and SD3 wrappers (capo.models.diffusers_backends) on tiny random pipelines.

Real weights cannot be downloaded here, so each test pipeline is the real pipeline class
with tiny random-init components built from config (as diffusers' own
``get_dummy_components``), tokenizers built from an in-memory vocabulary (a byte-level
CLIP BPE vocabulary with no merges; a small T5 unigram vocabulary), saved with
``save_pretrained`` and loaded back through ``load_diffusers_dir``, the path a user's
local copy takes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capo.models import ModelLoadError, load_model
from capo.models import diffusers_backends as DB
from helpers import build_sd3, build_sdxl

PROMPTS = ["a red cube", "two blue spheres on grass"]
SEEDS = [11, 12345]


# ----------------------------------------------------------------------------- builders


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return DB.load_diffusers_dir(sdxl_dir)


@pytest.fixture(scope="module")
def sd3(sd3_dir):
    return DB.load_diffusers_dir(sd3_dir, max_sequence_length=8)


# ----------------------------------------------------------------------------- loading
def test_load_dispatches_on_model_index(sdxl, sd3, sdxl_dir):
    assert isinstance(sdxl, DB.SDXLModel) and sdxl.kind == "sdxl" and sdxl.prediction_type == "epsilon"
    assert isinstance(sd3, DB.SD3Model) and sd3.kind == "sd3" and sd3.prediction_type == "flow"
    assert (sdxl.default_steps, sdxl.default_guidance) == (50, 7.5)  # the paper's samplers (Sec. 5)
    assert (sd3.default_steps, sd3.default_guidance) == (50, 5.0)
    assert sdxl.denoiser is sdxl.pipe.unet and sd3.denoiser is sd3.pipe.transformer
    assert isinstance(load_model(str(sdxl_dir)), DB.SDXLModel)  # the generic spec path reaches the same loader


def test_load_errors(tmp_path, sdxl_dir):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        DB.load_diffusers_dir(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelLoadError, match="not supported"):
        DB.load_diffusers_dir(tmp_path)
    with pytest.raises(ValueError, match="SD3"):
        DB.load_diffusers_dir(sdxl_dir, drop_t5=True)


@pytest.mark.parametrize("factory,hub_id", [(DB.load_sdxl, DB.SDXL_HUB_ID), (DB.load_sd3_medium, DB.SD3_HUB_ID)])
def test_missing_weights_name_the_hub_id(factory, hub_id, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "model_index.json"), str):
        pytest.skip(f"{hub_id} is cached on this machine")
    with pytest.raises(ModelLoadError) as e:
        factory(local_files_only=True)  # never touches the network
    assert hub_id in str(e.value) and f"download {hub_id}" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        factory(path=tmp_path / "nowhere")
    assert hub_id in str(e.value)


def test_registered_names():
    from capo.models import MODELS

    assert MODELS.get("sdxl") is DB.load_sdxl and MODELS.get("sd3-medium") is DB.load_sd3_medium
    assert DB.load_sdxl.fingerprint().startswith(f"hub:{DB.SDXL_HUB_ID}")


# ----------------------------------------------------------------------------- text and denoiser
def test_encode_prompts_shapes(sdxl, sd3):
    hidden, pooled = sdxl.encode_prompts(PROMPTS)
    assert hidden.shape == (2, 32, 32) and pooled.shape == (2, 8)  # concat of two 16-wide penultimate states
    ref = sdxl.pipe.text_encoder(sdxl.pipe.tokenizer(PROMPTS, padding="max_length", max_length=32, truncation=True,
                                                     return_tensors="pt").input_ids, output_hidden_states=True)
    torch.testing.assert_close(hidden[..., :16], ref.hidden_states[-2])
    hidden, pooled = sd3.encode_prompts(PROMPTS)
    assert hidden.shape == (2, 32 + 8, 32) and pooled.shape == (2, 16)  # CLIP tokens then T5 tokens
    assert hidden[:, 32:].abs().sum() > 0  # T5 is present


def test_sd3_without_t5(sd3_dir):
    m = DB.load_diffusers_dir(sd3_dir, drop_t5=True, max_sequence_length=8)
    assert m.pipe.text_encoder_3 is None and "text_encoder_3" not in m.modules()
    hidden, _ = m.encode_prompts(PROMPTS)
    assert hidden.shape == (2, 40, 32) and hidden[:, 32:].abs().sum() == 0


def test_predict_shapes(sdxl, sd3):
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = sdxl.predict(x, torch.tensor([10, 900]), *sdxl.encode_prompts(PROMPTS))
        assert out.shape == x.shape and torch.isfinite(out).all()
        out = sd3.predict(x, 500.0, *sd3.encode_prompts(PROMPTS))
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert sdxl.time_ids(2, torch.float32, "cpu").tolist() == [[16, 16, 0, 0, 16, 16]] * 2  # native 8 * 2 px


def test_schedulers(sdxl, sd3):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    assert torch.allclose(sdxl.train_scheduler().alphas_cumprod, DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod)
    s = sdxl.sampler(4)
    assert isinstance(s, DDIMScheduler) and len(s.timesteps) == 4
    s = sd3.sampler(4)
    assert isinstance(s, DPMSolverMultistepScheduler) and s.config.prediction_type == "flow_prediction"
    assert s.config.flow_shift == 3.0 and float(s.sigmas[0]) > 0.99 and float(s.sigmas[-1]) == 0.0
    assert sd3.train_scheduler().config.shift == 3.0


def test_flow_conversion_consistency(sd3):
    """v = eps - x0 (diffusers/SD3); eps_hat = x_t + (1 - sigma) v_hat (METHOD.md); the
    sampler's own x0 prediction (x_t - sigma v) is the same point."""
    from capo.method.schedules import eps_from_prediction, flow_terms

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    terms = flow_terms(t)
    sig = t.float().view(-1, 1, 1, 1)
    x_t = (1 - sig) * x0 + sig * eps
    with torch.no_grad():
        v = sd3.predict(x_t, (t * 1000).float(), *sd3.encode_prompts(PROMPTS))
    eps_hat = eps_from_prediction(v, x_t, terms.alpha, terms.sigma, "flow")
    torch.testing.assert_close(eps_hat, x_t + (1 - sig) * v)
    x0_hat = x_t - sig * v
    torch.testing.assert_close((1 - sig) * x0_hat + sig * eps_hat, x_t, atol=1e-5, rtol=1e-5)
    # the exact velocity gives back the true noise
    torch.testing.assert_close(eps_from_prediction(eps - x0, x_t, terms.alpha, terms.sigma, "flow"), eps,
                               atol=1e-5, rtol=1e-5)
    sched = sd3.sampler(4)
    sched._step_index = 1
    sigma = float(sched.sigmas[1])
    torch.testing.assert_close(sched.convert_model_output(v, sample=x_t), x_t - sigma * v)


def test_vae_round_trip_uses_shift_and_scaling(sd3, sdxl):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    img = sd3.decode_latents(z)
    assert img.shape == (2, 16, 16, 3) and img.dtype == np.uint8
    x = torch.as_tensor(img).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        mean = sd3.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(sd3.encode_images(img), (mean - 0.0609) * 1.5035)
    with torch.no_grad():
        mean = sdxl.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(sdxl.encode_images(img), mean * 0.13025)


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("which", ["sdxl", "sd3"])
def test_sample_is_batch_size_invariant(which, request):
    m = request.getfixturevalue(which)
    img2, z2 = m.sample(PROMPTS, SEEDS, steps=3, guidance=4.0, batch_size=2)
    img1, z1 = m.sample(PROMPTS, SEEDS, steps=3, guidance=4.0, batch_size=1)
    assert img2.shape == (2, 16, 16, 3) and img2.dtype == np.uint8 and z2.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z1, z2, atol=1e-4, rtol=1e-4)
    assert np.abs(img1.astype(int) - img2.astype(int)).max() <= 1
    # item 1 alone, in first position, is item 1 of the pair
    _, z_alone = m.sample(PROMPTS[1:], SEEDS[1:], steps=3, guidance=4.0)
    torch.testing.assert_close(z_alone[0], z2[1], atol=1e-4, rtol=1e-4)
    # the noise is the per-item generator's
    torch.testing.assert_close(m.initial_noise([SEEDS[1]])[0],
                               torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(SEEDS[1])))
    assert not torch.allclose(z2[0], z2[1])


def test_sd3_euler_sampler_and_sdxl_zero_uncond(sd3_dir, sdxl):
    m = DB.load_diffusers_dir(sd3_dir, sampler="euler", max_sequence_length=8)
    _, z = m.sample(PROMPTS[:1], SEEDS[:1], steps=2, guidance=1.0)
    assert z.shape == (1, 4, 8, 8) and torch.isfinite(z).all()
    hidden, pooled = sdxl.unconditional(3)
    assert hidden.shape == (3, 32, 32) and pooled.shape == (3, 8) and hidden.abs().sum() == 0
    with pytest.raises(ValueError, match="sampler"):
        DB.load_diffusers_dir(sd3_dir, sampler="heun")


def test_sampling_matches_the_diffusers_pipeline(sdxl, sd3_dir):
    """Our loop (DDIM for SDXL; flow Euler for SD3) reproduces the pipeline's own __call__
    from the same initial latents."""
    from diffusers import DDIMScheduler

    pipe = sdxl.pipe
    pipe.scheduler, saved = DDIMScheduler.from_config(pipe.scheduler.config), pipe.scheduler
    try:
        ref = pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=sdxl.initial_noise(SEEDS),
                   output_type="latent").images
    finally:
        pipe.scheduler = saved
    torch.testing.assert_close(sdxl.sample_latents(PROMPTS, SEEDS, steps=3, guidance=4.0), ref, atol=1e-4, rtol=1e-4)

    m = DB.load_diffusers_dir(sd3_dir, sampler="euler", max_sequence_length=8)
    ref = m.pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=4.0, latents=m.initial_noise(SEEDS),
                 max_sequence_length=8, output_type="latent").images
    torch.testing.assert_close(m.sample_latents(PROMPTS, SEEDS, steps=3, guidance=4.0), ref, atol=1e-4, rtol=1e-4)
