"""Real reward models (capo.rewards.real) on tiny random models of the same classes.

Weights cannot be downloaded here, so each reward is built from a tiny random-init model
of the real class (transformers ``CLIPModel`` / ``BlipForQuestionAnswering``, an OpenCLIP
``CLIP``) with a processor built offline (an in-memory byte-level CLIP vocabulary, a small
WordPiece vocabulary), saved to a temporary directory and loaded by the factory through
``path=``, the route a user's local copy takes. Scores are checked against the formula
computed by hand from the model's own forward pass, on pixels from the upstream preprocessing
written independently in test_reward_parity (transformers 4.x PIL processors, OpenAI CLIP's
transform, HPSv2's transform).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capo.rewards import REWARDS, RewardLoadError, load_reward
from capo.rewards import real as R
from helpers import REWARD_PROMPTS as PROMPTS
from helpers import (MEAN, STD, check_common, clip_cfg, hf4_batch, hpsv2_batch, make_images, openai_batch, tiny_blip_dir,
                     tiny_clip_dir)



# ----------------------------------------------------------------------------- builders


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def images():
    return make_images(width=57)  # 40 x 57: resized to 32 x 45, cropped at an odd offset


def clip_forward_cosine(model, proc, px, prompts):
    """cos(image, text) from CLIPModel.forward's logits (= logit_scale * cos) of pixels ``px``."""
    tok = proc.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok.input_ids, attention_mask=tok.attention_mask, pixel_values=px)
        return (out.logits_per_image.diagonal() / model.logit_scale.exp()).double().numpy(), out


# ----------------------------------------------------------------------------- CLIP family
def test_pickscore(clip_dir, images):
    r = load_reward("pickscore", path=clip_dir, device="cpu", batch_size=3)
    assert r.name == "pickscore" and r.bt_transform == "identity"
    s = check_common(r, images)
    cos, _ = clip_forward_cosine(r.model, r.processor, hf4_batch(images, clip_cfg(32)), PROMPTS)  # 4.x processor
    np.testing.assert_allclose(s, r.logit_scale * cos, rtol=1e-5, atol=1e-5)


def test_clipscore(clip_dir, images):
    r = R.clipscore(path=clip_dir, device="cpu", batch_size=3)
    texts = [R.CLIPSCORE_PREFIX + p for p in PROMPTS]
    cos, _ = clip_forward_cosine(r.model, r.processor, openai_batch(images, 32), texts)  # clipscore.py's transform
    with torch.no_grad():
        if cos[0] < 0:  # a random tiny CLIP: flip the text projection so that some cosines are positive
            r.model.text_projection.weight.neg_()
            cos = -cos
    s = check_common(r, images)
    np.testing.assert_allclose(s, 2.5 * np.maximum(cos, 0), rtol=1e-5, atol=1e-6)
    assert r.bt_transform == f"temperature:{2.5 / float(r.model.logit_scale.detach().exp()):.6g}"  # 0.025 for s=100
    with torch.no_grad():  # the clamp: negated cosines score 0
        r.model.text_projection.weight.neg_()
        assert np.all(r(images, PROMPTS)[cos > 0] == 0)


def test_aesthetic(clip_dir, images, tmp_path):
    torch.manual_seed(1)
    mlp = R.aesthetic_mlp(8)
    assert [k for k in mlp.state_dict()][::2] == [f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
    torch.save(mlp.state_dict(), tmp_path / R.AESTHETIC_FILE)
    r = load_reward("aesthetic", path=tmp_path, clip_path=clip_dir, device="cpu", batch_size=3)
    assert r.bt_transform == "temperature:1"
    s = check_common(r, images)
    _, out = clip_forward_cosine(r.model, r.processor, openai_batch(images, 32), PROMPTS)  # clip.load's preprocess
    x = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)  # L2-normalised CLIP image embedding
    W = [mlp.layers[i] for i in (0, 2, 4, 6, 7)]
    with torch.no_grad():
        for lin in W:  # no activations, dropout off at inference
            x = x @ lin.weight.T + lin.bias
    np.testing.assert_allclose(s, x.squeeze(-1).double().numpy(), rtol=1e-5, atol=1e-6)
    assert R.aesthetic(path=tmp_path, clip_path=clip_dir, temperature=0.5, device="cpu").bt_transform == "temperature:0.5"


