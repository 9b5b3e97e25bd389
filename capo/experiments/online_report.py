"""The offline-vs-online comparison's report (``capo online``): cell labels, each base's table of
win-rates and divergence with the head-to-head verdicts, ``online.md`` and the per-round figure.
The GRPO cells' report (``capo.experiments.online_grpo``) reuses the base section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capo import artifacts
from capo.eval.stats import interval_text, two_level_bootstrap
from capo.experiments.preset import base_dir
from capo.report.evidence import eval_columns, Evidence, head_to_head
from capo.report.figures import _plt, _save, COLORS
from capo.report.render import cell, to_markdown
from capo.report.tables import _win_table


def selected_entry(res: dict) -> dict:
    """A cell's line of ``selected.json`` from its ``capo sweep`` result: the selected beta (as
    given and as trained), its criterion value, whether the grid brackets it, and the grid."""
    sel = res["selected"]
    return {k: sel[k] for k in ("beta", "beta_trained", "criterion")} | {
        "bracketed": res["bracketed"], "grid": [p["beta"] for p in res["grid"]]}


def run_label(objective: str, R: int, r: int | None = None) -> str:
    """``capo-r3`` (the run's last checkpoint) or ``capo-r3-round1`` (an earlier round)."""
    return f"{objective}-r{R}" + (f"-round{r}" if r is not None and r < R else "")


def divergence_stats(ev, cells: list[str]) -> dict[str, dict]:
    """Per cell: the mean divergence from the base over its seeds' test images, with a
    two-level (prompts, training seeds) bootstrap CI."""
    import pandas as pd

    out = {}
    for c in cells:
        parts = [pd.read_parquet(ev.dir / "results" / lab / "divergence_per_image.parquet").assign(seed=s)
                 for s, lab in sorted(ev.seeds[c].items())]
        f = pd.concat(parts, ignore_index=True)
        out[c] = two_level_bootstrap(f["divergence"].to_numpy(float), f["prompt_id"].to_numpy(), f["seed"].to_numpy(),
                                     n_boot=ev.n_boot)
    return out


def comparisons(cfg, ev) -> list[dict]:
    """Online vs offline per objective and R > 1; online CaPO vs online DPO at each R."""
    cols, names = eval_columns(ev, dict(zip(cfg.rewards, cfg.roles)))
    crit = tuple(r for r in cfg.rewards if r in cols)
    metrics = [("mean of " + "/".join(names[r] for r in crit), ("mean-win", crit))] + \
              [(names[g], ("win", g)) for g in cols if g not in crit]
    out = []
    for R in (R for R in cfg.rounds if R > 1):
        for o in cfg.objectives:
            out.append({"table": "online", "a": run_label(o, R), "b": run_label(o, 1), "metrics": metrics, "claim": None})
    if "capo" in cfg.objectives and "dpo" in cfg.objectives:
        for R in cfg.rounds:
            out.append({"table": "online", "a": run_label("capo", R), "b": run_label("dpo", R), "metrics": metrics,
                        "claim": None})
    return [c for c in out if ev.has(c["a"]) and ev.has(c["b"])]


def base_markdown(cfg, b: Path, base: str, rows: list[tuple[str, str]] | None = None,
                  comps=comparisons, title: str = "") -> str:
    """One base's section: the win-rate / divergence table of ``rows`` ((name, cell); default
    the (objective, R) runs) and the head-to-head of ``comps(cfg, evidence)``."""
    ev = Evidence(b / "eval")
    roles = dict(zip(cfg.rewards, cfg.roles))
    cols, names = eval_columns(ev, roles)
    rows = rows or [(f"{o.upper() if o != 'capo' else 'CaPO'} " + ("offline" if R == 1 else f"online, R = {R}"),
                     run_label(o, R)) for o in cfg.objectives for R in sorted(cfg.rounds)]
    t = _win_table("online", base, title, ev, rows, [(names[r], ("win", r)) for r in cols])
    present = [c for _, c in rows if ev.has(c)]
    div = divergence_stats(ev, present)
    t.columns.append("divergence from base")
    for (_, cells), c in zip(t.rows, present):
        d = div[c]
        cells.append(cell(d["mean"], d["ci_low"], d["ci_high"], digits=4))
    t.columns.append("‖θ − θ_base‖")
    for (_, cells), c in zip(t.rows, present):
        dist = [ev.res["results"][lab]["divergence"]["param_distance"] for lab in ev.seeds[c].values()]
        cells.append(cell(float(np.mean(dist)), digits=3))
    sel = artifacts.read_json(b / "selected.json")
    t.columns.append("selected beta")
    for (_, cells), c in zip(t.rows, present):
        s = sel[c]
        cells.append(cell(text=f"{s['beta']:g}" + ("" if s["bracketed"] else " (edge)")))
    lines = [f"### {base}", "", "Win-rate over the base model (%) on the test prompts, mean ± half-width of the 95% "
             "CI; divergence: the reverse-process KL term from the base (capo.eval.divergence) on the same images; "
             "‖θ − θ_base‖: parameter distance, mean over seeds; (edge): the selected beta is at the grid's edge.", "",
             to_markdown(t), ""]
    h2h = []
    for comp in comps(cfg, ev):
        for r in head_to_head(ev, comp):
            d = r["delta"]
            h2h.append(f"| {comp['a']} vs {comp['b']} | {r['metric']} | {interval_text(d['delta'], d['ci_low'], d['ci_high'])} | "
                       f"{r['verdict']} |")
    lines += ["Head-to-head (paired on prompts, image seeds and training seeds; *reproduced* = A beats B beyond the "
              "CI, *contradicted* = B beats A beyond it):", "",
              "| A vs B | metric | Δ win-rate (pp) [95% CI] | verdict (A > B) |", "|---|---|---|---|", *h2h, ""]
    return "\n".join(lines)


def write_report(root: Path, reports: Path, cfg) -> list[Path]:
    """``reports/online.md`` and ``reports/online_<base>.png`` from the experiment directory."""
    reports.mkdir(parents=True, exist_ok=True)
    parts = [f"<!-- made by `capo online`; experiment directory {root} -->",
             "# Offline vs online training (issue #13)", "",
             f"Equal budget per run: {cfg.n} generated images per training prompt ({cfg.train_limit or 'all'} prompts "
             f"of {cfg.train_prompts}) and {cfg.steps} optimizer steps of {cfg.batch_size} pairs, split evenly over R "
             f"rounds (R = 1: offline, the paper's setting). Round r > 1 samples round r-1's checkpoint, calibrates "
             f"{'against the base model' if cfg.calibration == 'reference' else 'within its own samples (Eq. 7)'}'s "
             f"samples and trains on FRS pairs from there; the KL reference is "
             f"{'the base model' if cfg.reference == 'base' else 'the previous round'}. beta is selected per "
             f"(objective, R) on {cfg.val_limit or 'all'} validation prompts by the mean win-rate over the rewards "
             f"(never the gold); training seeds {cfg.seeds}. DPO uses the same pairs and ignores the calibrated "
             "target, so CaPO online vs DPO online says what the calibrated target adds.", ""]
    paths = []
    for base in cfg.bases:
        b = root / base_dir(base)
        parts.append(base_markdown(cfg, b, base))
        png = reports / f"online_{base_dir(base)}.png"
        rounds_plot(cfg, b, png, base)
        parts += [f"![gold win-rate against divergence along the rounds, {base}]({png.name})", ""]
        paths.append(png)
    md = reports / "online.md"
    artifacts.write_text(md, "\n".join(parts))
    return [md, *paths]


def rounds_plot(cfg, b: Path, path: Path, base: str) -> None:
    """Gold (or first reward) win-rate against divergence, one line per (objective, R) from the
    base through its rounds; means over training seeds with two-level CIs."""
    plt = _plt()
    ev = Evidence(b / "eval")
    metric_reward = cfg.gold if cfg.gold and cfg.gold in ev.res.get("rewards", []) else cfg.rewards[0]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    styles = {1: "o-", 2: "s--", 3: "^:"}
    for o in cfg.objectives:
        for R in sorted(cfg.rounds):
            cells = [run_label(o, R, r) for r in range(1, R + 1)]
            if not all(ev.has(c) for c in cells):
                continue
            win = ev.stats(cells, ("win", metric_reward)).arms
            div = divergence_stats(ev, cells)
            x = [0.0] + [div[c]["mean"] for c in cells]
            y = [50.0] + [win[c]["mean"] for c in cells]
            yerr = np.array([[0.0] + [win[c]["mean"] - win[c]["ci_low"] for c in cells],
                             [0.0] + [win[c]["ci_high"] - win[c]["mean"] for c in cells]])
            ax.errorbar(x, y, yerr=yerr, fmt=styles.get(R, "d-."), color=COLORS.get(o, "k"), capsize=2, ms=4,
                        label=f"{o} {'offline' if R == 1 else f'R={R}'}")
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel("divergence from the base (test images)")
    ax.set_ylabel(f"{'gold' if metric_reward == cfg.gold else metric_reward} win-rate over base (%)")
    ax.legend(fontsize=7)
    _save(fig, path, title=f"{base}: offline vs online, per round")
