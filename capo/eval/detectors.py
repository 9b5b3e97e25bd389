"""Detector and depth-model factories for T2I-CompBench's spatial, numeracy and 3D-spatial scores.

T2I-CompBench (``UniDet_eval/``) detects objects with UniDet, a detectron2 model over a
722-name merged label space (Objects365 + COCO + OpenImages + Mapillary), and estimates depth
with MiDaS DPT-Hybrid. UniDet cannot be installed from the package index, so:

=================  ==========================================================================
``"owlv2"``        open-vocabulary detection with transformers' OWLv2 (default hub id
                   ``google/owlv2-base-patch16-ensemble``): the scorer passes the nouns it
                   looks for as ``queries``; each detection's ``class`` is the noun queried.
                   A named variant of upstream's detector.
``"unidet"``       upstream's own detector when the user supplies its stack: detectron2
                   installed and upstream's ``UniDet_eval`` folder (its ``experts`` package,
                   configs and ``expert_weights``) at ``root=`` or ``$CAPO_UNIDET_ROOT``.
                   Raises a ``RuntimeError`` naming what to install when detectron2 is absent.
``"mask2former"``  (``capo.eval.geneval``) COCO-80 instance segmentation, kept as an option:
                   it can score only the prompts whose nouns are COCO classes.
=================  ==========================================================================

Detector protocol (``capo.eval.geneval.Detector``, extended): ``detect(images)`` or, for an
open-vocabulary detector (``detect.open_vocabulary is True``), ``detect(images, queries=...)``
with ``queries`` one list of nouns for every image or one list per image. Out: one list per
image of ``{"class", "box": (x0, y0, x1, y1) in pixels of the image passed in, "score"}``,
most confident first. ``detect.score_threshold`` is the detector's own confidence cut
(UniDet: 0.5, upstream's ``--confidence-threshold``); closed-vocabulary detectors expose
their label space as ``detect.class_names``.

``depth_estimator`` builds the depth model of the 3D-spatial score: transformers' DPT with
``Intel/dpt-hybrid-midas`` (the Hugging Face conversion of the ``dpt_hybrid-midas-501f0c75.pt``
checkpoint upstream downloads) fed as upstream feeds it (squashed to 480 x 480, mean = std =
0.5), or Depth-Anything (relative inverse depth too, so the same rule applies; a variant).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

import numpy as np

from capo.eval.geneval import Detector, _load_error, _to_pil_rgb, register_detector

# --------------------------------------------------------------------------- UniDet constants

# UniDet_eval/experts/model_bank.py: transforms.Resize(size=479, max_size=480) before detection
UNIDET_RESIZE = (479, 480)
UNIDET_SCORE_THRESHOLD = 0.5  # --confidence-threshold default; detectron2 keeps score > it
# Which checkpoint each upstream script loads (2D_spatial_eval.py: "RS200"; numeracy_eval.py:
# "R50"; 3D_spatial_eval.py: model_bank_3d.py, always R50).
UNIDET_CHECKPOINTS = {
    "RS200": ("experts/obj_detection/configs/Unified_learned_OCIM_RS200_6x+2x.yaml",
              "experts/expert_weights/Unified_learned_OCIM_RS200_6x+2x.pth"),
    "R50": ("experts/obj_detection/configs/Unified_learned_OCIM_R50_6x+2x.yaml",
            "experts/expert_weights/Unified_learned_OCIM_R50_6x+2x.pth"),
}
UNIDET_CHECKPOINT_OF_CATEGORY = {"spatial": "RS200", "complex": "RS200", "numeracy": "R50", "3d_spatial": "R50"}
UNIDET_HELP = (
    "the 'unidet' detector is T2I-CompBench's own (UniDet on detectron2), which no package index "
    "ships: install detectron2 (pip install 'git+https://github.com/facebookresearch/detectron2.git', "
    "built against your torch), clone Karine-Huang/T2I-CompBench, download its UniDet weights into "
    "UniDet_eval/experts/expert_weights/ (Unified_learned_OCIM_RS200_6x+2x.pth for spatial/complex, "
    "Unified_learned_OCIM_R50_6x+2x.pth for numeracy/3d_spatial; see its Readme) and pass root= or "
    "set CAPO_UNIDET_ROOT to its UniDet_eval folder. The 'owlv2' detector (transformers) needs none "
    "of this."
)

# UniDet_eval/dataset/detection_features.pt ['labels'] @ 1b70949 (sha256 c38ba935...c76):
# obj_label_map, the class names upstream compares prompt nouns with (722, 677 distinct).
UNIDET_LABELS = (
    'bottle', 'cup', 'dining table', 'cake', 'wild bird', 'knife', 'remote', 'microwave',
    'frisbee', 'toothbrush', 'footwear, sneakers', 'picture, frame', 'table, desk', 'street light',
    'book', 'helmet', 'pillow', 'box, storage box', 'bowl', 'watercraft, boat', 'flag', 'stool',
    'doll, toy', 'pen, pen/pencil', 'microphone', 'tap, faucet', 'bread', 'sandal, high heels',
    'fish', 'camera', 'candle', 'paddle', 'drum', 'guitar', 'kettle, tea pot', 'ceiling fan, fan',
    'whiteboard, blackboard', 'balloon', 'corded phone, telephone', 'orange', 'football, soccer',
    'toilet paper, paper towel', 'tomato', 'tent', 'lantern', 'kite', 'gas stove',
    'spatula, shovel', 'rifle, gun', 'lemon', 'squash, pumpkin', 'musical keyboard, piano',
    'washing machine', 'cookie, cookies', 'cutting board, cutting/chopping board',
    'roller skates, skating and skiing shoes', 'cricket ball, baseball', 'strawberry',
    'coffeemaker, coffee machine', 'suitcase', 'grape, grapes', 'ladder', 'pear',
    'rugby ball, american football', 'printer', 'duck, goose', 'tennis ball', 'chopsticks',
    'hamburger', 'cucumber', 'mixer, blender', 'deer', 'egg', 'barge, ship', 'turkey, chicken',
    'ice cream', 'adhesive tape, tape', 'wheelchair', 'cabbage', 'golf ball', 'peach', 'cello',
    'helicopter', 'penguin', 'swan', 'french fries', 'saxophone', 'trombone, trumpet',
    'raccoon, bear', 'tablet computer, tablet', 'volleyball', 'dumbbell', 'camel', 'goldfish',
    'antelope', 'shrimp', 'cart, rickshaw', 'coconut', 'jellyfish', 'treadmill', 'butterfly',
    'pig', 'shower, hair drier', 'asparagus, green onion', 'dolphin', 'sushi',
    'burrito, spring rolls', 'tortoise, tortoise/turtle', 'parrot', 'flute', 'shark', 'binoculars',
    'alpaca, llama', 'pasta, noodles', 'shellfish, crab', 'lion', 'polar bear', 'sea lion, seal',
    'table tennis racket, table tennis paddle', 'starfish', 'falcon, eagle', 'monkey', 'rabbit',
    'ambulance', 'segway, hoverboard', 'truck', 'boat', 'bear', 'handbag', 'ball', 'sandwich',
    'bidet', 'computer monitor', 'vase', 'person', 'chair', 'car', 'houseplant, potted plant',
    'bench', 'wine glass', 'umbrella', 'backpack', 'loveseat, couch', 'tie', 'infant bed, bed',
    'traffic light', 'bicycle', 'sink', 'horse', 'apple', 'teddy bear', 'motorcycle', 'laptop',
    'mobile phone, cell phone', 'cattle, cow', 'clock', 'fork', 'bus', 'sheep',
    'computer keyboard, keyboard', 'dog', 'spoon', 'mouse2, mouse', 'banana', 'airplane',
    'briefcase, luggage', 'ski, skis', 'baseball glove', 'refrigerator', 'train',
    'doughnut, donut', 'grapefruit, tangerine', 'pizza', 'elephant', 'broccoli', 'baseball bat',
    'skateboard', 'surfboard', 'cat', 'zebra', 'giraffe', 'stop sign', 'carrot', 'tennis racket',
    'scissors', 'snowboard', 'fire hydrant', 'hot dog', 'toaster', 'hat', 'lamp', 'cabinet/shelf',
    'glasses', 'handbag', 'plate', 'leather shoes', 'glove', 'bracelet', 'flower', 'tv', 'vase',
    'boots', 'speaker', 'trash bin, can', 'belt', 'carpet', 'basket', 'towel, napkin', 'slippers',
    'barrel, bucket', 'coffee table', 'suv', 'sandals', 'canned', 'necklace', 'mirror', 'ring',
    'van', 'watch', 'traffic sign', 'truck', 'power outlet', 'hanger', 'nightstand', 'pot, pan',
    'traffic cone', 'tripod', 'hockey', 'air conditioner', 'cymbal', 'pickup truck', 'trolley',
    'oven', 'machinery vehicle', 'shampoo, shower gel', 'head phone', 'cleaning products',
    'sailboat', 'computer box', 'toiletries', 'toilet', 'stroller', 'surveillance camera',
    'life saver', 'liquid soap', 'duck', 'sports car', 'radiator', 'converter', 'tissue ', 'vent',
    'candy', 'folder', 'bow tie', 'pigeon', 'pepper', 'bathtub', 'basketball', 'potato',
    'paint brush', 'billiards', 'projector', 'sausage', 'fire extinguisher', 'extension cord',
    'facial mask', 'electronic stove and gas stove', 'pie', 'kettle', 'golf club', 'clutch',
    'tong', 'slide', 'facial cleanser', 'mango', 'violin', 'marker', 'onion', 'plum', 'bar soap',
    'scale', 'watermelon', 'router, modem', 'pine apple', 'crane', 'fire truck', 'notepaper',
    'tricycle', 'green beans', 'brush', 'carriage', 'cigar', 'earphone', 'hurdle', 'swing',
    'radio', 'cd', 'parking meter', 'garlic', 'horn', 'avocado', 'sandwich', 'cue', 'kiwi fruit',
    'fishing rod', 'cherry', 'green vegetables', 'nuts', 'corn', 'key', 'screwdriver', 'globe',
    'broom', 'pliers', 'hammer', 'eggplant', 'trophy', 'dates', 'board eraser', 'rice',
    'tape measure, ruler', 'hamimelon', 'stapler', 'lettuce', 'meat balls', 'medal', 'toothpaste',
    'trombone', 'pomegranate', 'mushroom', 'calculator', 'egg tart', 'cheese', 'pomelo',
    'race car', 'rice cooker', 'tuba', 'crosswalk sign', 'papaya', 'chips', 'urinal', 'donkey',
    'electric drill', 'measuring cup', 'steak', 'poker card', 'radish', 'yak', 'mop', 'microscope',
    'barbell', 'bread/bun', 'baozi', 'red cabbage', 'lighter', 'mangosteen', 'comb', 'eraser',
    'pitaya', 'scallop', 'pencil case', 'saw', 'okra', 'durian', 'game board', 'french horn',
    'asparagus', 'pasta', 'target', 'hotair balloon', 'chainsaw', 'lobster', 'iron', 'flashlight',
    'parking meter', 'kite', 'bowl', 'oven', 'book', 'hair drier', 'rose', 'flashlight',
    'sea turtle', 'animal', 'glove', 'crocodile', 'house', 'guacamole',
    'vehicle registration plate', 'bench1', 'ladybug', 'human nose', 'watermelon', 'taco', 'cake',
    'cannon', 'tree', 'bed', 'hamster', 'hat', 'sombrero', 'tiara', 'dragonfly',
    'moths and butterflies', 'vegetable', 'torch', 'building', 'power plugs and sockets',
    'blender', 'billiard table', 'bronze sculpture', 'turtle', 'tiger', 'mirror', 'zucchini',
    'dress', 'reptile', 'golf cart', 'tart', 'fedora', 'carnivore', 'lighthouse', 'food processor',
    'bookcase', 'necklace', 'flower', 'radish', 'marine mammal', 'frying pan', 'knife',
    'christmas tree', 'eagle', 'limousine', 'kitchen & dining room table', 'tower', 'willow',
    'human head', 'dessert', 'bee', 'wood-burning stove', 'flowerpot', 'beaker', 'oyster',
    'woodpecker', 'harp', 'bathtub', 'wall clock', 'sports uniform', 'rhinoceros', 'beehive',
    'cupboard', 'chicken', 'man', 'blue jay', 'fireplace', 'missile', 'squirrel', 'coat',
    'punching bag', 'billboard', 'door handle', 'mechanical fan', 'ring binder', 'sock', 'weapon',
    'shotgun', 'glasses', 'seahorse', 'belt', 'window', 'tire', 'vehicle', 'canoe', 'shelf',
    'human leg', 'slow cooker', 'croissant', 'pancake', 'coin', 'stretcher', 'woman', 'stairs',
    'harpsichord', 'human mouth', 'juice', 'skull', 'door', 'violin', 'digital clock', 'sunflower',
    'leopard', 'bell pepper', 'harbor seal', 'snake', 'sewing machine', 'goose', 'seat belt',
    'coffee cup', 'microwave oven', 'countertop', 'serving tray', 'dog bed', 'beer', 'sunglasses',
    'waffle', 'palm tree', 'trumpet', 'ruler', 'office building', 'pomegranate', 'skirt', 'raven',
    'goat', 'kitchen knife', 'salt and pepper shakers', 'lynx', 'boot', 'platter', 'swimwear',
    'swimming pool', 'drinking straw', 'wrench', 'ant', 'human ear', 'headphones', 'fountain',
    'bird', 'jeans', 'television', 'crab', 'home appliance', 'snowplow', 'beetle', 'artichoke',
    'jet ski', 'stationary bicycle', 'human hair', 'brown bear', 'lobster', 'drink', 'saucer',
    'insect', 'castle', 'jaguar', 'musical instrument', 'taxi', 'pitcher', 'invertebrate',
    'high heels', 'bust', 'scarf', 'barrel', 'pumpkin', 'frog', 'human face', 'van', 'swim cap',
    'ostrich', 'handgun', 'lizard', 'snowmobile', 'light bulb', 'window blind', 'muffin',
    'pretzel', 'horn', 'furniture', 'fox', 'convenience store', 'fruit', 'earrings', 'curtain',
    'sofa bed', 'luggage and bags', 'desk', 'crutch', 'bicycle helmet', 'tick', 'canary', 'watch',
    'lily', 'kitchen appliance', 'filing cabinet', 'aircraft', 'cake stand', 'candy', 'mouse1',
    'wine', 'drawer', 'picnic basket', 'dice', 'football helmet', 'shorts', 'gondola', 'honeycomb',
    'chest of drawers', 'land vehicle', 'bat', 'dagger', 'tableware', 'human foot', 'mug',
    'alarm clock', 'pressure cooker', 'human hand', 'sword', 'miniskirt', 'traffic sign', 'girl',
    'dinosaur', 'porch', 'human beard', 'submarine sandwich', 'screwdriver', 'seafood', 'racket',
    'wheel', 'toy', 'tea', 'waste container', 'mule', 'pineapple', 'coffee table', 'snowman',
    'lavender', 'maple', 'cowboy hat', 'goggles', 'caterpillar', 'poster', 'rocket', 'organ',
    'cocktail', 'plastic bag', 'mushroom', 'light switch', 'parachute', 'winter melon',
    'plumbing fixture', 'scoreboard', 'envelope', 'bow and arrow', 'telephone', 'jacket', 'boy',
    'otter', 'office supplies', 'couch', 'bull', 'whale', 'shirt', 'tank', 'accordion', 'owl',
    'porcupine', 'sun hat', 'nail', 'lamp', 'crown', 'piano', 'sculpture', 'cheetah', 'oboe',
    'tin can', 'mango', 'tripod', 'oven', 'coffee', 'common fig', 'salad', 'marine invertebrates',
    'kangaroo', 'human arm', 'measuring cup', 'snail', 'suit', 'teapot', 'bottle', 'trousers',
    'popcorn', 'centipede', 'spider', 'sparrow', 'plate', 'bagel', 'personal care', 'brassiere',
    'bathroom cabinet', 'studio couch', 'cabinetry', 'towel', 'nightstand', 'jug', 'wok',
    'human eye', 'skyscraper', 'potato', 'paper towel', 'lifejacket', 'bicycle wheel', 'toilet',
    'crosswalk', 'bicyclist', 'motorcyclist', 'other rider', 'crosswalk zebra', 'banner',
    'bike rack', 'catch basin', 'cctv camera', 'junction box', 'mailbox', 'manhole', 'phone booth',
    'street light', 'pole', 'traffic sign frame', 'utility pole', 'traffic sign back', 'boat',
    'caravan', 'trailer',
)


def unidet_input_size(width: int, height: int, size: int = UNIDET_RESIZE[0],
                      max_size: int = UNIDET_RESIZE[1]) -> tuple[int, int]:
    """``(w, h)`` after torchvision ``Resize(size=479, max_size=480)``: the short side to 479,
    the long side in proportion (truncated), capped at 480 (then the short side shrinks)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    if new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def run_detector(detector, images: Sequence[Any], queries: Sequence[Sequence[str]] | None = None) -> list[list[dict]]:
    """Detections per image: ``detector(images, queries=queries)`` for an open-vocabulary
    detector (``detector.open_vocabulary``), ``detector(images)`` for a closed one."""
    if getattr(detector, "open_vocabulary", False):
        return detector(images, queries=queries)
    return detector(images)


