"""T2I-CompBench(++) rules on hand-made inputs, worked out from the upstream scripts
(Karine-Huang/T2I-CompBench @ 1b70949); scorer, detector and depth plumbing on tiny random /
fake models (no weights, no network, no spaCy: prompts are parsed by capo's RuleParser)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from capo.eval import detectors as D
from capo.eval import t2i_compbench as T
from capo.eval.prompts import complex_kind

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
needs_bench = pytest.mark.skipif(not BENCH.is_dir(), reason=f"benchmark copies not at {BENCH}")
RULES = T.RuleParser()


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


def test_blip_product_is_float32_as_upstream():
    """Upstream stores each '{:.4f}' answer in a float32 tensor and multiplies there:
    0.875 * 0.8124 = 0.71085 exactly; in float64 the product is 0.710849999... -> '0.7108', in
    float32 0.8124 is 0.81239998... and the product rounds to 0.71085000038 -> '0.7109'."""
    assert T.blip_vqa_image_score([0.875, 0.8124]) == 0.7109
    assert T.blip_vqa_image_score([0.875, 0.8124], decimals=None) == pytest.approx(0.71085)


def test_blip_noun_chunk_filter_and_pre_question():
    """Create_annotation_for_BLIP drops a chunk whose whole text is 'top', 'the side', 'the left'
    or 'the right' (exact, case-sensitive); the test dataset applies pre_question (lower-case,
    drop .!"()*#:;~, strip trailing spaces; '?' and ',' stay)."""
    assert T.blip_noun_phrases(["The fluffy cat", "the left", "the soft pillow"]) == \
        ["The fluffy cat", "the soft pillow"]
    assert T.blip_noun_phrases(["top", "the side", "the right", "the top", "The left", "front"]) == \
        ["the top", "The left", "front"]
    assert T.pre_question('A long, narrow (black) kitchen: "tiles"!?  ') == "a long, narrow black kitchen tiles?"
    assert T.pre_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
    # upstream's examples, parsed as spaCy chunks them (README's first sample, complex_val_spatial.txt)
    assert T.vqa_questions(RULES.noun_chunks("a green bench and a blue bowl")) == ["a green bench?", "a blue bowl?"]
    hat = "The red hat was on top of the brown coat rack."
    assert RULES.noun_chunks(hat) == ["The red hat", "top", "the brown coat rack"]
    assert T.vqa_questions(RULES.noun_chunks(hat)) == ["the red hat?", "the brown coat rack?"]
    cat = "The fluffy cat is on the left of the soft pillow."
    assert T.vqa_questions(RULES.noun_chunks(cat)) == ["the fluffy cat?", "the soft pillow?"]
    # the filter applies before the 8-question cut
    assert T.vqa_questions(["top"] + [f"x{i}" for i in range(9)]) == [f"x{i}?" for i in range(8)]


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
    from PIL import Image
    from torchvision import transforms

    resize = transforms.Resize(size=479, max_size=480)  # upstream's detector transform
    for w, h in [(1024, 1024), (512, 768), (768, 512), (500, 400), (480, 479), (300, 1000)]:
        assert T.unidet_input_size(w, h) == resize(Image.new("RGB", (w, h))).size
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
    assert complex_kind("the red hat was on top of the brown coat rack", spatial, action) == "spatial"
    assert complex_kind("The black phone was resting on the brown charger.", spatial, action) == "action"
    assert complex_kind("A cat sat next to a dog and ate.", spatial, action) == "all"


def test_summarize_per_category():
    rows = [{"category": "color", "score": 0.5}, {"category": "color", "score": 1.0},
            {"category": "spatial", "score": 0.0}]
    s = T.summarize(rows)
    assert s == {"categories": {"color": 0.75, "spatial": 0.0}, "counts": {"color": 2, "spatial": 1}}
    with pytest.raises(ValueError, match="row 0"):
        T.summarize([{"category": "color", "score": float("nan")}])


# ------------------------------------------------------------------ scorers on tiny models


def _tiny_blip(tmp_path):
    from conftest import tiny_blip_vqa

    return tiny_blip_vqa(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "car", "blue", "dog", "?"])


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


