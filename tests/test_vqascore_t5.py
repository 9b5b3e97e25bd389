"""VQAScore over CLIP-FlanT5 (capo.rewards.vqascore) on a tiny random T5 + CLIP vision tower.

The checkpoint is written in the upstream layout (``shared``/``encoder``/``decoder``/``lm_head``,
``vision_tower.vision_tower.vision_model.*``, ``mm_projector.{0,2}``, a T5 config with the
``mm_*`` fields), with a word-level tokenizer that ends every chunk with ``</s>`` as T5's does.
The score is checked against upstream's route computed here another way: input ids with the
image placeholder -200, embedded piecewise, run through T5's own loss (``labels=``), one item at
a time, with the prompt string spelled out by hand, on pixels from the 4.x PIL
``CLIPImageProcessor`` re-derived in test_reward_parity.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capo.rewards import REWARDS, RewardLoadError, load_reward
from capo.rewards import vqascore as V
from helpers import REWARD_PROMPTS as PROMPTS
from helpers import check_common, clip_cfg, hf4_batch, make_images, tiny_clip_t5_dir


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return tiny_clip_t5_dir(tmp_path_factory.mktemp("clip-t5"), vocab_extra=5)


def make_wide_images():
    im = make_images(n=4, size=40)
    return np.concatenate([im, np.zeros((4, 40, 12, 3), np.uint8) + 200], axis=2)  # 40 x 52: padded to square


def upstream_score(r, image, prompt):
    """Upstream's route: ids with -200 for the image, embedded piece by piece, T5's own loss."""
    from PIL import Image

    text = (V.SYSTEM + " USER: " + "<image>" + "\n" + V.VQA_QUESTION.format(prompt) + " ASSISTANT: ")
    chunks = [r.tokenizer(c).input_ids for c in text.split("<image>")]
    ids = chunks[0] + [-200] + chunks[1]
    m = r.model
    mean = tuple(int(x * 255) for x in r.image_processor.image_mean)
    im = Image.fromarray(image)
    side = max(im.size)
    sq = Image.new("RGB", (side, side), mean)
    sq.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    px = hf4_batch([np.asarray(sq)], clip_cfg(32))  # the 4.x CLIPImageProcessor (PIL)
    with torch.no_grad():
        hs = m.vision_tower.vision_tower(pixel_values=px, output_hidden_states=True).hidden_states
        feats = m.mm_projector(hs[-2][:, 1:])[0]
        k = ids.index(-200)
        x = torch.cat([m.shared(torch.tensor(ids[:k])), feats, m.shared(torch.tensor(ids[k + 1:]))])[None]
        labels = torch.tensor([r.tokenizer("Yes").input_ids])
        logits = m(inputs_embeds=x, labels=labels).logits[..., :len(r.tokenizer)]
        loss = torch.nn.functional.cross_entropy(logits[0], labels[0])
    return float(torch.exp(-loss))


def test_clip_flant5_score_matches_upstream_route(t5_dir):
    images = make_wide_images()
    r = load_reward("vqascore", path=t5_dir, device="cpu", batch_size=3)
    assert r.name == "vqascore" and r.bt_transform == "logit"
    assert r.labels == [r.tokenizer.convert_tokens_to_ids("Yes"), 1]
    s = check_common(r, images)
    assert np.all((s > 0) & (s < 1))
    for i in range(3):
        np.testing.assert_allclose(s[i], upstream_score(r, images[i], PROMPTS[i]), rtol=1e-4)
    # the extra config-vocabulary logits (upstream resizes them away) change the number
    with torch.no_grad():
        full = r.model(inputs_embeds=r._embed(PROMPTS[:1], images[:1])[0], labels=torch.tensor([r.labels])).loss
    assert abs(float(torch.exp(-full)) - s[0]) > 1e-6


def test_clip_flant5_tower_saved_apart_is_loaded_from_mm_vision_tower(tmp_path, monkeypatch):
    """A checkpoint without the tower's weights takes them from ``mm_vision_tower``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    d = tiny_clip_t5_dir(tmp_path / "ck", with_tower=False)
    tower = tmp_path / "tower"
    torch.manual_seed(7)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tower)
    cfg = json.loads((d / "config.json").read_text())
    cfg["mm_vision_tower"] = str(tower)
    del cfg["vision_config"]  # the architecture comes from the tower's own config
    (d / "config.json").write_text(json.dumps(cfg))
    r = V.vqascore_t5(path=d, device="cpu")
    want = CLIPVisionModel.from_pretrained(tower).state_dict()
    got = r.model.vision_tower.vision_tower.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    images = make_images()
    assert np.isfinite(r(images, PROMPTS)).all()


