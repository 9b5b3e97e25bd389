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

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
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
def _int_size(cfg):
    """4.x ``get_size_dict``: an int ``size`` is the shortest edge for CLIP
    (``default_to_square=False``), a square for BLIP; an int ``crop_size`` a square."""
    blip = cfg.get("image_processor_type", "").startswith("Blip")
    s = cfg["size"]
    if isinstance(s, int):
        s = {"height": s, "width": s} if blip else {"shortest_edge": s}
    c = cfg.get("crop_size") if cfg.get("do_center_crop", not blip) else None
    if isinstance(c, int):
        c = {"height": c, "width": c}
    return s, c


def hf4_pixels(image: np.ndarray, cfg: dict) -> np.ndarray:
    """transformers 4.x ``preprocess`` of one uint8 image -> float32 (3, h, w)."""
    from PIL import Image

    arr = np.array(Image.fromarray(image).convert("RGB"))  # convert_to_rgb, to_numpy_array (channels last)
    size, crop = _int_size(cfg)
    height, width = arr.shape[:2]
    if "shortest_edge" in size:  # get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        out = (new_long, new_short) if width <= height else (new_short, new_long)
    else:
        out = (size["height"], size["width"])
    # resize: to_pil_image (uint8: no rescale), PIL resize to (width, height), back to numpy
    arr = np.array(Image.fromarray(arr).resize((out[1], out[0]), resample=cfg.get("resample", 3)))
    if crop is not None:  # center_crop: top = (orig_height - crop_height) // 2
        top, left = (arr.shape[0] - crop["height"]) // 2, (arr.shape[1] - crop["width"]) // 2
        arr = arr[top:top + crop["height"], left:left + crop["width"]]
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    mean, std = np.array(cfg["image_mean"], dtype=x.dtype), np.array(cfg["image_std"], dtype=x.dtype)
    x = (x - mean) / std  # normalize, channels last
    return x.transpose(2, 0, 1)


def hf4_batch(images, cfg) -> torch.Tensor:
    return torch.from_numpy(np.stack([hf4_pixels(np.asarray(im), cfg) for im in images]))


def clip_cfg(n_px: int) -> dict:
    """The 4.x config a tiny test CLIP's processor is saved with (shortest edge and crop n_px)."""
    return {"size": {"shortest_edge": n_px}, "crop_size": {"height": n_px, "width": n_px}, "do_center_crop": True,
            "resample": 3, "image_mean": list(MEAN), "image_std": list(STD)}


def openai_pixels(image: np.ndarray, n_px: int) -> torch.Tensor:
    """OpenAI CLIP's ``_transform(n_px)`` as upstream runs it (torchvision on a PIL image)."""
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    t = Compose([Resize(n_px, interpolation=InterpolationMode.BICUBIC), CenterCrop(n_px),
                 lambda im: im.convert("RGB"), ToTensor(), Normalize(MEAN, STD)])
    return t(Image.fromarray(image))


def openai_batch(images, n_px) -> torch.Tensor:
    return torch.stack([openai_pixels(np.asarray(im), n_px) for im in images])


def hpsv2_pixels(image: np.ndarray, size: int = 224, antialias: bool = True) -> torch.Tensor:
    """HPSv2's validation transform: ToTensor -> ResizeMaxSize(size, BICUBIC, fill=0) on the float
    tensor -> Normalize (``ResizeMaxSize.forward`` spelled out with torchvision's functionals)."""
    import torchvision.transforms.functional as F
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    img = F.to_tensor(Image.fromarray(image).convert("RGB"))
    height, width = img.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        img = F.resize(img, list(new_size), InterpolationMode.BICUBIC, antialias=antialias)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        img = F.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(img, MEAN, STD)


def hpsv2_batch(images, size=224, antialias=True) -> torch.Tensor:
    return torch.stack([hpsv2_pixels(np.asarray(im), size, antialias) for im in images])


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
