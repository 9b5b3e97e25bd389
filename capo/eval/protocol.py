"""The protocol card: what a benchmark or reward number was measured with.

A GenEval or T2I-CompBench figure means something only with its protocol: the detector and its
version, the CLIP architecture, weights and activation, the VQA model, the prompt file, split
and subset, images per prompt, seeds, precision, and whether each category is scored as
upstream's own code scores it (``exact``) or by a named variant. ``capo eval`` writes one card
per evaluation into ``results.json`` (``protocol``); ``capo compare`` and ``capo tables`` print it,
and ``differences`` names what two cards disagree on, so that two results measured differently
are never set side by side without saying so.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping
from capo import openclip
from capo.eval import dpg_bench as D, geneval as G, t2i_compbench as T
from capo.rewards import PARITY

# the parts of a card that make two figures comparable (run-specific fingerprints of the models
# compared are not among them: comparing models is the point)
COMPARED = ("images_per_prompt", "seed", "prompt_sets", "geneval", "compbench", "dpg", "winrate")


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", None)
    except Exception:  # noqa: BLE001 - absent or broken optional package
        return None


def geneval_part(detector: str, device: str | None = None) -> dict:
    """GenEval's detector, colour classifier, thresholds and exactness for ``detector``."""
    if detector == "shapes":
        det = {"name": "shapes", "model": "the shapes world's template-fitting evaluator", "version": _version("capo")}
        status = "shapes-world analogue: GenEval's rules on the shapes world's own detector (not a GenEval number)"
        exact, colour = False, {"source": "the shapes world's renderer colours"}
    else:
        if detector == "mmdet":
            det = {"name": "mmdet", "model": G.UPSTREAM_MMDET_MODEL, "version": _version("mmdet")}
            exact = True
            status = "upstream-exact: upstream's mmdet Mask2Former Swin-S checkpoint and rules"
        else:
            det = {"name": detector, "model": G.DEFAULT_MASK2FORMER if detector == "mask2former" else None,
                   "version": _version("transformers")}
            exact = False
            status = (f"variant: detector {detector!r} in place of upstream's mmdet Mask2Former checkpoint "
                      "(rules, thresholds and colour step as upstream)")
        device = device or _default_device()
        colour = {"arch": G.COLOR_CLIP_ARCH, "weights": "openai",
                  "activation": "quick_gelu" if openclip.trained_with_quick_gelu(G.COLOR_CLIP_ARCH, "openai") else "gelu",
                  "precision": G.color_precision("auto", device), "background": G.COLOR_CROP_BACKGROUND,
                  "templates": list(G.COLOR_TEMPLATES), "open_clip": _version("open_clip")}
    return {"detector": det, "color_classifier": colour, "exact": exact, "status": status,
            "thresholds": {"threshold": G.THRESHOLD, "counting_threshold": G.COUNTING_THRESHOLD,
                           "max_objects": G.MAX_OBJECTS, "max_overlap": G.NMS_THRESHOLD,
                           "position_threshold": G.POSITION_THRESHOLD, "compared_in": "float32"},
            "upstream": "djghosh13/geneval @ af4902f evaluation/evaluate_images.py, summary_scores.py"}


def compbench_part(categories: list[str], shapes: bool, ran: Mapping[str, dict] | None = None) -> dict:
    """Per category: metric, model, detector, parser and ``exact`` (with the ``variant`` reason):
    the protocol entry of the scorer that ran (``capo.eval.t2i_compbench.protocol_entry``), else
    the category's upstream protocol."""
    if shapes:
        return {c: {"metric": "shapes-world analogue", "exact": False,
                    "status": "the shapes world's evaluator (not a T2I-CompBench number)"} for c in categories}
    out = {}
    for c in categories:
        entry = dict((ran or {}).get(c) or T.PROTOCOL.get(c) or {"exact": False})
        entry.setdefault("status", entry.get("variant") or ("upstream-exact" if entry.get("exact") else "variant"))
        if entry.get("variant"):
            entry["status"] = "variant: " + entry["variant"]
        out[c] = entry
    return out


