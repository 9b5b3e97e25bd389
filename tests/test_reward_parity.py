"""Rewards, number for number (issue #19): every real reward preprocesses images as its upstream
does, and builds its open_clip model with the activation its weights were trained with.

The references here are written from upstream's code, not from capo's:

* ``hf4_pixels``: transformers 4.x ``CLIPImageProcessor`` / ``BlipImageProcessor.preprocess``
  (``image_processing_clip.py``; ``image_transforms.py`` ``get_resize_output_image_size``,
  ``resize`` through ``to_pil_image`` and ``PIL.Image.resize``, ``center_crop`` with floor
  offsets, ``rescale`` in float64 cast to float32, ``normalize`` in float32) re-derived with
  numpy + PIL, and, where the installed transformers has one, its own PIL backend;
* ``openai_pixels``: OpenAI CLIP's ``_transform(n_px)`` (openai/CLIP ``clip/clip.py``, the same
  as jmhessel/clipscore's ``_transform_test``), as upstream runs it: torchvision ``Resize`` /
  ``CenterCrop`` / ``ToTensor`` / ``Normalize`` on a PIL image;
* ``hpsv2_pixels``: HPSv2's ``image_transform(224, is_train=False, resize_longest_max=True)``
  (tgxs002/HPSv2 ``hpsv2/src/open_clip/transform.py``): ``ToTensor``, ``ResizeMaxSize`` on the
  float tensor with torchvision's ``F.resize`` / ``F.pad``, ``Normalize``.

Images are textured (noise plus stripes: resampling differences show) and odd-sized. The other
reward tests (test_real_rewards, test_mps, test_vqascore_t5) score through these references.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capo.rewards import real as R
from helpers import MEAN, STD, hf4_pixels, hpsv2_pixels, openai_pixels

# published preprocessor_config.json files (their content), in the 4.x int format
CONFIGS = {
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": {  # PickScore, MPS
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(MEAN), "image_std": list(STD),
        "resample": 3, "size": 224},
    "openai/clip-vit-large-patch14-336": {  # VQAScore's vision tower
        "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(MEAN), "image_std": list(STD),
        "resample": 3, "size": 336},
    "Salesforce/blip-vqa-base": {  # vqascore-blip
        "do_normalize": True, "do_resize": True, "image_mean": list(MEAN), "image_processor_type": "BlipImageProcessor",
        "image_std": list(STD), "processor_class": "BlipProcessor", "size": 384},
}
SIZES = [(333, 517), (517, 333), (1024, 768), (64, 64), (225, 224), (100, 700)]  # (h, w); 64 px upsamples


def textured(h, w, seed=0):
    """uint8 (h, w, 3): noise plus stripes of several frequencies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(x / 3.1) * np.cos(y / 5.3) + 40 * np.sin((x + 2 * y) / 1.7)
    im = base[..., None] + rng.normal(0, 25, size=(h, w, 3))
    return np.clip(im, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- references


# ----------------------------------------------------------------------------- preprocessing
def _processor(tmp_path, cfg):
    from transformers import AutoImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    return AutoImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("hub_id", list(CONFIGS))
def test_pil_preprocessing_equals_transformers4(hub_id, tmp_path):
    """capo's ``Pixels`` of a published processor config == the 4.x PIL processor, pixel for pixel
    (float32), on odd sizes, upsampling included; the installed transformers' default processor
    is not used."""
    cfg = CONFIGS[hub_id]
    proc = _processor(tmp_path, cfg)
    pixels = R.Pixels.from_processor(proc)
    images = [textured(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    for im in images:
        got, want = pixels([im])[0].numpy(), hf4_pixels(im, cfg)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    try:  # transformers 5's own PIL backend, where it has one, agrees too
        from transformers import AutoImageProcessor

        pil = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    except (TypeError, ValueError):
        pil = None
    if pil is not None and getattr(pil, "backend", None) == "pil":
        from PIL import Image

        ref = pil(images=[Image.fromarray(im) for im in images[:1]], return_tensors="pt")["pixel_values"]
        np.testing.assert_allclose(pixels(images[:1]).numpy(), ref.numpy(), rtol=0, atol=1e-6)


def test_pil_preprocessing_differs_from_a_torchvision_resize(tmp_path):
    """What the fix is for: the same config through a torchvision resize (transformers 5's default
    backend) moves pixels by levels, PIL's does not (skipped where the default is PIL)."""
    cfg = CONFIGS["laion/CLIP-ViT-H-14-laion2B-s32B-b79K"]
    proc = _processor(tmp_path, cfg)
    if getattr(proc, "backend", "pil") == "pil":
        pytest.skip("the installed transformers' default image processor already resizes with PIL")
    from PIL import Image

    im = textured(333, 517)
    fast = proc(images=[Image.fromarray(im)], return_tensors="pt")["pixel_values"][0].numpy()
    levels = np.abs(fast - hf4_pixels(im, cfg)) * np.array(STD, np.float32)[:, None, None] * 255
    assert levels.max() > 0.5  # at least one pixel a level apart
    assert np.abs(R.Pixels.from_processor(proc)([im])[0].numpy() - hf4_pixels(im, cfg)).max() == 0


@pytest.mark.parametrize("h,w", SIZES)
def test_openai_preprocessing_equals_clip_transform(h, w):
    """``Pixels.openai`` == OpenAI's ``_transform`` (aesthetic predictor, CLIPScore): torchvision's
    rounded crop offsets, ``ToTensor`` in float32."""
    im = textured(h, w, seed=h)
    got = R.Pixels.openai(224)([im])[0]
    want = openai_pixels(im, 224)
    assert got.shape == want.shape == (3, 224, 224)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_crop_rounding_matters():
    """333 x 517 resizes to 224 x 347: floor offset 61, rounded 62; the two crops differ."""
    im = textured(517, 333)
    floor = R.Pixels(224, (224, 224), crop_rounding="floor")([im])
    assert not torch.equal(floor, R.Pixels.openai(224)([im]))
    assert R.Pixels(224).output_size(517, 333) == (347, 224)


@pytest.mark.parametrize("h,w", SIZES + [(224, 224), (224, 100)])
@pytest.mark.parametrize("antialias", [True, False])
def test_hps_preprocessing_equals_hpsv2(h, w, antialias):
    """``hps_pixels`` == HPSv2's ToTensor -> ResizeMaxSize (float tensor) -> pad 0 -> Normalize;
    a longest side already 224 is left alone (no pad: upstream's ``scale == 1`` branch)."""
    im = textured(h, w, seed=w)
    got = R.hps_pixels([im], 224, antialias=antialias)[0]
    want = hpsv2_pixels(im, 224, antialias=antialias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_hps_preprocessing_is_not_open_clip_longest_mode():
    """The old route (open_clip ``resize_mode="longest"``: uint8 PIL resize first) is levels apart
    on a textured image (3.5 here); HPSv2's resizes the float tensor. Without antialiasing (HPSv2
    under torchvision < 0.17) the tensor resize is ~100 levels away from both."""
    import open_clip
    from PIL import Image

    im = textured(333, 517)
    old = open_clip.image_transform(224, is_train=False, resize_mode="longest", fill_color=0, mean=MEAN, std=STD)
    levels = (old(Image.fromarray(im)) - hpsv2_pixels(im)).abs() * torch.tensor(STD)[:, None, None] * 255
    assert levels.max() > 1
    assert (hpsv2_pixels(im, antialias=False) - hpsv2_pixels(im)).abs().max() * 255 * min(STD) > 20


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("name", list(R.OPENCLIP_MODELS))
def test_open_clip_models_have_their_weights_activation(name):
    """Every open_clip model a reward builds, built by the reward's own code (on the meta device:
    the architecture without weights), uses the activation its pretrained tag was trained with."""
    from capo import openclip

    arch, tag = R.OPENCLIP_MODELS[name]
    builders = {"hps": R.hps_model}
    with torch.device("meta"):
        model, _ = builders[name](arch, device="meta")
    want = "quick_gelu" if openclip.trained_with_quick_gelu(arch, tag) else "gelu"
    assert openclip.activation_of(model) == want
    if name == "hps":  # ViT-H-14 laion2B-s32B-b79K: trained with plain GELU
        assert want == "gelu"


def test_autocast_dtype():
    assert R.autocast_dtype("auto", "cpu", "bfloat16") is None
    assert R.autocast_dtype("auto", "cuda", "bfloat16") is torch.bfloat16
    assert R.autocast_dtype("auto", "cuda", "float16") is torch.float16
    assert R.autocast_dtype(None, "cuda", "bfloat16") is None
    assert R.autocast_dtype("bfloat16", "cpu", None) is torch.bfloat16
    with pytest.raises(ValueError, match="autocast"):
        R.autocast_dtype("int8", "cpu", None)
    assert R.OPENAI_CLIP_MEAN == MEAN and R.OPENAI_CLIP_STD == STD
