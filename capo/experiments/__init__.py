"""Experiments: commands that run the stages (``capo.stages``) as a whole comparison and render
its reports (``capo.report.tables``, ``capo.report.claims``, ``capo.report.figures``): ``reproduce`` (the paper's
Tables 1-5 under the fair-comparison protocol), ``online`` (offline vs online training, and
GRPO vs CaPO in ``online_grpo``), ``power`` (designs that decide a comparison) and ``budget``
(the GPU-hours of a preset). They sit above the reporting layer (ARCHITECTURE.md)."""
