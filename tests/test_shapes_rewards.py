"""Shapes-world reward models: prompt parsing and hard negatives, tiny learned models
(build, persistence, batching, training steps), the gold reward, and a miniature
``train_rewards`` run end to end."""

import json

import numpy as np
import pytest
import torch

from capo.rewards import REWARDS, RewardLoadError, load_reward
from capo.worlds.shapes import grammar, truth
from capo.worlds.shapes import rewards as R
from capo.worlds.shapes.render import render_batch

PROMPTS = ["a photo of a red circle", "a photo of three squares", "a photo of a circle left of a triangle",
           "the large red diamond is on top of the striped square"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return render_batch([grammar.sample_scene(R.parse_prompt(p), rng) for p in PROMPTS])


@pytest.fixture(scope="module")
def tiny_models():
    out = {}
    for j, name in enumerate(R.LEARNED):
        torch.manual_seed(j)
        out[name] = R.CLASSES[name].build("tiny")
    return out


# ----------------------------------------------------------------------------- prompts
def test_parse_prompt_inverts_every_grammar_phrasing():
    rng = np.random.default_rng(0)
    records = [r for tag in grammar.TAGS if tag != "complex" for r in grammar.all_records(tag)]
    records += [grammar.sample_record("complex", rng) for _ in range(300)]
    for r in records:
        parsed = R.parse_prompt(r["prompt"])
        assert parsed["prompt"] == r["prompt"]
        assert grammar.content_key(parsed) == grammar.content_key(r), r["prompt"]
    for _ in range(300):
        caption = grammar.describe(grammar.random_scene(rng), rng)
        assert R.phrase_text(R.parse_phrase(caption)) == caption


def test_parse_prompt_rejects_foreign_text():
    for bad in ("a photo of a dog", "three circle", "a circle on the middle of a square", ""):
        with pytest.raises(ValueError, match="cannot parse"):
            R.parse_prompt(bad)


def test_hard_negatives():
    rng = np.random.default_rng(0)
    phrase = R.parse_phrase("a photo of a red circle and a blue square")
    swapped = R.perturb_phrase(phrase, "swap_attribute", rng)
    assert R.phrase_text(swapped) == "a photo of a blue circle and a red square"
    flipped = R.perturb_phrase(R.parse_phrase("a circle on the left of a square"), "flip_relation", rng)
    assert R.phrase_text(flipped) == "a circle on the right of a square"
    assert R.perturb_phrase(phrase, "flip_relation", rng) is None  # no relation to flip
    counted = R.perturb_phrase(R.parse_phrase("a photo of three squares"), "change_count", rng)
    assert counted["nps"][0]["count"] != 3
    # every perturbed prompt parses back and differs from the original
    for r in grammar.prompt_sets(0)["train"][:300]:
        out = R.perturb_prompt(r, rng)
        if out is None:
            continue
        neg, kind = out
        assert kind in R.PERTURBATIONS and neg["prompt"] != r["prompt"]
        assert R.parse_prompt(neg["prompt"]) == neg
        assert len(grammar.tokenize_words(neg["prompt"])) <= grammar.MAX_PROMPT_WORDS


def test_render_sampler_is_deterministic_and_imperfect():
    records = grammar.prompt_sets(0)["train"][:40]
    sample = R.render_sampler(p_wrong=0.5, p_degrade=0.5)
    a = sample(records, np.random.default_rng(3))
    b = sample(records, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (40, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    clean = render_batch([grammar.sample_scene(r, np.random.default_rng(3)) for r in records])
    align = np.array([truth.alignment(r, im) for r, im in zip(records, a)])
    assert align.min() < 0.8 and align.max() > 0.9  # some images miss their prompt, some match
    assert not np.array_equal(a, clean)


# ----------------------------------------------------------------------------- models
def test_save_load_round_trip_gives_identical_scores(tmp_path, tiny_models, images):
    for name, model in tiny_models.items():
        model.save_pretrained(tmp_path / name)
        cfg = json.loads((tmp_path / name / R.CONFIG_NAME).read_text())
        assert cfg["name"] == name and cfg["bt_transform"] == model.bt_transform
        loaded = load_reward(name, path=tmp_path / name)
        assert type(loaded) is type(model) and loaded.name == name
        a, b = model(images, PROMPTS), loaded(images, PROMPTS)
        assert a.dtype == np.float64 and a.shape == (len(PROMPTS),)
        np.testing.assert_array_equal(a, b)


def test_scores_do_not_depend_on_the_batch(tiny_models, images):
    for model in tiny_models.values():
        full = model(images, PROMPTS)
        model.batch_size = 1
        single = model(images, PROMPTS)
        model.batch_size = R.DEFAULT_BATCH_SIZE
        np.testing.assert_allclose(full, single, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model(images[2:3], PROMPTS[2:3]), full[2:3], rtol=1e-5, atol=1e-6)


def test_vqa_is_a_probability_and_aesthetic_ignores_the_prompt(tiny_models, images):
    p = tiny_models[R.VQA](images, PROMPTS)
    assert ((p >= 0) & (p <= 1)).all()
    aes = tiny_models[R.AESTHETIC]
    np.testing.assert_array_equal(aes(images, PROMPTS), aes(images, PROMPTS[::-1]))


def test_bt_transforms_are_declared_and_valid():
    from capo.method.calibration import parse_transform

    assert R.PrefReward.bt_transform == "identity" and R.VQAReward.bt_transform == "logit"
    assert parse_transform(R.AestheticReward.bt_transform) == ("temperature", R.AESTHETIC_TEMPERATURE)
    assert parse_transform(R.GoldReward.bt_transform) == ("temperature", truth.TEMPERATURE)


def test_bt_training_reduces_the_bt_loss_on_a_fixed_batch(images):
    torch.manual_seed(0)
    model = R.PrefReward.build("tiny")
    x = R.images_to_tensor(images)
    ids, mask = model.tokenize(PROMPTS)
    xa, xb = x, x.flip(0)  # pairs (image i, image 3 - i) for prompt i
    choice = torch.tensor([0, 0, 1, 1])

    def loss():
        return R.bt_loss(model.score(xa, ids, mask), model.score(xb, ids, mask), choice)

    before = loss().item()
    opt = torch.optim.AdamW(model.module.parameters(), lr=1e-2)
    model.module.train()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before - 0.05


def test_bt_loss_by_hand():
    # -log sigmoid(2) and -log sigmoid(-1) (b won, a scored 1 higher)
    loss = R.bt_loss(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0))) / 2)


