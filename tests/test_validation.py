"""Every key of every stage is checked when its config is built, before anything is written
(issue #10): a clear one-line error naming the key and what is allowed, no traceback, no
output directory. Also: refused starts leave no trace, strict JSON, file permissions and
integrity records of what later stages read back."""

import dataclasses
import importlib
import json
import os
import stat
import types
import typing

import pytest
from click.testing import CliRunner

from capo import artifacts
from capo.config import ConfigError, problems, validate
from capo.cli import main

STAGES = {  # command -> config class (pairs has its own click options, tested below)
    "generate": "capo.stages.generate:GenerateConfig", "score": "capo.stages.score:ScoreConfig",
    "train": "capo.stages.train:TrainConfig", "merge": "capo.stages.merge:MergeConfig",
    "sweep": "capo.stages.sweep:SweepConfig", "eval": "capo.stages.evaluate:EvalConfig",
    "reproduce": "capo.experiments.reproduce:ReproduceConfig", "world build": "capo.worlds.shapes.build:WorldConfig",
}
VALID = {  # a valid value of every required key (nothing is read: validation comes first)
    "model": "shapes-sdxl", "prompts": "shapes:train", "samples": "SAMPLES", "rewards": "shapes-pref",
    "pairs": "PAIRS", "checkpoints": "A,B", "models": "base=shapes-sdxl,x=shapes-sd3",
}


def cls_of(stage):
    module, name = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), name)


def invalid_values(cls, key) -> list[tuple[str, str]]:
    """Command-line values that must be refused for ``key``, each with its kind: ``type``
    (wrong type, non-finite number) or ``rule`` (just outside the range, an unknown name)."""
    hint = typing.get_type_hints(cls)[key]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if typing.get_origin(hint) is dict:
        return []
    is_list = typing.get_origin(hint) is list
    elem = typing.get_args(hint)[0] if is_list else hint
    rule = getattr(cls, "RULES", {}).get(key, "")
    bad = [(v, "type") for v in {int: ["2.5", "abc"], float: ["nan", "inf", "abc"], bool: ["maybe"]}.get(elem, [])]
    if rule.startswith("@") or "|" in rule:
        bad.append(("bogus-name", "rule"))
    elif rule[:1] in ("[", "("):
        lo, hi = (float(v) for v in rule[1:-1].split(","))
        bad += [(str(lo - 0.5) if rule[0] == "[" else str(lo), "rule"), (str(hi + 0.5) if rule[-1] == "]" else str(hi), "rule")]
    elif rule:
        op, _, x = rule.partition(" ")
        below = float(x) if op == ">" else float(x) - 1
        bad.append((str(below if elem is float else int(below)), "rule"))
    if is_list:  # one bad item after a good one
        good = {"@rewards": "shapes-pref", "@objectives": "capo", "@selectors": "frs", "@benchmarks": "winrate"}.get(rule) or (
            rule.split("|")[0].strip() if "|" in rule else "3")
        bad = [(f"{good},{v}", kind) for v, kind in bad]
    return bad


CASES = [(stage, f.name, v, kind) for stage in STAGES for f in dataclasses.fields(cls_of(stage))
         for v, kind in invalid_values(cls_of(stage), f.name)]


def test_every_stage_has_invalid_cases():
    per_stage = {s: sum(1 for c in CASES if c[0] == s) for s in STAGES}
    assert {kind for *_, kind in CASES} == {"type", "rule"}
    assert all(n >= 5 for n in per_stage.values()), per_stage
    assert len(CASES) >= 150


def run_cli(stage, tmp_path, key, value):
    out = tmp_path / "out"
    if stage == "reproduce":
        args = ["reproduce", "--preset", "demo", f"out={out}", f"reports={tmp_path / 'reports'}"]
    else:
        args = stage.split()
        for f in dataclasses.fields(cls_of(stage)):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name == "out" and key != "out":
                args.append(f"out={out}")  # never the default location (world build: the shipped world)
            elif required and f.name != key:
                args.append(f"{f.name}={VALID[f.name]}")
    args.append(f"{key}={value}")
    return CliRunner().invoke(main, args), out


