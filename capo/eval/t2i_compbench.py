"""T2I-CompBench (Huang et al., 2023) scoring, replicated from Karine-Huang/T2I-CompBench.

Per category (the paper's Table 2 metrics):

============================  ================  ===============================================
category                      metric            upstream
============================  ================  ===============================================
color, shape, texture         BLIP-VQA          ``BLIPvqa_eval/BLIP_vqa.py`` (+ ``models/blip_vqa.py``)
spatial                       UniDet (2D)       ``UniDet_eval/2D_spatial_eval.py``
non_spatial                   CLIPScore         ``CLIPScore_eval/CLIP_similarity.py``
complex                       3-in-1            ``3_in_1_eval/3_in_1.py``
============================  ================  ===============================================

The rules are pure functions tested on hand-made inputs (``blip_vqa_image_score``,
``determine_position``, ``spatial_image_score``, ``three_in_one_score``, ``summarize``); the
models sit behind factories that import transformers / open_clip / spaCy lazily. Upstream's
text parsing uses spaCy ``en_core_web_sm`` (noun chunks, POS tags); the factories take it as
``nlp`` (default: ``spacy_nlp()``) or as plain callables, so tests need no spaCy.

Spatial deviation: upstream detects with UniDet (a detectron2 model over a merged label
space); here any ``capo.eval.geneval.Detector`` is used, so a noun the detector has no class
for counts as not detected.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex")
METRIC_OF_CATEGORY = {"color": "blip_vqa", "shape": "blip_vqa", "texture": "blip_vqa",
                      "spatial": "unidet_spatial", "non_spatial": "clip_score", "complex": "3_in_1"}

# --- BLIP-VQA (BLIP_vqa.py, configs/vqa.yaml, models/blip_vqa.py::vqa_prob)
BLIP_VQA_MODEL = "Salesforce/blip-vqa-capfilt-large"  # HF port of BLIP's model_base_vqa_capfilt_large.pth
BLIP_IMAGE_SIZE = 480          # vqa.yaml image_size
BLIP_MAX_NOUN_PHRASES = 8      # --np_num default
BLIP_QUESTION_MAX_LENGTH = 35  # tokenizer(..., truncation=True, max_length=35)
BLIP_DEC_TOKEN_ID = 30522      # '[DEC]', the decoder's bos (vqa_prob start_ids)
BLIP_ENC_TOKEN_ID = 30523      # '[ENC]', replaces [CLS] of the question
BLIP_YES_TOKEN_ID = 2748       # 'yes' in bert-base-uncased
BLIP_NO_TOKEN_ID = 2053        # 'no'
BLIP_DECIMALS = 4              # each answer and the product are written as '{:.4f}'
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
IOU_THRESHOLD = 0.1
DISTANCE_THRESHOLD = 150.0       # pixels of the detector's input frame
UNIDET_SCORE_THRESHOLD = 0.5     # --confidence-threshold default (detectron2 keeps score > it)
UNIDET_RESIZE = (479, 480)       # transforms.Resize(size=479, max_size=480) before detection
SPATIAL_FLOOR = 0.5              # if score < 0.5: score = 0
# Detector classes named differently from the noun a prompt uses.
DETECTOR_NOUN_ALIASES = {"computer mouse": "mouse", "tv remote": "remote",
                         "computer keyboard": "keyboard"}

Box = Sequence[float]


# =========================================================================== BLIP-VQA rules


def vqa_questions(noun_phrases: Sequence[str], max_phrases: int = BLIP_MAX_NOUN_PHRASES) -> list[str]:
    """One question per noun phrase, ``f"{phrase}?"``, for the first ``max_phrases`` phrases;
    upstream ``Create_annotation_for_BLIP`` (``np_index`` over ``doc.noun_chunks``)."""
    return [f"{p}?" for p in list(noun_phrases)[:max_phrases]]


def blip_vqa_image_score(yes_probs: Sequence[float], decimals: int | None = BLIP_DECIMALS) -> float:
    """An image's BLIP-VQA score: the product of P(yes) over its questions; upstream ``main``.

    Missing questions (fewer phrases than ``--np_num``) count 1, so no question gives 1.0.
    Upstream writes each P(yes) and the product as ``'{:.4f}'``; ``decimals=None`` skips that.
    """
    score = 1.0
    for p in yes_probs:
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"P(yes) must lie in [0, 1], got {p}")
        score *= round(p, decimals) if decimals is not None else p
    return round(score, decimals) if decimals is not None else score


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


def determine_position(locality: str | None, box1: Box, box2: Box, iou_threshold: float = IOU_THRESHOLD,
                       distance_threshold: float = DISTANCE_THRESHOLD) -> float:
    """Soft score in [0, 1] that object 1 stands in ``locality`` to object 2; upstream
    ``determine_position``. Boxes are ``(x0, y0, x1, y1)`` in the detector's 479-px frame.

    ``dx = cx2 - cx1``, ``dy = cy2 - cy1`` (centres), IoU without the +1 convention.
    * "next to" / "on side of" / "near": 1 if ``|dx| < 150`` or ``|dy| < 150``, else
      ``150 / max(|dx|, |dy|)``.
    * "on the right of": needs ``dx < 0`` and ``|dx| > |dy|``; then 1 if ``IoU < 0.1``, else
      ``0.1 / IoU``; otherwise 0. "on the left of": the same with ``dx > 0``.
    * "on the bottom of": ``dy < 0`` and ``|dy| > |dx|``; "on the top of": ``dy > 0`` and
      ``|dy| > |dx|``; same IoU rule.
    * anything else, including "on top of" (found by ``find_locality`` but not handled
      upstream), scores 0.
    """
    c1 = ((box1[0] + box1[2]) / 2, (box1[1] + box1[3]) / 2)
    c2 = ((box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2)
    dx, dy = c2[0] - c1[0], c2[1] - c1[1]
    x_overlap = max(0, min(box1[2], box2[2]) - max(box1[0], box2[0]))
    y_overlap = max(0, min(box1[3], box2[3]) - max(box1[1], box2[1]))
    inter = x_overlap * y_overlap
    union = ((box1[2] - box1[0]) * (box1[3] - box1[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter)
    iou = inter / union if union > 0 else 0.0  # upstream divides unguarded

    def by_iou() -> float:
        return 1.0 if iou < iou_threshold else iou_threshold / iou

    if locality in ("next to", "on side of", "near"):
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    if locality == "on the right of":
        return by_iou() if dx < 0 and abs(dx) > abs(dy) else 0.0
    if locality == "on the left of":
        return by_iou() if dx > 0 and abs(dx) > abs(dy) else 0.0
    if locality == "on the bottom of":
        return by_iou() if dy < 0 and abs(dy) > abs(dx) else 0.0
    if locality == "on the top of":
        return by_iou() if dy > 0 and abs(dy) > abs(dx) else 0.0
    return 0.0


def unidet_input_size(width: int, height: int, size: int = UNIDET_RESIZE[0],
                      max_size: int = UNIDET_RESIZE[1]) -> tuple[int, int]:
    """``(w, h)`` after torchvision ``Resize(size=479, max_size=480)``: the short side to 479,
    the long side in proportion (truncated), capped at 480 (then the short side shrinks)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


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


