"""T2I-CompBench rules on hand-made inputs, worked out from the upstream scripts; scorer
plumbing on tiny random / fake models (no weights, no spaCy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capo.eval import t2i_compbench as T


# ------------------------------------------------------------------ BLIP-VQA rules


def test_questions_one_per_noun_phrase_at_most_8():
    phrases = [f"thing {i}" for i in range(10)]
    assert T.vqa_questions(["a green bench", "a blue bowl"]) == ["a green bench?", "a blue bowl?"]
    assert T.vqa_questions(phrases) == [f"thing {i}?" for i in range(8)]


def test_blip_image_score_is_product_of_rounded_probabilities():
    assert T.blip_vqa_image_score([0.5, 0.8]) == pytest.approx(0.4)
    # each answer is written '{:.4f}' before the product, the product too
    assert T.blip_vqa_image_score([0.123456, 0.99996]) == pytest.approx(round(0.1235 * 1.0, 4))
    assert T.blip_vqa_image_score([0.33333, 0.33333]) == pytest.approx(0.1111)
    assert T.blip_vqa_image_score([0.33333, 0.33333], decimals=None) == pytest.approx(0.33333 ** 2)
    assert T.blip_vqa_image_score([]) == 1.0  # no noun phrase: every slot counts 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        T.blip_vqa_image_score([1.2])


def test_yes_probability_renormalises_yes_and_no():
    import torch

    logits = torch.zeros(2, 30524)
    logits[0, T.BLIP_YES_TOKEN_ID] = math.log(3.0)  # p_yes = 3 p_no
    logits[1, T.BLIP_NO_TOKEN_ID] = math.log(4.0)
    p = T.yes_probability(logits)
    assert p.tolist() == pytest.approx([0.75, 0.2])


# ------------------------------------------------------------------ 2D spatial rules


def test_find_locality_vocab_order():
    assert T.find_locality("a girl on the top of a frog") == "on the top of"
    assert T.find_locality("The red hat was on top of the brown coat rack.") == "on top of"
    assert T.find_locality("a mouse on side of a key") == "on side of"
    assert T.find_locality("a cat near a dog") == "near"
    assert T.find_locality("a cat and a dog") is None


def test_determine_position_hand_cases():
    left, right = (0, 0, 10, 10), (100, 0, 110, 10)
    assert T.determine_position("on the left of", left, right) == 1.0
    assert T.determine_position("on the right of", left, right) == 0.0
    assert T.determine_position("on the right of", right, left) == 1.0
    # overlap: dx = 5, IoU = 50 / 150 = 1/3 >= 0.1 -> 0.1 / (1/3) = 0.3
    assert T.determine_position("on the left of", (0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(0.3)
    # IoU just under 0.1 -> 1: (0,0,10,10) vs (9,0,19,10): inter 10, union 190
    assert T.determine_position("on the left of", (0, 0, 10, 10), (9, 0, 19, 10)) == 1.0
    # the horizontal offset must dominate
    assert T.determine_position("on the left of", (0, 0, 10, 10), (100, 120, 110, 130)) == 0.0
    # top / bottom: image y grows downwards; "obj1 on the top of obj2" needs cy2 > cy1
    top, bottom = (0, 0, 10, 10), (0, 100, 10, 110)
    assert T.determine_position("on the top of", top, bottom) == 1.0
    assert T.determine_position("on the bottom of", bottom, top) == 1.0
    assert T.determine_position("on the bottom of", top, bottom) == 0.0
    # near / next to / on side of: |dx| < 150 OR |dy| < 150 -> 1, else 150 / max
    assert T.determine_position("next to", (0, 0, 10, 10), (100, 0, 110, 10)) == 1.0
    assert T.determine_position("near", (0, 0, 10, 10), (300, 0, 310, 10)) == 1.0  # dy = 0
    assert T.determine_position("on side of", (0, 0, 10, 10), (300, 200, 310, 210)) == pytest.approx(0.5)
    # upstream never handles "on top of" (complex prompts), nor a missing locality
    assert T.determine_position("on top of", top, bottom) == 0.0
    assert T.determine_position(None, top, bottom) == 0.0


def test_unidet_input_size_matches_torchvision_resize():
    assert T.unidet_input_size(1024, 1024) == (479, 479)
    assert T.unidet_input_size(512, 768) == (320, 480)  # long side 718 > 480 -> capped
    assert T.unidet_input_size(768, 512) == (480, 320)
    assert T.unidet_input_size(500, 400) == (480, 384)  # 598 -> 480, short int(480 * 479 / 598)
    assert T.unidet_input_size(480, 479) == (480, 479)  # long side int(479 * 480 / 479) = 480: no cap


def _d(cls, box, score=0.9):
    return {"class": cls, "box": box, "score": score}


def test_spatial_image_score():
    dog, cat = _d("dog", (0, 0, 10, 10), 0.9), _d("cat", (100, 0, 110, 10), 0.8)
    # both found, relation holds: 0.25 * 0.9 + 0.25 * 0.8 + 1 / 2
    assert T.spatial_image_score("on the left of", "dog", "cat", [dog, cat]) == pytest.approx(0.925)
    # wrong side: 0.425 < 0.5 -> 0
    assert T.spatial_image_score("on the right of", "dog", "cat", [dog, cat]) == 0.0
    # one object found: 0.25 * s < 0.5 -> always 0
    assert T.spatial_image_score("on the left of", "dog", "cat", [dog]) == 0.0
    # detections must score > 0.5
    assert T.spatial_image_score("on the left of", "dog", "cat", [dog, {**cat, "score": 0.5}]) == 0.0
    # girl / boy / man / woman are looked up as person
    person = _d("person", (0, 0, 10, 10), 0.9)
    assert T.spatial_image_score("on the left of", "girl", "cat", [person, cat]) == pytest.approx(0.925)
    # the most confident detection of a class is the one used
    far_dog = _d("dog", (200, 0, 210, 10), 0.95)
    assert T.spatial_image_score("on the left of", "dog", "cat", [dog, cat, far_dog]) == 0.0
    # detector spellings: GenEval's "computer mouse" answers the noun "mouse"
    mouse = _d("computer mouse", (0, 0, 10, 10), 0.9)
    assert T.spatial_image_score("on the left of", "mouse", "cat", [mouse, cat]) == pytest.approx(0.925)


def test_spatial_boxes_rescaled_to_the_479_frame():
    a, b = _d("dog", (0, 0, 100, 100), 0.9), _d("cat", (200, 200, 300, 300), 0.9)
    # in its own 1024 frame |dx| = |dy| = 200 >= 150 -> 150 / 200 = 0.75
    assert T.spatial_image_score("next to", "dog", "cat", [a, b]) == pytest.approx(0.45 + 0.375)
    # in upstream's frame 200 * 479 / 1024 = 93.6 < 150 -> 1
    assert T.spatial_image_score("next to", "dog", "cat", [a, b], image_size=(1024, 1024)) == pytest.approx(0.95)


def test_prompt_objects_simple_and_complex():
    simple = [("a", "DET"), ("giraffe", "NOUN"), ("next", "ADJ"), ("to", "ADP"), ("a", "DET"), ("lamp", "NOUN")]
    assert T.simple_spatial_objects(simple) == ("giraffe", "lamp")
    assert T.simple_spatial_objects([("hello", "INTJ")]) == (None, None)
    hat = [("The", "DET"), ("red", "ADJ"), ("hat", "NOUN"), ("was", "AUX"), ("on", "ADP"), ("top", "NOUN"),
           ("of", "ADP"), ("the", "DET"), ("brown", "ADJ"), ("coat", "NOUN"), ("rack", "NOUN"), (".", "PUNCT")]
    assert T.complex_spatial_objects(hat) == ("hat", "coat")  # first noun after: "coat", as upstream
    # no NOUN after the preposition: the first PROPN not followed by a PROPN (not the last token)
    john = [("The", "DET"), ("cat", "NOUN"), ("sat", "VERB"), ("next", "ADJ"), ("to", "ADP"), ("John", "PROPN")]
    assert T.complex_spatial_objects(john) == (None, None)
    assert T.complex_spatial_objects(john + [(".", "PUNCT")]) == ("cat", "John")
    assert T.remove_adjectives(hat) == "The hat was on top of the coat rack ."


# ------------------------------------------------------------------ complex / summary


def test_three_in_one():
    assert T.three_in_one_score(0.6, 0.2, 0.3, "spatial") == pytest.approx(0.4)
    assert T.three_in_one_score(0.6, 0.2, 0.3, "action") == pytest.approx(0.45)
    assert T.three_in_one_score(0.6, 0.2, 0.4, "all") == pytest.approx(0.4)
    with pytest.raises(ValueError):
        T.three_in_one_score(0, 0, 0, "other")
    spatial = ["The red hat was on top of the brown coat rack.\n"]
    action = ["The black phone was resting on the brown charger."]
    assert T.complex_kind("the red hat was on top of the brown coat rack", spatial, action) == "spatial"
    assert T.complex_kind("The black phone was resting on the brown charger.", spatial, action) == "action"
    assert T.complex_kind("A cat sat next to a dog and ate.", spatial, action) == "all"


def test_summarize_per_category():
    rows = [{"category": "color", "score": 0.5}, {"category": "color", "score": 1.0},
            {"category": "spatial", "score": 0.0}]
    s = T.summarize(rows)
    assert s == {"categories": {"color": 0.75, "spatial": 0.0}, "counts": {"color": 2, "spatial": 1}}
    with pytest.raises(ValueError, match="row 0"):
        T.summarize([{"category": "color", "score": float("nan")}])


# ------------------------------------------------------------------ scorers on tiny models


def _tiny_blip(tmp_path):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering

    cfg = BlipConfig(
        text_config=dict(vocab_size=30524, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37))
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(cfg).eval()
    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "car", "blue", "dog", "?"]
    vocab.write_text("\n".join(words))
    return model, BertTokenizer(str(vocab))


def test_blip_vqa_scorer_runs_and_multiplies(tmp_path):
    model, tok = _tiny_blip(tmp_path)
    phrases = {"a red car and a blue dog": ["a red car", "a blue dog"], "a dog": ["a dog"], "nothing": []}
    score = T.blip_vqa_scorer(model=model, tokenizer=tok, noun_phrases_fn=phrases.__getitem__, device="cpu",
                              image_size=48, batch_size=2)
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    prompts = list(phrases)
    out = score(ims, prompts)
    assert len(out) == 3 and all(0.0 <= s <= 1.0 for s in out)
    p = score.yes_prob([ims[0], ims[0]], ["a red car?", "a blue dog?"])
    assert out[0] == pytest.approx(T.blip_vqa_image_score(p))
    assert out[2] == 1.0


def test_clip_score_scorer_is_plain_cosine():
    import torch

    class Fake(torch.nn.Module):
        def encode_image(self, x):
            return torch.tensor([[3.0, 4.0]])

        def encode_text(self, t):
            return t

    tokenizer = {"a cat": torch.tensor([[4.0, 3.0]]), "a cat sat": torch.tensor([[1.0, 0.0]])}
    score = T.clip_score_scorer(model=Fake(), preprocess=lambda im: torch.zeros(3, 2, 2),
                                tokenizer=lambda texts: tokenizer[texts[0]], device="cpu")
    assert score([np.zeros((4, 4, 3), np.uint8)], ["a cat"]) == [pytest.approx(24 / 25)]
    no_adj = T.clip_score_scorer(model=Fake(), preprocess=lambda im: torch.zeros(3, 2, 2),
                                 tokenizer=lambda texts: tokenizer[texts[0]], device="cpu", remove_adj=True,
                                 pos_fn=lambda p: [("a", "DET"), ("fat", "ADJ"), ("cat", "NOUN"), ("sat", "VERB")])
    assert no_adj([np.zeros((4, 4, 3), np.uint8)], ["a fat cat sat"]) == [pytest.approx(0.6)]


def test_spatial_and_three_in_one_scorers_with_fake_parts():
    def detector(images):
        return [[_d("dog", (0, 0, 40, 40), 0.9), _d("cat", (400, 0, 440, 40), 0.8)] for _ in images]

    pos = {"a dog on the left of a cat": [("a", "DET"), ("dog", "NOUN"), ("on", "ADP"), ("the", "DET"),
                                          ("left", "NOUN"), ("of", "ADP"), ("a", "DET"), ("cat", "NOUN")]}
    score = T.spatial_scorer(detector, pos_fn=pos.__getitem__)
    img = np.zeros((479, 479, 3), np.uint8)
    assert score([img], ["a dog on the left of a cat"]) == [pytest.approx(0.925)]

    combined = T.three_in_one_scorer(lambda i, p: [0.6] * len(p), lambda i, p: [0.2] * len(p),
                                     lambda i, p: [0.4] * len(p), spatial_prompts=["x sat on top of y."],
                                     action_prompts=["x held y."])
    assert combined([img, img, img], ["X sat on top of y.", "x held y", "z"]) == pytest.approx([0.4, 0.5, 0.4])


def test_spacy_missing_is_a_clear_error():
    try:
        import spacy  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="en_core_web_sm"):
            T.spacy_nlp()
    else:
        pytest.skip("spaCy is installed")


def test_blip_missing_weights_offline_names_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)capo-test/no-such-blip.*Offline"):
        T.blip_vqa_scorer("capo-test/no-such-blip", noun_phrases_fn=lambda p: [p], device="cpu")