@pytest.mark.parametrize("stage,key,value,kind", CASES, ids=[f"{s.replace(' ', '-')}-{k}={v}" for s, k, v, _ in CASES])
def test_invalid_value_is_refused_before_anything_is_written(stage, key, value, kind, tmp_path):
    r, out = run_cli(stage, tmp_path, key, value)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capo: error:"), r.output
    assert f"{key} = " in lines[0], lines[0]  # names the key ...
    rule = getattr(cls_of(stage), "RULES", {}).get(key, "")
    if kind == "type":  # ... and what is allowed
        assert "must be" in lines[0], lines[0]
    elif rule.startswith("@"):
        assert "known:" in lines[0], lines[0]
    else:
        assert rule in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert not out.exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("stage,args,needle", [
    ("merge", ["checkpoints=A", "out=O"], "at least two"),
    ("merge", ["checkpoints=A,B", "weights=1", "out=O"], "1 weights for 2 checkpoints"),
    ("train", ["model=m", "pairs=p", "out=O", "lora_alpha=8"], "lora_rank = 0"),
    ("train", ["model=m", "pairs=p", "out=O", "steps=5", "warmup_steps=10"], "warmup_steps"),
    ("sweep", ["model=m", "pairs=p", "out=O", "criterion=budget"], "divergence_budget"),
    ("sweep", ["model=m", "pairs=p", "out=O", "betas=5,5"], "repeats a value"),
    ("sweep", ["model=m", "pairs=p", "out=O", "report_rewards=shapes-pref"], "also criterion rewards"),
    ("score", ["samples=S", "rewards=shapes-pref,shapes-pref"], "twice"),
    ("eval", ["models=a=x,a=y", "out=O"], "unique"),
    ("reproduce", ["--preset", "demo", "val_prompts=shapes:geneval@test"], "same set"),
    ("reproduce", ["--preset", "demo", "gold=shapes-pref"], "gold"),
    ("reproduce", ["--preset", "demo", "roles=MPS"], "roles"),
])
def test_contradicting_keys_are_refused(stage, args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [stage, *args])
    assert r.exit_code == 2 and r.output.startswith("capo: error:") and needle in r.output, r.output
    assert not any(tmp_path.iterdir())  # no output directory, no runs/


def test_pairs_cli_validates_before_writing(tmp_path):
    t = tmp_path / "r.csv"
    t.write_text("prompt_id,sample_id,mps\na,0,0.0\na,1,1.0\n")
    for extra, needle in [(["--draws", "0"], "draws = 0"), (["--selector", "frss"], "did you mean frs"),
                          (["--weights", "nan"], "finite")]:
        r = CliRunner().invoke(main, ["pairs", str(t), "--out", str(tmp_path / "out"), *extra])
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "out").exists()


def test_help_shows_ranges_and_default_values():
    r = CliRunner().invoke(main, ["train", "--help"])
    assert r.exit_code == 0
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith("beta "))
    assert "= 500.0" in line and "[>= 0]" in line  # 0: GRPO without a KL term (> 0 for DPO / IPO / CaPO)
    assert "[in [0, 1)]" in next(ln for ln in r.output.splitlines() if ln.strip().startswith("ema "))
    r = CliRunner().invoke(main, ["sweep", "--help"])
    line = next(ln for ln in r.output.splitlines() if ln.strip().startswith("betas "))
    assert "[50.0, 150.0, 500.0, 1500.0, 5000.0]" in line and "default_factory" not in r.output


def test_python_api_validates_too():
    from capo.stages.train import TrainConfig

    with pytest.raises(ConfigError, match=r"beta = -5: must be >= 0"):
        TrainConfig(model="m", pairs="p", out="o", beta=-5)
    with pytest.raises(ConfigError, match=r"beta: must be > 0 for objective=capo"):
        TrainConfig(model="m", pairs="p", out="o", beta=0)
    with pytest.raises(ConfigError, match=r"lr = nan: must be a finite number; steps = 0: must be >= 1"):
        TrainConfig(model="m", pairs="p", out="o", lr=float("nan"), steps=0)
    cfg = TrainConfig(model="m", pairs="p", out="o")
    assert problems(cfg) == []
    cfg.batch_size = 0  # a later mutation is caught by an explicit validate()
    with pytest.raises(ConfigError, match="batch_size = 0"):
        validate(cfg)