def test_blip_yes_probability_does_not_depend_on_the_batch(tmp_path):
    """Questions of different lengths asked together must give what each gives alone: transformers
    5's BLIP cross-attention drops the question padding mask, so a padded batch would leak."""
    model, tok = _tiny_blip(tmp_path)
    score = T.blip_vqa_scorer(model=model, tokenizer=tok, noun_phrases_fn=lambda p: [p], device="cpu",
                              image_size=48, batch_size=4)
    rng = np.random.default_rng(1)
    ims = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    qs = ["a dog?", "a red car and a blue dog?", "a blue car?"]
    together = score.yes_prob(ims, qs)
    alone = [score.yes_prob([im], [q])[0] for im, q in zip(ims, qs)]
    assert together == pytest.approx(alone, abs=1e-6)


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


# ------------------------------------------------------------------ fallback parser


def test_rule_parser_on_template_prompts():
    """The fallback parse of the templated prompts, as spaCy en_core_web_sm parses them
    (upstream takes the first and last NOUN for spatial / 3d_spatial and only token texts for
    numeracy; spaCy splits commas and hyphens off)."""
    assert T.simple_spatial_objects(RULES.pos("a girl on the top of a frog")) == ("girl", "frog")
    assert T.simple_spatial_objects(RULES.pos("a giraffe next to a lamp")) == ("giraffe", "lamp")
    assert T.simple_spatial_objects(RULES.pos("a chair hidden by a mouse")) == ("chair", "mouse")
    assert T.simple_spatial_objects(RULES.pos("a dog in front of a desk")) == ("dog", "desk")
    assert RULES.tokens("four shrimp, three microwaves and one bee") == \
        ["four", "shrimp", ",", "three", "microwaves", "and", "one", "bee"]
    assert RULES.tokens("mid-air") == ["mid", "-", "air"]
    assert RULES.noun_chunks("a brown horse and a red orange") == ["a brown horse", "a red orange"]
    assert RULES.noun_chunks("a black bathroom with a black and white shower curtain") == \
        ["a black bathroom", "a black and white shower curtain"]
    book = "The blue book was on top of the red bookshelf."
    assert T.complex_spatial_objects(RULES.pos(book)) == ("book", "bookshelf")
    assert T.remove_adjectives(RULES.pos("The fluffy cat is on the left of the soft pillow.")) == \
        "The cat is on the left of the pillow ."
    assert T.get_parser("fallback").name == "fallback-rules" and not T.get_parser("fallback").exact
    assert T.get_parser(RULES) is RULES


def test_auto_parser_falls_back_with_a_warning():
    try:
        T.spacy_nlp()
    except RuntimeError:
        with pytest.warns(UserWarning, match="RuleParser"):
            assert isinstance(T.get_parser(None), T.RuleParser)
        with pytest.raises(RuntimeError, match="en_core_web_sm"):
            T.get_parser("spacy")
    else:
        pytest.skip("spaCy and en_core_web_sm are installed")


# ------------------------------------------------------------------ numeracy


def test_numeracy_objects_rule():
    """numeracy_eval.py: a number word then a new_objects.txt name; a/an/one + singular -> 1,
    plural -> singular with w2n(number); w2n('a') fails and appends no count."""
    assert T.numeracy_objects(RULES.tokens("two cats and one dog")) == (["cat", "dog"], [2, 1])
    counter = "a backpack, three apples, two strawberries, and a bowl were on the kitchen counter"
    assert T.numeracy_objects(RULES.tokens(counter)) == (["backpack", "apple", "strawberry", "bowl"], [1, 3, 2, 1])
    assert T.numeracy_objects(["two", "fish"]) == (["fish"], [2])  # fish - fish: plural branch
    assert T.numeracy_objects(["seven", "women"]) == (["woman"], [7])
    assert T.numeracy_objects(["Two", "cats"]) == ([], [])  # case-sensitive, as upstream
    assert T.numeracy_objects(["nine", "cats"]) == ([], [])  # only a/an/one..eight are number words
    assert T.numeracy_objects(["a", "cats"]) == (["cat"], [])  # w2n('a') raises: no count
    assert T.numeracy_objects(["three", "zebras"]) == ([], [])  # not in new_objects.txt
    assert T.numeracy_detector_name("woman") == "person" and T.numeracy_detector_name("painting") == "picture"


