"""Small registries: name -> entry, with lazy entries and helpful unknown-name errors.

An entry is either an object or a ``"module:attr"`` string imported on first use, so
registering heavy factories (diffusers pipelines, CLIP rewards) costs nothing until a
name is asked for, and ``capo --help`` stays fast.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the known names and the nearest ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, entry: Any = None, doc: str = ""):
        """``reg.register("x", obj)``, ``reg.register("x", "pkg.mod:attr")`` or as a decorator."""
        if entry is None:
            def deco(obj):
                self.register(name, obj, doc or (obj.__doc__ or "").strip().split("\n")[0])
                return obj
            return deco
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        self._docs[name] = doc
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        return self._docs.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            near = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry


SELECTORS = Registry("selector")
SELECTORS.register("best-worst", "capo.method.selection:best_worst", "best-of-N vs worst-of-N on one reward (Sec. 4.3)")
SELECTORS.register("sum", "capo.method.selection:best_worst", "best/worst of the weighted sum of calibrated rewards")
SELECTORS.register("frs", "capo.method.selection:frs", "frontier-based rejection sampling on Pareto sets (Sec. 4.3)")

OBJECTIVES = Registry("objective")
OBJECTIVES.register("dpo", "capo.method.objectives:dpo_loss", "DPO, g(u) = -log sigmoid(u) (Eq. 4)")
OBJECTIVES.register("ipo", "capo.method.objectives:ipo_loss", "IPO, g(u) = (1 - u)^2 (Eq. 4)")
OBJECTIVES.register("capo", "capo.method.objectives:capo_loss", "CaPO, (gap R_ca - u)^2 (Eq. 8)")
OBJECTIVES.register("grpo", "capo.method.grpo:grpo_loss",
                   "GRPO baseline: online rollouts, clipped ratio on group-relative advantages + beta KL (capo.stages.grpo)")

TRANSFORMS = Registry("BT transform")
TRANSFORMS.register("identity", "capo.method.calibration:bt_transform", "BT-trained logit rewards")
TRANSFORMS.register("logit", "capo.method.calibration:bt_transform", "probabilities: log(p / (1 - p))")
TRANSFORMS.register("temperature:T", "capo.method.calibration:bt_transform", "bounded scores: R / T")

ALL = {"selectors": SELECTORS, "objectives": OBJECTIVES, "transforms": TRANSFORMS}


def all_registries() -> dict[str, Registry]:
    """Every registry, the model and reward ones included (imported here to avoid cycles)."""
    from capo.models import MODELS
    from capo.rewards import REWARDS

    return {**ALL, "models": MODELS, "rewards": REWARDS}
