"""Evaluation: benchmark prompt sets, GenEval, T2I-CompBench, win-rates with bootstrap CIs.

* ``prompts``        prompt sets by name (``geneval``, ``t2i-compbench:<category>``, ``parti``,
                     ``dpg-bench``), pinned upstream commits, sha256-checked, cached, offline-aware
                     (the data layer: ``capo.prompts`` reads it, so this package imports nothing)
* ``geneval``        GenEval's rules (djghosh13/geneval ``evaluation/evaluate_images.py``) as pure
                     functions of detections; detector backends (``mask2former``, ``mmdet``) in a
                     registry; the CLIP colour classifier
* ``t2i_compbench``  T2I-CompBench's BLIP-VQA, 2D-spatial, CLIPScore and 3-in-1 rules and scorers
* ``winrate``        win-rate (%) and paired metric deltas with prompt-level bootstrap CIs
* ``stats``          means over training seeds with CIs over prompts AND seeds (two-level
                     bootstrap), paired contrasts between methods, verdicts, decisive bold
* ``divergence``     how far a model moved from its base: the reverse-process KL term on its
                     own samples (``capo.method.divergence``) and ``||theta - theta_ref||``

Import the modules themselves (``from capo.eval import geneval``): the package re-exports nothing,
so reading a prompt set never loads the benchmarks. torch, transformers, open_clip and spaCy are
imported only inside the factories that need them.
"""