def test_numeracy_image_score_hand_cases():
    """Prompt "two cats and one dog": objects [cat, dog], counts [2, 1], w = 1/2.
    Detections (score > 0.5, by score): cat A 0.9, cat B 0.8 (disjoint), cat A' 0.7 (same box as A
    shifted 1 px: IoU = 10*11/(121+121-110) = 0.83 but the intersection covers 110/121 = 0.91 of
    each box -> merged), dog 0.6, dog 0.4 (below threshold). cats: present (+1/4), 2 == 2 (+1/4);
    dog: present (+1/4), 1 == 1 (+1/4) -> 1.0. Without the duplicate merge 3 cats -> 0.75."""
    a, b = (0, 0, 10, 10), (50, 50, 60, 60)
    dets = [{"class": "cat", "box": a, "score": 0.9}, {"class": "cat", "box": b, "score": 0.8},
            {"class": "cat", "box": (1, 0, 11, 10), "score": 0.7},
            {"class": "dog", "box": (100, 0, 120, 20), "score": 0.6},
            {"class": "dog", "box": (200, 0, 220, 20), "score": 0.4}]
    assert T.numeracy_same_object(a, (1, 0, 11, 10)) and not T.numeracy_same_object(a, b)
    assert T.numeracy_image_score(["cat", "dog"], [2, 1], dets) == 1.0
    far = dets[:2] + [{"class": "cat", "box": (30, 30, 40, 40), "score": 0.7}] + dets[3:]
    assert T.numeracy_image_score(["cat", "dog"], [2, 1], far) == 0.75
    # "two women": looked up as person; 1 of 2 -> 0.5
    assert T.numeracy_image_score(["woman"], [2], [{"class": "person", "box": a, "score": 0.9}]) == 0.5
    # substring rename: UniDet's "table, desk" answers "desk" (renamed in place)
    assert T.numeracy_image_score(["desk"], [1], [{"class": "table, desk", "box": a, "score": 0.9}]) == 1.0
    # the threshold is strict (> 0.5), no object -> 0 (upstream divides by zero)
    assert T.numeracy_image_score(["cat"], [1], [{"class": "cat", "box": a, "score": 0.5}]) == 0.0
    assert T.numeracy_image_score([], [], dets) == 0.0
    with pytest.raises(ValueError, match="no count"):
        T.numeracy_image_score(["cat"], [], dets)


# ------------------------------------------------------------------ 3D spatial


def _depth_rows_near():
    """20 x 20 inverse depth: rows 0..9 are 1 (near), rows 10..19 are 0 (far)."""
    d = np.zeros((20, 20), np.float32)
    d[:10] = 1.0
    return d


def test_determine_position_3d_hand_cases():
    """Box A (0,0,10,10), box B (5,0,15,10): IoU = 50 / 150 = 1/3. Upstream indexes the map
    [x0:x1, y0:y1] (rows by x): mean A = rows 0..9 = 1, mean B = rows 5..14 = 0.5, diff 0.5 > 0,
    so "in front of" = (1/3) / 0.5 = 2/3 and "behind" = 0. Indexed [y, x] both regions are rows
    0..9 -> diff 0 -> 0 for both."""
    d = _depth_rows_near()
    a, b = (0, 0, 10, 10), (5, 0, 15, 10)
    assert T.determine_position_3d("in front of", a, b, d) == pytest.approx(2 / 3)
    assert T.determine_position_3d("behind", a, b, d) == 0.0
    assert T.determine_position_3d("hidden", b, a, d) == pytest.approx(2 / 3)
    assert T.determine_position_3d("in front of", a, b, d, upstream_indexing=False) == 0.0
    # IoU = 90 / 110 > 0.5: B (1,0,11,10) covers rows 1..10 -> mean 0.9 < 1 -> A in front -> 1
    assert T.determine_position_3d("in front of", a, (1, 0, 11, 10), d) == 1.0
    # disjoint boxes, and IoU exactly 0.5 (A vs (0,0,10,5): 50 / 100), score 0
    assert T.determine_position_3d("in front of", a, (15, 15, 20, 20), d) == 0.0
    assert T.determine_position_3d("in front of", a, (0, 0, 10, 5), d) == 0.0
    # an empty region (NaN mean) fails; a 2D locality falls through to the 2D rule
    assert T.determine_position_3d("in front of", (3, 3, 3.5, 9), a, d) == 0.0
    assert T.determine_position_3d("next to", a, b, d) == 1.0
    assert T.find_locality_3d("a chair hidden by a mouse") == "hidden"
    assert T.find_locality_3d("a cat behind a boy") == "behind"


