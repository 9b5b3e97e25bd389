"""DPG-Bench rules on hand-made inputs, worked out from ELLA @ 3c228f1
``dpg_bench/compute_dpg_bench.py``; layout and loader errors; the BLIP variant on a tiny random
model. No network, no real weights."""

from __future__ import annotations

import sys
from collections import defaultdict
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest

from capo.eval import dpg_bench as D
from capo.eval import prompts as P

TINY = Path(__file__).parent / "data" / "dpg" / "tiny_dpg_bench.csv"

# Tile k of every grid is filled with COLORS[k]; the fake VQA reads the colour to know the tile.
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
Y, N = "yes", "no"
# ANSWERS[question] = the answers on tiles 0..3 (a single string: the same on every tile)
ANSWERS = {
    # item a: q1 cat, q2 cat black (parent 1), q3 photo
    "Is there a cat?": [Y, N, Y, N],
    "Is the cat black?": [Y, Y, N, N],
    "Is this a photo?": [Y, Y, "Yes", Y],  # 'Yes' is not 'yes'
    # item b: 1 man, 2 horse, 3 on (1,2), 4 hat red (5, listed before 5), 5 hat (1), 6 one horse (0,3)
    "Is there a man?": [Y, N, Y, Y],
    "Is there a horse?": [Y, Y, N, Y],
    "Is the man on the horse?": Y,
    "Is the hat red?": Y,
    "Does the man wear a hat?": [Y, Y, Y, N],
    "Is there one horse?": [Y, Y, Y, N],
    # item c (its second run of rows; the first run's tree is never asked)
    "Is there a bird?": [Y, Y, Y, N],
    "Is the bird blue?": Y,
    # item d: q2 depends on "1,9"; 9 does not exist but q1 is always 'no', so the scan stops
    "Is there a sun?": N,
    "Is the sun yellow?": Y,
    # item first: its q1 row is the CSV's first row (dropped); q2 depends on 1 -> KeyError
    "Is the dog brown?": Y,
}


def tile_of(image) -> int:
    return COLORS.index(tuple(np.asarray(image.convert("RGB"))[0, 0]))


class FakeVQA:
    name, model_id, exact = "fake", "fake/table", False

    def __init__(self):
        self.calls = []

    def vqa(self, image, question):
        k = tile_of(image)
        self.calls.append((k, question))
        a = ANSWERS[question]
        return a if isinstance(a, str) else a[k]


def tiles(r=8):
    from PIL import Image

    return [Image.new("RGB", (r, r), c) for c in COLORS]


def grids(ids, r=8):
    return {i: D.make_grid(tiles(r)) for i in ids}


# ------------------------------------------------------------------ question file


def test_parse_questions_follows_prepare_dpg_data():
    q = D.parse_questions(TINY)
    # the first data row (first, proposition 1) is skipped; 'c' is reset by its second run
    assert list(q) == ["first", "a", "b", "c", "d"]
    assert q["first"].questions == {2: "Is the dog brown?"}
    assert q["c"].questions == {1: "Is there a bird?", 2: "Is the bird blue?"}
    assert q["b"].dependencies == {1: [0], 2: [0], 3: [1, 2], 4: [5], 5: [1], 6: [0, 3]}
    assert q["d"].dependencies[2] == [1, 9]
    assert q["b"].tuples[5] == "entity - part (man's hat)"
    assert q["a"].category_broad[3] == "global"
    keep = D.parse_questions(TINY, drop_first_row=False)
    assert keep["first"].questions == {1: "Is there a dog?", 2: "Is the dog brown?"}


def test_parse_questions_errors_and_overwrites(tmp_path):
    head = ",".join(D.CSV_COLUMNS) + "\n"
    row = "x,t,k,{pid},{dep},entity,whole,entity - whole (x),{q}\n"
    p = tmp_path / "q.csv"
    # a repeated proposition id overwrites in place (dict assignment), order kept
    p.write_text(head + row.format(pid=9, dep=0, q="skipped") + row.format(pid=1, dep=0, q="Q1")
                 + row.format(pid=2, dep=1, q="Q2") + row.format(pid=1, dep=0, q="Q1 again"))
    assert D.parse_questions(p)["x"].questions == {1: "Q1 again", 2: "Q2"}
    p.write_text(head + row.format(pid=1, dep=0, q="a") + row.format(pid=2, dep="1;3", q="b"))
    with pytest.raises(ValueError, match=r"q.csv:3: dependency '1;3'"):
        D.parse_questions(p)
    p.write_text(head + row.format(pid=1, dep=0, q="a") + row.format(pid=2, dep=1, q=""))
    with pytest.raises(ValueError, match=r"q.csv:3: question_natural_language is empty"):
        D.parse_questions(p)
    p.write_text("item_id,text\nx,y\n")
    with pytest.raises(ValueError, match="missing column"):
        D.parse_questions(p)


