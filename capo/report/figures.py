"""Figures for the reports: win-rate bars with CIs, the reward-space Pareto plot of Table 2's
methods, a qualitative grid base vs DPO vs CaPO (the paper's Figures 3-4), and, from the
``beta`` sweeps, the win-rate / divergence frontiers and the over-optimisation curves
(``frontier_plots``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from capo.report import frontier
from capo.report.evidence import Evidence
from capo.samples import image_folders
from capo.vocabulary import label, MULTI_REWARD, obj_name, OBJECTIVES

COLORS = {"dpo": "tab:blue", "ipo": "tab:orange", "capo": "tab:green"}  # one colour per objective


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str = "") -> None:
    """Title (if any), tight layout, a 120-dpi PNG at ``path``, and the figure closed."""
    plt = _plt()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cells(ev) -> list[str]:
    return [label(o, s) for o in OBJECTIVES for s in MULTI_REWARD if ev.has(label(o, s))]


def winrate_bars(ev, rewards: list[str], names: dict[str, str], path: Path) -> None:
    """Table 2's cells: win-rate over the base per reward, mean over training seeds with the
    two-level 95% CI (``capo.report.evidence.Evidence``)."""
    plt = _plt()
    labels = _cells(ev)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.6))
    width = 0.8 / max(1, len(rewards))
    for j, r in enumerate(rewards):
        st = ev.stats(labels, ("win", r)).arms if labels else {}
        v = np.array([st[lab]["mean"] for lab in labels])
        err = np.array([[st[lab]["mean"] - st[lab]["ci_low"] for lab in labels],
                        [st[lab]["ci_high"] - st[lab]["mean"] for lab in labels]]).reshape(2, len(labels))
        ax.bar(np.arange(len(labels)) + (j - (len(rewards) - 1) / 2) * width, v, width, yerr=err, capsize=2,
               label=names.get(r, r))
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("win-rate over base (%)")
    ax.legend(fontsize=7, ncol=len(rewards))
    _save(fig, path)


def pareto_plot(ev, rx: str, ry: str, names: dict[str, str], path: Path) -> None:
    """Table 2's cells in reward space: mean scores (over seeds) against the base's."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    base = ev.frame(ev.base)
    ax.scatter([base[rx].mean()], [base[ry].mean()], c="k", marker="x", label="base")
    markers = {"sum": "o", "soup": "s", "frs": "*"}
    labels = _cells(ev)
    sx = ev.stats(labels, ("score", rx)).arms if labels else {}
    sy = ev.stats(labels, ("score", ry)).arms if labels else {}
    for lab in labels:
        o, s = lab.split("-", 1)
        ax.scatter([sx[lab]["mean"]], [sy[lab]["mean"]], c=COLORS[o], marker=markers[s], s=60 if s == "frs" else 30,
                   label=f"{o.upper() if o != 'capo' else 'CaPO'}-{s.upper()}")
    ax.set_xlabel(f"mean {names.get(rx, rx)}")
    ax.set_ylabel(f"mean {names.get(ry, ry)}")
    ax.legend(fontsize=6, ncol=2)
    _save(fig, path)


def qualitative_grid(eval_dir: Path, labels: list[str], path: Path, n_prompts: int = 6) -> None:
    """Rows: models; columns: the first prompts, image 0 (same seed in every row)."""
    from PIL import Image, ImageDraw

    sets = sorted(p for p in (eval_dir / "samples").iterdir() if p.is_dir())
    if not sets:
        return
    d = sets[0]
    labels = [lab for lab in labels if (d / lab).is_dir()]
    every = [json.loads(x) for x in (d / labels[0] / "prompts.jsonl").read_text().splitlines()]
    folders = image_folders(every)  # as generate names them (upstream's line numbers where the set has them)
    prompts = every[:n_prompts]
    cell, pad, head = 96, 4, 14
    W = 90 + len(prompts) * (cell + pad)
    H = head * 2 + len(labels) * (cell + pad)
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    for i, p in enumerate(prompts):
        draw.text((90 + i * (cell + pad), 2), p["prompt"][:18], fill="black")
        draw.text((90 + i * (cell + pad), 2 + head), p["prompt"][18:36], fill="black")
    for r, lab in enumerate(labels):
        y = head * 2 + r * (cell + pad)
        draw.text((2, y + cell // 2), lab, fill="black")
        for i, p in enumerate(prompts):
            img = Image.open(d / lab / "images" / folders[i] / "samples" / "0000.png").convert("RGB")
            canvas.paste(img.resize((cell, cell), Image.NEAREST), (90 + i * (cell + pad), y))
    canvas.save(path)


def load_sweeps(base_dir: Path) -> dict[str, dict]:
    """Cell name -> its ``sweep.json`` for every ``base_dir/sweep/<cell>/sweep.json``."""
    return {f.parent.name: json.loads(f.read_text()) for f in sorted(Path(base_dir).glob("sweep/*/sweep.json"))}


def _log_x(ax, xs: list[float]) -> None:
    """Log x axis when the divergences are positive and span more than a decade and a half."""
    from matplotlib.ticker import MaxNLocator

    xs = [x for x in xs if np.isfinite(x)]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    else:  # few ticks, scientific notation for small divergences, so the labels do not collide
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))