def test_spatial_3d_image_score():
    """girl -> person (0.9), desk answered by "table, desk" (0.8), A in front of B as above:
    0.25 * 0.9 + 0.25 * 0.8 + (2/3) / 2 = 0.425 + 1/3. One object found: 0.25 * 0.9 = 0.225
    (no 0.5 floor in 3D). Substring scan: dets [dog A, dog B, cat C] -> obj1 takes the last
    dog before the first cat (B)."""
    d = _depth_rows_near()
    a, b = (0, 0, 10, 10), (5, 0, 15, 10)
    dets = [{"class": "person", "box": a, "score": 0.9}, {"class": "table, desk", "box": b, "score": 0.8}]
    assert T.spatial_3d_image_score("in front of", "girl", "desk", dets, d) == pytest.approx(0.425 + 1 / 3)
    assert T.spatial_3d_image_score("in front of", "girl", "cow", dets, d) == pytest.approx(0.225)
    assert T.spatial_3d_image_score("in front of", "cow", "pig", dets, d) == 0.0
    scan = [{"class": "dog", "box": a, "score": 0.9}, {"class": "dog", "box": (1, 0, 11, 10), "score": 0.8},
            {"class": "cat", "box": b, "score": 0.7}]
    # dog B (1,0,11,10) vs cat (5,0,15,10): IoU 60 / 140 = 3/7; mean B rows 1..10 = 0.9 > 0.5 -> (3/7) / 0.5
    assert T.spatial_3d_image_score("in front of", "dog", "cat", scan, d) == pytest.approx(0.25 * 1.5 + (6 / 7) / 2)
    # boxes of a 958 x 958 image are halved into the 479 frame the depth map lives in
    big = [{**dets[0], "box": (0, 0, 20, 20)}, {**dets[1], "box": (10, 0, 30, 20)}]
    assert T.spatial_3d_image_score("in front of", "girl", "desk", big, d, (958, 958)) == pytest.approx(0.425 + 1 / 3)


def test_upstream_depth_map_pipeline():
    """Prediction [[0, 1], [2, 3]] -> min-max [[0, 1/3], [2/3, 1]] -> bilinear (align_corners) to
    3 x 3: edge midpoints 1/6, 1/3, 2/3, 5/6, centre 1/2 -> x 255 and truncated by PIL's F -> L:
    [[0, 42, 85], [85, 127, 170], [170, 212, 255]]. A constant prediction gives zeros."""
    png = T.upstream_depth_png([[0.0, 1.0], [2.0, 3.0]], 3, 3)
    assert np.asarray(png).tolist() == [[0, 42, 85], [85, 127, 170], [170, 212, 255]]
    assert np.asarray(T.upstream_depth_png([[5.0, 5.0], [5.0, 5.0]], 4, 2)).tolist() == [[0] * 4] * 2
    from PIL import Image

    frame = T.depth_in_unidet_frame(Image.new("L", (1024, 768), 51))  # resized like the image (480 x 360), / 255
    assert frame.shape == (360, 480) and np.allclose(frame, 0.2)


def _tiny_dpt_hybrid():
    import torch
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    bit = BitConfig(layer_type="bottleneck", depths=[1, 1, 1], hidden_sizes=[8, 16, 32], embedding_size=8,
                    out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True,
                    global_padding="same", num_groups=4)
    cfg = DPTConfig(is_hybrid=True, backbone_config=bit, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=32, image_size=32, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                    neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16, readout_type="project",
                    backbone_featmap_shape=[1, 32, 2, 2])
    return DPTForDepthEstimation(cfg).eval()


