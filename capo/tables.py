"""The paper's Tables 1-5, head-to-head tests and the beta sweep, from `capo eval` results:
markdown, CSV (one row per cell, with its CI) and LaTeX (booktabs), with the paper's numbers.

An experiment directory (``capo reproduce`` writes one) holds, per base model ``B``:
``B/eval/`` (test win-rates of every model against ``B``: ``results.json`` and per-image
scores ``results/<label>/winrate_per_image.parquet``), ``B/bench/`` (GenEval /
T2I-CompBench of ``B`` and CaPO+FRS) and ``B/sweep/<cell>/sweep.json`` (the beta grid's
validation figures). Model labels are ``<cell>.s<seed>`` (``capo.stages.reproduce``); a
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    """The cell label of an experiment (see module docstring)."""
    return f"{objective}-single-{reward}" if selection == "single" else f"{objective}-{selection}"


def obj_name(o: str) -> str:
    return "CaPO" if o == "capo" else o.upper()


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- evidence
def seed_label(cell: str, seed: int) -> str:
    """The evaluated model of ``cell`` trained with ``seed``: ``capo-frs.s1`` (``split_label``'s inverse)."""
    return f"{cell}.s{seed}"


def bias_name(b: float) -> str:
    """Table 5's row name of a sigmoid bias: 1 -> "b1.0", 1.5 -> "b1.5", 1.25 -> "b1.25"."""
    s = f"{b:g}"
    return "b" + (s if "." in s or "e" in s else s + ".0")


def split_label(lab: str) -> tuple[str, int]:
    """``capo-frs.s1`` -> ``("capo-frs", 1)``; a label without a seed is seed 0."""
    cell, sep, s = lab.rpartition(".s")
    return (cell, int(s)) if sep and s.isdigit() else (lab, 0)


class Evidence:
    """One evaluation directory's per-image results, aligned for paired two-level statistics.

    ``values(cells, metric)`` gives, per cell, one value per (seed, prompt, image) row in the
    same order for every cell (seeds: those every named cell has, paired by position), with
    the prompt and seed ids; ``stats(cells, metric)`` the ``capo.eval.stats`` contrasts.
    Metrics: ``("win", reward)`` = 100 x (1 / 0.5 / 0: the model's image beats the base's),
    ``("score", reward)`` = the model's score, ``("mean-win", rewards)`` = the mean of the
    win outcomes over several rewards, ``("vs", reward, other_cell)`` = 100 x (the image
    beats ``other_cell``'s image of the same prompt, image seed and training seed).
    """

    def __init__(self, eval_dir: Path, n_boot: int = 2000):
        self.dir = Path(eval_dir)
        self.res = json.loads((self.dir / "results.json").read_text())
        self.base = self.res["base"]
        self.n_boot = n_boot
        self.seeds: dict[str, dict[int, str]] = {}
        for lab in self.res["results"]:
            if lab != self.base:
                cell, s = split_label(lab)
                self.seeds.setdefault(cell, {})[s] = lab
        self._frames: dict = {}
        self._stats: dict = {}

    def has(self, cell: str) -> bool:
        return cell in self.seeds

    def frame(self, lab: str, bench: str = "winrate"):
        import pandas as pd

        key = (lab, bench)
        if key not in self._frames:
            f = pd.read_parquet(self.dir / "results" / lab / f"{bench}_per_image.parquet")
            self._frames[key] = f.sort_values(["prompt_id", "sample_id"], kind="stable").reset_index(drop=True)
        return self._frames[key]

    def common_seeds(self, cells) -> list[int]:
        sets = [set(self.seeds[c]) for c in cells]
        return sorted(set.intersection(*sets)) if sets else []

    def values(self, cells: list[str], metric: tuple, bench: str = "winrate"):
        """(values per cell, prompt ids, seed ids): rows (seed position, prompt, image)."""
        seeds = self.common_seeds(cells)
        if not seeds:
            raise KeyError(f"{self.dir}: cells {cells} have no training seed in common")
        base = self.frame(self.base, bench)
        out = {c: [] for c in cells}
        pids, sids = [], []
        for i, s in enumerate(seeds):
            for c in cells:
                f = self.frame(self.seeds[c][s], bench)
                if not (f["prompt_id"].equals(base["prompt_id"]) and f["sample_id"].equals(base["sample_id"])):
                    raise ValueError(f"{self.dir}: {self.seeds[c][s]} and the base were evaluated on different images")
                out[c].append(self._metric(f, base, metric, s))
            pids.append(base["prompt_id"].to_numpy())
            sids.append(np.full(len(base), i))
        return {c: np.concatenate(v) for c, v in out.items()}, np.concatenate(pids), np.concatenate(sids)

    def _metric(self, f, base, metric, s) -> np.ndarray:
        kind = metric[0]
        if kind == "win":
            a, b = f[metric[1]].to_numpy(float), base[metric[1]].to_numpy(float)
            return 100 * ((a > b) + 0.5 * (a == b))
        if kind == "mean-win":
            return np.mean([self._metric(f, base, ("win", r), s) for r in metric[1]], axis=0)
        if kind == "score":
            return f[metric[1]].to_numpy(float)
        if kind == "vs":
            other = self.frame(self.seeds[metric[2]][s])
            a, b = f[metric[1]].to_numpy(float), other[metric[1]].to_numpy(float)
            return 100 * ((a > b) + 0.5 * (a == b))
        if kind == "column":  # a per-image column of another benchmark (GenEval correct, CompBench score)
            return f[metric[1]].to_numpy(float)
        raise ValueError(f"unknown metric {metric!r}")

    def stats(self, cells: list[str], metric: tuple, bench: str = "winrate"):
        from capo.eval.stats import bootstrap_contrasts

        key = (tuple(cells), metric, bench)
        if key not in self._stats:
            vals, pids, sids = self.values(cells, metric, bench)
            self._stats[key] = bootstrap_contrasts(vals, pids, sids, n_boot=self.n_boot)
        return self._stats[key]

    def footer(self) -> str:
        sets = ", ".join(f"{ps}: {n} prompts" for ps, n in self.res["n_prompts"].items())
        S = max((len(v) for v in self.seeds.values()), default=1)
        seeds = f"{S} training seeds per cell, CIs over prompts and seeds" if S > 1 else \
            "one training seed per cell, CIs over prompts only (conditional on that seed)"
        return (f"*{sets}; {self.res['n_per_prompt']} images per prompt, the same per-item seeds for every model; "
                f"{seeds}; cells: mean ±half-width of the 95% CI; bold: best beyond its CI, italics: tied with "
                "the best.*")


# ----------------------------------------------------------------------------- table model
@dataclass
class Table:
    """One rendered table: rows of cells ``{"value", "ci_low", "ci_high", "mark", "text"}``."""

    key: str  # "table1", "h2h", ...
    base: str
    title: str
    columns: list[str]
    rows: list[tuple[str, list[dict]]] = field(default_factory=list)
    note: str = ""


def cell(value=None, ci_low=None, ci_high=None, digits: int = 1, text: str | None = None, mark: str = "") -> dict:
    if text is None:
        if value is None:
            text = "-"
        elif ci_low is None:
            text = f"{value:.{digits}f}"
        else:
            text = f"{value:.{digits}f} ±{(ci_high - ci_low) / 2:.{digits}f}"
    return {"value": value, "ci_low": ci_low, "ci_high": ci_high, "mark": mark, "text": text}


def stat_cell(summary: dict | None, digits: int = 1) -> dict:
    if not summary:
        return cell()
    return cell(summary["mean"], summary["ci_low"], summary["ci_high"], digits)


def mark_column(t: Table, j: int, contrasts, arms: list[str], higher: bool = True) -> None:
    """Bold / italics in column ``j`` from the paired contrasts of ``arms`` (one per row)."""
    from capo.eval.stats import best_beyond_ci

    if contrasts is None or len(arms) < 2:
        return
    marks = best_beyond_ci(contrasts, arms, higher=higher)
    for (name, cells), arm in zip(t.rows, arms):
        cells[j]["mark"] = marks[arm]


def to_markdown(t: Table) -> str:
    def fmt(c):
        return f"**{c['text']}**" if c["mark"] == "best" else f"*{c['text']}*" if c["mark"] == "tied" else c["text"]

    lines = ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join([name] + [fmt(c) for c in cells]) + " |" for name, cells in t.rows]
    return (t.title + "\n\n" if t.title else "") + "\n".join(lines) + ("\n\n" + t.note if t.note else "")