# ------------------------------------------------------------------ refused starts leave no trace
def test_failed_start_removes_only_what_it_created(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with artifacts.no_trace_on_failure(out):
            artifacts.prepare_out_dir(out / "sub", {"run_key": "k", "stage": "x"})
            raise RuntimeError("model failed to load")
    assert not out.exists()
    # work done is kept (to resume)
    with pytest.raises(RuntimeError):
        with artifacts.no_trace_on_failure(out):
            artifacts.prepare_out_dir(out, {"run_key": "k", "stage": "x"})
            artifacts.write_text(out / "shard-0.json", "{}")
            raise RuntimeError("killed later")
    assert (out / "shard-0.json").is_file() and (out / "manifest.json").is_file()
    # a directory that existed before is left exactly as it was
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError):
        with artifacts.no_trace_on_failure(out):
            raise RuntimeError("refused")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_with_a_model_that_fails_to_load_keeps_the_old_run(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    old = {"stage": "generate", "run_key": "old", "complete": True}
    (out / "manifest.json").write_text(json.dumps(old))
    (out / "index.parquet").write_bytes(b"old results")
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    (bad_model / "junk.txt").write_text("x")
    r = CliRunner().invoke(main, ["generate", f"model={bad_model}", "prompts=shapes:train", "limit=1", "n=1",
                                  f"out={out}", "--overwrite"])
    assert r.exit_code == 2 and r.output.startswith("capo: error:"), r.output
    assert json.loads((out / "manifest.json").read_text()) == old
    assert (out / "index.parquet").read_bytes() == b"old results"


# ------------------------------------------------------------------ strict JSON, permissions
def strict_loads(text):
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_non_finite_numbers_become_null(tmp_path):
    import numpy as np

    artifacts.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.5, float("-inf")], "z": np.float64("nan"),
                                               "w": np.array([1.0, np.inf])})
    assert strict_loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.5, None], "z": None,
                                                                "w": [1.0, None]}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_permissions(tmp_path, monkeypatch, umask):
    monkeypatch.setattr(artifacts, "_UMASK", umask)
    t = tmp_path / "r.csv"
    t.write_text("prompt_id,sample_id,mps\na,0,0.0\na,1,1.0\nb,0,2.0\nb,1,1.0\n")
    r = CliRunner().invoke(main, ["pairs", str(t), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) >= 3
    assert {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files} == {oct(0o666 & ~umask)}


# ------------------------------------------------------------------ integrity of what is read back
def test_truncated_or_altered_files_are_named_with_the_way_back(tmp_path):
    out = tmp_path / "run"
    artifacts.prepare_out_dir(out, {"run_key": "k", "stage": "score", "command": "capo score samples=S"})
    artifacts.write_bytes(out / "scores.parquet", b"0123456789" * 100)
    artifacts.finish(out, artifacts.read_json(out / "manifest.json"), files=["scores.parquet"])
    assert artifacts.verify(out, "scores.parquet", "a reward table") == out / "scores.parquet"
    with open(out / "scores.parquet", "r+b") as f:  # truncate
        f.truncate(500)
    with pytest.raises(artifacts.ArtifactError, match=r"500 bytes, but 1000 were written \(a reward table: "
                                                      r"truncated.*rerun the score run.*--overwrite.*capo score"):
        artifacts.verify(out, "scores.parquet", "a reward table")
    (out / "scores.parquet").write_bytes(b"9123456789" * 100)  # same size, other bytes
    with pytest.raises(artifacts.ArtifactError, match="sha256 differs.*corrupted"):
        artifacts.verify(out, "scores.parquet", "a reward table")
    (out / "scores.parquet").unlink()
    with pytest.raises(artifacts.ArtifactError, match="missing"):
        artifacts.verify(out, "scores.parquet", "a reward table")


def test_big_files_are_checked_by_size_and_sampled_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "SAMPLED_ABOVE", 1000)
    monkeypatch.setattr(artifacts, "_SAMPLE", 100)
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(range(256)) * 10)
    rec = artifacts.file_record(f)
    assert set(rec) == {"size", "sha256_sampled"} and rec["size"] == 2560
    artifacts.check_file(f, rec, "x", "y")
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # the tail is hashed
    f.write_bytes(bytes(data))
    with pytest.raises(artifacts.ArtifactError, match="corrupted"):
        artifacts.check_file(f, rec, "x", "y")
