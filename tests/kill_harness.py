"""The kill-anywhere harness (issue #10): run a command here counting its atomic writes, rerun it
in a subprocess that SIGKILLs itself at a chosen write, resume it, and compare the directory with
an uninterrupted run's. Used by test_kill.py and test_iterate.py."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from capo import artifacts
from capo.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUNNER = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
import conftest  # the toy rewards
from capo.cli import main
main(sys.argv[1:])
"""
VOLATILE = {"created", "seconds", "command", "pairs_per_s", "s_per_step", "elapsed_s"}


def run_here(args, monkeypatch) -> int:
    """Run ``capo ARGS`` in this process; returns how many atomic writes it made."""
    monkeypatch.setenv("CAPO_KILL_AT_WRITE", str(10**9))  # count, never kill
    before = artifacts._WRITES
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    monkeypatch.delenv("CAPO_KILL_AT_WRITE")
    assert r.exit_code == 0, r.output
    return artifacts._WRITES - before


def run_killed(args, k: int, cwd: Path) -> subprocess.CompletedProcess:
    import torch

    # the threads of this process: float results depend on the thread count, and the killed
    # run's finished parts must equal what this process computes
    env = {**os.environ, "CAPO_KILL_AT_WRITE": str(k), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_HUB_OFFLINE": "1", "CAPO_QUIET": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def snapshot(d: Path) -> dict:
    """Every file under ``d``: its bytes; manifests and the training log as JSON without their
    volatile fields."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(d))
            if p.name in ("manifest.json", "metrics.jsonl"):
                out[rel] = [strip(json.loads(x)) for x in p.read_text().splitlines() if x.strip()] \
                    if p.suffix == ".jsonl" else strip(json.loads(p.read_text()))
            else:
                out[rel] = p.read_bytes()
    return out


def leftovers(d: Path) -> list[str]:
    return [str(p) for p in d.rglob("*") if p.name.endswith(".tmp") or p.name == artifacts.LOCK]


def check_kill_anywhere(tmp_path, monkeypatch, args_for, n_kills: int, seed: int, window=None, after_kill=None):
    """Reference run; then n_kills runs killed at random writes and resumed; all equal. Every
    run uses the same directory (moved away in between): run keys hash the paths they read.
    ``window(W)``: the writes to draw kill points from (default all W); ``after_kill(out)``:
    checks on the killed run's directory before it resumes."""
    import shutil

    out = tmp_path / "run"
    writes = run_here(args_for(out), monkeypatch)
    assert writes >= 3
    want = snapshot(out)
    shutil.rmtree(out)
    span = window(writes) if window else range(1, writes + 1)
    points = sorted(random.Random(seed).sample(span, min(n_kills, len(span))))
    for k in points:
        p = run_killed(args_for(out), k, tmp_path)
        assert p.returncode == -signal.SIGKILL, (k, p.returncode, p.stderr[-2000:])
        assert list(out.rglob("*.tmp"))  # it died holding a temp file
        if after_kill:
            after_kill(out)
        run_here(args_for(out), monkeypatch)  # the rerun resumes (or restarts what had no output yet)
        got = snapshot(out)
        differ = sorted(f for f in set(got) | set(want) if got.get(f) != want.get(f))  # (no giant assertion diff)
        assert not differ, f"killed at write {k} of {writes}: {len(differ)} files differ, e.g. {differ[:8]}"
        assert not leftovers(out), leftovers(out)
        shutil.rmtree(out)
    return writes, points
