"""Claims verdicts and decisive bold on hand-made evaluation directories with planted effects."""

import json

import numpy as np
import pandas as pd
import pytest

from capo.report import claims
from capo.report.evidence import Evidence
from capo.report.render import to_csv_rows, to_latex, to_markdown
from capo.report.tables import table2

REWARDS = ["ra", "rb"]
ROLES = {"ra": "MPS", "rb": "VQA"}


def _experiment(tmp_path, effects: dict[str, float], seeds=(0, 1, 2), P=40, K=2, seed=0):
    """An eval dir: base scores ~ N(0, 1); a cell's scores = base + effect + noise, so an
    effect > 0 wins over the base (and over cells with smaller effects) on most images."""
    rng = np.random.default_rng(seed)
    d = tmp_path / "exp" / "b" / "eval"
    pids = np.repeat([f"p{i:03d}" for i in range(P)], K)
    sids = np.tile(np.arange(K), P)
    base = pd.DataFrame({"prompt_id": pids, "sample_id": sids} | {r: rng.normal(size=P * K) for r in REWARDS})
    res = {"base": "base", "models": {"base": "m"}, "rewards": REWARDS, "n_prompts": {"set@test": P},
           "n_per_prompt": K, "results": {"base": {}}}
    frames = {"base": base}
    for cell, eff in effects.items():
        for s in seeds:
            lab = f"{cell}.s{s}"
            frames[lab] = base.copy()
            for r in REWARDS:
                frames[lab][r] = base[r] + eff + 0.3 * rng.normal(size=P * K)
            res["models"][lab], res["results"][lab] = lab, {}
    for lab, f in frames.items():
        (d / "results" / lab).mkdir(parents=True)
        f.to_parquet(d / "results" / lab / "winrate_per_image.parquet")
    (d / "results.json").write_text(json.dumps(res))
    return Evidence(d, n_boot=500)


def test_combine():
    assert claims.combine(["reproduced", "reproduced"]) == "reproduced"
    assert claims.combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert claims.combine(["reproduced", "contradicted"]) == "contradicted"
    assert claims.combine([]) == "inconclusive"


def test_each_verdict_is_reached(tmp_path):
    # C2 (FRS > SUM for every objective): planted, large; C3 (CaPO+FRS > CaPO+SOUP): the
    # opposite planted; C1 (CaPO best on its trained reward): no effect at all.
    effects = {f"{o}-frs": 0.3 for o in ("dpo", "ipo", "capo")} | {f"{o}-sum": 0.0 for o in ("dpo", "ipo", "capo")}
    effects |= {"capo-soup": 1.0}  # win-rates over the base: FRS ~84%, SUM ~50%, SOUP ~100%
    effects |= {f"{o}-single-{r}": 0.2 for o in ("dpo", "ipo", "capo") for r in REWARDS}
    ev = _experiment(tmp_path, effects)
    res = claims.evaluate(ev, {}, ROLES, "ra", "b")
    assert res["C2"]["verdict"] == "reproduced" and len(res["C2"]["comparisons"]) == 3
    assert res["C3"]["verdict"] == "contradicted"
    assert res["C1"]["verdict"] == "inconclusive" and len(res["C1"]["comparisons"]) == 4
    assert res["C5"]["comparisons"] == []  # no dpo-human cell: nothing to test
    md = claims.render(tmp_path / "exp", {"b": {"evidence": ev, "tables": {}}}, ROLES, "ra")
    row = next(line for line in md.splitlines() if line.startswith("| C2:"))
    assert "**reproduced**" in row and "3 / 0 / 3" in row
    assert "**contradicted**" in next(line for line in md.splitlines() if line.startswith("| C3:"))
    assert "**not run**" in next(line for line in md.splitlines() if line.startswith("| C5:"))
    # the "Decided" lines restate the rows' counts, per base and over the bases together
    rows = [line.split(" | ")[4].split(" / ") for line in md.splitlines() if line.startswith("| C")]
    rep, con, tot = (sum(int(r[i]) for r in rows) for i in range(3))
    assert f"Decided on b: **{rep + con} of {tot}** comparisons decided ({rep} reproduced, {con} contradicted)" in md
    assert rep >= 3 and con >= 1 and "bases together" not in md
    md2 = claims.render(tmp_path / "exp", {"b": {"evidence": ev, "tables": {}}, "b2": {"evidence": ev, "tables": {}}},
                        ROLES, "ra")
    together = next(line for line in md2.splitlines() if "bases together" in line)
    assert f"**{2 * (rep + con)} of {2 * tot}** comparisons" in together and "C2" not in together
    assert md2.index("bases together") < md2.index("## Every comparison")


def test_decided_text_counts_comparisons_and_names_the_decided_claims():
    rows = [("C1", "contradicted", 0, 2, 6), ("C2", "inconclusive", 0, 0, 3), ("C5", "reproduced", 1, 0, 1),
            ("C6", "not run", 0, 0, 0)]
    assert claims.decided_text(rows) == ("**3 of 10** comparisons decided (1 reproduced, 2 contradicted); "
                                         "**2 of 4** claims (reproduced: C5; contradicted: C1)")
    assert claims.decided_text([("C2", "inconclusive", 0, 0, 3)]) == (
        "**0 of 3** comparisons decided (0 reproduced, 0 contradicted); **0 of 1** claims")
    assert claims.decided_text(rows, names=False).endswith("**2 of 4** claims")