def dpg_part(vqa: str, questions: str | None) -> dict:
    info = D.PROTOCOL.get("vqa", {}).get(vqa, {}) if isinstance(D.PROTOCOL.get("vqa"), dict) else {}
    return {"vqa": vqa, "model": D.MPLUG_MODEL if vqa == "mplug" else D.BLIP_VQA_MODEL,
            "exact": vqa == "mplug" and questions is None, "pic_num": D.PIC_NUM,
            "questions": questions or f"dpg_bench.csv (git blob {D.DPG_CSV_GIT_BLOB[:12]})",
            "status": info.get("status") if isinstance(info, dict) and info.get("status") else (
                "upstream-exact: mPLUG-large through modelscope" if vqa == "mplug" else
                f"variant: VQA {vqa!r} in place of upstream's mPLUG-large (not comparable with published scores)")}


def winrate_part(rewards: list[str]) -> dict:
    """Per reward: whether its whole path equals upstream's (``capo.rewards.PARITY``, where the
    reward module states it), else what it is."""
    return {r: dict(PARITY.get(r, {"exact": r.startswith("shapes-") or r.startswith("toy-"),
                                   "status": "capo's own reward" if r.startswith(("shapes-", "toy-")) else
                                   "no parity statement"})) for r in rewards}


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def prompt_set_part(name: str, records: list[dict], fingerprint: str, limit: int | None, subset_seed: int) -> dict:
    base, _, split = name.partition("@")
    return {"name": base, "split": split or None, "prompts": len(records), "sha256": fingerprint,
            "subset": {"limit": limit, "stratified": True, "subset_seed": subset_seed} if limit else None}


def render(card: Mapping[str, Any]) -> str:
    """The card as a few markdown lines (what a table or `capo compare` prints under itself)."""
    lines = ["Protocol:"]
    src = card.get("source", "models")
    lines.append(f"- {card.get('images_per_prompt')} images per prompt, seed {card.get('seed')}, from {src}; "
                 f"capo {card.get('capo')} ({str(card.get('git') or '')[:10]})")
    for name, ps in (card.get("prompt_sets") or {}).items():
        sub = ps.get("subset")
        lines.append(f"- prompts {name}: {ps['prompts']} prompts, sha256 {str(ps['sha256'])[:12]}"
                     + (f", split {ps['split']}" if ps.get("split") else "")
                     + (f", stratified subset of {sub['limit']} (seed {sub['subset_seed']})" if sub else ""))
    g = card.get("geneval")
    if g:
        d, c = g["detector"], g["color_classifier"]
        colour = (f"colour {c['arch']}/{c['weights']} {c['activation']} {c['precision']}" if "arch" in c
                  else f"colour from {c.get('source')}")
        lines.append(f"- GenEval: detector {d['name']} ({d.get('model')}, {d.get('version')}); {colour}; {g['status']}")
    for cat, e in (card.get("compbench") or {}).items():
        lines.append(f"- T2I-CompBench {cat}: {e.get('metric', '')} {e.get('model') or ''} "
                     f"{'upstream-exact' if e.get('exact') else 'variant'}"
                     + (f": {e['status']}" if e.get("status") else ""))
    dp = card.get("dpg")
    if dp:
        lines.append(f"- DPG-Bench: VQA {dp['vqa']} ({dp['model']}), {dp['pic_num']} tiles; {dp['status']}")
    for r, e in (card.get("winrate") or {}).items():
        lines.append(f"- reward {r}: {'upstream-exact' if e.get('exact') else 'not checked against upstream'}"
                     + (f" ({e['status']})" if e.get("status") else ""))
    return "\n".join(lines)


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What two cards disagree on, one line per differing part (empty: comparable)."""
    out = []
    for key in COMPARED:
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            for k in sorted(set(va) | set(vb)):
                if va.get(k) != vb.get(k):
                    out.append(f"{key}.{k}: {_short(va.get(k))} vs {_short(vb.get(k))}")
        else:
            out.append(f"{key}: {_short(va)} vs {_short(vb)}")
    return out


def _short(v: Any, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."
