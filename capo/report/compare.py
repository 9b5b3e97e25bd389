"""Results -> markdown: the `capo compare` delta table and its regression gate.

(The paper's Tables 1-5 are rendered by ``capo.report.tables``.)
"""

from __future__ import annotations

import operator
import re
from typing import NamedTuple
from capo.eval.geneval import TAGS
from capo.eval.protocol import render
from capo.eval.t2i_compbench import CATEGORIES
from capo.report.render import plural

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def compare_metrics(results: dict, label: str) -> dict[str, dict]:
    """Flatten one model's results against the base into ``{metric: {value, ci_low, ci_high, kind}}``.

    ``winrate.<reward>`` is a win-rate in % (50 = no change); ``score.<reward>``,
    ``geneval.<tag|overall>`` and ``compbench.<category>`` are deltas (model - base).
    """
    r = results["results"][label]
    out = {}
    for rew, w in r.get("winrate", {}).items():
        out[f"winrate.{rew}"] = {"value": w["win_rate"], "ci_low": w["ci_low"], "ci_high": w["ci_high"], "kind": "%"}
        out[f"score.{rew}"] = {"value": w["score_delta"], "ci_low": w["score_delta_ci"][0],
                               "ci_high": w["score_delta_ci"][1], "kind": "delta", "base": w["mean_b"],
                               "model": w["mean_a"]}
    for tag, d in r.get("geneval_delta", {}).items():
        out[f"geneval.{tag}"] = {"value": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "kind": "delta"}
    base = results["results"][results["base"]]
    if "geneval" in r:
        out.setdefault("geneval.overall", {}).update(model=r["geneval"]["overall"], base=base["geneval"]["overall"])
        for tag, v in r["geneval"]["tags"].items():
            out.setdefault(f"geneval.{tag}", {}).update(model=v, base=base["geneval"]["tags"].get(tag))
    for key, d in r.get("dpg_delta", {}).items():
        out[f"dpg.{key}"] = {"value": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "kind": "delta",
                             "model": d["mean_a"], "base": d["mean_b"]}
    for cat, d in r.get("compbench_delta", {}).items():
        out[f"compbench.{cat}"] = {"value": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                                   "kind": "delta", "model": d["mean_a"], "base": d["mean_b"]}
    return out


def _fmt(v, kind="delta"):
    if v is None:
        return "-"
    return f"{v:.1f}" if kind == "%" else f"{v:+.3f}" if kind == "delta" else f"{v:.3f}"


def _strata_note(results: dict, shown: set[str]) -> str:
    """Which tags / categories each figure covers, from ``results["strata"]`` (empty if absent)."""
    strata = results.get("strata") or {}
    if not strata:
        return ""
    figures = {"winrate": "winrate.*, score.*", "geneval": "geneval.*", "compbench": "compbench.*"}
    groups: dict[tuple, list[str]] = {}  # the same prompt sets -> one entry
    for bench, sets in (results.get("prompt_sets") or {}).items():
        if bench in figures and figures[bench].split(".")[0] in shown:
            groups.setdefault(tuple(sets), []).append(figures[bench])
    parts = []
    for sets, names in groups.items():
        covered = []
        for ps in sets:
            tags = strata.get(ps)
            if not tags or set(tags) <= {"(untagged)"}:
                continue
            n = sum(tags.values())
            covered.append(f"{ps} ({n} prompts: " + ", ".join(f"{t} {c}" for t, c in tags.items()) + ")")
        if covered:
            parts.append(f"{' and '.join(names)} cover {'; '.join(covered)}")
    return ("Prompts per tag/category: " + "; ".join(parts) + ".") if parts else ""


def compare_table(results: dict, label: str) -> str:
    """Markdown: metric | base | model | change [95% CI], and a footnote on what the figures cover."""
    base = results["base"]
    rows = [f"| metric | {base} | {label} | change [95% CI] |", "|---|---|---|---|"]
    shown = set()
    for name, m in compare_metrics(results, label).items():
        if "value" not in m:
            continue
        shown.add(name.split(".")[0])
        b, a = m.get("base"), m.get("model")
        change = f"{_fmt(m['value'], m['kind'])} [{_fmt(m['ci_low'], m['kind'])}, {_fmt(m['ci_high'], m['kind'])}]"
        if m["kind"] == "%":
            change = f"win {change} %"
        rows.append(f"| {name} | {_fmt(b, 'abs')} | {_fmt(a, 'abs')} | {change} |")
    rows.append("")
    sets = ", ".join(f"{ps} ({n} prompts)" for ps, n in results["n_prompts"].items())
    rows.append(f"{plural(results['n_per_prompt'], 'image')} per prompt of {sets}; the same per-item seeds for both models; "
                "95% CIs from a bootstrap over prompts.")
    note = _strata_note(results, shown)
    if note:
        rows.append(note)
    if results.get("protocol"):
        rows += ["", render(results["protocol"])]
    return "\n".join(rows)


