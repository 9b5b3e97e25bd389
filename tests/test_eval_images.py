"""`capo eval images=DIR`: image folders capo did not write, in the benchmarks' own layouts,
and GenEval's per-image ``results.jsonl`` in upstream's schema."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from capo.eval.image_sets import ImageSetError, detect_layout, read_image_set
from capo.stages import evaluate


@pytest.fixture(scope="module")
def own_run(tiny_chain, tmp_path_factory):
    """capo's own GenEval run of the tiny shapes base (3 prompts x 2 images)."""
    out = tmp_path_factory.mktemp("own") / "e"
    res = evaluate.run(evaluate.EvalConfig(models=[f"base={tiny_chain / 'base'}"], out=str(out), limit=3, n=2,
                                           benchmarks=["geneval"], rewards=[]))
    return out, res


def _upstream_layout(own: Path, dest: Path) -> Path:
    """The same images as upstream's generation script lays them out: <i:05d>/metadata.jsonl and
    <i:05d>/samples/<k:05>.png, no capo manifest (copied, renamed)."""
    src = own / "samples" / "shapes-geneval" / "base" / "images"
    for d in sorted(src.iterdir()):
        (dest / d.name / "samples").mkdir(parents=True)
        shutil.copy(d / "metadata.jsonl", dest / d.name / "metadata.jsonl")
        for f in sorted((d / "samples").iterdir()):
            shutil.copy(f, dest / d.name / "samples" / f"{int(f.stem):05}.png")
    return dest


def upstream_summary(path: Path) -> dict:
    """Upstream ``evaluation/summary_scores.py`` re-derived from its file: pandas reads the
    JSONL; per tag (groupby 'tag', sort=False) the mean of 'correct'; overall = np.mean of the
    task scores; prompts counted by 'metadata'."""
    df = pd.read_json(path, orient="records", lines=True)
    tasks = [g["correct"].mean() for _, g in df.groupby("tag", sort=False)]
    return {"overall": float(np.mean(tasks)), "images": len(df), "prompts": len(df.groupby("metadata")),
            "correct_prompts": float(df.groupby("metadata")["correct"].any().mean())}


def test_geneval_layout_without_manifest_scores_as_capos_own_run(own_run, tmp_path):
    own, res = own_run
    folder = _upstream_layout(own, tmp_path / "upstream")
    assert detect_layout(folder) == "geneval" and not (folder / "manifest.json").exists()
    res2 = evaluate.run(evaluate.EvalConfig(images=[f"base={folder}"], out=str(tmp_path / "e2"),
                                            benchmarks=["geneval"], detector="shapes", rewards=[]))
    a, b = res["results"]["base"]["geneval"], res2["results"]["base"]["geneval"]
    assert b["overall"] == a["overall"] and b["tags"] == a["tags"] and b["images"] == a["images"] == 6
    # upstream's summary arithmetic on capo's results.jsonl gives the same overall, for both runs
    for run in (own, tmp_path / "e2"):
        rj = run / "results" / "base" / "geneval_results.jsonl"
        up = upstream_summary(rj)
        assert up["overall"] == pytest.approx(a["overall"], abs=1e-12)
        assert up["images"] == 6 and up["prompts"] == 3
    line = json.loads((own / "results" / "base" / "geneval_results.jsonl").read_text().splitlines()[0])
    assert set(line) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    meta = json.loads(line["metadata"])
    assert "id" not in meta and "prompt_id" not in meta and meta["prompt"] == line["prompt"]
    assert Path(line["filename"]).is_file()
    for boxes in json.loads(line["details"]).values():
        assert all(len(b) == 5 for b in boxes)  # mmdet rows: x0, y0, x1, y1, score


