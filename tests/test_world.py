"""The shapes world as shipped and as rebuilt: artifact integrity, loading by name, reward
models better than chance against the hidden truth, and a deterministic miniature rebuild."""

import json

import numpy as np
import pytest

from capo.worlds.shapes import build, zoo

SHIPPED = (zoo.ARTIFACTS / "checksums.json").is_file()


def test_world_is_shipped_and_intact():
    assert SHIPPED, f"{zoo.ARTIFACTS} holds no built world: run `capo world build` and commit it"
    assert build.verify(zoo.ARTIFACTS) == []
    size_mb = sum(p.stat().st_size for p in zoo.ARTIFACTS.rglob("*") if p.is_file()) / 2**20
    assert size_mb < 30
    m = json.loads((zoo.ARTIFACTS / "manifest.json").read_text())
    assert m["complete"] and m["stage"] == "world-build"
    for kind in ("sdxl-like", "sd3-like"):
        q = m["figures"][kind]["quality"]
        assert 0.0 < q["geneval_overall"] < 1.0 and set(q["geneval_tags"]) >= {"single_object", "counting", "position"}


def test_verify_detects_a_changed_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"one")
    (tmp_path / build.CHECKSUMS).write_text(json.dumps(build.checksums(tmp_path)))
    assert build.verify(tmp_path) == []
    (tmp_path / "a.bin").write_bytes(b"two")
    (tmp_path / "b.bin").write_bytes(b"new")
    bad = build.verify(tmp_path)
    assert any(b.startswith("a.bin: expected") for b in bad) and "b.bin: not in checksums.json" in bad


@pytest.mark.skipif(not SHIPPED, reason="no shipped world")
def test_base_models_load_and_sample_by_name():
    from capo.models import load_model

    for name in ("shapes-sdxl", "shapes-sd3"):
        m = load_model(name)
        images, latents = m.sample(["a photo of a red circle", "a photo of two blue squares"], [1, 2])
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and latents.shape == (2, 4, 8, 8)
        assert images.std() > 5  # not a blank canvas


@pytest.mark.skipif(not SHIPPED, reason="no shipped world")
def test_reward_models_beat_chance_against_the_hidden_truth():
    """On held-out prompts, pairs of rendered/perturbed images: each learned reward orders the
    pair like the hidden utility more often than a coin does (binomial, 800 pairs)."""
    from capo.rewards import load_reward
    from capo.worlds.shapes import truth
    from capo.worlds.shapes.grammar import prompt_sets
    from capo.worlds.shapes.rewards import pairwise_agreement, render_sampler

    rng = np.random.default_rng(123)
    held = [r for k, v in prompt_sets(seed=0, distinct=True).items() if k != "train" for r in v]
    records = [held[i] for i in rng.integers(0, len(held), 800)]
    sample = render_sampler()
    a, b = sample(records, rng), sample(records, rng)
    ua, ub = truth.utility_batch(records, a), truth.utility_batch(records, b)
    prompts = [r["prompt"] for r in records]
    for name in ("shapes-pref", "shapes-vqa", "shapes-aesthetic"):
        rw = load_reward(name)
        agree = pairwise_agreement(rw(a, prompts), rw(b, prompts), ua, ub)
        assert 0.545 < agree < 0.99, (name, agree)  # one-sided binomial p < 0.01 at n = 800; imperfect on purpose
    gold = load_reward("shapes-gold")
    assert pairwise_agreement(gold(a, prompts), gold(b, prompts), ua, ub) == 1.0