def complex_key(prompt: str) -> str:
    """How ``3_in_1.py`` matches prompts across files: the text before the first '.', lower-cased."""
    return prompt.strip("\n").split(".")[0].lower()


def complex_kind(prompt: str, spatial_prompts: Iterable[str], action_prompts: Iterable[str]) -> str:
    """``"spatial"`` if the prompt is in ``complex_val_spatial.txt``, else ``"action"`` if in
    ``complex_val_action.txt``, else ``"all"`` (upstream order of the tests)."""
    key = complex_key(prompt)
    if key in {complex_key(p) for p in spatial_prompts}:
        return "spatial"
    if key in {complex_key(p) for p in action_prompts}:
        return "action"
    return "all"


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


def _noun_phrases_fn(nlp):
    return lambda text: [chunk.text for chunk in nlp(text).noun_chunks]


def _pos_fn(nlp):
    return lambda text: [(t.text, t.pos_) for t in nlp(text)]


def _to_pil_rgb(image):
    from capo.eval.geneval import _to_pil_rgb as f

    return f(image)


def _device(device):
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


# =========================================================================== scorers


def blip_vqa_scorer(model_id_or_path: str = BLIP_VQA_MODEL, *, device: str | None = None,
                    noun_phrases_fn: Callable[[str], list[str]] | None = None, nlp=None,
                    batch_size: int = 16, image_size: int = BLIP_IMAGE_SIZE,
                    model=None, tokenizer=None) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """BLIP-VQA scorer for color / shape / texture: ``score(images, prompts) -> list[float]``.

    Per image: noun phrases of the prompt (spaCy noun chunks), questions ``"<phrase>?"``
    (``vqa_questions``), P(yes) of each (``yes_probability`` on the first decoded token after
    [DEC], the question's [CLS] replaced by [ENC], truncated at 35 tokens; image resized to
    480 x 480 bicubic, CLIP mean/std), product (``blip_vqa_image_score``).
    ``score.yes_prob(images, questions)`` exposes the per-question probability.
    """
    import torch
    from PIL import Image

    if model is None or tokenizer is None:
        from transformers import AutoTokenizer, BlipForQuestionAnswering

        try:
            model = model or BlipForQuestionAnswering.from_pretrained(model_id_or_path)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_id_or_path)
        except Exception as e:
            from capo.eval.geneval import _load_error

            raise _load_error("the BLIP-VQA model", model_id_or_path, e) from e
    if noun_phrases_fn is None:
        noun_phrases_fn = _noun_phrases_fn(nlp or spacy_nlp())
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
        out: list[float] = []
        for s in range(0, len(images), batch_size):
            pv = torch.stack([pixels(im) for im in images[s:s + batch_size]]).to(device)
            q = tokenizer(list(questions[s:s + batch_size]), padding="longest", truncation=True,
                          max_length=BLIP_QUESTION_MAX_LENGTH, return_tensors="pt").to(device)
            input_ids = q["input_ids"].clone()
            input_ids[:, 0] = enc_id
            image_embeds = model.vision_model(pixel_values=pv, interpolate_pos_encoding=True)[0]
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
            q_states = model.text_encoder(input_ids=input_ids, attention_mask=q["attention_mask"],
                                          encoder_hidden_states=image_embeds,
                                          encoder_attention_mask=image_atts)[0]
            start = torch.full((len(input_ids), 1), BLIP_DEC_TOKEN_ID, dtype=torch.long, device=device)
            logits = model.text_decoder(input_ids=start, encoder_hidden_states=q_states,
                                        encoder_attention_mask=q["attention_mask"]).logits[:, 0, :]
            out.extend(float(p) for p in yes_probability(logits).cpu())
        return out

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
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
    return score


