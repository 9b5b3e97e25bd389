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
        eval_prompts="shapes:geneval", eval_limit=2, eval_n=1, steps=2, batch_size=2, lr=1e-3,
        beta={"dpo": 50.0, "ipo": 50.0, "capo": 50.0}, quiet=True)
    res = reproduce.run(cfg)
    md = (tmp_path / "exp" / "reports" / "tables.md").read_text()
    for n in range(1, 6):
        assert f"## Table {n}." in md
    base = "base"  # the tiny base's slug is its directory name
    ev = json.loads((tmp_path / "exp" / base / "eval" / "results.json").read_text())
    labels = set(ev["results"])
    for o in ("dpo", "ipo", "capo"):
        assert {f"{o}-single-toy-bright", f"{o}-single-toy-red", f"{o}-sum", f"{o}-soup", f"{o}-frs"} <= labels
    assert {"dpo-human", "capo-frs-constant", "capo-frs-b1.0", "capo-frs-b1.5", "capo-frs-b2.0"} <= labels
    # a cell of Table 1 is the evaluated win-rate of that run, to one decimal
    w = ev["results"]["capo-single-toy-red"]["winrate"]["toy-red"]["win_rate"]
    row = next(line for line in md.splitlines() if line.startswith("| CaPO |"))
    assert f"{w:.1f}" in row
    assert "Paper (SDXL)" in md and "61.1" in md  # --with-paper numbers
    for f in ("winrate_base.png", "pareto_base.png", "grid_base.png"):
        assert (tmp_path / "exp" / "reports" / f).stat().st_size > 1000
    bench = json.loads((tmp_path / "exp" / base / "bench" / "results.json").read_text())
    assert "geneval" in bench["results"]["capo-frs"] and "compbench_delta" in bench["results"]["capo-frs"]
    # a second run reuses every finished stage
    again = reproduce.run(cfg)
    assert again["seconds"] < res["seconds"]
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