def test_csv_pin_and_offline_error(tmp_path, monkeypatch):
    assert D.csv_url() == ("https://raw.githubusercontent.com/TencentQQGYLab/ELLA/"
                           "3c228f1dc6c4d3cad0a47493816151a419f14db3/dpg_bench/dpg_bench.csv")
    assert D.DPG_CSV_GIT_BLOB == "98457fc9901943f51ff9a30367250fc292533bed"
    # git's blob id of b"hello\n" (git hash-object)
    assert D.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError,
                       match=r"(?s)downloads are off.*dpg-bench/dpg_bench.csv.*raw.githubusercontent"):
        D.resolve_csv(cache_dir=tmp_path)
    # an explicit file is checked against the pin unless verify=False
    with pytest.raises(ValueError, match="checksum mismatch.*98457fc9"):
        D.resolve_csv(TINY)
    assert D.resolve_csv(TINY, verify=False) == TINY
    with pytest.raises(FileNotFoundError, match="not found"):
        D.resolve_csv(tmp_path / "nope.csv")


def test_csv_download_is_checked_then_cached(tmp_path, monkeypatch):
    data = TINY.read_bytes()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CAPO_OFFLINE", raising=False)
    urls = []
    monkeypatch.setattr(P, "_fetch", lambda url, timeout=60.0: urls.append(url) or data)
    with pytest.raises(ValueError, match="checksum mismatch"):  # not the pinned file
        D.resolve_csv(cache_dir=tmp_path)
    assert not (tmp_path / D.CSV_LOCAL).exists()
    monkeypatch.setattr(D, "DPG_CSV_GIT_BLOB", D.git_blob_sha1(data))
    monkeypatch.setattr(D, "DPG_CSV_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="expected sha256"):  # both pins are checked when set
        D.resolve_csv(cache_dir=tmp_path)
    import hashlib

    monkeypatch.setattr(D, "DPG_CSV_SHA256", hashlib.sha256(data).hexdigest())
    p = D.resolve_csv(cache_dir=tmp_path)
    assert p == tmp_path / D.CSV_LOCAL and p.read_bytes() == data and urls[-1] == D.csv_url()
    monkeypatch.setattr(P, "_fetch", lambda *a, **k: pytest.fail("cached copy must be used"))
    assert D.load_questions(cache_dir=tmp_path)["a"].questions[1] == "Is there a cat?"


# ------------------------------------------------------------------ the graph rule by hand


def test_dependency_rule_by_hand():
    """Visit order 1..6; parents scanned in order, 0 skipped; zeroing is in place, so it
    propagates forward (6 <- 3 <- 1) but not back to a child listed before its parent (4 <- 5)."""
    deps = {1: [0], 2: [0], 3: [1, 2], 4: [5], 5: [1], 6: [0, 3]}
    raw = {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert D.apply_dependency_rule(raw, deps) == {1: 0, 2: 1, 3: 0, 4: 1, 5: 0, 6: 0}
    assert raw[3] == 1.0  # input untouched
    # same graph, 5 listed before 4: now 4 sees its zeroed parent
    deps2 = {1: [0], 2: [0], 3: [1, 2], 5: [1], 4: [5], 6: [0, 3]}
    assert D.apply_dependency_rule(raw, deps2)[4] == 0
    # a child of a 'no' is zeroed, not skipped: it stays in the denominator
    item = D.DPGItem("x", {1: "p?", 2: "c?"}, {1: [0], 2: [1]},
                     {1: "entity - whole (p)", 2: "attribute - color (c)"})
    s, raw2, ruled = D.tile_scores({1: "no", 2: "yes"}, item)
    assert (s, raw2, ruled) == (0.0, {1: 0.0, 2: 1.0}, {1: 0.0, 2: 0})
    assert D.tile_scores({1: "yes", 2: "no"}, item)[0] == 0.5
    # multiple parents: any zero parent zeroes; a missing parent raises unless an earlier parent was 0
    assert D.apply_dependency_rule({1: 1.0, 2: 0.0, 3: 1.0}, {1: [0], 2: [0], 3: [1, 2]})[3] == 0
    assert D.apply_dependency_rule({1: 0.0, 2: 1.0}, {1: [0], 2: [1, 9]}) == {1: 0.0, 2: 0}
    with pytest.raises(D.MissingParentError, match="proposition 9"):
        D.apply_dependency_rule({1: 1.0, 2: 1.0}, {1: [0], 2: [1, 9]})
    with pytest.raises(KeyError):
        D.apply_dependency_rule({1: 0.0, 2: 1.0}, {1: [0], 2: [9, 1]})


def test_answer_is_exact_yes_and_categories():
    assert [D.answer_score(a) for a in ("yes", "Yes", "yes ", " yes", "yes.", "no", "")] == [1, 0, 0, 0, 0, 0, 0]
    assert D.question_category("entity - whole (bicycle)") == ("entity", "entity - whole")
    assert D.question_category("attribute - color (cat, black)") == ("attribute", "attribute - color")
    assert D.question_category("global - (photo)") == ("global", "global -")
    assert D.question_category("other - count (horse, ==1)") == ("other", "other - count")


# ------------------------------------------------------------------ grid and layout


def test_grid_round_trip_and_crop_boxes():
    assert D.crop_boxes(5) == [(0, 0, 5, 5), (5, 0, 10, 5), (0, 5, 5, 10), (5, 5, 10, 10)]
    assert D.crop_boxes(5, 1) == [(0, 0, 5, 5)]
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 255, (6, 6, 3), dtype=np.uint8) for _ in range(4)]
    g = D.make_grid(ims)
    assert g.size == (12, 12)
    a = np.asarray(g)
    assert (a[:6, 6:] == ims[1]).all() and (a[6:, :6] == ims[2]).all()  # row-major: 1 top-right, 2 bottom-left
    back = D.split_grid(g)
    assert all((np.asarray(t) == im).all() for t, im in zip(back, ims))
    assert [tile_of(t) for t in D.split_grid(D.make_grid(tiles()), pic_num=2)] == [0, 1]
    assert len(D.split_grid(g, pic_num=1, resolution=6)) == 1
    with pytest.raises(ValueError, match="too small"):
        D.split_grid(g, resolution=7)
    with pytest.raises(ValueError, match="square"):
        D.split_grid(np.zeros((12, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="takes 4"):
        D.make_grid(ims[:3])
    with pytest.raises(ValueError, match="one size"):
        D.make_grid(ims[:3] + [np.zeros((4, 4, 3), np.uint8)])


def test_layout_errors_list_everything_before_any_model(tmp_path):
    q = D.parse_questions(TINY)
    D.write_grid_folder({i: tiles() for i in ("a", "d", "zzz")}, tmp_path)
    (tmp_path / "b.png").write_bytes(b"not a png")
    from PIL import Image

    Image.new("RGB", (10, 12)).save(tmp_path / "first.png")  # not a square grid
    Image.new("RGB", (16, 16)).save(tmp_path / "d.jpg")       # a second image for d
    (tmp_path / ".hidden").write_text("ignored")
    (tmp_path / "sub").mkdir()

    def factory():
        raise AssertionError("the VQA model must not be built")

    with pytest.raises(D.DPGLayoutError) as e:
        D.score_images(tmp_path, factory, questions=q)
    msg = str(e.value)
    assert "1 missing image(s): c" in msg
    assert "1 extra image(s) (not an expected prompt id): zzz" in msg
    assert "duplicate images for 'd': d.jpg, d.png" in msg
    assert "2 unreadable or wrongly sized image(s): b (" in msg and "first (" in msg
    with pytest.raises(D.DPGLayoutError, match="no questions in dpg_bench.csv: nope"):
        D.score_images(grids(["a"]), factory, questions=q, expected_ids=["a", "nope"])
    with pytest.raises(D.DPGLayoutError, match="does not exist"):
        D.score_images(tmp_path / "none", factory, questions=q)
    with pytest.raises(ValueError, match="plain file stems"):
        D.write_grid_folder({"x.y": tiles()}, tmp_path)


# ------------------------------------------------------------------ scores, re-derived


def upstream_reference(csv_path, answer_fn, ids, pic_num=4):
    """An independent transcription of upstream's loops (prepare_dpg_data, the crop loop of
    compute_dpg_one_sample, the aggregation of main), on answers from ``answer_fn(k, q)``."""
    import pandas as pd

    qd = {}
    prev = ""
    for i, line in pd.read_csv(csv_path).iterrows():
        if i == 0:
            continue
        cur, qid = line.item_id, int(line.proposition_id)
        dep = [int(d.strip()) for d in line.dependency.split(",")]
        if cur == prev:
            qd[cur]["t"][qid], qd[cur]["d"][qid], qd[cur]["q"][qid] = line.tuple, dep, line.question_natural_language
        else:
            qd[cur] = {"t": {qid: line.tuple}, "d": {qid: dep}, "q": {qid: line.question_natural_language}}
        prev = cur
    scores, cat2 = [], defaultdict(list)
    for key in ids:
        try:
            v = qd[key]
            qs, per_crop = {}, []
            for k in range(pic_num):
                for qid, question in v["q"].items():
                    qs[qid] = float(answer_fn(k, question) == "yes")
                orig = qs.copy()
                for qid, parents in v["d"].items():
                    for p in parents:
                        if p != 0 and qs[p] == 0:
                            qs[qid] = 0
                            break
                per_crop.append(sum(qs.values()) / len(qs))
            scores.append(sum(per_crop) / len(per_crop))
            for qid in v["t"]:
                cat2[v["t"][qid].split("(")[0].strip()].append(orig[qid])
        except Exception:
            continue
    cat1 = defaultdict(list)
    for c, vals in cat2.items():
        cat1[c.split("-")[0].strip()].extend(vals)
    return float(np.mean(scores)), {c: float(np.mean(v)) for c, v in cat1.items()}, \
        {c: float(np.mean(v)) for c, v in cat2.items()}


def fake_answer(k, question):
    a = ANSWERS[question]
    return a if isinstance(a, str) else a[k]


def test_summary_by_hand_and_against_upstream_transcription(tmp_path):
    """Per tile (after the rule), then the mean over 4 tiles:
    a: [1, 1/3 (2 zeroed by 1), 1/3 ('Yes'), 1/3] -> 1/2
    b: [1, 2/6 (1 no: 3, 5 zeroed, 6 via 3; 4 kept, listed before 5), 3/6 (2 no: 3, 6 zeroed),
        3/6 (5, 6 no; 4 zeroed)] -> 7/12
    c: [1, 1, 1, 0 (1 no, 2 zeroed)] -> 3/4;  d: 0 (1 always no, 2 zeroed; 9 never looked up)
    first: KeyError (parent 1 was the dropped first row) -> left out.
    overall = (1/2 + 7/12 + 3/4 + 0) / 4 = 11/24.
    Categories: raw answers on tile 3 only, pooled per question:
    entity [a1 0, b1 1, b2 1, b5 0, c1 0, d1 0] = 1/3; attribute [a2 0, b4 1, c2 1, d2 1] = 3/4;
    global [a3 1]; relation [b3 1]; other [b6 0]."""
    q = D.parse_questions(TINY)
    vqa = FakeVQA()
    ids = ["first", "a", "b", "c", "d"]
    out = D.score_images(grids(ids), vqa, questions=q)
    s = out["summary"]
    assert s["overall"] == pytest.approx(float(F(11, 24)))
    assert s["categories"] == pytest.approx({"entity": 1 / 3, "attribute": 0.75, "global": 1.0,
                                             "relation": 1.0, "other": 0.0})
    assert s["subcategories"]["entity - whole"] == pytest.approx(0.4)
    assert s["subcategories"]["entity - part"] == 0.0
    assert s["counts"]["prompts"] == 4 and s["counts"]["failed"] == 1 and s["counts"]["questions"] == 13
    assert s["counts"]["categories"] == {"entity": 6, "attribute": 4, "global": 1, "relation": 1, "other": 1}
    assert list(s["failed"]) == ["first"] and "KeyError" in s["failed"]["first"]
    assert s["vqa"] == {"name": "fake", "model": "fake/table", "exact": False} and "variant" in s["protocol"]
    by_id = {p["item_id"]: p for p in out["prompts"]}
    assert by_id["b"]["tile_scores"] == pytest.approx([1, 1 / 3, 0.5, 0.5])
    assert by_id["b"]["score"] == pytest.approx(7 / 12) and by_id["first"]["score"] is None
    # every question on every tile is asked (4 tiles x 14 questions), the tree never
    assert len(vqa.calls) == 4 * 14 and not any(c[1] == "Is there a tree?" for c in vqa.calls)
    row = next(r for r in out["rows"] if r["item_id"] == "b" and r["tile"] == 1 and r["proposition_id"] == 6)
    assert (row["raw"], row["score"], row["dependency"], row["category"]) == (1.0, 0, "0,3", "other")
    # the same numbers from a line-by-line transcription of upstream
    ref_overall, ref_l1, ref_l2 = upstream_reference(TINY, fake_answer, ids)
    assert s["overall"] == pytest.approx(ref_overall)
    assert s["categories"] == pytest.approx(ref_l1) and s["subcategories"] == pytest.approx(ref_l2)
    # pic_num=1: the top-left tile only; categories then come from tile 0
    one = D.score_images(grids(ids), FakeVQA(), questions=q, pic_num=1)["summary"]
    ref1 = upstream_reference(TINY, fake_answer, ids, pic_num=1)
    assert one["overall"] == pytest.approx(ref1[0]) and one["categories"] == pytest.approx(ref1[1])
    # the written folder and in-memory tiles give the same result
    D.write_grid_folder({i: tiles() for i in ids}, tmp_path)
    from_folder = D.score_images(tmp_path, FakeVQA(), questions=q)
    from_tiles = D.score_images({i: tiles() for i in ids}, FakeVQA(), questions=q)
    assert from_folder["summary"] == s == from_tiles["summary"]


def test_summarize_input_checks():
    with pytest.raises(ValueError, match="at least one scored prompt.*1 failed: x"):
        D.summarize([{"item_id": "x", "error": "KeyError: 1"}])
    with pytest.raises(ValueError, match="score is nan"):
        D.summarize([{"item_id": "x", "score": float("nan"), "categories": []}])


# ------------------------------------------------------------------ VQA backends


def test_mplug_needs_the_dpg_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    monkeypatch.setitem(sys.modules, "modelscope.pipelines", None)
    with pytest.raises(RuntimeError, match=r"(?s)modelscope is not installed.*pip install 'capo\[dpg\]'"
                                           r".*blip_vqa"):
        D.mplug_vqa()
    with pytest.raises(RuntimeError, match=r"capo\[dpg\]"):
        D.get_vqa("mplug")
    with pytest.raises(KeyError, match="Did you mean 'mplug'"):
        D.get_vqa("mplg")
    seen = []
    m = D.MPlugVQA(pipeline=lambda x: seen.append(x) or {"text": "yes"})
    assert m.vqa("IMG", "Is there a cat?") == "yes" and seen == [{"image": "IMG", "question": "Is there a cat?"}]
    assert D.vqa_protocol(m) == {"name": "mplug", "model": D.MPLUG_MODEL, "exact": True}
    assert D.PROTOCOL["vqa"]["mplug"]["exact"] and not D.PROTOCOL["vqa"]["blip-vqa"]["exact"]


def _tiny_blip(tmp_path):
    from transformers import BlipImageProcessor, BlipProcessor

    from conftest import tiny_blip_vqa

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "is", "there", "a", "the", "?"]
    model, tok = tiny_blip_vqa(tmp_path, words)
    proc = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tok)
    return model, proc, words


