"""`capo pairs` end to end on small tables, and its errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from capo.cli import main

LOG3 = math.log(3)


def table(path, rows, cols=("prompt_id", "sample_id", "mps")):
    df = pd.DataFrame(rows, columns=list(cols))
    if str(path).endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_best_worst_end_to_end_hand_values(tmp_path):
    # prompt a: R = [0, log 3, 0] -> R_ca = [3/8, 3/4, 3/8]: x+ = s1, x- = s0 (first of the tie), gap 3/8
    # prompt b: R = [1, 1 + log 3] -> [1/4, 3/4]: x+ = s1, x- = s0, gap 1/2
    t = table(tmp_path / "r.csv", [("a", 0, 0.0), ("a", 1, LOG3), ("a", 2, 0.0), ("b", 0, 1.0), ("b", 1, 1 + LOG3)])
    r = invoke("pairs", t, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    pairs = pd.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert pairs[["prompt_id", "pos_sample_id", "neg_sample_id"]].values.tolist() == [["a", 1, 0], ["b", 1, 0]]
    assert np.allclose(pairs["target_gap"], [0.375, 0.5])
    assert np.allclose(pairs["pos_mps"], [0.75, 0.75]) and np.allclose(pairs["neg_mps"], [0.375, 0.25])
    cand = pd.read_parquet(tmp_path / "out" / "candidates.parquet")
    assert np.allclose(cand.groupby("prompt_id")["mps_ca"].mean(), 0.5)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["complete"] and m["counts"]["pairs"] == 2 and m["config"]["selector"] == "best-worst"
    assert len(m["inputs"]["rewards_table_0"]["sha256"]) == 64 and "torch" in m["versions"]


def test_rerun_is_skipped_and_different_run_refused(tmp_path):
    t = table(tmp_path / "r.parquet", [("a", 0, 0.0), ("a", 1, 1.0)])
    out = tmp_path / "out"
    assert invoke("pairs", t, "--out", out).exit_code == 0
    before = (out / "pairs.parquet").stat().st_mtime_ns
    r = invoke("pairs", t, "--out", out)
    assert r.exit_code == 0 and "nothing to do" in r.output
    assert (out / "pairs.parquet").stat().st_mtime_ns == before
    r = invoke("pairs", t, "--out", out, "--seed", "5")  # another config -> another run
    assert r.exit_code == 2 and "different pairs run" in r.output
    assert (out / "pairs.parquet").stat().st_mtime_ns == before  # nothing lost
    assert invoke("pairs", t, "--out", out, "--seed", "5", "--overwrite").exit_code == 0


def multi_reward_tables(tmp_path, P=30, N=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = [(f"p{p}", k) for p in range(P) for k in range(N)]
    t1 = table(tmp_path / "mps.parquet", [(p, k, rng.normal()) for p, k in ids])
    t2 = table(tmp_path / "vqa.parquet", [(p, k, rng.uniform(0.01, 0.99)) for p, k in ids],
               cols=("prompt_id", "sample_id", "vqa"))
    return t1, t2


def test_frs_and_sum_over_two_tables(tmp_path):
    t1, t2 = multi_reward_tables(tmp_path)
    r = invoke("pairs", t1, t2, "--out", tmp_path / "frs", "--selector", "frs", "--transform", "vqa=logit",
               "--draws", "3", "--seed", "1")
    assert r.exit_code == 0, r.output
    p = pd.read_parquet(tmp_path / "frs" / "pairs.parquet")
    assert (p["pos_sample_id"] != p["neg_sample_id"]).all() and (p["target_gap"] > 0).all()
    assert np.allclose(p["target_gap"], (p["pos_mps"] + p["pos_vqa"]) / 2 - (p["neg_mps"] + p["neg_vqa"]) / 2)
    cand = pd.read_parquet(tmp_path / "frs" / "candidates.parquet").set_index(["prompt_id", "sample_id"])
    assert cand.loc[list(zip(p.prompt_id, p.pos_sample_id)), "in_pos_set"].all()
    assert cand.loc[list(zip(p.prompt_id, p.neg_sample_id)), "in_neg_set"].all()
    # the logit transform was applied: vqa_ca equals calibration of logit(p)
    from capo.method import calibrate
    raw = pd.read_parquet(t2).sort_values(["prompt_id", "sample_id"])
    expect = calibrate(raw["vqa"].to_numpy().reshape(30, 8), transform="logit")
    assert np.allclose(cand.sort_index()["vqa_ca"].to_numpy().reshape(30, 8), expect)
    r = invoke("pairs", t1, t2, "--out", tmp_path / "sum", "--selector", "sum", "--weights", "1,3")
    assert r.exit_code == 0, r.output
    s = pd.read_parquet(tmp_path / "sum" / "pairs.parquet")
    assert len(s) == 30 and np.allclose(s["pos_score"], 0.25 * s["pos_mps"] + 0.75 * s["pos_vqa"])


def test_unequal_sample_counts_per_prompt(tmp_path):
    t = table(tmp_path / "r.csv", [("a", 0, 0.0), ("a", 1, 2.0), ("b", 0, 0.0), ("b", 1, 1.0), ("b", 2, 5.0)])
    r = invoke("pairs", t, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    p = pd.read_parquet(tmp_path / "o" / "pairs.parquet")
    assert p[["prompt_id", "pos_sample_id", "neg_sample_id"]].values.tolist() == [["a", 1, 0], ["b", 2, 0]]


@pytest.mark.parametrize(
    "rows,cols,args,match",
    [
        ([("a", 0, 1.0)], ("prompt_id", "idx", "mps"), [], "missing column(s) sample_id"),
        ([("a", 0, 1.0), ("a", 1, float("nan")), ("b", 0, 1.0), ("b", 1, float("inf"))], None, [],
         "(prompt_id='a', sample_id=1, mps), (prompt_id='b', sample_id=1, mps)"),
        ([("a", 0, 1.0), ("a", 1, 2.0), ("b", 0, 1.0)], None, [], "fewer than 2 samples (calibration needs N >= 2): 'b'"),
        ([("a", 0, 1.0), ("a", 1, 2.0)], None, ["--selector", "fsr"], "did you mean frs"),
        ([("a", 0, 1.0), ("a", 1, 2.0)], None, ["--selector", "pareto"], "known: best-worst, frs, sum"),
        ([("a", 0, 1.0), ("a", 1, 2.0)], None, ["--rewards", "hps"], "hps not found; available: mps"),
        ([("a", 0, 1.0), ("a", 0, 2.0)], None, [], "repeat a (prompt_id, sample_id)"),
        ([("a", 0, 1.0), ("a", 1, 2.0)], None, ["--transform", "mps=softmax"], "unknown BT transform"),
    ],
)
def test_errors(tmp_path, rows, cols, args, match):
    t = table(tmp_path / "r.csv", rows, cols=cols or ("prompt_id", "sample_id", "mps"))
    r = invoke("pairs", t, "--out", tmp_path / "o", *args)
    assert r.exit_code == 2
    assert match in r.output
    assert not (tmp_path / "o" / "pairs.parquet").exists()


def test_error_tables_from_different_samples(tmp_path):
    t1 = table(tmp_path / "a.csv", [("a", 0, 1.0), ("a", 1, 2.0)])
    t2 = table(tmp_path / "b.csv", [("a", 0, 1.0), ("a", 2, 2.0)], cols=("prompt_id", "sample_id", "vqa"))
    r = invoke("pairs", t1, t2, "--out", tmp_path / "o", "--selector", "sum")
    assert r.exit_code == 2 and "not in every reward table" in r.output


def test_error_best_worst_needs_one_reward_and_corrupt_file(tmp_path):
    t1, t2 = multi_reward_tables(tmp_path, P=2, N=3)
    r = invoke("pairs", t1, t2, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "best-worst selects on one reward" in r.output
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a parquet file")
    r = invoke("pairs", bad, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "cannot read table" in r.output


def test_every_command_is_built():
    r = CliRunner().invoke(main, ["--help"])
    assert "not built yet" not in r.output
    for name in ("generate", "score", "train", "merge", "eval", "compare", "tables", "reproduce", "world"):
        sub = CliRunner().invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "not built" not in sub.output, name
