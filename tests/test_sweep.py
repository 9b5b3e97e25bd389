"""`capo sweep`: beta chosen on validation prompts by a criterion that never reads the gold
reward or the test prompts; the grid widens past an edge; the sigmoid scale."""

import json

import numpy as np
import pytest

from capo import artifacts
from capo.prompts import load_prompts
from capo.stages import sweep

from capo.rewards import REWARDS

for _name in ("a", "b", "gold"):  # reward names of the hand-made validation tables (configs check names)
    if _name not in REWARDS:
        REWARDS.register(_name, lambda **kw: None, "test placeholder")


def _point(wr: dict, div: float = 0.1) -> dict:
    return {"winrate": {r: {"win_rate": v} for r, v in wr.items()}, "divergence": {"mean": div}}


def test_criterion_reads_only_the_criterion_rewards():
    cfg = sweep.SweepConfig(model="m", pairs="p", out="o", rewards=["a", "b"], report_rewards=["gold"])
    p = _point({"a": 60.0, "b": 40.0, "gold": 55.0})
    assert sweep.criterion_value(p, cfg, ["a"]) == pytest.approx(50.0)  # mean over all L rewards, not the trained
    p["winrate"]["gold"]["win_rate"] = 99.0  # the gold moves: the criterion does not
    assert sweep.criterion_value(p, cfg, ["a"]) == pytest.approx(50.0)
    budget = sweep.SweepConfig(model="m", pairs="p", out="o", rewards=["a", "b"], criterion="budget",
                               divergence_budget=0.2)
    assert sweep.criterion_value(p, budget, ["a"]) == pytest.approx(60.0)  # trained reward within the budget
    assert sweep.criterion_value(_point({"a": 90.0, "b": 90.0}, div=0.3), budget, ["a"]) is None


def test_select_takes_the_first_best_and_skips_inadmissible():
    assert sweep.select([1.0, 3.0, 2.0]) == 1
    assert sweep.select([3.0, 3.0, 1.0]) == 0
    assert sweep.select([None, 2.0, None]) == 1
    assert sweep.select([None, None]) is None


def test_validation_and_test_prompts_are_disjoint():
    val = {r["prompt_id"] for r in load_prompts("shapes:geneval@val")}
    test = {r["prompt_id"] for r in load_prompts("shapes:geneval@test")}
    assert val and test and not (val & test)
    assert not any("test" in f.name or f.name == "eval_prompts" for f in sweep.SweepConfig.__dataclass_fields__.values())


@pytest.mark.parametrize("peak,widened,selected", [(500.0, 0, 500.0), (5000.0, 1, 5000.0), (50000.0, 2, 50000.0), (5e6, 2, 5e5)])
def test_grid_widens_past_an_edge(monkeypatch, tmp_path, peak, widened, selected):
    """A criterion peaked at ``peak``: inside the grid nothing is added; at the top edge the
    grid grows by the outer ratio (x10) until the peak is bracketed or ``widen`` is spent."""
    from capo.stages import train

    (tmp_path / "pairs").mkdir()
    artifacts.write_json(tmp_path / "pairs" / artifacts.MANIFEST, {"run_key": "k", "rewards": ["a"]})
    trained = []

    def fake_train(cfg):
        trained.append(cfg.beta)
        artifacts.write_json(__import__("pathlib").Path(cfg.out) / artifacts.MANIFEST, {"run_key": f"t{cfg.beta}"})

    def fake_validate(cfg, spec, records, base_scores, rewards):
        beta = float(spec.split("beta-")[1].split("/")[0])
        v = 60 - 5 * abs(np.log10(beta) - np.log10(peak))
        return {"winrate": {r: {"win_rate": v} for r in rewards}, "divergence": {"mean": 1 / beta},
                "param_distance": 0.0}

    monkeypatch.setattr(train, "run", fake_train)
    monkeypatch.setattr(sweep, "validate", fake_validate)
    monkeypatch.setattr(sweep, "base_validation", lambda cfg, records, rewards: None)
    monkeypatch.setattr(sweep, "_model", lambda spec: None)
    monkeypatch.setattr("capo.models.model_fingerprint", lambda spec: "fp")
    cfg = sweep.SweepConfig(model="m", pairs=str(tmp_path / "pairs"), out=str(tmp_path / "sw"), rewards=["a"],
                            betas=[50.0, 500.0, 5000.0], beta_scale="none", widen=2, val_limit=6, quiet=True)
    res = sweep.run(cfg)
    assert res["widened"] == widened and res["selected"]["beta"] == pytest.approx(selected)
    assert res["bracketed"] == (peak < 1e6)  # the last case ran out of widening at the edge
    assert len(trained) == 3 + widened  # each grid point trained once
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["beta"] for p in saved["grid"]] == pytest.approx([50.0, 500.0, 5000.0, 50000.0, 500000.0][:3 + widened])


