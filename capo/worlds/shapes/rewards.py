"""The shapes world's reward models: three learned proxies mirroring the paper's, and the
hidden truth as a "gold" reward for evaluation only.

==================  ==========================================  ==================  =====================
name                paper analogue, model                       score               bt_transform
==================  ==========================================  ==================  =====================
shapes-pref         MPS / PickScore: ``CLIPModel`` (ViT, patch   ``s * cos(i, t)``   identity
                    4 on 32x32, word-level text tower)
shapes-vqa          VQAScore: ``BlipForImageTextRetrieval``'s    ``P(yes)``          logit
                    image-text matching head
shapes-aesthetic    VILA: ``CLIPVisionModel`` + linear head,     ~1..10              temperature:0.9
                    image only
shapes-gold         none: ``truth.utility`` (NOT learned,        utility in [0, 1]   temperature:0.1
                    for evaluation only)
==================  ==========================================  ==================  =====================

Training (``train_rewards``), all from scratch on CPU, deterministic in ``seed`` when the
step counts (not the time budget) bind:

- data: ``images_per_record`` images for each of ``n_records`` training prompts
  (``grammar.prompt_sets(prompt_seed)["train"]``), drawn by a ``sample_images(records,
  rng)`` callable. The default, ``render_sampler``, renders a scene of the record and
  then, on purpose, sometimes gets it wrong (a scene of a perturbed prompt: swapped
  colours, wrong counts, flipped relations, other shapes; a missing or an extra object)
  and sometimes degrades it (blur, noise, colour shift, fading), so the pool looks like
  a mediocre generator's samples; ``pipeline_sampler`` draws a base model's samples and
  ``mixed_sampler`` mixes samplers. Every image is labelled once by the hidden truth
  (detections, alignment, aesthetic);
- ``shapes-pref``: Bradley-Terry loss ``-log sigmoid(R(x_w) - R(x_l))`` on all pairs of
  images of a prompt, the winner drawn by a simulated rater exactly as
  ``truth.simulate_choices`` draws it (``P(a) = sigmoid((u_a - u_b) / 0.1)``);
- ``shapes-vqa``: cross-entropy of the matching head on each image's own prompt and one
  hard-negative prompt (``perturb_prompt``, drawn afresh at every step); the label of
  every (image, prompt) pair is "yes" iff ``truth.alignment >= MATCH_THRESHOLD`` (a
  perturbed prompt that still matches is a "yes"; a degraded image of the right prompt
  may be a "no"). ``vqa_targets`` also offers graded targets (not the default);
- ``shapes-aesthetic``: squared error to ``1 + 9 * (truth.aesthetic + noise)``, noise
  ``N(0, AESTHETIC_LABEL_NOISE)`` standing in for raters' disagreement.

The learned models are imperfect on purpose (small, briefly trained, noisy labels): that
is what makes calibration and multi-reward selection matter. ``train_rewards`` measures
each against the hidden truth on held-out prompts and images.

Aesthetic temperature: one point of the 1-10 scale is 1/9 of the truth's aesthetic
range; a rater judging by aesthetics alone with the truth's Bradley-Terry temperature
(0.1) would read that as a logit of ``(1/9) / 0.1 = 1.11``, so ``T = 0.9`` (a one-point
gap is a 75% preference).

Prompts are strings (or prompt records, whose ``"prompt"`` is used); the gold reward
parses strings back to records with ``parse_prompt``, which inverts every phrasing of
``grammar`` (GenEval, CompBench and pretraining captions).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .grammar import (COMPLEX_WORDS, MAX_PROMPT_WORDS, NUMBERS, PLURALS, RELATIONS, SPATIAL_WORDS, VOCAB,
                      _article, prompt_sets, sample_scene, tokenize_words)
from .scene import BACKGROUND, COLORS, MAX_OBJECTS, SHAPES, SIZES, TEXTURES, Scene

PREF, VQA, AESTHETIC, GOLD = "shapes-pref", "shapes-vqa", "shapes-aesthetic", "shapes-gold"
LEARNED = (PREF, VQA, AESTHETIC)
AESTHETIC_TEMPERATURE = 0.9  # see the module docstring
AESTHETIC_LABEL_NOISE = 0.03  # std of the noise on truth.aesthetic labels (aesthetic units, [0, 1])
MATCH_THRESHOLD = 0.8  # truth.alignment at or above which an (image, prompt) pair is a "yes"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_BATCH_SIZE = 256

# Tower sizes. Vision: ViT on 32x32 with 4x4 patches (64 patches + CLS). Text: over the
# world's word-level vocabulary, MAX_LENGTH tokens.
MODEL_CONFIGS = {
    "tiny": dict(vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                 text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                 projection_dim=16),
    "default": dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4),
                    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
                    projection_dim=64),
}
PATCH_SIZE = 4


# =========================================================================== prompts
# A parsed prompt ("phrase"): {"prefix": bool ("a photo of"), "nps": [np, ...],
# "relation": None | relation, "style": "raw" | "spatial" | "complex", "verb": None | "is" | "was"}
# np = {"det": "article" | "number" | "the", "count": n, "shape": s, "size"?, "texture"?, "color"?}
# Relation prompts have two nps in text order, "A <relation> B".

_STYLE_WORDS = {"raw": {r: r for r in RELATIONS}, "spatial": SPATIAL_WORDS, "complex": COMPLEX_WORDS}
_REL_PHRASES = sorted({tuple(words.split()): rel for table in _STYLE_WORDS.values()
                       for rel, words in table.items()}.items(),
                      key=lambda kv: -len(kv[0]))
_REL_START = {words[0] for words, _ in _REL_PHRASES}
_ATTR_VALUES = {"size": SIZES, "texture": TEXTURES, "color": tuple(COLORS)}
_ATTR_OF = {v: k for k, vs in _ATTR_VALUES.items() for v in vs}
_ATTR_ORDER = ("size", "texture", "color")
_SHAPE_OF = {**{s: (s, False) for s in SHAPES}, **{PLURALS[s]: (s, True) for s in SHAPES}}
_NUMBER = {w: i for i, w in enumerate(NUMBERS) if i > 0}
_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _parse_np(words: list[str], prompt: str) -> dict:
    if len(words) < 2:
        raise ValueError(f"cannot parse {prompt!r}: expected a noun phrase, got {' '.join(words)!r}")
    det, *attrs, noun = words
    if det in ("a", "an"):
        np_ = {"det": "article", "count": 1}
    elif det == "the":
        np_ = {"det": "the", "count": 1}
    elif det in _NUMBER:
        np_ = {"det": "number", "count": _NUMBER[det]}
    else:
        raise ValueError(f"cannot parse {prompt!r}: {det!r} is not a determiner")
    if noun not in _SHAPE_OF:
        raise ValueError(f"cannot parse {prompt!r}: {noun!r} is not a shape")
    shape, plural = _SHAPE_OF[noun]
    if plural != (np_["count"] > 1):
        raise ValueError(f"cannot parse {prompt!r}: {det} {noun!r} disagree in number")
    np_["shape"] = shape
    for a in attrs:
        if a not in _ATTR_OF or _ATTR_OF[a] in np_:
            raise ValueError(f"cannot parse {prompt!r}: unexpected word {a!r}")
        np_[_ATTR_OF[a]] = a
    return np_


def parse_phrase(prompt: str) -> dict:
    """Parse a world prompt into its phrase structure (see the comment above); raises
    ``ValueError`` for text the world's grammar does not produce."""
    w = tokenize_words(prompt)
    prefix = w[:3] == ["a", "photo", "of"]
    if prefix:
        w = w[3:]
    at = next((i for i, x in enumerate(w) if x in _REL_START), None)
    if at is None:
        groups, cur = [], []
        for x in w:
            if x == "and":
                groups.append(cur)
                cur = []
            else:
                cur.append(x)
        groups.append(cur)
        return {"prefix": prefix, "nps": [_parse_np(g, prompt) for g in groups], "relation": None,
                "style": None, "verb": None}
    left, verb = w[:at], None
    if left and left[-1] in ("is", "was"):
        verb, left = left[-1], left[:-1]
    for words, relation in _REL_PHRASES:
        if tuple(w[at:at + len(words)]) == words:
            break
    else:
        raise ValueError(f"cannot parse {prompt!r}: unknown relation at {' '.join(w[at:])!r}")
    right = w[at + len(words):]
    if verb:
        style = "complex"
    elif words[0] == "on" or (words == ("next", "to") and not prefix):
        style = "spatial"
    else:
        style = "raw"
    return {"prefix": prefix, "nps": [_parse_np(left, prompt), _parse_np(right, prompt)], "relation": relation,
            "style": style, "verb": verb}


