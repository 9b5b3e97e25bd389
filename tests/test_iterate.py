"""Online CaPO (`capo iterate`, issue #13): R = 1 is offline training, later rounds sample the
previous round's checkpoint and calibrate against the base model's samples, a killed iteration
resumes to the same result, and `capo sweep rounds=R` selects beta over online runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from capo import artifacts
from capo.method.calibration import calibrate_against
from capo.models import model_fingerprint
from capo.stages import iterate, pairs, sweep, train

COMMON = dict(objective="capo", beta=50.0, lr=1e-3, batch_size=2, batch=8, quiet=True)


def _iterate(chain: Path, out: Path, **kw) -> dict:
    args = dict(model=str(chain / "base"), pairs=str(chain / "pairs-frs"), out=str(out), rounds=2, steps=4) | COMMON
    return iterate.run(iterate.IterateConfig(**(args | kw)))


def test_round_steps_split_evenly():
    assert iterate.round_steps(20, 1) == [20]
    assert iterate.round_steps(20, 2) == [10, 10]
    assert iterate.round_steps(20, 3) == [7, 7, 6]
    assert sum(iterate.round_steps(7, 7)) == 7


def test_one_round_is_offline_training(tiny_chain, tmp_path):
    res = _iterate(tiny_chain, tmp_path / "it", rounds=1, steps=3)
    train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"),
                                out=str(tmp_path / "tr"), steps=3, checkpoint_every=3, keep_checkpoints=0,
                                **{k: v for k, v in COMMON.items() if k != "batch"}))
    got = Path(res["final"]) / "denoiser.safetensors"
    assert got.read_bytes() == (tmp_path / "tr" / "final" / "denoiser.safetensors").read_bytes()
    assert len(res["rounds"]) == 1 and not (tmp_path / "it" / "round-2").exists()


def test_two_rounds_sample_the_previous_checkpoint_and_calibrate_against_the_base(tiny_chain, tmp_path):
    out = tmp_path / "it"
    res = _iterate(tiny_chain, out)
    r1, r2 = res["rounds"]
    assert (r1["steps"], r2["steps"]) == (2, 2)
    # round 2's samples come from round 1's checkpoint (fingerprint), with as many images per prompt as round 1
    sm = artifacts.read_json(out / "round-2" / "samples" / artifacts.MANIFEST)
    assert sm["inputs"]["model"]["sha256"] == model_fingerprint(r1["checkpoint"]) == r1["fingerprint"]
    assert sm["config"]["n"] == 4 and sm["config"]["seed"] == iterate.SEED_STRIDE
    assert model_fingerprint(r2["checkpoint"]) != model_fingerprint(r1["checkpoint"])
    # the KL reference of round 2 is the base model; its training starts from round 1's weights
    tm = artifacts.read_json(out / "round-2" / "train" / artifacts.MANIFEST)
    assert tm["inputs"]["reference"]["path"] == str(tiny_chain / "base")
    assert tm["config"]["model"] == r1["checkpoint"] and tm["config"]["seed"] == iterate.SEED_STRIDE
    # round 2's calibrated rewards: each policy sample against the 4 base samples of its prompt
    pm = artifacts.read_json(out / "round-2" / "pairs" / artifacts.MANIFEST)
    assert pm["calibration"] == "against 4 reference samples per prompt"
    cand = artifacts.read_table(out / "round-2" / "pairs" / "candidates.parquet").sort_values(["prompt_id", "sample_id"])
    names = ["toy-bright", "toy-red"]
    mine = pairs.load_rewards([str(out / "round-2" / "samples" / "rewards" / r / "scores.parquet") for r in names],
                              names)[0]
    base = pairs.load_rewards([str(tiny_chain / "samples" / "rewards" / r / "scores.parquet") for r in names], names)[0]
    P = mine["prompt_id"].nunique()
    want = calibrate_against(mine[names].to_numpy().reshape(P, 4, 2), base[names].to_numpy().reshape(P, 4, 2),
                             transform=["temperature:10", "identity"], axis=1)
    assert np.allclose(cand[[f"{r}_ca" for r in names]].to_numpy(), want.reshape(-1, 2))
    # Eq. 7 would give a per-prompt mean of exactly 1/2; against the base it need not
    assert not np.allclose(want.mean(1), 0.5)


def test_self_calibration_and_previous_reference(tiny_chain, tmp_path):
    out = tmp_path / "it"
    _iterate(tiny_chain, out, calibration="self", reference="previous")
    pm = artifacts.read_json(out / "round-2" / "pairs" / artifacts.MANIFEST)
    assert pm["calibration"] == "eq7"
    cand = artifacts.read_table(out / "round-2" / "pairs" / "candidates.parquet")
    assert np.allclose(cand.groupby("prompt_id")["toy-red_ca"].mean(), 0.5)  # Eq. 7: mean 1/2 per prompt
    tm = artifacts.read_json(out / "round-2" / "train" / artifacts.MANIFEST)
    assert "reference" not in tm["inputs"]  # the model trained (round 1's checkpoint) is its own reference


def test_bad_inputs_are_refused_before_anything_is_written(tiny_chain, tmp_path):
    from capo.config import ConfigError

    with pytest.raises(ConfigError, match="rounds = 0: must be >= 1"):
        iterate.IterateConfig(model="m", pairs="p", out=str(tmp_path / "x"), rounds=0)
    with pytest.raises(ConfigError, match="cannot be split"):
        iterate.IterateConfig(model="m", pairs="p", out=str(tmp_path / "x"), rounds=3, steps=2)
    with pytest.raises(ConfigError, match="calibration"):
        iterate.IterateConfig(model="m", pairs="p", out=str(tmp_path / "x"), calibration="policy")
    # pairs of another model's samples: refused, nothing written
    other = tmp_path / "other"
    from conftest import build_tiny

    build_tiny(other, seed=1)
    with pytest.raises(artifacts.ArtifactError, match="round 1 trains on the base model's own samples"):
        _iterate(tiny_chain, tmp_path / "it", model=str(other))
    assert not (tmp_path / "it").exists()


def test_train_reference_must_share_the_architecture(tiny_chain, tmp_path):
    from conftest import build_tiny

    other = build_tiny(tmp_path / "sd3", kind="sd3-like")
    with pytest.raises(ValueError, match="not the architecture"):
        train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"),
                                    out=str(tmp_path / "t"), reference=str(other), steps=1, quiet=True))
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_killed_in_round_two_resumes_to_the_same_result(tiny_chain, tmp_path, monkeypatch):
    from kill_harness import check_kill_anywhere

    def args(out):
        return ["iterate", f"model={tiny_chain / 'base'}", f"pairs={tiny_chain / 'pairs-frs'}", f"out={out}",
                "rounds=2", "steps=4", "beta=50", "lr=1e-3", "batch_size=2", "batch=8"]

    def in_round_two(out):  # the kill fell after round 1 was done
        assert artifacts.read_json(out / "round-1" / "train" / artifacts.MANIFEST)["complete"]
        assert not artifacts.read_json(out / artifacts.MANIFEST)["complete"]

    writes, points = check_kill_anywhere(tmp_path, monkeypatch, args, n_kills=1, seed=6,
                                         window=lambda w: range(w // 2, w + 1), after_kill=in_round_two)
    assert len(points) == 1 and points[0] > writes // 2


@pytest.mark.slow
def test_sweep_over_online_runs(tiny_chain, tmp_path):
    res = sweep.run(sweep.SweepConfig(
        model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), out=str(tmp_path / "sw"), objective="capo",
        betas=[5.0], widen=0, rewards=["toy-bright"], val_prompts="shapes:geneval@val", val_limit=4, val_n=1,
        steps=4, batch_size=2, lr=1e-3, rounds=2, quiet=True))
    for p in res["grid"]:  # every grid point is a two-round online run, validated at its last round
        assert p["checkpoint"].endswith("round-2/train/final")
        run = json.loads((Path(p["checkpoint"]).parents[2] / artifacts.MANIFEST).read_text())
        assert run["stage"] == "iterate" and run["complete"] and run["config"]["rounds"] == 2
    assert res["cell"]["rounds"] == 2


def test_driver_stages_refuse_several_processes(monkeypatch):
    from click.testing import CliRunner

    from capo.cli import main

    for stage in ("iterate", "sweep", "online"):
        r = CliRunner().invoke(main, [stage, "--num-processes", "2", "model=m", "pairs=p", "out=o"])
        assert r.exit_code != 0 and f"{stage} runs in one process" in r.output, r.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(main, ["iterate", "model=m", "pairs=p", "out=o"])
    assert r.exit_code != 0 and "iterate runs in one process" in r.output


def test_online_keys_enter_run_keys_only_when_they_matter():
    from capo.config import to_dict

    common = dict(model="m", pairs="p", out="o")
    offline = to_dict(sweep.SweepConfig(**common))
    assert not {"rounds", "calibration", "reference"} & set(offline)  # older sweeps keep their run keys
    online2 = to_dict(sweep.SweepConfig(rounds=2, **common))
    assert (online2["rounds"], online2["calibration"], online2["reference"]) == (2, "reference", "base")
    assert "reference" not in to_dict(train.TrainConfig(**common))
    assert to_dict(train.TrainConfig(reference="base", **common))["reference"] == "base"