def test_missing_and_unreadable_images_named_before_any_model(own_run, tmp_path):
    own, _ = own_run
    folder = _upstream_layout(own, tmp_path / "up")
    first = sorted(folder.iterdir())[0]
    (first / "samples" / "00001.png").unlink()
    (sorted(folder.iterdir())[1] / "samples" / "00000.png").write_bytes(b"not a png")
    (first / "samples" / "notes.txt").write_text("x")
    with pytest.raises(ImageSetError) as e:
        read_image_set(folder, n=2)
    msg = str(e.value)
    assert "missing images" in msg and "unreadable images" in msg and "extra files" in msg and "notes.txt" in msg
    with pytest.raises(ImageSetError, match="unreadable"):
        evaluate.run(evaluate.EvalConfig(images=[f"a={folder}"], out=str(tmp_path / "e"), benchmarks=["geneval"],
                                         detector="shapes", rewards=[]))
    assert not (tmp_path / "e").exists()  # nothing written


def test_table_and_compbench_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a red apple_000000.png", "a red apple_000001.png", "a blue car_000000.png"):
        (tmp_path / "cb" / "samples").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "cb" / "samples" / name)
    assert detect_layout(tmp_path / "cb") == "t2i-compbench"
    s = read_image_set(tmp_path / "cb")
    assert sorted((r["prompt_id"], r["sample_id"]) for r in s.rows) == [
        ("a blue car", 0), ("a red apple", 0), ("a red apple", 1)]
    prompts = [{"id": "0000", "prompt": "a red apple"}]
    with pytest.raises(ImageSetError, match="1 unknown prompts: 'a blue car'"):
        read_image_set(tmp_path / "cb", prompts=prompts)
    # a prompt,path table (CSV), paths relative to the table
    (tmp_path / "t.csv").write_text("prompt,path\na red apple,cb/samples/a red apple_000000.png\n"
                                    "a red apple,cb/samples/a red apple_000001.png\n")
    t = read_image_set(tmp_path / "t.csv", prompts=prompts, n=2)
    assert [r["sample_id"] for r in t.rows] == [0, 1] and t.records[0]["prompt_id"] == "0000"
    with pytest.raises(ImageSetError, match="expected 3"):
        read_image_set(tmp_path / "t.csv", prompts=prompts, n=3)
    (tmp_path / "bad.csv").write_text("text,file\nx,y\n")
    with pytest.raises(ImageSetError, match="columns prompt and path"):
        read_image_set(tmp_path / "bad.csv")


def test_images_mode_config_errors(tmp_path):
    from capo.config import ConfigError

    with pytest.raises(ConfigError, match="one of the two"):
        evaluate.EvalConfig(out=str(tmp_path), models=["a"], images=["b=x"], detector="shapes")
    with pytest.raises(ConfigError, match="name the detector"):
        evaluate.EvalConfig(out=str(tmp_path), images=["b=x"])
    with pytest.raises(ConfigError, match="divergence"):
        evaluate.EvalConfig(out=str(tmp_path), images=["b=x"], detector="shapes", benchmarks=["divergence"])
    with pytest.raises(ConfigError, match="nothing is sampled"):
        evaluate.EvalConfig(out=str(tmp_path), images=["b=x"], detector="shapes", compile="inductor")


def test_checkpoints_follow_the_umask_and_a_truncated_one_leaves_no_eval_dir(tiny_chain, tmp_path):
    import os
    import stat

    from click.testing import CliRunner

    from capo import artifacts
    from capo.stages import train
    from capo.cli import main

    out = tmp_path / "t"
    train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), out=str(out),
                                steps=1, batch_size=2, checkpoint_every=1, keep_checkpoints=1, quiet=True))
    files = [p for p in (out / "checkpoints").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)  # accelerate's save_state writes these 0600
    assert {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files} == {oct(0o666 & ~artifacts._UMASK)}
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out / "final", ckpt)
    w = ckpt / "denoiser.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    r = CliRunner().invoke(main, ["eval", f"models=base={tiny_chain / 'base'},t={ckpt}", f"out={tmp_path / 'e'}",
                                  "limit=2", "n=1", "benchmarks=geneval"])
    assert r.exit_code == 2 and "re-create it" in r.output, r.output
    assert not (tmp_path / "e").exists()


class _BrightVQA:
    """Answers 'yes' to every question on a tile whose mean brightness is above 127."""

    name, model_id, exact = "bright-test", None, False

    def vqa(self, image, question):
        return "yes" if np.asarray(image.convert("L")).mean() > 127 else "no"