def clip_score_scorer(model_name: str = CLIP_ARCH, *, pretrained: str = CLIP_PRETRAINED,
                      device: str | None = None, remove_adj: bool = False, pos_fn=None, nlp=None,
                      model=None, preprocess=None, tokenizer=None
                      ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """CLIPScore for non_spatial (and the action part of complex, ``remove_adj=True``):
    ``score(images, prompts)``, the cosine similarity of L2-normalised CLIP ViT-B/32 image and
    text features (no x100, no clipping); upstream ``CLIP_similarity.py``. open_clip's
    ``ViT-B-32``/``openai`` is OpenAI's ViT-B/32. Pass ``model``/``preprocess``/``tokenizer``
    to use objects already built."""
    import torch

    if model is None or preprocess is None or tokenizer is None:
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=_device(device))
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as e:
            raise RuntimeError(
                f"could not load CLIP {model_name!r} (pretrained={pretrained!r}): {e}\nOffline "
                "(HF_HUB_OFFLINE=1) the weights must already be cached, or pass a local weights file "
                "as pretrained=") from e
    if remove_adj and pos_fn is None:
        pos_fn = _pos_fn(nlp or spacy_nlp())
    device = _device(device)
    model = model.to(device).eval()

    @torch.no_grad()
    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
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

    return score


def spatial_scorer(detector, *, complex: bool = False, pos_fn=None, nlp=None,
                   score_threshold: float = UNIDET_SCORE_THRESHOLD,
                   aliases: Mapping[str, str] = DETECTOR_NOUN_ALIASES
                   ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """2D-spatial scorer: ``score(images, prompts)`` with any ``Detector``; objects from the
    prompt by ``simple_spatial_objects`` (or ``complex_spatial_objects``), locality by
    ``find_locality``, score by ``spatial_image_score`` in upstream's 479-px frame."""
    if pos_fn is None:
        pos_fn = _pos_fn(nlp or spacy_nlp())
    pick = complex_spatial_objects if complex else simple_spatial_objects

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        pil = [_to_pil_rgb(im) for im in images]
        detections = detector(pil)
        out = []
        for im, prompt, dets in zip(pil, prompts, detections):
            obj1, obj2 = pick(pos_fn(prompt))
            out.append(spatial_image_score(find_locality(prompt), obj1, obj2, dets, (im.width, im.height),
                                           score_threshold=score_threshold, aliases=aliases))
        return out

    return score


def three_in_one_scorer(attribute_scorer, complex_spatial_scorer, action_scorer,
                        spatial_prompts: Iterable[str], action_prompts: Iterable[str]
                        ) -> Callable[[Sequence[Any], Sequence[str]], list[float]]:
    """Complex 3-in-1: ``score(images, prompts)`` from a BLIP-VQA scorer, a complex-mode spatial
    scorer and a CLIPScore scorer with ``remove_adj=True``, combined by ``three_in_one_score``
    with the kind from ``complex_kind`` (``spatial_prompts`` / ``action_prompts``: the lines of
    ``complex_val_spatial.txt`` / ``complex_val_action.txt``)."""
    spatial_prompts, action_prompts = list(spatial_prompts), list(action_prompts)

    def score(images: Sequence[Any], prompts: Sequence[str]) -> list[float]:
        a = attribute_scorer(images, prompts)
        s = complex_spatial_scorer(images, prompts)
        c = action_scorer(images, prompts)
        return [three_in_one_score(ai, si, ci, complex_kind(p, spatial_prompts, action_prompts))
                for ai, si, ci, p in zip(a, s, c, prompts)]

    return score