def _queries_per_image(queries, n: int) -> list[list[str]]:
    if queries is None:
        raise ValueError("an open-vocabulary detector needs queries: the nouns to look for, one list for "
                         "every image or one list per image")
    if isinstance(queries, str):
        raise TypeError("queries must be a list of nouns (or one list per image), not a string")
    queries = list(queries)
    if all(isinstance(q, str) for q in queries):
        return [list(dict.fromkeys(queries)) for _ in range(n)]
    if len(queries) != n:
        raise ValueError(f"{len(queries)} query lists for {n} images")
    out = []
    for i, q in enumerate(queries):
        if isinstance(q, str) or not all(isinstance(x, str) for x in q):
            raise TypeError(f"queries[{i}] must be a list of nouns, got {q!r:.80}")
        out.append(list(dict.fromkeys(q)))
    return out


# --------------------------------------------------------------------------- OWLv2

DEFAULT_OWLV2 = "google/owlv2-base-patch16-ensemble"
OWLV2_SCORE_THRESHOLD = 0.1     # transformers' post_process_object_detection default
OWLV2_NMS_THRESHOLD = 0.3       # per-class greedy NMS (OWL-ViT emits one box per image patch)
OWLV2_QUERY_TEMPLATE = "a photo of a {}"


def owlv2_detections(logits, pred_boxes, names: Sequence[str], image_hw: tuple[int, int], *,
                     min_score: float = OWLV2_SCORE_THRESHOLD,
                     nms_threshold: float = OWLV2_NMS_THRESHOLD) -> list[dict]:
    """One image's detections from OWLv2 outputs: ``logits`` (P, >= len(names)) per patch and
    query (columns past ``len(names)`` are batch padding and ignored), ``pred_boxes`` (P, 4)
    ``(cx, cy, w, h)`` in [0, 1] of the square the image was padded to (bottom/right).

    Per patch: the best of the image's own queries, score = sigmoid(logit), kept if
    ``> min_score``; box scaled by ``max(h, w)`` (the padded side) into pixels of the original
    image and clipped to it; per-class NMS at ``nms_threshold`` (none at >= 1); most
    confident first. ``class`` is ``names[query]``.
    """
    import torch

    n = len(names)
    if n == 0:
        return []
    logits = torch.as_tensor(logits).float()[:, :n]
    boxes = torch.as_tensor(pred_boxes).float()
    scores, labels = logits.sigmoid().max(dim=-1)
    keep = scores > min_score
    scores, labels, boxes = scores[keep], labels[keep], boxes[keep]
    h, w = image_hw
    side = float(max(h, w))
    cx, cy, bw, bh = boxes.unbind(-1)
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1) * side
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    if nms_threshold < 1 and len(scores):
        from torchvision.ops import batched_nms

        order = batched_nms(xyxy, scores, labels, nms_threshold)
    else:
        order = torch.argsort(scores, descending=True, stable=True)
    return [{"class": names[int(labels[j])], "box": tuple(float(v) for v in xyxy[j]), "score": float(scores[j])}
            for j in order.tolist()]