def _legend(axes) -> None:
    """One legend in the first panel for the curves of every panel (each label once)."""
    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        axes[0].legend(list(seen.values()), list(seen), fontsize=6, ncol=2, handlelength=2.6)


def _draw_path(ax, x, y, rows, color, ls, lab, yerr=None) -> None:
    """One sweep's points as a line with hollow markers, the selected point filled."""
    ax.plot(x, y, color=color, ls=ls, lw=1.2, marker="o", ms=3.5, mfc="none", label=lab)
    if yerr is not None and np.isfinite(yerr).all():
        ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor=color, elinewidth=0.6, alpha=0.35)
    for xi, yi, r in zip(x, y, rows):
        if r["selected"]:
            ax.plot([xi], [yi], color=color, marker="o", ms=7, mec="k", mew=0.6, ls="none")


def frontier_plot(sweeps: dict[str, dict], rewards: list[str], names: dict[str, str], path: Path,
                  title: str = "", cells: list[tuple] | None = None) -> bool:
    """One panel per reward in ``rewards`` (``capo.report.frontier.MEAN`` allowed): x = validation
    divergence from the base, y = validation win-rate over the base (%), one curve per cell,
    ordered by divergence, with the win-rate CIs as faint error bars and the selected ``beta``
    filled. ``cells``: (sweep key, legend, colour, line style) each; default every
    ``<objective>-frs`` (solid) and ``<objective>-sum`` (dashed) cell of ``sweeps``. False
    (nothing written) when there is no such cell or no reward."""
    plt = _plt()
    if cells is None:
        cells = [(label(o, sel), f"{obj_name(o)}-{sel.upper()}", COLORS[o], ls) for o in OBJECTIVES
                 for sel, ls in (("frs", "-"), ("sum", "--")) if label(o, sel) in sweeps]
    cells = [c for c in cells if c[0] in sweeps]
    if not cells or not rewards:
        return False
    fig, axes = plt.subplots(1, len(rewards), figsize=(max(4.5, 3.3 * len(rewards)), 3.3), squeeze=False)
    for ax, r in zip(axes[0], rewards):
        xs = []
        for key, legend, color, ls in cells:
            sw = sweeps[key]
            try:
                rows = frontier.points(sw, r)
            except KeyError:
                continue
            rows = [p for p in rows if np.isfinite(p["divergence"]) and np.isfinite(p["win_rate"])]
            rows.sort(key=lambda p: p["divergence"])
            if not rows:
                continue
            x = np.array([p["divergence"] for p in rows])
            y = np.array([p["win_rate"] for p in rows])
            err = np.array([[p["win_rate"] - p["ci_low"] for p in rows], [p["ci_high"] - p["win_rate"] for p in rows]])
            _draw_path(ax, x, y, rows, color, ls, legend, err)
            xs += list(x)
        ax.axhline(50, color="k", lw=0.8, ls=":")
        _log_x(ax, xs)
        ax.set_title(names.get(r, "mean of the criterion rewards" if r == frontier.MEAN else r), fontsize=9)
        ax.set_xlabel("validation divergence from base", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("validation win-rate over base (%)", fontsize=8)
    _legend(axes[0])
    _save(fig, path, title)
    return True


def overopt_plot(sweeps: dict[str, dict], gold: str, names: dict[str, str], path: Path, title: str = "") -> bool:
    """Over-optimisation: one panel per trained reward ``r`` of the single-reward cells
    ``<objective>-single-<r>``; x = validation win-rate under ``r``, y = under ``gold``, one
    curve per objective through its ``beta`` grid (in ``beta`` order, the smallest and
    largest ``beta`` written beside their points), the selected ``beta`` filled. False
    (nothing written) when there is no single-reward cell that measured ``gold``."""
    plt = _plt()
    trained: dict[str, dict[str, dict]] = {}  # reward -> objective -> sweep
    for cell, sw in sweeps.items():
        o, sep, r = cell.partition("-single-")
        if sep and o in OBJECTIVES and r:
            trained.setdefault(r, {})[o] = sw
    order = list(dict.fromkeys([r for sw in sweeps.values() for r in sw.get("criterion_rewards") or []]))
    panels = [r for r in order if r in trained] + sorted(r for r in trained if r not in order)
    data = {}
    for r in panels:
        for o, sw in trained[r].items():
            try:
                px, py = frontier.points(sw, r), frontier.points(sw, gold)
            except KeyError:
                continue
            rows = [(a, b) for a, b in zip(px, py) if np.isfinite(a["win_rate"]) and np.isfinite(b["win_rate"])]
            if rows:
                data[(r, o)] = rows
    panels = [r for r in panels if any((r, o) in data for o in OBJECTIVES)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 3.3 * len(panels)), 3.3), squeeze=False)
    for ax, r in zip(axes[0], panels):
        for o in OBJECTIVES:
            rows = data.get((r, o))
            if not rows:
                continue
            x = np.array([a["win_rate"] for a, _ in rows])
            y = np.array([b["win_rate"] for _, b in rows])
            _draw_path(ax, x, y, [a for a, _ in rows], COLORS[o], "-", obj_name(o))
            for j in {0, len(rows) - 1}:
                ax.annotate(f"\u03b2={rows[j][0]['beta']:g}", (x[j], y[j]), fontsize=5, color=COLORS[o],
                            xytext=(3, 3), textcoords="offset points")
        ax.axline((50, 50), slope=1, color="0.6", lw=0.7, ls="--", zorder=0)  # gold gains = trained gains
        ax.axhline(50, color="k", lw=0.8, ls=":")
        ax.axvline(50, color="k", lw=0.8, ls=":")
        ax.set_title(f"trained on {names.get(r, r)}", fontsize=9)
        ax.set_xlabel(f"{names.get(r, r)} win-rate over base (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"{names.get(gold, gold)} win-rate over base (%)", fontsize=8)
    _legend(axes[0])
    _save(fig, path, title)
    return True


def frontier_plots(base_dir: Path, reports: Path, names: dict[str, str]) -> list[Path]:
    """From the sweeps of one base model directory (``base_dir/sweep/<cell>/sweep.json``),
    write ``reports/frontier_<base>.png`` (``frontier_plot``: panels for the criterion
    rewards, the report-only rewards such as the gold, and their mean) and
    ``reports/overopt_<base>.png`` (``overopt_plot`` against the first report-only reward).
    Returns the files written: none when the directory has no sweeps, and each figure only
    when its cells exist."""
    base_dir, reports = Path(base_dir), Path(reports)
    sweeps = load_sweeps(base_dir)
    if not sweeps:
        return []
    reports.mkdir(parents=True, exist_ok=True)
    base = base_dir.name
    crit = list(dict.fromkeys(r for sw in sweeps.values() for r in sw.get("criterion_rewards") or []))
    report = list(dict.fromkeys(r for sw in sweeps.values() for r in sw.get("report_rewards") or []))
    written = []
    p = reports / f"frontier_{base}.png"
    if frontier_plot(sweeps, crit + report + ([frontier.MEAN] if crit else []), names, p,
                     title=f"{base}: validation win-rate vs divergence along the beta grid"):
        written.append(p)
    p = reports / f"overopt_{base}.png"
    if report and overopt_plot(sweeps, report[0], names, p,
                               title=f"{base}: over-optimisation of single-reward cells"):
        written.append(p)
    return written


def write_all(root: Path, reports: Path, roles: dict[str, str], gold: str | None = None) -> list[Path]:
    written = []
    names = dict(roles)
    if gold:
        names[gold] = f"gold ({gold})"
    for res_path in sorted(root.glob("*/eval/results.json")):
        base = res_path.parent.parent.name
        ev = Evidence(res_path.parent)
        rewards = [r for r in list(roles) + ([gold] if gold else []) if r in ev.res["rewards"]]
        p = reports / f"winrate_{base}.png"
        winrate_bars(ev, rewards, names, p)
        written.append(p)
        rs = list(roles)
        if len(rs) >= 2:
            p = reports / f"pareto_{base}.png"
            pareto_plot(ev, rs[0], rs[1], names, p)
            written.append(p)
        p = reports / f"grid_{base}.png"
        first = {c: ev.seeds[c][min(ev.seeds[c])] for c in ("dpo-frs", "capo-frs") if ev.has(c)}  # first seed's model
        qualitative_grid(res_path.parent, ["base", *first.values()], p)
        written.append(p)
    for base_dir in sorted({f.parents[2] for f in root.glob("*/sweep/*/sweep.json")}):
        written += frontier_plots(base_dir, reports, names)
    return written
