"""The paper's Tables 1-5 as markdown, from `capo eval` results, with the paper's own numbers.

An experiment directory (``capo reproduce`` writes one) holds, per base model ``B``:
``B/eval/results.json`` (win-rates of every fine-tuned model against ``B``) and
``B/bench/results.json`` (GenEval / T2I-CompBench of ``B`` and its CaPO+FRS model).
Model labels follow one scheme (``label()``), which is how cells find their runs:

* Table 1: ``<obj>-single-<reward>``; Table 2: ``<obj>-<sum|soup|frs>``;
* Table 4: ``dpo-human`` (Diffusion-DPO analogue, human-labelled pairs), DPO-Syn =
  ``dpo-single-<pref>``, CaPO = ``capo-single-<pref>``;
* Table 5: ``capo-frs-constant`` and ``capo-frs-b<b>``; Table 3: base vs ``capo-frs``.

Cells show win-rate % (or mean score) and the 95% bootstrap CI's half-width; the best
value of each column within a table is bold, as in the paper. Reward columns are named
by the role they play in the paper (MPS, VQA, VILA, PickScore) with the model that
plays it in this run.
"""

from __future__ import annotations

import json
from pathlib import Path

OBJECTIVES = ("dpo", "ipo", "capo")
SELECTORS = ("sum", "soup", "frs")
WEIGHTINGS = ("constant", "b1.0", "b1.5", "b2.0")

# The paper's numbers (its Tables 1-5). Table 1/2/5: win-rate (%) over the base model;
# Table 2 also mean scores; Table 3: GenEval / T2I-CompBench; Table 4: mean scores.
PAPER = {
    "table1": {  # rows: objective; columns: (trained on, evaluated by) for MPS, VQA, VILA
        "SDXL": {"dpo": [58.5, 49.3, 61.7, 53.1, 50.6, 55.9, 52.6, 46.4, 81.8],
                 "ipo": [56.8, 50.1, 64.1, 53.1, 51.9, 53.8, 53.3, 48.5, 76.1],
                 "capo": [61.1, 49.7, 64.9, 55.5, 53.2, 58.7, 54.1, 49.6, 83.1]},
        "SD3-M": {"dpo": [55.2, 53.2, 54.4, 52.1, 53.2, 52.9, 53.1, 48.7, 70.1],
                  "ipo": [51.1, 52.1, 48.3, 52.8, 51.9, 51.1, 58.3, 50.2, 70.8],
                  "capo": [58.1, 53.3, 63.4, 54.4, 55.4, 59.4, 57.4, 50.8, 74.0]},
    },
    "table2": {  # (win, score) for MPS, VQA, VILA; base row: scores
        "SDXL": {"base": [None, 11.30, None, 0.826, None, 5.953],
                 "dpo-sum": [57.2, 11.48, 52.1, 0.829, 71.9, 6.193], "dpo-soup": [56.5, 11.46, 52.2, 0.830, 74.3, 6.227],
                 "dpo-frs": [58.1, 11.54, 52.9, 0.834, 78.6, 6.294], "ipo-sum": [57.4, 11.49, 51.1, 0.828, 66.8, 6.111],
                 "ipo-soup": [55.4, 11.44, 52.0, 0.830, 70.3, 6.154], "ipo-frs": [57.8, 11.52, 52.0, 0.830, 74.4, 6.238],
                 "capo-sum": [61.2, 11.62, 52.5, 0.834, 75.0, 6.258], "capo-soup": [59.4, 11.44, 52.8, 0.835, 77.6, 6.259],
                 "capo-frs": [61.2, 11.66, 54.6, 0.839, 79.2, 6.340]},
        "SD3-M": {"base": [None, 13.39, None, 0.908, None, 5.793],
                  "dpo-sum": [55.3, 13.50, 52.8, 0.910, 55.0, 5.832], "dpo-soup": [56.1, 13.39, 54.7, 0.908, 63.4, 5.875],
                  "dpo-frs": [56.7, 13.55, 53.2, 0.909, 68.7, 5.922], "ipo-sum": [54.1, 13.47, 53.9, 0.912, 58.9, 5.847],
                  "ipo-soup": [55.6, 13.39, 53.5, 0.910, 60.4, 5.848], "ipo-frs": [55.5, 13.55, 54.6, 0.913, 64.7, 5.913],
                  "capo-sum": [57.8, 13.56, 54.3, 0.912, 57.0, 5.833], "capo-soup": [59.4, 13.60, 54.9, 0.911, 67.6, 5.896],
                  "capo-frs": [59.0, 13.58, 55.7, 0.914, 69.3, 5.943]},
    },
    "table3": {  # GenEval: single two counting colors position color_attr overall | CompBench (order as printed)
        "columns": ["single_object", "two_object", "counting", "colors", "position", "color_attr", "overall",
                    "color", "shape", "texture", "complex", "spatial", "non_spatial"],
        "SDXL": [0.98, 0.74, 0.39, 0.85, 0.15, 0.23, 0.55, 0.592, 0.500, 0.608, 0.465, 0.159, 0.312],
        "CaPO+SDXL": [0.99, 0.79, 0.48, 0.86, 0.15, 0.28, 0.59, 0.646, 0.537, 0.633, 0.491, 0.172, 0.312],
        "SD3-M": [0.99, 0.84, 0.56, 0.84, 0.32, 0.52, 0.68, 0.775, 0.546, 0.712, 0.505, 0.221, 0.309],
        "CaPO+SD3-M": [0.99, 0.87, 0.63, 0.86, 0.31, 0.59, 0.71, 0.788, 0.572, 0.731, 0.509, 0.230, 0.313],
    },
    "table4": {  # SDXL, mean scores: PickScore, MPS, VQA, VILA
        "Diffusion-DPO": [22.71, 11.59, 0.834, 6.049], "DPO-Syn": [22.74, 11.59, 0.825, 6.074],
        "CaPO": [22.83, 11.71, 0.838, 6.141],
    },
    "table5": {  # SDXL CaPO multi-reward, win-rates MPS, VQA, VILA
        "constant": [56.5, 51.8, 70.8], "b1.0": [59.1, 54.5, 73.3], "b1.5": [61.2, 54.6, 79.2],
        "b2.0": [58.6, 52.6, 75.2],
    },
}
PAPER_BASES = {"shapes-sdxl": "SDXL", "shapes-sd3": "SD3-M"}