def test_depth_estimator_feeds_dpt_hybrid_like_upstream():
    """A tiny DPT-Hybrid (config image_size 32) fed a 64 x 64 squashed input as upstream feeds
    MiDaS 480 x 480: one non-negative map per image at the input resolution."""
    depth = D.depth_estimator(model=_tiny_dpt_hybrid(), device="cpu", input_size=64, batch_size=1)
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (40, 70, 3), dtype=np.uint8), rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)]
    out = depth(ims)
    assert [o.shape for o in out] == [(64, 64), (64, 64)] and all((o >= 0).all() for o in out)
    assert D.DEPTH_INPUT["dpt"] == (480, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert np.allclose(D.depth_estimator(model=_tiny_dpt_hybrid(), device="cpu", input_size=64, batch_size=2)(ims)[1],
                       out[1], atol=1e-5)


def test_spatial_3d_scorer_with_fake_parts():
    """Image 958 x 958; detector boxes in its pixels: person (0,0,20,20) 0.9 and desk (10,0,30,20)
    0.8 -> (0,0,10,10) and (5,0,15,10) in the 479 frame. Depth prediction: rows < 479 near, so after
    upstream's normalise/resize the 479-frame map has rows 0..238 at 1 and the rest at 0: both
    regions (rows 0..9, 5..14) are near -> diff 0 -> position 0 -> 0.425."""
    seen = {}

    def detector(images, queries=None):
        seen["queries"] = queries
        return [[{"class": "person", "box": (0, 0, 20, 20), "score": 0.9},
                 {"class": "desk", "box": (10, 0, 30, 20), "score": 0.8}] for _ in images]

    detector.open_vocabulary = True

    def depth(images):
        pred = np.zeros((958, 958), np.float32)
        pred[:479] = 1.0
        return [pred for _ in images]

    score = T.spatial_3d_scorer(detector, depth, nlp=RULES)
    img = np.zeros((958, 958, 3), np.uint8)
    assert score([img], ["a girl in front of a desk"]) == [pytest.approx(0.425)]
    assert seen["queries"] == [["person", "desk"]]


# ------------------------------------------------------------------ detectors


def _tiny_owlv2():
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from conftest import byte_chars

    vocab: dict[str, int] = {}
    for c in byte_chars():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)  # OWL's query mask needs a non-zero first token id
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    cfg = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=16)
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(cfg).eval()
    return model, Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok)


def test_owlv2_detector_format_frame_and_batch_invariance():
    model, proc = _tiny_owlv2()
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (40, 70, 3), dtype=np.uint8), rng.integers(0, 255, (64, 32, 3), dtype=np.uint8),
           rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)]
    queries = [["cat", "dog"], ["person"], ["cat", "dog", "bowl"]]
    one = D.owlv2_detector(model=model, processor=proc, device="cpu", min_score=0.2, batch_size=1)
    three = D.owlv2_detector(model=model, processor=proc, device="cpu", min_score=0.2, batch_size=3)
    a, b = one(ims, queries=queries), three(ims, queries=queries)
    assert one.open_vocabulary and one.score_threshold == 0.2
    assert [len(x) for x in a] == [len(x) for x in b] and sum(map(len, a)) > 0
    for im, q, dets, dets_b in zip(ims, queries, a, b):
        h, w = im.shape[:2]
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        for d, e in zip(dets, dets_b):
            assert set(d) == {"class", "box", "score"} and d["class"] in q and d["score"] > 0.2
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h  # pixels of the original image
            assert d["class"] == e["class"] and d["score"] == pytest.approx(e["score"], abs=1e-5)
            assert d["box"] == pytest.approx(e["box"], abs=1e-3)
    # one list for every image equals the same list given per image; no query, no detection
    shared = one(ims[:2], queries=["cat", "dog"])
    assert [(d["class"], round(d["score"], 5)) for d in shared[0]] == [(d["class"], round(d["score"], 5)) for d in a[0]]
    assert one(ims[:1], queries=[[]]) == [[]]
    with pytest.raises(ValueError, match="queries"):
        one(ims)


def test_owlv2_postprocessing_frame_by_hand():
    """A 100 x 50 image is padded (bottom) to 100 x 100 before OWLv2 sees it, so boxes scale by
    max(h, w) = 100: (cx, cy, w, h) = (0.5, 0.25, 0.2, 0.1) -> (40, 20, 60, 30). A box reaching
    into the padding (cy = 0.5, h = 0.2 -> y 40..60) is clipped to y <= 50. Query columns past
    the image's own (batch padding) are ignored; per-class NMS at 0.3 drops a near copy."""
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    logits = np.full((4, 3), -10.0, np.float32)
    logits[0, 0] = logit(0.9)    # cat
    logits[1, 1] = logit(0.8)    # dog, into the padding
    logits[2, 0] = logit(0.7)    # cat, overlapping box 0 (IoU 0.82) -> suppressed
    logits[3, 2] = 10.0          # padded query column: ignored
    boxes = np.array([[0.5, 0.25, 0.2, 0.1], [0.2, 0.5, 0.2, 0.2], [0.51, 0.25, 0.2, 0.1], [0.8, 0.1, 0.1, 0.1]],
                     np.float32)
    dets = D.owlv2_detections(logits, boxes, ["cat", "dog"], (50, 100), min_score=0.1, nms_threshold=0.3)
    assert [d["class"] for d in dets] == ["cat", "dog"]
    assert dets[0]["box"] == pytest.approx((40, 20, 60, 30), abs=1e-4) and dets[0]["score"] == pytest.approx(0.9)
    assert dets[1]["box"] == pytest.approx((10, 40, 30, 50), abs=1e-4)
    no_nms = D.owlv2_detections(logits, boxes, ["cat", "dog"], (50, 100), min_score=0.1, nms_threshold=1.0)
    assert [d["class"] for d in no_nms] == ["cat", "dog", "cat"]


