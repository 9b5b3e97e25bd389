"""Experiment tracking through accelerate (issue #21, item 2): ``report_to`` sends the training
log to one of accelerate's trackers beside ``metrics.jsonl`` (which stays the same), names runs
after their cell and seed through sweep and reproduce, and a tracker whose package is absent is
one clear config error before anything is written."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capo import artifacts, tracking
from capo.config import ConfigError
from capo.experiments import reproduce
from capo.stages import iterate, sweep, train


def train_cfg(root: Path, out: Path, **kw) -> train.TrainConfig:
    return train.TrainConfig(model=str(root / "base"), pairs=str(root / "pairs-frs"), out=str(out),
                             **{"steps": 3, "batch_size": 2, "lr": 1e-3, "beta": 50.0, "checkpoint_every": 3,
                                "keep_checkpoints": 0, "log_every": 1, "quiet": True, **kw})


def log_lines(out: Path, volatile=("pairs_per_s",)) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in volatile}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def installed(monkeypatch):
    """Every tracker's package 'installed' (the runs here never start one)."""
    monkeypatch.setattr(tracking, "available", lambda name: True)


# ------------------------------------------------------------------ tensorboard, none
def test_tensorboard_run_holds_the_logged_scalars_and_the_config(tiny_chain, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, plain = tmp_path / "tb", tmp_path / "plain"
    train.run(train_cfg(tiny_chain, out, report_to="tensorboard", run_name="capo-frs.s0"))
    run_dir = out / "tensorboard" / "capo-frs.s0"  # accelerate's logging_dir / the run's name
    assert list(run_dir.glob("events.out.tfevents.*"))
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [k for k in log[0] if k != "step"]
    assert {"loss", "reward_margin", "target_gap", "lr", "pairs_per_s", "grad_norm"} <= set(keys)
    assert sorted(ea.Tags()["scalars"]) == sorted(f"train/{k}" for k in keys)
    for k in keys:  # every JSONL number at its step (tensorboard stores float32)
        events = ea.Scalars(f"train/{k}")
        assert [e.step for e in events] == [r["step"] for r in log] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[k] for r in log], rel=1e-6, abs=1e-12), k
    (hp,) = run_dir.glob("*/hparams.yml")  # the config, once, flattened to scalars and strings
    config = yaml.safe_load(hp.read_text())
    manifest = artifacts.read_json(out / artifacts.MANIFEST)
    assert config["beta"] == 50.0 and config["objective"] == "capo" and config["report_to"] == "tensorboard"
    assert config["run_key"] == manifest["run_key"] and config["reference"] == "none"
    assert all(isinstance(v, (int, float, str, bool)) for v in config.values())

    # the JSONL log and the run key are those of the same run without a tracker
    train.run(train_cfg(tiny_chain, plain))
    assert log_lines(out) == log_lines(plain)
    assert manifest["run_key"] == artifacts.read_json(plain / artifacts.MANIFEST)["run_key"]
    assert "report_to" not in manifest["config"] and "run_name" not in manifest["config"]


@pytest.mark.filterwarnings("ignore:`log_with=wandb`")  # accelerate: wandb is only 'installed' here
def test_none_writes_no_tracker_files_and_tracking_keys_leave_the_run_key(tiny_chain, tmp_path, monkeypatch,
                                                                           installed):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing lands in the working directory either (mlruns/, wandb/, swanlog/ ...)
    out = tmp_path / "none"
    res = train.run(train_cfg(tiny_chain, out))
    assert train.TrainConfig.__dataclass_fields__["report_to"].default == "none"
    assert sorted(p.name for p in out.iterdir()) == ["final", "manifest.json", "metrics.jsonl"]
    assert not list(out.rglob("*tfevents*")) and not list(cwd.iterdir())
    log = log_lines(out)
    assert [r["step"] for r in log] == [1, 2, 3] and all("target_gap" in r for r in log)
    # the same run under a tracker is the same run: reused as complete, not refused, nothing started
    again = train.run(train_cfg(tiny_chain, out, report_to="wandb", run_name="x", tracker_project="p"))
    assert again["skipped"] and again["run_key"] == res["run_key"]
    assert sorted(p.name for p in out.iterdir()) == ["final", "manifest.json", "metrics.jsonl"]


