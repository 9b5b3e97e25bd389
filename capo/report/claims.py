"""The claims report: one row per claim of the paper and base model, with its statistic, CI
and a verdict generated from the numbers (``reports/claims.md``).

Each claim is a set of paired comparisons A vs B (``capo.report.evidence.comparisons``: the same
prompts, image seeds and training seeds; a two-level CI over prompts and seeds,
``capo.eval.stats``). A comparison's statistic is A's win-rate over the base minus B's
(percentage points) on the claim's metric; its verdict is ``reproduced`` when the whole CI
is above zero, ``contradicted`` when it is below, ``inconclusive`` when it includes zero.
A claim over several comparisons ("for every objective") is reproduced only when every
comparison is, contradicted when any is, and inconclusive otherwise; its row shows the
deciding comparison (``weakest``: for a contradicted claim the contradicting comparison with
the lowest upper CI bound, otherwise the comparison with the lowest lower bound).

Claims (the paper's, Sec. 5):

* C1 CaPO has the highest win-rate on the reward it was trained on (Table 1): CaPO vs DPO
  and CaPO vs IPO on each training reward, evaluated by that reward.
* C2 FRS beats SUM for every objective (Table 2): on the mean win-rate over the L rewards.
* C3 CaPO+FRS beats CaPO+SOUP (Table 2): the same metric.
* C4 CaPO raises GenEval and T2I-CompBench over the base (Table 3): GenEval overall and the
  mean over CompBench categories, CaPO+FRS − base (absolute, not percentage points).
* C5 CaPO with a reward model beats Diffusion-DPO trained on labelled pairs (Table 4):
  CaPO on the preference reward's pairs vs DPO on the human pairs, mean win-rate over L.
* C6 sigmoid weighting beats constant, and b = 1.5 is best on the UNet (Table 5): b = 1.5
  vs constant (every base), b = 1.5 vs each other b (UNet bases only, as the paper).

"At matched divergence" restates C1-C3, C5 and C6 on the validation frontiers (each
cell's beta grid, one training seed): A's win-rate minus B's at common divergence levels
(``capo.report.frontier``), descriptive only (no interval, so no verdict).
"""

from __future__ import annotations

import json
from pathlib import Path

from capo.eval.stats import interval_text, verdict
from capo.report import frontier
from capo.report.evidence import cell_weighting, comparisons, Evidence, head_to_head
from capo.report.paper import PAPER_BASES

CLAIMS = {
    "C1": "CaPO has the highest win-rate on the reward it was trained on (Table 1)",
    "C2": "FRS beats SUM for every objective (Table 2)",
    "C3": "CaPO+FRS beats CaPO+SOUP (Table 2)",
    "C4": "CaPO raises GenEval and T2I-CompBench over the base (Table 3)",
    "C5": "CaPO with a reward model beats Diffusion-DPO trained on labelled pairs (Table 4)",
    "C6": "sigmoid weighting beats constant; b = 1.5 is best on the UNet (Table 5)",
}


def combine(verdicts: list[str]) -> str:
    """A claim over several comparisons: all reproduced -> reproduced; any contradicted ->
    contradicted; otherwise (or none) inconclusive."""
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    return "inconclusive"


