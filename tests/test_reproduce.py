"""`capo reproduce` end to end on a tiny model with toy rewards, and `capo tables` on its output."""

import json
import re
import stat

import pytest
from click.testing import CliRunner

from capo import artifacts
from capo.experiments import reproduce
from capo.report.paper import PAPER, paper_table
from capo.cli import main


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tiny_chain, tmp_path):
    cfg = reproduce.ReproduceConfig(
        preset="tiny", out=str(tmp_path / "exp"), bases=[str(tiny_chain / "base")], rewards=["toy-bright", "toy-red"],
        roles=["MPS", "VQA"], gold=None, train_prompts=str(tiny_chain / "prompts.txt"), train_limit=4, n=4,
        n_ablation=[3], val_prompts="shapes:geneval@val", val_limit=6, val_n=1,
        eval_prompts="shapes:geneval@test", eval_limit=6, eval_n=1, steps=2, batch_size=2, lr=1e-3,
        betas={"dpo": [5.0, 50.0], "ipo": [5.0, 50.0], "capo": [5.0, 50.0]}, widen=1, biases=[1.0, 1.5],
        seeds=[0, 1], quiet=True)
    res = reproduce.run(cfg)
    reports = tmp_path / "exp" / "reports"
    # every manifest is strict JSON (no NaN / Infinity); every file gets the umask's mode (0644 under 022)
    manifests = list((tmp_path / "exp").rglob("manifest.json"))
    assert len(manifests) > 50
    for m in manifests:
        json.loads(m.read_text(), parse_constant=lambda c: pytest.fail(f"{m}: non-standard JSON constant {c}"))
    files = [p for p in (tmp_path / "exp").rglob("*") if p.is_file()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~artifacts._UMASK)}
    md = (reports / "tables.md").read_text()
    for n in range(1, 6):
        assert f"## Table {n}." in md
    base = "base"  # the tiny base's slug is its directory name
    ev = json.loads((tmp_path / "exp" / base / "eval" / "results.json").read_text())
    labels = set(ev["results"])
    for s in (0, 1):  # every cell with both training seeds
        for o in ("dpo", "ipo", "capo"):
            assert {f"{o}-single-toy-bright.s{s}", f"{o}-single-toy-red.s{s}", f"{o}-sum.s{s}", f"{o}-soup.s{s}",
                    f"{o}-frs.s{s}"} <= labels
        assert {f"dpo-human.s{s}", f"capo-frs-b1.0.s{s}", f"capo-frs-b1.5.s{s}", f"capo-frs-n3.s{s}"} <= labels
    # validation and test prompts are disjoint; the sweep records its grid and selection
    sw = json.loads((tmp_path / "exp" / base / "sweep" / "capo-frs" / "sweep.json").read_text())
    test_ids = {p.split("/", 1)[1] for p in
                __import__("pandas").read_parquet(tmp_path / "exp" / base / "eval" / "results" / "base" /
                                                  "winrate_per_image.parquet")["prompt_id"]}
    assert test_ids and not (set(sw["val_prompt_ids"]) & test_ids)
    assert sw["selected"]["beta"] in [p["beta"] for p in sw["grid"]] and len(sw["grid"]) >= 2
    # the seed-0 model of a cell is the sweep's selected checkpoint
    assert ev["models"]["capo-frs.s0"] == sw["selected"]["checkpoint"]
    for f in ("tables.csv", "tables.tex", "claims.md"):
        assert (reports / f).stat().st_size > 200
    claims = (reports / "claims.md").read_text()
    for k in ("C1", "C2", "C3", "C4", "C5", "C6"):
        assert f"| {k}:" in claims
    assert "\\toprule" in (reports / "tables.tex").read_text()
    assert "Paper (SDXL)" in md and "61.1" in md  # --with-paper numbers
    for f in ("winrate_base.png", "pareto_base.png", "grid_base.png"):
        assert (reports / f).stat().st_size > 1000
    bench = json.loads((tmp_path / "exp" / base / "bench" / "results.json").read_text())
    assert "geneval" in bench["results"]["capo-frs.s1"] and "compbench_delta" in bench["results"]["capo-frs.s0"]
    # a second run reuses every finished stage and rewrites byte-identical tables and claims
    before = {f: (reports / f).read_bytes() for f in ("tables.md", "tables.csv", "claims.md")}
    again = reproduce.run(cfg)
    assert again["seconds"] < res["seconds"]
    assert {f: (reports / f).read_bytes() for f in before} == before
    r = CliRunner().invoke(main, ["tables", "--root", str(tmp_path / "exp"), "--rewards", "toy-bright,toy-red",
                                  "--roles", "MPS,VQA"])
    assert r.exit_code == 0 and "## Table 5." in r.output and "Paper" not in r.output
    # a run replicates itself: every verdict equal, no conflict
    r = CliRunner().invoke(main, ["replicate", f"a={tmp_path / 'exp'}", f"b={tmp_path / 'exp'}", "--rewards",
                                  "toy-bright,toy-red", "--roles", "MPS,VQA", "--out", str(tmp_path / "rep.md")])
    assert r.exit_code == 0 and "0 conflict(s)" in r.output, r.output
    rep = (tmp_path / "rep.md").read_text()
    assert "**Conflicts: 0**" in rep
    claims_part = rep.split("## Claims")[1].split("## Comparisons")[0]
    rows = [ln for ln in claims_part.splitlines() if ln.count("|") == 5 and ln.split("|")[2].strip().startswith("C")]
    assert len(rows) == 6 and all(ln.split("|")[3].strip() == ln.split("|")[4].strip() for ln in rows)


