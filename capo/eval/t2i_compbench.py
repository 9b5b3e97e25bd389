"""T2I-CompBench (Huang et al., 2023) and T2I-CompBench++ scoring, replicated from
Karine-Huang/T2I-CompBench @ 1b70949.

Per category (``PROTOCOL`` holds the same table with what is exact and what is a variant):

=========================  ===================  ================================================
category                   metric               upstream
=========================  ===================  ================================================
color, shape, texture      BLIP-VQA             ``BLIPvqa_eval/BLIP_vqa.py`` (+ ``models/blip_vqa.py``)
spatial                    UniDet (2D)          ``UniDet_eval/2D_spatial_eval.py``
non_spatial                CLIPScore            ``CLIPScore_eval/CLIP_similarity.py``
complex                    3-in-1               ``3_in_1_eval/3_in_1.py``
numeracy (++)              UniDet counting      ``UniDet_eval/numeracy_eval.py``
3d_spatial (++)            UniDet + depth       ``UniDet_eval/3D_spatial_eval.py``
=========================  ===================  ================================================

The rules are pure functions tested on hand-made inputs (``blip_vqa_image_score``,
``determine_position``, ``spatial_image_score``, ``numeracy_objects``,
``numeracy_image_score``, ``determine_position_3d``, ``spatial_3d_image_score``,
``three_in_one_score``, ``summarize``); the models sit behind factories
(``capo.eval.detectors``) that import transformers / open_clip lazily. ``category_scorer``
builds the scorer of any category: ``scorer(images, prompts) -> list[float]``.

Text parsing. Upstream parses prompts with spaCy ``en_core_web_sm`` (noun chunks, POS tags,
tokens). spaCy installs from PyPI but its English model does not (it ships as a GitHub release
wheel), so ``get_parser`` takes spaCy when ``en_core_web_sm`` loads and otherwise falls back,
with a warning, to ``RuleParser``: a small lexicon-and-suffix tagger written for this
benchmark's prompts. It agrees with spaCy on the templated prompts ("a green bench and a blue
bowl", "a dog on the left of a cat", "two cats and one dog") and only approximates it on free
sentences (the complex category, the sentence-style tails of color/shape/texture). Every
scorer records which parser it used (``scorer.parser``), and ``protocol_entry`` marks a
category whose parse is approximate as a variant.

Detection. Upstream's UniDet needs detectron2 and weights no package index ships; capo uses it
when supplied (``capo.eval.detectors.unidet_detector``) and otherwise OWLv2, an
open-vocabulary detector asked for exactly the nouns each rule looks for. The rules are
upstream's either way; the detector is a named variant. Boxes are rescaled to upstream's
479-px detector frame before the pixel thresholds apply.

Sample layout (``write_upstream_layout`` / ``read_upstream_layout``): upstream's generator
(``GORS_finetune/inference_eval.py``) writes ``samples/<prompt>_<idx:06d>.png`` with the
prompt verbatim and ``idx`` one running counter over all prompts (10 images per prompt, so
prompt ``i`` owns ``10 i .. 10 i + 9``, which ``3_in_1.py`` relies on); the evaluators
recover the prompt as ``name.split('_')[0]`` and the index as the digits after the last '_'.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from capo.eval.detectors import DEFAULT_DEPTH_MODEL, depth_estimator
from capo.eval.detectors import run_detector, unidet_input_size, UNIDET_SCORE_THRESHOLD
import capo.eval.detectors as D
from capo.eval.geneval import _load_error, get_detector
from capo.eval.geneval import _to_pil_rgb
from capo.eval.prompts import complex_kind
from capo.method.positions import Box, determine_position, DISTANCE_THRESHOLD, IOU_THRESHOLD
from capo.openclip import create

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy", "3d_spatial")
METRIC_OF_CATEGORY = {"color": "blip_vqa", "shape": "blip_vqa", "texture": "blip_vqa",
                      "spatial": "unidet_spatial", "non_spatial": "clip_score", "complex": "3_in_1",
                      "numeracy": "unidet_numeracy", "3d_spatial": "unidet_depth_spatial"}
DETECTOR_CATEGORIES = ("spatial", "numeracy", "3d_spatial", "complex")
IMAGES_PER_PROMPT = 10  # inference_eval.py --n_iter default; 3_in_1.py: num = 10

# --- BLIP-VQA (BLIP_vqa.py, configs/vqa.yaml, models/blip_vqa.py::vqa_prob, data/utils.py)
BLIP_VQA_MODEL = "Salesforce/blip-vqa-capfilt-large"  # HF port of BLIP's model_base_vqa_capfilt_large.pth
BLIP_IMAGE_SIZE = 480          # vqa.yaml image_size
BLIP_MAX_NOUN_PHRASES = 8      # --np_num default
BLIP_QUESTION_MAX_LENGTH = 35  # tokenizer(..., truncation=True, max_length=35)
BLIP_QUESTION_MAX_WORDS = 50   # pre_question(question, max_ques_words=50)
BLIP_DEC_TOKEN_ID = 30522      # '[DEC]', the decoder's bos (vqa_prob start_ids)
BLIP_ENC_TOKEN_ID = 30523      # '[ENC]', replaces [CLS] of the question
BLIP_YES_TOKEN_ID = 2748       # 'yes' in bert-base-uncased
BLIP_NO_TOKEN_ID = 2053        # 'no'
BLIP_DECIMALS = 4              # each answer and the product are written as '{:.4f}'
# Create_annotation_for_BLIP: `if chunk.text not in ['top', 'the side', 'the left', 'the right']`
# (exact, case-sensitive text of the whole chunk: "the top", "The left" or "front" stay).
BLIP_EXCLUDED_CHUNKS = ("top", "the side", "the left", "the right")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# --- CLIPScore (CLIP_similarity.py: clip.load("ViT-B/32"))
CLIP_ARCH = "ViT-B-32"
CLIP_PRETRAINED = "openai"

# --- 2D spatial (2D_spatial_eval.py; experts/model_bank.py; experts/obj_detection/utils.py)
SPATIAL_VOCAB = ("on side of", "next to", "near", "on the left of", "on the right of",
                 "on the bottom of", "on the top of", "on top of")
COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to",
                        "on side of", "near")
PERSON_WORDS = ("girl", "boy", "man", "woman")
SPATIAL_FLOOR = 0.5              # if score < 0.5: score = 0 (2D only)
# Detector classes named differently from the noun a prompt uses (GenEval's COCO names).
DETECTOR_NOUN_ALIASES = {"computer mouse": "mouse", "tv remote": "remote",
                         "computer keyboard": "keyboard"}

# --- 3D spatial (3D_spatial_eval.py)
SPATIAL_3D_VOCAB = ("in front of", "behind", "hidden")
IOU_THRESHOLD_3D = 0.5

# --- numeracy (numeracy_eval.py; examples/dataset/new_objects.txt, "singular - plural" per line)
NUMERACY_NUMBER_WORDS = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight")
NUMERACY_SINGULAR_WORDS = ("a", "an", "one")
NUMBER_VALUES = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}  # w2n
NUMERACY_RENAMES = {"boy": "person", "girl": "person", "man": "person", "woman": "person", "ship": "boat",
                    "telivision": "tv", "goldfish": "fish", "painting": "picture"}  # upstream's spelling
NEW_OBJECTS = (  # new_objects.txt @ 1b70949, in order (duplicates kept: list.index takes the first)
    ("bottle", "bottles"), ("cup", "cups"), ("cake", "cakes"), ("bird", "birds"), ("knife", "knives"),
    ("microwave", "microwaves"), ("desk", "desks"), ("book", "books"), ("helmet", "helmets"),
    ("pillow", "pillows"), ("bowl", "bowls"), ("flag", "flags"), ("stool", "stools"), ("toy", "toys"),
    ("pen", "pens"), ("microphone", "microphones"), ("bread", "breads"), ("fish", "fish"),
    ("camera", "cameras"), ("candle", "candles"), ("paddle", "paddles"), ("drum", "drums"),
    ("guitar", "guitars"), ("tomato", "tomatoes"), ("tent", "tents"), ("kite", "kites"), ("lemon", "lemons"),
    ("strawberry", "strawberries"), ("suitcase", "suitcases"), ("pear", "pears"), ("printer", "printers"),
    ("duck", "ducks"), ("hamburger", "hamburgers"), ("deer", "deer"), ("egg", "eggs"), ("ship", "ships"),
    ("chicken", "chickens"), ("peach", "peaches"), ("helicopter", "helicopters"), ("swan", "swans"),
    ("camel", "camels"), ("goldfish", "goldfish"), ("shrimp", "shrimp"), ("banana", "bananas"),
    ("balloon", "balloons"), ("giraffe", "giraffes"), ("frog", "frogs"), ("horse", "horses"), ("man", "men"),
    ("rabbit", "rabbits"), ("bicycle", "bicycles"), ("bee", "bees"), ("girl", "girls"), ("mouse", "mice"),
    ("painting", "paintings"), ("fish", "fish"), ("chicken", "chickens"), ("desk", "desks"), ("lamp", "lamps"),
    ("cow", "cows"), ("train", "trains"), ("vase", "vases"), ("pig", "pigs"), ("sheep", "sheep"),
    ("airplane", "airplanes"), ("woman", "women"), ("phone", "phones"), ("boy", "boys"), ("plate", "plates"),
    ("bird", "birds"), ("computer", "computers"), ("book", "books"), ("couch", "couches"),
    ("turtle", "turtles"), ("bowl", "bowls"), ("cup", "cups"), ("bag", "bags"), ("car", "cars"),
    ("backpack", "backpacks"), ("microwave", "microwaves"), ("dog", "dogs"), ("television", "televisions"),
    ("butterfly", "butterflies"), ("cat", "cats"), ("person", "people"), ("table", "tables"),
    ("sofa", "sofas"), ("key", "keys"), ("refrigerator", "refrigerators"), ("clock", "clocks"),
    ("candle", "candles"), ("chair", "chairs"), ("pig", "pigs"), ("rabbit", "rabbits"), ("truck", "trucks"),
    ("boat", "boats"), ("bear", "bears"), ("bicycle", "bicycles"), ("sink", "sinks"), ("horse", "horses"),
    ("apple", "apples"),
)
_OBJECT_S = [s for s, _ in NEW_OBJECTS]
_OBJECT_P = [p for _, p in NEW_OBJECTS]


# =========================================================================== BLIP-VQA rules


def pre_question(question: str, max_words: int = BLIP_QUESTION_MAX_WORDS) -> str:
    """BLIP's question normalisation (``data/utils.py::pre_question``, applied by the test
    dataset): lower-case, drop the characters ``.!"()*#:;~``, strip trailing spaces, keep
    the first ``max_words`` space-separated words. '?' and ',' stay."""
    question = re.sub(r"([.!\"()*#:;~])", "", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def blip_noun_phrases(noun_chunks: Sequence[str]) -> list[str]:
    """The noun chunks BLIP-VQA asks about: all but those whose text is exactly one of
    ``BLIP_EXCLUDED_CHUNKS`` ('top', 'the side', 'the left', 'the right')."""
    return [c for c in noun_chunks if c not in BLIP_EXCLUDED_CHUNKS]


def vqa_questions(noun_phrases: Sequence[str], max_phrases: int = BLIP_MAX_NOUN_PHRASES) -> list[str]:
    """One question per kept noun chunk, ``pre_question(f"{chunk}?")``, for the first
    ``max_phrases``; upstream ``Create_annotation_for_BLIP`` (question ``np_index`` of the
    filtered chunks, ``np_index`` in 0..7) and the test dataset's ``pre_question``."""
    return [pre_question(f"{p}?") for p in blip_noun_phrases(list(noun_phrases))[:max_phrases]]


