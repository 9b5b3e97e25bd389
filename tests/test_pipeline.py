"""The pipeline stages end to end on a tiny shapes model: generate -> score -> pairs -> train -> merge,
with resume, faults and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from capo import artifacts
from capo.stages import generate, merge, pairs, score, train
from capo.cli import main

from conftest import PROMPTS, ROOT, build_tiny


def gen_cfg(root, out, **kw):
    return generate.GenerateConfig(model=str(root / "base"), prompts=str(root / "prompts.txt"), out=str(out),
                                   **{"n": 4, "batch_size": 8, "shard_prompts": 2, **kw})


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "manifest.json" and not p.name.endswith(".parquet")}


# ------------------------------------------------------------------ generate
def test_generate_layout_index_and_manifest(tiny_chain):
    s = tiny_chain / "samples"
    idx = pd.read_parquet(s / "index.parquet")
    assert len(idx) == 16 and sorted(idx.groupby("prompt_id").size().unique()) == [4]
    assert (s / "images" / "00003" / "samples" / "0003.png").is_file()
    meta = json.loads((s / "images" / "00001" / "metadata.jsonl").read_text())
    assert meta["prompt"] == PROMPTS[1]
    assert idx["seed"].nunique() == 16  # a distinct seed per item
    m = json.loads((s / "manifest.json").read_text())
    assert m["complete"] and m["counts"] == {"prompts": 4, "images": 16, "shards": 2}
    assert m["inputs"]["model"]["sha256"] and m["inputs"]["prompts"]["sha256"]
    cache = load_file(str(s / "cache" / "shard-00000.safetensors"))
    assert cache["latents"].shape == (8, 4, 8, 8) and cache["hidden"].shape[0] == 2


def test_generate_independent_of_batch_size_and_shards(tiny_chain, tmp_path):
    torch.set_num_threads(1)  # float results depend on the thread count, not on the harness
    try:
        a = generate.run(gen_cfg(tiny_chain, tmp_path / "a", batch_size=3, shard_prompts=1))
        b = generate.run(gen_cfg(tiny_chain, tmp_path / "b", batch_size=8, shard_prompts=4))
    finally:
        torch.set_num_threads(2)
    assert not a["skipped"] and not b["skipped"]
    fa, fb = files(tmp_path / "a" / "images"), files(tmp_path / "b" / "images")
    assert fa.keys() == fb.keys() and len(fa) == 16 + 4
    from PIL import Image
    for k in fa:
        if k.endswith(".png"):
            xa = np.asarray(Image.open(tmp_path / "a" / "images" / k), dtype=int)
            xb = np.asarray(Image.open(tmp_path / "b" / "images" / k), dtype=int)
            assert np.abs(xa - xb).max() <= 1, k  # batch composition may move a pixel by one level


def test_generate_resumes_after_kill(tiny_chain, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    generate.run(gen_cfg(tiny_chain, ref))
    calls = {"n": 0}
    real = generate.write_png

    def dying(path, image):
        calls["n"] += 1
        if calls["n"] == 11:  # mid second shard: first shard complete, second half-written
            raise KeyboardInterrupt
        real(path, image)

    monkeypatch.setattr(generate, "write_png", dying)
    with pytest.raises(KeyboardInterrupt):
        generate.run(gen_cfg(tiny_chain, tmp_path / "run"))
    assert generate.shard_done(tmp_path / "run", 0) and not generate.shard_done(tmp_path / "run", 1)
    monkeypatch.setattr(generate, "write_png", real)
    res = generate.run(gen_cfg(tiny_chain, tmp_path / "run"))
    assert not res["skipped"] and res["counts"]["images"] == 16
    assert files(tmp_path / "run") == files(ref)  # nothing duplicated, lost or different
    assert not list((tmp_path / "run").rglob("*.tmp"))
    assert generate.run(gen_cfg(tiny_chain, tmp_path / "run"))["skipped"]


def test_generate_refuses_a_different_run(tiny_chain, tmp_path):
    generate.run(gen_cfg(tiny_chain, tmp_path / "g"))
    before = files(tmp_path / "g")
    with pytest.raises(artifacts.ArtifactError, match="different generate run"):
        generate.run(gen_cfg(tiny_chain, tmp_path / "g", seed=1))
    assert files(tmp_path / "g") == before
    generate.run(gen_cfg(tiny_chain, tmp_path / "g", seed=1, overwrite=True))
    assert files(tmp_path / "g") != before


@pytest.mark.parametrize("text,match", [
    ("a photo of a circle\n\na photo of a square\n", "blank prompt at line 2"),
    ("a photo of a circle\na photo of a square\na photo of a circle\n", "duplicate prompt 'a photo of a circle' at line 1 and line 3"),
    ("a photo of a circle\n" + "word " * 300 + "\n", "longer than 200 words at line 2"),
])
def test_generate_bad_prompt_files(tiny_chain, tmp_path, text, match):
    (tmp_path / "p.txt").write_text(text)
    r = CliRunner().invoke(main, ["generate", "--model", str(tiny_chain / "base"), "--prompts", str(tmp_path / "p.txt"),
                                  "--out", str(tmp_path / "g"), "--n", "2"])
    assert r.exit_code == 2 and match in r.output
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------ score
def test_score_tables_and_adding_a_reward_rescoring_nothing(tiny_chain):
    s = tiny_chain / "samples"
    t = pd.read_parquet(s / "rewards" / "toy-bright" / "scores.parquet")
    assert list(t.columns) == ["prompt_id", "sample_id", "toy-bright"] and len(t) == 16
    from capo.stages.score import load_images
    idx = pd.read_parquet(s / "index.parquet")
    expect = load_images(s, idx["path"]).astype(float).reshape(16, -1).mean(1) / 25.5
    assert np.allclose(t["toy-bright"], expect)
    m = json.loads((s / "rewards" / "toy-bright" / "manifest.json").read_text())
    assert m["bt_transform"] == "temperature:10" and m["inputs"]["samples"]["sha256"]
    before = (s / "rewards" / "toy-bright" / "scores.parquet").stat().st_mtime_ns
    res = score.run(score.ScoreConfig(samples=str(s), rewards=["toy-bright", "toy-red"]))
    assert res["rewards"]["toy-bright"]["skipped"] and res["rewards"]["toy-red"]["skipped"]
    assert (s / "rewards" / "toy-bright" / "scores.parquet").stat().st_mtime_ns == before


def test_score_corrupt_and_missing_images(chain_copy):
    s = chain_copy / "samples"
    (s / "images" / "00001" / "samples" / "0002.png").write_bytes(b"garbage")
    with pytest.raises(artifacts.ArtifactError, match=r"00001/samples/0002.png: corrupt image"):
        score.run(score.ScoreConfig(samples=str(s), rewards=["toy-red"], out=str(chain_copy / "r1")))
    (s / "images" / "00001" / "samples" / "0002.png").unlink()
    with pytest.raises(artifacts.ArtifactError, match=r"0002.png: image file missing"):
        score.run(score.ScoreConfig(samples=str(s), rewards=["toy-red"], out=str(chain_copy / "r2")))
    assert not (chain_copy / "r1" / "toy-red" / "scores.parquet").exists()


def test_score_nan_reward_is_an_error(tiny_chain, tmp_path):
    with pytest.raises(ValueError, match="NaN/inf score"):
        score.run(score.ScoreConfig(samples=str(tiny_chain / "samples"), rewards=["toy-nan"], out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "toy-nan" / "scores.parquet").exists()


def test_pairs_refuse_tables_of_different_samples(tiny_chain, tmp_path):
    generate.run(gen_cfg(tiny_chain, tmp_path / "other", seed=9))
    score.run(score.ScoreConfig(samples=str(tmp_path / "other"), rewards=["toy-red"]))
    tables = [str(tiny_chain / "samples" / "rewards" / "toy-bright" / "scores.parquet"),
              str(tmp_path / "other" / "rewards" / "toy-red" / "scores.parquet")]
    with pytest.raises(pairs.PairsError, match="different samples directories"):
        pairs.run(pairs.PairsConfig(rewards_tables=tables, out=str(tmp_path / "p"), selector="sum"))


def test_pairs_use_declared_transforms(tiny_chain):
    m = json.loads((tiny_chain / "pairs-frs" / "manifest.json").read_text())
    assert m["transforms"] == {"toy-bright": "temperature:10", "toy-red": "identity"}
    assert m["samples"]["path"] == str(tiny_chain / "samples")


# ------------------------------------------------------------------ train
def train_cfg(root, out, **kw):
    return train.TrainConfig(model=str(root / "base"), pairs=str(root / "pairs-frs"), out=str(out),
                             **{"steps": 4, "batch_size": 2, "lr": 1e-3, "beta": 50.0, "checkpoint_every": 2,
                                "log_every": 1, **kw})


@pytest.mark.parametrize("objective,extra", [
    ("dpo", {}), ("ipo", {"weighting": "sigmoid", "bias": 1.0, "beta": 0.01}),
    ("capo", {"noise": "independent"}), ("capo", {"lora_rank": 2, "ema": 0.5}),
])
def test_train_objectives_change_weights_and_log(tiny_chain, tmp_path, objective, extra):
    res = train.run(train_cfg(tiny_chain, tmp_path / "t", objective=objective, **extra))
    assert res["complete"] and res["counts"]["steps"] == 4
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(x["loss"]) and 0 <= x["implicit_acc"] <= 1 for x in lines)
    assert lines[0]["reward_margin"] == 0.0  # step 1 sees policy == reference: R_theta = 0
    from capo.models import load_model
    base, tuned = load_model(str(tiny_chain / "base")), load_model(str(tmp_path / "t" / "final"))
    diff = [(a - b).abs().max().item() for a, b in zip(base.denoiser.state_dict().values(),
                                                        tuned.denoiser.state_dict().values())]
    assert max(diff) > 0
    meta = json.loads((tmp_path / "t" / "final" / "capo_checkpoint.json").read_text())
    assert meta["format"] == ("lora" if extra.get("lora_rank") else "full")


def test_train_resume_equals_uninterrupted(tiny_chain, tmp_path):
    full = train.run(train_cfg(tiny_chain, tmp_path / "full", checkpoint_every=1))
    part = train.run(train_cfg(tiny_chain, tmp_path / "part", checkpoint_every=1, stop_after=2))
    assert part["complete"] is False and part["stopped_at"] == 2
    assert not (tmp_path / "part" / "final").exists()
    res = train.run(train_cfg(tiny_chain, tmp_path / "part", checkpoint_every=1))
    assert res["complete"] and full["complete"]
    a = load_file(str(tmp_path / "full" / "final" / "denoiser.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "denoiser.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in json.loads(x).items() if k != "pairs_per_s"} for x in ls]  # noqa: E731
    assert strip(la) == strip(lb)


def test_train_nan_loss_stops_and_keeps_last_checkpoint(tiny_chain, tmp_path):
    # lr 1e30: Adam's first update moves every weight by ~1e30, so step 2's errors overflow
    with pytest.raises(train.TrainingDiverged, match=r"loss is nan at step 1 .*Last good checkpoint: .*step-000001"):
        train.run(train_cfg(tiny_chain, tmp_path / "t", lr=1e30, checkpoint_every=1))
    assert (tmp_path / "t" / "checkpoints" / "step-000001" / "trainer_state.json").is_file()
    assert not (tmp_path / "t" / "final").exists()
    # beta 1e38: the gradient norm overflows on the first step; stopped before any update
    with pytest.raises(train.TrainingDiverged, match=r"gradient norm is inf at step 0.*checkpoint: none"):
        train.run(train_cfg(tiny_chain, tmp_path / "t2", objective="ipo", beta=1e38))


def test_train_refuses_pairs_of_another_model(tiny_chain, tmp_path):
    build_tiny(tmp_path / "other", seed=1)
    with pytest.raises(artifacts.ArtifactError, match="preference pairs must come from the model being trained"):
        train.run(train.TrainConfig(model=str(tmp_path / "other"), pairs=str(tiny_chain / "pairs-frs"),
                                    out=str(tmp_path / "t"), steps=1))


def test_train_best_worst_pairs_and_fixed_data_order(tiny_chain):
    src = train.PairSource(tiny_chain / "pairs-bw", fresh=True)
    assert not src.fresh  # only FRS draws fresh pairs
    a, b = src.micro_batch(0, 3, 4), src.micro_batch(0, 3, 4)
    assert a == b and len(a) == 4
    fr = train.PairSource(tiny_chain / "pairs-frs", fresh=True)
    cand = pd.read_parquet(tiny_chain / "pairs-frs" / "candidates.parquet").set_index(["prompt_id", "sample_id"])
    for m in range(5):
        for pid, pos, neg, gap in fr.micro_batch(0, m, 4):
            assert cand.loc[(pid, pos), "in_pos_set"] and cand.loc[(pid, neg), "in_neg_set"] and gap > 0


# ------------------------------------------------------------------ merge
def test_merge_full_checkpoints_is_slerp_of_task_vectors(tiny_chain, tmp_path):
    from capo.method import merge as merge_fn
    from capo.models import load_model

    for obj in ("dpo", "capo"):
        train.run(train_cfg(tiny_chain, tmp_path / obj, objective=obj, steps=2))
    res = merge.run(merge.MergeConfig(checkpoints=[str(tmp_path / "dpo" / "final"), str(tmp_path / "capo" / "final")],
                                      out=str(tmp_path / "soup")))
    assert res["complete"]
    base = load_model(str(tiny_chain / "base")).denoiser.state_dict()
    sds = [load_file(str(tmp_path / o / "final" / "denoiser.safetensors")) for o in ("dpo", "capo")]
    expect = merge_fn(base, sds, method="slerp")
    got = load_model(str(tmp_path / "soup")).denoiser.state_dict()
    assert all(torch.allclose(got[k], expect[k]) for k in expect)
    with pytest.raises(ValueError, match=r"method = 'mean': must be one of slerp \| linear"):
        merge.run(merge.MergeConfig(checkpoints=[str(tmp_path / "dpo" / "final")] * 2, out=str(tmp_path / "x"),
                                    method="mean"))


def test_merge_lora_checkpoints(tiny_chain, tmp_path):
    from capo.models import load_model

    for s in (0, 1):
        train.run(train_cfg(tiny_chain, tmp_path / f"l{s}", lora_rank=2, steps=2, seed=s))
    merge.run(merge.MergeConfig(checkpoints=[str(tmp_path / "l0" / "final"), str(tmp_path / "l1" / "final")],
                                out=str(tmp_path / "soup"), method="linear"))
    base = load_model(str(tiny_chain / "base")).denoiser.state_dict()
    t = [load_model(str(tmp_path / f"l{s}" / "final")).denoiser.state_dict() for s in (0, 1)]
    got = load_model(str(tmp_path / "soup")).denoiser.state_dict()
    for k in base:  # linear merge of task vectors at 1/2 each = mean of the merged-in LoRA weights
        assert torch.allclose(got[k], (t[0][k] + t[1][k]) / 2, atol=1e-6), k


# ------------------------------------------------------------------ CLI and distributed
def test_cli_stage_commands_and_config_errors(tiny_chain, tmp_path):
    r = CliRunner().invoke(main, ["train", "--model", "x", "--pairs", "y", "--out", "z", "bogus_key=1"])
    assert r.exit_code == 2 and "unknown TrainConfig key(s): bogus_key" in r.output
    (tmp_path / "c.yaml").write_text(f"model: {tiny_chain / 'base'}\npairs: {tiny_chain / 'pairs-bw'}\nsteps: 1\n")
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "t"),
                                  "objective=ipo", "--batch-size", "2", "beta=0.1"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert m["config"]["objective"] == "ipo" and m["config"]["steps"] == 1 and m["config"]["batch_size"] == 2


def _capo(*args, env=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "CAPO_QUIET": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "capo", *map(str, args)], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_equal_one(tiny_chain, tmp_path):
    """generate: 2 processes == 1 process byte for byte (same threads per process);
    train: 2 processes x accumulation 1 == 1 process x accumulation 2 (fp32 tolerance 1e-5)."""
    common = ["--model", tiny_chain / "base", "--prompts", tiny_chain / "prompts.txt", "--n", 4, "--shard-prompts", 1]
    r1 = _capo("generate", *common, "--out", tmp_path / "g1")
    r2 = _capo("generate", *common, "--out", tmp_path / "g2", "--num-processes", 2)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-2000:] + r2.stderr[-2000:]
    assert json.loads((tmp_path / "g2" / "manifest.json").read_text())["processes"] == 2
    assert files(tmp_path / "g1") == files(tmp_path / "g2")
    tcommon = ["--model", tiny_chain / "base", "--pairs", tiny_chain / "pairs-frs", "--steps", 3, "--batch-size", 2,
               "--lr", "1e-3", "--beta", 50]
    r1 = _capo("train", *tcommon, "--grad-accum", 2, "--out", tmp_path / "t1")
    r2 = _capo("train", *tcommon, "--grad-accum", 1, "--out", tmp_path / "t2", "--num-processes", 2)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr[-2000:] + r2.stderr[-2000:]
    a = load_file(str(tmp_path / "t1" / "final" / "denoiser.safetensors"))
    b = load_file(str(tmp_path / "t2" / "final" / "denoiser.safetensors"))
    base = load_file(str(tiny_chain / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-4  # training moved the weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