def evaluate(ev: Evidence, built_tables: dict, roles: dict[str, str], pref: str, base: str) -> dict[str, dict]:
    """Per claim: its comparisons (a, b, metric, delta dict, verdict) and the combined verdict."""
    out: dict[str, dict] = {k: {"comparisons": []} for k in CLAIMS}
    unet = PAPER_BASES.get(base, "SDXL") == "SDXL"
    for comp in comparisons(ev, roles, pref):
        if not comp["claim"]:
            continue
        if comp["claim"] == "C6" and "constant" not in comp["b"] and comp["b"] != "capo-frs":
            continue
        first = head_to_head(ev, {**comp, "metrics": comp["metrics"][:1]})[0]  # the claim's own metric
        out[comp["claim"]]["comparisons"].append({"a": comp["a"], "b": comp["b"], "metric": first["metric"],
                                                  **_d(first["delta"]), "verdict": first["verdict"]})
    # C6: keep b = 1.5 vs constant on every base; on UNet bases also b = 1.5 vs the other b
    c6 = [c for c in out["C6"]["comparisons"] if c["a"].endswith("b1.5") or _is_b15(ev, c["a"])]
    if unet:
        b15 = next((c["a"] for c in c6), None)
        others = [c for c in ev.seeds if c.startswith("capo-frs-b") and c != b15]
        if b15:
            crit = tuple(r for r in roles if r in ev.res.get("rewards", []))
            for o in others:
                d = ev.stats([b15, o], ("mean-win", crit)).difference(b15, o)
                c6.append({"a": b15, "b": o, "metric": "mean win-rate", **_d(d),
                           "verdict": verdict(d["ci_low"], d["ci_high"], +1)})
    out["C6"]["comparisons"] = c6
    t3 = (built_tables.get(3) or [None])[0]
    if t3 is not None:
        delta_row = dict(t3.rows)["CaPO − base"]
        for col, c in zip(t3.columns[1:], delta_row):
            if col in ("GenEval overall", "CompBench mean"):
                out["C4"]["comparisons"].append({"a": "capo-frs", "b": "base", "metric": col + " (absolute)",
                                                 "delta": c["value"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                                                 "verdict": verdict(c["ci_low"], c["ci_high"], +1)})
    for k, v in out.items():
        v["verdict"] = combine([c["verdict"] for c in v["comparisons"]])
        v["weakest"] = weakest(v["comparisons"], v["verdict"])
    return out


def weakest(comps: list[dict], claim_verdict: str) -> dict | None:
    """The comparison a claim's row shows, the one that decides its verdict: for a
    contradicted claim the most clearly contradicting one (lowest upper bound among the
    contradicted), otherwise the one with the lowest lower bound (the weakest support)."""
    if claim_verdict == "contradicted":
        return min((c for c in comps if c["verdict"] == "contradicted"), key=lambda c: c["ci_high"])
    return min(comps, key=lambda c: c["ci_low"], default=None)


def _is_b15(ev: Evidence, cell: str) -> bool:
    return cell_weighting(ev, cell) == "b1.5"


def _d(d: dict) -> dict:
    return {"delta": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}


def matched(root: Path, base: str, a: str, b: str, reward: str) -> str:
    """A − B validation win-rate at the common divergence levels of the two cells' frontiers."""
    sw = {}
    for c in (a, b):
        f = root / base / "sweep" / c / "sweep.json"
        if not f.is_file():
            return "-"
        sw[c] = json.loads(f.read_text())
    levels = frontier.common_levels(list(sw.values()), k=3)
    if not levels:
        return "no overlap"
    va, vb = (frontier.at_divergence(sw[c], reward, levels) for c in (a, b))
    diffs = [(lv, x["win_rate"] - y["win_rate"]) for lv, x, y in zip(levels, va, vb)
             if x["win_rate"] is not None and y["win_rate"] is not None]
    return ", ".join(f"{d:+.1f} @ {lv:.3g}" for lv, d in diffs) or "-"


def matched_rows(root: Path, base: str, roles: dict[str, str], pref: str, claim: str, comps: list[dict]) -> str:
    out = []
    for c in comps:
        if c["b"] == "base":
            continue
        reward = "mean"
        if claim == "C1":
            reward = next((r for r in roles if c["a"].endswith(r)), "mean")
        out.append(f"{c['a']} − {c['b']}: {matched(root, base, c['a'], c['b'], reward)}")
    return "; ".join(out) or "-"


def decided_text(rows: list[tuple[str, str, int, int, int]], names: bool = True) -> str:
    """How much a run decides, from its claim rows ``(claim, verdict, reproduced, contradicted,
    total comparisons)``: decided comparisons out of all, and decided claims (with their names
    unless ``names`` is false: rows of several bases repeat them)."""
    n = sum(t for *_, t in rows)
    rep = sum(r for _, _, r, _, _ in rows)
    con = sum(c for _, _, _, c, _ in rows)
    by = {v: [k for k, vv, *_ in rows if vv == v] for v in ("reproduced", "contradicted")}
    which = "; ".join(f"{v}: {', '.join(ks)}" for v, ks in by.items() if ks) if names else ""
    return (f"**{rep + con} of {n}** comparisons decided ({rep} reproduced, {con} contradicted); "
            f"**{len(by['reproduced']) + len(by['contradicted'])} of {len(rows)}** claims" + (f" ({which})" if which else ""))


def render(root: str | Path, built: dict, roles: dict[str, str], pref: str) -> str:
    """claims.md: the verdict table per base model, then every comparison behind it."""
    root = Path(root)
    lines = ["# The paper's claims, tested\n",
             "Generated from the numbers (`capo.report.claims`): a verdict is *reproduced* when the whole 95% CI of "
             "A − B is above zero, *contradicted* when it is below, *inconclusive* when it includes zero; a claim "
             "over several comparisons needs every one. CIs resample prompts and training seeds together "
             "(test prompts; paired on prompts, image seeds and training seeds). Statistic: the deciding "
             "comparison (a contradicted claim: its clearest contradiction; otherwise the weakest support), A − B in win-rate over the base (percentage points), or the absolute change for C4. "
             "The last column restates the claim at matched divergence on the validation frontiers "
             "(A − B in validation win-rate @ divergence level; one seed, descriptive, no verdict).\n"]
    details, every = [], []
    for base, entry in built.items():
        ev = entry["evidence"]
        res = evaluate(ev, entry["tables"], roles, pref, base)
        lines += [f"## base: {base}\n", f"*{ev.footer().strip('*')}*\n",
                  "| claim | verdict | deciding comparison | statistic [95% CI] | comparisons reproduced / "
                  "contradicted / total | at matched divergence (validation) |", "|---|---|---|---|---|---|"]
        rows = []
        for k, text in CLAIMS.items():
            v = res[k]
            w = v["weakest"]
            comps = v["comparisons"]
            n_rep = sum(c["verdict"] == "reproduced" for c in comps)
            n_con = sum(c["verdict"] == "contradicted" for c in comps)
            digits = 3 if k == "C4" else 1
            stat = "-" if not w else interval_text(w["delta"], w["ci_low"], w["ci_high"], digits)
            weakest = "-" if not w else f"{w['a']} vs {w['b']} ({w['metric']})"
            verdict = v["verdict"] if comps else "not run"
            m = matched_rows(root, base, roles, pref, k, comps) if k != "C4" else "-"
            lines.append(f"| {k}: {text} | **{verdict}** | {weakest} | {stat} | {n_rep} / {n_con} / {len(comps)} | {m} |")
            rows.append((k, verdict, n_rep, n_con, len(comps)))
            for c in comps:
                details.append(f"| {base} | {k} | {c['a']} vs {c['b']} | {c['metric']} | "
                               f"{interval_text(c['delta'], c['ci_low'], c['ci_high'], digits)} | {c['verdict']} |")
        lines += ["", f"Decided on {base}: {decided_text(rows)}.", ""]
        every += rows
    if len(built) > 1:
        lines += [f"Decided on the {len(built)} bases together: {decided_text(every, names=False)}.", ""]
    lines += ["## Every comparison\n", "| base | claim | A vs B | metric | A − B [95% CI] | verdict |",
              "|---|---|---|---|---|---|"] + details
    return "\n".join(lines) + "\n"
