"""Results -> markdown: the `capo compare` delta table and its regression gate.

(The paper's Tables 1-5 are rendered by ``capo.tables``.)
"""

from __future__ import annotations

import operator
import re

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
    for cat, d in r.get("compbench_delta", {}).items():
        out[f"compbench.{cat}"] = {"value": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"],
                                   "kind": "delta", "model": d["mean_a"], "base": d["mean_b"]}
    return out


def _fmt(v, kind="delta"):
    if v is None:
        return "-"
    return f"{v:.1f}" if kind == "%" else f"{v:+.3f}" if kind == "delta" else f"{v:.3f}"


def compare_table(results: dict, label: str) -> str:
    """Markdown: metric | base | model | change [95% CI]."""
    base = results["base"]
    rows = [f"| metric | {base} | {label} | change [95% CI] |", "|---|---|---|---|"]
    for name, m in compare_metrics(results, label).items():
        if "value" not in m:
            continue
        b, a = m.get("base"), m.get("model")
        change = f"{_fmt(m['value'], m['kind'])} [{_fmt(m['ci_low'], m['kind'])}, {_fmt(m['ci_high'], m['kind'])}]"
        if m["kind"] == "%":
            change = f"win {change} %"
        rows.append(f"| {name} | {_fmt(b, 'abs')} | {_fmt(a, 'abs')} | {change} |")
    rows.append("")
    sets = ", ".join(f"{ps} ({n} prompts)" for ps, n in results["n_prompts"].items())
    rows.append(f"{results['n_per_prompt']} images per prompt of {sets}; the same per-item seeds for both models; "
                "95% CIs from a bootstrap over prompts.")
    return "\n".join(rows)


def parse_gate(expr: str) -> tuple[str, str, float]:
    """``"geneval.overall < -0.02"`` -> ``("geneval.overall", "<", -0.02)``."""
    m = re.fullmatch(r"\s*([\w.:-]+)\s*(<=|>=|<|>)\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*", expr)
    if not m:
        raise ValueError(f"--fail-if {expr!r}: expected 'METRIC OP NUMBER', e.g. 'geneval.overall < -0.02' "
                         "or 'winrate.shapes-gold < 50'")
    return m.group(1), m.group(2), float(m.group(3))


def check_gates(metrics: dict[str, dict], gates: list[str]) -> list[str]:
    """The gates that fire (the regression conditions that hold); unknown metrics are an error."""
    fired = []
    for g in gates:
        name, op, x = parse_gate(g)
        if name not in metrics or "value" not in metrics[name]:
            known = ", ".join(k for k, v in metrics.items() if "value" in v)
            raise ValueError(f"--fail-if names unknown metric {name!r}; known: {known}")
        v = metrics[name]["value"]
        if OPS[op](v, x):
            fired.append(f"{name} = {v:.4g} {op} {x:g}")
    return fired
