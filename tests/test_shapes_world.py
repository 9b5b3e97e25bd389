"""The shapes world's core: scenes, renderer, grammar, detector, scorers and hidden truth.

Hand-worked numbers are derived in the docstrings; everything is seeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from capo.worlds.shapes import evaluator as E
from capo.worlds.shapes import grammar as G
from capo.worlds.shapes import truth as T
from capo.worlds.shapes.render import render, render_batch
from capo.worlds.shapes.scene import BACKGROUND, COLORS, SHAPES, Obj, Scene

RED, BLUE = COLORS["red"], COLORS["blue"]


def _attrs(d):
    return (d["class"], d["color"], d["texture"], d["size"])


def _truth(scene):
    return sorted((o.shape, o.color, o.texture, o.size) for o in scene.objects)


def _centre(d):
    """Box centre of a detection, pixels."""
    x0, y0, x1, y1 = d["box"]
    return ((x0 + x1) / 2, (y0 + y1) / 2)


# --------------------------------------------------------------------------- renderer

def test_render_is_deterministic_and_batch_consistent():
    rng = np.random.default_rng(0)
    scenes = [G.random_scene(rng) for _ in range(8)]
    a, b = render_batch(scenes), render_batch(scenes)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
    assert np.array_equal(a, b)
    assert np.array_equal(a[3], render(scenes[3]))
    assert np.array_equal(render(Scene(())), np.broadcast_to(np.uint8(BACKGROUND), (32, 32, 3)))


def test_render_antialiases_edges_by_supersampling():
    """A large solid red square (half-extent 0.19 * 32 = 6.08 px) centred at x = 16.58 px has
    its left edge at 10.5 px. Column 10's four sub-pixel samples sit at 10.125, 10.375,
    10.625, 10.875: two inside, so the pixel is half red, half background:
    222 + 0.5 * (214 - 222) = 218, 222 + 0.5 * (39 - 222) = 130.5, 222 + 0.5 * (40 - 222) = 131."""
    img = render(Scene((Obj("square", "red", "solid", "large", 16.58 / 32, 0.5),)))
    assert np.allclose(img[16, 10].astype(float), [218, 130.5, 131], atol=0.51)
    assert np.array_equal(img[16, 12], np.uint8(RED))  # interior: pure colour
    assert np.array_equal(img[16, 9], np.uint8(BACKGROUND))  # outside: pure background
    circle = render(Scene((Obj("circle", "blue", "solid", "large", 0.5, 0.5),))).astype(float)
    t = (circle - BACKGROUND) / (np.asarray(BLUE) - BACKGROUND)  # coverage per pixel and channel
    partial = ((t > 0.05) & (t < 0.95)).all(-1)
    assert partial.sum() >= 12  # the rim of a 12 px disc is anti-aliased


def test_textures_draw_darker_marks_in_the_object_colour():
    """Striped = horizontal stripes with period 4 px, dark (0.5 * colour) where the row's
    position in the period is < 0.5: rows 0-1 of every 4 at 32 px."""
    img = render(Scene((Obj("square", "green", "striped", "large", 0.5, 0.5),))).astype(float)
    green = np.asarray(COLORS["green"], float)
    assert np.allclose(img[16, 16], 0.5 * green, atol=0.6)  # row 16: 16 mod 4 = 0, dark
    assert np.allclose(img[18, 16], green, atol=0.6)  # row 18: light
    dotted = render(Scene((Obj("square", "green", "dotted", "large", 0.5, 0.5),))).astype(float)
    dark = np.isclose(dotted[10:22, 10:22], 0.5 * green, atol=0.6).all(-1)
    assert dark.mean() == pytest.approx(0.25)  # 2x2 dots on a 4x4 grid


# --------------------------------------------------------------------------- detector

def test_detector_recovers_held_out_scenes():
    """>= 99% of 400 random scenes (seed unused elsewhere) are read back exactly: every
    object found with the right shape, colour, texture and size, nothing extra."""
    rng = np.random.default_rng(12345)
    scenes = [G.random_scene(rng) for _ in range(400)]
    images = render_batch(scenes)
    exact, centre_err = 0, []
    for scene, image in zip(scenes, images):
        dets = E.detect(image)
        exact += sorted(map(_attrs, dets)) == _truth(scene)
        for o in scene.objects:
            centre_err.append(min(math.dist(_centre(d), (o.x * 32, o.y * 32)) for d in dets))
    assert exact / len(scenes) >= 0.99
    assert np.percentile(centre_err, 99) < 0.5  # box centres within half a pixel
    assert all(0.0 <= d["score"] <= 1.0 for d in E.detect(images[0]))


def test_detector_ignores_specks_and_degrades_gracefully():
    rng = np.random.default_rng(7)
    scene = Scene((Obj("triangle", "orange", "dotted", "large", 0.3, 0.4),
                   Obj("circle", "purple", "striped", "small", 0.75, 0.7)))
    clean = render(scene)
    specked = clean.copy()
    specked[2:4, 28:30] = (0, 0, 0)  # a 2x2 speck, below MIN_AREA
    assert sorted(map(_attrs, E.detect(specked))) == _truth(scene)
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    assert sorted(map(_attrs, E.detect(noisy))) == _truth(scene)
    x = clean.astype(float)
    for axis in (0, 1):  # a strong blur: [0.3, 0.4, 0.3] along both axes
        x = 0.3 * np.roll(x, 1, axis) + 0.4 * x + 0.3 * np.roll(x, -1, axis)
    blurred = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    clean_scores = [d["score"] for d in E.detect(clean)]
    blurred_scores = [d["score"] for d in E.detect(blurred)]
    assert min(clean_scores) > 0.95
    assert len(blurred_scores) == 2 and max(blurred_scores) < min(clean_scores)
    assert E.detect(np.full((32, 32, 3), BACKGROUND, np.uint8)) == []


def test_geneval_relative_position_hand_worked():
    """GenEval: offset of centres shrunk by 0.1 * (sum of sizes) per axis, over the offset's length.
    A (0,0,4,4) vs B (10,0,14,4): offset (-10, 0), shrink 0.8 -> (-9.2, 0) / 10 -> left of.
    A centred (2,2) vs B centred (5,5), both 4 wide: offset (-3,-3), shrunk (-2.2,-2.2) / 4.24
    = -0.52 on both axes -> left of and above. A barely shifted from B: shrunk to 0 -> nothing."""
    assert E.relative_position((0, 0, 4, 4), (10, 0, 14, 4)) == {"left of"}
    assert E.relative_position((10, 0, 14, 4), (0, 0, 4, 4)) == {"right of"}
    assert E.relative_position((0, 0, 4, 4), (3, 3, 7, 7)) == {"left of", "above"}
    assert E.relative_position((0, 10, 4, 14), (0, 0, 4, 4)) == {"below"}
    assert E.relative_position((0, 0, 4, 4), (0.2, 0, 4.2, 4)) == set()
    # CompBench: A left of B needs B's centre to the right, dominating, boxes barely overlapping
    assert E.compbench_position("left of", (0, 0, 4, 4), (10, 1, 14, 5)) == 1.0
    assert E.compbench_position("left of", (0, 0, 4, 4), (5, 9, 9, 13)) == 0.0  # mostly below
    assert E.compbench_position("next to", (0, 0, 0.1, 0.1), (0.5, 0.6, 0.6, 0.7)) == pytest.approx((150 / 512) / 0.6)


# --------------------------------------------------------------------------- grammar

def test_prompts_follow_benchmark_phrasing():
    records = {r["prompt"]: r for tag in G.TAGS if tag != "complex" for r in G.all_records(tag)}
    assert records["a photo of three circles"] == {
        "tag": "counting", "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 4}], "prompt": "a photo of three circles"}
    assert records["a photo of a circle right of a square"]["include"] == [
        {"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["right of", 0]}]
    assert records["a photo of an orange square"]["include"] == [{"class": "square", "count": 1, "color": "orange"}]
    assert records["a striped circle and a dotted square"]["category"] == "texture"
    assert records["a diamond on the bottom of a triangle"]["include"][1]["position"] == ["below", 0]
    assert records["one circle and two squares"]["exclude"] == [{"class": "circle", "count": 2},
                                                                {"class": "square", "count": 3}]
    assert len(G.all_records("single_object")) == len(SHAPES)
    complex_record = G.sample_record("complex", np.random.default_rng(0))
    n_attrs = sum(k in c for c in complex_record["include"] for k in ("color", "texture", "size"))
    assert n_attrs in (2, 3) and "position" in complex_record["include"][1]
    assert complex_record["prompt"].startswith("the ")


@pytest.mark.parametrize("tag", G.TAGS)
def test_every_tag_yields_scenes_that_pass_its_scorers(tag):
    """Records of every tag: words in VOCAB, short enough; their sampled scenes, rendered and
    detected, pass GenEval's rule and score 1.0 by CompBench's (which tests both ways round:
    grammar against scorers)."""
    rng = np.random.default_rng(100 + G.TAGS.index(tag))
    records = [G.sample_record(tag, rng) for _ in range(25)]
    images = render_batch([G.sample_scene(r, rng) for r in records])
    for record, image in zip(records, images):
        assert record["tag"] == tag and record["include"]
        words = G.tokenize_words(record["prompt"])
        assert set(words) <= set(G.VOCAB) and len(words) <= G.MAX_PROMPT_WORDS
        dets = E.detect(image)
        assert E.score_geneval(record, dets), record["prompt"]
        if tag in G.COMPBENCH_CATEGORIES:
            assert E.score_compbench(record, dets) == 1.0, record["prompt"]
        assert T.alignment(record, image, dets) == pytest.approx(1.0)


def _two(a: Obj, b: Obj):
    return E.detect(render(Scene((a, b))))


def test_violating_scenes_fail():
    """Wrong count, swapped colours, flipped position and partial matches, worked by hand."""
    rng = np.random.default_rng(3)
    three = next(r for r in G.all_records("counting") if r["prompt"] == "a photo of three circles")
    for n in (2, 4):
        scene = G.sample_scene({"include": [{"class": "circle", "count": n}]}, rng)
        assert not E.score_geneval(three, E.detect(render(scene)))
    assert E.score_geneval(three, E.detect(render(G.sample_scene(three, rng))))

    colour = {"tag": "color", "category": "color", "prompt": "a red circle and a blue square",
              "include": [{"class": "circle", "count": 1, "color": "red"},
                          {"class": "square", "count": 1, "color": "blue"}]}
    swapped = _two(Obj("circle", "blue", "solid", "small", 0.25, 0.5),
                   Obj("square", "red", "solid", "small", 0.75, 0.5))
    assert not E.score_geneval(colour, swapped)
    assert E.score_compbench(colour, swapped) == 0.0
    half = _two(Obj("circle", "red", "solid", "small", 0.25, 0.5),
                Obj("square", "red", "solid", "small", 0.75, 0.5))
    assert E.score_compbench(colour, half) == 0.5
    # alignment: clause 1 fully met (credit 1), clause 2's only attribute wrong (credit 0) -> 0.5
    assert T.alignment(colour, None, half) == pytest.approx(0.5)

    left = {"tag": "spatial", "category": "spatial", "prompt": "a circle on the left of a square",
            "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    image = render(G.sample_scene(left, rng))
    assert E.score_geneval(left, E.detect(image)) and E.score_compbench(left, E.detect(image)) == 1.0
    mirrored = E.detect(np.ascontiguousarray(image[:, ::-1]))
    assert not E.score_geneval(left, mirrored)
    assert E.score_compbench(left, mirrored) == 0.5  # both objects found (0.25 + 0.25), relation 0

    numeracy = {"tag": "numeracy", "category": "numeracy", "prompt": "one circle and two squares",
                "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 2}],
                "exclude": [{"class": "circle", "count": 2}, {"class": "square", "count": 3}]}
    one_three = {"include": [{"class": "circle", "count": 1}, {"class": "square", "count": 3}]}
    extra = E.detect(render(G.sample_scene(one_three, rng)))
    # circle: present and exact (0.5 + 0.5) * 1/2; squares: present, wrong count 0.5 * 1/2
    assert E.score_compbench(numeracy, extra) == pytest.approx(0.75)
    assert not E.score_geneval(numeracy, extra)

    texture = {"tag": "texture", "category": "texture", "prompt": "a striped circle and a dotted square",
               "include": [{"class": "circle", "count": 1, "texture": "striped"},
                           {"class": "square", "count": 1, "texture": "dotted"}]}
    dets = _two(Obj("circle", "green", "striped", "large", 0.3, 0.5),
                Obj("square", "green", "solid", "large", 0.72, 0.5))
    assert E.score_compbench(texture, dets) == 0.5 and not E.score_geneval(texture, dets)


def test_crowded_scenes_are_placed_without_overlap():
    """Four large objects (boxes 0.38 wide) only fit near a 2x2 grid; the sampler finds one."""
    rng = np.random.default_rng(8)
    record = {"include": [{"class": "square", "count": 2, "size": "large"},
                          {"class": "diamond", "count": 2, "size": "large", "texture": "dotted"}]}
    for _ in range(5):
        scene = G.sample_scene(record, rng)
        boxes = [o.box for o in scene.objects]
        assert all(min(b) >= 0 and max(b) <= 1 for b in boxes)
        for i, a in enumerate(boxes):
            for b in boxes[:i]:  # separated by at least GAP along some axis
                assert max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= G.GAP - 1e-9
        assert sorted(map(_attrs, E.detect(render(scene)))) == _truth(scene)


def test_prompt_sets_are_deterministic_sized_and_disjoint():
    sets = G.prompt_sets(seed=0)
    assert sets == G.prompt_sets(seed=0)
    assert [r["prompt"] for r in G.prompt_sets(seed=1)["train"][:50]] != [r["prompt"] for r in sets["train"][:50]]
    assert len(sets["train"]) >= 5000
    assert {r["tag"] for r in sets["train"]} == set(G.TAGS)
    geneval = sets["geneval"]
    assert sorted({r["tag"] for r in geneval}) == sorted(G.GENEVAL_TAGS)
    assert all(sum(r["tag"] == t for r in geneval) == 50 for t in G.GENEVAL_TAGS)
    for category in G.COMPBENCH_CATEGORIES:
        held = sets[f"compbench:{category}"]
        assert len(held) == 50 and all(r["category"] == category for r in held)
    held_out = [r for name, rs in sets.items() if name != "train" for r in rs]
    train_prompts = {r["prompt"] for r in sets["train"]}
    assert not train_prompts & {r["prompt"] for r in held_out}
    assert not {G.content_key(r) for r in sets["train"]} & {G.content_key(r) for r in held_out}
    ids = [r["id"] for rs in sets.values() for r in rs]
    assert len(ids) == len(set(ids))
    # tags with many records hold out 50 distinct prompts; small ones half of theirs
    assert len({r["prompt"] for r in geneval if r["tag"] == "color_attr"}) == 50
    assert len({r["prompt"] for r in geneval if r["tag"] == "single_object"}) == len(SHAPES) // 2
    once = G.prompt_sets(seed=0, distinct=True)
    for name, records in once.items():
        prompts = [r["prompt"] for r in records]
        assert len(prompts) == len(set(prompts)) == len({r["prompt"] for r in sets[name]})
        assert [r["id"] for r in records] == [r["id"] for r in sets[name] if r["id"] in {q["id"] for q in records}]


def test_training_pairs_and_captions():
    rng = np.random.default_rng(11)
    pairs = [G.sample_training_pair(rng) for _ in range(300)]
    for prompt, scene in pairs:
        words = G.tokenize_words(prompt)
        assert set(words) <= set(G.VOCAB) and len(words) <= G.MAX_PROMPT_WORDS
        assert 1 <= len(scene.objects) <= 4
    assert sum(not p.startswith(("a photo", "the ")) and " and " in p for p, _ in pairs) > 30  # captions present
    scene = Scene((Obj("circle", "red", "striped", "large", 0.25, 0.3),
                   Obj("square", "blue", "solid", "small", 0.3, 0.8)))
    captions = {G.describe(scene, np.random.default_rng(s)) for s in range(20)}
    assert "a large striped red circle and a small solid blue square" in captions
    assert "a small solid blue square and a large striped red circle" in captions
    assert "a large striped red circle above a small solid blue square" in captions  # clear relation wording
    crowded = Scene((Obj("circle", "red", "striped", "small", 0.15, 0.2),
                     Obj("square", "blue", "dotted", "small", 0.5, 0.5),
                     Obj("triangle", "green", "solid", "small", 0.85, 0.8),
                     Obj("diamond", "yellow", "striped", "small", 0.5, 0.2)))  # 4 x 5 + 3 = 23 words in full
    caption = G.describe(crowded, np.random.default_rng(0))
    assert len(G.tokenize_words(caption)) <= G.MAX_PROMPT_WORDS
    assert all(s in caption for s in ("circle", "square", "triangle", "diamond"))


# --------------------------------------------------------------------------- truth

def test_utility_in_range_and_aesthetic_conflicts_with_alignment():
    rng = np.random.default_rng(21)
    records = [G.sample_record(G.TAGS[i % len(G.TAGS)], rng) for i in range(96)]
    matching = render_batch([G.sample_scene(r, rng) for r in records])
    other = render_batch([G.random_scene(rng) for _ in records])
    noise = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    blank = np.full((1, 32, 32, 3), BACKGROUND, np.uint8)
    images = np.concatenate([matching, other, noise, blank])
    recs = records + records + records[:4] + records[:1]
    u = T.utility_batch(recs, images)
    assert np.all((u >= 0) & (u <= 1))
    align = np.array([T.alignment(r, im) for r, im in zip(recs, images)])
    aes = T.aesthetic(images)
    assert np.allclose(u, T.ALIGNMENT_WEIGHT * align + (1 - T.ALIGNMENT_WEIGHT) * aes)
    assert abs(np.corrcoef(align, aes)[0, 1]) < 0.8
    assert align[:96].mean() > align[96:192].mean() + 0.3

    # "four circles": four small blue circles align; one large red centred circle is prettier
    four_rec = next(r for r in G.all_records("counting") if r["prompt"] == "a photo of four circles")
    four = render(Scene(tuple(Obj("circle", "blue", "solid", "small", x, y)
                              for x, y in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)])))
    one = render(Scene((Obj("circle", "red", "solid", "large", 0.5, 0.5),)))
    assert T.alignment(four_rec, four) == pytest.approx(1.0)
    assert T.alignment(four_rec, one) == pytest.approx(0.25)  # one of four circles, nothing extra
    assert T.aesthetic(one) > T.aesthetic(four) + 0.1
    assert T.utility(four_rec, four) > T.utility(four_rec, one)  # alignment weighs more


def test_aesthetic_terms_move_the_right_way():
    centred = Scene((Obj("circle", "red", "solid", "large", 0.5, 0.5),))
    corner = Scene((Obj("circle", "red", "solid", "large", 0.25, 0.25),))
    blue = Scene((Obj("circle", "blue", "solid", "large", 0.5, 0.5),))
    a, b, c = (render(s) for s in (centred, corner, blue))
    rng = np.random.default_rng(5)
    noisy = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    assert T.aesthetic(a) > T.aesthetic(b)  # balance
    assert T.aesthetic(a) > T.aesthetic(c)  # warmth
    assert T.aesthetic(a) > T.aesthetic(noisy)  # cleanliness
    terms = T.aesthetic_terms(np.stack([a, c]))
    # warmth = (R - B) / 510 + 1/2 on fully inked pixels: red (214 - 40) -> 0.841, blue (38 - 214) -> 0.155
    assert terms["warmth"][0] == pytest.approx(0.841, abs=0.02) and terms["warmth"][1] == pytest.approx(0.155, abs=0.02)
    assert terms["balance"][0] == pytest.approx(1.0, abs=0.01)


def test_simulated_choices_follow_bradley_terry():
    record = G.all_records("single_object")[0]
    assert record["prompt"] == "a photo of a circle"
    img_a = render(Scene((Obj("circle", "red", "solid", "large", 0.5, 0.5),)))
    img_b = render(Scene((Obj("circle", "blue", "solid", "large", 0.3, 0.5),)))
    u_a, u_b = T.utility(record, img_a), T.utility(record, img_b)
    assert 0.03 < u_a - u_b < 0.3  # same alignment, aesthetic differs: a close call
    rng = np.random.default_rng(0)
    n = 1500
    for temperature in (T.TEMPERATURE, 3 * T.TEMPERATURE):
        p = 1 / (1 + math.exp(-(u_a - u_b) / temperature))
        picks = T.simulate_choices([record] * n, np.stack([img_a] * n), np.stack([img_b] * n), rng, noise=temperature)
        assert set(np.unique(picks)) <= {0, 1}
        assert abs((picks == 0).mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    singles = [T.simulate_choice(record, img_a, img_b, rng) for _ in range(40)]
    assert 0 < sum(singles) < 40 or T.preference_probability(u_a, u_b) > 0.99
    assert T.preference_probability(0.7, 0.7) == 0.5
    assert T.preference_probability(1.0, 0.0, temperature=0.1) == pytest.approx(1 / (1 + math.exp(-10)))


def test_truth_parses_text_only_records_and_refuses_prompts_outside_the_grammar():
    import numpy as np

    from capo.worlds.shapes import truth
    from capo.worlds.shapes.parsing import parse_prompt

    img = np.zeros((32, 32, 3), np.uint8)
    text = "a photo of a green square left of a circle"
    assert truth.alignment({"prompt": text}, img) == truth.alignment(parse_prompt(text), img)
    assert np.isfinite(truth.utility({"prompt": text, "prompt_id": "p0"}, img))
    with pytest.raises(ValueError, match="cannot parse 'a cat on the moon'"):
        truth.alignment({"prompt": "a cat on the moon"}, img)
    with pytest.raises(ValueError, match="names no object the shapes world knows"):
        truth.alignment({"prompt_id": "x", "include": []}, img)