def test_clip_flant5_errors(tmp_path):
    from huggingface_hub import try_to_load_from_cache

    assert {"vqascore", "vqascore-xl", "vqascore-blip"} <= set(REWARDS.names())
    for name, hub in (("vqascore", "zhiqiulin/clip-flant5-xxl"), ("vqascore-xl", "zhiqiulin/clip-flant5-xl")):
        if not isinstance(try_to_load_from_cache(hub, "config.json"), str):
            with pytest.raises(RewardLoadError) as e:
                load_reward(name, local_files_only=True)
            assert hub in str(e.value) and "hf download" in str(e.value)
    with pytest.raises(ValueError, match="size must be one of"):
        V.vqascore_t5(size="small")
    # a plain T5 (no projector) is not a CLIP-FlanT5 checkpoint
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
                               ).save_pretrained(tmp_path / "t5")
    cfg = json.loads((tmp_path / "t5" / "config.json").read_text())
    cfg["vision_config"] = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    (tmp_path / "t5" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RewardLoadError, match="not a CLIP-FlanT5 checkpoint"):
        V.vqascore_t5(path=tmp_path / "t5", local_files_only=True)


def test_clip_flant5_precision(t5_dir):
    """Default on the CPU: float32 weights, no autocast; ``autocast="bfloat16"`` runs the model under
    bfloat16 autocast (upstream's ``@torch.autocast('cuda', torch.bfloat16)``) and ``dtype=`` casts
    the weights (upstream's ``model.to(dtype=torch.bfloat16)``): other numbers, close ones."""
    images, prompts = make_wide_images()[:3], PROMPTS[:3]
    r = V.vqascore_t5(path=t5_dir, device="cpu")
    assert r.autocast is None and r.model.dtype == torch.float32
    rb = V.vqascore_t5(path=t5_dir, device="cpu", autocast="bfloat16")
    assert rb.autocast is torch.bfloat16 and rb.model.dtype == torch.float32
    seen = []
    rb.model.mm_projector[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    s, sb = r(images, prompts), rb(images, prompts)
    assert seen and set(seen) == {torch.bfloat16}
    assert not np.array_equal(s, sb)
    np.testing.assert_allclose(sb, s, rtol=0.05)
    ru = V.vqascore_t5(path=t5_dir, device="cpu", dtype=torch.bfloat16, autocast="bfloat16")  # upstream's recipe
    assert ru.model.dtype == torch.bfloat16
    np.testing.assert_allclose(ru(images, prompts), s, rtol=0.05)


def test_clip_flant5_untied_head_as_released(tmp_path):
    """FlanT5 (T5 v1.1) has its own ``lm_head`` and no decoder-output rescaling: its config says
    ``tie_word_embeddings: false``. transformers 5 ties T5 heads by default and reads the flag to
    decide the rescaling; capo's model keeps the checkpoint's head and scales nothing."""
    from safetensors.torch import load_file, save_file

    d = tiny_clip_t5_dir(tmp_path / "ck", vocab_extra=5)
    sd = load_file(str(d / "model.safetensors"))
    torch.manual_seed(3)
    head = torch.randn_like(sd["shared.weight"])
    sd["lm_head.weight"] = head
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("scale_decoder_outputs", None)
    cfg["tie_word_embeddings"] = False  # as zhiqiulin/clip-flant5-* and google/flan-t5-* ship it
    (d / "config.json").write_text(json.dumps(cfg))
    r = V.vqascore_t5(path=d, device="cpu")
    m = r.model
    assert torch.equal(m.lm_head.weight, head) and not torch.equal(m.lm_head.weight, m.shared.weight)
    images = make_wide_images()[:2]
    x, mask = r._embed(PROMPTS[:2], images)
    labels = torch.tensor([r.labels] * 2)
    with torch.no_grad():
        enc = m.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        dec_in = torch.cat([torch.zeros(2, 1, dtype=torch.long), labels[:, :-1]], 1)  # pad start, shift right
        hid = m.decoder(input_ids=dec_in, encoder_hidden_states=enc, encoder_attention_mask=mask).last_hidden_state
        logp = torch.log_softmax((hid @ head.T)[..., :len(r.tokenizer)], -1)  # unscaled, the file's head
    want = logp.gather(-1, labels[..., None])[..., 0].mean(-1).exp().double().numpy()
    np.testing.assert_allclose(r(images, PROMPTS[:2]), want, rtol=1e-5)


def test_clip_flant5_other_projector_is_refused(t5_dir, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(t5_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["mm_projector_type"] = "linear"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RewardLoadError, match="mm_projector_type='linear'"):
        V.vqascore_t5(path=d, device="cpu")
