"""`capo online` (issue #13): offline vs online runs at an equal budget, end to end on a tiny
model, and the report's numbers and verdicts agree with the evaluation they come from."""

import re

import pytest

from capo import artifacts
from capo.stages import online


def test_labels_and_round_checkpoints(tmp_path):
    assert online.run_label("capo", 1) == "capo-r1"
    assert online.run_label("capo", 3) == "capo-r3" == online.run_label("capo", 3, 3)
    assert online.run_label("dpo", 3, 1) == "dpo-r3-round1"
    ck = str(tmp_path / "run" / "round-3" / "train" / "final")
    assert online.round_checkpoints(ck, 3) == [str(tmp_path / "run" / f"round-{r}" / "train" / "final")
                                               for r in (1, 2, 3)]
    assert online.round_checkpoints("x/final", 1) == ["x/final"]


def test_config_refuses_budgets_that_do_not_split():
    from capo.config import ConfigError

    with pytest.raises(ConfigError, match="cannot be split into >= 2 per round for rounds \\[3\\]"):
        online.OnlineConfig(n=8, rounds=[1, 2, 3])
    with pytest.raises(ConfigError, match="lacks 1"):
        online.OnlineConfig(rounds=[2, 3])
    with pytest.raises(ConfigError, match="no grid for objective"):
        online.OnlineConfig(objectives=["capo", "ipo"])


@pytest.mark.slow
def test_online_end_to_end_equal_budget_and_report(tiny_chain, tmp_path):
    from capo.tables import Evidence

    cfg = online.OnlineConfig(
        out=str(tmp_path / "run"), reports=str(tmp_path / "reports"), bases=[str(tiny_chain / "base")],
        rewards=["toy-bright", "toy-red"], roles=["MPS", "VQA"], gold=None, rounds=[1, 2],
        train_prompts=str(tiny_chain / "prompts.txt"), train_limit=4, n=4, val_limit=4, val_n=1, eval_limit=4,
        eval_n=1, n_t=1, betas={"capo": [5.0], "dpo": [5.0]}, steps=4, batch_size=2, lr=1e-3, seeds=[0, 1], quiet=True)
    res = online.run(cfg)
    b = tmp_path / "run" / "base"
    # equal budget: R = 2 trains round 1 on the first 2 images per prompt and samples 2 more; steps split 2 + 2
    it = artifacts.read_json(b / "runs" / "capo-r2.s1" / artifacts.MANIFEST)
    assert [r["steps"] for r in it["rounds"]] == [2, 2]
    assert artifacts.read_json(b / "pairs" / "frs-n2" / artifacts.MANIFEST)["config"]["n"] == 2
    assert artifacts.read_json(b / "runs" / "capo-r2.s1" / "round-2" / "samples" / artifacts.MANIFEST)["config"]["n"] == 2
    # every run and every earlier round is evaluated, per seed
    ev = Evidence(b / "eval")
    assert sorted(ev.seeds) == ["capo-r1", "capo-r2", "capo-r2-round1", "dpo-r1", "dpo-r2", "dpo-r2-round1"]
    assert all(sorted(v) == [0, 1] for v in ev.seeds.values())
    # the report's cells are the evaluation's two-level statistics, and a verdict only where the CI decides
    md = (tmp_path / "reports" / "online.md").read_text()
    st = ev.stats(["capo-r1", "capo-r2", "dpo-r1", "dpo-r2"], ("win", "toy-red")).arms
    row = next(x for x in md.splitlines() if x.startswith("| CaPO online, R = 2 |"))
    m = st["capo-r2"]
    assert f"{m['mean']:.1f} ±{(m['ci_high'] - m['ci_low']) / 2:.1f}" in row
    h2h = [x for x in md.splitlines() if x.startswith("| capo-r2 vs capo-r1 |") or x.startswith("| capo-r2 vs dpo-r2 |")]
    assert len(h2h) == 2  # no gold: one metric (the mean over the rewards) per comparison
    for line in h2h:
        lo, hi = map(float, re.search(r"\[([-+.\d]+), ([-+.\d]+)\]", line).groups())
        want = "reproduced" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
        assert line.rstrip(" |").endswith(want)
    assert (tmp_path / "reports" / "online_base.png").stat().st_size > 1000
    assert res["bases"][str(tiny_chain / "base")]["models"] == 12
