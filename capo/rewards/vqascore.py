"""VQAScore with CLIP-FlanT5, the paper's image-text alignment reward (Lin et al., "Evaluating
Text-to-Visual Generation with Image-to-Text Generation", 2024; linzhiqiu/t2v_metrics),
implemented in capo on transformers' T5 and CLIP.

Why not the ``t2v_metrics`` package: its current release (3.0, Apache-2.0) pins
``torch==2.5.1``, ``transformers==4.49.0``, ``numpy==1.26.4`` and pulls deepspeed, xformers and
apex, so it cannot sit beside capo's torch; its models load only from hard-coded hub ids.
capo rebuilds the model class and the score from upstream's code (``t2v_metrics``
``models/vqascore_models/clip_t5_model.py``, ``mm_utils.py``, ``clip_t5/model/...``):

* ``CLIPT5``: a ``T5ForConditionalGeneration`` (FlanT5-XXL, ``d_model`` 4096; XL 2048) plus
  ``vision_tower.vision_tower`` = ``CLIPVisionModel`` of ``openai/clip-vit-large-patch14-336``
  (``config.mm_vision_tower``) and ``mm_projector`` = ``Linear(1024, d) -> GELU -> Linear(d, d)``
  (``mlp2x_gelu``); the state-dict layout of ``zhiqiulin/clip-flant5-xxl`` / ``-xl``. Image
  features: the vision tower's penultimate hidden state without its CLS token
  (``mm_vision_select_layer = -2``, ``"patch"``: 576 tokens at 336 px), projected;
* images padded to a square with the processor's mean colour (``image_aspect_ratio = "pad"``,
  ``expand2square``), then the CLIP image processor (336 px) as transformers 4.x runs it, with
  PIL (``capo.rewards.base.Pixels``; transformers 5's default processor resizes with torchvision);
* the prompt (conversation template ``t5_chat``)::

      SYSTEM + " USER: " + <image> + "\\n" + question + " ASSISTANT: "

  with ``SYSTEM`` below and ``question = 'Does this figure show "{prompt}"? Please answer yes or
  no.'``; each text chunk is tokenised on its own (each ends with ``</s>``) and the image's 576
  embeddings go where ``<image>`` was; batches are right-padded and masked;
* the answer ``"Yes"`` as labels (``[▁Yes, </s>]``, decoder started from the pad token), and
  the score ``exp(-mean token cross-entropy)`` over those labels, with logits over the
  tokenizer's vocabulary (upstream resizes the embeddings to ``len(tokenizer)`` = 32100 of the
  config's 32128 before scoring; capo drops the extra logits instead: the same numbers).

Precision: upstream casts the model to bfloat16 (``load_pretrained_model``: ``model.to(device,
dtype=torch.bfloat16)``) and scores under ``@torch.autocast(device_type='cuda',
dtype=torch.bfloat16)`` (``CLIPT5Model.forward``). capo's default is upstream's on CUDA (``dtype``
bfloat16, ``autocast="auto"`` = bfloat16 autocast) and float32 without autocast on the CPU;
``dtype=`` / ``autocast=`` (``None``, ``"bfloat16"``, ``"float16"``) choose otherwise on any device.
The XXL model needs about 23 GB in bf16, the XL (``vqascore-xl``) about 7 GB.

BT transform: ``logit`` (a probability; the paper approximates BT for VQAScore).
"""

from __future__ import annotations

import functools
from pathlib import Path

from capo.rewards import RewardLoadError
from capo.rewards.base import (DEFAULT_BATCH_SIZE, Pixels, Reward, autocast_dtype, first_line, from_pretrained, hub_hint,
                               require, resolve_device, to_pil)
from capo.rewards.real import VQA_QUESTION

MODELS = {"xxl": ("zhiqiulin/clip-flant5-xxl", "google/flan-t5-xxl"),
          "xl": ("zhiqiulin/clip-flant5-xl", "google/flan-t5-xl")}
VISION_TOWER = "openai/clip-vit-large-patch14-336"
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ANSWER = "Yes"
IMAGE = "<image>"