def test_owlv2_registered_and_missing_weights_offline(monkeypatch, tmp_path):
    from capo.eval.geneval import DETECTORS, get_detector

    assert {"owlv2", "unidet", "mask2former"} <= set(DETECTORS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)capo-test/no-such-owl.*Offline"):
        get_detector("owlv2", model_id_or_path="capo-test/no-such-owl", device="cpu")


def test_unidet_without_detectron2_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # absent (it is, here; this makes sure)
    with pytest.raises(RuntimeError, match=r"(?s)detectron2.*UniDet.*CAPO_UNIDET_ROOT"):
        D.unidet_detector(root="/nonexistent")
    assert not D.unidet_available("/nonexistent")


def test_unidet_plumbing_with_a_fake_model():
    """Upstream feeds UniDet the image resized by Resize(479, max_size=480), BGR float CHW, with
    that size as height/width; boxes come back in that frame and are mapped to the original
    pixels: a 958 x 958 red image -> 479 x 479 input with channel 2 = 255, box (10, 20, 30, 40)
    -> (20, 40, 60, 80); class ids index UniDet's labels."""
    import torch

    class Boxes:
        def __init__(self, t):
            self.tensor = t

    class Instances:
        def __init__(self, **f):
            self.f = f

        def get_fields(self):
            return self.f

    seen = []

    def model(inputs):
        seen.extend(inputs)
        return [{"instances": Instances(pred_boxes=Boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]])),
                                        scores=torch.tensor([0.75]), pred_classes=torch.tensor([1]))}
                for _ in inputs]

    model.eval = lambda: None
    det = D.unidet_detector(model=model, device="cpu")
    img = np.zeros((958, 958, 3), np.uint8)
    img[..., 0] = 255
    (dets,) = det([img])
    assert seen[0]["height"] == seen[0]["width"] == 479 and tuple(seen[0]["image"].shape) == (3, 479, 479)
    assert float(seen[0]["image"][2].mean()) == 255.0 and float(seen[0]["image"][0].max()) == 0.0
    assert dets == [{"class": D.UNIDET_LABELS[1], "box": pytest.approx((20, 40, 60, 80)), "score": pytest.approx(0.75)}]
    assert det.score_threshold == 0.5 and not det.open_vocabulary and len(det.class_names) == 722


def test_spatial_scorer_asks_an_open_vocabulary_detector_for_its_nouns():
    seen = {}

    def detector(images, queries=None):
        seen["queries"] = queries
        return [[{"class": "person", "box": (0, 0, 40, 40), "score": 0.3},
                 {"class": "frog", "box": (400, 0, 440, 40), "score": 0.2}] for _ in images]

    detector.open_vocabulary = True
    detector.score_threshold = 0.1
    score = T.spatial_scorer(detector, nlp=RULES)
    img = np.zeros((479, 479, 3), np.uint8)
    # 0.25 * 0.3 + 0.25 * 0.2 + 1 / 2 = 0.625 (the detector's own threshold 0.1 applies)
    assert score([img], ["a girl on the left of a frog"]) == [pytest.approx(0.625)]
    assert seen["queries"] == [["person", "frog"]]
    assert T.spatial_scorer(detector, nlp=RULES, score_threshold=0.5)([img], ["a girl on the left of a frog"]) == [0.0]


# ------------------------------------------------------------------ coverage