@register_detector("owlv2")
def owlv2_detector(model_id_or_path: str = DEFAULT_OWLV2, *, device: str | None = None,
                   min_score: float = OWLV2_SCORE_THRESHOLD, nms_threshold: float = OWLV2_NMS_THRESHOLD,
                   query_template: str = OWLV2_QUERY_TEMPLATE, batch_size: int = 4,
                   model=None, processor=None) -> Detector:
    """Open-vocabulary detector: transformers' ``Owlv2ForObjectDetection`` + ``Owlv2Processor``
    (hub id or local path; or pass ``model`` and ``processor`` objects).

    ``detect(images, queries)``: each noun is asked as ``query_template.format(noun)``; the
    post-processing is ``owlv2_detections``. Images in a batch are independent (their query
    lists are padded to the longest and the padding is ignored), so results do not depend on
    ``batch_size``. ``detect.score_threshold = min_score``.
    """
    import torch

    source = model_id_or_path if model is None else "custom"
    if model is None or processor is None:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        try:
            model = model or Owlv2ForObjectDetection.from_pretrained(model_id_or_path)
            processor = processor or Owlv2Processor.from_pretrained(model_id_or_path)
        except Exception as e:
            raise _load_error("the OWLv2 detector", model_id_or_path, e) from e
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()

    @torch.no_grad()
    def detect(images: Sequence[Any], queries=None) -> list[list[dict]]:
        per_image = _queries_per_image(queries, len(images))
        out: list[list[dict]] = [[] for _ in images]
        todo = [i for i in range(len(images)) if per_image[i]]
        for s in range(0, len(todo), batch_size):
            idx = todo[s:s + batch_size]
            pil = [_to_pil_rgb(images[i]) for i in idx]
            texts = [[query_template.format(q) for q in per_image[i]] for i in idx]
            inputs = processor(text=texts, images=pil, return_tensors="pt", truncation=True)
            outputs = model(**{k: v.to(device) for k, v in inputs.items()})
            for b, (i, im) in enumerate(zip(idx, pil)):
                out[i] = owlv2_detections(outputs.logits[b].cpu(), outputs.pred_boxes[b].cpu(), per_image[i],
                                          (im.height, im.width), min_score=min_score, nms_threshold=nms_threshold)
        return out

    detect.open_vocabulary = True  # type: ignore[attr-defined]
    detect.score_threshold = min_score  # type: ignore[attr-defined]
    detect.name = f"owlv2:{source}"  # type: ignore[attr-defined]
    return detect


