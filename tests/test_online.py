"""`capo online` (issue #13): offline vs online runs at an equal budget, end to end on a tiny
model, and the report's numbers and verdicts agree with the evaluation they come from."""

import json
import re

import pytest

from capo import artifacts
from capo.experiments import online


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
    from capo.report.evidence import Evidence

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


def test_grpo_cells_config_rules():
    from capo.config import ConfigError

    kw = dict(train_limit=48, n=12, steps=24)
    online.OnlineConfig(grpo=["sum", "calibrated:shapes-pref"], group_size=6, **kw)
    with pytest.raises(ConfigError, match="advantage 'mean' is not one of"):
        online.OnlineConfig(grpo=["mean"], group_size=6, **kw)
    with pytest.raises(ConfigError, match="reward 'shapes-gold' is not among rewards"):
        online.OnlineConfig(grpo=["sum:shapes-gold"], group_size=6, **kw)
    with pytest.raises(ConfigError, match="does not divide n = 12"):
        online.OnlineConfig(grpo=["sum"], group_size=5, **kw)
    with pytest.raises(ConfigError, match="cannot be rolled out in steps = 24 rollouts of whole groups of 4"):
        online.OnlineConfig(grpo=["sum"], group_size=4, train_limit=10, n=12, steps=24)
    with pytest.raises(ConfigError, match="names a cell twice"):
        online.OnlineConfig(grpo=["sum", "sum"], group_size=6, **kw)
    with pytest.raises(ConfigError, match="grpo_options: advantage set by the comparison"):
        online.OnlineConfig(grpo=["sum"], group_size=6, grpo_options={"advantage": "sum"}, **kw)
    with pytest.raises(ConfigError, match="grpo_options: 'no_such_key' is not a capo train key"):
        online.OnlineConfig(grpo=["sum"], group_size=6, grpo_options={"no_such_key": 1}, **kw)
    # GRPO keys are left out of comparisons without GRPO cells (their configs read as before)
    from capo.config import to_dict

    assert "group_size" not in to_dict(online.OnlineConfig()) and "grpo" not in to_dict(online.OnlineConfig())


@pytest.mark.slow
def test_grpo_cells_equal_budget_and_report(tiny_chain, tmp_path):
    """GRPO cells beside CaPO offline: same generated images, optimizer steps and denoiser passes
    (from the runs' own manifests), the gold logged on every rollout and never trained on, the
    report's head-to-head verdicts those of their intervals."""
    from capo.experiments import online_grpo
    from capo.report.evidence import Evidence

    cfg = online.OnlineConfig(
        out=str(tmp_path / "run"), reports=str(tmp_path / "reports"), bases=[str(tiny_chain / "base")],
        rewards=["toy-bright", "toy-red"], roles=["MPS", "VQA"], gold="toy-gold", objectives=["capo"], rounds=[1],
        train_prompts=str(tiny_chain / "prompts.txt"), train_limit=4, n=4, val_limit=4, val_n=1, eval_limit=4,
        eval_n=1, n_t=1, betas={"capo": [5.0]}, steps=4, batch_size=4, lr=1e-3, seeds=[0, 1], quiet=True,
        grpo=["sum", "calibrated"], grpo_betas=[0.01, 0.1], group_size=2, grpo_options={"grpo_steps": 1})
    online.run(cfg)
    b = tmp_path / "run" / "base"
    bud = online_grpo.budgets(cfg, b)
    # 4 prompts x 4 images; 4 steps; CaPO 4 x 4 pairs x 2 images = GRPO 16 images x 1 chain step x 2 (CFG)
    assert bud["capo-r1"] == {"images": 16, "steps": 4, "passes": 32, "reference": 32, "sampling": None}
    for c in ("grpo-sum", "grpo-calibrated"):
        assert {k: bud[c][k] for k in ("images", "steps", "passes", "reference")} == {
            "images": 16, "steps": 4, "passes": 32, "reference": 32}
        run1 = b / "runs" / f"{c}.s1"
        m = artifacts.read_json(run1 / artifacts.MANIFEST)
        assert m["config"]["advantage"] == c.split("-")[1] and m["config"]["monitor_rewards"] == ["toy-gold"]
        assert m["chain"]["rewards"] == ["toy-bright", "toy-red"]  # the gold is never trained on
        lines = [json.loads(x) for x in (run1 / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("monitor_toy-gold" in x for x in lines)
    sel = artifacts.read_json(b / "selected.json")
    assert sel["grpo-sum"]["grid"] == [0.01, 0.1] and sel["grpo-sum"]["beta"] in (0.01, 0.1)
    ev = Evidence(b / "eval")
    assert sorted(ev.seeds) == ["capo-r1", "grpo-calibrated", "grpo-sum"]
    assert all(sorted(v) == [0, 1] for v in ev.seeds.values())
    md = (tmp_path / "reports" / "grpo.md").read_text()
    assert "| grpo-sum | 16 | 4 | 32 | 32 |" in md
    h2h = [x for x in md.splitlines() if re.match(r"\| grpo-\S+ vs \S+ \|", x)]
    assert {x.split(" | ")[0] for x in h2h} == {"| grpo-sum vs capo-r1", "| grpo-calibrated vs capo-r1",
                                                 "| grpo-calibrated vs grpo-sum"}
    assert len(h2h) == 6  # the trained rewards' mean and the gold, per comparison
    for line in h2h:
        lo, hi = map(float, re.search(r"\[([-+.\d]+), ([-+.\d]+)\]", line).groups())
        want = "reproduced" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
        assert line.rstrip(" |").endswith(want)
    # the answers count every comparison of each question (2 cells x 2 metrics vs CaPO; 1 x 2 between advantages)
    assert "**Does GRPO beat CaPO (offline, and online) at this budget?** " in md and " of 4 comparisons decided" in md
    assert "**Does the calibrated advantage beat the weighted sum?** " in md and " of 2 comparisons decided" in md
    assert (tmp_path / "reports" / "grpo_frontier_base.png").stat().st_size > 1000
    assert (tmp_path / "reports" / "grpo_overopt_base.png").stat().st_size > 1000
    assert not (tmp_path / "reports" / "online.md").exists()


def test_running_mean_by_hand():
    from capo.experiments.online_grpo import running_mean

    assert running_mean([2.0, 4.0, 6.0, 8.0], 2).tolist() == [2.0, 3.0, 5.0, 7.0]
    assert running_mean([1.0, 2.0, 6.0], 4).tolist() == [1.0, 1.5, 3.0]  # fewer than k at the start