def test_dpg_bench_on_grid_folders(tmp_path, monkeypatch):
    """Two DPG-Bench folders (<item id>.png 2x2 grids), scored with a stand-in VQA: a bright tile
    answers yes to all, a dark one no. Items a (3 questions) and c (2 questions, its second
    run in the CSV) are scored; b: item 'b' needs parent 5 of question 4 -> with all-yes it
    scores 1. Model 'bright' has 4 bright tiles per grid, 'half' 2 of 4: per prompt 1.0 vs 0.5."""
    from capo.eval import dpg_bench

    monkeypatch.setitem(dpg_bench.VQAS, "blip-vqa", lambda **kw: _BrightVQA())
    csv = Path(__file__).parent / "data" / "dpg" / "tiny_dpg_bench.csv"
    monkeypatch.setattr(dpg_bench, "DPG_CSV_GIT_BLOB", dpg_bench.git_blob_sha1(csv.read_bytes()))  # pin the fixture

    def grid_folder(name, bright_tiles):
        d = tmp_path / name
        tiles = [np.full((16, 16, 3), 255 if k < bright_tiles else 0, np.uint8) for k in range(4)]
        dpg_bench.write_grid_folder({i: tiles for i in ("a", "b", "c")}, d)
        return d

    a, b = grid_folder("bright", 4), grid_folder("half", 2)
    res = evaluate.run(evaluate.EvalConfig(images=[f"bright={a}", f"half={b}"], out=str(tmp_path / "e"),
                                           benchmarks=["dpg"], detector="mask2former", dpg_vqa="blip-vqa",
                                           dpg_questions=str(csv), rewards=[]))
    assert res["results"]["bright"]["dpg"]["overall"] == 1.0
    assert res["results"]["half"]["dpg"]["overall"] == pytest.approx(0.5)
    assert "variant" in res["results"]["half"]["dpg"]["protocol"]
    d = res["results"]["half"]["dpg_delta"]["overall"]
    assert d["delta"] == pytest.approx(-0.5) and d["ci_high"] == pytest.approx(-0.5)


def test_compbench_images_scored_per_category_with_the_protocol_of_what_ran(tmp_path, monkeypatch):
    """T2I-CompBench's layout (samples/<prompt>_<idx:06d>.png) with compbench_prompts naming the
    category; the category scorer (a stand-in: mean brightness / 255) and its protocol entry
    reach the results and the card."""
    from conftest import SHARED

    from capo.eval import t2i_compbench as T

    if not (SHARED / "benchmarks").is_dir():
        pytest.skip("no shared benchmark copies")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "benchmarks").symlink_to(SHARED / "benchmarks")
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "cache"))
    seen = {}

    def fake_scorer(category, **kw):
        seen[category] = kw

        def score(images, prompts):
            return [float(np.asarray(im).mean() / 255) for im in images]

        score.protocol = {**T.protocol_entry(category, detector="owlv2", parser="rules"), "metric": "stand-in"}
        return score

    monkeypatch.setattr(T, "category_scorer", fake_scorer)
    prompts = [line.strip() for line in (SHARED / "benchmarks" / "t2i-compbench" / "color_val.txt").read_text().splitlines()[:2]]
    grey = {prompts[0]: 51, prompts[1]: 204}
    images = {p: [np.full((8, 8, 3), v, np.uint8)] * 2 for p, v in grey.items()}
    T.write_upstream_layout(tmp_path / "cb", prompts, [images[p] for p in prompts])
    res = evaluate.run(evaluate.EvalConfig(images=[f"m={tmp_path / 'cb'}"], out=str(tmp_path / "e"),
                                           benchmarks=["compbench"], compbench_prompts=["t2i-compbench:color"],
                                           detector="mask2former", rewards=[]))
    assert res["results"]["m"]["compbench"]["categories"]["color"] == pytest.approx((0.2 + 0.8) / 2)
    card = res["protocol"]["compbench"]["color"]
    assert card["metric"] == "stand-in" and card["exact"] is False
    assert card["parser"] == "rules" and card["status"].startswith("variant")
    assert "color" in seen