def test_paper_tables_hold_the_papers_numbers():
    t1 = paper_table(1, "SDXL")
    assert "**61.1**" in t1 and "**83.1**" in t1  # CaPO's best MPS->MPS and VILA->VILA, bold
    t5 = paper_table(5, "SDXL")
    assert re.search(r"b1\.5 \| 61\.2 \| 54\.6 \| 79\.2", t5)
    assert PAPER["table3"]["CaPO+SDXL"][6] == 0.59  # GenEval overall 0.55 -> 0.59


def test_unknown_preset_lists_known():
    r = CliRunner().invoke(main, ["reproduce", "--preset", "nope"])
    assert r.exit_code == 2 and "known: demo, full, paper-sd3, paper-sdxl, quick" in r.output


def test_table3_rows_name_the_base_model_and_bold_the_better(tmp_path):
    """Table 3 from per-image GenEval rows: the mean over seeds, the paired delta with its CI,
    and bold only for the model that is better beyond that CI."""
    import pandas as pd

    from capo.report.render import to_markdown
    from capo.report.tables import table3

    pids = [f"p{i}" for i in range(20)]
    tags = ["counting"] * 10 + ["colors"] * 10
    base = pd.DataFrame({"prompt_id": pids, "sample_id": 0, "tag": tags, "correct": [i % 2 == 0 for i in range(20)]})
    res = {"base": "base", "models": {"base": "shapes-sd3"}, "n_prompts": {"shapes:geneval@test": 20},
           "n_per_prompt": 1, "results": {"base": {}}}
    for s in (0, 1):  # CaPO gets every counting prompt right in both seeds, colours unchanged
        lab = f"capo-frs.s{s}"
        res["models"][lab], res["results"][lab] = f"runs/t{s}/final", {}
        f = base.copy()
        f["correct"] = [True if t == "counting" else c for t, c in zip(tags, base["correct"])]
        (tmp_path / "results" / lab).mkdir(parents=True)
        f.to_parquet(tmp_path / "results" / lab / "geneval_per_image.parquet")
    (tmp_path / "results" / "base").mkdir(parents=True)
    base.to_parquet(tmp_path / "results" / "base" / "geneval_per_image.parquet")
    (tmp_path / "results.json").write_text(json.dumps(res))
    t = table3(tmp_path, "shapes-sd3")
    rows = dict(t.rows)
    assert set(rows) == {"shapes-sd3", "CaPO+shapes-sd3", "CaPO − base"}  # as the paper's "SDXL" / "CaPO+SDXL"
    j = t.columns.index("GenEval counting") - 1
    assert rows["shapes-sd3"][j]["value"] == 0.5 and rows["CaPO+shapes-sd3"][j]["value"] == 1.0
    assert rows["CaPO − base"][j]["value"] == pytest.approx(0.5) and rows["CaPO − base"][j]["ci_low"] > 0
    assert rows["CaPO+shapes-sd3"][j]["mark"] == "best" and rows["shapes-sd3"][j]["mark"] == ""
    k = t.columns.index("GenEval colors") - 1
    assert rows["CaPO − base"][k]["value"] == 0 and rows["CaPO+shapes-sd3"][k]["mark"] == ""  # no change: no bold
    o = t.columns.index("GenEval overall") - 1  # unweighted mean of the tags: (1.0 + 0.5) / 2
    assert rows["CaPO+shapes-sd3"][o]["value"] == pytest.approx(0.75)
    assert "**1.000**" in to_markdown(t)


def test_compile_reaches_every_sampling_stage(monkeypatch, tmp_path):
    """`compile=` is passed to each stage that samples (training samples, every sweep's
    validation, the test eval and the benchmarks) and to no training run; `off` stays out of the
    reproduce config's manifest dict so that earlier runs keep their keys."""
    from capo.config import ConfigError, to_dict

    seen = []

    def record(name, result=None):
        def stage(cfg, *args, **kwargs):
            seen.append((name, cfg))
            return result(cfg) if result else {}
        return stage

    selected = lambda c: {"selected": {"beta": 1.0, "beta_trained": 1.0, "checkpoint": str(tmp_path / c.out)}}  # noqa: E731
    monkeypatch.setattr(reproduce.dist, "run_stage", lambda name, cfg, launch=None: seen.append((name, cfg)))
    monkeypatch.setattr(reproduce.pairs, "run", record("pairs"))
    monkeypatch.setattr(reproduce, "label_pairs", lambda *a, **k: None)
    monkeypatch.setattr(reproduce.sweep, "run", record("sweep", selected))
    monkeypatch.setattr(reproduce.merge, "run", record("merge"))
    monkeypatch.setattr(reproduce.evaluate, "run", record("eval"))
    monkeypatch.setattr(reproduce, "write_reports", lambda *a, **k: None)
    cfg = reproduce.ReproduceConfig(preset="t", out=str(tmp_path / "exp"), bases=["shapes-sdxl"], seeds=[0, 1],
                                    compile="eager", quiet=True)
    reproduce.run(cfg)
    kinds = {}
    for name, c in seen:
        kinds.setdefault(name, set()).add(getattr(c, "compile", None))
    assert kinds["generate"] == kinds["sweep"] == kinds["eval"] == {"eager"}
    assert len([1 for n, _ in seen if n == "eval"]) == 2  # test win-rates and the benchmarks
    trains = [c for n, c in seen if n == "train"]  # seed 1 of every cell
    assert trains and all(c.compile == "off" for c in trains)  # training's compile comes from train_options
    assert "compile" not in to_dict(reproduce.ReproduceConfig(preset="t", out="x"))
    assert to_dict(cfg)["compile"] == "eager"
    with pytest.raises(ConfigError, match="compile"):
        reproduce.ReproduceConfig(preset="t", out="x", compile="fast")
