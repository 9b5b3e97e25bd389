"""`capo eval` and `capo compare` on tiny models: pairing by seed, win-rates, deltas, gates."""

import json

import pytest
from click.testing import CliRunner

from capo.report.compare import check_gates, compare_metrics, parse_gate
from capo.stages import evaluate, train
from capo.cli import main


@pytest.fixture(scope="module")
def tuned(tiny_chain, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "t"
    train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), out=str(out),
                                steps=3, batch_size=2, lr=1e-2, beta=50.0, quiet=True))
    return out / "final"


def test_a_model_against_itself_ties_everywhere(tiny_chain, tmp_path):
    """Same per-item seeds -> identical images -> every comparison a tie: win-rate exactly 50 %,
    score and GenEval deltas exactly 0 (this fails if seeds or pairing drift)."""
    base = str(tiny_chain / "base")
    res = evaluate.run(evaluate.EvalConfig(models=[f"a={base}", f"b={base}"], out=str(tmp_path / "e"), limit=3, n=2,
                                           benchmarks=["winrate", "geneval"], rewards=["toy-bright", "toy-red"]))
    w = res["results"]["b"]["winrate"]["toy-bright"]
    assert w["win_rate"] == 50.0 and w["ties"] == 6 and w["ci_low"] == 50.0 and w["score_delta"] == 0.0
    assert res["results"]["b"]["geneval_delta"]["overall"]["delta"] == 0.0
    files = json.loads((tmp_path / "e" / "results" / "b" / "winrate.json").read_text())
    assert files["result"]["toy-red"]["n_images"] == 6 and files["prompt_sets"] == ["shapes:geneval"]


def test_eval_pairs_images_by_prompt_and_seed(tiny_chain, tuned, tmp_path):
    import pandas as pd

    res = evaluate.run(evaluate.EvalConfig(models=[f"base={tiny_chain / 'base'}", f"tuned={tuned}"],
                                           out=str(tmp_path / "e"), limit=4, n=2, benchmarks=["winrate", "compbench"],
                                           compbench_prompts=["shapes:compbench:color"], rewards=["toy-red"]))
    a = pd.read_parquet(tmp_path / "e" / "results" / "base" / "winrate_per_image.parquet")
    b = pd.read_parquet(tmp_path / "e" / "results" / "tuned" / "winrate_per_image.parquet")
    m = a.merge(b, on=["prompt_id", "sample_id"], suffixes=("_a", "_b"))
    assert len(m) == 8
    w = res["results"]["tuned"]["winrate"]["toy-red"]
    wins = (m["toy-red_b"] > m["toy-red_a"]).sum() + 0.5 * (m["toy-red_b"] == m["toy-red_a"]).sum()
    assert w["win_rate"] == pytest.approx(100 * wins / 8)
    assert w["ci_low"] <= w["win_rate"] <= w["ci_high"]
    assert "color" in res["results"]["tuned"]["compbench_delta"]
    ia = pd.read_parquet(tmp_path / "e" / "samples" / "shapes-geneval" / "base" / "index.parquet")
    ib = pd.read_parquet(tmp_path / "e" / "samples" / "shapes-geneval" / "tuned" / "index.parquet")
    assert ia["seed"].tolist() == ib["seed"].tolist()  # the same per-item seeds for every model


def test_compiled_sampling_gives_each_models_eager_images(tiny_chain, tuned, tmp_path):
    """`compile=eager` (dynamo traces the denoiser, nothing is fused) samples exactly the eager
    images for every model, the second model too: its compiled graph reuses the first one's
    but must read its own weights (this fails if a stale graph kept the base's). The default
    `off` leaves the key out of the manifest, so earlier runs keep their run keys."""
    import pandas as pd

    from capo.config import ConfigError

    models = [f"base={tiny_chain / 'base'}", f"tuned={tuned}"]
    frames = {}
    for backend in ("off", "eager"):
        out = tmp_path / backend
        evaluate.run(evaluate.EvalConfig(models=models, out=str(out), limit=3, n=2, benchmarks=["winrate"],
                                         rewards=["toy-bright", "toy-red"], compile=backend, quiet=True))
        frames[backend] = {lab: pd.read_parquet(out / "results" / lab / "winrate_per_image.parquet")
                           for lab in ("base", "tuned")}
        gen = json.loads((out / "samples" / "shapes-geneval" / "tuned" / "manifest.json").read_text())
        assert ("compile" in gen["config"]) == (backend != "off")
        assert ("compile" in json.loads((out / "manifest.json").read_text())["config"]) == (backend != "off")
    for lab in ("base", "tuned"):
        pd.testing.assert_frame_equal(frames["off"][lab], frames["eager"][lab])
    assert not frames["eager"]["tuned"]["toy-red"].equals(frames["eager"]["base"]["toy-red"])
    with pytest.raises(ConfigError, match="compile"):
        evaluate.EvalConfig(models=models, out=str(tmp_path / "x"), compile="max-autotune")


