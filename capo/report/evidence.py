"""Evidence for the tables: an experiment directory's evaluation results (``Evidence``: per-image
win-rates of every cell and training seed, with their two-level statistics), the evaluated
columns, and the paper's comparisons with their paired differences and verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from capo.eval.stats import bootstrap_contrasts, two_level_bootstrap, verdict
from capo.report.render import plural
from capo.vocabulary import bias_name, label, OBJECTIVES, split_label


def load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
        return (f"*{sets}; {plural(self.res['n_per_prompt'], 'image')} per prompt, the same per-item seeds for every model; "
                f"{seeds}; cells: mean ±half-width of the 95% CI; bold: best beyond its CI, italics: tied with "
                "the best.*")


def eval_columns(ev: Evidence, roles: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Evaluation columns: the rewards in their paper roles, then the hidden truth if evaluated."""
    cols = {r: n for r, n in roles.items() if r in ev.res.get("rewards", [])}
    for r in ev.res.get("rewards", []):
        if r not in cols and "gold" in r:
            cols[r] = "gold"
    return list(cols), cols


def weighting_rows(ev: Evidence) -> list[tuple[str, str]]:
    """Table 5's rows: constant and each sigmoid b, whichever cells hold them."""
    rows = []
    default = cell_weighting(ev, "capo-frs")
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
    d = cell_weighting(ev, "capo-frs")
    return out | ({d} if d and d != "constant" else set())


def cell_weighting(ev: Evidence, cell: str) -> str | None:
    """``constant`` or ``b<bias>`` of a trained cell, from its sweep (or its train manifest)."""
    sw = load_json(ev.dir.parent / "sweep" / cell / "sweep.json")
    if sw:
        c = sw["cell"]
        return "constant" if c["weighting"] == "constant" else bias_name(c["bias"])
    return None


def comparisons(ev: Evidence, roles: dict[str, str], pref: str) -> list[dict]:
    """The paper's head-to-head comparisons present in ``ev``: name, A, B, metrics, table."""
    ev_cols, names = eval_columns(ev, roles)
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