def _np_text(np_: dict) -> str:
    words = [np_[k] for k in _ATTR_ORDER if k in np_]
    count = np_["count"]
    body = " ".join(words + [np_["shape"] if count == 1 else PLURALS[np_["shape"]]])
    if np_["det"] == "the":
        return f"the {body}"
    if np_["det"] == "number" or count > 1:
        return f"{NUMBERS[count]} {body}"
    return f"{_article(body)} {body}"


def phrase_text(phrase: dict) -> str:
    """The prompt of a phrase structure (inverse of ``parse_phrase`` on world prompts)."""
    nps = [_np_text(n) for n in phrase["nps"]]
    if phrase["relation"] is None:
        body = " and ".join(nps)
    else:
        rel = _STYLE_WORDS[phrase["style"]][phrase["relation"]]
        verb = f" {phrase['verb']}" if phrase["verb"] else ""
        body = f"{nps[0]}{verb} {rel} {nps[1]}"
    return f"a photo of {body}" if phrase["prefix"] else body


def phrase_record(phrase: dict) -> dict:
    """The prompt record of a phrase: clauses in ``grammar``'s order (a relation "A rel B"
    is ``[B, A with position [rel, 0]]``); prompts whose noun phrases all start with a
    number and carry no attribute (GenEval counting, CompBench numeracy) ask for exact
    counts (an exclude clause of ``count + 1``)."""
    clauses = [{"class": n["shape"], "count": n["count"], **{k: n[k] for k in _ATTR_ORDER if k in n}}
               for n in phrase["nps"]]
    record = {"prompt": phrase_text(phrase)}
    if phrase["relation"] is not None:
        a, b = clauses
        record["include"] = [b, dict(a, position=[phrase["relation"], 0])]
        return record
    record["include"] = clauses
    if all(n["det"] == "number" and not any(k in n for k in _ATTR_ORDER) for n in phrase["nps"]):
        record["exclude"] = [{"class": c["class"], "count": c["count"] + 1} for c in clauses]
    return record


def parse_prompt(prompt: str | dict) -> dict:
    """A prompt record (``include``/``exclude`` clauses, as ``grammar`` writes them) for a
    world prompt; records pass through unchanged."""
    if isinstance(prompt, dict):
        return prompt
    return phrase_record(parse_phrase(prompt))


def _prompt_text(prompt: str | dict) -> str:
    return prompt["prompt"] if isinstance(prompt, dict) else str(prompt)


# --------------------------------------------------------------------------- hard negatives
PERTURBATIONS = ("swap_attribute", "change_attribute", "add_attribute", "change_count", "change_shape",
                 "flip_relation")


def _options(phrase: dict, kind: str) -> list:
    nps = phrase["nps"]
    if kind == "swap_attribute":  # e.g. swap colours between objects
        return [(k, i, j) for k in _ATTR_ORDER for i, j in combinations(range(len(nps)), 2)
                if k in nps[i] and k in nps[j] and nps[i][k] != nps[j][k]]
    if kind == "change_attribute":
        return [(i, k) for i, n in enumerate(nps) for k in _ATTR_ORDER if k in n]
    if kind == "add_attribute":
        return [(i, k) for i, n in enumerate(nps) for k in _ATTR_ORDER if k not in n]
    if kind == "change_count":
        total = sum(n["count"] for n in nps)
        return [(i, c) for i, n in enumerate(nps) if n["det"] != "the"
                for c in range(1, MAX_OBJECTS + 1) if c != n["count"] and total - n["count"] + c <= MAX_OBJECTS]
    if kind == "change_shape":
        used = {n["shape"] for n in nps}
        return [(i, s) for i in range(len(nps)) for s in SHAPES if s not in used]
    if kind == "flip_relation":
        return [] if phrase["relation"] is None else [None]
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")


def perturb_phrase(phrase: dict, kind: str, rng: np.random.Generator) -> dict | None:
    """A copy of ``phrase`` changed by one ``kind`` of ``PERTURBATIONS`` (``None`` when the
    kind does not apply): swap an attribute between two objects, change or add an
    attribute, change a count, change a shape, flip a relation ("next to" becomes a
    direction)."""
    opts = _options(phrase, kind)
    if not opts:
        return None
    out = copy.deepcopy(phrase)
    nps = out["nps"]
    opt = opts[rng.integers(len(opts))]
    if kind == "swap_attribute":
        k, i, j = opt
        nps[i][k], nps[j][k] = nps[j][k], nps[i][k]
    elif kind in ("change_attribute", "add_attribute"):
        i, k = opt
        values = [v for v in _ATTR_VALUES[k] if v != nps[i].get(k)]
        nps[i][k] = values[rng.integers(len(values))]
    elif kind == "change_count":
        i, c = opt
        nps[i]["count"] = c
        if c > 1:  # "a square" -> "two squares": a number, as the text now reads
            nps[i]["det"] = "number"
    elif kind == "change_shape":
        i, s = opt
        nps[i]["shape"] = s
    else:
        rel = out["relation"]
        out["relation"] = _FLIP[rel] if rel in _FLIP else tuple(_FLIP)[rng.integers(len(_FLIP))]
    if len(tokenize_words(phrase_text(out))) > MAX_PROMPT_WORDS:
        return None
    return out