def test_simulated_choices_match_truth(images):
    records = [R.parse_prompt(p) for p in PROMPTS]
    a, b = images, images[::-1]
    u_a, u_b = truth.utility_batch(records, a), truth.utility_batch(records, b)
    ours = R.simulated_choices(u_a, u_b, np.random.default_rng(5))
    theirs = truth.simulate_choices(records, a, b, np.random.default_rng(5))
    np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------------------------- gold
def test_gold_reward_is_the_truths_utility(images):
    gold = load_reward("shapes-gold")
    records = [R.parse_prompt(p) for p in PROMPTS]
    expected = np.array([truth.utility(r, im) for r, im in zip(records, images)])
    np.testing.assert_allclose(gold(images, PROMPTS), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gold(images, records), expected, rtol=0, atol=1e-12)
    assert gold.name == "shapes-gold"


# ----------------------------------------------------------------------------- metrics
def test_metrics_by_hand():
    assert R.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert R.auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    # truth tie skipped, reward tie counts half: (1 + 0.5 + 0) / 3
    assert R.pairwise_agreement([1, 1, 0, 5], [0, 1, 1, 5], [1, 1, 1, 2], [0, 0, 0, 2]) == pytest.approx(0.5)
    assert R.spearman([1, 2, 3], [10, 20, 15]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- factories
def test_registered_lazily():
    for name in ("shapes-pref", "shapes-vqa", "shapes-aesthetic", "shapes-gold"):
        assert name in REWARDS and "shapes" in REWARDS.doc(name)


def test_missing_artifacts_raise_reward_load_error(tmp_path, monkeypatch):
    from capo.worlds.shapes import zoo

    with pytest.raises(RewardLoadError, match="capo world build") as e:
        load_reward("shapes-pref", path=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    monkeypatch.setattr(zoo, "ARTIFACTS", tmp_path / "artifacts")
    for name in R.LEARNED:
        with pytest.raises(RewardLoadError, match="capo world build") as e:
            load_reward(name)
        assert str(tmp_path / "artifacts" / "rewards" / name) in str(e.value)


# ----------------------------------------------------------------------------- training
def test_train_rewards_end_to_end(tmp_path, images):
    result = R.train_rewards(tmp_path, seed=0, minutes=0.3, size="tiny", show_progress=False)
    h = result["heldout"]
    for name in (*R.LEARNED, R.GOLD):
        assert 0 <= h["pairwise_agreement"][name] <= 1
    assert h["pairwise_agreement"][R.GOLD] == 1.0
    assert 0 <= h["vqa"]["accuracy"] <= 1 and -1 <= h["aesthetic"]["pearson"] <= 1
    assert "pearson_aesthetic_vqa" in h["conflict"]
    assert json.loads((tmp_path / "figures.json").read_text())["seed"] == 0
    for name in R.LEARNED:
        tr = result["training"][name]
        assert tr["steps"] > 0 and tr["params"] > 0
        model = load_reward(name, path=tmp_path / name)
        s = model(images, PROMPTS)
        assert s.shape == (len(PROMPTS),) and np.isfinite(s).all()
        assert model.info["training"]["steps"] == tr["steps"]
    assert "|" in R.figures_table(result)


def test_train_rewards_is_deterministic_in_the_seed(tmp_path, images):
    small = dict(n_records=16, n_eval_records=8, steps={name: 5 for name in R.LEARNED})
    a = R.train_rewards(tmp_path / "a", seed=1, minutes=1, size="tiny", show_progress=False, **small)
    b = R.train_rewards(tmp_path / "b", seed=1, minutes=1, size="tiny", show_progress=False, **small)
    assert a["heldout"]["pairwise_agreement"] == b["heldout"]["pairwise_agreement"]
    for name in R.LEARNED:
        weights = [(tmp_path / run / name / R.WEIGHTS_NAME).read_bytes() for run in ("a", "b")]
        assert weights[0] == weights[1]


def test_pipeline_and_mixed_samplers(tmp_path):
    from conftest import build_tiny

    from capo.worlds.shapes.pipeline import ShapesPipeline

    pipe = ShapesPipeline.from_pretrained(build_tiny(tmp_path / "base"))
    records = [R.parse_prompt(p) for p in PROMPTS] * 2
    mixed = R.mixed_sampler([R.render_sampler(), R.pipeline_sampler(pipe, steps=2)], [0.5, 0.5])
    a, b = mixed(records, np.random.default_rng(0)), mixed(records, np.random.default_rng(0))
    assert a.dtype == np.uint8 and a.shape == (len(records), 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert "base model" in mixed.description