def test_blip_variant_end_to_end(tmp_path):
    import torch

    model, proc, words = _tiny_blip(tmp_path)
    q = D.parse_questions(TINY)
    ids = ["a", "b", "c", "d"]
    vqa = D.blip_vqa(model=model, processor=proc, device="cpu", batch_size=8)
    assert (vqa.name, vqa.exact) == ("blip-vqa", False)
    out = D.score_images(grids(ids, r=16), vqa, questions=q, expected_ids=ids)
    s = out["summary"]
    assert s["vqa"] == {"name": "blip-vqa", "model": D.BLIP_VQA_MODEL, "exact": False}
    assert "not comparable" in s["protocol"]
    assert len(out["rows"]) == 4 * 13 and all(isinstance(r["answer"], str) for r in out["rows"])
    for r in out["rows"]:
        assert r["raw"] == float(r["answer"] == "yes")
    assert 0.0 <= s["overall"] <= 1.0
    # batched and one-by-one answers agree
    row = out["rows"][0]
    tile0 = D.split_grid(grids(["a"], r=16)["a"])[0]
    assert vqa.vqa(tile0, row["question"]) == row["answer"]
    # force the first generated token: 'yes' everywhere -> every score 1; 'no' -> 0
    yes, no = words.index("yes"), words.index("no")
    bias = model.text_decoder.cls.predictions.bias
    for tok, want in ((yes, 1.0), (no, 0.0)):
        with torch.no_grad():
            bias.zero_()
            bias[tok] = 1e4
        forced = D.blip_vqa(model=model, processor=proc, device="cpu", generate_kwargs={"max_new_tokens": 1})
        res = D.score_images(grids(ids, r=16), forced, questions=q, expected_ids=ids)
        assert {r["answer"] for r in res["rows"]} == {words[tok]}
        assert res["summary"]["overall"] == want
        assert res["summary"]["categories"] == {c: want for c in ("entity", "attribute", "global", "relation", "other")}


def test_blip_missing_weights_offline_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"(?s)capo-test/no-such-blip.*Offline"):
        D.blip_vqa("capo-test/no-such-blip", device="cpu")
