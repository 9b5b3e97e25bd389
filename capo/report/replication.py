"""Replication across independent runs (``capo replicate``): the claims of each run side by
side, and the conflicts (a claim or comparison reproduced in one run, contradicted in another).
"""

from __future__ import annotations

from pathlib import Path

from capo.eval.stats import interval_text
from capo.report.claims import evaluate
from capo.report.tables import build


def conflict(verdicts: dict[str, str]) -> bool:
    """Do independent runs' verdicts on one claim contradict each other (one reproduced, one
    contradicted)? Inconclusive beside either is an honest disagreement, not a conflict."""
    return {"reproduced", "contradicted"} <= set(verdicts.values())


def render(runs: dict[str, str | Path], roles: dict[str, str], pref: str) -> tuple[str, list[str]]:
    """Markdown comparing the claims of independent runs (e.g. one preset with disjoint
    training-seed sets), and the conflicts: a claim or comparison reproduced in one run and
    contradicted in another. Inconclusive beside a verdict is not a conflict."""
    verdicts: dict[tuple, dict[str, str]] = {}  # (base, claim, comparison or "") -> run -> verdict
    stats: dict[tuple, dict[str, str]] = {}
    for name, root in runs.items():
        for base, entry in build(root, roles, pref).items():
            for k, v in evaluate(entry["evidence"], entry["tables"], roles, pref, base).items():
                verdicts.setdefault((base, k, ""), {})[name] = v["verdict"] if v["comparisons"] else "not run"
                for c in v["comparisons"]:
                    key = (base, k, f"{c['a']} vs {c['b']} ({c['metric']})")
                    verdicts.setdefault(key, {})[name] = c["verdict"]
                    d = 3 if k == "C4" else 1
                    stats.setdefault(key, {})[name] = interval_text(c['delta'], c['ci_low'], c['ci_high'], d)
    names = list(runs)
    conflicts = [f"{b} {k}{' ' + comp if comp else ''}: " + ", ".join(f"{n} {v.get(n)}" for n in names)
                 for (b, k, comp), v in verdicts.items() if conflict(v)]
    lines = ["# Replication: the same claims from independent runs\n",
             "Runs: " + "; ".join(f"**{n}** = `{r}`" for n, r in runs.items()) + ". A conflict is a claim or "
             "comparison *reproduced* in one run and *contradicted* in another (an honest protocol has none; "
             "*inconclusive* beside a verdict is not one).\n",
             f"**Conflicts: {len(conflicts)}**" + ("" if not conflicts else "\n\n" + "\n".join(f"- {c}" for c in conflicts)) + "\n",
             "## Claims\n", "| base | claim | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {b} | {k} | " + " | ".join(v.get(n, "-") for n in names) + " |"
              for (b, k, comp), v in verdicts.items() if not comp]
    lines += ["", "## Comparisons\n", "| base | claim | A vs B (metric) | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    lines += [f"| {b} | {k} | {comp} | " + " | ".join(f"{stats[(b, k, comp)].get(n, '-')} {v.get(n, '-')}"
                                                     for n in names) + " |"
              for (b, k, comp), v in verdicts.items() if comp]
    return "\n".join(lines) + "\n", conflicts
