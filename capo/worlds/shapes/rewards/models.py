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

``LearnedReward`` holds what the learned ones share (building, word-level tokenizer,
batched scoring, persistence); ``load_pref``, ``load_vqa``, ``load_aesthetic`` and
``load_gold`` (registered in ``capo.rewards``) load them.

Aesthetic temperature: one point of the 1-10 scale is 1/9 of the truth's aesthetic
range; a rater judging by aesthetics alone with the truth's Bradley-Terry temperature
(0.1) would read that as a logit of ``(1/9) / 0.1 = 1.11``, so ``T = 0.9`` (a one-point
gap is a 75% preference).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from capo.rewards import RewardLoadError
from .. import zoo
from ..grammar import VOCAB
from ..models import BOS_ID, build_tokenizer, EOS_ID, MAX_LENGTH, PAD_ID, SPECIAL_TOKENS
from ..parsing import _prompt_text, parse_prompt
from ..truth import utility_batch

PREF, VQA, AESTHETIC, GOLD = "shapes-pref", "shapes-vqa", "shapes-aesthetic", "shapes-gold"
LEARNED = (PREF, VQA, AESTHETIC)
AESTHETIC_TEMPERATURE = 0.9  # see the module docstring
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


def _check_size(size: str) -> None:
    if size not in MODEL_CONFIGS:
        raise ValueError(f"unknown size {size!r}; expected one of {tuple(MODEL_CONFIGS)}")


def _vision_kwargs(spec: dict) -> dict:
    return dict(image_size=32, patch_size=PATCH_SIZE, num_channels=3, **spec["vision"])


def _text_kwargs(spec: dict, vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, max_position_embeddings=MAX_LENGTH, pad_token_id=PAD_ID,
                bos_token_id=BOS_ID, eos_token_id=EOS_ID, **spec["text"])


def images_to_tensor(images: np.ndarray):
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, H, W)`` in ``[-1, 1]`` (as the base models)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _vocab_size(vocab: Sequence[str]) -> int:
    """Token ids of ``models.build_tokenizer(vocab)``: the special tokens plus the distinct words."""
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
        images = np.asarray(images)
        if len(prompts) != len(images):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return np.zeros(0)
        return np.asarray(utility_batch([parse_prompt(p) for p in prompts], images), np.float64)


CLASSES = {PREF: PrefReward, VQA: VQAReward, AESTHETIC: AestheticReward}


# =========================================================================== factories
def artifact_dir(name: str) -> Path:
    return zoo.ARTIFACTS / "rewards" / name  # looked up when called: a test or a caller may move the artifacts


def _load(name: str, path=None, device=None, **kwargs) -> LearnedReward:
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
