"""Synthetic worlds: small, fully known text-to-image settings in which every part of
the CaPO pipeline (base models, rewards, preference data, evaluation) can be run and
checked end to end on modest hardware. ``shapes`` is the embedded compositional world."""