def test_sigmoid_scale_is_the_mean_loss_factor(tiny_chain):
    import torch

    from capo.method.implicit import loss_factor
    from capo.method.schedules import alphas_cumprod_of, ddpm_terms
    from capo.models import load_model

    m = load_model(str(tiny_chain / "base"))
    assert sweep.factor_scale(m, "constant", 1.5) == 1.0
    abar = alphas_cumprod_of(m.train_scheduler())
    tt = ddpm_terms(abar, torch.arange(len(abar)))
    want = float(loss_factor(tt.log_snr, tt.dlog_snr_dt, "sigmoid", 1.5).mean())
    assert sweep.factor_scale(m, "sigmoid", 1.5) == pytest.approx(want, rel=1e-9)
    assert sweep.factor_scale(m, "sigmoid", 1.0) < sweep.factor_scale(m, "sigmoid", 2.0)  # w_t grows with b


def test_compiled_validation_equals_eager_and_keeps_its_own_base_cache(tiny_chain, tmp_path):
    """`compile=eager` (dynamo only) validates to exactly the eager figures; the base model's
    cached validation scores are kept apart per sampler (an inductor run's images differ by
    rounding), and the eager cache key is the one earlier runs wrote."""
    common = dict(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), objective="capo",
                  betas=[50.0], widen=0, rewards=["toy-bright", "toy-red"], val_prompts="shapes:geneval@val",
                  val_limit=4, val_n=1, steps=2, batch_size=2, lr=1e-3, base_cache=str(tmp_path / "base-val"),
                  quiet=True)
    a = sweep.run(sweep.SweepConfig(out=str(tmp_path / "a"), **common))
    b = sweep.run(sweep.SweepConfig(out=str(tmp_path / "b"), compile="eager", **common))
    assert a["grid"][0]["winrate"] == b["grid"][0]["winrate"]
    assert a["grid"][0]["criterion"] == b["grid"][0]["criterion"]
    assert len(list((tmp_path / "base-val").glob("scores-*.parquet"))) == 2
    assert "compile" not in json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]


@pytest.mark.slow
def test_gold_and_test_prompts_do_not_change_the_selection(tiny_chain, tmp_path):
    """A real tiny sweep: adding a report-only (gold) reward leaves the criterion values and
    the selected beta unchanged; validation ids never meet the test split."""
    common = dict(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), objective="capo",
                  betas=[5.0, 500.0], widen=0, rewards=["toy-bright"], val_prompts="shapes:geneval@val",
                  val_limit=4, val_n=1, steps=2, batch_size=2, lr=1e-3, quiet=True)
    a = sweep.run(sweep.SweepConfig(out=str(tmp_path / "a"), **common))
    b = sweep.run(sweep.SweepConfig(out=str(tmp_path / "b"), report_rewards=["toy-red"], **common))
    assert [p["criterion"] for p in a["grid"]] == [p["criterion"] for p in b["grid"]]
    assert a["selected"]["beta"] == b["selected"]["beta"]
    assert "toy-red" in b["grid"][0]["winrate"] and "toy-red" not in a["grid"][0]["winrate"]
    test = {r["prompt_id"] for r in load_prompts("shapes:geneval@test")}
    assert not (set(a["val_prompt_ids"]) & test)
    # divergence and parameter distance are measured and grow with the step (lower beta: larger move)
    d = {p["beta"]: p for p in a["grid"]}
    assert d[5.0]["param_distance"] > 0 and d[5.0]["divergence"]["mean"] >= 0
    # the grid's runs keep their final weights and drop the resume state once complete
    for p in a["grid"]:
        run = tmp_path / "a" / f"beta-{sweep.fmt_beta(p['beta'])}"
        assert (run / "final").is_dir() and not (run / "checkpoints").exists()


@pytest.mark.slow
def test_launched_training_runs_equal_in_process(tiny_chain, tmp_path):
    """``launch``: each training run of the sweep goes through a launcher (here torchrun with 2
    processes x accumulation 1) and lands where the in-process run (1 process x accumulation 2)
    does, with the same weights to fp32 tolerance and the same selection."""
    import socket
    import sys

    from safetensors.torch import load_file

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = dict(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), objective="capo",
                  betas=[5.0, 500.0], widen=0, rewards=["toy-bright"], val_prompts="shapes:geneval@val",
                  val_limit=4, val_n=1, steps=2, batch_size=2, lr=1e-3, quiet=True)
    a = sweep.run(sweep.SweepConfig(out=str(tmp_path / "a"), train_options={"grad_accum": 2}, **common))
    launch = f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --master_port={port}"
    b = sweep.run(sweep.SweepConfig(out=str(tmp_path / "b"), train_options={"grad_accum": 1}, launch=launch, **common))
    assert a["selected"]["beta"] == b["selected"]["beta"]
    for beta in (5.0, 500.0):
        run = f"beta-{sweep.fmt_beta(beta)}"
        assert json.loads((tmp_path / "b" / run / "manifest.json").read_text())["processes"] == 2
        wa = load_file(str(tmp_path / "a" / run / "final" / "denoiser.safetensors"))
        wb = load_file(str(tmp_path / "b" / run / "final" / "denoiser.safetensors"))
        assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    with pytest.raises(Exception, match="only for rounds = 1"):
        sweep.SweepConfig(model="m", pairs="p", out="o", rounds=2, steps=4, launch=launch)
    failing = sweep.SweepConfig(out=str(tmp_path / "c"), launch=f"{sys.executable} -c 'raise SystemExit(3)'",
                                **common)
    with pytest.raises(RuntimeError, match="exit 3"):
        sweep.run(failing)
