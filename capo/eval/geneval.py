"""GenEval (Ghosh et al., 2023): the scoring rules, and detector backends behind one protocol.

Replicates djghosh13/geneval ``evaluation/evaluate_images.py`` (functions ``evaluate_image``,
``evaluate``, ``relative_position``, ``compute_iou``, ``color_classification``) and
``evaluation/summary_scores.py``. The rules are pure functions of detections; the detector
(Mask2Former) and the colour classifier (CLIP) are pluggable, so the shapes world can score
its own renders with its own detector.

A detection is a dict::

    {"class": str, "box": (x0, y0, x1, y1), "score": float,
     "mask": optional bool array (H, W), "color": optional str}

Upstream constants (``evaluate_images.py``, ``__main__`` block, overridable there by
``--options``; keyword arguments here):

=====================  =====  ==========================================================
``THRESHOLD``          0.3    keep a detection iff ``score > 0.3`` (strict)
``COUNTING_THRESHOLD`` 0.9    the same, for records tagged ``counting``
``MAX_OBJECTS``        16     per class, after sorting by score and thresholding
``NMS_THRESHOLD``      1.0    ``max_overlap``: greedy per-class suppression of boxes with
                              IoU >= it; 1.0 (the default) disables suppression
``POSITION_THRESHOLD`` 0.1    relative-position margin, in units of the summed box sizes
=====================  =====  ==========================================================

Rules (``evaluate``): ``include`` clauses are ANDed, ``exclude`` clauses ORed. For an
include clause ``{class, count}`` the ``count`` most confident kept objects of that class are
taken; fewer than ``count`` fails ("expected X>=n"). So a count is a lower bound; exact
counting comes from the counting records' exclude clause ``{class, count: n + 1}``, which fails
when ``len(kept objects of class) >= n + 1``. Colour: those ``count`` objects are classified and
at least ``count`` of them must have the colour. Position ``[rel, k]``: every one of those
objects must stand in ``rel`` to every object matched by include clause ``k``; a failed clause
``k`` fails the position check ("no target"). Colour is checked before position, and position
only if the colour check passed.

The score (``summary_scores.py``): per tag, the mean correctness over images; overall, the
unweighted mean over tags.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from capo import artifacts
from capo import openclip
from capo.method.positions import POSITION_THRESHOLD, relative_position

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
NMS_THRESHOLD = 1.0

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# evaluate_images.py: COLORS, and the three zero-shot templates of color_classification()
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = (
    "a photo of a {c} {classname}",
    "a photo of a {c}-colored {classname}",
    "a photo of a {c} object",
)
COLOR_CLIP_ARCH = "ViT-L-14"  # load_models(): options 'clip_model', default "ViT-L-14", pretrained="openai"
COLOR_CROP_BACKGROUND = "#999"  # ImageCrops: options 'bgcolor', default "#999"

# prompts/object_names.txt @ af4902f (the 80 COCO thing classes, in COCO's contiguous order)
OBJECT_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Other spellings of the same 80 classes (COCO's, VOC's, and checkpoints' id2label) -> GenEval's.
_NAME_ALIASES = {
    "mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
    "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv",
    "tv monitor": "tv", "television": "tv", "pottedplant": "potted plant", "diningtable": "dining table",
    "hair dryer": "hair drier", "doughnut": "donut", "cellphone": "cell phone",
    "mobile phone": "cell phone", "wineglass": "wine glass",
    "hotdog": "hot dog", "teddybear": "teddy bear", "firehydrant": "fire hydrant",
}

# The upstream detector (evaluation/download_models.sh; README: mmdet==2.27.0)
UPSTREAM_MMDET_MODEL = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
UPSTREAM_MMDET_CHECKPOINT_URL = (
    "https://download.openmmlab.com/mmdetection/v3.0/mask2former/"
    "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco/"
    "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth"
)
DEFAULT_MASK2FORMER = "facebook/mask2former-swin-small-coco-instance"

ColorFn = Callable[[Any, Mapping[str, Any]], str]


# --------------------------------------------------------------------------- geometry


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with the inclusive-pixel ``+1`` convention of upstream ``compute_iou``."""

    def area(b):
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]),
                  min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0


# --------------------------------------------------------------------------- rules


