"""The README's two commands are what CI runs, and the README's main job works."""

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from capo.cli import main

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


def test_readme_main_job_is_a_valid_reproduce_preset():
    """The main job is `capo reproduce --preset P`; P must resolve and build a valid config
    (its execution path is tested end to end on tiny models in test_reproduce.py)."""
    from capo.config import build
    from capo.experiments import reproduce

    install_and_run, _ = readme_commands()
    job = shlex.split(install_and_run.split(" && ")[-1])
    assert job[:2] == [".venv/bin/capo", "reproduce"] and job[2] == "--preset"
    cfg = build(reproduce.ReproduceConfig, None, [])
    data = reproduce.load_preset(job[3])
    assert set(data) <= set(vars(cfg))
    assert data["bases"] and data["rewards"]


def test_help_lists_every_subcommand():
    r = CliRunner().invoke(main, ["--help"])
    for name in ("generate", "score", "pairs", "train", "sweep", "merge", "eval", "compare", "tables", "reproduce",
                 "ls"):
        assert re.search(rf"^\s+{name}\s", r.output, flags=re.M), name


def test_readme_results_quote_the_generated_claims():
    """Every line between the README's `claims:` markers stands verbatim in the claims file
    it names: the results are quoted as generated, never rewritten by hand."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- claims: (\S+) -->\n(.*?)<!-- /claims -->", text, flags=re.S)
    assert blocks, "the README's results section quotes no claims file"
    for path, body in blocks:
        generated = (ROOT / path).read_text().splitlines()
        lines = [x for x in body.splitlines() if x.strip()]
        assert lines and all(x in generated for x in lines), path


def test_stage_help_shows_default_values():
    """`capo <stage> --help` lists every key with its default value (not source text)."""
    for stage in ("sweep", "train", "eval"):
        r = CliRunner().invoke(main, [stage, "--help"])
        assert r.exit_code == 0 and "field(" not in r.output and "default_factory" not in r.output, stage
    r = CliRunner().invoke(main, ["sweep", "--help"])
    assert "= [50.0, 150.0, 500.0, 1500.0, 5000.0]" in r.output and "model            (required)" in r.output


def test_ls_lists_benchmarks_prompt_sets_detectors_and_world_prompts():
    """`capo ls` (issue #20): besides models and rewards, what `capo eval` can measure, the prompt
    sets it reads and the detectors it runs, each with its description; an unknown kind is refused."""
    from capo.eval.prompts import PROMPT_SETS
    from capo.registry import BENCHMARKS

    r = CliRunner().invoke(main, ["ls"])
    assert r.exit_code == 0
    sections = dict(re.findall(r"^(\S+):\n((?:  .*\n)*)", r.output, flags=re.M))
    assert {"models", "rewards", "benchmarks", "prompt-sets", "detectors", "world-prompts", "objectives"} <= set(sections)
    listed = lambda k: [ln.split()[0] for ln in sections[k].splitlines()]  # noqa: E731
    assert listed("benchmarks") == sorted(BENCHMARKS.names()) == ["compbench", "divergence", "dpg", "geneval", "winrate"]
    assert listed("prompt-sets") == sorted(PROMPT_SETS) and "geneval" in listed("prompt-sets")
    assert {"mask2former", "mmdet", "owlv2", "unidet"} <= set(listed("detectors"))
    assert listed("world-prompts") == ["shapes"]
    assert listed("pipeline-dirs") == ["capo_pipeline.json", "model_index.json"]
    assert "capo_pipeline.json  a shapes-world pipeline" in sections["pipeline-dirs"]  # the column fits the name
    bad = CliRunner().invoke(main, ["ls", "benchmark"])
    assert bad.exit_code != 0 and "unknown kind 'benchmark'" in bad.output
