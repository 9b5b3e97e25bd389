"""The paper's Tables 1-5, head-to-head tests and the beta sweep, from `capo eval` results:
markdown, CSV (one row per cell, with its CI) and LaTeX (booktabs), with the paper's numbers.

An experiment directory (``capo reproduce`` writes one) holds, per base model ``B``:
``B/eval/`` (test win-rates of every model against ``B``: ``results.json`` and per-image
scores ``results/<label>/winrate_per_image.parquet``), ``B/bench/`` (GenEval /
T2I-CompBench of ``B`` and CaPO+FRS) and ``B/sweep/<cell>/sweep.json`` (the beta grid's
validation figures). Model labels are ``<cell>.s<seed>`` (``capo.experiments.reproduce``); a
label without ``.s<seed>`` is seed 0. Cells (``label()``):

* Table 1: ``<obj>-single-<reward>``; Table 2: ``<obj>-<sum|soup|frs>``;
* Table 4: ``dpo-human`` (Diffusion-DPO analogue, human-labelled pairs), DPO-Syn =
  ``dpo-single-<pref>``, CaPO = ``capo-single-<pref>``;
* Table 5: ``capo-frs`` under the default weighting, ``capo-frs-constant`` /
  ``capo-frs-b<b>`` for the others; Table 3: base vs ``capo-frs``; N: ``capo-frs-n<N>``.

Every figure is a mean over training seeds with a 95% CI that resamples prompts and seeds
together (``capo.eval.stats``; with one seed, prompts only, conditional on that seed).
Cells show the value ± the CI's half-width. In each column, **bold** marks the best cell
only when its paired difference with every other cell of the column has a CI beyond zero
(``stats.best_beyond_ci``); *italics* mark the cells tied with the best (their difference's
CI includes zero). Head-to-head tables give, for each comparison of the paper, the paired
difference of the win-rates over the base (percentage points) and the direct A-vs-B
win-rate, each with its CI and a verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from capo import artifacts
from capo.eval import protocol
from capo.eval.stats import interval_text, two_level_bootstrap, verdict
from capo.report import claims, frontier
from capo.report.evidence import comparisons, eval_columns, Evidence, head_to_head, load_json, weighting_rows
from capo.report.paper import PAPER_BASES, paper_table
from capo.report.render import cell, mark_column, plural, stat_cell, Table, to_csv_rows, to_latex, to_markdown
from capo.vocabulary import label, MULTI_REWARD, obj_name, OBJECTIVES, split_label


# ----------------------------------------------------------------------------- evidence


# ----------------------------------------------------------------------------- table model


def _win_table(key: str, base: str, title: str, ev: Evidence, rows: list[tuple[str, str]],
               cols: list[tuple[str, tuple]], higher: bool = True, digits: int = 1) -> Table:
    """Rows (name, cell), columns (name, metric): the two-level mean ± CI of each, marked per column."""
    t = Table(key, base, title, ["Method"] + [c for c, _ in cols], note=ev.footer())
    present = [(n, c) for n, c in rows if ev.has(c)]
    t.rows = [(n, []) for n, _ in present]
    arms = [c for _, c in present]
    for j, (_, metric) in enumerate(cols):
        st = ev.stats(arms, metric) if arms else None
        for i, c in enumerate(arms):
            t.rows[i][1].append(stat_cell(st.arms[c], digits))
        mark_column(t, j, st, arms, higher)
    return t


def table1(ev: Evidence, roles: dict[str, str], base: str) -> list[Table]:
    rw = list(roles)
    ev_cols, names = eval_columns(ev, roles)
    out = []
    for tr in rw:  # one sub-table per training reward: the arms of a column are the three objectives
        rows = [(obj_name(o), label(o, "single", tr)) for o in OBJECTIVES]
        cols = [(f"{names[tr]}→{names[e]}" + (" (trained)" if e == tr else ""), ("win", e)) for e in ev_cols]
        out.append(_win_table("table1", base, f"Trained on {names[tr]}: win-rate (%) over the base, evaluated by "
                              "each reward.", ev, rows, cols))
    return out


def table2(ev: Evidence, roles: dict[str, str], base: str) -> Table:
    ev_cols, names = eval_columns(ev, roles)
    rows = [(f"{obj_name(o)} + {s.upper()}", label(o, s)) for o in OBJECTIVES for s in MULTI_REWARD]
    cols = []
    for r in ev_cols:
        cols += [(f"{names[r]} win (%)", ("win", r)), (f"{names[r]} score", ("score", r))]
    crit = [r for r in roles if r in ev_cols]
    cols.append(("mean win (%) of " + "/".join(names[r] for r in crit), ("mean-win", tuple(crit))))
    t = Table("table2", base, "Multi-reward: win-rate (%) over the base and mean score per reward.",
              ["Method"] + [c for c, _ in cols], note=ev.footer())
    present = [(n, c) for n, c in rows if ev.has(c)]
    arms = [c for _, c in present]
    t.rows = [(n, []) for n, _ in present]
    for j, (name, metric) in enumerate(cols):
        st = ev.stats(arms, metric)
        for i, c in enumerate(arms):
            t.rows[i][1].append(stat_cell(st.arms[c], 3 if metric[0] == "score" else 1))
        mark_column(t, j, st, arms)
    brow = []
    for name, metric in cols:
        if metric[0] == "score":
            b = ev.frame(ev.base)[metric[1]].to_numpy(float)
            brow.append(cell(float(b.mean()), digits=3))
        else:
            brow.append(cell())
    t.rows.insert(0, ("base", brow))
    return t


def table4(ev: Evidence, roles: dict[str, str], pref: str, base: str) -> Table:
    ev_cols, names = eval_columns(ev, roles)
    rows = [("Diffusion-DPO (human pairs)", "dpo-human"), ("DPO-Syn", label("dpo", "single", pref)),
            ("CaPO", label("capo", "single", pref))]
    cols = [(f"{names[r]} score", ("score", r)) for r in ev_cols] + \
           [(f"{names[r]} win (%)", ("win", r)) for r in ev_cols]
    return _win_table("table4", base, f"Models trained on the preference reward ({names[pref]}, PickScore's role) "
                      "vs Diffusion-DPO on simulated human pairs: mean scores and win-rates over the base.",
                      ev, rows, cols)


def table5(ev: Evidence, roles: dict[str, str], base: str, weighting_rows: list[tuple[str, str]]) -> Table:
    ev_cols, names = eval_columns(ev, roles)
    cols = [(names[r], ("win", r)) for r in ev_cols]
    return _win_table("table5", base, "CaPO multi-reward (FRS) win-rates (%) by loss weighting.", ev,
                      weighting_rows, cols)


def table3(bench_dir: Path, base: str) -> Table | None:
    """GenEval / CompBench of the base and CaPO+FRS (mean over seeds), deltas with two-level CIs."""
    res = load_json(bench_dir / "results.json")
    if not res:
        return None
    b = res["base"]
    labs = [lab for lab in res["results"] if lab != b and split_label(lab)[0] == "capo-frs"]
    if not labs:
        return None
    base_name = res.get("models", {}).get(b, b)
    g_tags = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    t = Table("table3", base, "GenEval and T2I-CompBench (test prompts): base and CaPO+FRS, and CaPO − base.",
              ["Model"], note="")
    rows = {base_name: [], f"CaPO+{base_name}": [], "CaPO − base": []}
    import pandas as pd

    def frames(bench):
        f = lambda lab: pd.read_parquet(bench_dir / "results" / lab / f"{bench}_per_image.parquet").sort_values(  # noqa
            ["prompt_id", "sample_id"], kind="stable").reset_index(drop=True)
        return f(b), [f(lab) for lab in sorted(labs, key=lambda x: split_label(x)[1])]

    def add(col, base_v, cap_v, pids, sids, digits=3):
        diff = cap_v - np.tile(base_v, len(cap_v) // len(base_v))
        t.columns.append(col)
        if len(set(pids)) < 2:  # one prompt: no interval
            rows[base_name].append(cell(float(base_v.mean()), digits=digits))
            rows[f"CaPO+{base_name}"].append(cell(float(cap_v.mean()), digits=digits))
            rows["CaPO − base"].append(cell(float(diff.mean()), digits=digits, text=f"{diff.mean():+.{digits}f} (1 prompt)"))
            return
        d = two_level_bootstrap(diff, pids, sids)
        v = verdict(d["ci_low"], d["ci_high"], +1)
        better = "best" if v == "reproduced" else ""
        worse = "best" if v == "contradicted" else ""
        rows[base_name].append(cell(float(base_v.mean()), digits=digits, mark=worse))
        rows[f"CaPO+{base_name}"].append(cell(float(cap_v.mean()), digits=digits, mark=better))
        rows["CaPO − base"].append(cell(d["mean"], d["ci_low"], d["ci_high"], digits,
                                        text=interval_text(d["mean"], d["ci_low"], d["ci_high"], digits)))

    if (bench_dir / "results" / b / "geneval_per_image.parquet").is_file():
        fb, fc = frames("geneval")
        tags = fb["tag"].to_numpy()
        present = [g for g in g_tags if g in set(tags)]
        counts = {g: int((tags == g).sum()) for g in present}
        w = np.array([len(tags) / (len(counts) * counts[g]) for g in tags])  # overall = unweighted mean of tags
        cap = np.concatenate([f["correct"].to_numpy(float) for f in fc])
        pids = np.concatenate([f["prompt_id"].to_numpy() for f in fc])
        sids = np.concatenate([np.full(len(f), i) for i, f in enumerate(fc)])
        base_c = fb["correct"].to_numpy(float)
        for g in present:
            m = tags == g
            mm = np.tile(m, len(fc))
            add(f"GenEval {g}", base_c[m], cap[mm], pids[mm], sids[mm])
        add("GenEval overall", base_c * w, cap * np.tile(w, len(fc)), pids, sids)
    if (bench_dir / "results" / b / "compbench_per_image.parquet").is_file():
        fb, fc = frames("compbench")
        cats = fb["category"].to_numpy()
        cap = np.concatenate([f["score"].to_numpy(float) for f in fc])
        pids = np.concatenate([f["prompt_id"].to_numpy() for f in fc])
        sids = np.concatenate([np.full(len(f), i) for i, f in enumerate(fc)])
        base_s = fb["score"].to_numpy(float)
        for c in sorted(set(cats)):
            m = cats == c
            mm = np.tile(m, len(fc))
            add(f"CompBench {c}", base_s[m], cap[mm], pids[mm], sids[mm])
        counts = {c: int((cats == c).sum()) for c in set(cats)}
        w = np.array([len(cats) / (len(counts) * counts[c]) for c in cats])
        add("CompBench mean", base_s * w, cap * np.tile(w, len(fc)), pids, sids)
    t.rows = list(rows.items())
    sets = ", ".join(f"{ps}: {n} prompts" for ps, n in res["n_prompts"].items())
    t.note = (f"*{sets}; {plural(res['n_per_prompt'], 'image')} per prompt; CaPO+FRS averaged over {len(labs)} training "
              "seed(s); the last row is the paired difference with its 95% CI (prompts and seeds); bold: the better "
              "model where that CI excludes zero.*")
    return t


# ----------------------------------------------------------------------------- head-to-head


def h2h_table(ev: Evidence, roles: dict[str, str], pref: str, base: str) -> Table:
    t = Table("h2h", base, "Head-to-head: A − B in win-rate over the base (percentage points) and A's direct "
              "win-rate over B (%), paired on prompts, image seeds and training seeds.",
              ["Comparison", "metric", "Δ win-rate (pp) [95% CI]", "A vs B win-rate (%) [95% CI]", "verdict (A > B)"],
              note=ev.footer())
    for comp in comparisons(ev, roles, pref):
        for r in head_to_head(ev, comp):
            d, dr = r["delta"], r["direct"]
            cells = [cell(text=r["metric"]),
                     cell(d["delta"], d["ci_low"], d["ci_high"],
                          text=interval_text(d["delta"], d["ci_low"], d["ci_high"])),
                     cell(dr["mean"], dr["ci_low"], dr["ci_high"],
                          text=interval_text(dr["mean"], dr["ci_low"], dr["ci_high"], sign=False)) if dr else cell(),
                     cell(text=r["verdict"])]
            t.rows.append((f"{comp['table']}: {comp['a']} vs {comp['b']}", cells))
    return t


# ----------------------------------------------------------------------------- sweep and N
def sweep_markdown(base_dir: Path) -> str:
    rows = []
    for f in sorted((base_dir / "sweep").glob("*/sweep.json")):
        sw = json.loads(f.read_text())
        grid = ", ".join((f"**{p['beta']:.4g}: {p['criterion']:.1f}**" if i == sw["selected"]["index"]
                          else f"{p['beta']:.4g}: {p['criterion']:.1f}" if p["criterion"] is not None
                          else f"{p['beta']:.4g}: -")
                         for i, p in enumerate(sw["grid"]))
        div = sw["grid"][sw["selected"]["index"]]["divergence"]
        rows.append(f"| {f.parent.name} | {grid} | {sw['selected']['beta']:.4g} | "
                    f"{'inside' if sw['bracketed'] else 'edge'} | {div['mean']:.3g} [{div['ci_low']:.3g}, "
                    f"{div['ci_high']:.3g}] |")
    if not rows:
        return ""
    sw0 = json.loads(next(iter(sorted((base_dir / "sweep").glob("*/sweep.json")))).read_text())
    head = (f"Validation criterion ({sw0['criterion']}: mean win-rate (%) over "
            f"{', '.join(sw0['criterion_rewards'])}; never the gold reward, never test prompts) per beta "
            f"(constant-weighting units), on {len(sw0['val_prompt_ids'])} validation prompts x {sw0['val_n']}; "
            "bold: selected.\n\n| cell | beta: criterion | selected | place in grid | divergence at selected [95% CI] |\n"
            "|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def n_table(ev: Evidence, roles: dict[str, str], base: str) -> Table | None:
    ns = sorted(int(c.removeprefix("capo-frs-n")) for c in ev.seeds if re.fullmatch(r"capo-frs-n\d+", c))
    if not ns:
        return None
    pm = load_json(ev.dir.parent / "pairs" / "frs" / "manifest.json")
    n_default = pm["config"].get("n") if pm else None
    rows = [(f"N = {n}", f"capo-frs-n{n}") for n in ns]
    if n_default:
        rows.append((f"N = {n_default}", "capo-frs"))
    rows.sort(key=lambda r: int(r[0].split("= ")[1]))
    ev_cols, names = eval_columns(ev, roles)
    return _win_table("n", base, "CaPO + FRS by samples per prompt N (each N with its own selected beta): "
                      "win-rate (%) over the base.", ev, rows, [(names[r], ("win", r)) for r in ev_cols])


def matched_markdown(base_dir: Path, roles: dict[str, str], gold: str | None) -> str:
    """Validation win-rate at matched divergence (capo.report.frontier), per objective, for the
    FRS and SUM cells: which objective buys more reward, or more truth, per unit of divergence."""
    sweeps = {f.parent.name: json.loads(f.read_text()) for f in sorted((base_dir / "sweep").glob("*/sweep.json"))}
    lines = []
    for sel in ("frs", "sum"):
        group = {o: sweeps.get(label(o, sel)) for o in OBJECTIVES}
        group = {o: s for o, s in group.items() if s}
        if len(group) < 2:
            continue
        levels = frontier.common_levels(list(group.values()), k=3)
        if not levels:
            lines.append(f"*{sel.upper()}: the objectives' divergence ranges do not overlap; no matched comparison.*")
            continue
        rewards = list(roles) + ([gold] if gold else [])
        head = "| selector | divergence | " + " | ".join(
            f"{obj_name(o)} {roles.get(r, 'gold')}" for r in rewards for o in group) + " |"
        lines += [head, "|" + "---|" * (2 + len(rewards) * len(group))]
        for lv_i, lv in enumerate(levels):
            cells = []
            for r in rewards:
                vals = {o: frontier.at_divergence(s, r, [lv])[0] for o, s in group.items()}
                best = max((v["win_rate"] for v in vals.values() if v["win_rate"] is not None), default=None)
                for o in group:
                    v = vals[o]["win_rate"]
                    cells.append("-" if v is None else (f"{v:.1f}" + (" ▲" if v == best else "")))
            lines.append(f"| {sel.upper()} | {lv:.3g} | " + " | ".join(cells) + " |")
        lines.append("")
    if not lines:
        return ""
    return ("Validation win-rate (%) at matched divergence from the base, linearly interpolated along each "
            "objective's beta grid (one training seed; descriptive, no CI: ▲ marks the highest value, not a "
            "decisive win).\n\n" + "\n".join(lines))


def build(root: str | Path, roles: dict[str, str], pref: str) -> dict[str, dict]:
    """Every table of every base model under ``root``: ``{base: {"tables": {n: [Table...]}, ...}}``."""
    root = Path(root)
    bases = sorted(p.parent.parent.name for p in root.glob("*/eval/results.json"))
    if not bases:
        raise FileNotFoundError(f"{root}: no */eval/results.json (run `capo reproduce` first)")
    out = {}
    for b in bases:
        ev = Evidence(root / b / "eval")
        t3 = table3(root / b / "bench", b)
        out[b] = {"evidence": ev, "tables": {
            1: table1(ev, roles, b), 2: [table2(ev, roles, b)], 3: [t3] if t3 else [],
            4: [table4(ev, roles, pref, b)] if ev.has("dpo-human") else [],
            5: [table5(ev, roles, b, weighting_rows(ev))] if weighting_rows(ev) else [],
            "h2h": [h2h_table(ev, roles, pref, b)],
            "n": [t for t in [n_table(ev, roles, b)] if t]}}
    return out


TITLES = {1: "Table 1. Single reward", 2: "Table 2. Multi-reward", 3: "Table 3. GenEval and T2I-CompBench",
          4: "Table 4. Comparison with Diffusion-DPO (human-labelled pairs)", 5: "Table 5. Loss weighting",
          "h2h": "Head-to-head comparisons", "n": "Samples per prompt (N)"}


def render(root: str | Path, roles: dict[str, str], pref: str, with_paper: bool = False,
           built: dict | None = None, gold: str | None = None) -> str:
    """All tables for every base model found under ``root``, as one markdown document."""
    root = Path(root)
    built = built or build(root, roles, pref)
    parts = ["# CaPO tables, regenerated\n"]
    for n in (1, 2, 3, 4, 5, "h2h", "n"):
        parts.append(f"## {TITLES[n]}\n")
        for b, entry in built.items():
            parts.append(f"### base: {b}\n")
            tabs = entry["tables"][n]
            parts.append("\n\n".join(to_markdown(t) for t in tabs) if tabs else "*(not run)*")
            paper_base = PAPER_BASES.get(b, "SDXL")
            if with_paper and (n in (1, 2, 3) or (n in (4, 5) and paper_base == "SDXL")):
                parts.append(f"\nPaper ({paper_base}):\n\n" + paper_table(n, paper_base))
            parts.append("")
    parts.append("## Beta sweep (validation)\n")
    for b in built:
        parts += [f"### base: {b}\n", sweep_markdown(root / b) or "*(no sweep)*", ""]
    parts.append("## Win-rate at matched divergence (validation)\n")
    for b in built:
        parts += [f"### base: {b}\n", matched_markdown(root / b, roles, gold) or "*(no sweep)*", ""]
    cards = protocol_markdown(root, list(built))
    if cards:
        parts += ["## Protocol\n", cards, ""]
    return "\n".join(parts) + "\n"


def protocol_markdown(root: Path, bases: list[str]) -> str:
    """Each evaluation's protocol card (``capo.eval.protocol``), and what the bases' cards
    disagree on, so that figures measured differently are never set side by side silently."""
    parts, cards = [], {}
    for b in bases:
        for part in ("eval", "bench"):
            res = load_json(root / b / part / "results.json")
            if res and res.get("protocol"):
                cards[(b, part)] = res["protocol"]
                parts += [f"### base: {b}, {part}\n", protocol.render(res["protocol"]), ""]
    for part in ("eval", "bench"):
        keyed = [(b, cards[(b, part)]) for b in bases if (b, part) in cards]
        for (b0, c0), (b1, c1) in zip(keyed, keyed[1:]):
            diff = protocol.differences(c0, c1)
            if diff:
                parts.append(f"**The {part} figures of {b0} and {b1} were measured differently:** "
                             + "; ".join(diff) + ".\n")
    return "\n".join(parts)


def write(root: str | Path, reports: str | Path, roles: dict[str, str], pref: str, *, with_paper: bool = True,
          gold: str | None = None, command: str = "capo tables") -> list[Path]:
    """tables.md, tables.csv (one row per cell), tables.tex (booktabs) and claims.md into ``reports``."""
    import csv
    import io

    root, reports = Path(root), Path(reports)
    built = build(root, roles, pref)
    head = f"<!-- made by `{command}`; experiment directory {root} -->\n"
    md = render(root, roles, pref, with_paper=with_paper, built=built, gold=gold)
    rows = [r for entry in built.values() for tabs in entry["tables"].values() for t in tabs for r in to_csv_rows(t)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["table", "base", "row", "column", "value", "ci_low", "ci_high", "mark", "text"])
    w.writeheader()
    w.writerows(rows)
    tex = "% " + head.strip("<!-> \n") + "\n% needs \\usepackage{booktabs}\n\n" + "\n\n".join(
        to_latex(t) for entry in built.values() for tabs in entry["tables"].values() for t in tabs) + "\n"
    paths = {"tables.md": head + md, "tables.csv": buf.getvalue(), "tables.tex": tex,
             "claims.md": head + claims.render(root, built, roles, pref)}
    for name, text in paths.items():
        artifacts.write_text(reports / name, text)
    return [reports / n for n in paths]