@needs_bench
def test_detector_coverage_of_the_val_prompts():
    """Prompts of the shipped val files (300 each; complex: the 88 whose 3-in-1 kind uses the
    spatial score) whose nouns (RuleParser) a label space can answer: open vocabulary (OWLv2),
    GenEval's COCO-80 (mask2former), UniDet's 722 labels (exact names for 2D, substrings for
    3D / numeracy, as upstream matches them)."""
    from capo.eval import prompts as P
    from capo.eval.geneval import OBJECT_NAMES

    by_cat = {c: [r["prompt"] for r in P.load_prompt_set(f"t2i-compbench:{c}", source=BENCH)]
              for c in T.DETECTOR_CATEGORIES}
    kinds = {r["prompt"]: r["complex_kind"] for r in P.load_prompt_set("t2i-compbench:complex", source=BENCH)}

    def table(vocab):
        t = T.coverage_table(by_cat, vocab, parser=RULES, kinds=kinds)
        return {c: (v["scorable"], v["total"]) for c, v in t.items()}

    assert table(None) == {"spatial": (300, 300), "numeracy": (300, 300), "3d_spatial": (300, 300), "complex": (87, 88)}
    assert table(OBJECT_NAMES) == {"spatial": (90, 300), "numeracy": (75, 300), "3d_spatial": (132, 300),
                                   "complex": (1, 88)}
    assert table(D.UNIDET_LABELS) == {"spatial": (200, 300), "numeracy": (300, 300), "3d_spatial": (280, 300),
                                      "complex": (24, 88)}
    coco = T.detector_coverage("spatial", by_cat["spatial"], OBJECT_NAMES, parser=RULES)
    assert coco["out_of_vocabulary"]["frog"] == 20 and "mouse" not in coco["out_of_vocabulary"]  # alias
    assert T.detector_coverage("complex", by_cat["complex"], None, parser=RULES, kinds=kinds)["unparsed"] == 1


def test_coverage_rules_by_hand():
    assert T.detector_nouns("spatial", "a girl near a frog", RULES) == ["person", "frog"]
    assert T.detector_nouns("numeracy", "two paintings and a ship", RULES) == ["picture", "boat"]
    assert T.detector_nouns("numeracy", "many cats", RULES) is None
    assert T.noun_in_vocabulary("desk", ["table, desk"], "3d_spatial")
    assert not T.noun_in_vocabulary("desk", ["table, desk"], "spatial")
    assert T.noun_in_vocabulary("mouse", ["computer mouse"], "spatial")
    assert T.detector_vocabulary(D.unidet_detector(model=_fake_eval_model(), device="cpu")) == D.UNIDET_LABELS
    with pytest.raises(ValueError, match="no detector"):
        T.detector_nouns("color", "a red car", RULES)


def _fake_eval_model():
    def model(inputs):
        return []

    model.eval = lambda: None
    return model


# ------------------------------------------------------------------ upstream layout


def test_layout_round_trip_and_upstream_names(tmp_path):
    """Names as inference_eval.py writes them: the prompt verbatim, '_', a 6-digit index running
    over all prompts; the evaluators' own parses (BLIP_vqa.py: split('_')[0] / split('_')[-1],
    generate_dataset.py: split('_')[1]) recover prompt and index."""
    prompts = ["a green bench and a blue bowl", "a tall skyscraper and a short bush."]
    rng = np.random.default_rng(0)
    images = {p: [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(3)] for p in prompts}
    written = T.write_upstream_layout(tmp_path, prompts, images)
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == [f"a green bench and a blue bowl_00000{i}.png" for i in range(3)] + \
        [f"a tall skyscraper and a short bush._00000{i}.png" for i in range(3, 6)]
    for name in names:
        assert name.split("_")[0] in prompts
        assert int(name.split("_")[-1].split(".")[0]) == int(name.split("_")[1].split(".")[0])
    read = T.read_upstream_layout(tmp_path, prompts, images_per_prompt=3)
    assert read == written == sorted(written, key=lambda e: e[1])
    assert [(p, i) for p, i, _ in read] == [(prompts[0], 0), (prompts[0], 1), (prompts[0], 2),
                                            (prompts[1], 3), (prompts[1], 4), (prompts[1], 5)]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(read[4][2])), images[prompts[1]][1])
    assert T.read_upstream_layout(tmp_path / "samples", prompts) == read  # the samples folder itself
    with pytest.raises(T.LayoutError, match="already holds 6"):
        T.write_upstream_layout(tmp_path, prompts, images)
    T.write_upstream_layout(tmp_path, prompts[:1], [images[prompts[0]][:1]], overwrite=True)
    assert T.read_upstream_layout(tmp_path, prompts[:1]) == [(prompts[0], 0, tmp_path / "samples" /
                                                              "a green bench and a blue bowl_000000.png")]