def blip_vqa_image_score(yes_probs: Sequence[float], decimals: int | None = BLIP_DECIMALS) -> float:
    """An image's BLIP-VQA score: the product of P(yes) over its questions; upstream ``main``.

    Missing questions (fewer phrases than ``--np_num``) count 1, so no question gives 1.0.
    Upstream writes each P(yes) as ``'{:.4f}'``, reads it back into a float32 tensor,
    multiplies in float32 and writes the product as ``'{:.4f}'``; so does this.
    ``decimals=None`` multiplies the raw probabilities in float64.
    """
    for p in yes_probs:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"P(yes) must lie in [0, 1], got {float(p)}")
    if decimals is None:
        return float(np.prod([float(p) for p in yes_probs])) if len(yes_probs) else 1.0
    score = np.float32(1.0)
    for p in yes_probs:
        score = np.float32(score * np.float32(float(f"{float(p):.{decimals}f}")))
    return float(f"{float(score):.{decimals}f}")


def yes_probability(logits_first_token, yes_id: int = BLIP_YES_TOKEN_ID, no_id: int = BLIP_NO_TOKEN_ID):
    """``p_yes / (p_yes + p_no)`` from the decoder's first-token logits (B, V);
    upstream ``BLIP_VQA.vqa_prob`` (softmax over the vocabulary, then renormalised)."""
    import torch

    prob = torch.softmax(torch.as_tensor(logits_first_token).float(), dim=-1)
    return prob[:, yes_id] / (prob[:, yes_id] + prob[:, no_id])


# =========================================================================== 2D spatial rules


def find_locality(prompt: str) -> str | None:
    """The first entry of ``SPATIAL_VOCAB`` that occurs in the prompt (substring test, vocab order)."""
    return next((w for w in SPATIAL_VOCAB if w in prompt), None)