# ------------------------------------------------------------------ a missing package
def test_missing_tracker_package_is_one_clear_error_before_anything_is_written(tiny_chain, tmp_path, monkeypatch):
    from capo.cli import main

    monkeypatch.setattr(tracking, "available", lambda name: False)
    with pytest.raises(ConfigError) as e:
        train_cfg(tiny_chain, tmp_path / "t", report_to="wandb")
    msg = str(e.value)
    assert "\n" not in msg and "report_to = 'wandb'" in msg and "the wandb package is not installed" in msg
    assert "pip install 'capo[wandb]'" in msg and "pip install 'wandb'" in msg and "report_to=none" in msg
    with pytest.raises(ConfigError, match=r"pip install 'aim<4'"):
        train_cfg(tiny_chain, tmp_path / "t", report_to="aim")
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["train", f"model={tiny_chain / 'base'}", f"pairs={tiny_chain / 'pairs-frs'}",
                                  f"out={out}", "steps=1", "report_to=comet_ml"])
    assert r.exit_code == 2 and "pip install 'capo[comet_ml]'" in r.output and not out.exists()
    # the drivers refuse at their own config, before sampling or training anything
    for make in (lambda: sweep.SweepConfig(model="m", pairs="p", out="o", report_to="mlflow"),
                 lambda: iterate.IterateConfig(model="m", pairs="p", out="o", report_to="mlflow"),
                 lambda: reproduce.ReproduceConfig(report_to="mlflow")):
        with pytest.raises(ConfigError, match=r"pip install 'capo\[mlflow\]'"):
            make()
    # an accelerate too old for the tracker; an unknown name; none is always fine
    monkeypatch.setattr(tracking, "supported", lambda name: False)
    with pytest.raises(ConfigError, match="has no trackio tracker; pip install -U accelerate"):
        train_cfg(tiny_chain, tmp_path / "t", report_to="trackio")
    with pytest.raises(ConfigError, match="did you mean tensorboard"):
        train_cfg(tiny_chain, tmp_path / "t", report_to="tensorbord")
    assert train_cfg(tiny_chain, tmp_path / "t", report_to="none").report_to == "none"
    assert not (tmp_path / "t").exists()


def test_report_to_is_the_drivers_own_key_not_a_train_option(installed):
    for cls in (sweep.SweepConfig, reproduce.ReproduceConfig):
        kw = dict(model="m", pairs="p", out="o") if cls is sweep.SweepConfig else {}
        for key in ("report_to", "run_name"):
            with pytest.raises(ConfigError, match=f"'{key}' is set by the caller"):
                cls(train_options={key: "tensorboard"}, **kw)
        assert cls(train_options={"tracker_project": "capo-shapes"}, **kw).train_options  # the project may pass


# ------------------------------------------------------------------ pass-through and run names
def test_sweep_and_iterate_pass_report_to_and_name_runs_after_cell_seed_and_beta(tiny_chain, tmp_path, monkeypatch,
                                                                                  installed):
    seen = []

    def fake_train(cfg):
        seen.append(("train", cfg.report_to, cfg.run_name))
        artifacts.write_json(Path(cfg.out) / artifacts.MANIFEST, {"run_key": f"t{cfg.beta}"})

    def fake_iterate(cfg):
        seen.append(("iterate", cfg.report_to, cfg.run_name))
        artifacts.write_json(Path(cfg.out) / artifacts.MANIFEST, {"run_key": f"i{cfg.beta}"})
        return {"final": str(Path(cfg.out) / "round-2" / "train" / "final")}

    def fake_validate(cfg, spec, records, base_scores, rewards):
        return {"winrate": {r: {"win_rate": 50.0} for r in rewards}, "divergence": {"mean": 0.1},
                "param_distance": 0.0}

    monkeypatch.setattr(train, "run", fake_train)
    monkeypatch.setattr(iterate, "run", fake_iterate)
    monkeypatch.setattr(sweep, "validate", fake_validate)
    monkeypatch.setattr(sweep, "base_validation", lambda cfg, records, rewards: None)
    monkeypatch.setattr(sweep, "_model", lambda spec: None)
    monkeypatch.setattr("capo.models.model_fingerprint", lambda spec: "fp")
    (tmp_path / "pairs").mkdir()
    artifacts.write_json(tmp_path / "pairs" / artifacts.MANIFEST, {"run_key": "k", "rewards": ["toy-bright"]})
    common = dict(model="m", pairs=str(tmp_path / "pairs"), rewards=["toy-bright"], betas=[50.0, 500.0], beta_scale="none",
                  widen=0, val_limit=4, seed=2, quiet=True)
    sweep.run(sweep.SweepConfig(out=str(tmp_path / "capo-frs"), report_to="tensorboard", **common))
    sweep.run(sweep.SweepConfig(out=str(tmp_path / "sw2"), report_to="wandb", run_name="shapes-sd3.dpo-sum", rounds=2,
                                steps=4, **common))
    assert seen == [("train", "tensorboard", "capo-frs.s2.beta-50"), ("train", "tensorboard", "capo-frs.s2.beta-500"),
                    ("iterate", "wandb", "shapes-sd3.dpo-sum.s2.beta-50"),
                    ("iterate", "wandb", "shapes-sd3.dpo-sum.s2.beta-500")]
    # another tracker, the same sweep: reused as complete
    assert sweep.run(sweep.SweepConfig(out=str(tmp_path / "capo-frs"), report_to="none", **common))["skipped"]

    # iterate: every round's training, named <run_name>.round-<r>
    monkeypatch.undo()
    monkeypatch.setattr(tracking, "available", lambda name: True)
    real, names = train.run, []
    monkeypatch.setattr(train, "run", lambda cfg: names.append((cfg.report_to, cfg.run_name)) or real(cfg))
    iterate.run(iterate.IterateConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"),
                                      out=str(tmp_path / "it"), rounds=1, steps=1, batch_size=2, quiet=True,
                                      run_name="cell.s0.beta-50"))
    assert names == [("none", "cell.s0.beta-50.round-1")]


