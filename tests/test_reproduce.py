"""`capo reproduce` end to end on a tiny model with toy rewards, and `capo tables` on its output."""

import json
import re

import pytest
from click.testing import CliRunner

from capo.stages import reproduce
from capo.tables import PAPER, paper_table
from cli import main


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tiny_chain, tmp_path):
    cfg = reproduce.ReproduceConfig(
        preset="tiny", out=str(tmp_path / "exp"), bases=[str(tiny_chain / "base")], rewards=["toy-bright", "toy-red"],
        roles=["MPS", "VQA"], gold=None, train_prompts=str(tiny_chain / "prompts.txt"), train_limit=4, n=4,
        n_ablation=[3], val_prompts="shapes:geneval@val", val_limit=6, val_n=1,
        eval_prompts="shapes:geneval@test", eval_limit=6, eval_n=1, steps=2, batch_size=2, lr=1e-3,
        betas={"dpo": [5.0, 50.0], "ipo": [5.0, 50.0], "capo": [5.0, 50.0]}, widen=1, biases=[1.0, 1.5],
        seeds=[0, 1], quiet=True)
    res = reproduce.run(cfg)
    reports = tmp_path / "exp" / "reports"
    md = (reports / "tables.md").read_text()
    for n in range(1, 6):
        assert f"## Table {n}." in md
    base = "base"  # the tiny base's slug is its directory name
    ev = json.loads((tmp_path / "exp" / base / "eval" / "results.json").read_text())
    labels = set(ev["results"])
    for s in (0, 1):  # every cell with both training seeds
        for o in ("dpo", "ipo", "capo"):
            assert {f"{o}-single-toy-bright.s{s}", f"{o}-single-toy-red.s{s}", f"{o}-sum.s{s}", f"{o}-soup.s{s}",
                    f"{o}-frs.s{s}"} <= labels
        assert {f"dpo-human.s{s}", f"capo-frs-b1.0.s{s}", f"capo-frs-b1.5.s{s}", f"capo-frs-n3.s{s}"} <= labels
    # validation and test prompts are disjoint; the sweep records its grid and selection
    sw = json.loads((tmp_path / "exp" / base / "sweep" / "capo-frs" / "sweep.json").read_text())
    test_ids = {p.split("/", 1)[1] for p in
                __import__("pandas").read_parquet(tmp_path / "exp" / base / "eval" / "results" / "base" /
                                                  "winrate_per_image.parquet")["prompt_id"]}
    assert test_ids and not (set(sw["val_prompt_ids"]) & test_ids)
    assert sw["selected"]["beta"] in [p["beta"] for p in sw["grid"]] and len(sw["grid"]) >= 2
    # the seed-0 model of a cell is the sweep's selected checkpoint
    assert ev["models"]["capo-frs.s0"] == sw["selected"]["checkpoint"]
    for f in ("tables.csv", "tables.tex", "claims.md"):
        assert (reports / f).stat().st_size > 200
    claims = (reports / "claims.md").read_text()
    for k in ("C1", "C2", "C3", "C4", "C5", "C6"):
        assert f"| {k}:" in claims
    assert "\\toprule" in (reports / "tables.tex").read_text()
    assert "Paper (SDXL)" in md and "61.1" in md  # --with-paper numbers
    for f in ("winrate_base.png", "pareto_base.png", "grid_base.png"):
        assert (reports / f).stat().st_size > 1000
    bench = json.loads((tmp_path / "exp" / base / "bench" / "results.json").read_text())
    assert "geneval" in bench["results"]["capo-frs.s1"] and "compbench_delta" in bench["results"]["capo-frs.s0"]
    # a second run reuses every finished stage and rewrites byte-identical tables and claims
    before = {f: (reports / f).read_bytes() for f in ("tables.md", "tables.csv", "claims.md")}
    again = reproduce.run(cfg)
    assert again["seconds"] < res["seconds"]
    assert {f: (reports / f).read_bytes() for f in before} == before
    r = CliRunner().invoke(main, ["tables", "--root", str(tmp_path / "exp"), "--rewards", "toy-bright,toy-red",
                                  "--roles", "MPS,VQA"])
    assert r.exit_code == 0 and "## Table 5." in r.output and "Paper" not in r.output


def test_paper_tables_hold_the_papers_numbers():
    t1 = paper_table(1, "SDXL")
    assert "**61.1**" in t1 and "**83.1**" in t1  # CaPO's best MPS->MPS and VILA->VILA, bold
    t5 = paper_table(5, "SDXL")
    assert re.search(r"b1\.5 \| 61\.2 \| 54\.6 \| 79\.2", t5)
    assert PAPER["table3"]["CaPO+SDXL"][6] == 0.59  # GenEval overall 0.55 -> 0.59


def test_unknown_preset_lists_known():
    r = CliRunner().invoke(main, ["reproduce", "--preset", "nope"])
    assert r.exit_code == 2 and "known: demo, full, quick" in r.output


def test_table3_rows_name_the_base_model_and_bold_the_better():
    from capo.tables import table3

    tags = {"single_object": 1.0, "two_object": 0.5, "counting": 0.25, "colors": 0.5, "position": 0.0, "color_attr": 0.0}
    bench = {"base": "base", "models": {"base": "shapes-sd3", "capo-frs": "runs/t/final"},
             "n_prompts": {"shapes:geneval": 10}, "n_per_prompt": 4,
             "results": {"base": {"geneval": {"overall": 0.375, "tags": tags}},
                         "capo-frs": {"geneval": {"overall": 0.5, "tags": tags | {"counting": 1.0}},
                                      "geneval_delta": {"overall": {"delta": 0.125, "ci_low": 0.0, "ci_high": 0.25}}}}}
    md = table3(bench)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"shapes-sd3", "CaPO+shapes-sd3"}  # as the paper's "SDXL" / "CaPO+SDXL"
    assert "**0.500**" in rows["CaPO+shapes-sd3"] and "**0.375**" not in rows["shapes-sd3"]
    assert "GenEval overall +0.125 [+0.000, +0.250]" in md