# --------------------------------------------------------------------------- UniDet (upstream's)


def unidet_root(root: str | os.PathLike | None = None) -> str | None:
    """Upstream's ``UniDet_eval`` folder: ``root`` or ``$CAPO_UNIDET_ROOT`` (None if neither)."""
    root = root or os.environ.get("CAPO_UNIDET_ROOT")
    return os.fspath(root) if root else None


def unidet_available(root: str | os.PathLike | None = None, ckpt: str = "RS200") -> bool:
    """Is upstream's UniDet stack supplied: detectron2 importable, and ``root`` (or
    ``$CAPO_UNIDET_ROOT``) holding the ``experts.obj_detection.unidet`` package and the
    ``ckpt`` config and weights?"""
    import importlib.util

    root = unidet_root(root)
    if root is None or importlib.util.find_spec("detectron2") is None:
        return False
    config, weights = UNIDET_CHECKPOINTS[ckpt]
    return all(os.path.exists(os.path.join(root, p)) for p in
               ("experts/obj_detection/unidet/config.py", config, weights))


def unidet_instances(prediction, labels: Sequence[str], scale_xy: tuple[float, float] = (1.0, 1.0)) -> list[dict]:
    """Detections from one detectron2 prediction (``{"instances": Instances}``), as upstream
    reads it (``pred_boxes.tensor``, ``scores``, ``pred_classes``; class name
    ``labels[pred_class]``), boxes multiplied by ``scale_xy`` (the detector's frame -> the
    original image), in the model's order (most confident first)."""
    fields = prediction["instances"].get_fields()
    boxes = fields["pred_boxes"].tensor.float().cpu().numpy()
    scores = fields["scores"].float().cpu().numpy()
    classes = fields["pred_classes"].cpu().numpy()
    sx, sy = scale_xy
    return [{"class": labels[int(c)], "box": (float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy),
             "score": float(s)} for b, s, c in zip(boxes, scores, classes)]