def prompt_text(question: str) -> str:
    """The ``t5_chat`` conversation around one question (upstream ``format_question``)."""
    return SYSTEM + " USER: " + IMAGE + "\n" + question + " ASSISTANT: "


def expand2square(image, fill):
    """``image`` centred on a square of side ``max(w, h)`` filled with ``fill`` (LLaVA's pad)."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    out = Image.new(image.mode, (max(w, h),) * 2, fill)
    out.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return out


@functools.cache
def model_class():
    """``CLIPT5`` (built on first use: transformers is imported lazily)."""
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5ForConditionalGeneration

    class Tower(nn.Module):
        def __init__(self, vision_config):
            super().__init__()
            self.vision_tower = CLIPVisionModel(vision_config)

    class CLIPT5(T5ForConditionalGeneration):
        """FlanT5 with a CLIP vision tower and a 2-layer GELU projector (upstream layout)."""

        def __init__(self, config):
            super().__init__(config)
            vc = CLIPVisionConfig(**config.vision_config)
            self.vision_tower = Tower(vc)
            self.mm_projector = nn.Sequential(nn.Linear(vc.hidden_size, config.d_model), nn.GELU(),
                                              nn.Linear(config.d_model, config.d_model))
            self.post_init()

        def image_features(self, pixel_values):
            layer = getattr(self.config, "mm_vision_select_layer", -2)
            out = self.vision_tower.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
            return self.mm_projector(out.hidden_states[layer][:, 1:])

    return CLIPT5


class VQAScoreT5(Reward):
    name = "vqascore"
    bt_transform = "logit"

    def __init__(self, model, tokenizer, image_processor, device, batch_size, question: str = VQA_QUESTION,
                 answer: str = ANSWER, name: str = "vqascore", autocast=None):
        super().__init__(device, batch_size)
        self.model, self.tokenizer, self.image_processor = model.to(device).eval(), tokenizer, image_processor
        self.pixels = Pixels.from_processor(image_processor)  # the 4.x CLIPImageProcessor's PIL steps
        self.autocast = autocast  # a torch dtype or None (``autocast_dtype``)
        self.question, self.answer, self.name = question, answer, name
        self.labels = tokenizer(answer).input_ids  # the answer's tokens, then </s>
        self.fill = tuple(int(x * 255) for x in image_processor.image_mean)

    def _embed(self, prompts, images):
        """Input embeddings (B, L, d) and mask: text chunks around each item's image features."""
        import torch

        m = self.model
        px = self.pixels([expand2square(im, self.fill) for im in to_pil(images)]).to(self.device, m.dtype)
        feats = m.image_features(px)
        embed = m.get_input_embeddings()
        rows = []
        for p, f in zip(prompts, feats):
            before, after = prompt_text(self.question.format(p)).split(IMAGE)
            ids = [torch.tensor(self.tokenizer(c).input_ids, device=self.device) for c in (before, after)]
            rows.append(torch.cat([embed(ids[0]), f.to(embed.weight.dtype), embed(ids[1])]))
        n = max(len(r) for r in rows)
        x = torch.zeros(len(rows), n, rows[0].shape[-1], dtype=rows[0].dtype, device=self.device)
        mask = torch.zeros(len(rows), n, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            x[i, :len(r)], mask[i, :len(r)] = r, 1
        return x, mask

    def _score(self, images, prompts):
        """``exp(mean_k log p(answer_k | image, question, answer_<k))`` over the answer and </s>."""
        import torch

        b = len(prompts)
        x, mask = self._embed(prompts, images)
        labels = torch.tensor([self.labels] * b, device=self.device)
        logits = self.model(inputs_embeds=x, attention_mask=mask, labels=labels).logits
        logp = torch.log_softmax(logits[..., :len(self.tokenizer)].float(), dim=-1)
        return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(-1).exp()


def vqascore_t5(path=None, device=None, size: str = "xxl", dtype=None, autocast="auto", tokenizer=None,
                processor=None, question: str = VQA_QUESTION, answer: str = ANSWER,
                batch_size: int = DEFAULT_BATCH_SIZE, local_files_only: bool = False, name: str | None = None):
    """VQAScore over CLIP-FlanT5 (module docstring). ``path``: a local copy of
    ``zhiqiulin/clip-flant5-<size>``; ``tokenizer`` / ``processor``: where the T5 tokenizer and
    the CLIP image processor come from (default: ``path`` / the hub id when it has them, else
    ``google/flan-t5-<size>`` and ``config.mm_vision_tower``). ``dtype`` (default: bfloat16 on
    CUDA, as upstream, float32 elsewhere) and ``autocast`` (default ``"auto"``: bfloat16 autocast
    on CUDA, as upstream, none elsewhere): the precision (module docstring)."""
    require("transformers", "transformers", "vqascore")
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, T5Config

    if size not in MODELS:
        raise ValueError(f"vqascore: size must be one of {', '.join(MODELS)}; got {size!r}")
    hub, flan = MODELS[size]
    what, src = f"vqascore (CLIP-FlanT5-{size.upper()})", str(path or hub)
    kw = {"local_files_only": True} if local_files_only else {}
    config = from_pretrained(T5Config, src, what, hub, **kw)
    for key, want in (("mm_projector_type", "mlp2x_gelu"), ("mm_vision_select_feature", "patch")):
        if getattr(config, key, want) != want:  # capo builds upstream's released configuration only
            raise RewardLoadError(f"{what}: {src} has {key}={getattr(config, key)!r}; capo implements the released "
                                  f"CLIP-FlanT5 ({key}={want!r}). {hub_hint(hub)}")
    dev = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tower = getattr(config, "mm_vision_tower", None) or VISION_TOWER
    if not hasattr(config, "vision_config"):
        config.vision_config = from_pretrained(CLIPVisionConfig, tower, f"{what} vision tower", tower, **kw).to_dict()
    cls = model_class()
    try:
        model, info = cls.from_pretrained(src, config=config, output_loading_info=True, dtype=dtype, **kw)
    except OSError as e:
        raise RewardLoadError(f"{what}: cannot load {src!r} ({first_line(e)}). {hub_hint(hub)}") from e
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("vision_tower.")]
    if any(k.startswith("mm_projector.") for k in missing):
        raise RewardLoadError(f"{what}: {src} has no mm_projector weights: not a CLIP-FlanT5 checkpoint. "
                              f"{hub_hint(hub)}")
    if any(k.startswith("vision_tower.") for k in info.get("missing_keys", [])):  # tower saved apart: load it
        vm = from_pretrained(CLIPVisionModel, tower, f"{what} vision tower", tower, **kw)
        model.vision_tower.vision_tower.load_state_dict(vm.state_dict())
    model = model.to(dtype)

    def _has(f):
        return path is not None and (Path(path) / f).is_file()

    tok_src = tokenizer or (path if _has("tokenizer_config.json") else (hub if path is None else flan))
    try:
        tok = from_pretrained(AutoTokenizer, tok_src, f"{what} tokenizer", flan, **kw)
    except RewardLoadError:
        if tokenizer or tok_src == flan:
            raise
        tok = from_pretrained(AutoTokenizer, flan, f"{what} tokenizer", flan, **kw)
    proc_src = processor or (path if _has("preprocessor_config.json") else tower)
    proc = from_pretrained(CLIPImageProcessor, proc_src, f"{what} image processor", tower, **kw)
    return VQAScoreT5(model, tok, proc, dev, batch_size, question=question, answer=answer,
                      name=name or ("vqascore" if size == "xxl" else f"vqascore-{size}"),
                      autocast=autocast_dtype(autocast, dev, "bfloat16"))


def vqascore_xl(**kwargs):
    """VQAScore over CLIP-FlanT5-XL (``zhiqiulin/clip-flant5-xl``), for smaller GPUs."""
    return vqascore_t5(size="xl", **kwargs)