# ----------------------------------------------------------------------------- HPS (OpenCLIP)
def test_hps(tmp_path, images):
    import open_clip

    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 8,
                                          "head_width": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "capo-tiny-hps.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "capo-tiny-hps.json")
    torch.manual_seed(0)
    model = open_clip.create_model("capo-tiny-hps", pretrained=None)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))  # HPS clamps its logit scale at ln 100
    torch.save({"state_dict": model.state_dict()}, tmp_path / R.HPS_FILE)
    r = R.hps(path=tmp_path, arch="capo-tiny-hps", device="cpu", batch_size=3)
    assert r.bt_transform == "temperature:0.01"
    assert r.autocast is None  # "auto": float16 autocast on CUDA only
    s = check_common(r, images)
    px = hpsv2_batch(images, 32)  # HPSv2's transform
    with torch.no_grad():
        out = model(px, open_clip.get_tokenizer("capo-tiny-hps")(PROMPTS))
    np.testing.assert_allclose(s, (out[0] * out[1]).sum(-1).double().numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(s) <= 1 + 1e-6)
    # autocast (upstream: torch.cuda.amp.autocast() on CUDA) runs the model in half precision
    rb = R.hps(path=tmp_path, arch="capo-tiny-hps", device="cpu", autocast="bfloat16")
    seen = []
    rb.model.visual.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    sb = rb(images, PROMPTS)
    assert seen == [torch.bfloat16] and not np.array_equal(sb, s)
    np.testing.assert_allclose(sb, s, atol=0.05)


# ----------------------------------------------------------------------------- VQAScore (BLIP)
def test_vqascore(tmp_path, images):
    tiny_blip_dir(tmp_path)
    r = load_reward("vqascore-blip", path=tmp_path, device="cpu", batch_size=3)
    assert r.bt_transform == "logit"
    s = check_common(r, images)  # batch-independent although transformers 5's BLIP cross-attention ignores its mask
    assert np.all((s > 0) & (s < 1))
    assert abs(r(images[1:2], PROMPTS[:1])[0] - s[0]) > 1e-4  # the image matters (a random BLIP can ignore it)
    # by hand: exp(-HF's own mean answer loss) with labels [BOS] yes [SEP], one item at a time, on
    # the 4.x BlipImageProcessor's pixels (a 32 x 32 bicubic PIL resize, no crop)
    tok, tc = r.processor.tokenizer, r.model.config.text_config
    labels = torch.tensor([[tc.bos_token_id, tok.convert_tokens_to_ids("yes"), tc.sep_token_id]])
    blip_cfg = {"image_processor_type": "BlipImageProcessor", "size": {"height": 32, "width": 32}, "resample": 3,
                "image_mean": list(MEAN), "image_std": list(STD)}
    for i in range(3):
        enc = tok(R.VQA_QUESTION.format(PROMPTS[i]), return_tensors="pt")
        with torch.no_grad():
            loss = r.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           pixel_values=hf4_batch(images[i:i + 1], blip_cfg), labels=labels).loss
        np.testing.assert_allclose(s[i], float(torch.exp(-loss)), rtol=1e-4)


# ----------------------------------------------------------------------------- missing weights
@pytest.mark.parametrize("name,hub_id", [("pickscore", R.PICKSCORE_MODEL), ("clipscore", R.CLIPSCORE_MODEL),
                                         ("vqascore-blip", R.VQA_MODEL), ("hps", R.HPS_REPO)])
def test_missing_weights_name_the_source(name, hub_id):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        pytest.skip(f"{hub_id} is cached here")
    with pytest.raises(RewardLoadError) as e:
        load_reward(name, local_files_only=True, device="cpu")
    assert hub_id in str(e.value)


def test_missing_aesthetic_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path))
    with pytest.raises(RewardLoadError) as e:
        R.aesthetic(local_files_only=True)
    assert R.AESTHETIC_URL in str(e.value)
    with pytest.raises(RewardLoadError, match="no predictor weights"):
        R.aesthetic(path=tmp_path / "missing.pth")


def test_imagereward_error():
    try:
        import ImageReward  # noqa: F401
    except ImportError:
        with pytest.raises(RewardLoadError, match="pip install image-reward"):
            load_reward("imagereward")
    assert {"pickscore", "hps", "imagereward", "aesthetic", "clipscore", "vqascore", "vqascore-blip", "mps"} <= set(REWARDS.names())


def test_input_validation(clip_dir, images):
    r = R.pickscore(path=clip_dir, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        r(images.astype(np.float32), PROMPTS)
    with pytest.raises(ValueError, match="prompts"):
        r(images, PROMPTS[:2])