def test_reproduce_passes_report_to_into_every_sweep_and_training_run(tmp_path, monkeypatch, installed):
    from capo import dist
    from capo.stages import evaluate, merge, pairs

    sweeps, trains = [], []

    def fake_stage(name, cfg, launch=None):
        if name == "train":
            trains.append(cfg)

    def fake_sweep(cfg):
        sweeps.append(cfg)
        return {"selected": {"checkpoint": f"{cfg.out}/ck", "beta": 500.0, "beta_trained": 250.0}}

    monkeypatch.setattr(dist, "run_stage", fake_stage)
    monkeypatch.setattr(sweep, "run", fake_sweep)
    for mod in (pairs, merge, evaluate):
        monkeypatch.setattr(mod, "run", lambda cfg: None)
    monkeypatch.setattr(reproduce, "write_reports", lambda root, reports, cfg: None)
    cfg = reproduce.ReproduceConfig(out=str(tmp_path / "exp"), bases=["shapes-sdxl"], seeds=[0, 3], human_pairs=False,
                                    benchmarks=False, report_to="wandb", quiet=True)
    reproduce.run(cfg)
    labels = list(reproduce.cells(cfg, {k: Path(k) for k in ["sum", "frs"] + [f"single-{r}" for r in cfg.rewards]}))
    assert [s.run_name for s in sweeps] == [f"shapes-sdxl.{lab}" for lab in labels]
    assert {s.report_to for s in sweeps} == {"wandb"} and all(s.seed == 0 for s in sweeps)
    assert [t.run_name for t in trains] == [f"shapes-sdxl.{lab}.s3.beta-500" for lab in labels]
    assert {t.report_to for t in trains} == {"wandb"} and all(t.seed == 3 for t in trains)


# ------------------------------------------------------------------ what each tracker is given
def test_init_arguments_name_the_run_and_never_force_a_mode(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_PROJECT", "CLEARML_TASK", "SWANLAB_LOG_DIR", "SWANLAB_LOGDIR", "COMET_PROJECT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    assert tracking.init_arguments("tensorboard", "capo", "cell.s0", out) == ("cell.s0", {})
    assert tracking.init_arguments("wandb", "capo", "cell.s0", out) == ("capo", {"wandb": {"name": "cell.s0",
                                                                                          "dir": str(out)}})
    assert tracking.init_arguments("mlflow", "capo", "r", out) == ("capo", {"mlflow": {"run_name": "r"}})
    assert tracking.init_arguments("aim", "capo", "r", out) == ("r", {"aim": {"experiment": "capo"}})
    assert tracking.init_arguments("dvclive", "capo", "r", out) == ("capo", {"dvclive": {"dir": str(out / "dvclive")}})
    assert tracking.init_arguments("trackio", "capo", "r", out) == ("capo", {"trackio": {"name": "r"}})
    for name in tracking.TRACKERS:  # online / offline is the tracker's environment's to say
        kw = tracking.init_arguments(name, "capo", "r", out)[1].get(name, {})
        assert not {"mode", "online", "offline"} & set(kw), name
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("WANDB_PROJECT", "team-project")
    assert tracking.init_arguments("wandb", "capo", "r", out)[1] == {"wandb": {"name": "r"}}
    assert tracking.project_of("wandb", None) == "team-project" and tracking.project_of("wandb", "mine") == "mine"
    assert tracking.project_of("tensorboard", None) == "capo"
    assert tracking.accelerator_kwargs("none", out) == {}
    assert tracking.flatten({"a": {"b": [1, 2]}, "c": None, "d": 1.5, "e": Path("x")}) == \
        {"a.b": "1,2", "c": "none", "d": 1.5, "e": "x"}