def to_csv_rows(t: Table) -> list[dict]:
    return [{"table": t.key, "base": t.base, "row": name, "column": col, "value": c["value"], "ci_low": c["ci_low"],
             "ci_high": c["ci_high"], "mark": c["mark"], "text": c["text"]}
            for name, cells in t.rows for col, c in zip(t.columns[1:], cells)]


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("→", r"$\to$"), ("−", "-"), ("≤", r"$\le$"), ("≥", r"$\ge$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    def fmt(c):
        x = _tex(c["text"])
        return rf"\textbf{{{x}}}" if c["mark"] == "best" else rf"\textit{{{x}}}" if c["mark"] == "tied" else x

    lines = [f"% {t.key} ({t.base}): {_tex(t.title)}", r"\begin{tabular}{l" + "r" * (len(t.columns) - 1) + "}",
             r"\toprule", " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join([_tex(name)] + [fmt(c) for c in cells]) + r" \\" for name, cells in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _eval_columns(ev: Evidence, roles: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Evaluation columns: the rewards in their paper roles, then the hidden truth if evaluated."""
    cols = {r: n for r, n in roles.items() if r in ev.res.get("rewards", [])}
    for r in ev.res.get("rewards", []):
        if r not in cols and "gold" in r:
            cols[r] = "gold"
    return list(cols), cols


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
    ev_cols, names = _eval_columns(ev, roles)
    out = []
    for tr in rw:  # one sub-table per training reward: the arms of a column are the three objectives
        rows = [(obj_name(o), label(o, "single", tr)) for o in OBJECTIVES]
        cols = [(f"{names[tr]}→{names[e]}" + (" (trained)" if e == tr else ""), ("win", e)) for e in ev_cols]
        out.append(_win_table("table1", base, f"Trained on {names[tr]}: win-rate (%) over the base, evaluated by "
                              "each reward.", ev, rows, cols))
    return out


def table2(ev: Evidence, roles: dict[str, str], base: str) -> Table:
    ev_cols, names = _eval_columns(ev, roles)
    rows = [(f"{obj_name(o)} + {s.upper()}", label(o, s)) for o in OBJECTIVES for s in SELECTORS]
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
    ev_cols, names = _eval_columns(ev, roles)
    rows = [("Diffusion-DPO (human pairs)", "dpo-human"), ("DPO-Syn", label("dpo", "single", pref)),
            ("CaPO", label("capo", "single", pref))]
    cols = [(f"{names[r]} score", ("score", r)) for r in ev_cols] + \
           [(f"{names[r]} win (%)", ("win", r)) for r in ev_cols]
    return _win_table("table4", base, f"Models trained on the preference reward ({names[pref]}, PickScore's role) "
                      "vs Diffusion-DPO on simulated human pairs: mean scores and win-rates over the base.",
                      ev, rows, cols)


def table5(ev: Evidence, roles: dict[str, str], base: str, weighting_rows: list[tuple[str, str]]) -> Table:
    ev_cols, names = _eval_columns(ev, roles)
    cols = [(names[r], ("win", r)) for r in ev_cols]
    return _win_table("table5", base, "CaPO multi-reward (FRS) win-rates (%) by loss weighting.", ev,
                      weighting_rows, cols)


def weighting_rows(ev: Evidence) -> list[tuple[str, str]]:
    """Table 5's rows: constant and each sigmoid b, whichever cells hold them."""
    rows = []
    default = _cell_weighting(ev, "capo-frs")
    for name, w in [("Constant weighting", "constant")] + [(f"Sigmoid weighting (b = {b[1:]})", b)
                                                            for b in sorted(_biases(ev))]:
        lab = f"capo-frs-{w}"
        if ev.has(lab):
            rows.append((name, lab))
        elif default == w:
            rows.append((name, "capo-frs"))
    return rows


def _biases(ev: Evidence) -> set[str]:
    out = {c.removeprefix("capo-frs-") for c in ev.seeds if re.fullmatch(r"capo-frs-b[\d.]+", c)}
    d = _cell_weighting(ev, "capo-frs")
    return out | ({d} if d and d != "constant" else set())


def _cell_weighting(ev: Evidence, cell: str) -> str | None:
    """``constant`` or ``b<bias>`` of a trained cell, from its sweep (or its train manifest)."""
    sw = _load(ev.dir.parent / "sweep" / cell / "sweep.json")
    if sw:
        c = sw["cell"]
        return "constant" if c["weighting"] == "constant" else bias_name(c["bias"])
    return None


def table3(bench_dir: Path, base: str) -> Table | None:
    """GenEval / CompBench of the base and CaPO+FRS (mean over seeds), deltas with two-level CIs."""
    from capo.eval.stats import two_level_bootstrap

    res = _load(bench_dir / "results.json")
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
        better = "best" if d["ci_low"] > 0 else ""
        worse = "best" if d["ci_high"] < 0 else ""
        rows[base_name].append(cell(float(base_v.mean()), digits=digits, mark=worse))
        rows[f"CaPO+{base_name}"].append(cell(float(cap_v.mean()), digits=digits, mark=better))
        rows["CaPO − base"].append(cell(d["mean"], d["ci_low"], d["ci_high"], digits,
                                        text=f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, "
                                             f"{d['ci_high']:+.{digits}f}]"))

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
    t.note = (f"*{sets}; {res['n_per_prompt']} images per prompt; CaPO+FRS averaged over {len(labs)} training "
              "seed(s); the last row is the paired difference with its 95% CI (prompts and seeds); bold: the better "
              "model where that CI excludes zero.*")
    return t


# ----------------------------------------------------------------------------- head-to-head
def comparisons(ev: Evidence, roles: dict[str, str], pref: str) -> list[dict]:
    """The paper's head-to-head comparisons present in ``ev``: name, A, B, metrics, table."""
    ev_cols, names = _eval_columns(ev, roles)
    crit = tuple(r for r in roles if r in ev_cols)
    gold = [r for r in ev_cols if r not in roles]
    out = []

    def add(table, a, b, metrics, claim=None):
        if ev.has(a) and ev.has(b):
            out.append({"table": table, "a": a, "b": b, "metrics": metrics, "claim": claim})

    for tr in roles:
        for o in ("dpo", "ipo"):
            add("Table 1", label("capo", "single", tr), label(o, "single", tr),
                [(names[tr] + " (trained)", ("win", tr))] + [(names[g], ("win", g)) for g in gold], "C1")
    mean_name = "mean of " + "/".join(names[r] for r in crit)
    for o in OBJECTIVES:
        for other in ("sum", "soup"):
            add("Table 2", label(o, "frs"), label(o, other),
                [(mean_name, ("mean-win", crit))] + [(names[r], ("win", r)) for r in crit + tuple(gold)],
                "C2" if other == "sum" else ("C3" if o == "capo" else None))
    add("Table 4", label("capo", "single", pref), "dpo-human",
        [(mean_name, ("mean-win", crit))] + [(names[r], ("win", r)) for r in crit + tuple(gold)], "C5")
    rows = weighting_rows(ev)
    const = next((c for n, c in rows if n.startswith("Constant")), None)
    for n, c in rows:
        if const and c != const:
            add("Table 5", c, const, [(mean_name, ("mean-win", crit))] + [(names[r], ("win", r)) for r in crit + tuple(gold)],
                "C6")
    return out


def head_to_head(ev: Evidence, comp: dict) -> list[dict]:
    """Per metric: the paired difference of win-rates over the base (pp) and the direct
    A-vs-B win-rate (%), each with its two-level CI and verdict."""
    from capo.eval.stats import two_level_bootstrap, verdict

    rows = []
    for name, metric in comp["metrics"]:
        d = ev.stats([comp["a"], comp["b"]], metric).difference(comp["a"], comp["b"])
        direct = None
        if metric[0] == "win":
            vals, pids, sids = ev.values([comp["a"], comp["b"]], ("vs", metric[1], comp["b"]))
            direct = two_level_bootstrap(vals[comp["a"]], pids, sids, n_boot=ev.n_boot)
        elif metric[0] == "mean-win":
            parts = [ev.values([comp["a"], comp["b"]], ("vs", r, comp["b"])) for r in metric[1]]
            v = np.mean([p[0][comp["a"]] for p in parts], axis=0)
            direct = two_level_bootstrap(v, parts[0][1], parts[0][2], n_boot=ev.n_boot)
        rows.append({"metric": name, "delta": d, "direct": direct,
                     "verdict": verdict(d["ci_low"], d["ci_high"], +1)})
    return rows


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
                          text=f"{d['delta']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"),
                     cell(dr["mean"], dr["ci_low"], dr["ci_high"],
                          text=f"{dr['mean']:.1f} [{dr['ci_low']:.1f}, {dr['ci_high']:.1f}]") if dr else cell(),
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
    pm = _load(ev.dir.parent / "pairs" / "frs" / "manifest.json")
    n_default = pm["config"].get("n") if pm else None
    rows = [(f"N = {n}", f"capo-frs-n{n}") for n in ns]
    if n_default:
        rows.append((f"N = {n_default}", "capo-frs"))
    rows.sort(key=lambda r: int(r[0].split("= ")[1]))
    ev_cols, names = _eval_columns(ev, roles)
    return _win_table("n", base, "CaPO + FRS by samples per prompt N (each N with its own selected beta): "
                      "win-rate (%) over the base.", ev, rows, [(names[r], ("win", r)) for r in ev_cols])


def matched_markdown(base_dir: Path, roles: dict[str, str], gold: str | None) -> str:
    """Validation win-rate at matched divergence (capo.frontier), per objective, for the
    FRS and SUM cells: which objective buys more reward, or more truth, per unit of divergence."""
    try:
        from capo import frontier
    except ImportError:
        return ""
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


def paper_table(n: int, base: str) -> str:
    """The paper's own numbers for table ``n`` and base model name (SDXL / SD3-M); bold: the
    highest of a column, as the paper prints it (the paper gives no intervals)."""
    P = PAPER[f"table{n}"]
    if n == 1:
        header = ["Objective"] + [f"{t}→{e}" for t in ("MPS", "VQA", "VILA") for e in ("MPS", "VQA", "VILA")]
        rows = [(obj_name(o), P[base][o]) for o in OBJECTIVES]
    elif n == 2:
        header = ["Method"] + [f"{r} {k}" for r in ("MPS", "VQA", "VILA") for k in ("Win (%)", "Score")]
        rows = [(f"{o}-{s}", P[base][f"{o}-{s}"]) for o in OBJECTIVES for s in SELECTORS]
    elif n == 3:
        header, rows = ["Model"] + P["columns"], [(k, P[k]) for k in P if k != "columns" and base in k]
    elif n == 4:
        header, rows = ["Method", "PickScore", "MPS", "VQA", "VILA"], list(P.items())
    else:
        header, rows = ["Loss weighting", "MPS", "VQA", "VILA"], list(P.items())
    t = Table(f"paper{n}", base, "", header)
    t.rows = [(name, [cell(v, text="-" if v is None else f"{v}") for v in vals]) for name, vals in rows]
    if n in (1, 2):
        for j in range(len(header) - 1):
            col = [c[j]["value"] for _, c in t.rows if c[j]["value"] is not None]
            for _, c in t.rows:
                if col and c[j]["value"] == max(col):
                    c[j]["mark"] = "best"
    return to_markdown(t)


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
    protocol = protocol_markdown(root, list(built))
    if protocol:
        parts += ["## Protocol\n", protocol, ""]
    return "\n".join(parts) + "\n"


def protocol_markdown(root: Path, bases: list[str]) -> str:
    """Each evaluation's protocol card (``capo.eval.protocol``), and what the bases' cards
    disagree on, so that figures measured differently are never set side by side silently."""
    from capo.eval.protocol import differences, render

    parts, cards = [], {}
    for b in bases:
        for part in ("eval", "bench"):
            res = _load(root / b / part / "results.json")
            if res and res.get("protocol"):
                cards[(b, part)] = res["protocol"]
                parts += [f"### base: {b}, {part}\n", render(res["protocol"]), ""]
    for part in ("eval", "bench"):
        keyed = [(b, cards[(b, part)]) for b in bases if (b, part) in cards]
        for (b0, c0), (b1, c1) in zip(keyed, keyed[1:]):
            diff = differences(c0, c1)
            if diff:
                parts.append(f"**The {part} figures of {b0} and {b1} were measured differently:** "
                             + "; ".join(diff) + ".\n")
    return "\n".join(parts)


def write(root: str | Path, reports: str | Path, roles: dict[str, str], pref: str, *, with_paper: bool = True,
          gold: str | None = None, command: str = "capo tables") -> list[Path]:
    """tables.md, tables.csv (one row per cell), tables.tex (booktabs) and claims.md into ``reports``."""
    import csv
    import io

    from capo import artifacts, claims

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