def test_capo_layout_writes_upstreams_layouts(own_run, tmp_path):
    from click.testing import CliRunner

    from capo.cli import main

    own, _ = own_run
    samples = own / "samples" / "shapes-geneval" / "base"
    r = CliRunner().invoke(main, ["layout", str(samples), "geneval", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    g = read_image_set(tmp_path / "g", n=2)
    assert g.layout == "geneval" and g.n_images == 6
    # the same pixels, the same metadata lines
    mine = read_image_set(samples)
    pix = lambda s: sorted(np.asarray(Image.open(r["path"])).tobytes() for r in s.rows)  # noqa: E731
    assert pix(g) == pix(mine)
    assert sorted(json.dumps(r["include"]) for r in g.records) == sorted(json.dumps(r["include"]) for r in mine.records)
    r = CliRunner().invoke(main, ["layout", str(samples), "t2i-compbench", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    t = read_image_set(tmp_path / "t")
    assert t.layout == "t2i-compbench" and t.n_images == 6 and sorted(x["sample_id"] for x in t.rows) == list(range(6))
    r = CliRunner().invoke(main, ["layout", str(samples), "dpg-bench", str(tmp_path / "d")])
    assert r.exit_code == 2 and "tiles 4 images per prompt" in r.output
    r = CliRunner().invoke(main, ["layout", str(samples), "geneval", str(tmp_path / "g")])
    assert r.exit_code == 2 and "not empty" in r.output


def test_reward_win_rates_between_two_tables_of_images(tmp_path):
    """Two prompt,path tables (no capo manifest), paired by prompt and image number; toy-bright
    scores mean brightness: folder B is brighter on 3 of 4 pairs and tied on 1 -> 87.5 %."""
    rows = {"a": [], "b": []}
    levels = {("p1", 0): (50, 90), ("p1", 1): (60, 60), ("p2", 0): (10, 200), ("p2", 1): (100, 120)}
    for (prompt, k), (va, vb) in levels.items():
        for side, v in (("a", va), ("b", vb)):
            f = tmp_path / side / f"{prompt}-{k}.png"
            f.parent.mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(f)
            rows[side].append({"prompt": f"a photo of {prompt}", "path": f"{side}/{f.name}", "sample_id": k})
    for side in rows:
        (tmp_path / f"{side}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[side]))
    res = evaluate.run(evaluate.EvalConfig(images=[f"a={tmp_path / 'a.jsonl'}", f"b={tmp_path / 'b.jsonl'}"],
                                           out=str(tmp_path / "e"), benchmarks=["winrate"], detector="mask2former",
                                           rewards=["toy-bright"], n_boot=200))
    w = res["results"]["b"]["winrate"]["toy-bright"]
    assert w["win_rate"] == 87.5 and w["n_images"] == 4
    assert res["protocol"]["source"] == "images" and res["protocol"]["images_per_prompt"] == 2
    # the same through `capo compare --images`, gated on the interval
    from click.testing import CliRunner

    from capo.cli import main

    r = CliRunner().invoke(main, ["compare", "--images", f"a={tmp_path / 'a.jsonl'}", f"b={tmp_path / 'b.jsonl'}",
                                  "--benchmarks", "winrate", "--rewards", "toy-bright", "--detector", "mask2former",
                                  "--out", str(tmp_path / "c"), "--fail-if", "winrate.toy-bright:ci_low > 50"])
    assert r.exit_code == 1 and "REGRESSION: winrate.toy-bright:ci_low" in r.output and "Protocol:" in r.output
    # a folder that lacks one of the other's images is refused before any reward loads
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows["b"][:3]))
    with pytest.raises(ImageSetError, match="do not hold the same images"):
        evaluate.run(evaluate.EvalConfig(images=[f"a={tmp_path / 'a.jsonl'}", f"c={tmp_path / 'c.jsonl'}"],
                                         out=str(tmp_path / "e2"), benchmarks=["winrate"], detector="mask2former",
                                         rewards=["toy-bright"]))
