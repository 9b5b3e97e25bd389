"""`capo compare --fail-if` on intervals: parsing, firing per field, errors; the table's tag footnote."""

import pytest

from capo.report.compare import FIELDS, Gate, check_gates, compare_table, parse_gate

METRICS = {
    "geneval.overall": {"value": -0.03, "ci_low": -0.07, "ci_high": 0.01, "kind": "delta"},
    "geneval.counting": {"value": -0.10, "ci_low": -0.18, "ci_high": -0.02, "kind": "delta"},
    "winrate.shapes-gold": {"value": 46.0, "ci_low": 41.5, "ci_high": 50.5, "kind": "%"},
    "winrate.shapes-pref": {"value": 44.0, "ci_low": 40.0, "ci_high": 48.0, "kind": "%"},
}


def test_parse_plain_and_field_forms():
    assert parse_gate("geneval.overall < -0.02") == ("geneval.overall", "<", -0.02)
    g = parse_gate(" geneval.overall:ci_high<0 ")
    assert g == ("geneval.overall:ci_high", "<", 0.0) and isinstance(g, Gate)
    assert (g.metric, g.field, g.op, g.threshold) == ("geneval.overall", "ci_high", "<", 0.0)
    g = parse_gate("winrate.shapes-gold:ci_low >= 5e1")
    assert (g.metric, g.field, g.op, g.threshold) == ("winrate.shapes-gold", "ci_low", ">=", 50.0)
    assert parse_gate("score.shapes-vqa:value <= +.5").field == "value"
    assert parse_gate("geneval.overall < -0.02").field == "value"
    assert FIELDS == ("value", "ci_low", "ci_high")


@pytest.mark.parametrize("expr,match", [
    ("geneval.overall is bad", "expected 'METRIC OP NUMBER'"),
    ("geneval.overall < ", "expected 'METRIC OP NUMBER'"),
    ("geneval.overall < 1.2.3", "expected 'METRIC OP NUMBER'"),
    ("geneval.overall == 0", "expected 'METRIC OP NUMBER'"),
    ("< 0", "expected 'METRIC OP NUMBER'"),
    ("geneval.overall:ci_hi < 0", "unknown field 'ci_hi'.*value, ci_low, ci_high"),
    ("geneval.overall:CI_HIGH < 0", "unknown field 'CI_HIGH'"),
    ("geneval.overall: < 0", "unknown field ''"),
    ("geneval.overall:ci_high:value < 0", "more than one ':'"),
    (":ci_high < 0", "no metric before ':'"),
])
def test_malformed_expressions_are_errors(expr, match):
    with pytest.raises(ValueError, match=match):
        parse_gate(expr)


def test_value_field_fires_on_the_point_estimate():
    assert check_gates(METRICS, ["geneval.overall < -0.02"]) == [
        "geneval.overall = -0.03 < -0.02 (geneval.overall -0.03, 95% CI [-0.07, 0.01])"]
    assert check_gates(METRICS, ["geneval.overall:value < -0.02"])[0].startswith("geneval.overall:value = -0.03 <")
    assert check_gates(METRICS, ["geneval.overall < -0.05", "geneval.overall:value >= 0"]) == []


def test_ci_high_fires_only_when_the_whole_interval_is_below():
    assert check_gates(METRICS, ["geneval.overall:ci_high < 0"]) == []  # point below 0, the CI straddles it
    (msg,) = check_gates(METRICS, ["geneval.counting:ci_high < 0"])
    assert msg == "geneval.counting:ci_high = -0.02 < 0 (geneval.counting -0.1, 95% CI [-0.18, -0.02])"
    assert check_gates(METRICS, ["winrate.shapes-gold:ci_high < 50"]) == []
    (msg,) = check_gates(METRICS, ["winrate.shapes-pref:ci_high < 50"])
    assert msg == "winrate.shapes-pref:ci_high = 48 < 50 (winrate.shapes-pref 44 %, 95% CI [40, 48] %)"
    assert check_gates(METRICS, ["winrate.shapes-gold:ci_high <= 50.5"]) != []  # <= includes the end


