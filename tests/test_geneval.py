"""GenEval rules against cases worked out by hand from upstream ``evaluation/evaluate_images.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from capo.eval import geneval as G
from capo.eval.prompts import load_metadata

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
needs_bench = pytest.mark.skipif(not BENCH.is_dir(), reason=f"benchmark copies not at {BENCH}")


def det(cls, box=(0, 0, 10, 10), score=0.95, **kw):
    return {"class": cls, "box": box, "score": score, **kw}


COUNT_TWO_CLOCKS = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
                    "exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}


# ------------------------------------------------------------------ thresholds


def test_single_object_threshold_is_strict():
    rec = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    assert G.evaluate_image(rec, [det("bench", score=0.31)]) == (True, "")
    ok, reason = G.evaluate_image(rec, [det("bench", score=0.3)])  # upstream keeps score > 0.3
    assert not ok and reason == "expected bench>=1, found 0"
    assert G.evaluate_image(rec, [det("cow")])[0] is False


def test_threshold_compared_in_float32_as_upstream():
    """mmdet's scores are float32; upstream's ``bbox[i][ordering, 4] > 0.3`` compares them with
    the threshold in float32. float32(0.3) = 0.300000011920929, above the float64 0.3: a float64
    comparison would keep it, upstream does not. The next float32 up is kept."""
    rec = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    s = float(np.float32(0.3))
    assert s > 0.3  # the float64 comparison capo used to make
    assert G.evaluate_image(rec, [det("bench", score=s)])[0] is False
    up = float(np.nextafter(np.float32(0.3), np.float32(1)))
    assert G.evaluate_image(rec, [det("bench", score=up)])[0] is True
    # counting's 0.9 likewise
    two = [det("clock", score=0.95), det("clock", score=float(np.float32(0.9)))]
    assert G.evaluate_image(COUNT_TWO_CLOCKS, two)[1] == "expected clock>=2, found 1"


def test_tied_scores_keep_the_later_detection_first():
    """Upstream orders a class's detections by ``np.argsort(scores)[::-1]``: of tied scores the
    later row comes first. With one object required, the later of two tied dogs is the one
    whose position is checked: dog B (right of the cat) first -> "right of" holds."""
    cat = det("cat", box=(40, 0, 60, 20), score=0.9)
    dog_left = det("dog", box=(0, 0, 20, 20), score=0.8)
    dog_right = det("dog", box=(80, 0, 100, 20), score=0.8)
    rec = {"tag": "position", "prompt": "a photo of a dog right of a cat",
           "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    assert G.select_objects([dog_left, dog_right], "position")["dog"] == [dog_right, dog_left]
    assert G.evaluate_image(rec, [cat, dog_left, dog_right])[0] is True
    assert G.evaluate_image(rec, [cat, dog_right, dog_left])[0] is False  # now the left dog is later


def test_result_record_is_upstreams_schema():
    """``evaluate_image``'s dict: metadata is json.dumps of the metadata line (capo's id/index
    keys dropped), details the kept boxes as [x0, y0, x1, y1, score] per class in
    object_names.txt order."""
    rec = {"id": "00007", "index": 7, "prompt_id": "00007", "tag": "two_object",
           "include": [{"class": "dog", "count": 1}, {"class": "bench", "count": 1}], "prompt": "a photo of a dog and a bench"}
    objects = G.select_objects([det("dog", box=(1, 2, 3, 4), score=0.5), det("bench", box=(5, 6, 7, 8), score=0.75)],
                               "two_object")
    r = G.result_record("out/00007/samples/00000.png", rec, True, "", objects)
    assert r == {"filename": "out/00007/samples/00000.png", "tag": "two_object", "prompt": rec["prompt"],
                 "correct": True, "reason": "",
                 "metadata": '{"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "bench", '
                             '"count": 1}], "prompt": "a photo of a dog and a bench"}',
                 "details": '{"bench": [[5.0, 6.0, 7.0, 8.0, 0.75]], "dog": [[1.0, 2.0, 3.0, 4.0, 0.5]]}'}


def test_counting_uses_threshold_09():
    dets = [det("clock", score=0.95), det("clock", score=0.92), det("clock", score=0.5)]
    # counting: the 0.5 clock is not kept (0.9 threshold) -> exactly 2
    assert G.evaluate_image(COUNT_TWO_CLOCKS, dets) == (True, "")
    # the same detections under any other tag use 0.3: 3 clocks -> the exclude clause fires
    ok, reason = G.evaluate_image({**COUNT_TWO_CLOCKS, "tag": "two_object"}, dets)
    assert not ok and reason == "expected clock<3, found 3"
    # 0.9 is strict too: 0.95 and 0.9 -> one clock
    ok, reason = G.evaluate_image(COUNT_TWO_CLOCKS, [det("clock", score=0.95), det("clock", score=0.9)])
    assert not ok and reason == "expected clock>=2, found 1"


def test_include_count_is_a_lower_bound_without_exclude():
    rec = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
           "prompt": "a photo of a cat and a dog"}
    assert G.evaluate_image(rec, [det("cat"), det("cat"), det("dog")])[0]
    ok, reason = G.evaluate_image(rec, [det("cat")])
    assert not ok and reason == "expected dog>=1, found 0"


def test_at_most_16_objects_per_class():
    rec = {"tag": "counting", "include": [{"class": "person", "count": 16}],
           "exclude": [{"class": "person", "count": 17}], "prompt": "sixteen people"}
    dets = [det("person", box=(i * 20, 0, i * 20 + 10, 10), score=0.99 - i * 0.001) for i in range(20)]
    assert G.evaluate_image(rec, dets) == (True, "")  # 20 detected, 16 kept
    ok, reason = G.evaluate_image(rec, dets, max_objects=20)
    assert not ok and reason == "expected person<17, found 20"
    kept = G.select_objects(dets, "counting")["person"]
    assert [d["score"] for d in kept] == sorted((d["score"] for d in dets), reverse=True)[:16]


def test_overlap_rule_off_by_default_and_greedy_when_set():
    dup = [det("cup", box=(0, 0, 9, 9), score=0.9), det("cup", box=(0, 0, 9, 9), score=0.8),
           det("cup", box=(0, 0, 4, 9), score=0.7)]
    assert len(G.select_objects(dup, "colors")["cup"]) == 3  # max_overlap 1.0: no suppression
    kept = G.select_objects(dup, "colors", nms_threshold=0.5)["cup"]
    # IoU(best, dup) = 1 >= 0.5 dropped; IoU(best, half) = 50/100 = 0.5 >= 0.5 dropped
    assert [d["score"] for d in kept] == [0.9]
    assert [d["score"] for d in G.select_objects(dup, "colors", nms_threshold=0.51)["cup"]] == [0.9, 0.7]


def test_compute_iou_inclusive_pixels():
    assert G.compute_iou((0, 0, 9, 9), (0, 0, 4, 9)) == pytest.approx(0.5)  # areas 100 and 50
    assert G.compute_iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0
    assert G.compute_iou((0, 0, 9, 9), (9, 9, 18, 18)) == pytest.approx(1 / 199)  # one shared pixel


# ------------------------------------------------------------------ position


def test_relative_position_margin_edges():
    # two 10x10 boxes on one row; the margin is 0.1 * (10 + 10) = 2 per axis, and the test
    # dx = (|off| - 2) / |off| < -0.5 holds iff |off| > 4
    b = (100, 0, 110, 10)

    def a_at(offset):
        return (100 + offset, 0, 110 + offset, 10)

    assert G.relative_position(a_at(-4.5), b) == {"left of"}  # just inside
    assert G.relative_position(a_at(-4.0), b) == set()        # on the edge: -0.5 is not < -0.5
    assert G.relative_position(a_at(-3.5), b) == set()        # just outside
    assert G.relative_position(a_at(-1.5), b) == set()        # within the margin: shrunk to 0
    assert G.relative_position(a_at(4.5), b) == {"right of"}
    assert G.relative_position(b, b) == set()
    # margins use the summed sizes along each axis: 30-wide boxes need |off| > 12
    wide_b, wide_a = (100, 0, 130, 10), (100 - 12.5, 0, 130 - 12.5, 10)
    assert G.relative_position(wide_a, wide_b) == {"left of"}
    assert G.relative_position((100 - 11.5, 0, 130 - 11.5, 10), wide_b) == set()


def test_relative_position_diagonals():
    b = (100, 100, 110, 110)
    # offset (-10, -10): shrunk (-8, -8) / 14.14 = -0.566 each -> both relations
    assert G.relative_position((90, 90, 100, 100), b) == {"left of", "above"}
    # offset (-10, -4): shrunk (-8, -2) / 10.77 = (-0.743, -0.186) -> left only
    assert G.relative_position((90, 96, 100, 106), b) == {"left of"}
    # offset (0, +10): below
    assert G.relative_position((100, 110, 110, 120), b) == {"below"}


DOG_RIGHT_OF_BEAR = {"tag": "position", "prompt": "a photo of a dog right of a teddy bear",
                     "include": [{"class": "teddy bear", "count": 1},
                                 {"class": "dog", "count": 1, "position": ["right of", 0]}]}


def test_position_record():
    bear = det("teddy bear", box=(0, 0, 10, 10))
    assert G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, det("dog", box=(4.5, 0, 14.5, 10))]) == (True, "")
    ok, reason = G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, det("dog", box=(3.5, 0, 13.5, 10))])
    assert not ok and reason == "expected dog right of target, found  target"
    ok, reason = G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, det("dog", box=(-20, 0, -10, 10))])
    assert not ok and reason == "expected dog right of target, found left of target"
    ok, reason = G.evaluate_image(DOG_RIGHT_OF_BEAR, [det("dog", box=(40, 0, 50, 10))])
    assert not ok and reason == "expected teddy bear>=1, found 0\nno target for dog to be right of"


def test_position_uses_only_the_most_confident_objects():
    bear = det("teddy bear", box=(0, 0, 10, 10))
    good = det("dog", box=(40, 0, 50, 10), score=0.9)
    bad = det("dog", box=(-40, 0, -30, 10), score=0.8)
    assert G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, good, bad])[0]  # count 1: only the 0.9 dog
    assert not G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, {**good, "score": 0.7}, bad])[0]
    # targets are the `count` most confident objects of the target clause too: a second,
    # less confident bear to the dog's right does not matter
    far_bear = det("teddy bear", box=(80, 0, 90, 10), score=0.5)
    assert G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, good, far_bear])[0]
    # ...but when it is the most confident one, it is the target
    assert not G.evaluate_image(DOG_RIGHT_OF_BEAR, [bear, good, {**far_bear, "score": 0.99}])[0]


# ------------------------------------------------------------------ colour


BLUE_HYDRANT = {"tag": "colors", "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}],
                "prompt": "a photo of a blue fire hydrant"}


def test_colour_match_and_mismatch():
    assert G.evaluate_image(BLUE_HYDRANT, [det("fire hydrant", color="blue")]) == (True, "")
    ok, reason = G.evaluate_image(BLUE_HYDRANT, [det("fire hydrant", color="red")])
    assert not ok and reason == "expected blue fire hydrant>=1, found 0 blue; and 1 red"
    # only the `count` most confident objects are classified: the blue one ranks second
    dets = [det("fire hydrant", score=0.9, color="red"), det("fire hydrant", score=0.8, color="blue")]
    assert not G.evaluate_image(BLUE_HYDRANT, dets)[0]


def test_color_fn_called_only_without_a_colour():
    calls = []

    def color_fn(image, d):
        calls.append(d["score"])
        return "blue"

    dets = [det("fire hydrant", score=0.9)]
    assert G.evaluate_image(BLUE_HYDRANT, dets, image="IMG", color_fn=color_fn)[0]
    assert calls == [0.9]
    G.evaluate_image(BLUE_HYDRANT, [det("fire hydrant", color="blue")], color_fn=color_fn)
    assert calls == [0.9]
    with pytest.raises(ValueError, match="color_fn"):
        G.evaluate_image(BLUE_HYDRANT, dets)


def test_colour_attribution_and_position_after_colour():
    rec = {"tag": "color_attr", "prompt": "a photo of a purple wine glass and a black apple",
           "include": [{"class": "wine glass", "count": 1, "color": "purple"},
                       {"class": "apple", "count": 1, "color": "black"}]}
    assert G.evaluate_image(rec, [det("wine glass", color="purple"), det("apple", color="black")])[0]
    ok, reason = G.evaluate_image(rec, [det("wine glass", color="black"), det("apple", color="purple")])
    assert not ok and reason.count("\n") == 1


def test_exclude_clauses_are_ored():
    rec = {"tag": "x", "prompt": "p", "include": [{"class": "cat", "count": 1}],
           "exclude": [{"class": "dog", "count": 1}, {"class": "cow", "count": 2}]}
    assert G.evaluate_image(rec, [det("cat"), det("cow")])[0]
    ok, reason = G.evaluate_image(rec, [det("cat"), det("dog")])
    assert not ok and reason == "expected dog<1, found 1"
    assert not G.evaluate_image(rec, [det("cat"), det("cow"), det("cow")])[0]


def test_bad_detections_are_reported():
    with pytest.raises(ValueError, match="detection 1 lacks score"):
        G.evaluate_image(BLUE_HYDRANT, [det("cat"), {"class": "dog", "box": (0, 0, 1, 1)}])


# ------------------------------------------------------------------ summary


def test_overall_is_unweighted_mean_of_tags():
    rows = ([{"tag": "single_object", "correct": True, "prompt_id": "0"}]
            + [{"tag": "counting", "correct": c, "prompt_id": f"1-{i}"} for i, c in enumerate([True, False, False])])
    s = G.summarize(rows)
    assert s["tags"] == {"single_object": 1.0, "counting": pytest.approx(1 / 3)}
    assert s["overall"] == pytest.approx((1 + 1 / 3) / 2)
    assert s["image_accuracy"] == pytest.approx(0.5)
    assert s["counts"]["counting"] == [1, 3]
    assert set(s["missing_tags"]) == set(G.TAGS) - {"single_object", "counting"}


def test_summary_prompt_accuracy_any_image():
    rows = [{"tag": t, "correct": c, "prompt_id": p} for t, c, p in
            [("colors", False, "a"), ("colors", True, "a"), ("colors", False, "b"), ("colors", False, "b")]]
    s = G.summarize(rows)
    assert s["prompts"] == 2 and s["prompt_accuracy"] == 0.5 and s["overall"] == 0.25


# ------------------------------------------------------------------ metadata


@needs_bench
def test_load_metadata_real_file_and_object_names():
    recs = load_metadata(BENCH / "geneval" / "evaluation_metadata.jsonl")
    assert len(recs) == 553
    assert {r["tag"] for r in recs} == set(G.TAGS)
    names = (BENCH / "geneval" / "object_names.txt").read_text().splitlines()
    assert tuple(n.strip() for n in names) == G.OBJECT_NAMES
    classes = {c["class"] for r in recs for c in r["include"]}
    assert classes <= set(G.OBJECT_NAMES)


@pytest.mark.parametrize("line,match", [
    ("{not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"tag": "x", "prompt": "p"}', "'include' must be a non-empty list"),
    ('{"tag": "x", "prompt": "p", "include": [{"class": "cat", "count": 0}]}', r"include\[0\].count"),
    ('{"tag": "x", "prompt": "p", "include": [{"class": "cat", "count": 1, "position": ["left of", 0]}]}',
     "position"),
    ("", "blank line"),
])
def test_load_metadata_malformed_line_is_named(tmp_path, line, match):
    good = json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"})
    path = tmp_path / "meta.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(ValueError, match=match) as e:
        load_metadata(path)
    assert f"{path}:3" in str(e.value)


def test_name_aliases():
    assert G.to_geneval_name("mouse") == "computer mouse"
    assert G.to_geneval_name("Dining_Table") == "dining table"
    assert G.to_geneval_name("tvmonitor") == "tv"
    assert G.to_geneval_name("traffic light") == "traffic light"
    assert G.to_geneval_name("Triangle") == "triangle"


# ------------------------------------------------------------------ colour crop / classifier


def test_color_crop_masks_onto_grey_and_crops():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, :] = (255, 0, 0)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:4] = True
    crop = np.asarray(G.color_crop(img, (2, 2, 6, 6), mask))
    assert crop.shape == (4, 4, 3)
    assert tuple(crop[0, 0]) == (255, 0, 0)          # inside the mask
    assert tuple(crop[3, 3]) == (0x99, 0x99, 0x99)   # outside: grey #999
    with pytest.raises(ValueError, match="mask shape"):
        G.color_crop(img, (0, 0, 4, 4), np.zeros((4, 4), dtype=bool))


def test_clip_color_classifier_zero_shot_logic():
    """A fake CLIP whose text embedding is the one-hot of the colour word and whose image
    embedding is the one-hot of the closest of three primaries: the classifier must pick the
    colour of the masked object, not of the background."""
    import torch

    prim = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

    class FakeCLIP(torch.nn.Module):
        def encode_text(self, tokens):
            return tokens.float()

        def encode_image(self, x):
            mean = x.mean(dim=(2, 3))  # B x 3
            out = torch.zeros(len(x), len(G.COLORS))
            for i, m in enumerate(mean):
                out[i, G.COLORS.index(("red", "green", "blue")[int(m.argmax())])] = 1
            return out

    def tokenizer(texts):
        rows = []
        for t in texts:
            assert "fire hydrant" in t or t.endswith("object")
            c = next(c for c in G.COLORS if f" {c} " in f" {t.replace('-colored', ' ')} ")
            rows.append([float(c == k) for k in G.COLORS])
        return torch.tensor(rows)

    def preprocess(pil):
        return torch.from_numpy(np.asarray(pil, dtype=np.float32)).permute(2, 0, 1)

    color_fn = G.clip_color_classifier(model=FakeCLIP(), preprocess=preprocess, tokenizer=tokenizer, device="cpu")
    img = np.zeros((20, 20, 3), dtype=np.uint8)
    img[:] = prim["green"]
    img[5:10, 5:10] = prim["blue"]
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    assert color_fn(img, det("fire hydrant", box=(4, 4, 11, 11), mask=mask)) == "blue"
    assert color_fn(img, det("fire hydrant", box=(0, 0, 20, 20))) == "green"  # no mask: whole crop


def test_clip_color_classifier_missing_weights_names_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)RN50.*capo-test-missing.*ViT-L-14"):
        G.clip_color_classifier("RN50", pretrained="capo-test-missing", device="cpu")


# ------------------------------------------------------------------ detectors


def test_mask2bbox_is_exclusive_at_the_far_edge():
    m = np.zeros((2, 6, 8), dtype=bool)
    m[0, 1:3, 2:5] = True
    assert G.mask2bbox(m).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]


def test_mask2former_instances_hand_made():
    import torch

    # 2 queries, 3 classes (+ no-object); masks at 1/4 of a 16x16 padded input, image 8x12 valid
    cls = torch.tensor([[0.0, 8.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    masks = torch.full((2, 4, 4), -100.0)
    masks[0, :, :2] = 100.0  # left half of the padded input
    dets = G.mask2former_instances(cls, masks, valid_hw=(16, 12), orig_hw=(16, 12),
                                   class_names=["a", "b", "c"], min_score=0.3)
    assert len(dets) == 1
    d = dets[0]
    p = float(torch.softmax(cls[0], -1)[1])
    assert d["class"] == "b" and d["score"] == pytest.approx(p, rel=1e-4)  # mask score ~ 1
    assert d["mask"].shape == (16, 12) and d["mask"].dtype == bool
    x0, y0, x1, y1 = d["box"]
    assert (x0, y0, x1, y1) == (0, 0, 8, 16)


def _tiny_mask2former():
    import torch
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    coco = [n if n not in ("computer mouse", "tv remote", "computer keyboard") else n.split()[-1]
            for n in G.OBJECT_NAMES]  # HF/COCO spellings: mouse, remote, keyboard
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                            num_attention_heads=2, num_queries=8, num_labels=80,
                            id2label=dict(enumerate(coco)), label2id={n: i for i, n in enumerate(coco)})
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():  # make one class confident so something survives post-processing
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[64] = 10.0  # COCO index 64: mouse
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return model, processor


def test_mask2former_detector_end_to_end_random_init():
    pytest.importorskip("scipy", reason="transformers' Mask2FormerForUniversalSegmentation needs scipy")
    model, processor = _tiny_mask2former()
    detector = G.get_detector("mask2former", model=model, processor=processor, device="cpu",
                              min_score=0.0, max_per_image=5, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(70, 100), (50, 50), (40, 60)]]
    out = detector(images)
    assert len(out) == 3
    assert "computer mouse" in detector.class_names and len(detector.class_names) == 80
    for img, dets in zip(images, out):
        assert 0 < len(dets) <= 5
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            assert set(d) == {"class", "box", "score", "mask"}
            assert d["class"] in detector.class_names
            assert len(d["box"]) == 4 and all(isinstance(v, float) for v in d["box"])
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= img.shape[1] and 0 <= y0 <= y1 <= img.shape[0]
            assert 0.0 <= d["score"] <= 1.0
            assert d["mask"].shape == img.shape[:2] and d["mask"].dtype == bool
        assert any(d["class"] == "computer mouse" for d in dets)
        # the output plugs straight into the rules
        rec = {"tag": "single_object", "include": [{"class": "computer mouse", "count": 1}], "prompt": "p"}
        ok, _ = G.evaluate_image(rec, dets, threshold=-1.0)
        assert ok


def test_mmdet_backend_error_or_parse():
    try:
        import mmdet  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"capo\[mmdet\]") as e:
            G.get_detector("mmdet", checkpoint="x.pth")
        assert "mask2former_swin-s-p4-w7-224" in str(e.value)
    bbox = [np.zeros((0, 5), dtype=np.float32) for _ in G.OBJECT_NAMES]
    bbox[1] = np.array([[1, 2, 3, 4, 0.8], [0, 0, 1, 1, 0.1]], dtype=np.float32)
    segm = [[] for _ in G.OBJECT_NAMES]
    segm[1] = [np.ones((5, 5), dtype=bool), np.zeros((5, 5), dtype=bool)]
    dets = G.parse_mmdet_result((bbox, segm))
    assert len(dets) == 1 and dets[0]["class"] == "bicycle" and dets[0]["box"] == (1, 2, 3, 4)
    assert dets[0]["score"] == pytest.approx(0.8) and dets[0]["mask"].all()


def test_detector_registry_hook():
    with pytest.raises(KeyError, match="did you mean 'mask2former'"):
        G.get_detector("mask2formr")

    @G.register_detector("toy-test")
    def toy(label="circle"):
        return lambda images: [[det(label)] for _ in images]

    try:
        assert G.get_detector("toy-test", label="square")([None, None]) == [[det("square")]] * 2
        with pytest.raises(ValueError, match="already registered"):
            G.register_detector("toy-test")(lambda: None)
    finally:
        del G.DETECTORS["toy-test"]


def test_mask2former_missing_weights_offline_names_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)capo-test/no-such-mask2former.*Offline"):
        G.get_detector("mask2former", model_id_or_path="capo-test/no-such-mask2former", device="cpu")