FIELDS = ("value", "ci_low", "ci_high")  # what a gate tests: the point estimate or an end of the 95% CI
GATE_FORMS = ("expected 'METRIC OP NUMBER' or 'METRIC:FIELD OP NUMBER' (FIELD: value | ci_low | ci_high), "
              "e.g. 'geneval.overall:ci_high < 0' (the whole CI below zero), 'winrate.shapes-gold:ci_high < 50' "
              "or 'geneval.overall < -0.02' (the point estimate)")


class Gate(NamedTuple):
    """A parsed ``--fail-if`` expression; ``target`` is ``METRIC`` or ``METRIC:FIELD`` as written."""

    target: str
    op: str
    threshold: float

    @property
    def metric(self) -> str:
        return self.target.rpartition(":")[0] if ":" in self.target else self.target

    @property
    def field(self) -> str:
        return self.target.rpartition(":")[2] if ":" in self.target else "value"


def parse_gate(expr: str) -> Gate:
    """``"geneval.overall < -0.02"`` -> ``("geneval.overall", "<", -0.02)``;
    ``"geneval.overall:ci_high < 0"`` -> ``("geneval.overall:ci_high", "<", 0.0)`` (``.metric``,
    ``.field`` split the target). Plain ``METRIC`` tests the point estimate (``:value``);
    ``:ci_low`` / ``:ci_high`` test the ends of its 95% bootstrap CI."""
    m = re.fullmatch(r"\s*([\w.:-]+)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*", expr)
    if not m:
        raise ValueError(f"--fail-if {expr!r}: {GATE_FORMS}")
    gate = Gate(m.group(1), m.group(2), float(m.group(3)))
    if gate.target.count(":") > 1:
        raise ValueError(f"--fail-if {expr!r}: more than one ':' in {gate.target!r}; {GATE_FORMS}")
    if not gate.metric.strip(".-"):
        raise ValueError(f"--fail-if {expr!r}: no metric before ':'; {GATE_FORMS}")
    if gate.field not in FIELDS:
        raise ValueError(f"--fail-if {expr!r}: unknown field {gate.field!r} (known: {', '.join(FIELDS)}); "
                         f"{GATE_FORMS}")
    return gate


def expected_metric(name: str, benchmarks: list[str], rewards: list[str]) -> str | None:
    """Why ``name`` cannot be a metric of an evaluation of ``benchmarks`` with ``rewards`` (None
    if it can): checked before anything is evaluated, so a typo costs nothing."""
    import difflib

    family, _, rest = name.partition(".")
    bench = {"winrate": "winrate", "score": "winrate", "geneval": "geneval", "compbench": "compbench",
             "dpg": "dpg"}.get(family)
    if bench is None:
        return f"unknown metric family {family!r} (winrate.<reward>, score.<reward>, geneval.<tag|overall>, " \
               "compbench.<category>, dpg.overall)"
    if bench not in benchmarks:
        return f"{name!r} needs the {bench} benchmark, which is not run (benchmarks: {', '.join(benchmarks)})"
    known = {"winrate": list(rewards), "geneval": ["overall", *TAGS], "compbench": list(CATEGORIES),
             "dpg": ["overall"]}[bench]
    if bench == "compbench" and rest.split(":")[0] not in known:
        return None if rest else f"{name!r}: name a category"  # the shapes world adds its own categories
    if rest not in known:
        near = difflib.get_close_matches(rest, known, n=1)
        return f"{name!r} is not a metric" + (f"; did you mean '{family}.{near[0]}'?" if near else "") + \
            f" (known {family}.*: {', '.join(known)})"
    return None


def check_gate_names(gates: list[str], benchmarks: list[str], rewards: list[str]) -> None:
    """Parse every gate and check its metric can exist, before an evaluation spends any time."""
    for g in gates:
        why = expected_metric(parse_gate(g).metric, benchmarks, rewards)
        if why:
            raise ValueError(f"--fail-if {g!r}: {why}")


def check_gates(metrics: dict[str, dict], gates: list[str]) -> list[str]:
    """The gates that fire (the regression conditions that hold), each naming the field tested
    and, where known, the estimate and its CI; unknown metrics are an error."""
    fired = []
    for g in gates:
        gate = parse_gate(g)
        name, op, x = gate.metric, gate.op, gate.threshold
        if name not in metrics or "value" not in metrics[name]:
            known = ", ".join(k for k, v in metrics.items() if "value" in v)
            raise ValueError(f"--fail-if names unknown metric {name!r}; known: {known}")
        m = metrics[name]
        if gate.field not in m:
            raise ValueError(f"--fail-if {g!r}: metric {name!r} has no {gate.field} (it has "
                             f"{', '.join(k for k in FIELDS if k in m)})")
        v = m[gate.field]
        if OPS[op](v, x):
            msg = f"{gate.target} = {v:.4g} {op} {x:g}"
            if "ci_low" in m and "ci_high" in m:
                unit = " %" if m.get("kind") == "%" else ""
                msg += f" ({name} {m['value']:.4g}{unit}, 95% CI [{m['ci_low']:.4g}, {m['ci_high']:.4g}]{unit})"
            fired.append(msg)
    return fired