def test_no_effect_is_inconclusive_in_most_repetitions(tmp_path):
    """With equal cells, C2's verdict is inconclusive in at least 90% of repetitions."""
    n_inc = 0
    reps = 20
    for i in range(reps):
        effects = {f"{o}-{s}": 0.5 for o in ("dpo", "ipo", "capo") for s in ("frs", "sum")}
        ev = _experiment(tmp_path / str(i), effects, seed=100 + i, P=30)
        n_inc += claims.evaluate(ev, {}, ROLES, "ra", "b")["C2"]["verdict"] == "inconclusive"
    assert n_inc >= 0.9 * reps


def test_bold_only_beyond_the_ci_and_every_format(tmp_path):
    effects = {"dpo-sum": 0.0, "dpo-soup": 0.02, "dpo-frs": 0.01, "capo-frs": 0.3}
    ev = _experiment(tmp_path, effects)
    t = table2(ev, ROLES, "b")
    rows = dict(t.rows)
    j = t.columns.index("MPS win (%)") - 1
    assert rows["CaPO + FRS"][j]["mark"] == "best"  # far ahead: bold
    assert all(rows[n][j]["mark"] == "" for n in ("DPO + SUM", "DPO + SOUP", "DPO + FRS"))
    ev2 = _experiment(tmp_path / "tie", {"dpo-sum": 0.5, "dpo-frs": 0.5})
    t2 = table2(ev2, ROLES, "b")
    marks = {n: c[0]["mark"] for n, c in t2.rows if n != "base"}
    assert set(marks.values()) == {"tied"}  # equal cells: no bold, both marked tied
    md = to_markdown(t)
    assert "**" in md and "±" in md
    csv_rows = to_csv_rows(t)
    cap = next(r for r in csv_rows if r["row"] == "CaPO + FRS" and r["column"] == "MPS win (%)")
    assert cap["ci_low"] < cap["value"] < cap["ci_high"] and cap["mark"] == "best"
    tex = to_latex(t)
    assert "\\toprule" in tex and "\\textbf{" in tex and "$\\pm$" in tex


def test_evidence_refuses_misaligned_images(tmp_path):
    ev = _experiment(tmp_path, {"dpo-frs": 0.5})
    f = ev.dir / "results" / "dpo-frs.s1" / "winrate_per_image.parquet"
    pd.read_parquet(f).iloc[1:].to_parquet(f)
    with pytest.raises(ValueError, match="different images"):
        Evidence(ev.dir).values(["dpo-frs"], ("win", "ra"))


def test_replication_conflict_is_reproduced_against_contradicted_only():
    from capo.report.replication import conflict

    assert conflict({"seeds-0": "reproduced", "seeds-1": "contradicted"})
    assert conflict({"a": "contradicted", "b": "inconclusive", "c": "reproduced"})
    assert not conflict({"a": "reproduced", "b": "inconclusive"})
    assert not conflict({"a": "contradicted", "b": "contradicted"})
    assert not conflict({"a": "inconclusive", "b": "not run"})


def test_a_contradicted_claim_shows_a_contradicting_comparison():
    from capo.report.claims import weakest

    comps = [{"a": "x", "ci_low": -31.7, "ci_high": 3.7, "verdict": "inconclusive"},
             {"a": "y", "ci_low": -20.0, "ci_high": -2.0, "verdict": "contradicted"},
             {"a": "z", "ci_low": -25.0, "ci_high": -5.0, "verdict": "contradicted"}]
    assert weakest(comps, "contradicted")["a"] == "z"  # the clearest contradiction, not x (lowest bound)
    assert weakest(comps[:1], "inconclusive")["a"] == "x"
    ok = [{"a": "p", "ci_low": 1.0, "ci_high": 9.0, "verdict": "reproduced"},
          {"a": "q", "ci_low": 0.5, "ci_high": 20.0, "verdict": "reproduced"}]
    assert weakest(ok, "reproduced")["a"] == "q" and weakest([], "inconclusive") is None


def test_the_footer_counts_images_per_prompt_in_words(tmp_path):
    """"1 image per prompt", "2 images per prompt"; capo power reads the design back from either."""
    import re

    from capo.report.render import plural

    assert (plural(1, "image"), plural(2, "image"), plural(0, "seed")) == ("1 image", "2 images", "0 seeds")
    for k in (1, 2):
        ev = _experiment(tmp_path / str(k), {"capo-frs": 0.1}, K=k, P=5)
        foot = ev.footer()
        assert f"5 prompts; {k} image{'s' if k > 1 else ''} per prompt," in foot
        assert re.search(r"(\d+) prompts; (\d+) images? per prompt", foot).group(2) == str(k)