def simple_spatial_objects(tokens: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    """First and last NOUN of a simple prompt ("a dog on the left of a cat"); upstream's
    ``else`` branch. ``tokens`` are ``(text, pos)`` pairs (spaCy ``token.text``, ``token.pos_``)."""
    nouns = [t for t, pos in tokens if pos == "NOUN"]
    return (nouns[0], nouns[-1]) if nouns else (None, None)


def complex_spatial_objects(tokens: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    """The two objects around a preposition of ``COMPLEX_PREPOSITIONS`` in a complex prompt;
    upstream's ``if args.complex`` branch.

    At each token where a 3-, 2- or 1-token span is a preposition: the nearest NOUN or PROPN
    before it, and the first NOUN after it (if none, the first PROPN not followed by a PROPN).
    Exactly two objects in all -> ``(obj1, obj2)``, else ``(None, None)``.
    """
    texts = [t for t, _ in tokens]
    pos = [p for _, p in tokens]
    n = len(tokens)
    objects: list[str] = []
    for i in range(n):
        k = next((k for k in (3, 2, 1) if " ".join(texts[i:i + k]) in COMPLEX_PREPOSITIONS), 0)
        if not k:
            continue
        for j in range(i - 1, -1, -1):
            if pos[j] in ("NOUN", "PROPN"):
                objects.append(texts[j])
                break
        flag = False
        for j in range(i + k, n):
            if pos[j] == "NOUN":
                objects.append(texts[j])
                break
            if j == n - 1:
                flag = True
        if flag:
            for j in range(i + k, n):
                if j + 1 < n and pos[j] == "PROPN" and pos[j + 1] != "PROPN":
                    objects.append(texts[j])
                    break
    return (objects[0], objects[1]) if len(objects) == 2 else (None, None)


def spatial_image_score(locality: str | None, obj1: str | None, obj2: str | None,
                        detections: Iterable[Mapping[str, Any]], image_size: tuple[int, int] | None = None,
                        *, score_threshold: float = UNIDET_SCORE_THRESHOLD,
                        aliases: Mapping[str, str] = DETECTOR_NOUN_ALIASES) -> float:
    """An image's 2D-spatial score; upstream ``2D_spatial_eval.py::main`` (per image).

    Detections with ``score > score_threshold`` are ranked by score; each object takes the
    first (most confident) detection of its name ("girl", "boy", "man", "woman" -> "person").
    Both found: ``0.25 * s1 + 0.25 * s2 + determine_position(...) / 2``; one found:
    ``0.25 * s``; none: 0. A score below 0.5 becomes 0. ``image_size = (width, height)`` of
    the image the boxes refer to: boxes are rescaled to upstream's 479-px detector frame
    (``unidet_input_size``) so the 150-px distance rule means what it meant upstream; ``None``
    takes them as already in that frame.
    """
    dets = sorted((d for d in detections if float(d["score"]) > score_threshold),
                  key=lambda d: -float(d["score"]))
    sx = sy = 1.0
    if image_size is not None:
        w, h = image_size
        nw, nh = unidet_input_size(w, h)
        sx, sy = nw / w, nh / h
    names = [aliases.get(str(d["class"]), str(d["class"])) for d in dets]
    obj1 = "person" if obj1 in PERSON_WORDS else obj1
    obj2 = "person" if obj2 in PERSON_WORDS else obj2

    def box(d):
        b = [float(v) for v in list(d["box"])[:4]]
        return (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)

    if obj1 in names and obj2 in names:
        d1, d2 = dets[names.index(obj1)], dets[names.index(obj2)]
        score = 0.25 * float(d1["score"]) + 0.25 * float(d2["score"])
        score += determine_position(locality, box(d1), box(d2)) / 2
    elif obj1 in names:
        score = 0.25 * float(dets[names.index(obj1)]["score"])
    elif obj2 in names:
        score = 0.25 * float(dets[names.index(obj2)]["score"])
    else:
        score = 0.0
    return 0.0 if score < SPATIAL_FLOOR else score


# =========================================================================== complex (3-in-1)


def three_in_one_score(attribute: float, spatial: float, action: float, kind: str) -> float:
    """Upstream ``3_in_1.py``: ``(spatial + attribute) / 2`` for "spatial" prompts,
    ``(action + attribute) / 2`` for "action" prompts, the mean of all three otherwise.
    ``attribute`` is BLIP-VQA, ``spatial`` the complex-mode UniDet score, ``action`` the
    CLIPScore of the prompt without adjectives."""
    if kind == "spatial":
        return (spatial + attribute) * 0.5
    if kind == "action":
        return (action + attribute) * 0.5
    if kind == "all":
        return (attribute + spatial + action) / 3
    raise ValueError(f"kind must be 'spatial', 'action' or 'all', got {kind!r}")


def remove_adjectives(tokens: Sequence[tuple[str, str]]) -> str:
    """The prompt CLIPScore sees in complex mode: tokens whose POS is not ADJ, joined by spaces."""
    return " ".join(t for t, pos in tokens if pos != "ADJ")


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict:
    """Per-category means of per-image scores (upstream prints the mean of each metric's
    ``vqa_result.json``). Rows: ``{"category", "score"}``. Returns ``{"categories": {c: mean},
    "counts": {c: n}}``."""
    acc: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        if "category" not in row or "score" not in row:
            raise ValueError(f"row {i} needs 'category' and 'score': {dict(row)!r:.200}")
        s = float(row["score"])
        if not np.isfinite(s):
            raise ValueError(f"row {i} ({row['category']}): score is {s}")
        acc.setdefault(str(row["category"]), []).append(s)
    return {"categories": {c: float(np.mean(v)) for c, v in acc.items()},
            "counts": {c: len(v) for c, v in acc.items()}}


# =========================================================================== numeracy rules


def numeracy_objects(tokens: Sequence[str]) -> tuple[list[str], list[int]]:
    """Objects and their counts in a numeracy prompt; upstream ``numeracy_eval.py`` (the loop
    over ``doc``; only token texts matter, case-sensitively).

    At each token in ``NUMERACY_NUMBER_WORDS`` ("a", "an", "one" .. "eight"), looking at the
    next token(s) against ``NEW_OBJECTS`` (singular, plural):

    * the next two tokens as one name (checked first; no entry has two words): plural and a
      number other than a/an/one -> the singular, count ``w2n(number)``; else the name, count 1;
    * the next token a singular name after a/an/one -> it, count 1;
    * the next token a plural name (or a singular after two..eight) -> the singular of
      ``plural.index(token)``, count ``w2n(number)``; ``w2n`` fails on "a"/"an" and upstream
      then appends no count, so the two lists may differ in length (``numeracy_image_score``
      raises where upstream would index past the end).

    Returns ``(objects, counts)``. Deviations from upstream, which would crash: a number word
    as the last token is skipped (upstream IndexError); a singular after two..eight that is
    not also a plural (upstream ``list.index`` ValueError) counts as that singular.
    """
    objects: list[str] = []
    counts: list[int] = []
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if tok not in NUMERACY_NUMBER_WORDS or i + 1 >= n:
            continue
        bigram = f"{tokens[i + 1]} {tokens[i + 2]}" if i < n - 2 else None
        nxt = tokens[i + 1]
        if bigram is not None and (bigram in _OBJECT_S or bigram in _OBJECT_P):
            if bigram in _OBJECT_P and tok not in NUMERACY_SINGULAR_WORDS:
                objects.append(_OBJECT_S[_OBJECT_P.index(bigram)])
                if tok in NUMBER_VALUES:
                    counts.append(NUMBER_VALUES[tok])
            else:
                counts.append(1)
                objects.append(bigram)
        elif nxt in _OBJECT_S or nxt in _OBJECT_P:
            if nxt in _OBJECT_S and tok in NUMERACY_SINGULAR_WORDS:
                counts.append(1)
                objects.append(nxt)
            else:
                objects.append(_OBJECT_S[_OBJECT_P.index(nxt)] if nxt in _OBJECT_P else nxt)
                if tok in NUMBER_VALUES:
                    counts.append(NUMBER_VALUES[tok])
    return objects, counts


def numeracy_detector_name(obj: str) -> str:
    """The name upstream looks an object up by: girl/boy/man/woman -> person, ship -> boat,
    goldfish -> fish, painting -> picture (and its misspelt "telivision" -> tv)."""
    return NUMERACY_RENAMES.get(obj, obj)


def numeracy_same_object(box1: Box, box2: Box) -> bool:
    """Upstream ``calculate_iou`` (inclusive-pixel ``+1`` areas): two boxes are one object if
    IoU > 0.9 or the intersection covers > 0.9 of either box."""
    x1 = max(box1[0], box2[0])
    y1 = max(box1[1], box2[1])
    x2 = min(box1[2], box2[2])
    y2 = min(box1[3], box2[3])
    inter = max(0, x2 - x1 + 1) * max(0, y2 - y1 + 1)
    a1 = (box1[2] - box1[0] + 1) * (box1[3] - box1[1] + 1)
    a2 = (box2[2] - box2[0] + 1) * (box2[3] - box2[1] + 1)
    iou = inter / float(a1 + a2 - inter)
    return iou > 0.9 or inter / float(a1) > 0.9 or inter / float(a2) > 0.9


def numeracy_image_score(objects: Sequence[str], counts: Sequence[int], detections: Iterable[Mapping[str, Any]],
                         *, score_threshold: float = UNIDET_SCORE_THRESHOLD) -> float:
    """An image's numeracy score; upstream ``numeracy_eval.py::main`` (per image).

    Detections with ``score > score_threshold``, most confident first; a detection is
    dropped when an earlier kept one has the same class and ``numeracy_same_object``. With
    ``w = 1 / len(objects)``, for each object in turn (renamed by ``numeracy_detector_name``):
    if no kept detection is named exactly so, every kept detection whose class contains the
    name as a substring is renamed to it (this persists for later objects); then ``+ w / 2``
    if some detection has the name, and another ``+ w / 2`` if exactly ``counts[i]`` do.
    No object: 0 (upstream divides by zero). Boxes in any frame (only their overlap counts).
    """
    dets = sorted((d for d in detections if float(d["score"]) > score_threshold), key=lambda d: -float(d["score"]))
    new_obj: list[str] = []
    new_box: list[list[float]] = []
    for d in dets:
        name, box = str(d["class"]), [float(v) for v in list(d["box"])[:4]]
        if not any(numeracy_same_object(box, nb) and name == nn for nn, nb in zip(new_obj, new_box)):
            new_obj.append(name)
            new_box.append(box)
    if not objects:
        return 0.0
    weight = 1.0 / len(objects)
    score = 0.0
    for i, obj in enumerate(objects):
        obj = numeracy_detector_name(obj)
        if obj not in new_obj:
            for j, name in enumerate(new_obj):
                if obj in name:
                    new_obj[j] = obj
        if obj in new_obj:
            score += 0.5 * weight
            if i >= len(counts):
                raise ValueError(f"object {i} ({obj!r}) has no count: upstream numeracy_eval.py fails on this "
                                 f"prompt ({len(objects)} objects, {len(counts)} counts)")
            if new_obj.count(obj) == counts[i]:
                score += 0.5 * weight
    return score


# =========================================================================== 3D spatial rules


def find_locality_3d(prompt: str) -> str | None:
    """The first of "in front of", "behind", "hidden" in the prompt (substring test)."""
    return next((w for w in SPATIAL_3D_VOCAB if w in prompt), None)


def _iou_2d(box1: Box, box2: Box) -> float:
    x_overlap = max(0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    y_overlap = max(0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = x_overlap * y_overlap
    union = (box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
    return inter / union if union > 0 else 0.0  # upstream divides unguarded


def box_mean_depth(depth_map, box: Box, *, upstream_indexing: bool = True) -> float:
    """Mean of ``depth_map`` (H, W) over a box, NaN if the region is empty. Upstream slices
    ``depth_map[int(x_min):int(x_max), int(y_min):int(y_max)]``: rows by x, columns by y, the
    transpose of the box (``upstream_indexing=True``, the default: that is what its published
    numbers measured); ``False`` takes the box's own region ``[y0:y1, x0:x1]``."""
    d = np.asarray(depth_map, dtype=np.float64)
    x0, y0, x1, y1 = (int(v) for v in list(box)[:4])
    region = d[x0:x1, y0:y1] if upstream_indexing else d[y0:y1, x0:x1]
    return float(region.mean()) if region.size else float("nan")


def determine_position_3d(locality: str | None, box1: Box, box2: Box, depth_map, *,
                          iou_threshold_3d: float = IOU_THRESHOLD_3D, upstream_indexing: bool = True) -> float:
    """Soft score that object 1 stands in ``locality`` to object 2 in depth; upstream
    ``3D_spatial_eval.py::determine_position`` (2D localities fall through to
    ``determine_position``). ``depth_map`` is relative inverse depth (larger = nearer) in
    the boxes' frame.

    ``diff = mean depth(box1) - mean depth(box2)`` (``box_mean_depth``); "in front of" needs
    ``diff > 0``, "behind" / "hidden" ``diff < 0``; then 1 if ``IoU > 0.5``, ``IoU / 0.5`` if
    ``0 < IoU < 0.5``, and 0 for disjoint boxes or ``IoU == 0.5`` exactly. A NaN mean (an
    empty region) fails the test.
    """
    if locality not in SPATIAL_3D_VOCAB:
        return determine_position(locality, box1, box2)
    iou = _iou_2d(box1, box2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        diff = box_mean_depth(depth_map, box1, upstream_indexing=upstream_indexing) - \
            box_mean_depth(depth_map, box2, upstream_indexing=upstream_indexing)
    holds = diff > 0 if locality == "in front of" else diff < 0
    if iou > iou_threshold_3d:
        return 1.0 if holds else 0.0
    if 0 < iou < iou_threshold_3d:
        return iou / iou_threshold_3d if holds else 0.0
    return 0.0


def spatial_3d_image_score(locality: str | None, obj1: str | None, obj2: str | None,
                           detections: Iterable[Mapping[str, Any]], depth_map,
                           image_size: tuple[int, int] | None = None, *,
                           score_threshold: float = UNIDET_SCORE_THRESHOLD, upstream_indexing: bool = True) -> float:
    """An image's 3D-spatial score; upstream ``3D_spatial_eval.py::main`` (per image).

    Detections with ``score > score_threshold``, most confident first; girl/boy/man/woman
    are looked up as person. Names match by substring (``obj in class``, as upstream's
    ``obj1 in obj_str``). Both objects found: scanning the detections in order, each match
    of obj1 / obj2 moves its position until both are set (so obj1 takes its last match before
    obj2's first one); score ``0.25 * s1 + 0.25 * s2 + determine_position_3d(...) / 2``. One
    found: ``0.25 * s`` (its first match). None: 0. No 0.5 floor (unlike 2D).
    ``depth_map`` is in upstream's 479-px frame (``depth_in_unidet_frame``); boxes are
    rescaled to it from ``image_size = (width, height)`` (None: already in it).
    """
    dets = sorted((d for d in detections if float(d["score"]) > score_threshold), key=lambda d: -float(d["score"]))
    sx = sy = 1.0
    if image_size is not None:
        w, h = image_size
        nw, nh = unidet_input_size(w, h)
        sx, sy = nw / w, nh / h
    names = [str(d["class"]) for d in dets]
    obj1 = "person" if obj1 in PERSON_WORDS else obj1
    obj2 = "person" if obj2 in PERSON_WORDS else obj2

    def box(i):
        b = [float(v) for v in list(dets[i]["box"])[:4]]
        return (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)

    def first(obj):
        return next((i for i, n in enumerate(names) if obj in n), None)

    has1 = obj1 is not None and first(obj1) is not None
    has2 = obj2 is not None and first(obj2) is not None
    if has1 and has2:
        p1 = p2 = None
        for i, n in enumerate(names):
            if obj1 in n:
                p1 = i
            if obj2 in n:
                p2 = i
            if p1 is not None and p2 is not None:
                break
        score = 0.25 * float(dets[p1]["score"]) + 0.25 * float(dets[p2]["score"])
        return score + determine_position_3d(locality, box(p1), box(p2), depth_map,
                                             upstream_indexing=upstream_indexing) / 2
    if has1:
        return 0.25 * float(dets[first(obj1)]["score"])
    if has2:
        return 0.25 * float(dets[first(obj2)]["score"])
    return 0.0


def upstream_depth_png(prediction, width: int, height: int):
    """The depth map upstream saves per image (``3D_spatial_eval.py``, first stage): the
    model's prediction min-max normalised to [0, 1], resized bilinearly (``align_corners=True``)
    to the image's ``(height, width)``, times 255, written as an 8-bit grey PNG (PIL
    ``F -> L``: truncated, clipped). A constant prediction (upstream: 0 / 0) gives zeros."""
    import torch
    from PIL import Image

    d = torch.as_tensor(np.asarray(prediction), dtype=torch.float32)
    span = d.max() - d.min()
    d = (d - d.min()) / span if float(span) > 0 else torch.zeros_like(d)
    d = torch.nn.functional.interpolate(d[None, None], size=(height, width), mode="bilinear", align_corners=True)
    return Image.fromarray(255 * d[0, 0].numpy()).convert("L")


def depth_in_unidet_frame(depth_png) -> np.ndarray:
    """The depth map as the 3D rule reads it (``generate_dataset_3d.py``): the saved PNG
    resized like the image (``Resize(size=479, max_size=480)``, PIL bilinear), / 255."""
    from PIL import Image

    w, h = unidet_input_size(depth_png.width, depth_png.height)
    return np.asarray(depth_png.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


# =========================================================================== text parsing


def spacy_nlp(model: str = "en_core_web_sm"):
    """spaCy pipeline upstream parses prompts with (noun chunks, POS tags); imported lazily."""
    try:
        import spacy
    except ImportError as e:
        raise RuntimeError("T2I-CompBench's text parsing needs spaCy and its English model: "
                           f"pip install spacy && python -m spacy download {model}") from e
    try:
        return spacy.load(model)
    except OSError as e:
        raise RuntimeError(f"spaCy model {model!r} is not installed: python -m spacy download {model} "
                           "(or pip install the model's wheel when offline)") from e


class SpacyParser:
    """Upstream's parse: spaCy noun chunks, ``(token.text, token.pos_)`` pairs, token texts."""

    exact = True

    def __init__(self, nlp, name: str = "spacy:en_core_web_sm"):
        self.nlp, self.name = nlp, name
        self._docs: dict[str, Any] = {}

    def _doc(self, text: str):
        if text not in self._docs:
            self._docs[text] = self.nlp(text)
        return self._docs[text]

    def noun_chunks(self, text: str) -> list[str]:
        return [c.text for c in self._doc(text).noun_chunks]

    def pos(self, text: str) -> list[tuple[str, str]]:
        return [(t.text, t.pos_) for t in self._doc(text)]

    def tokens(self, text: str) -> list[str]:
        return [t.text for t in self._doc(text)]


def _words(s: str) -> frozenset:
    return frozenset(s.split())


class RuleParser:
    """Fallback parse when spaCy's ``en_core_web_sm`` is not installed: a lexicon-and-suffix
    tagger over spaCy's universal POS tags, written for T2I-CompBench's prompts.

    Tokens: words (letters, digits, '_'), "'s" and single punctuation marks, as spaCy splits
    these prompts (hyphens and commas apart). Tags, first match: punctuation; digits (NUM);
    closed-class words (DET, PRON, NUM, ADP, CCONJ, SCONJ, AUX, PART); listed adverbs, verbs,
    nouns and adjectives (colours, shapes, sizes, textures and other attribute words of the
    benchmark); then suffixes (-ly ADV; -ing / -ed VERB, or ADJ between a determiner or
    adjective and a noun; -ful, -ous, -ive, -ic, -ical, -able, -ible, -less, -ish ADJ); a
    capitalised word inside the sentence PROPN; anything else NOUN. An adjective that ends a
    determiner-led phrase becomes its head NOUN ("a red orange"). Noun chunks: an optional
    determiner / possessive / number, adjectives and nouns (adjectives joined by ',' or
    'and' included), ending at the last NOUN / PROPN; a lone personal pronoun is a chunk.

    Agrees with spaCy on the templated prompts; on free sentences it is an approximation.
    """

    exact = False
    name = "fallback-rules"

    DET = _words("a an the this that these those each every some any another no both all either neither")
    POSS = _words("his her its their my your our")
    PRON = _words("it they them he she him itself themselves himself herself i me we us you who whom whose "
                  "which what something someone everything everyone anything nothing")
    NUM = _words("one two three four five six seven eight nine ten eleven twelve twenty hundred thousand")
    ADP = _words("of on in at by with from to into onto under over above below behind beside besides between "
                 "inside outside near through across against along alongside among amid around beneath "
                 "underneath for like without within toward towards upon during atop past off via up down "
                 "before after about beyond")
    CCONJ = _words("and or but nor yet")
    SCONJ = _words("while as because if when whereas although though than since until unless whether")
    AUX = _words("is are was were be been being am has have had do does did will would can could may might "
                 "shall should must")
    PART = _words("not n't 's")
    ADV = _words("next very too also away together just so there here then even almost quite rather really "
                 "still again often always never only nearly closely gently softly slightly brightly "
                 "happily perfectly")
    VERB = _words("sat sit sits stood stand stands lay lie lies held hold holds ran run runs swam swim swims "
                  "flew fly flies shone shine shines grew grow grows ate eat eats drank drink drinks rode ride "
                  "rides wore wear wears hung hang hangs made make makes took take takes gave give gives got "
                  "get gets saw see sees went go goes came come comes found find finds kept keep keeps left "
                  "leave leaves bought buy brought bring brings sang sing sings spun spin caught catch "
                  "hidden hide hides built build builds slept sleep sleeps fell fall falls led lead lit "
                  "stuck strode blew blow blows felt feel feels met meet put puts set sets shook spread "
                  "sprang struck swung threw throw thrown woven wove drawn drew draw told tell said say "
                  "looks looking provide provides contrasted nestled rest rests cast casts")
    NOUN = _words("top bottom side front back left right middle center centre edge corner end painting "
                  "building ceiling thing king ring wing string swing morning evening clothing bedding "
                  "stuffing sibling pudding icing frosting seasoning dressing railing earring bed shed sled "
                  "seed weed reed need speed feed hundred glass leather rubber fabric metal wood stone "
                  "diamond crescent teardrop heart star cotton wool silk velvet "
                  "paper cardboard ceramic porcelain marble steel iron copper brass bronze concrete brick "
                  "denim lace linen satin suede fur felt family lily belly jelly fly butterfly dragonfly "
                  "bully ally rally holly jolly sally assembly supply reply")
    ADJ = _words(
        # colours
        "red orange yellow green blue purple pink brown black white gray grey silver golden beige tan "
        "turquoise violet maroon navy teal crimson cyan magenta ivory lavender scarlet colorful colourful "
        # shapes
        "round square rectangular triangular circular oval oblong cubic cubical spherical cylindrical conical "
        "pentagonal hexagonal octagonal curved straight flat pointed spiral "
        # sizes
        "big small large tiny huge little tall short long narrow wide thick thin giant massive miniature "
        "enormous petite slim skinny fat high low deep shallow "
        # textures and materials used as adjectives
        "metallic wooden fluffy plastic soft hard smooth rough shiny fuzzy furry silky velvety woolen "
        "glossy matte transparent translucent opaque sleek textured bumpy slippery sticky wet dry "
        # other attributes
        "new old young modern ancient bright dark warm cold hot cool clean dirty empty full heavy light "
        "vibrant delicate intricate majestic gentle quiet loud calm lively fresh ripe sweet sour juicy "
        "crispy crunchy creamy icy snowy sunny rainy cloudy stormy foggy misty sandy rocky grassy muddy dusty "
        "rusty elegant ornate rustic vintage antique sturdy fragile striped spotted checkered plaid floral "
        "cute pretty ugly fancy plain simple busy crowded cozy tidy messy neat sharp dull blunt fine coarse "
        "strong weak fast slow rich poor cheap expensive natural wild tame open closed broken whole "
        "towering powerful beautiful wonderful peaceful graceful playful colorless endless sugary "
        "shimmering sparkling glowing glistening gleaming twinkling flickering blooming flowing rolling "
        "soaring towering fierce proud serene tranquil vast dense lush barren arid frozen molten golden "
        "wooden woollen silken earthen leaden spiky crisp fiery stunning unlikely lovely friendly")
    ADJ_SUFFIXES = ("ful", "ous", "ive", "ic", "ical", "able", "ible", "less", "ish")
    NOMINAL = ("DET", "PRON$", "NUM", "ADJ", "NOUN", "PROPN")

    def __init__(self):
        self._cache: dict[str, list[tuple[str, str]]] = {}

    _TOKEN = re.compile(r"'s\b|n't\b|\w+|[^\w\s]")

    def _spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._TOKEN.finditer(text)]

    def tokens(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self._spans(text)]

    def _tag1(self, w: str, i: int, toks: list[str]) -> str:
        lw = w.lower()
        if not re.match(r"\w", w):
            return "PUNCT"
        if w.isdigit():
            return "NUM"
        for tag, words in (("DET", self.DET), ("PRON$", self.POSS), ("PRON", self.PRON), ("NUM", self.NUM),
                           ("CCONJ", self.CCONJ), ("SCONJ", self.SCONJ), ("AUX", self.AUX),
                           ("PART", self.PART), ("ADP", self.ADP), ("ADV", self.ADV), ("NOUN", self.NOUN),
                           ("ADJ", self.ADJ), ("VERB", self.VERB)):
            if lw in words:
                return tag
        if lw.endswith("ly") and len(lw) > 4:
            return "ADV*"
        if (lw.endswith("ing") and len(lw) > 5) or (lw.endswith("ed") and len(lw) > 4):
            return "VERB*"
        if lw.endswith(self.ADJ_SUFFIXES) and len(lw) > 5:
            return "ADJ"
        if i > 0 and w[:1].isupper():
            return "PROPN"
        return "NOUN"

    def pos(self, text: str) -> list[tuple[str, str]]:
        if text in self._cache:
            return list(self._cache[text])
        toks = self.tokens(text)
        tags = [self._tag1(w, i, toks) for i, w in enumerate(toks)]
        n = len(toks)
        for i in range(n):  # -ing / -ed / -ly: adjective (or head noun) inside a noun phrase
            if tags[i] in ("VERB*", "ADV*"):
                before = tags[i - 1] if i else ""
                after = tags[i + 1] if i + 1 < n else ""
                in_phrase = before in ("DET", "PRON$", "NUM", "ADJ")
                if tags[i] == "ADV*":
                    tags[i] = "ADJ" if in_phrase and after in ("NOUN", "ADJ") else "ADV"
                else:
                    tags[i] = ("ADJ" if after in ("NOUN", "ADJ") else "NOUN") if in_phrase or \
                        (before == "ADV" and after in ("NOUN", "ADJ")) else "VERB"
        for i in range(n):  # "to" before a verb is a particle
            if toks[i].lower() == "to" and i + 1 < n and tags[i + 1] == "VERB":
                tags[i] = "PART"
        # an adjective ending a determiner-led phrase is its head noun ("a red orange")
        i = 0
        while i < n:
            if tags[i] in ("DET", "PRON$", "NUM"):
                j = i + 1
                while j < n and tags[j] in ("ADJ", "NOUN", "PROPN"):
                    j += 1
                coordinated = j < n and toks[j] in (",", "and", "or") and j + 1 < n and tags[j + 1] == "ADJ"
                if j > i + 1 and tags[j - 1] == "ADJ" and not coordinated:
                    tags[j - 1] = "NOUN"
                i = j
            else:
                i += 1
        out = [(w, "PRON" if t == "PRON$" else t) for w, t in zip(toks, tags)]
        self._cache[text] = out
        return list(out)

    def noun_chunks(self, text: str) -> list[str]:
        toks = self.tokens(text)
        tagged = self.pos(text)
        tags = [("PRON$" if w.lower() in self.POSS else t) for w, t in tagged]
        spans: list[tuple[int, int]] = []
        n = len(toks)
        i = 0
        while i < n:
            t = tags[i]
            if t == "PRON" and toks[i].lower() in self.PRON:
                spans.append((i, i + 1))
                i += 1
                continue
            if t in ("DET", "PRON$", "NUM", "ADJ", "NOUN", "PROPN") or (
                    t == "ADV" and i + 1 < n and tags[i + 1] == "ADJ"):
                j, last_noun = i + 1, (i if t in ("NOUN", "PROPN") else -1)
                while j < n:
                    if tags[j] in ("ADJ", "NOUN", "PROPN", "NUM"):
                        if tags[j] in ("NOUN", "PROPN"):
                            last_noun = j
                        j += 1
                    elif toks[j] in (",", "and", "or") and tags[j - 1] == "ADJ" and j + 1 < n and tags[j + 1] == "ADJ":
                        j += 1
                    elif tags[j] == "ADV" and j + 1 < n and tags[j + 1] == "ADJ" and tags[j - 1] in ("DET", "PRON$"):
                        j += 1
                    else:
                        break
                if last_noun >= 0:
                    spans.append((i, last_noun + 1))
                    i = last_noun + 1
                else:
                    i = j
                continue
            i += 1
        offsets = self._spans(text)  # a chunk is the text it covers, as spaCy's span.text
        return [text[offsets[a][0]:offsets[b - 1][1]] for a, b in spans]


def get_parser(nlp=None):
    """The prompt parser: ``None`` / ``"auto"`` -> spaCy ``en_core_web_sm`` if it loads, else
    ``RuleParser`` with a warning; ``"spacy"`` -> spaCy or a RuntimeError naming what to
    install; ``"fallback"`` -> ``RuleParser``; a spaCy ``Language`` -> wrapped; an object
    with ``noun_chunks`` / ``pos`` / ``tokens`` methods -> itself."""
    if nlp is None or nlp == "auto":
        try:
            return SpacyParser(spacy_nlp())
        except RuntimeError as e:
            warnings.warn(f"{e}. T2I-CompBench prompts are parsed by capo's fallback RuleParser instead: exact "
                          "on templated prompts, approximate on free sentences (scores are a variant).",
                          stacklevel=2)
            return RuleParser()
    if nlp == "spacy":
        return SpacyParser(spacy_nlp())
    if nlp in ("fallback", "rules"):
        return RuleParser()
    if all(hasattr(nlp, m) for m in ("noun_chunks", "pos", "tokens")):
        return nlp
    if callable(nlp):
        return SpacyParser(nlp, name=f"spacy:{getattr(nlp, 'meta', {}).get('name', 'custom')}")
    raise TypeError(f"nlp must be None, 'auto', 'spacy', 'fallback', a spaCy pipeline or a parser, got {nlp!r:.80}")


def parsed_with(fn, nlp, attr: str):
    """``(fn, "custom")`` for a parsing callable given; else the ``attr`` method of the parser
    ``get_parser(nlp)`` and the parser's name (which the protocol card records)."""
    if fn is not None:
        return fn, "custom"
    parser = get_parser(nlp)
    return getattr(parser, attr), parser.name


def _device(device):
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# =========================================================================== upstream sample layout

SAMPLES_DIR = "samples"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SAMPLE_NAME = re.compile(r"^(?P<prompt>[^_/]+)_(?P<idx>\d{6,})(?P<ext>\.[A-Za-z]+)$")
_MAX_NAME_BYTES = 255


class LayoutError(ValueError):
    """A samples folder that upstream's scripts would misread (one message lists every problem)."""


def upstream_sample_name(prompt: str, idx: int, ext: str = ".png") -> str:
    """``f"{prompt}_{idx:06}.png"``, upstream ``inference_eval.py``'s file name. Raises
    ``ValueError`` for a prompt the evaluators could not recover from it: one containing '_'
    (they take ``name.split('_')[0]``) or '/', an empty one, or a name over 255 bytes."""
    problem = _prompt_name_problem(prompt)
    if problem:
        raise ValueError(f"prompt {prompt!r:.120}: {problem}")
    if idx < 0:
        raise ValueError(f"index must be >= 0, got {idx}")
    name = f"{prompt}_{idx:06d}{ext}"
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ValueError(f"prompt {prompt!r:.80}...: file name of {len(name.encode('utf-8'))} bytes exceeds "
                         f"{_MAX_NAME_BYTES}")
    return name


def _prompt_name_problem(prompt: str) -> str | None:
    if not isinstance(prompt, str) or not prompt:
        return "empty"
    if "_" in prompt:
        return "contains '_', which upstream's name.split('_')[0] would cut the prompt at"
    if "/" in prompt or "\0" in prompt or "\\" in prompt:
        return "contains a path separator or NUL"
    if prompt in (".", ".."):
        return "not a file name"
    return None


def parse_sample_name(name: str) -> tuple[str, int] | None:
    """``(prompt, idx)`` from ``<prompt>_<idx>.<ext>`` as upstream reads it (the prompt before
    the only '_', the index the digits after it); None for any other name."""
    m = _SAMPLE_NAME.match(name)
    if not m or m["ext"].lower() not in IMAGE_EXTENSIONS:
        return None
    return m["prompt"], int(m["idx"])


def write_upstream_layout(out_dir: str | os.PathLike, prompts: Sequence[str],
                          images_by_prompt: Mapping[str, Sequence[Any]] | Sequence[Sequence[Any]], *,
                          overwrite: bool = False) -> list[tuple[str, int, Path]]:
    """Write images as upstream's generator does: ``<out_dir>/samples/<prompt>_<idx:06d>.png``,
    ``idx`` running over the prompts in order (prompt ``i`` with 10 images owns ``10 i ..
    10 i + 9``). ``images_by_prompt``: prompt -> images, or one list per prompt (aligned
    with ``prompts``). Every name is checked before anything is written; a non-empty
    ``samples/`` is refused unless ``overwrite`` (then its image files are removed first).
    Returns ``[(prompt, idx, path)]``."""
    prompts = list(prompts)
    if isinstance(images_by_prompt, Mapping):
        missing = [p for p in prompts if p not in images_by_prompt]
        if missing:
            raise LayoutError(f"no images for {len(missing)} prompt(s): " + "; ".join(map(repr, missing[:10])))
        groups = [list(images_by_prompt[p]) for p in prompts]
    else:
        groups = [list(g) for g in images_by_prompt]
        if len(groups) != len(prompts):
            raise LayoutError(f"{len(groups)} image lists for {len(prompts)} prompts")
    plan: list[tuple[str, int, str, Any]] = []
    bad: list[str] = []
    idx = 0
    for p, group in zip(prompts, groups):
        if not group:
            bad.append(f"{p!r:.120}: no images")
        for im in group:
            try:
                plan.append((p, idx, upstream_sample_name(p, idx), im))
            except ValueError as e:
                bad.append(str(e))
                break
            idx += 1
    if bad:
        raise LayoutError(f"cannot write upstream's layout ({len(bad)} problem(s)):\n  " + "\n  ".join(bad[:20]))
    samples = Path(out_dir) / SAMPLES_DIR
    samples.mkdir(parents=True, exist_ok=True)
    existing = [f for f in samples.iterdir()]
    if existing:
        if not overwrite:
            raise LayoutError(f"{samples} already holds {len(existing)} file(s); upstream's scripts read every "
                              "file there (pass overwrite=True to replace its images)")
        strays = [f.name for f in existing if f.is_dir() or parse_sample_name(f.name) is None]
        if strays:
            raise LayoutError(f"{samples} holds files that are not samples, not removing them: {strays[:10]}")
        for f in existing:
            f.unlink()
    out = []
    for p, i, name, im in plan:
        path = samples / name
        _to_pil_rgb(im).save(path, format="PNG")
        out.append((p, i, path))
    return out


def read_upstream_layout(directory: str | os.PathLike, prompts: Sequence[str], *,
                         images_per_prompt: int | None = None, check_images: bool = True
                         ) -> list[tuple[str, int, Path]]:
    """The samples of upstream's layout (``directory/samples/`` or ``directory`` itself) as
    ``[(prompt, idx, path)]`` sorted by ``idx`` (the order upstream scores them in), after
    checking everything that would make its scripts misread the folder. One ``LayoutError``
    lists, per kind, the files that are:

    * unexpected: not ``<prompt>_<digits>.<image ext>`` (sub-folders, other files);
    * extra: of a prompt not in ``prompts`` (the text before '_' compared verbatim);
    * duplicate: an index used twice;
    * missing: a prompt without images, or with ``images_per_prompt`` (upstream: 10), any of
      prompt ``i``'s ``images_per_prompt * i ..`` indices absent or held by another prompt;
    * unreadable: PIL cannot open and verify it (``check_images``).
    """
    root = Path(directory)
    samples = root / SAMPLES_DIR if (root / SAMPLES_DIR).is_dir() else root
    if not samples.is_dir():
        raise LayoutError(f"{directory}: no such folder (expected upstream's <dir>/samples/<prompt>_<idx>.png)")
    prompts = list(prompts)
    known = set(prompts)
    problems: dict[str, list[str]] = {k: [] for k in ("unexpected", "extra", "duplicate", "missing", "unreadable")}
    entries: dict[int, tuple[str, int, Path]] = {}
    for f in sorted(samples.iterdir()):
        parsed = None if f.is_dir() else parse_sample_name(f.name)
        if parsed is None:
            problems["unexpected"].append(f.name + ("/" if f.is_dir() else ""))
            continue
        prompt, idx = parsed
        if prompt not in known:
            problems["extra"].append(f.name)
            continue
        if idx in entries:
            problems["duplicate"].append(f"{f.name} (index {idx} also {entries[idx][2].name})")
            continue
        entries[idx] = (prompt, idx, f)
    if images_per_prompt is not None:
        for i, p in enumerate(prompts):
            for idx in range(i * images_per_prompt, (i + 1) * images_per_prompt):
                if entries.get(idx, (None,))[0] != p:
                    problems["missing"].append(upstream_sample_name(p, idx) if not _prompt_name_problem(p)
                                               else f"{p!r} #{idx}")
        n_expected = images_per_prompt * len(prompts)
        problems["extra"] += [e[2].name for idx, e in sorted(entries.items()) if idx >= n_expected]
    else:
        have = {e[0] for e in entries.values()}
        problems["missing"] += [f"{p!r:.120}: no image" for p in dict.fromkeys(prompts) if p not in have]
    if check_images:
        from PIL import Image

        for _, _, f in entries.values():
            try:
                with Image.open(f) as im:
                    im.verify()
            except Exception as e:  # noqa: BLE001 - any failure to decode is the finding
                problems["unreadable"].append(f"{f.name} ({type(e).__name__})")
    found = {k: v for k, v in problems.items() if v}
    if found:
        lines = [f"{samples}: not upstream's T2I-CompBench layout (<prompt>_<idx:06d>.png"
                 + (f", {images_per_prompt} per prompt" if images_per_prompt else "") + ")"]
        for kind, items in found.items():
            shown = "; ".join(items[:10]) + (f"; ... ({len(items) - 10} more)" if len(items) > 10 else "")
            lines.append(f"  {kind} ({len(items)}): {shown}")
        raise LayoutError("\n".join(lines))
    return [entries[i] for i in sorted(entries)]


# =========================================================================== detector coverage


def detector_nouns(category: str, prompt: str, parser) -> list[str] | None:
    """The names a category's rule looks up among the detections for ``prompt`` (girl / boy /
    man / woman -> person; numeracy's renames), or None when the parse yields none (upstream
    crashes there, capo scores 0). spatial / 3d_spatial: first and last NOUN; complex: the
    two objects around its preposition; numeracy: ``numeracy_objects``."""
    if category in ("spatial", "3d_spatial", "complex"):
        pick = complex_spatial_objects if category == "complex" else simple_spatial_objects
        obj1, obj2 = pick(parser.pos(prompt))
        if obj1 is None or obj2 is None:
            return None
        return ["person" if o in PERSON_WORDS else o for o in (obj1, obj2)]
    if category == "numeracy":
        objects, _ = numeracy_objects(parser.tokens(prompt))
        return [numeracy_detector_name(o) for o in objects] or None
    raise ValueError(f"category {category!r} uses no detector; detector categories: {DETECTOR_CATEGORIES}")


def noun_in_vocabulary(noun: str, vocabulary: Iterable[str] | None, category: str,
                       aliases: Mapping[str, str] = DETECTOR_NOUN_ALIASES) -> bool:
    """Could a detector with this label space ever answer ``noun``? ``None`` (open vocabulary):
    always. spatial / complex compare names exactly (upstream ``obj.index(obj1)``, after
    ``aliases``); 3d_spatial and numeracy accept a class containing the noun (their
    substring matching: "desk" is answered by UniDet's "table, desk")."""
    if vocabulary is None:
        return True
    if category in ("3d_spatial", "numeracy"):
        return any(noun in str(c) for c in vocabulary)
    return noun in {aliases.get(str(c), str(c)) for c in vocabulary}


def detector_vocabulary(detector) -> tuple[str, ...] | None:
    """A detector's label space: None for an open-vocabulary one, else ``class_names``."""
    if detector is None or getattr(detector, "open_vocabulary", False):
        return None
    names = getattr(detector, "class_names", None)
    if names is None:
        raise ValueError("closed-vocabulary detector without class_names: pass its label space as vocabulary=")
    return tuple(names)


def detector_coverage(category: str, prompts: Sequence[str], vocabulary: Iterable[str] | None = None, *,
                      parser=None, kinds: Mapping[str, str] | None = None) -> dict:
    """How many of ``prompts`` a detector with label space ``vocabulary`` (None = open) can
    score in ``category``: every noun the rule looks up parsed (``detector_nouns``) and in
    the vocabulary (``noun_in_vocabulary``). For complex, only prompts whose 3-in-1 kind uses
    the spatial score ("spatial", "all") count when ``kinds`` (prompt -> kind) is given.

    Returns ``{"category", "total", "scorable", "unparsed", "out_of_vocabulary": {noun: n}}``.
    """
    parser = parser if parser is not None else get_parser(None)
    vocab = None if vocabulary is None else tuple(vocabulary)
    total = scorable = unparsed = 0
    missing: Counter = Counter()
    for p in prompts:
        if category == "complex" and kinds is not None and kinds.get(p, "all") == "action":
            continue
        total += 1
        nouns = detector_nouns(category, p, parser)
        if nouns is None:
            unparsed += 1
            continue
        out = [n for n in nouns if not noun_in_vocabulary(n, vocab, category)]
        missing.update(dict.fromkeys(out, 1))
        scorable += not out
    return {"category": category, "total": total, "scorable": scorable, "unparsed": unparsed,
            "out_of_vocabulary": dict(missing.most_common())}


def coverage_table(prompts_by_category: Mapping[str, Sequence[str]], vocabulary: Iterable[str] | None = None, *,
                   parser=None, kinds: Mapping[str, str] | None = None) -> dict[str, dict]:
    """``detector_coverage`` for each detector category present in ``prompts_by_category``."""
    parser = parser if parser is not None else get_parser(None)
    vocab = None if vocabulary is None else tuple(vocabulary)
    return {c: detector_coverage(c, prompts_by_category[c], vocab, parser=parser, kinds=kinds)
            for c in DETECTOR_CATEGORIES if c in prompts_by_category}


# =========================================================================== scorers


def _check_lengths(images, prompts):
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")


def blip_vqa_scorer(model_id_or_path: str = BLIP_VQA_MODEL, *, device: str | None = None,
                    noun_phrases_fn: Callable[[str], list[str]] | None = None, nlp=None,
                    batch_size: int = 16, image_size: int = BLIP_IMAGE_SIZE,
                    model=None, tokenizer=None) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """BLIP-VQA scorer for color / shape / texture: ``score(images, prompts) -> list[float]``.

    Per image: the prompt's noun chunks (``noun_phrases_fn``, default the parser's, see
    ``get_parser(nlp)``), upstream's filter and questions (``vqa_questions``: drop 'top',
    'the side', 'the left', 'the right'; first 8; ``pre_question(chunk + "?")``), P(yes) of
    each (``yes_probability`` on the first decoded token after [DEC], the question's [CLS]
    replaced by [ENC], truncated at 35 tokens; image resized to 480 x 480 bicubic, CLIP
    mean/std), product (``blip_vqa_image_score``). ``score.yes_prob(images, questions)``
    exposes the per-question probability.
    """
    import torch
    from PIL import Image

    if model is None or tokenizer is None:
        from transformers import AutoTokenizer, BlipForQuestionAnswering

        try:
            model = model or BlipForQuestionAnswering.from_pretrained(model_id_or_path)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_id_or_path)
        except Exception as e:
            raise _load_error("the BLIP-VQA model", model_id_or_path, e) from e
    noun_phrases_fn, parser_name = parsed_with(noun_phrases_fn, nlp, "noun_chunks")
    device = _device(device)
    model = model.to(device).eval()
    enc_id = BLIP_ENC_TOKEN_ID
    if "[ENC]" in getattr(tokenizer, "get_vocab", lambda: {})():
        enc_id = tokenizer.convert_tokens_to_ids("[ENC]")
    mean = torch.tensor(_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(_CLIP_STD).view(3, 1, 1)

    def pixels(image):
        im = _to_pil_rgb(image).resize((image_size, image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - mean) / std

    @torch.no_grad()
    def yes_prob(images: Sequence[Any], questions: Sequence[str]) -> list[float]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        # Questions of equal token length go together, unpadded: transformers 5's BLIP text
        # cross-attention drops ``encoder_attention_mask`` (``BlipTextLayer`` passes it as
        # ``attention_mask``; checked on 5.24), so a padded question's padding would reach the
        # decoder and an answer would depend on its batch. Unpadded, every version agrees.
        ids = tokenizer(list(questions), truncation=True, max_length=BLIP_QUESTION_MAX_LENGTH)["input_ids"]
        out: list[float] = [0.0] * len(images)
        groups: dict[int, list[int]] = {}
        for i, x in enumerate(ids):
            groups.setdefault(len(x), []).append(i)
        for rows_all in groups.values():
            for s in range(0, len(rows_all), batch_size):
                rows = rows_all[s:s + batch_size]
                pv = torch.stack([pixels(images[i]) for i in rows]).to(device)
                input_ids = torch.tensor([ids[i] for i in rows], device=device)
                input_ids[:, 0] = enc_id
                mask = torch.ones_like(input_ids)
                image_embeds = model.vision_model(pixel_values=pv, interpolate_pos_encoding=True)[0]
                image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
                q_states = model.text_encoder(input_ids=input_ids, attention_mask=mask,
                                              encoder_hidden_states=image_embeds,
                                              encoder_attention_mask=image_atts)[0]
                start = torch.full((len(rows), 1), BLIP_DEC_TOKEN_ID, dtype=torch.long, device=device)
                logits = model.text_decoder(input_ids=start, encoder_hidden_states=q_states,
                                            encoder_attention_mask=mask).logits[:, 0, :]
                for i, p in zip(rows, yes_probability(logits).cpu()):
                    out[i] = float(p)
        return out

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        _check_lengths(images, prompts)
        flat_images, flat_questions, owner = [], [], []
        for i, (im, prompt) in enumerate(zip(images, prompts)):
            for q in vqa_questions(noun_phrases_fn(prompt)):
                flat_images.append(im)
                flat_questions.append(q)
                owner.append(i)
        probs = yes_prob(flat_images, flat_questions) if flat_questions else []
        per_image: list[list[float]] = [[] for _ in prompts]
        for i, p in zip(owner, probs):
            per_image[i].append(p)
        return [blip_vqa_image_score(ps) for ps in per_image]

    score.yes_prob = yes_prob  # type: ignore[attr-defined]
    score.parser = parser_name  # type: ignore[attr-defined]
    return score


def clip_score_scorer(model_name: str = CLIP_ARCH, *, pretrained: str = CLIP_PRETRAINED,
                      device: str | None = None, remove_adj: bool = False, pos_fn=None, nlp=None,
                      model=None, preprocess=None, tokenizer=None
                      ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """CLIPScore for non_spatial (and the action part of complex, ``remove_adj=True``):
    ``score(images, prompts)``, the cosine similarity of L2-normalised CLIP ViT-B/32 image and
    text features (no x100, no clipping); upstream ``CLIP_similarity.py``. The model is built
    by ``capo.openclip.create`` (``ViT-B-32`` / ``openai`` with the QuickGELU its weights were
    trained with: OpenAI's ViT-B/32). Pass ``model``/``preprocess``/``tokenizer`` to use
    objects already built."""
    import torch

    if model is None or preprocess is None or tokenizer is None:
        try:
            model, preprocess, tokenizer = create(model_name, pretrained, device=_device(device))
        except Exception as e:
            raise RuntimeError(
                f"could not load CLIP {model_name!r} (pretrained={pretrained!r}): {e}\nOffline "
                "(HF_HUB_OFFLINE=1) the weights must already be cached, or pass a local weights file "
                "as pretrained=") from e
    parser_name = None
    if remove_adj and pos_fn is None:
        parser = get_parser(nlp)
        pos_fn, parser_name = parser.pos, parser.name
    device = _device(device)
    model = model.to(device).eval()

    @torch.no_grad()
    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        _check_lengths(images, prompts)
        out = []
        for im, prompt in zip(images, prompts):
            text = remove_adjectives(pos_fn(prompt)) if remove_adj else prompt
            x = preprocess(_to_pil_rgb(im)).unsqueeze(0).to(device)
            img = model.encode_image(x).float()
            img = img / img.norm(dim=-1, keepdim=True)
            txt = model.encode_text(tokenizer([text]).to(device)).float()
            txt = txt / txt.norm(dim=-1, keepdim=True)
            out.append(float((img @ txt.T).squeeze()))
        return out

    score.parser = parser_name  # type: ignore[attr-defined]
    return score


def _threshold_of(detector, score_threshold):
    return float(score_threshold if score_threshold is not None
                 else getattr(detector, "score_threshold", UNIDET_SCORE_THRESHOLD))


def spatial_scorer(detector, *, complex: bool = False, pos_fn=None, nlp=None,
                   score_threshold: float | None = None,
                   aliases: Mapping[str, str] = DETECTOR_NOUN_ALIASES
                   ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """2D-spatial scorer: ``score(images, prompts)`` with any detector; objects from the
    prompt by ``simple_spatial_objects`` (or ``complex_spatial_objects``), locality by
    ``find_locality``, score by ``spatial_image_score`` in upstream's 479-px frame. An
    open-vocabulary detector is asked for the two objects (girl / boy / man / woman as
    person). ``score_threshold``: default the detector's own (``detector.score_threshold``),
    else UniDet's 0.5."""
    pos_fn, parser_name = parsed_with(pos_fn, nlp, "pos")
    pick = complex_spatial_objects if complex else simple_spatial_objects
    thr = _threshold_of(detector, score_threshold)

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        _check_lengths(images, prompts)
        pil = [_to_pil_rgb(im) for im in images]
        objects = [pick(pos_fn(p)) for p in prompts]
        queries = [[("person" if o in PERSON_WORDS else o) for o in pair if o is not None] for pair in objects]
        detections = run_detector(detector, pil, queries)
        return [spatial_image_score(find_locality(p), o1, o2, dets, (im.width, im.height),
                                    score_threshold=thr, aliases=aliases)
                for im, p, (o1, o2), dets in zip(pil, prompts, objects, detections)]

    score.parser = parser_name  # type: ignore[attr-defined]
    return score


def numeracy_scorer(detector, *, tokens_fn=None, nlp=None, score_threshold: float | None = None
                    ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """Numeracy scorer (T2I-CompBench++): ``score(images, prompts)``; objects and counts by
    ``numeracy_objects`` on the prompt's tokens, score by ``numeracy_image_score``. An
    open-vocabulary detector is asked for the renamed objects (``numeracy_detector_name``)."""
    tokens_fn, parser_name = parsed_with(tokens_fn, nlp, "tokens")
    thr = _threshold_of(detector, score_threshold)

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        _check_lengths(images, prompts)
        pil = [_to_pil_rgb(im) for im in images]
        parsed = [numeracy_objects(tokens_fn(p)) for p in prompts]
        queries = [list(dict.fromkeys(numeracy_detector_name(o) for o in objs)) for objs, _ in parsed]
        detections = run_detector(detector, pil, queries)
        return [numeracy_image_score(objs, counts, dets, score_threshold=thr)
                for (objs, counts), dets in zip(parsed, detections)]

    score.parser = parser_name  # type: ignore[attr-defined]
    return score


def spatial_3d_scorer(detector, depth, *, pos_fn=None, nlp=None, score_threshold: float | None = None,
                      upstream_indexing: bool = True) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """3D-spatial scorer (T2I-CompBench++): ``score(images, prompts)``. ``depth(images)`` gives
    one raw prediction per image (``capo.eval.detectors.depth_estimator``), turned into
    upstream's depth map (``upstream_depth_png`` then ``depth_in_unidet_frame``); objects are
    the first and last NOUN (girl / boy / man / woman as person), locality by
    ``find_locality_3d``, score by ``spatial_3d_image_score``."""
    pos_fn, parser_name = parsed_with(pos_fn, nlp, "pos")
    thr = _threshold_of(detector, score_threshold)

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        _check_lengths(images, prompts)
        pil = [_to_pil_rgb(im) for im in images]
        objects = [simple_spatial_objects(pos_fn(p)) for p in prompts]
        queries = [[("person" if o in PERSON_WORDS else o) for o in pair if o is not None] for pair in objects]
        detections = run_detector(detector, pil, queries)
        predictions = depth(pil)
        out = []
        for im, p, (o1, o2), dets, pred in zip(pil, prompts, objects, detections, predictions):
            dmap = depth_in_unidet_frame(upstream_depth_png(pred, im.width, im.height))
            out.append(spatial_3d_image_score(find_locality_3d(p), o1, o2, dets, dmap, (im.width, im.height),
                                              score_threshold=thr, upstream_indexing=upstream_indexing))
        return out

    score.parser = parser_name  # type: ignore[attr-defined]
    return score


def three_in_one_scorer(attribute_scorer, complex_spatial_scorer, action_scorer,
                        spatial_prompts: Iterable[str] = (), action_prompts: Iterable[str] = (), *,
                        kinds: Mapping[str, str] | None = None
                        ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """Complex 3-in-1: ``score(images, prompts)`` from a BLIP-VQA scorer, a complex-mode spatial
    scorer and a CLIPScore scorer with ``remove_adj=True``, combined by ``three_in_one_score``
    with each prompt's kind: ``kinds[prompt]`` (e.g. the ``complex_kind`` of
    ``load_prompt_set("t2i-compbench:complex")`` records), else ``complex_kind`` over
    ``spatial_prompts`` / ``action_prompts`` (the lines of ``complex_val_spatial.txt`` /
    ``complex_val_action.txt``). A part a prompt's kind does not use is still computed, as
    upstream computes all three for every image."""
    spatial_prompts, action_prompts = list(spatial_prompts), list(action_prompts)
    kinds = dict(kinds or {})

    def kind_of(p: str) -> str:
        return kinds[p] if p in kinds else complex_kind(p, spatial_prompts, action_prompts)

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        _check_lengths(images, prompts)
        a = attribute_scorer(images, prompts)
        s = complex_spatial_scorer(images, prompts)
        c = action_scorer(images, prompts)
        return [three_in_one_score(ai, si, ci, kind_of(p)) for ai, si, ci, p in zip(a, s, c, prompts)]

    return score


# =========================================================================== protocol and entry point

_BLIP_NOTE = ("BLIP VQA capfilt-large (HF port of upstream's model_base_vqa_capfilt_large.pth); questions are the "
              "prompt's spaCy noun chunks minus 'top'/'the side'/'the left'/'the right', first 8, pre_question; "
              "score = float32 product of '{:.4f}' P(yes)")
PROTOCOL: dict[str, dict] = {
    "color": {"metric": "BLIP-VQA", "model": BLIP_VQA_MODEL, "exact": True, "parse": "noun_chunks",
              "upstream": "BLIPvqa_eval/BLIP_vqa.py", "note": _BLIP_NOTE},
    "shape": {"metric": "BLIP-VQA", "model": BLIP_VQA_MODEL, "exact": True, "parse": "noun_chunks",
              "upstream": "BLIPvqa_eval/BLIP_vqa.py", "note": _BLIP_NOTE},
    "texture": {"metric": "BLIP-VQA", "model": BLIP_VQA_MODEL, "exact": True, "parse": "noun_chunks",
                "upstream": "BLIPvqa_eval/BLIP_vqa.py", "note": _BLIP_NOTE},
    "non_spatial": {"metric": "CLIPScore", "model": f"open_clip {CLIP_ARCH}/{CLIP_PRETRAINED} (QuickGELU)",
                    "exact": True, "parse": None, "upstream": "CLIPScore_eval/CLIP_similarity.py",
                    "note": "OpenAI ViT-B/32 weights and preprocessing via capo.openclip; cosine of normalised "
                            "features. Upstream runs OpenAI's clip package (fp16 on CUDA); capo computes in fp32"},
    "spatial": {"metric": "UniDet 2D spatial", "model": "UniDet Unified_learned_OCIM_RS200_6x+2x",
                "exact": True, "parse": "pos", "upstream": "UniDet_eval/2D_spatial_eval.py",
                "note": "first/last NOUN; most confident detection of each (score > 0.5); 0.25 s1 + 0.25 s2 + "
                        "position / 2 in the 479-px frame; < 0.5 -> 0"},
    "numeracy": {"metric": "UniDet numeracy", "model": "UniDet Unified_learned_OCIM_R50_6x+2x",
                 "exact": True, "parse": "tokens", "upstream": "UniDet_eval/numeracy_eval.py",
                 "note": "number word + new_objects.txt name; duplicates (IoU or cover > 0.9) merged; per object "
                         "w/2 if present, + w/2 if the count matches"},
    "3d_spatial": {"metric": "UniDet + depth 3D spatial",
                   "model": "UniDet Unified_learned_OCIM_R50_6x+2x + MiDaS DPT-Hybrid (Intel/dpt-hybrid-midas)",
                   "exact": True, "parse": "pos", "upstream": "UniDet_eval/3D_spatial_eval.py",
                   "note": "depth min-max normalised, 8-bit, 479-px frame, box region indexed [x, y] as upstream; "
                           "front/behind by mean depth; IoU > 0.5 -> 1, 0 < IoU < 0.5 -> IoU / 0.5; no floor"},
    "complex": {"metric": "3-in-1", "model": "BLIP-VQA + UniDet RS200 (complex mode) + CLIPScore (no adjectives)",
                "exact": True, "parse": "noun_chunks+pos", "upstream": "3_in_1_eval/3_in_1.py",
                "note": "(spatial + attribute) / 2, (action + attribute) / 2 or the mean of all three by the "
                        "prompt's complex_val_{spatial,action}.txt membership"},
}
UPSTREAM_DETECTOR = {"spatial": "unidet:RS200", "complex": "unidet:RS200", "numeracy": "unidet:R50",
                     "3d_spatial": "unidet:R50"}
UPSTREAM_DEPTH = "dpt:Intel/dpt-hybrid-midas"


def protocol_entry(category: str, *, detector: str | None = None, parser: str | None = None,
                   depth: str | None = None, upstream_depth_indexing: bool = True) -> dict:
    """``PROTOCOL[category]`` for what a scorer actually ran with: ``exact`` stays True only if
    the detector is upstream's (``UPSTREAM_DETECTOR``), the depth model is upstream's, and the
    prompts were parsed by spaCy (the categories that parse); ``variant`` says what differs."""
    if category not in PROTOCOL:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; known: {', '.join(CATEGORIES)}")
    entry = dict(PROTOCOL[category])
    diffs = []
    if category in UPSTREAM_DETECTOR and detector is not None and detector != UPSTREAM_DETECTOR[category]:
        diffs.append(f"detector {detector} instead of {UPSTREAM_DETECTOR[category]}")
    if category == "3d_spatial":
        if depth is not None and depth != UPSTREAM_DEPTH:
            diffs.append(f"depth {depth} instead of {UPSTREAM_DEPTH}")
        if not upstream_depth_indexing:
            diffs.append("depth region indexed [y, x] (upstream: [x, y])")
    if entry["parse"] and parser is not None and not parser.startswith("spacy:en_core_web_sm"):
        diffs.append(f"prompts parsed by {parser} instead of spaCy en_core_web_sm")
    entry.update(detector=detector, parser=parser, depth=depth if category == "3d_spatial" else None)
    if diffs:
        entry["exact"] = False
        entry["variant"] = "; ".join(diffs)
    return entry


def resolve_detector(detector, category: str, *, device: str | None = None, **detector_kwargs):
    """The detector a category scores with: an object is used as is; a name goes to
    ``capo.eval.geneval.get_detector`` (for "unidet" with the category's checkpoint); None
    takes upstream's UniDet when its stack is supplied (``unidet_available``), else OWLv2."""
    if detector is not None and not isinstance(detector, str):
        return detector
    ckpt = D.UNIDET_CHECKPOINT_OF_CATEGORY.get(category, "RS200")
    name = detector or ("unidet" if D.unidet_available(detector_kwargs.get("root"), ckpt) else "owlv2")
    if name == "unidet":
        detector_kwargs.setdefault("ckpt", ckpt)
    det = get_detector(name, device=device, **detector_kwargs)
    if getattr(det, "name", None) is None:
        try:
            det.name = name
        except AttributeError:
            pass
    return det


def category_scorer(category: str, *, device: str | None = None, detector=None, nlp=None, depth=None,
                    kinds: Mapping[str, str] | None = None, spatial_prompts: Iterable[str] = (),
                    action_prompts: Iterable[str] = (), blip_model: str = BLIP_VQA_MODEL,
                    clip_model: str = CLIP_ARCH, clip_pretrained: str = CLIP_PRETRAINED,
                    depth_model: str | None = None, score_threshold: float | None = None,
                    upstream_depth_indexing: bool = True, detector_kwargs: Mapping[str, Any] | None = None
                    ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """The scorer of one T2I-CompBench(++) category: ``scorer(images, prompts) -> list[float]``
    (one score per image; the category score is their mean, ``summarize``).

    ``detector``: None (UniDet when supplied, else OWLv2), a registered name ("owlv2",
    "unidet", "mask2former") or a detector object; ``nlp``: see ``get_parser``; ``depth``: a
    depth callable (default ``depth_estimator(depth_model)``, DPT-Hybrid MiDaS). complex needs
    each prompt's 3-in-1 kind: ``kinds`` (prompt -> "spatial" / "action" / "all") or the
    ``spatial_prompts`` / ``action_prompts`` lines. The scorer carries ``category``,
    ``parser``, ``detector`` and ``protocol`` (``protocol_entry``) attributes.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; known: {', '.join(CATEGORIES)}")
    parser = get_parser(nlp)
    det_name = depth_name = None
    det = None
    if category in DETECTOR_CATEGORIES:
        det = resolve_detector(detector, category, device=device, **dict(detector_kwargs or {}))
        det_name = getattr(det, "name", type(det).__name__)
    if category in ("color", "shape", "texture"):
        scorer = blip_vqa_scorer(blip_model, device=device, nlp=parser)
    elif category == "non_spatial":
        scorer = clip_score_scorer(clip_model, pretrained=clip_pretrained, device=device)
    elif category == "spatial":
        scorer = spatial_scorer(det, nlp=parser, score_threshold=score_threshold)
    elif category == "numeracy":
        scorer = numeracy_scorer(det, nlp=parser, score_threshold=score_threshold)
    elif category == "3d_spatial":
        if depth is None:
            depth = depth_estimator(depth_model or DEFAULT_DEPTH_MODEL, device=device)
        depth_name = getattr(depth, "name", "custom")
        scorer = spatial_3d_scorer(det, depth, nlp=parser, score_threshold=score_threshold,
                                   upstream_indexing=upstream_depth_indexing)
    else:  # complex
        if kinds is None and not list(spatial_prompts) and not list(action_prompts):
            raise ValueError("complex needs each prompt's 3-in-1 kind: pass kinds={prompt: r['complex_kind']} from "
                             "load_prompt_set('t2i-compbench:complex'), or spatial_prompts= / action_prompts= (the "
                             "lines of complex_val_spatial.txt / complex_val_action.txt)")
        scorer = three_in_one_scorer(
            blip_vqa_scorer(blip_model, device=device, nlp=parser),
            spatial_scorer(det, complex=True, nlp=parser, score_threshold=score_threshold),
            clip_score_scorer(clip_model, pretrained=clip_pretrained, device=device, remove_adj=True, nlp=parser),
            spatial_prompts, action_prompts, kinds=kinds)
    scorer.category = category  # type: ignore[attr-defined]
    scorer.parser = parser.name if PROTOCOL[category]["parse"] else None  # type: ignore[attr-defined]
    scorer.detector = det_name  # type: ignore[attr-defined]
    scorer.protocol = protocol_entry(category, detector=det_name, parser=scorer.parser,  # type: ignore[attr-defined]
                                     depth=depth_name, upstream_depth_indexing=upstream_depth_indexing)
    if det is not None:
        scorer.protocol["score_threshold"] = _threshold_of(det, score_threshold)  # type: ignore[attr-defined]
    return scorer