def test_ci_low_field():
    assert check_gates(METRICS, ["winrate.shapes-gold:ci_low < 42"])[0].startswith(
        "winrate.shapes-gold:ci_low = 41.5 < 42 (winrate.shapes-gold 46 %, 95% CI [41.5, 50.5] %)")
    assert check_gates(METRICS, ["winrate.shapes-gold:ci_low < 41"]) == []
    assert check_gates(METRICS, ["geneval.overall:ci_low > -0.1"]) != []  # an improvement gate: CI above a line


def test_several_gates_report_each_that_fires():
    fired = check_gates(METRICS, ["geneval.overall:ci_high < 0", "geneval.counting:ci_high < 0",
                                  "winrate.shapes-pref < 50"])
    assert [f.split(" ")[0] for f in fired] == ["geneval.counting:ci_high", "winrate.shapes-pref"]


def test_unknown_metric_and_missing_field_are_errors():
    with pytest.raises(ValueError, match="unknown metric 'geneval.everything'; known: geneval.overall"):
        check_gates(METRICS, ["geneval.everything:ci_high < 0"])
    with pytest.raises(ValueError, match="unknown field"):
        check_gates(METRICS, ["geneval.overall:upper < 0"])
    with pytest.raises(ValueError, match="has no ci_high"):
        check_gates({"geneval.overall": {"value": -0.05}}, ["geneval.overall:ci_high < 0"])
    assert check_gates({"geneval.overall": {"value": -0.05}}, ["geneval.overall < -0.02"]) == [
        "geneval.overall = -0.05 < -0.02"]  # no interval known: the plain message


def _results(strata=None):
    d = {"delta": -0.03, "ci_low": -0.07, "ci_high": 0.01}
    res = {
        "base": "base", "models": {"base": "a", "new": "b"},
        "prompt_sets": {"winrate": ["shapes:geneval@test"], "geneval": ["shapes:geneval@test"]},
        "n_prompts": {"shapes:geneval@test": 32}, "n_per_prompt": 4,
        "results": {
            "base": {"geneval": {"overall": 0.4, "tags": {"counting": 0.2}}},
            "new": {"winrate": {"shapes-gold": {"win_rate": 46.0, "ci_low": 41.5, "ci_high": 50.5,
                                                "score_delta": -0.01, "score_delta_ci": [-0.02, 0.0],
                                                "mean_a": 0.5, "mean_b": 0.51}},
                    "geneval": {"overall": 0.37, "tags": {"counting": 0.1}},
                    "geneval_delta": {"overall": d, "counting": d}},
        },
    }
    if strata is not None:
        res["strata"] = strata
    return res


def test_compare_table_footnote_names_the_tags_covered():
    strata = {"shapes:geneval@test": {"single_object": 1, "two_object": 2, "counting": 2, "colors": 4,
                                      "position": 7, "color_attr": 16}}
    md = compare_table(_results(strata), "new")
    assert "| geneval.overall |" in md and "| winrate.shapes-gold |" in md
    assert md.splitlines()[-1] == (
        "Prompts per tag/category: winrate.*, score.* and geneval.* cover shapes:geneval@test (32 prompts: "
        "single_object 1, two_object 2, counting 2, colors 4, position 7, color_attr 16).")


def test_compare_table_footnote_per_benchmark_and_absent():
    no_tags = compare_table(_results(), "new")
    assert "tag" not in no_tags.splitlines()[-1] and no_tags.splitlines()[-1].startswith("4 images per prompt")
    res = _results({"shapes:geneval@test": {"counting": 2, "position": 3}, "prompts.txt": {"(untagged)": 5}})
    res["prompt_sets"]["winrate"] = ["prompts.txt"]
    last = compare_table(res, "new").splitlines()[-1]
    assert last == "Prompts per tag/category: geneval.* cover shapes:geneval@test (5 prompts: counting 2, position 3)."
    res["results"]["new"].pop("winrate")  # a benchmark not shown is not described
    res["prompt_sets"]["winrate"] = ["shapes:geneval@test"]
    assert "winrate" not in compare_table(res, "new").splitlines()[-1]