def label(objective: str, selection: str, reward: str | None = None) -> str:
    """The model label of an experiment (see module docstring)."""
    return f"{objective}-single-{reward}" if selection == "single" else f"{objective}-{selection}"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(w: dict | None, key: str = "win_rate", ci: tuple[str, str] = ("ci_low", "ci_high"), digits: int = 1):
    if not w:
        return None, "-"
    v = w[key]
    half = (w[ci[1]] - w[ci[0]]) / 2 if ci[0] in w else None
    return v, f"{v:.{digits}f}" + (f" ±{half:.{digits}f}" if half is not None else "")


def _bold_best(rows: list[list[tuple]], higher: bool = True) -> list[list[str]]:
    """Bold the best value of each column (ties all bold); cells are (value, text)."""
    ncol = len(rows[0]) if rows else 0
    out = [[t for _, t in r] for r in rows]
    for j in range(ncol):
        vals = [r[j][0] for r in rows if r[j][0] is not None]
        if len(vals) < 2:
            continue
        best = max(vals) if higher else min(vals)
        for i, r in enumerate(rows):
            if r[j][0] is not None and abs(r[j][0] - best) < 1e-12:
                out[i][j] = f"**{out[i][j]}**"
    return out


def _md(header: list[str], rows: list[list[str]], names: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([n] + r) + " |" for n, r in zip(names, rows)]
    return "\n".join(lines)


def _footer(res: dict) -> str:
    sets = ", ".join(f"{ps}: {n} prompts" for ps, n in res["n_prompts"].items())
    return (f"\n\n*{sets}; {res['n_per_prompt']} images per prompt, the same per-item seeds for every model; "
            "cells: value ±half-width of the 95% bootstrap CI over prompts; bold: best in column.*")