def perturb_prompt(prompt: str | dict, rng: np.random.Generator,
                   kinds: Sequence[str] = PERTURBATIONS) -> tuple[dict, str] | None:
    """A hard-negative record for ``prompt``: one perturbation, its kind drawn uniformly
    among those of ``kinds`` that apply. Returns ``(record, kind)`` or ``None``. The new
    prompt may still describe a given image (a colour the prompt left free, a relation
    that also holds): label pairs with the truth, not with the kind."""
    phrase = parse_phrase(_prompt_text(prompt))
    kinds = [k for k in kinds if _options(phrase, k)]
    while kinds:
        kind = kinds[rng.integers(len(kinds))]
        new = perturb_phrase(phrase, kind, rng)
        if new is not None:
            return phrase_record(new), kind
        kinds.remove(kind)
    return None


# =========================================================================== images
_BG = np.asarray(BACKGROUND, np.float64)
DEGRADATIONS = ("blur", "noise", "color_shift", "fade")
CONTENT_ERRORS = ("perturbed", "missing", "extra")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = 3
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    h = sum(k[i] * p[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * h[i:i + img.shape[0]] for i in range(2 * r + 1))


def degrade(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One degradation of a uint8 (H, W, 3) image, strengths uniform in ranges that take
    the truth's detector from unharmed to lost: gaussian ``blur`` (sigma 0.4-1.0 px),
    additive ``noise`` (std 4-24; hurts the aesthetic, barely the detector),
    ``color_shift`` (a per-channel offset of up to 30 on the objects, not the
    background), ``fade`` (5-30% of the way to the background)."""
    x = image.astype(np.float64)
    if kind == "blur":
        x = _blur(x, rng.uniform(0.4, 1.0))
    elif kind == "noise":
        x = x + rng.normal(0, rng.uniform(4, 24), x.shape)
    elif kind == "color_shift":
        ink = np.clip(np.sqrt(((x - _BG) ** 2).sum(-1, keepdims=True)) / 150.0, 0, 1)
        x = x + ink * rng.uniform(-30, 30, 3)
    elif kind == "fade":
        x = x + rng.uniform(0.05, 0.3) * (_BG - x)
    else:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {DEGRADATIONS}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _wrong_scene(record: dict, kind: str, rng: np.random.Generator) -> Scene | None:
    if kind == "perturbed":
        neg = perturb_prompt(record, rng)
        return None if neg is None else sample_scene(neg[0], rng)
    if kind == "extra":
        include = record.get("include", [])
        if sum(c["count"] for c in include) >= MAX_OBJECTS:
            return None
        extra = {"class": SHAPES[rng.integers(len(SHAPES))], "count": 1}
        return sample_scene({"include": list(include) + [extra]}, rng)
    scene = sample_scene(record, rng)  # "missing": drop one object (may leave the image empty)
    drop = rng.integers(len(scene))
    return Scene(tuple(o for i, o in enumerate(scene.objects) if i != drop))


def render_sampler(p_wrong: float = 0.35, p_degrade: float = 0.4) -> Callable:
    """``sample_images(records, rng) -> uint8 (B, 32, 32, 3)``: a rendered scene of each
    record; with probability ``p_wrong`` a content error instead (``CONTENT_ERRORS``, one
    drawn uniformly: a scene of a hard-negative prompt, one object missing, one extra
    object); then with probability ``p_degrade`` one or two ``DEGRADATIONS``."""
    from .render import render_batch

    def sample_images(records: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
        scenes = []
        for record in records:
            scene = None
            if rng.random() < p_wrong:
                kind = CONTENT_ERRORS[rng.integers(len(CONTENT_ERRORS))]
                try:
                    scene = _wrong_scene(record, kind, rng)
                except (RuntimeError, ValueError):
                    scene = None
            scenes.append(scene if scene is not None else sample_scene(record, rng))
        images = render_batch(scenes)
        for b in range(len(images)):
            if rng.random() < p_degrade:
                for k in rng.permutation(len(DEGRADATIONS))[:rng.integers(1, 3)]:
                    images[b] = degrade(images[b], DEGRADATIONS[k], rng)
        return images

    sample_images.description = f"rendered+perturbed (p_wrong={p_wrong}, p_degrade={p_degrade})"
    return sample_images


def pipeline_sampler(pipe, steps: int | None = None, guidance: float | None = None, batch_size: int = 64) -> Callable:
    """``sample_images`` drawing a base model's samples (``ShapesPipeline.sample``), one
    seed per image from ``rng``."""

    def sample_images(records: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
        if not len(records):
            return np.zeros((0, 32, 32, 3), np.uint8)
        seeds = rng.integers(0, 2 ** 31 - 1, len(records)).tolist()
        images, _ = pipe.sample([_prompt_text(r) for r in records], seeds, steps=steps, guidance=guidance,
                                batch_size=batch_size)
        return np.asarray(images)

    sample_images.description = f"base model {getattr(pipe, 'kind', '?')}"
    return sample_images


def mixed_sampler(samplers: Sequence[Callable], weights: Sequence[float]) -> Callable:
    """Each record's image from one of ``samplers``, drawn with probabilities ``weights``."""
    w = np.asarray(weights, np.float64) / np.sum(weights)

    def sample_images(records: Sequence[dict], rng: np.random.Generator) -> np.ndarray:
        which = rng.choice(len(samplers), size=len(records), p=w)
        out = np.zeros((len(records), 32, 32, 3), np.uint8)
        for k, s in enumerate(samplers):
            idx = np.flatnonzero(which == k)
            if len(idx):
                out[idx] = s([records[i] for i in idx], rng)
        return out

    sample_images.description = " + ".join(f"{wk:.2f} {getattr(s, 'description', s)}" for s, wk in zip(samplers, w))
    return sample_images


# =========================================================================== models
def _check_size(size: str) -> None:
    if size not in MODEL_CONFIGS:
        raise ValueError(f"unknown size {size!r}; expected one of {tuple(MODEL_CONFIGS)}")


def _vision_kwargs(spec: dict) -> dict:
    return dict(image_size=32, patch_size=PATCH_SIZE, num_channels=3, **spec["vision"])


def _text_kwargs(spec: dict, vocab_size: int) -> dict:
    from .models import BOS_ID, EOS_ID, MAX_LENGTH, PAD_ID

    return dict(vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH, pad_token_id=PAD_ID,
                bos_token_id=BOS_ID, eos_token_id=EOS_ID, **spec["text"])


def images_to_tensor(images: np.ndarray):
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in ``[-1, 1]`` (as the base models)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _vocab_size(vocab: Sequence[str]) -> int:
    """Token ids of ``models.build_tokenizer(vocab)``: the special tokens plus the distinct words."""
    from .models import SPECIAL_TOKENS

    return len(SPECIAL_TOKENS) + len({w.lower() for w in vocab} - set(SPECIAL_TOKENS))


class LearnedReward:
    """Base of the learned rewards: a torch module, its build spec and the world's
    word-level tokenizer. Subclasses define ``name``, ``bt_transform``, ``_build`` and
    ``score`` (differentiable raw score of tensors, used in training too). ``device``:
    default CUDA if available; scoring is batched (``batch_size``) under ``no_grad``."""

    name = ""
    bt_transform = ""
    uses_text = True

    def __init__(self, module, spec: dict, vocab: Sequence[str] = VOCAB, device=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, info: dict | None = None):
        import torch

        from .models import build_tokenizer

        self.spec = dict(spec)
        self.vocab = list(vocab)
        self.info = dict(info or {})
        self.batch_size = int(batch_size)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.tokenizer = build_tokenizer(self.vocab)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, size: str = "default", vocab: Sequence[str] = VOCAB, **kwargs) -> "LearnedReward":
        """Fresh (randomly initialised, under the caller's torch seed) model of ``size``, on
        the CPU unless ``device`` is given (training here is CPU code)."""
        _check_size(size)
        kwargs.setdefault("device", "cpu")
        spec = dict(MODEL_CONFIGS[size], size=size)
        return cls(cls._build(spec, _vocab_size(vocab)), spec, vocab, **kwargs)

    @staticmethod
    def _build(spec: dict, vocab_size: int):
        raise NotImplementedError

    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    # ------------------------------------------------------------------ scoring
    def tokenize(self, prompts: Sequence[str | dict]):
        from .models import MAX_LENGTH

        tok = self.tokenizer([_prompt_text(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=MAX_LENGTH, return_tensors="pt")
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    def score(self, pixel_values, input_ids=None, attention_mask=None):
        raise NotImplementedError

    def __call__(self, images: np.ndarray, prompts: Sequence[str | dict]) -> np.ndarray:
        import torch

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected uint8 images (B, H, W, 3); got {images.dtype} {images.shape}")
        if len(prompts) != len(images):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        self.module.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = images_to_tensor(images[i:i + self.batch_size]).to(self.device)
                ids = mask = None
                if self.uses_text:
                    ids, mask = self.tokenize(prompts[i:i + self.batch_size])
                out.append(self.score(x, ids, mask).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"name": self.name, "class": type(self).__name__, "bt_transform": self.bt_transform,
                "spec": self.spec, "vocab": self.vocab, "patch_size": PATCH_SIZE, "info": self.info}

    def save_pretrained(self, directory) -> Path:
        """``model.safetensors`` (the module's state dict) and ``config.json`` (spec,
        vocabulary, BT transform, training info)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME))
        (d / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def from_pretrained(cls, directory, device=None, batch_size: int = DEFAULT_BATCH_SIZE) -> "LearnedReward":
        from safetensors.torch import load_file

        d = Path(directory)
        for f in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d}: missing {f} (not a saved {cls.name or 'shapes'} reward model)")
        cfg = json.loads((d / CONFIG_NAME).read_text())
        if cfg.get("name") != cls.name:
            raise ValueError(f"{d} holds reward model {cfg.get('name')!r}, not {cls.name!r}")
        module = cls._build(cfg["spec"], _vocab_size(cfg["vocab"]))
        module.load_state_dict(load_file(str(d / WEIGHTS_NAME)), strict=True)
        return cls(module, cfg["spec"], cfg["vocab"], device=device, batch_size=batch_size, info=cfg.get("info"))


class PrefReward(LearnedReward):
    """``shapes-pref`` (PickScore / MPS analogue): ``logit_scale * cos(image_emb,
    text_emb)`` of a tiny ``CLIPModel``, Bradley-Terry trained on simulated human choices,
    so the score is already a BT logit (``identity``)."""

    name = PREF
    bt_transform = "identity"

    @staticmethod
    def _build(spec, vocab_size):
        from transformers import CLIPConfig, CLIPModel

        return CLIPModel(CLIPConfig(text_config=_text_kwargs(spec, vocab_size), vision_config=_vision_kwargs(spec),
                                    projection_dim=spec["projection_dim"]))

    def embed_images(self, pixel_values):
        import torch.nn.functional as F

        m = self.module
        return F.normalize(m.visual_projection(m.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)

    def embed_texts(self, input_ids, attention_mask):
        import torch.nn.functional as F

        m = self.module
        out = m.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(m.text_projection(out), dim=-1)

    def scale(self):
        return self.module.logit_scale.clamp(max=math.log(100.0)).exp()  # CLIP's clamp at 100

    def score(self, pixel_values, input_ids=None, attention_mask=None):
        return self.scale() * (self.embed_images(pixel_values) * self.embed_texts(input_ids, attention_mask)).sum(-1)


class VQAReward(LearnedReward):
    """``shapes-vqa`` (VQAScore analogue): ``P(yes | image, prompt)`` from the
    image-text matching head of a tiny ``BlipForImageTextRetrieval`` (a text encoder
    cross-attending to the ViT's patch tokens, head on the first token; softmax over
    no/yes). A probability: ``logit``."""

    name = VQA
    bt_transform = "logit"

    @staticmethod
    def _build(spec, vocab_size):
        from transformers import BlipConfig, BlipForImageTextRetrieval

        text = dict(_text_kwargs(spec, vocab_size), encoder_hidden_size=spec["vision"]["hidden_size"],
                    sep_token_id=_text_kwargs(spec, vocab_size)["eos_token_id"])
        # BlipVisionConfig's default initializer_range (1e-10) suits loading weights, not
        # training from scratch: a blind vision tower. Use the text tower's 0.02.
        vision = dict(_vision_kwargs(spec), initializer_range=0.02)
        return BlipForImageTextRetrieval(BlipConfig(text_config=text, vision_config=vision,
                                                    projection_dim=spec["projection_dim"],
                                                    image_text_hidden_size=spec["projection_dim"]))

    def image_tokens(self, pixel_values):
        return self.module.vision_model(pixel_values=pixel_values).last_hidden_state

    def match_logits(self, image_tokens, input_ids, attention_mask):
        """ITM logits ``(B, 2)`` (no, yes), as ``BlipForImageTextRetrieval(use_itm_head=True)``."""
        import torch

        m = self.module
        atts = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        q = m.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens,
                           encoder_attention_mask=atts).last_hidden_state
        return m.itm_head(q[:, 0, :])

    def score(self, pixel_values, input_ids=None, attention_mask=None):
        return self.match_logits(self.image_tokens(pixel_values), input_ids, attention_mask).softmax(-1)[:, 1]


def _aesthetic_net(spec: dict):
    import torch
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModel

    class AestheticNet(nn.Module):
        """``CLIPVisionModel`` -> pooled output -> ``Linear(hidden, 1)``; the output is
        ``mean + std * head``, ``mean``/``std`` (buffers) set from the training labels."""

        def __init__(self):
            super().__init__()
            self.vision = CLIPVisionModel(CLIPVisionConfig(**_vision_kwargs(spec)))
            self.head = nn.Linear(spec["vision"]["hidden_size"], 1)
            self.register_buffer("mean", torch.tensor(5.5))
            self.register_buffer("std", torch.tensor(1.0))

        def forward(self, pixel_values):
            z = self.head(self.vision(pixel_values=pixel_values).pooler_output).squeeze(-1)
            return self.mean + self.std * z

    return AestheticNet()


class AestheticReward(LearnedReward):
    """``shapes-aesthetic`` (VILA analogue): image-only regressor of the truth's aesthetic
    on a ~1-10 scale, ``temperature:0.9`` (module docstring). Ignores the prompt."""

    name = AESTHETIC
    bt_transform = f"temperature:{AESTHETIC_TEMPERATURE}"
    uses_text = False

    @staticmethod
    def _build(spec, vocab_size):
        return _aesthetic_net(spec)

    def score(self, pixel_values, input_ids=None, attention_mask=None):
        return self.module(pixel_values)


class GoldReward:
    """``shapes-gold``: the hidden truth, ``truth.utility`` (0.6 alignment + 0.4 aesthetic,
    in [0, 1]). NOT a learned model and never a training signal: it scores evaluations
    ("gold" win-rates), standing in for human raters. The truth's raters prefer ``a`` with
    ``sigmoid((u_a - u_b) / 0.1)``, hence ``temperature:0.1``. Prompts must be world
    prompts (``parse_prompt``) or records."""

    name = GOLD
    bt_transform = "temperature:0.1"

    def __call__(self, images: np.ndarray, prompts: Sequence[str | dict]) -> np.ndarray:
        from .truth import utility_batch

        images = np.asarray(images)
        if len(prompts) != len(images):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return np.zeros(0)
        return np.asarray(utility_batch([parse_prompt(p) for p in prompts], images), np.float64)


CLASSES = {PREF: PrefReward, VQA: VQAReward, AESTHETIC: AestheticReward}


# =========================================================================== factories
def artifact_dir(name: str) -> Path:
    from .zoo import ARTIFACTS

    return ARTIFACTS / "rewards" / name


def _load(name: str, path=None, device=None, **kwargs) -> LearnedReward:
    from capo.rewards import RewardLoadError

    d = Path(path) if path is not None else artifact_dir(name)
    if not ((d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file()):
        raise RewardLoadError(
            f"shapes-world reward model {name!r} is not built: expected {CONFIG_NAME} and {WEIGHTS_NAME} in {d}. "
            f"Build the world with `capo world build`, or run capo.worlds.shapes.rewards.train_rewards(OUT) "
            f"and pass path=OUT/{name}")
    return CLASSES[name].from_pretrained(d, device=device, **kwargs)


def load_pref(path=None, device=None, **kwargs) -> PrefReward:
    """``shapes-pref`` from ``path`` or the shipped artifacts."""
    return _load(PREF, path, device, **kwargs)


def load_vqa(path=None, device=None, **kwargs) -> VQAReward:
    """``shapes-vqa`` from ``path`` or the shipped artifacts."""
    return _load(VQA, path, device, **kwargs)


def load_aesthetic(path=None, device=None, **kwargs) -> AestheticReward:
    """``shapes-aesthetic`` from ``path`` or the shipped artifacts."""
    return _load(AESTHETIC, path, device, **kwargs)


def load_gold(path=None, device=None, **kwargs) -> GoldReward:
    """``shapes-gold``: the hidden truth (nothing to load; ``path``/``device`` ignored)."""
    return GoldReward()


# =========================================================================== training
def bt_loss(score_a, score_b, choice):
    """Bradley-Terry negative log-likelihood, mean over pairs: ``-log sigmoid(R_w - R_l)``
    with ``choice`` 0 where ``a`` won, 1 where ``b`` won (``truth.simulate_choices``)."""
    import torch.nn.functional as F

    sign = 1.0 - 2.0 * choice.to(score_a.dtype)  # +1: a won
    return F.softplus(-sign * (score_a - score_b)).mean()


def simulated_choices(utility_a: np.ndarray, utility_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth.simulate_choices``'s draw from precomputed utilities (0 = ``a`` preferred)."""
    from .truth import preference_probability

    p = preference_probability(utility_a, utility_b)
    return (rng.random(len(p)) >= p).astype(np.int64)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def label_images(records: Sequence[dict], images: np.ndarray) -> dict:
    """The truth's view of each image of its record: detections, alignment, aesthetic, utility."""
    from .evaluator import detect
    from .truth import ALIGNMENT_WEIGHT, aesthetic, alignment

    dets = [detect(im) for im in images]
    align = np.array([alignment(r, None, d) for r, d in zip(records, dets)])
    aes = np.asarray(aesthetic(images), np.float64) if len(images) else np.zeros(0)
    return {"detections": dets, "alignment": align, "aesthetic": aes,
            "utility": ALIGNMENT_WEIGHT * align + (1 - ALIGNMENT_WEIGHT) * aes}


def _pool(records: Sequence[dict], k: int, sample_images: Callable, rng: np.random.Generator,
          neg_rng: np.random.Generator, progress_desc: str, show: bool, chunk: int = 256) -> dict:
    """``k`` images per record (image ``i * k + j`` is record ``i``'s ``j``-th), truth
    labels, and one hard-negative prompt per image with its truth label."""
    from capo.progress import progress
    from .truth import alignment

    recs = [r for r in records for _ in range(k)]
    images, labels = [], []
    neg_records, neg_kinds, neg_align = [], [], []
    with progress(total=len(recs), desc=progress_desc, unit="img", disable=not show) as bar:
        for i in range(0, len(recs), chunk):
            part = recs[i:i + chunk]
            ims = sample_images(part, rng)
            lab = label_images(part, ims)
            for r, d in zip(part, lab["detections"]):
                neg = hard_negative(r, records, neg_rng)
                neg_records.append(neg[0])
                neg_kinds.append(neg[1])
                neg_align.append(alignment(neg[0], None, d))
            images.append(ims)
            labels.append(lab)
            bar.update(len(part))
    return {"records": recs, "images": np.concatenate(images),
            "alignment": np.concatenate([l["alignment"] for l in labels]),
            "aesthetic": np.concatenate([l["aesthetic"] for l in labels]),
            "utility": np.concatenate([l["utility"] for l in labels]),
            "detections": [d for l in labels for d in l["detections"]],
            "neg_records": neg_records, "neg_kinds": neg_kinds, "neg_alignment": np.asarray(neg_align)}


def _fit(params, loss_fn: Callable, steps: int, lr: float, deadline: float, desc: str, show: bool,
         warmup: int = 50, weight_decay: float = 0.01) -> dict:
    """AdamW, linear warmup then cosine to 10% (``pretrain.lr_at``); ``loss_fn(step)``
    returns the batch loss. Stops early at ``deadline`` (``time.monotonic``)."""
    import torch

    from capo.progress import progress
    from .pretrain import lr_at

    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses, t0, done = [], time.monotonic(), 0
    with progress(total=steps, desc=desc, unit="step", disable=not show) as bar:
        for step in range(steps):
            if time.monotonic() > deadline:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr, min(warmup, max(steps // 10, 1)), steps, "cosine")
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            done += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    tail = max(1, min(50, len(losses) // 5))
    return {"steps": done, "steps_planned": steps, "stopped_by_time": done < steps,
            "seconds": round(time.monotonic() - t0, 1),
            "loss_first": float(np.mean(losses[:tail])) if losses else None,
            "loss_last": float(np.mean(losses[-tail:])) if losses else None}


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless epochs of a fixed random order, ``batch_size`` indices at a time."""
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i:i + batch_size]


def train_pref(model: PrefReward, pool: dict, k: int, rng: np.random.Generator, steps: int, batch_size: int,
               lr: float, deadline: float, show: bool = True) -> dict:
    """Bradley-Terry training of ``shapes-pref`` on every pair of the ``k`` images of each
    pool record, one simulated choice per pair."""
    import torch

    n_rec = len(pool["images"]) // k
    pairs = np.array([(i * k + a, i * k + b) for i in range(n_rec) for a, b in combinations(range(k), 2)])
    u = pool["utility"]
    choice = simulated_choices(u[pairs[:, 0]], u[pairs[:, 1]], rng)
    images = torch.from_numpy(pool["images"])
    ids, mask = model.tokenize([pool["records"][i]["prompt"] for i in pairs[:, 0]])
    batches = _batches(len(pairs), batch_size, rng)
    model.module.train()

    def loss_fn(step):
        idx = torch.from_numpy(next(batches))
        p = torch.from_numpy(pairs)[idx]
        x = images_to_tensor(images[torch.cat([p[:, 0], p[:, 1]])].numpy())
        img = model.embed_images(x)
        txt = model.embed_texts(ids[idx], mask[idx])
        s = model.scale() * (img * torch.cat([txt, txt])).sum(-1)
        sa, sb = s.chunk(2)
        return bt_loss(sa, sb, torch.from_numpy(choice)[idx])

    out = _fit(model.module.parameters(), loss_fn, steps, lr, deadline, "shapes-pref (BT)", show)
    model.module.eval()
    return dict(out, pairs=int(len(pairs)), choice_agrees_with_utility=float(np.mean(
        (choice == 0) == (u[pairs[:, 0]] >= u[pairs[:, 1]]))))


def vqa_targets(alignment: np.ndarray, targets: str = "binary") -> np.ndarray:
    """P(yes) targets from the truth's alignment ``a``: ``binary`` (``a >=
    MATCH_THRESHOLD``), ``ramp`` (a rater answering "yes" with probability rising linearly
    from 0 at ``a = 2 * MATCH_THRESHOLD - 1`` through 1/2 at the threshold to 1 at
    ``a = 1``) or ``soft`` (``a`` itself)."""
    a = np.asarray(alignment, np.float64)
    if targets == "binary":
        return (a >= MATCH_THRESHOLD).astype(np.float64)
    if targets == "ramp":
        return np.clip((a - (2 * MATCH_THRESHOLD - 1)) / (2 * (1 - MATCH_THRESHOLD)), 0.0, 1.0)
    if targets == "soft":
        return np.clip(a, 0.0, 1.0)
    raise ValueError(f"unknown vqa targets {targets!r}; expected 'binary', 'ramp' or 'soft'")


def hard_negative(record: dict, records: Sequence[dict], rng: np.random.Generator) -> tuple[dict, str]:
    """``perturb_prompt(record)``, or another of ``records`` (an easy negative) when no
    perturbation applies."""
    neg = perturb_prompt(record, rng)
    if neg is None:
        neg = (parse_prompt(records[int(rng.integers(len(records)))]["prompt"]), "other_prompt")
    return neg


def train_vqa(model: VQAReward, pool: dict, rng: np.random.Generator, steps: int, batch_size: int, lr: float,
              deadline: float, show: bool = True, targets: str = "binary", negatives: int = 1) -> dict:
    """Matching-head cross-entropy of ``shapes-vqa`` on each pool image with its own prompt
    and ``negatives`` hard-negative prompts drawn afresh at every step, targets from
    ``truth.alignment`` of the pair (``vqa_targets``, from the image's cached detections)."""
    import torch

    from .truth import alignment

    images = torch.from_numpy(pool["images"])
    records, dets = pool["records"], pool["detections"]
    y_pos = vqa_targets(pool["alignment"], targets)
    batches = _batches(len(images), batch_size, rng)
    seen = {"n": 0, "yes": 0.0}
    model.module.train()

    def loss_fn(step):
        idx = next(batches)
        prompts, y = [records[i]["prompt"] for i in idx], list(y_pos[idx])
        for _ in range(negatives):
            for i in idx:
                neg, _ = hard_negative(records[i], records, rng)
                prompts.append(neg["prompt"])
                y.append(float(vqa_targets([alignment(neg, None, dets[i])], targets)[0]))
        seen["n"] += len(y)
        seen["yes"] += float(np.sum(y))
        tokens = model.image_tokens(images_to_tensor(images[torch.from_numpy(idx)].numpy()))
        ids, mask = model.tokenize(prompts)
        logits = model.match_logits(torch.cat([tokens] * (1 + negatives)), ids, mask)
        y = torch.tensor(y, dtype=logits.dtype)
        logp = logits.log_softmax(-1)
        return -(y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()

    out = _fit(model.module.parameters(), loss_fn, steps, lr, deadline, "shapes-vqa (ITM)", show)
    model.module.eval()
    return dict(out, examples=seen["n"], yes_rate=seen["yes"] / max(seen["n"], 1), targets=targets,
                negatives_per_image=negatives)


def train_aesthetic(model: AestheticReward, pool: dict, rng: np.random.Generator, steps: int, batch_size: int,
                    lr: float, deadline: float, show: bool = True) -> dict:
    """Squared error of ``shapes-aesthetic`` to ``1 + 9 * (truth.aesthetic + noise)``."""
    import torch

    target = 1 + 9 * (pool["aesthetic"] + rng.normal(0, AESTHETIC_LABEL_NOISE, len(pool["aesthetic"])))
    net = model.module
    net.mean.fill_(float(target.mean()))
    net.std.fill_(float(target.std() + 1e-6))
    images = torch.from_numpy(pool["images"])
    y = torch.from_numpy(target).float()
    batches = _batches(len(images), batch_size, rng)
    net.train()

    def loss_fn(step):
        idx = torch.from_numpy(next(batches))
        pred = net(images_to_tensor(images[idx].numpy()))
        return (((pred - y[idx]) / net.std) ** 2).mean()

    out = _fit(net.parameters(), loss_fn, steps, lr, deadline, "shapes-aesthetic (MSE)", show)
    net.eval()
    return dict(out, examples=len(images), label_noise=AESTHETIC_LABEL_NOISE)


# --------------------------------------------------------------------------- evaluation
def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN without both classes."""
    labels = np.asarray(labels, bool)
    n1, n0 = labels.sum(), (~labels).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[labels].sum() - n1 * (n1 - 1) / 2) / (n1 * n0))


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    return pearson(_ranks(a), _ranks(b))


def pairwise_agreement(reward_a, reward_b, truth_a, truth_b) -> float:
    """Share of pairs the reward orders as the truth does (truth ties skipped, reward ties half)."""
    dr = np.asarray(reward_a, np.float64) - np.asarray(reward_b, np.float64)
    dt = np.asarray(truth_a, np.float64) - np.asarray(truth_b, np.float64)
    keep = np.abs(dt) > 1e-12
    if not keep.any():
        return float("nan")
    agree = np.where(dr[keep] == 0, 0.5, (np.sign(dr[keep]) == np.sign(dt[keep])).astype(np.float64))
    return float(agree.mean())


def evaluate_rewards(rewards: dict, pool: dict, k: int, rng: np.random.Generator) -> dict:
    """Held-out figures (see ``train_rewards``) for ``rewards`` (name -> reward) on ``pool``
    (``k`` images per record)."""
    images, records = pool["images"], pool["records"]
    prompts = [r["prompt"] for r in records]
    scores = {name: np.asarray(r(images, prompts), np.float64) for name, r in rewards.items()}
    n_rec = len(images) // k
    pairs = np.array([(i * k + a, i * k + b) for i in range(n_rec) for a, b in combinations(range(k), 2)])
    a, b = pairs[:, 0], pairs[:, 1]
    u = pool["utility"]
    choice = simulated_choices(u[a], u[b], rng)
    human = np.where(choice == 0, 1.0, -1.0)  # +1: a chosen
    out = {"n_records": n_rec, "n_images": len(images), "n_pairs": int(len(pairs)),
           "pairwise_agreement": {}, "choice_agreement": {}}
    for name, s in scores.items():
        out["pairwise_agreement"][name] = pairwise_agreement(s[a], s[b], u[a], u[b])
        out["choice_agreement"][name] = pairwise_agreement(s[a], s[b], human, -human)
    out["choice_agreement"]["utility (ceiling)"] = pairwise_agreement(u[a], u[b], human, -human)
    out["aesthetic_truth_agreement"] = {name: pairwise_agreement(s[a], s[b], pool["aesthetic"][a],
                                                                 pool["aesthetic"][b]) for name, s in scores.items()}
    out["alignment_truth_agreement"] = {name: pairwise_agreement(s[a], s[b], pool["alignment"][a],
                                                                 pool["alignment"][b]) for name, s in scores.items()}
    if VQA in rewards:
        neg = np.asarray(rewards[VQA](images, [r["prompt"] for r in pool["neg_records"]]), np.float64)
        p = np.concatenate([scores[VQA], neg])
        y = np.concatenate([pool["alignment"], pool["neg_alignment"]]) >= MATCH_THRESHOLD
        kinds = np.array(["own_prompt"] * len(images) + list(pool["neg_kinds"]))
        out["vqa"] = {"auc": auc(p, y), "accuracy": float(np.mean((p >= 0.5) == y)), "n": int(len(p)),
                      "yes_rate": float(y.mean()),
                      "accuracy_by_kind": {kd: float(np.mean((p[kinds == kd] >= 0.5) == y[kinds == kd]))
                                           for kd in sorted(set(kinds))},
                      "n_by_kind": {kd: int((kinds == kd).sum()) for kd in sorted(set(kinds))},
                      "auc_own_vs_negative_prompt": auc(np.concatenate([scores[VQA], neg]),
                                                        np.r_[np.ones(len(images)), np.zeros(len(neg))])}
    if AESTHETIC in rewards:
        s = scores[AESTHETIC]
        out["aesthetic"] = {"pearson": pearson(s, pool["aesthetic"]), "spearman": spearman(s, pool["aesthetic"]),
                            "mean_score": float(s.mean()), "std_score": float(s.std())}
    if AESTHETIC in rewards and VQA in rewards:
        sa, sv = scores[AESTHETIC], scores[VQA]
        out["conflict"] = {
            "pearson_aesthetic_vqa": pearson(sa, sv),
            "spearman_aesthetic_vqa": spearman(sa, sv),
            "pair_disagreement_aesthetic_vqa": 1 - pairwise_agreement(sa[a], sa[b], sv[a], sv[b]),
            "truth_pearson_aesthetic_alignment": pearson(pool["aesthetic"], pool["alignment"]),
            "truth_pair_disagreement_aesthetic_alignment": 1 - pairwise_agreement(
                pool["aesthetic"][a], pool["aesthetic"][b], pool["alignment"][a], pool["alignment"][b]),
        }
    return out


# --------------------------------------------------------------------------- driver
TRAIN_DEFAULTS = {
    # per size: data and steps. Step counts bind on an idle 2-core CPU; ``minutes`` is a cap.
    "tiny": dict(n_records=48, images_per_record=3, n_eval_records=24, eval_images_per_record=2,
                 steps={PREF: 30, VQA: 30, AESTHETIC: 30}, batch_size={PREF: 16, VQA: 16, AESTHETIC: 32},
                 lr={PREF: 2e-3, VQA: 2e-3, AESTHETIC: 2e-3}, vqa_targets="binary", vqa_negatives=1),
    "default": dict(n_records=2500, images_per_record=3, n_eval_records=600, eval_images_per_record=2,
                    steps={PREF: 450, VQA: 450, AESTHETIC: 300}, batch_size={PREF: 64, VQA: 64, AESTHETIC: 128},
                    lr={PREF: 1e-3, VQA: 1e-3, AESTHETIC: 1e-3}, vqa_targets="binary", vqa_negatives=1),
}
# Shares of ``minutes`` per phase (data generation and labelling, each model, evaluation).
TIME_SHARES = {"data": 0.15, PREF: 0.33, VQA: 0.28, AESTHETIC: 0.19, "eval": 0.05}


def _heldout_records(prompt_seed: int, n: int, rng: np.random.Generator) -> list[dict]:
    sets = prompt_sets(prompt_seed)
    held = [r for name, rs in sets.items() if name != "train" for r in rs]
    return [held[i] for i in np.sort(rng.permutation(len(held))[:n])]


def train_rewards(out_dir, seed: int = 0, minutes: float = 5.0, size: str = "default",
                  sample_images: Callable | None = None, base=None, base_fraction: float = 0.5,
                  prompt_seed: int = 0, threads: int | None = 1, show_progress: bool = True, **overrides) -> dict:
    """Train ``shapes-pref``, ``shapes-vqa`` and ``shapes-aesthetic`` from scratch and
    measure them against the hidden truth on held-out prompts; write each to
    ``out_dir/<name>/`` and the figures to ``out_dir/figures.json``; return the figures.

    Deterministic in ``seed`` (torch seeds and numpy Generators derived from it) as long
    as the step counts bind, not ``minutes`` (a wall-clock cap on each model's training,
    ``TIME_SHARES`` of it; data generation and evaluation are never cut).
    ``sample_images(records, rng)`` draws the images (default ``render_sampler()``);
    ``base`` (a ``ShapesPipeline`` or its directory) mixes in that base model's samples
    with probability ``base_fraction`` (slow: a default-size base model samples ~20
    images/s on one CPU thread, so 0.3 of the default pool adds about 3 minutes; proxies
    trained on renders alone score the base model's own samples close to chance, see the
    figures of a run with and without). Training prompts are
    ``prompt_sets(prompt_seed)["train"]``; held-out prompts are drawn from its other sets.
    ``overrides`` replace entries of ``TRAIN_DEFAULTS[size]`` (e.g. ``n_records=500``,
    ``steps={...}``). ``threads``: torch threads while training (1 is fastest on a
    shared 2-core CPU).

    Figures: per reward, ``pairwise_agreement`` with the truth's utility on held-out
    pairs (same prompt, two images), ``choice_agreement`` with one simulated rater's
    choices (the utility's own is the ceiling); for ``shapes-vqa`` AUC and accuracy on
    (image, own prompt) and (image, hard negative) pairs labelled by the truth; for
    ``shapes-aesthetic`` the correlation with ``truth.aesthetic``; ``conflict``: how
    ``shapes-aesthetic`` and ``shapes-vqa`` disagree on the held-out images.
    """
    import torch

    _check_size(size)
    t_start = time.monotonic()
    budget = 60.0 * float(minutes)
    cfg = dict(TRAIN_DEFAULTS[size])
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"unknown training option {key!r}; expected one of {sorted(cfg)}")
        cfg[key] = dict(cfg[key], **value) if isinstance(cfg[key], dict) else value
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if sample_images is None:
        sample_images = render_sampler()
        if base is not None:
            from .pipeline import ShapesPipeline

            pipe = base if isinstance(base, ShapesPipeline) else ShapesPipeline.from_pretrained(base)
            sample_images = mixed_sampler([sample_images, pipeline_sampler(pipe)], [1 - base_fraction, base_fraction])
    source = getattr(sample_images, "description", repr(sample_images))
    ss = np.random.SeedSequence(seed)
    rng_train, rng_neg, rng_eval, rng_eval_neg, rng_pref, rng_vqa, rng_aes, rng_choice = (
        np.random.default_rng(s) for s in ss.spawn(8))

    def deadline(phase: str) -> float:
        return time.monotonic() + TIME_SHARES[phase] * budget

    with _torch_threads(threads):
        t0 = time.monotonic()
        train_records = prompt_sets(prompt_seed)["train"]
        chosen = np.sort(rng_train.permutation(len(train_records))[:cfg["n_records"]])
        train_records = [train_records[i] for i in chosen]
        k = cfg["images_per_record"]
        pool = _pool(train_records, k, sample_images, rng_train, rng_neg, "reward data (train)", show_progress)
        eval_records = _heldout_records(prompt_seed, cfg["n_eval_records"], rng_eval)
        k_eval = cfg["eval_images_per_record"]
        heldout = _pool(eval_records, k_eval, sample_images, rng_eval, rng_eval_neg, "reward data (held-out)",
                        show_progress)
        data = {"source": source, "train_records": len(train_records), "images_per_record": k,
                "train_images": int(len(pool["images"])), "eval_records": len(eval_records),
                "eval_images": int(len(heldout["images"])),
                "train_prompts_distinct": len({r["prompt"] for r in train_records}),
                "train_alignment_mean": float(pool["alignment"].mean()),
                "train_aesthetic_mean": float(pool["aesthetic"].mean()),
                "seconds": round(time.monotonic() - t0, 1)}

        models, training = {}, {}
        trainers = {
            PREF: lambda m, dl: train_pref(m, pool, k, rng_pref, cfg["steps"][PREF], cfg["batch_size"][PREF],
                                           cfg["lr"][PREF], dl, show_progress),
            VQA: lambda m, dl: train_vqa(m, pool, rng_vqa, cfg["steps"][VQA], cfg["batch_size"][VQA],
                                         cfg["lr"][VQA], dl, show_progress, targets=cfg["vqa_targets"],
                                         negatives=cfg["vqa_negatives"]),
            AESTHETIC: lambda m, dl: train_aesthetic(m, pool, rng_aes, cfg["steps"][AESTHETIC],
                                                     cfg["batch_size"][AESTHETIC], cfg["lr"][AESTHETIC], dl,
                                                     show_progress),
        }
        for j, name in enumerate(LEARNED):
            torch.manual_seed(seed * 1000 + j)
            model = CLASSES[name].build(size)
            training[name] = dict(trainers[name](model, deadline(name)), params=model.n_params())
            models[name] = model

        t0 = time.monotonic()
        rewards = dict(models, **{GOLD: GoldReward()})
        figures = evaluate_rewards(rewards, heldout, k_eval, rng_choice)
        figures["seconds"] = round(time.monotonic() - t0, 1)

    result = {"seed": seed, "size": size, "prompt_seed": prompt_seed, "minutes_budget": minutes,
              "config": cfg, "data": data, "training": training, "heldout": figures,
              "seconds_total": round(time.monotonic() - t_start, 1)}
    for name, model in models.items():
        model.info = {"seed": seed, "size": size, "data": data, "training": training[name],
                      "config": {k_: (v[name] if isinstance(v, dict) and name in v else v) for k_, v in cfg.items()},
                      "heldout": _model_figures(figures, name)}
        model.save_pretrained(out / name)
    (out / "figures.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=_json_default) + "\n")
    return result


def _model_figures(figures: dict, name: str) -> dict:
    out = {"pairwise_agreement": figures["pairwise_agreement"].get(name),
           "choice_agreement": figures["choice_agreement"].get(name)}
    if name == VQA and "vqa" in figures:
        out["vqa"] = figures["vqa"]
    if name == AESTHETIC and "aesthetic" in figures:
        out["aesthetic"] = figures["aesthetic"]
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def figures_table(result: dict) -> str:
    """A short markdown table of ``train_rewards``' held-out figures."""
    h = result["heldout"]
    rows = ["| reward | params | steps | agreement with utility | with simulated choices |",
            "|---|---:|---:|---:|---:|"]
    for name in (*LEARNED, GOLD):
        tr = result["training"].get(name, {})
        rows.append(f"| {name} | {tr.get('params', '-')} | {tr.get('steps', '-')} | "
                    f"{h['pairwise_agreement'][name]:.3f} | {h['choice_agreement'][name]:.3f} |")
    rows.append(f"| (simulated rater ceiling) | | | | {h['choice_agreement']['utility (ceiling)']:.3f} |")
    lines = ["\n".join(rows)]
    if "vqa" in h:
        lines.append(f"shapes-vqa: AUC {h['vqa']['auc']:.3f}, accuracy {h['vqa']['accuracy']:.3f} "
                     f"(n={h['vqa']['n']}, yes-rate {h['vqa']['yes_rate']:.2f})")
    if "aesthetic" in h:
        lines.append(f"shapes-aesthetic: Pearson {h['aesthetic']['pearson']:.3f}, "
                     f"Spearman {h['aesthetic']['spearman']:.3f} with truth.aesthetic")
    if "conflict" in h:
        c = h["conflict"]
        lines.append(f"conflict: corr(aesthetic, vqa) {c['pearson_aesthetic_vqa']:.3f} "
                     f"(truth: corr(aesthetic, alignment) {c['truth_pearson_aesthetic_alignment']:.3f}); "
                     f"pair disagreement {c['pair_disagreement_aesthetic_vqa']:.3f} "
                     f"(truth {c['truth_pair_disagreement_aesthetic_alignment']:.3f})")
    return "\n\n".join(lines)