@pytest.mark.slow
def test_miniature_world_rebuilds_deterministically(tmp_path):
    cfg = dict(size="tiny", vae_steps=4, vae_minutes=1, base_steps=4, base_minutes=1, reward_minutes=0.2,
               eval_images=1, reward_base_fraction=0.0, half=False, quiet=True)
    a = build.run(build.WorldConfig(out=str(tmp_path / "a"), **cfg))
    b = build.run(build.WorldConfig(out=str(tmp_path / "b"), **cfg))
    ca, cb = (json.loads((tmp_path / x / "checksums.json").read_text()) for x in "ab")
    assert ca.keys() == cb.keys()
    weights = [k for k in ca if k.endswith(".safetensors")]  # other files also record wall-clock timings
    assert len(weights) >= 9 and all(ca[k] == cb[k] for k in weights)
    qa, qb = a["figures"]["sdxl-like"]["quality"], b["figures"]["sdxl-like"]["quality"]
    assert qa["geneval_tags"] == qb["geneval_tags"]  # same weights, same seeds: the same verdicts
    from capo.rewards import load_reward
    from capo.worlds.shapes.pipeline import ShapesPipeline

    pipe = ShapesPipeline.from_pretrained(tmp_path / "a" / "sd3-like")
    assert pipe.sample(["a photo of a circle"], [0])[0].shape == (1, 32, 32, 3)
    r = load_reward("shapes-pref", path=str(tmp_path / "a" / "rewards" / "shapes-pref"))
    assert np.isfinite(r(pipe.sample(["a photo of a circle"], [0])[0], ["a photo of a circle"])).all()
    assert build.run(build.WorldConfig(out=str(tmp_path / "a"), **cfg))["complete"]  # reused, not rebuilt


def test_render_pool_is_independent_of_workers():
    from capo.worlds.shapes import pretrain

    pool = pretrain.render_pool.__wrapped__  # uncached
    p1, im1 = pool(3, 40, 1, 16)
    p2, im2 = pool(3, 40, 2, 16)  # two processes render the three chunks
    assert im1.shape == (40, 32, 32, 3) and len(p1) == 40
    assert p1 == p2 and np.array_equal(im1, im2)
    assert not np.array_equal(im1, pool(4, 40, 1, 16)[1])  # another seed, other scenes


@pytest.mark.slow
def test_two_stage_build_keeps_init_rewards_and_sets_sampler_defaults(tmp_path):
    from capo.worlds.shapes.pipeline import ShapesPipeline

    cfg = dict(size="tiny", vae_steps=3, base_steps=3, eval_images=1, reward_minutes=0.2, reward_base_fraction=0.0,
               half=False, quiet=True)
    build.run(build.WorldConfig(out=str(tmp_path / "a"), pool=64, **cfg))
    b = build.run(build.WorldConfig(out=str(tmp_path / "b"), **(cfg | dict(
        init=str(tmp_path / "a"), base_steps=0, rewards=False, guidance_sd3=2.0, shift_sd3=2.5))))
    ca, cb = (json.loads((tmp_path / x / "checksums.json").read_text()) for x in "ab")
    kept = [k for k in ca if k.startswith("rewards/") or k.endswith(".safetensors")]
    assert len(kept) >= 12 and all(cb[k] == ca[k] for k in kept)  # rewards copied, weights untouched
    assert build.verify(tmp_path / "b") == []
    pipe = ShapesPipeline.from_pretrained(tmp_path / "b" / "sd3-like")
    assert pipe.default_guidance == 2.0 and pipe.scheduler_config["shift"] == 2.5
    assert ShapesPipeline.from_pretrained(tmp_path / "a" / "sd3-like").scheduler_config["shift"] == build.WorldConfig().shift_sd3
    assert b["figures"]["init"]["config"]["pool"] == 64  # the warm start's recipe is kept
    assert b["figures"]["rewards"] == json.loads((tmp_path / "a" / "rewards" / "figures.json").read_text())
    # train= continues only the named base model; the other one is kept byte for byte
    build.run(build.WorldConfig(out=str(tmp_path / "c"), **(cfg | dict(init=str(tmp_path / "a"), rewards=False,
                                                                      train="sd3-like", base_lr_schedule="cosine"))))
    cc = json.loads((tmp_path / "c" / "checksums.json").read_text())
    sdxl = [k for k in ca if k.startswith("sdxl-like/") and k.endswith(".safetensors")]
    sd3 = [k for k in ca if k.startswith("sd3-like/transformer/") and k.endswith(".safetensors")]
    assert sdxl and sd3 and all(cc[k] == ca[k] for k in sdxl) and all(cc[k] != ca[k] for k in sd3)


def test_build_refuses_an_unknown_base_model_to_train_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"train = 'sdxl-like,sd3': must name sdxl-like and/or sd3-like"):
        build.run(build.WorldConfig(out=str(tmp_path / "w"), size="tiny", train="sdxl-like,sd3", quiet=True))
    assert not (tmp_path / "w").exists()