def _check_detections(detections: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = []
    for i, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise TypeError(f"detection {i} must be a dict, got {type(det).__name__}")
        missing = [k for k in ("class", "box", "score") if k not in det]
        if missing:
            raise ValueError(f"detection {i} lacks {', '.join(missing)}: {dict(det)!r:.200}")
        if len(det["box"]) < 4:
            raise ValueError(f"detection {i}: box must be (x0, y0, x1, y1), got {det['box']!r}")
        out.append(det)
    return out


def select_objects(detections: Iterable[Mapping[str, Any]], tag: str, *,
                   threshold: float = THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD,
                   max_objects: int = MAX_OBJECTS, nms_threshold: float = NMS_THRESHOLD,
                   ) -> dict[str, list[Mapping[str, Any]]]:
    """Objects kept per class, most confident first; upstream ``evaluate_image`` (loop over classes).

    Per class, in the detector's order: ``np.argsort(scores)[::-1]`` (so of tied scores the
    later detection comes first, as upstream), keep ``score > threshold``
    (``counting_threshold`` when ``tag == "counting"``) compared in float32 as upstream does
    (mmdet's scores are a float32 array; numpy compares it with the Python float in float32,
    so a score of ``float32(0.3)`` is not kept), keep the first ``max_objects``, then greedy
    suppression: take the best remaining, drop the others whose IoU with it is >=
    ``nms_threshold`` (never when ``nms_threshold == 1``). Classes with nothing kept are absent.
    """
    conf = np.float32(counting_threshold if tag == "counting" else threshold)
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for det in _check_detections(detections):
        by_class.setdefault(str(det["class"]), []).append(det)
    kept: dict[str, list[Mapping[str, Any]]] = {}
    for name, dets in by_class.items():
        scores = np.array([float(d["score"]) for d in dets], dtype=np.float32)
        ordering = np.argsort(scores)[::-1]
        ordering = ordering[scores[ordering] > conf][:max_objects].tolist()
        chosen = []
        while ordering:
            best = dets[ordering.pop(0)]
            chosen.append(best)
            ordering = [j for j in ordering
                        if nms_threshold == 1 or compute_iou(best["box"], dets[j]["box"]) < nms_threshold]
        if chosen:
            kept[name] = chosen
    return kept


def _colors_of(objects, image, color_fn: ColorFn | None) -> list[str]:
    colors = []
    for det in objects:
        color = det.get("color")
        if color is None:
            if color_fn is None:
                raise ValueError(
                    f"a colour check needs the colour of a {det['class']!r}: give detections a 'color' "
                    "or pass color_fn (e.g. clip_color_classifier())")
            color = color_fn(image, det)
        colors.append(str(color))
    return colors


def evaluate_objects(record: Mapping[str, Any], objects: Mapping[str, list[Mapping[str, Any]]],
                     image=None, color_fn: ColorFn | None = None,
                     position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """Upstream ``evaluate(image, objects, metadata)`` on already selected objects.

    ``objects`` maps class -> kept detections, most confident first (``select_objects``).
    Returns ``(correct, reason)``, reason lines joined by newlines as upstream.
    """
    correct = True
    reason: list[str] = []
    matched_groups: list[list[Mapping[str, Any]] | None] = []
    for req in record.get("include", []):
        classname, count = req["class"], int(req["count"])
        matched = True
        found = list(objects.get(classname, []))[:count]
        if len(found) < count:
            correct = matched = False
            reason.append(f"expected {classname}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = _colors_of(found, image, color_fn)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    known = list(COLORS) + sorted(set(colors) - set(COLORS))
                    reason.append(
                        f"expected {req['color']} {classname}>={count}, found "
                        f"{colors.count(req['color'])} {req['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in known if c in colors))
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if target_group >= len(matched_groups) or matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found:
                        for target in matched_groups[target_group]:
                            true_rels = relative_position(obj["box"], target["box"], position_threshold)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(f"expected {classname} {expected_rel} target, found "
                                              f"{' and '.join(sorted(true_rels))} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in record.get("exclude", []):
        classname, count = req["class"], int(req["count"])
        n = len(objects.get(classname, []))
        if n >= count:
            correct = False
            reason.append(f"expected {classname}<{count}, found {n}")
    return correct, "\n".join(reason)


def evaluate_image(record: Mapping[str, Any], detections: Iterable[Mapping[str, Any]], image=None,
                   color_fn: ColorFn | None = None, *, threshold: float = THRESHOLD,
                   counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                   nms_threshold: float = NMS_THRESHOLD,
                   position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """Is one image correct for one GenEval record? Upstream ``evaluate_image`` + ``evaluate``.

    ``detections``: every detection of the image (any score); selection by threshold, cap and
    suppression happens here (``select_objects``). ``image`` is only handed to ``color_fn``,
    which is only called for detections without a ``"color"``.
    """
    if "tag" not in record:
        raise ValueError(f"GenEval record lacks 'tag': {dict(record)!r:.200}")
    objects = select_objects(detections, record["tag"], threshold=threshold,
                             counting_threshold=counting_threshold, max_objects=max_objects,
                             nms_threshold=nms_threshold)
    return evaluate_objects(record, objects, image, color_fn, position_threshold)


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict:
    """GenEval scores from per-image rows ``{"tag", "correct", optional "prompt_id"}``; upstream
    ``summary_scores.py``.

    Returns ``{"overall", "tags": {tag: mean correctness}, "counts": {tag: [correct, images]},
    "images", "image_accuracy", "prompts", "prompt_accuracy", "missing_tags"}``. ``overall``
    is the unweighted mean over the tags present (upstream); ``missing_tags`` lists which of
    the six are absent. A prompt counts as correct if any of its images is; prompts are keyed
    by ``prompt_id``, else ``metadata``, else ``prompt`` (upstream groups by ``metadata``).
    """
    tags: dict[str, list[float]] = {}
    by_prompt: dict[Any, bool] = {}
    n = 0
    total = 0.0
    for i, row in enumerate(rows):
        if "tag" not in row or "correct" not in row:
            raise ValueError(f"row {i} needs 'tag' and 'correct': {dict(row)!r:.200}")
        c = float(bool(row["correct"]))
        tags.setdefault(str(row["tag"]), []).append(c)
        key = next((row[k] for k in ("prompt_id", "metadata", "prompt") if k in row), None)
        if key is not None:
            key = json.dumps(key, sort_keys=True) if isinstance(key, (dict, list)) else key
            by_prompt[key] = by_prompt.get(key, False) or bool(c)
        n += 1
        total += c
    if not n:
        raise ValueError("summarize() needs at least one row")
    scores = {t: float(np.mean(v)) for t, v in tags.items()}
    return {
        "overall": float(np.mean(list(scores.values()))),
        "tags": scores,
        "counts": {t: [int(sum(v)), len(v)] for t, v in tags.items()},
        "images": n,
        "image_accuracy": total / n,
        "prompts": len(by_prompt),
        "prompt_accuracy": (float(np.mean(list(by_prompt.values()))) if by_prompt else float("nan")),
        "missing_tags": [t for t in TAGS if t not in tags],
    }


# capo's bookkeeping keys on a GenEval record; upstream's metadata.jsonl has none of them
CAPO_RECORD_KEYS = ("id", "index", "prompt_id", "prompt_idx")


def upstream_metadata(record: Mapping[str, Any]) -> dict:
    """The record as upstream's ``metadata.jsonl`` holds it: capo's bookkeeping keys dropped,
    the rest in its original order (``generation/diffusers_generate.py`` dumps the line of
    ``evaluation_metadata.jsonl`` as it is)."""
    return {k: v for k, v in record.items() if k not in CAPO_RECORD_KEYS}


def result_record(filename: str, record: Mapping[str, Any], correct: bool, reason: str,
                  objects: Mapping[str, list[Mapping[str, Any]]]) -> dict:
    """One line of upstream's ``results.jsonl`` (``evaluate_image``'s return value).

    ``metadata`` is ``json.dumps`` of the prompt's metadata (``summary_scores.py`` groups
    prompts by it); ``details`` maps each class with kept objects, in ``object_names.txt``
    order, to its boxes as mmdet rows ``[x0, y0, x1, y1, score]`` in float32 values.
    """
    order = {name: i for i, name in enumerate(OBJECT_NAMES)}
    details = {}
    for name in sorted(objects, key=lambda n: (order.get(n, len(order)), n)):
        details[name] = [[float(np.float32(v)) for v in (*list(d["box"])[:4], d["score"])] for d in objects[name]]
    meta = upstream_metadata(record)
    return {"filename": str(filename), "tag": meta["tag"], "prompt": meta["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(meta), "details": json.dumps(details)}


def write_results_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Upstream's ``results.jsonl`` (``evaluate_images.py --outfile``): one ``result_record`` a
    line, the input of upstream's ``evaluation/summary_scores.py``."""
    path = Path(path)
    artifacts.write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- class names


def to_geneval_name(label: str) -> str:
    """A detector's class label -> GenEval's object name (``OBJECT_NAMES``) where it is one of
    the 80 COCO classes under another spelling; any other label comes back lower-cased."""
    norm = " ".join(str(label).replace("_", " ").replace("-", " ").lower().split())
    if norm in OBJECT_NAMES:
        return norm
    return _NAME_ALIASES.get(norm, norm)


# --------------------------------------------------------------------------- colour


def color_crop(image, box: Sequence[float], mask=None, bgcolor: str = COLOR_CROP_BACKGROUND,
               crop: bool = True):
    """The picture the colour classifier sees; upstream ``ImageCrops.__getitem__``.

    The object's mask pasted over a plain ``bgcolor`` canvas (grey ``#999``; ``"original"``
    keeps the image), then cropped to the box (PIL rounds the coordinates).
    """
    from PIL import Image

    image = _to_pil_rgb(image)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if tuple(mask.shape) != (image.height, image.width):
            raise ValueError(f"mask shape {mask.shape} != image (H, W) {(image.height, image.width)}")
        blank = image.copy() if bgcolor == "original" else Image.new("RGB", image.size, color=bgcolor)
        image = Image.composite(image, blank, Image.fromarray(mask))
    if crop:
        image = image.crop(tuple(float(v) for v in list(box)[:4]))
    return image


def color_precision(precision: str, device: str) -> str:
    """``"amp"`` (float16 autocast) or ``"fp32"``; ``"auto"``: upstream's choice on that device.

    Upstream calls clip_benchmark's ``zero_shot_classifier`` and ``run_classification`` with their
    default ``amp=True``: both run under ``torch.cuda.amp.autocast()`` (float16) on its CUDA-only
    evaluator. On a CPU autocast does nothing there, so ``auto`` is float32 on a CPU.
    """
    if precision not in ("auto", "amp", "fp32"):
        raise ValueError(f"colour classifier precision must be auto, amp or fp32, got {precision!r}")
    if precision == "auto":
        return "amp" if str(device).startswith("cuda") else "fp32"
    return precision


def clip_color_classifier(model_id_or_path: str = COLOR_CLIP_ARCH, *, pretrained: str = "openai",
                          device: str | None = None, bgcolor: str = COLOR_CROP_BACKGROUND,
                          crop: bool = True, precision: str = "auto", model=None, preprocess=None,
                          tokenizer=None) -> ColorFn:
    """CLIP zero-shot colour of a detected object; upstream ``color_classification``.

    As upstream runs it:

    * model: open_clip ``ViT-L-14`` with ``pretrained="openai"`` (``clip_model`` option), built
      with QuickGELU, the activation OpenAI trained it with (``capo.openclip``; open_clip >=
      2.29 would silently build GELU); its own transform (bicubic resize of the shortest side to
      224, centre crop, OpenAI mean/std). ``model_id_or_path``: an architecture, an ``hf-hub:``
      id, or a local weights file for ``ViT-L-14`` (taken as OpenAI's).
    * crop (``ImageCrops``): the object's mask pasted over a plain ``#999`` canvas, cropped to
      the box (``color_crop``).
    * prompts: one classifier per object class: for each of the 10 ``COLORS`` the three
      ``COLOR_TEMPLATES`` are encoded, L2-normalised, averaged and re-normalised (clip_benchmark
      ``zero_shot_classifier``); the crop is encoded and normalised, and the colour is
      ``argmax(100 * image @ text)``.
    * precision: ``color_precision`` (float16 autocast on CUDA, as clip_benchmark's default).

    Returns ``color_fn(image, det) -> str``. ``model`` / ``preprocess`` / ``tokenizer``: CLIP
    objects already built (open_clip's interface), instead of loading ``model_id_or_path``.
    """
    import contextlib

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = color_precision(precision, device) == "amp"
    if model is None or preprocess is None or tokenizer is None:
        arch, weights = model_id_or_path, pretrained
        if os.path.isfile(model_id_or_path):
            arch, weights = COLOR_CLIP_ARCH, model_id_or_path
        try:
            model, preprocess, tokenizer = openclip.create(arch, weights, trained_as=pretrained if weights != pretrained
                                                           else None, device=device)
        except Exception as e:
            raise RuntimeError(
                f"could not load the CLIP colour classifier {arch!r} (pretrained={weights!r}): {e}\n"
                f"GenEval classifies colours with open_clip {COLOR_CLIP_ARCH!r}, OpenAI weights. Offline "
                "(HF_HUB_OFFLINE=1) those weights must already be in the Hugging Face / open_clip cache, "
                "or pass the local weights file: clip_color_classifier('/path/to/ViT-L-14.pt')") from e
    model = model.to(device).eval()
    transform = preprocess
    classifiers: dict[str, Any] = {}

    def autocast():
        return torch.autocast(str(device).split(":")[0], dtype=torch.float16) if amp else contextlib.nullcontext()

    @torch.no_grad()
    def text_classifier(classname: str):
        if classname not in classifiers:
            weights_ = []
            with autocast():
                for color in COLORS:
                    texts = tokenizer([t.format(c=color, classname=classname) for t in COLOR_TEMPLATES]).to(device)
                    emb = torch.nn.functional.normalize(model.encode_text(texts), dim=-1).mean(dim=0)
                    weights_.append(emb / emb.norm())
            classifiers[classname] = torch.stack(weights_, dim=1)
        return classifiers[classname]

    @torch.no_grad()
    def color_fn(image, det: Mapping[str, Any]) -> str:
        clf = text_classifier(str(det["class"]))
        picture = color_crop(image, det["box"], det.get("mask"), bgcolor, crop)
        x = transform(picture).unsqueeze(0).to(device)
        with autocast():
            feats = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            logits = 100.0 * feats @ clf
        return COLORS[int(logits.float().argmax(dim=1)[0])]

    color_fn.precision = "amp" if amp else "fp32"  # type: ignore[attr-defined]
    return color_fn


# --------------------------------------------------------------------------- detectors


class Detector(Protocol):
    """Images in (PIL images or HxWx3 uint8 RGB arrays), one list of detections per image out."""

    def __call__(self, images: Sequence[Any]) -> list[list[dict]]: ...


DETECTORS: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str):
    """Decorator: register a detector factory under ``name`` (the shapes world adds its own)."""

    def deco(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in DETECTORS and DETECTORS[name] is not factory:
            raise ValueError(f"detector {name!r} is already registered")
        DETECTORS[name] = factory
        return factory

    return deco


def get_detector(name: str, **kwargs) -> Detector:
    """Build the detector registered as ``name``; unknown names get the nearest known ones."""
    if name not in DETECTORS:
        near = difflib.get_close_matches(name, list(DETECTORS), n=3)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise KeyError(f"unknown detector {name!r}{hint} Known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](**kwargs)


def _to_pil_rgb(image):
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        image = ImageOps.exif_transpose(Image.open(image))
    elif not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 HxWx3 RGB, got {arr.dtype} {arr.shape}")
        image = Image.fromarray(arr)
    return image.convert("RGB")


def mask2bbox(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``[x_min, y_min, x_max + 1, y_max + 1]`` of binary masks (N, H, W); zeros for an
    empty mask. mmdet ``mask2bbox``, which upstream's detector uses."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        xs = np.flatnonzero(m.any(axis=0))
        ys = np.flatnonzero(m.any(axis=1))
        if len(xs) and len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def mask2former_instances(class_logits, mask_logits, valid_hw: tuple[int, int],
                          orig_hw: tuple[int, int], class_names: Sequence[str], *,
                          min_score: float = THRESHOLD, max_per_image: int = 100,
                          chunk: int = 16) -> list[dict]:
    """Instance detections from one image's Mask2Former outputs; mmdet
    ``MaskFormerFusionHead.predict`` + ``instance_postprocess`` (the upstream detector's head).

    ``class_logits`` (Q, C + 1), last column "no object"; ``mask_logits`` (Q, h, w) for the
    padded network input, of which the top-left ``valid_hw`` is the resized image.
    Steps: masks upsampled (bilinear) to the padded input size, cropped to ``valid_hw``,
    resized (bilinear) to ``orig_hw``; class scores ``softmax[:, :-1]``, the top
    ``max_per_image`` (query, class) pairs; mask ``= logit > 0``; score ``= class score x mean
    sigmoid inside the mask``; box ``= mask2bbox(mask)``. Detections scoring below
    ``min_score`` are dropped (GenEval discards them anyway: its lowest threshold is 0.3).
    """
    import torch
    import torch.nn.functional as F

    class_logits = torch.as_tensor(class_logits).float()
    mask_logits = torch.as_tensor(mask_logits).float()
    num_classes = class_logits.shape[-1] - 1
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    scores = F.softmax(class_logits, dim=-1)[:, :-1]
    k = min(max_per_image, scores.numel())
    top_scores, top_idx = scores.flatten().topk(k, sorted=False)
    queries, labels = top_idx // num_classes, top_idx % num_classes
    keep = top_scores >= min_score  # mask score <= 1, so these can never reach min_score
    top_scores, queries, labels = top_scores[keep], queries[keep], labels[keep]
    if queries.numel() == 0:
        return []
    pad_hw = (mask_logits.shape[-2] * 4, mask_logits.shape[-1] * 4)
    uniq, inverse = torch.unique(queries, return_inverse=True)
    masks_u, mscore_u = [], []
    for s in range(0, len(uniq), chunk):
        m = mask_logits[uniq[s:s + chunk]][:, None]
        m = F.interpolate(m, size=pad_hw, mode="bilinear", align_corners=False)
        m = m[..., :valid_hw[0], :valid_hw[1]]
        m = F.interpolate(m, size=tuple(orig_hw), mode="bilinear", align_corners=False)[:, 0]
        binary = m > 0
        mscore_u.append((m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6))
        masks_u.append(binary)
    masks_u_t = torch.cat(masks_u)
    det_scores = top_scores * torch.cat(mscore_u)[inverse]
    order = torch.argsort(det_scores, descending=True, stable=True)
    dets = []
    for j in order.tolist():
        score = float(det_scores[j])
        if score < min_score:
            continue
        mask = masks_u_t[int(inverse[j])].cpu().numpy()
        box = mask2bbox(mask[None])[0]
        dets.append({"class": class_names[int(labels[j])], "box": tuple(float(v) for v in box),
                     "score": score, "mask": mask})
    return dets


def _load_error(what: str, name: str, e: Exception) -> RuntimeError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("CAPO_OFFLINE")
    hint = (" Offline (HF_HUB_OFFLINE/CAPO_OFFLINE set): the model must already be in the Hugging "
            "Face cache, or pass a local directory saved with save_pretrained()." if offline else "")
    return RuntimeError(f"could not load {what} {name!r}: {e}.{hint}")


@register_detector("mask2former")
def mask2former_detector(model_id_or_path: str = DEFAULT_MASK2FORMER, *, device: str | None = None,
                         min_score: float = THRESHOLD, max_per_image: int = 100, batch_size: int = 4,
                         model=None, processor=None) -> Detector:
    """COCO instance segmentation with transformers' Mask2Former (hub id or local path; or pass
    ``model`` and ``processor`` objects). Labels are mapped to GenEval's names (``to_geneval_name``).

    Not bit-identical to upstream, which runs mmdet's Mask2Former Swin-S checkpoint
    (``mmdet`` backend) at its own input resolution; the post-processing
    (``mask2former_instances``) is mmdet's.
    """
    import torch

    if model is None or processor is None:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        try:
            model = model or Mask2FormerForUniversalSegmentation.from_pretrained(model_id_or_path)
            processor = processor or AutoImageProcessor.from_pretrained(model_id_or_path)
        except Exception as e:
            raise _load_error("the Mask2Former detector", model_id_or_path, e) from e
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    id2label = model.config.id2label
    names = [to_geneval_name(id2label[i]) for i in range(len(id2label))]

    @torch.no_grad()
    def detect(images: Sequence[Any]) -> list[list[dict]]:
        out: list[list[dict]] = []
        for s in range(0, len(images), batch_size):
            pil = [_to_pil_rgb(im) for im in images[s:s + batch_size]]
            inputs = processor(images=pil, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(device)
            pixel_mask = inputs.get("pixel_mask")
            if pixel_mask is None:
                pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.long)
            outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask.to(device))
            for i, im in enumerate(pil):
                pm = pixel_mask[i].bool()
                valid = (int(pm.any(dim=1).sum()), int(pm.any(dim=0).sum()))
                mask_logits = outputs.masks_queries_logits[i]
                # mask logits are at 1/4 of the padded input; mask2former_instances upsamples x4
                if mask_logits.shape[-2] * 4 != pixel_values.shape[-2]:
                    mask_logits = torch.nn.functional.interpolate(
                        mask_logits[None], size=(pixel_values.shape[-2] // 4, pixel_values.shape[-1] // 4),
                        mode="bilinear", align_corners=False)[0]
                out.append(mask2former_instances(
                    outputs.class_queries_logits[i].cpu(), mask_logits.cpu(), valid, (im.height, im.width),
                    names, min_score=min_score, max_per_image=max_per_image))
        return out

    detect.class_names = names  # type: ignore[attr-defined]
    return detect


MMDET_HELP = (
    "the 'mmdet' detector (GenEval's own) needs mmdet, mmcv and mmengine: pip install 'capo[mmdet]' "
    "(mmcv compiles from source, about 11 minutes on 2 cores; upstream pins mmdet==2.27.0), and the "
    f"upstream checkpoint {UPSTREAM_MMDET_MODEL}.pth from {UPSTREAM_MMDET_CHECKPOINT_URL}. "
    "The 'mask2former' detector (transformers) needs neither."
)


def parse_mmdet_result(result, class_names: Sequence[str] = OBJECT_NAMES,
                       min_score: float = THRESHOLD) -> list[dict]:
    """Detections from one ``inference_detector`` result: mmdet 2.x ``(bbox_per_class,
    segm_per_class)`` (what upstream reads: ``bbox[index][:, 4]`` is the score, class ``index``
    is ``classnames[index]``) or mmdet 3.x ``DetDataSample.pred_instances``."""
    dets = []
    if hasattr(result, "pred_instances"):
        inst = result.pred_instances
        boxes = inst.bboxes.cpu().numpy()
        scores = inst.scores.cpu().numpy()
        labels = inst.labels.cpu().numpy()
        masks = inst.masks.cpu().numpy() if hasattr(inst, "masks") else None
        for j in range(len(scores)):
            if scores[j] >= min_score:
                dets.append({"class": class_names[int(labels[j])], "box": tuple(map(float, boxes[j][:4])),
                             "score": float(scores[j]), "mask": None if masks is None else masks[j].astype(bool)})
        return dets
    bbox = result[0] if isinstance(result, tuple) else result
    segm = result[1] if isinstance(result, tuple) and len(result) > 1 else None
    if len(bbox) != len(class_names):
        raise ValueError(f"mmdet result has {len(bbox)} classes, expected {len(class_names)}")
    for index, name in enumerate(class_names):
        arr = np.asarray(bbox[index]).reshape(-1, 5)
        for j in range(arr.shape[0]):
            if arr[j, 4] >= min_score:
                mask = None if segm is None else np.asarray(segm[index][j], dtype=bool)
                dets.append({"class": name, "box": tuple(map(float, arr[j, :4])), "score": float(arr[j, 4]),
                             "mask": mask})
    return dets


@register_detector("mmdet")
def mmdet_detector(checkpoint: str | None = None, config: str | None = None, *, device: str | None = None,
                   min_score: float = THRESHOLD) -> Detector:
    """Upstream's detector: mmdet ``init_detector`` / ``inference_detector`` with the Mask2Former
    Swin-S COCO config and checkpoint (``UPSTREAM_MMDET_CHECKPOINT_URL``)."""
    try:
        import mmdet
        from mmdet.apis import inference_detector, init_detector
    except ImportError as e:
        raise RuntimeError(MMDET_HELP) from e
    import torch

    if checkpoint is None or not os.path.isfile(checkpoint):
        raise RuntimeError(f"mmdet detector: checkpoint file {checkpoint!r} not found. {MMDET_HELP}")
    if config is None:
        root = os.path.dirname(mmdet.__file__)
        candidates = [  # upstream's path (mmdet 2.x), then mmdet 3.x's packaged configs
            os.path.join(root, "../configs/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py"),
            os.path.join(root, ".mim/configs/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py"),
        ]
        config = next((c for c in candidates if os.path.isfile(c)), None)
        if config is None:
            raise RuntimeError(f"mmdet detector: no Mask2Former config found (looked at {candidates}); "
                               "pass config=")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = init_detector(config, checkpoint, device=device)

    def detect(images: Sequence[Any]) -> list[list[dict]]:
        out = []
        for im in images:
            bgr = np.ascontiguousarray(np.asarray(_to_pil_rgb(im))[:, :, ::-1])  # mmcv reads BGR
            out.append(parse_mmdet_result(inference_detector(model, bgr), OBJECT_NAMES, min_score))
        return out

    detect.class_names = list(OBJECT_NAMES)  # type: ignore[attr-defined]
    return detect
