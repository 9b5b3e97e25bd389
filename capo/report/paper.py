"""The paper's numbers (its Tables 1-5) and their markdown, printed beside capo's."""

from __future__ import annotations

from capo.report.render import Table, cell, to_markdown
from capo.vocabulary import MULTI_REWARD, OBJECTIVES, obj_name


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


def paper_table(n: int, base: str) -> str:
    """The paper's own numbers for table ``n`` and base model name (SDXL / SD3-M); bold: the
    highest of a column, as the paper prints it (the paper gives no intervals)."""
    P = PAPER[f"table{n}"]
    if n == 1:
        header = ["Objective"] + [f"{t}→{e}" for t in ("MPS", "VQA", "VILA") for e in ("MPS", "VQA", "VILA")]
        rows = [(obj_name(o), P[base][o]) for o in OBJECTIVES]
    elif n == 2:
        header = ["Method"] + [f"{r} {k}" for r in ("MPS", "VQA", "VILA") for k in ("Win (%)", "Score")]
        rows = [(f"{o}-{s}", P[base][f"{o}-{s}"]) for o in OBJECTIVES for s in MULTI_REWARD]
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
