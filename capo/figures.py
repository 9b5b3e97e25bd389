"""Figures for the reports: win-rate bars with CIs, the reward-space Pareto plot of Table 2's
methods, and a qualitative grid base vs DPO vs CaPO (the paper's Figures 3-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from capo.tables import OBJECTIVES, SELECTORS, label


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def winrate_bars(res: dict, rewards: list[str], names: dict[str, str], path: Path) -> None:
    plt = _plt()
    labels = [label(o, s) for o in OBJECTIVES for s in SELECTORS if label(o, s) in res["results"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.6))
    width = 0.8 / max(1, len(rewards))
    for j, r in enumerate(rewards):
        w = [res["results"][lab]["winrate"][r] for lab in labels]
        v = np.array([x["win_rate"] for x in w])
        err = np.array([[x["win_rate"] - x["ci_low"] for x in w], [x["ci_high"] - x["win_rate"] for x in w]])
        ax.bar(np.arange(len(labels)) + (j - (len(rewards) - 1) / 2) * width, v, width, yerr=err, capsize=2,
               label=names.get(r, r))
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("win-rate over base (%)")
    ax.legend(fontsize=7, ncol=len(rewards))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_plot(res: dict, rx: str, ry: str, names: dict[str, str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    base = res["results"][res["base"]]["winrate"]
    ax.scatter([base[rx]["mean_b"]], [base[ry]["mean_b"]], c="k", marker="x", label="base")
    markers = {"sum": "o", "soup": "s", "frs": "*"}
    colors = {"dpo": "tab:blue", "ipo": "tab:orange", "capo": "tab:green"}
    for o in OBJECTIVES:
        for s in SELECTORS:
            w = res["results"].get(label(o, s), {}).get("winrate")
            if w:
                ax.scatter([w[rx]["score"]], [w[ry]["score"]], c=colors[o], marker=markers[s], s=60 if s == "frs" else 30,
                           label=f"{o.upper() if o != 'capo' else 'CaPO'}-{s.upper()}")
    ax.set_xlabel(f"mean {names.get(rx, rx)}")
    ax.set_ylabel(f"mean {names.get(ry, ry)}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def qualitative_grid(eval_dir: Path, labels: list[str], path: Path, n_prompts: int = 6) -> None:
    """Rows: models; columns: the first prompts, image 0 (same seed in every row)."""
    from PIL import Image, ImageDraw

    sets = sorted(p for p in (eval_dir / "samples").iterdir() if p.is_dir())
    if not sets:
        return
    d = sets[0]
    labels = [lab for lab in labels if (d / lab).is_dir()]
    prompts = [json.loads(x) for x in (d / labels[0] / "prompts.jsonl").read_text().splitlines()][:n_prompts]
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
            img = Image.open(d / lab / "images" / f"{p['prompt_idx']:05d}" / "samples" / "0000.png").convert("RGB")
            canvas.paste(img.resize((cell, cell), Image.NEAREST), (90 + i * (cell + pad), y))
    canvas.save(path)


def write_all(root: Path, reports: Path, roles: dict[str, str], gold: str | None = None) -> list[Path]:
    written = []
    names = dict(roles)
    if gold:
        names[gold] = f"gold ({gold})"
    for res_path in sorted(root.glob("*/eval/results.json")):
        base = res_path.parent.parent.name
        res = json.loads(res_path.read_text())
        rewards = [r for r in list(roles) + ([gold] if gold else []) if r in res["rewards"]]
        p = reports / f"winrate_{base}.png"
        winrate_bars(res, rewards, names, p)
        written.append(p)
        rs = list(roles)
        if len(rs) >= 2:
            p = reports / f"pareto_{base}.png"
            pareto_plot(res, rs[0], rs[1], names, p)
            written.append(p)
        p = reports / f"grid_{base}.png"
        qualitative_grid(res_path.parent, ["base", "dpo-frs", "capo-frs"], p)
        written.append(p)
    return written
