"""Kill-anywhere: every stage killed by SIGKILL at random points, then rerun, ends with the
same files as an uninterrupted run and no temporary files; two processes on one output
directory: the second is refused (issue #10).

A killed run is a subprocess started with ``CAPO_KILL_AT_WRITE=k``: it SIGKILLs itself at
its k-th atomic write, after the temp file is written and before it is renamed (the worst
moment). k is drawn (seeded) from 1..W, W the write count of the uninterrupted run. The
comparison is byte for byte except the fields that record when and how long (manifests'
``created`` / ``seconds`` / ``command``, the training log's throughput)."""

import signal
import subprocess
import sys
import time

import pytest

from capo import artifacts
from kill_harness import ROOT, check_kill_anywhere

@pytest.mark.slow
def test_score_pairs_kill_anywhere(tiny_chain, tmp_path, monkeypatch):
    samples = tiny_chain / "samples"
    w, pts = check_kill_anywhere(tmp_path, monkeypatch, lambda out: [
        "score", f"samples={samples}", "rewards=toy-bright,toy-red", f"out={out}", "batch_size=4"], n_kills=3, seed=1)
    tables = [samples / "rewards" / r / "scores.parquet" for r in ("toy-bright", "toy-red")]
    w2, pts2 = check_kill_anywhere(tmp_path / "p", monkeypatch, lambda out: [
        "pairs", *tables, "--out", out, "--selector", "frs"], n_kills=3, seed=2)
    assert len(pts) == 3 and len(pts2) == min(3, w2)


@pytest.fixture(scope="module")
def two_checkpoints(tiny_chain, tmp_path_factory):
    from capo.stages import train

    root = tmp_path_factory.mktemp("ckpts")
    for i, pairs in enumerate(("pairs-frs", "pairs-bw")):
        train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / pairs),
                                    out=str(root / f"t{i}"), steps=2, batch_size=2, lr=1e-3, seed=i,
                                    checkpoint_every=2, keep_checkpoints=0, quiet=True))
    return [root / "t0" / "final", root / "t1" / "final"]


@pytest.mark.slow
def test_merge_and_eval_kill_anywhere(tiny_chain, two_checkpoints, tmp_path, monkeypatch):
    a, b = two_checkpoints
    check_kill_anywhere(tmp_path / "m", monkeypatch, lambda out: [
        "merge", f"checkpoints={a},{b}", f"out={out}"], n_kills=2, seed=3)
    w, pts = check_kill_anywhere(tmp_path / "e", monkeypatch, lambda out: [
        "eval", f"models=base={tiny_chain / 'base'},a={a}", f"out={out}", f"prompts={tiny_chain / 'prompts.txt'}",
        "rewards=toy-bright,toy-red", "n=2", "n_boot=50"], n_kills=3, seed=4)
    assert w > 10


@pytest.mark.slow
def test_reproduce_kill_anywhere(tiny_chain, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = lambda out: [  # noqa: E731
        "reproduce", "--preset", "demo", f"out={out}", f"bases={tiny_chain / 'base'}", "rewards=toy-bright,toy-red",
        "roles=MPS,VQA", "gold=null", f"train_prompts={tiny_chain / 'prompts.txt'}", "train_limit=4", "n=4",
        "val_limit=4", "val_n=1", "eval_limit=4", "eval_n=1", "steps=2", "batch_size=2", "lr=1e-3",
        "betas={dpo: [5.0], ipo: [5.0], capo: [5.0]}", "widen=0", "biases=[1.5]", "seeds=[0]", "benchmarks=false",
        "human_pairs=false"]
    check_kill_anywhere(tmp_path, monkeypatch, args, n_kills=2, seed=5)


def test_second_process_on_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from capo import artifacts
artifacts.prepare_out_dir({str(out)!r}, {{"run_key": "k", "stage": "generate"}})
print("locked", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(artifacts.ArtifactError, match="in use by another capo process"):
            artifacts.prepare_out_dir(out, {"run_key": "k", "stage": "generate"})
        with pytest.raises(artifacts.ArtifactError, match="in use by another capo process"):
            artifacts.prepare_out_dir(out, {"run_key": "other", "stage": "generate"}, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    # the holder died without cleaning up: its lock died with it, so the rerun resumes
    assert artifacts.prepare_out_dir(out, {"run_key": "k", "stage": "generate"}) is False
    artifacts.finish(out, {"run_key": "k", "stage": "generate"})
    assert not (out / artifacts.LOCK).exists()