def unidet_input(image) -> tuple[dict, tuple[float, float]]:
    """Upstream's detector input for one image (``generate_dataset.py``): RGB, torchvision
    ``Resize(size=479, max_size=480)`` (PIL bilinear), channels reversed to BGR, float32 CHW;
    ``height``/``width`` of the resized image. Also ``(sx, sy)`` mapping its boxes back to
    the original image's pixels."""
    import torch
    from PIL import Image

    im = _to_pil_rgb(image)
    w, h = unidet_input_size(im.width, im.height)
    small = im.resize((w, h), Image.BILINEAR)
    arr = np.asarray(small)[:, :, ::-1].astype("float32").transpose(2, 0, 1)
    return {"image": torch.as_tensor(np.ascontiguousarray(arr)), "height": h, "width": w}, (im.width / w, im.height / h)


@register_detector("unidet")
def unidet_detector(root: str | os.PathLike | None = None, *, ckpt: str = "RS200", config_file: str | None = None,
                    weights: str | None = None, labels: Sequence[str] = UNIDET_LABELS, device: str | None = None,
                    confidence_threshold: float = UNIDET_SCORE_THRESHOLD, fp16: bool = True, batch_size: int = 8,
                    model=None) -> Detector:
    """T2I-CompBench's detector: UniDet (``Unified_learned_OCIM_<ckpt>_6x+2x``) on detectron2,
    built as ``experts/model_bank.py`` builds it (``setup_cfg``: the config, the weights, every
    score threshold at ``confidence_threshold``; ``DefaultPredictor(cfg).model``), fed as
    ``generate_dataset.py`` feeds it (``unidet_input``), under fp16 autocast on CUDA as
    upstream's ``Accelerator(mixed_precision='fp16')``. Boxes come back in the original
    image's pixels. ``ckpt``: "RS200" (2D spatial, complex) or "R50" (numeracy, 3D spatial).
    ``model``: an already-built detectron2 model (tests).
    """
    import torch

    if model is None:
        try:
            import detectron2  # noqa: F401
            from detectron2.config import get_cfg
            from detectron2.engine.defaults import DefaultPredictor
        except ImportError as e:
            raise RuntimeError(f"detectron2 is not installed: {UNIDET_HELP}") from e
        root = unidet_root(root)
        if root is None:
            raise RuntimeError(f"no UniDet_eval folder given (root= or CAPO_UNIDET_ROOT): {UNIDET_HELP}")
        if ckpt not in UNIDET_CHECKPOINTS:
            raise ValueError(f"ckpt must be one of {sorted(UNIDET_CHECKPOINTS)}, got {ckpt!r}")
        cfg_rel, w_rel = UNIDET_CHECKPOINTS[ckpt]
        config_file = config_file or os.path.join(root, cfg_rel)
        weights = weights or os.path.join(root, w_rel)
        missing = [p for p in (config_file, weights) if not os.path.isfile(p)]
        if missing:
            raise RuntimeError(f"UniDet files not found: {', '.join(missing)}. {UNIDET_HELP}")
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            from experts.obj_detection.unidet.config import add_unidet_config
        except ImportError as e:
            raise RuntimeError(f"cannot import UniDet from {root}/experts/obj_detection/unidet ({e}). "
                               f"{UNIDET_HELP}") from e
        cfg = get_cfg()
        add_unidet_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(["MODEL.WEIGHTS", weights])
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
        if device:
            cfg.MODEL.DEVICE = device
        cfg.freeze()
        model = DefaultPredictor(cfg).model
    model.eval()
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")

    @torch.no_grad()
    def detect(images: Sequence[Any], queries=None) -> list[list[dict]]:
        out: list[list[dict]] = []
        for s in range(0, len(images), batch_size):
            batch = [unidet_input(im) for im in images[s:s + batch_size]]
            with torch.autocast("cuda", enabled=fp16 and dev.startswith("cuda")):
                preds = model([b[0] for b in batch])
            out.extend(unidet_instances(p, labels, b[1]) for p, b in zip(preds, batch))
        return out

    detect.open_vocabulary = False  # type: ignore[attr-defined]
    detect.score_threshold = confidence_threshold  # type: ignore[attr-defined]
    detect.class_names = tuple(labels)  # type: ignore[attr-defined]
    detect.name = f"unidet:{ckpt}"  # type: ignore[attr-defined]
    return detect