def test_layout_errors_listed_together(tmp_path):
    prompts = ["a cat", "a dog"]
    T.write_upstream_layout(tmp_path, prompts, [[np.zeros((4, 4, 3), np.uint8)] * 2] * 2)
    s = tmp_path / "samples"
    (s / "a dog_000003.png").unlink()                       # missing
    (s / "a cow_000007.png").write_bytes(b"")               # extra (unknown prompt)
    (s / "a dog_000002.png").write_bytes(b"not a png")      # unreadable
    (s / "notes.txt").write_text("x")                       # unexpected
    (s / "a cat_0000001.png").write_bytes((s / "a cat_000001.png").read_bytes())  # duplicate index 1
    with pytest.raises(T.LayoutError) as e:
        T.read_upstream_layout(tmp_path, prompts, images_per_prompt=2)
    msg = str(e.value)
    for line in ("unexpected (1): notes.txt", "extra (1): a cow_000007.png", "duplicate (1)",
                 "missing (1): a dog_000003.png", "unreadable (1): a dog_000002.png"):
        assert line in msg, msg
    with pytest.raises(T.LayoutError, match="no image"):
        T.read_upstream_layout(tmp_path, ["a fox"] + prompts, check_images=False)
    with pytest.raises(T.LayoutError, match="contains '_'"):
        T.write_upstream_layout(tmp_path / "x", ["a snake_case prompt"], [[np.zeros((4, 4, 3), np.uint8)]])
    with pytest.raises(T.LayoutError, match="no such folder"):
        T.read_upstream_layout(tmp_path / "nope", prompts)


# ------------------------------------------------------------------ entry point and protocol


def test_category_scorer_detector_categories_with_fake_detector():
    """spatial: "a dog on the left of a cat", dog (0,0,40,40) 0.9, cat (400,0,440,40) 0.8 in a 479
    image -> 0.925; numeracy "two cats": one cat of two -> 0.5. Both with RuleParser, so the
    protocol records a variant parse; the fake detector is not upstream's either."""
    def detector(images, queries=None):
        return [[{"class": "dog", "box": (0, 0, 40, 40), "score": 0.9},
                 {"class": "cat", "box": (400, 0, 440, 40), "score": 0.8}] for _ in images]

    detector.name = "fake"
    img = np.zeros((479, 479, 3), np.uint8)
    spatial = T.category_scorer("spatial", detector=detector, nlp="fallback")
    assert spatial([img], ["a dog on the left of a cat"]) == [pytest.approx(0.925)]
    assert spatial.protocol["exact"] is False and "fake" in spatial.protocol["variant"]
    assert spatial.parser == "fallback-rules" and spatial.detector == "fake"
    numeracy = T.category_scorer("numeracy", detector=detector, nlp="fallback")
    assert numeracy([img], ["two cats"]) == [0.5]
    with pytest.raises(ValueError, match="complex needs"):
        T.category_scorer("complex", detector=detector, nlp="fallback")
    with pytest.raises(ValueError, match="unknown T2I-CompBench category"):
        T.category_scorer("counting")


def test_protocol_table():
    assert set(T.PROTOCOL) == set(T.CATEGORIES) == set(T.METRIC_OF_CATEGORY)
    for entry in T.PROTOCOL.values():
        assert {"metric", "model", "exact", "note"} <= set(entry)
    assert T.protocol_entry("spatial", detector="unidet:RS200", parser="spacy:en_core_web_sm")["exact"] is True
    var = T.protocol_entry("spatial", detector="owlv2:google/owlv2-base-patch16-ensemble", parser="fallback-rules")
    assert var["exact"] is False and "owlv2" in var["variant"] and "fallback-rules" in var["variant"]
    assert T.protocol_entry("numeracy", detector="unidet:RS200")["exact"] is False  # upstream counts with R50
    assert T.protocol_entry("3d_spatial", detector="unidet:R50", parser="spacy:en_core_web_sm",
                            depth="depth_anything:x")["exact"] is False
    assert T.protocol_entry("non_spatial", parser="fallback-rules")["exact"] is True  # no parsing
