"""Evaluation: benchmark prompt sets, GenEval, T2I-CompBench, win-rates with bootstrap CIs.

* ``prompts``        prompt sets by name (``geneval``, ``t2i-compbench:<category>``, ``parti``,
                     ``dpg-bench``), pinned upstream commits, sha256-checked, cached, offline-aware
* ``geneval``        GenEval's rules (djghosh13/geneval ``evaluation/evaluate_images.py``) as pure
                     functions of detections; detector backends (``mask2former``, ``mmdet``) in a
                     registry; the CLIP colour classifier
* ``t2i_compbench``  T2I-CompBench's BLIP-VQA, 2D-spatial, CLIPScore and 3-in-1 rules and scorers
* ``winrate``        win-rate (%) and paired metric deltas with prompt-level bootstrap CIs
* ``stats``          means over training seeds with CIs over prompts AND seeds (two-level
                     bootstrap), paired contrasts between methods, verdicts, decisive bold
* ``divergence``     how far a model moved from its base: the reverse-process KL term on its
                     own samples (``capo.method.divergence``) and ``||theta - theta_ref||``

Importing this package is cheap: torch, transformers, open_clip and spaCy are imported only
inside the factories that need them.
"""

from capo.eval.geneval import (
    DETECTORS,
    Detector,
    clip_color_classifier,
    evaluate_image,
    get_detector,
    register_detector,
)
from capo.eval.geneval import summarize as summarize_geneval
from capo.eval.prompts import PROMPT_SETS, get_prompt_set, list_prompt_sets, load_metadata, load_prompt_set
from capo.eval.t2i_compbench import summarize as summarize_t2i_compbench
from capo.eval.stats import best_beyond_ci, bootstrap_contrasts, two_level_bootstrap, verdict
from capo.eval.winrate import bootstrap_delta, bootstrap_mean, win_rate

__all__ = [
    "DETECTORS", "Detector", "clip_color_classifier", "evaluate_image", "get_detector", "load_metadata",
    "register_detector", "summarize_geneval", "PROMPT_SETS", "get_prompt_set", "list_prompt_sets",
    "load_prompt_set", "summarize_t2i_compbench", "bootstrap_delta", "bootstrap_mean", "win_rate",
    "best_beyond_ci", "bootstrap_contrasts", "two_level_bootstrap", "verdict",
]