# --------------------------------------------------------------------------- depth

DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"  # = upstream's dpt_hybrid-midas-501f0c75.pt
DEPTH_INPUT = {  # model_type -> (square input side, mean, std)
    "dpt": (480, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # model_bank_3d.py: Resize([480, 480]), Normalize(0.5, 0.5)
    "depth_anything": (518, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # its processor's size and stats
}


def depth_estimator(model_id_or_path: str = DEFAULT_DEPTH_MODEL, *, device: str | None = None,
                    input_size: int | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, batch_size: int = 8,
                    model=None) -> Callable[[Sequence[Any]], list[np.ndarray]]:
    """Relative inverse depth (larger = nearer), as upstream's MiDaS DPT: ``depth(images) ->``
    one float32 array per image at the model's output resolution (the caller normalises and
    resizes it: ``t2i_compbench.upstream_depth_png``).

    Input as ``model_bank_3d.py``: RGB squashed to ``input_size`` x ``input_size`` (PIL
    bilinear), scaled to [0, 1], ``(x - mean) / std``; defaults per ``model.config.model_type``
    (``DEPTH_INPUT``: DPT 480 / 0.5 / 0.5 as upstream; Depth-Anything 518 / ImageNet stats).
    Any ``AutoModelForDepthEstimation`` checkpoint loads (``Intel/dpt-hybrid-midas``,
    ``depth-anything/Depth-Anything-V2-Small-hf``, ...).
    """
    import torch
    from PIL import Image

    source = model_id_or_path if model is None else "custom"
    if model is None:
        from transformers import AutoModelForDepthEstimation

        try:
            model = AutoModelForDepthEstimation.from_pretrained(model_id_or_path)
        except Exception as e:
            raise _load_error("the depth model", model_id_or_path, e) from e
    model_type = getattr(model.config, "model_type", "dpt")
    side, m, sd = DEPTH_INPUT.get(model_type, DEPTH_INPUT["dpt"])
    side = int(input_size or side)
    mean_t = torch.tensor(mean or m, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std or sd, dtype=torch.float32).view(3, 1, 1)
    # transformers' DPT-Hybrid embeddings refuse inputs other than config.image_size (384) although
    # they resize their position embeddings to any grid, as MiDaS does: let them see `side`.
    emb = getattr(getattr(model, "dpt", None), "embeddings", None)
    if emb is not None and hasattr(emb, "image_size") and getattr(model.config, "is_hybrid", False):
        emb.image_size = (side, side)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()

    def pixels(image):
        im = _to_pil_rgb(image).resize((side, side), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - mean_t) / std_t

    @torch.no_grad()
    def depth(images: Sequence[Any]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for s in range(0, len(images), batch_size):
            pv = torch.stack([pixels(im) for im in images[s:s + batch_size]]).to(device)
            pred = model(pixel_values=pv).predicted_depth
            out.extend(p.float().cpu().numpy() for p in pred)
        return out

    depth.name = f"{model_type}:{source}"  # type: ignore[attr-defined]
    depth.input_size = side  # type: ignore[attr-defined]
    return depth
