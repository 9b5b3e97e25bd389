"""The shapes world: a compositional toy text-to-image setting at 32x32 RGB.

1-4 simple objects (circle, square, triangle, diamond; six colours; solid, striped or
dotted; small or large) on a light-grey background. ``scene`` holds the vocabulary,
``render`` draws scenes, ``grammar`` writes GenEval- and T2I-CompBench-style prompts and
scenes that satisfy them, ``evaluator`` detects objects and scores images by the
benchmarks' rules, ``truth`` is the hidden human preference (alignment + aesthetic,
Bradley-Terry choices). ``models``, ``pipeline`` and ``pretrain`` build and train the
world's base text-to-image models.
"""

from .evaluator import compbench_position, detect, detect_batch, relative_position, score_compbench, score_geneval
from .grammar import (COMPBENCH_CATEGORIES, GENEVAL_TAGS, MAX_PROMPT_WORDS, RELATIONS, TAGS, VOCAB, describe,
                      prompt_sets, random_scene, sample_record, sample_scene, sample_training_pair, tokenize_words)
from .render import render, render_batch
from .scene import BACKGROUND, COLORS, SHAPES, SIZES, TEXTURES, Obj, Scene
from .truth import (aesthetic, alignment, preference_probability, simulate_choice, simulate_choices, utility,
                    utility_batch)

__all__ = [
    "BACKGROUND", "COLORS", "SHAPES", "SIZES", "TEXTURES", "Obj", "Scene",
    "render", "render_batch",
    "COMPBENCH_CATEGORIES", "GENEVAL_TAGS", "MAX_PROMPT_WORDS", "RELATIONS", "TAGS", "VOCAB", "describe",
    "prompt_sets", "random_scene", "sample_record", "sample_scene", "sample_training_pair", "tokenize_words",
    "compbench_position", "detect", "detect_batch", "relative_position", "score_compbench", "score_geneval",
    "aesthetic", "alignment", "preference_probability", "simulate_choice", "simulate_choices", "utility",
    "utility_batch",
]
