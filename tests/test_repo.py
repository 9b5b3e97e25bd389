"""The README's two commands are what CI runs, and the README's main job works."""

import re
import shlex
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_ci_runs_the_readme_install_and_test_commands():
    install_and_run, test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    install = install_and_run.split(" && .venv/bin/capo ")[0]
    assert install.startswith("python3 -m venv .venv") and install in ci
    assert test in ci.splitlines()
    assert "HF_HUB_OFFLINE=1" in ci


def test_readme_main_job_runs(tmp_path, monkeypatch):
    install_and_run, _ = readme_commands()
    job = shlex.split(install_and_run.split(" && ")[-1])
    assert job[0] == ".venv/bin/capo"
    args = job[1:]
    args[args.index("--out") + 1] = str(tmp_path / "demo")
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    pairs = pd.read_parquet(tmp_path / "demo" / "pairs.parquet")
    assert len(pairs) > 0 and (pairs["target_gap"] > 0).all()


def test_help_lists_every_subcommand():
    r = CliRunner().invoke(main, ["--help"])
    for name in ("generate", "score", "pairs", "train", "merge", "eval", "compare", "tables", "reproduce", "ls"):
        assert re.search(rf"^\s+{name}\s", r.output, flags=re.M), name