def _with_gold(res: dict, roles: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Evaluation columns: the rewards in their paper roles, then the hidden truth if evaluated."""
    cols = dict(roles)
    for r in res.get("rewards", []):
        if r not in cols and "gold" in r:
            cols[r] = "gold"
    return list(cols), cols


def table1(res: dict, roles: dict[str, str]) -> str:
    rw = list(roles)  # reward names in paper order (MPS, VQA, VILA roles)
    ev, names = _with_gold(res, roles)
    header = ["Objective"] + [f"{names[t]}→{names[e]}" + (" (trained)" if t == e else "") for t in rw for e in ev]
    rows = [[_cell(res["results"].get(label(o, "single", t), {}).get("winrate", {}).get(e)) for t in rw for e in ev]
            for o in OBJECTIVES]
    return "Win-rate (%) over the base model; column = trained on → evaluated by.\n\n" + \
        _md(header, _bold_best(rows), [o.upper() if o != "capo" else "CaPO" for o in OBJECTIVES]) + _footer(res)


def table2(res: dict, roles: dict[str, str]) -> str:
    rw, roles = _with_gold(res, roles)
    header = ["Objective", "Method"] + [f"{roles[r]} {k}" for r in rw for k in ("Win (%)", "Score")]
    base = res["results"][res["base"]].get("winrate", {})
    names, rows = [], []
    for o in OBJECTIVES:
        for s in SELECTORS:
            entry = res["results"].get(label(o, s), {}).get("winrate", {})
            cells = []
            for r in rw:
                cells += [_cell(entry.get(r)), _cell(entry.get(r), "score", ("_", "_"), 3)]
            rows.append(cells)
            names.append(f"{o.upper() if o != 'capo' else 'CaPO'} | {s.upper()}")
    base_row = " | ".join(["-", "base"] + sum([["-", f"{base[r]['mean_b']:.3f}" if r in base else "-"] for r in rw], []))
    body = _md(header, _bold_best(rows), names)
    lines = body.split("\n")
    return "Multi-reward: win-rate (%) and mean score per reward model.\n\n" + "\n".join(
        lines[:2] + [f"| {base_row} |"] + lines[2:]) + _footer(res)


def table3(bench: dict, capo_label: str = "capo-frs") -> str:
    base = bench["base"]
    base_name = bench.get("models", {}).get(base, base)  # the model spec (paper: "SDXL" / "CaPO+SDXL")
    g_tags = ["single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"]
    cats = sorted({c for r in bench["results"].values() for c in r.get("compbench", {}).get("categories", {})})
    header = ["Model"] + [f"GenEval {t}" for t in g_tags] + [f"CompBench {c}" for c in cats]
    rows, names = [], []
    for lab in (base, capo_label):
        r = bench["results"].get(lab, {})
        g = r.get("geneval", {})
        vals = [g.get("overall") if t == "overall" else g.get("tags", {}).get(t) for t in g_tags]
        vals += [r.get("compbench", {}).get("categories", {}).get(c) for c in cats]
        rows.append([(v, "-" if v is None else f"{v:.3f}") for v in vals])
        names.append(base_name if lab == base else f"CaPO+{base_name}")
    out = _md(header, _bold_best(rows), names)
    d = bench["results"].get(capo_label, {})
    deltas = [f"GenEval overall {d['geneval_delta']['overall']['delta']:+.3f} "
              f"[{d['geneval_delta']['overall']['ci_low']:+.3f}, {d['geneval_delta']['overall']['ci_high']:+.3f}]"] \
        if "geneval_delta" in d else []
    deltas += [f"{c} {v['delta']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
               for c, v in d.get("compbench_delta", {}).items()]
    return out + _footer(bench) + ("\n\nCaPO − base (95% CI): " + "; ".join(deltas) if deltas else "")


def table4(res: dict, roles: dict[str, str], pref: str) -> str:
    rw, roles = _with_gold(res, roles)
    header = ["Method"] + [f"{roles[r]} score" for r in rw]
    labels = [("Diffusion-DPO (human pairs)", "dpo-human"), ("DPO-Syn", label("dpo", "single", pref)),
              ("CaPO", label("capo", "single", pref))]
    rows = [[_cell(res["results"].get(lab, {}).get("winrate", {}).get(r), "score", ("_", "_"), 3) for r in rw]
            for _, lab in labels]
    return "Mean reward scores of models trained with the preference reward (PickScore's role).\n\n" + \
        _md(header, _bold_best(rows), [n for n, _ in labels]) + _footer(res)


def table5(res: dict, roles: dict[str, str]) -> str:
    rw, roles = _with_gold(res, roles)
    header = ["Loss weighting"] + [roles[r] for r in rw]
    names = ["Constant weighting", "Sigmoid weighting (b = 1.0)", "Sigmoid weighting (b = 1.5)",
             "Sigmoid weighting (b = 2.0)"]
    rows = [[_cell(res["results"].get(f"capo-frs-{w}", {}).get("winrate", {}).get(r)) for r in rw] for w in WEIGHTINGS]
    return "CaPO multi-reward (FRS) win-rates (%) by loss weighting.\n\n" + _md(header, _bold_best(rows), names) + \
        _footer(res)


def paper_table(n: int, base: str) -> str:
    """The paper's own numbers for table ``n`` and base model name (SDXL / SD3-M)."""
    P = PAPER[f"table{n}"]
    if n == 1:
        rows = [[(v, f"{v:.1f}") for v in P[base][o]] for o in OBJECTIVES]
        header = ["Objective"] + [f"{t}→{e}" for t in ("MPS", "VQA", "VILA") for e in ("MPS", "VQA", "VILA")]
        return _md(header, _bold_best(rows), ["DPO", "IPO", "CaPO"])
    if n == 2:
        keys = [f"{o}-{s}" for o in OBJECTIVES for s in SELECTORS]
        rows = [[(v, "-" if v is None else f"{v}") for v in P[base][k]] for k in keys]
        header = ["Method"] + [f"{r} {k}" for r in ("MPS", "VQA", "VILA") for k in ("Win (%)", "Score")]
        return _md(header, _bold_best(rows), keys)
    if n == 3:
        names = [k for k in P if k != "columns" and base in k]
        return _md(["Model"] + P["columns"], [[f"{v}" for v in P[k]] for k in names], names)
    if n == 4:
        return _md(["Method", "PickScore", "MPS", "VQA", "VILA"], [[f"{v}" for v in P[k]] for k in P], list(P))
    return _md(["Loss weighting", "MPS", "VQA", "VILA"], [[f"{v}" for v in P[k]] for k in P], list(P))


def render(root: str | Path, roles: dict[str, str], pref: str, with_paper: bool = False) -> str:
    """All five tables for every base model found under ``root``, as one markdown document."""
    root = Path(root)
    parts = ["# CaPO tables, regenerated\n"]
    bases = sorted(p.parent.parent.name for p in root.glob("*/eval/results.json"))
    if not bases:
        raise FileNotFoundError(f"{root}: no */eval/results.json (run `capo reproduce` first)")
    titles = {1: "Table 1. Single reward", 2: "Table 2. Multi-reward", 3: "Table 3. GenEval and T2I-CompBench",
              4: "Table 4. Comparison with Diffusion-DPO (human-labelled pairs)", 5: "Table 5. Loss weighting"}
    for n in (1, 2, 3, 4, 5):
        parts.append(f"## {titles[n]}\n")
        for b in bases:
            res = _load(root / b / "eval" / "results.json")
            paper_base = PAPER_BASES.get(b, "SDXL")
            parts.append(f"### base: {b}\n")
            if n == 1:
                parts.append(table1(res, roles))
            elif n == 2:
                parts.append(table2(res, roles))
            elif n == 3:
                bench = _load(root / b / "bench" / "results.json")
                parts.append(table3(bench) if bench else "*(not run)*")
            elif n == 4:
                parts.append(table4(res, roles, pref))
            else:
                parts.append(table5(res, roles))
            if with_paper and (n in (1, 2, 3) or paper_base == "SDXL"):
                parts.append(f"\nPaper ({paper_base}):\n\n" + paper_table(n, paper_base))
            parts.append("")
    return "\n".join(parts) + "\n"