def test_compile_denoiser_refuses_an_unknown_backend(tiny_chain):
    from capo import models

    pipe = models.load_model(str(tiny_chain / "base"))
    with pytest.raises(ValueError, match="off | inductor | eager"):
        pipe.compile_denoiser("tensorrt")
    assert pipe.compile_denoiser("off") is pipe and pipe.denoiser._compiled_call_impl is None


def test_compare_prints_table_and_gates(tiny_chain, tuned, tmp_path):
    args = ["compare", str(tiny_chain / "base"), str(tuned), "--limit", "3", "--n", "2", "--rewards", "toy-bright",
            "--out", str(tmp_path / "c")]
    r = CliRunner().invoke(main, args + ["--fail-if", "winrate.toy-bright < 0"])
    assert r.exit_code == 0, r.output
    assert "| metric | base | t |" in r.output and "geneval.overall" in r.output and "winrate.toy-bright" in r.output
    r = CliRunner().invoke(main, args + ["--fail-if", "winrate.toy-bright <= 100"])  # always holds
    assert r.exit_code == 1 and "REGRESSION: winrate.toy-bright" in r.output
    # a typo in a gate is reported before anything is evaluated (nothing is written)
    fresh = ["compare", str(tiny_chain / "base"), str(tuned), "--limit", "3", "--n", "2", "--rewards", "toy-bright",
             "--out", str(tmp_path / "typo")]
    r = CliRunner().invoke(main, fresh + ["--fail-if", "geneval.overal < -0.02"])
    assert r.exit_code == 2 and "did you mean 'geneval.overall'" in r.output
    r = CliRunner().invoke(main, fresh + ["--fail-if", "winrate.toy-brite < 50"])
    assert r.exit_code == 2 and "did you mean 'winrate.toy-bright'" in r.output
    r = CliRunner().invoke(main, fresh + ["--fail-if", "compbench.color < 0"])
    assert r.exit_code == 2 and "needs the compbench benchmark" in r.output
    assert not (tmp_path / "typo").exists()
    r = CliRunner().invoke(main, args + ["--fail-if", "geneval.overall is bad"])
    assert r.exit_code == 2 and "expected 'METRIC OP NUMBER'" in r.output


def test_gate_parsing_and_checks():
    assert parse_gate(" geneval.overall < -0.02 ") == ("geneval.overall", "<", -0.02)
    metrics = {"geneval.overall": {"value": -0.05}, "winrate.r": {"value": 48.0}}
    assert check_gates(metrics, ["geneval.overall < -0.02"]) == ["geneval.overall = -0.05 < -0.02"]
    assert check_gates(metrics, ["winrate.r < 45", "geneval.overall >= 0"]) == []


def test_unknown_benchmark_and_duplicate_labels(tiny_chain, tmp_path):
    with pytest.raises(ValueError, match=r"benchmarks = \['drawbench'\]: item 'drawbench' unknown benchmark .*known: "
                                         r"compbench, divergence, dpg, geneval, winrate"):
        evaluate.run(evaluate.EvalConfig(models=[str(tiny_chain / "base")], out=str(tmp_path / "x"),
                                         benchmarks=["drawbench"]))
    with pytest.raises(ValueError, match="unique"):
        evaluate.parse_models(["a=x", "a=y"])


def test_divergence_benchmark(tiny_chain, tuned, tmp_path):
    """`--benchmarks divergence`: exactly 0 for the base against itself, positive for a
    fine-tuned model, on the same images the win-rates score; the strata are recorded."""
    base = str(tiny_chain / "base")
    res = evaluate.run(evaluate.EvalConfig(models=[f"base={base}", f"same={base}", f"tuned={tuned}"],
                                           out=str(tmp_path / "e"), limit=3, n=2, n_t=2,
                                           benchmarks=["winrate", "divergence"], rewards=["toy-red"]))
    same, tuned_d = res["results"]["same"]["divergence"], res["results"]["tuned"]["divergence"]
    assert same["mean"] == 0.0 and same["param_distance"] == 0.0
    assert tuned_d["mean"] > 0 and tuned_d["ci_low"] <= tuned_d["mean"] <= tuned_d["ci_high"]
    assert tuned_d["param_distance"] > 0 and tuned_d["n_images"] == 6
    assert "divergence" not in res["results"]["base"]
    assert sum(res["strata"]["shapes:geneval"].values()) == 3  # the tags the 3 prompts cover
    saved = json.loads((tmp_path / "e" / "results" / "tuned" / "divergence.json").read_text())
    assert saved["result"]["mean"] == tuned_d["mean"]
