"""The experiment's vocabulary, defined once: the paper's objectives, pair selectors and
multi-reward methods, the loss weightings of Table 5, and how cells and their trained models
are named. Every layer reads these names from here (the method's functions, the registries,
the stages, the tables); nothing here imports anything of capo.

Cells (``label()``): Table 1 ``<obj>-single-<reward>``; Table 2 ``<obj>-<sum|soup|frs>``;
Table 4 ``dpo-human``; Table 5 ``capo-frs-constant`` / ``capo-frs-b<b>``; N ablation
``capo-frs-n<N>``. The model of a cell trained with seed ``s`` is ``<cell>.s<s>``
(``seed_label``); a label without ``.s<seed>`` is seed 0.
"""

from __future__ import annotations

# the paper's preference objectives (Eq. 4, Eq. 8): name -> what it is
OBJECTIVES = {"dpo": "DPO, g(u) = -log sigmoid(u) (Eq. 4)",
              "ipo": "IPO, g(u) = (1 - u)^2 (Eq. 4)",
              "capo": "CaPO, (gap R_ca - u)^2 (Eq. 8)"}
BASELINES = {"grpo": "GRPO baseline: online rollouts, clipped ratio on group-relative advantages + beta KL "
                     "(capo.stages.grpo)"}  # objectives beyond the paper (issue #22)

# pair selectors of `capo pairs` (Sec. 4.3): name -> what it is
PAIR_SELECTORS = {"best-worst": "best-of-N vs worst-of-N on one reward (Sec. 4.3)",
                  "sum": "best/worst of the weighted sum of calibrated rewards",
                  "frs": "frontier-based rejection sampling on Pareto sets (Sec. 4.3)"}

MULTI_REWARD = ("sum", "soup", "frs")  # Table 2's ways to train on several rewards (soup: merged models)
WEIGHTINGS = ("constant", "b1.0", "b1.5", "b2.0")  # Table 5's loss weightings (sigmoid biases b)


def label(objective: str, selection: str, reward: str | None = None) -> str:
    """The cell of an objective trained on one reward's pairs (``selection="single"``) or on a
    multi-reward selection: ``capo-single-shapes-pref``, ``capo-frs``."""
    return f"{objective}-single-{reward}" if selection == "single" else f"{objective}-{selection}"


def obj_name(o: str) -> str:
    """How tables print an objective: ``CaPO``, ``DPO``, ``IPO``."""
    return "CaPO" if o == "capo" else o.upper()


def seed_label(cell: str, seed: int) -> str:
    """The evaluated model of ``cell`` trained with ``seed``: ``capo-frs.s1`` (``split_label``'s inverse)."""
    return f"{cell}.s{seed}"


def split_label(lab: str) -> tuple[str, int]:
    """``capo-frs.s1`` -> ``("capo-frs", 1)``; a label without a seed is seed 0."""
    cell, sep, s = lab.rpartition(".s")
    return (cell, int(s)) if sep and s.isdigit() else (lab, 0)


def bias_name(b: float) -> str:
    """Table 5's row name of a sigmoid bias: 1 -> "b1.0", 1.5 -> "b1.5", 1.25 -> "b1.25"."""
    s = f"{b:g}"
    return "b" + (s if "." in s or "e" in s else s + ".0")
