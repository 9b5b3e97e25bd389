"""The paper's reward models (and their usual companions), real implementations.

Every factory returns an object with ``name``, ``bt_transform`` and
``__call__(images uint8 (B, H, W, 3), prompts) -> np.ndarray float64 (B,)``; scoring is
batched (``batch_size``) under ``torch.no_grad``, and an item's score does not depend on
the batch it is scored in. Factories take ``path`` (a local copy instead of the hub id),
``device`` (default: CUDA if available) and ``local_files_only`` (never touch the
network); heavy imports happen inside them. Missing weights or packages raise
``RewardLoadError`` naming the weights (hub id / URL) and the pip package.

=============  =============================================================  ===============
name           score                                                          bt_transform
=============  =============================================================  ===============
pickscore      ``logit_scale * cos(img, txt)`` of the PickScore CLIP-H         identity
hps            HPSv2.1: ``cos(img, txt)`` of the HPS OpenCLIP ViT-H-14         temperature:1/s
imagereward    ImageReward (BLIP): ``(r - mean) / std``                        temperature:1/std
aesthetic      LAION improved aesthetic predictor, ~1..10                     temperature:1
clipscore      ``2.5 * max(cos, 0)`` of CLIP ViT-B/32 (Hessel et al., 2021)   temperature:2.5/s
vqascore-blip  ``P("yes" | image, question(prompt))`` of a BLIP VQA model      logit
mps            ``logit_scale * cos`` of MPS's cross-attention head (mps.py)    identity
=============  =============================================================  ===============

(``s`` is the model's CLIP ``logit_scale.exp()``, 100 for the released checkpoints.)

Images are preprocessed as upstream does, with PIL, whatever transformers is installed
(``Pixels``, ``hps_pixels``): transformers 5's default image processors resize with torchvision
and move pixels by up to 2 levels from the transformers 4.x PIL processors the rewards were
trained and published with. Rewards that upstream scores under autocast take ``autocast=``
(``autocast_dtype``; default ``"auto"``: upstream's autocast on CUDA, none on the CPU).

Facts and sources:

* PickScore: model ``yuvalkirstain/PickScore_v1``, processor
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; text padded/truncated to 77 tokens; score
  ``model.logit_scale.exp() * text_embs @ image_embs.T`` of L2-normalised projections
  (PickScore model card / repo README), images through the processor's config as the 4.x
  ``CLIPImageProcessor`` runs it (``Pixels.from_processor``: PIL bicubic shortest side, crop
  offsets ``(H - 224) // 2``), float32 (the model card's). Trained as a BT/softmax model on
  these logits: identity.
* HPSv2.1: ``create_model_and_transforms('ViT-H-14', ...)`` + ``xswu/HPSv2`` file
  ``HPS_v2.1_compressed.pt`` (``checkpoint['state_dict']``) over the architecture of tag
  ``laion2B-s32B-b79K`` (plain GELU, ``force_quick_gelu=False``), tokenizer
  ``get_tokenizer('ViT-H-14')``; validation transform ``ToTensor`` -> ``ResizeMaxSize(224)`` on
  the float tensor -> zero padding -> ``Normalize`` (``resize_longest_max=True``, OpenAI
  mean/std; ``hps_pixels``); float32 weights under float16 autocast on CUDA; score
  ``diag(image_features @ text_features.T)`` of normalised features, i.e. the cosine
  (~0.2-0.35) (tgxs002/HPSv2 ``hpsv2/img_score.py``, ``utils.py``). HPS is trained
  with cross-entropy on ``logit_scale * cos`` with ``logit_scale`` clamped to ln 100
  (``hpsv2/src/training/train.py``), so its BT logit is ``s * cos``:
  ``temperature:1/s`` with ``s`` read from the checkpoint.
* ImageReward: package ``image-reward`` (``import ImageReward``), weights
  ``THUDM/ImageReward`` (``ImageReward.pt``, ``med_config.json``); BLIP ViT-L image
  encoder, prompt tokenised to 35 tokens, [CLS] feature of the image-grounded text
  encoder -> MLP -> ``(r - 0.16717362830052426) / 1.0333394966054072``
  (THUDM/ImageReward ``ImageReward/ImageReward.py``). ``r`` is trained with a pairwise
  BT loss, so the BT logit is ``std * score``: ``temperature:1/std``.
* Aesthetic: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``) image embedding,
  L2-normalised, then the MLP ``768-1024-128-64-16-1`` (Linear layers with Dropout
  0.2/0.2/0.1 between the first four, no activations) with weights
  ``sac+logos+ava1-l14-linearMSE.pth`` (christophschuhmann/improved-aesthetic-predictor
  ``simple_inference.py``); a regression onto mean ratings on a 1-10 scale. Upstream embeds with
  OpenAI's ``clip.load("ViT-L/14")`` and its preprocess ``_transform(224)`` (torchvision
  ``Resize``/``CenterCrop`` on the PIL image: crop offsets ``round((H - 224) / 2)``,
  ``Pixels.openai``); ``clip.load`` keeps float16 weights on CUDA (``dtype=torch.float16`` for
  that; capo's default is float32). Temperature
  ``T = 1.0`` (``temperature=`` to change it): a one-point gap reads as a 73%
  preference. Not from the paper, whose aesthetic reward is VILA; a declared default.
* CLIPScore: ``w * max(cos(E_img, E_txt), 0)`` with ``w = 2.5``, CLIP ViT-B/32
  (``openai/clip-vit-base-patch32``), text prefixed with ``"A photo depicts "``
  (Hessel et al., 2021, "CLIPScore", and jmhessel/clipscore ``clipscore.py``: OpenAI
  ``clip.load("ViT-B/32")`` and ``_transform_test(224)``, the same transform as OpenAI's,
  ``Pixels.openai``; on CUDA upstream runs float16 weights and pixels, ``dtype=torch.float16``
  for that; capo's default is float32). CLIP's own contrastive
  logit is ``s * cos``, so ``temperature:w/s`` (0.025) maps a positive score back to it.
* VQAScore (BLIP variant, ``vqascore-blip``): question ``'Does this figure show "{prompt}"?
  Please answer yes or no.'``, answer ``"yes"`` and score ``exp(-mean token cross-entropy of the
  answer)`` (the answer's tokens including the end token) as in linzhiqiu/t2v_metrics
  (``t2v_metrics/models/vqascore_models/clip_t5_model.py``), over a transformers BLIP VQA
  model (``Salesforce/blip-vqa-base``, ``BlipForQuestionAnswering``; answer ``"yes"`` then
  [SEP], decoder started from the BOS token, as its ``generate`` does; images through the
  processor's config as the 4.x ``BlipImageProcessor`` runs it, ``Pixels``). Not the paper's
  numbers: the paper's VQAScore is CLIP-FlanT5-XXL, ``vqascore`` (``capo.rewards.vqascore``).
  A probability: ``logit``.
* MPS (Kwai-Kolors/MPS): implemented in ``capo.rewards.mps`` (its facts and sources there).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from capo import openclip
from capo.rewards import RewardLoadError
from capo.rewards.base import (
    autocast_dtype,
    CLIP_MAX_TOKENS,
    DEFAULT_BATCH_SIZE,
    first_line,
    from_pretrained,
    has_processor,
    hub_hint,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Pixels,
    pooled_output,
    require,
    resolve_device,
    Reward,
    to_pil,
)

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_REPO, HPS_FILE, HPS_ARCH = "xswu/HPSv2", "HPS_v2.1_compressed.pt", "ViT-H-14"
HPS_TAG = "laion2B-s32B-b79K"  # the open_clip tag HPSv2 builds its ViT-H-14 from (plain GELU)
OPENCLIP_MODELS = {"hps": (HPS_ARCH, HPS_TAG)}  # every open_clip (arch, tag) a reward builds
IMAGEREWARD_REPO, IMAGEREWARD_NAME = "THUDM/ImageReward", "ImageReward-v1.0"
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = f"https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{AESTHETIC_FILE}"
AESTHETIC_TEMPERATURE = 1.0
CLIPSCORE_MODEL = "openai/clip-vit-base-patch32"
CLIPSCORE_W, CLIPSCORE_PREFIX = 2.5, "A photo depicts "
VQA_MODEL = "Salesforce/blip-vqa-base"
VQA_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
VQA_ANSWER = "yes"


# ----------------------------------------------------------------------------- helpers


# ----------------------------------------------------------------------------- image preprocessing


def hps_pixels(images, size: int, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, antialias: bool = True):
    """HPSv2's validation transform, float32 ``(B, 3, size, size)`` (tgxs002/HPSv2
    ``hpsv2/src/open_clip/transform.py``: ``image_transform(..., resize_longest_max=True)``):
    ``ToTensor`` (``x / 255``), then ``ResizeMaxSize`` ON THE FLOAT TENSOR: scale ``size / max(h, w)``,
    new sides ``round(side * scale)`` (Python's round), bicubic (torchvision's tensor resize:
    ``interpolate(bicubic, align_corners=False)``, no clamping), zero padding ``[pad_w // 2,
    pad_h // 2, rest]`` (left, top, right, bottom); no resize or pad when the longest side is
    already ``size``; then ``Normalize``. ``antialias``: torchvision >= 0.17 antialiases tensor
    resizes by default (what ``pip install hpsv2`` runs today); older torchvision did not
    (``antialias=False``)."""
    import torch
    import torch.nn.functional as F

    out = []
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(im, np.uint8))).permute(2, 0, 1).float().div(255)
        h, w = x.shape[1:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=antialias)[0]
            ph, pw = size - nh, size - nw
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
        out.append((x - m) / s)
    return torch.stack(out)


# ----------------------------------------------------------------------------- precision


class _HFClip(Reward):
    """A transformers ``CLIPModel`` + processor (its tokenizer; images go through ``pixels``, a
    ``Pixels``: default the processor's config run as transformers 4.x runs it): normalised image
    and text embeddings."""

    def __init__(self, model, processor, device, batch_size: int, prefix: str = "", pixels: Pixels | None = None):
        super().__init__(device, batch_size)
        self.model, self.processor, self.prefix = model.to(device).eval(), processor, prefix
        self.pixels = pixels or Pixels.from_processor(processor)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def image_embeds(self, images):
        import torch

        px = self.pixels(images)
        e = pooled_output(self.model.get_image_features(pixel_values=px.to(self.device, self.model.dtype)))
        return torch.nn.functional.normalize(e.float(), dim=-1)

    def text_embeds(self, prompts):
        import torch

        tok = self.processor.tokenizer([self.prefix + p for p in prompts], padding=True, truncation=True,
                                       max_length=CLIP_MAX_TOKENS, return_tensors="pt")
        e = pooled_output(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                 attention_mask=tok["attention_mask"].to(self.device)))
        return torch.nn.functional.normalize(e.float(), dim=-1)

    def cosine(self, images, prompts):
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)


def _load_hf_clip(what, hub_model, hub_processor, path, processor, device, dtype, local_files_only):
    require("transformers", "transformers", what)
    from transformers import AutoProcessor, CLIPModel

    kw = {"local_files_only": True} if local_files_only else {}
    model = from_pretrained(CLIPModel, path or hub_model, what, hub_model, **({"dtype": dtype} if dtype else {}), **kw)
    proc_src = processor or (path if has_processor(path) else hub_processor)
    proc = from_pretrained(AutoProcessor, proc_src, f"{what} processor", hub_processor, **kw)
    return model, proc, resolve_device(device)


# ----------------------------------------------------------------------------- PickScore
class PickScore(_HFClip):
    name = "pickscore"
    bt_transform = "identity"

    def _score(self, images, prompts):
        return self.model.logit_scale.exp().float() * self.cosine(images, prompts)


def pickscore(path=None, device=None, processor=None, dtype=None, batch_size: int = DEFAULT_BATCH_SIZE,
              local_files_only: bool = False) -> PickScore:
    """PickScore v1 (``yuvalkirstain/PickScore_v1``; processor
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, or the one saved in ``path``)."""
    model, proc, dev = _load_hf_clip("pickscore", PICKSCORE_MODEL, PICKSCORE_PROCESSOR, path, processor, device,
                                     dtype, local_files_only)
    return PickScore(model, proc, dev, batch_size)


# ----------------------------------------------------------------------------- CLIPScore
class CLIPScore(_HFClip):
    name = "clipscore"

    def __init__(self, model, processor, device, batch_size, w: float = CLIPSCORE_W, prefix: str = CLIPSCORE_PREFIX):
        super().__init__(model, processor, device, batch_size, prefix=prefix,
                         pixels=Pixels.openai(model.config.vision_config.image_size))  # clipscore.py's transform
        self.w = float(w)
        self.bt_transform = f"temperature:{self.w / self.logit_scale:.6g}"

    def _score(self, images, prompts):
        return self.w * self.cosine(images, prompts).clamp(min=0)


def clipscore(path=None, device=None, processor=None, dtype=None, w: float = CLIPSCORE_W,
              prefix: str = CLIPSCORE_PREFIX, batch_size: int = DEFAULT_BATCH_SIZE,
              local_files_only: bool = False) -> CLIPScore:
    """CLIPScore ``w * max(cos, 0)`` (Hessel et al., 2021) on ``openai/clip-vit-base-patch32``."""
    model, proc, dev = _load_hf_clip("clipscore", CLIPSCORE_MODEL, CLIPSCORE_MODEL, path, processor, device, dtype,
                                     local_files_only)
    return CLIPScore(model, proc, dev, batch_size, w=w, prefix=prefix)


# ----------------------------------------------------------------------------- aesthetic
def aesthetic_mlp(input_size: int = 768):
    """The LAION improved-aesthetic-predictor head (state-dict keys ``layers.{0,2,4,6,7}``)."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                        nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                        nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return AestheticMLP()


class Aesthetic(_HFClip):
    name = "aesthetic"

    def __init__(self, model, processor, mlp, device, batch_size, temperature: float = AESTHETIC_TEMPERATURE):
        super().__init__(model, processor, device, batch_size,
                         pixels=Pixels.openai(model.config.vision_config.image_size))  # clip.load's preprocess
        self.mlp = mlp.to(device).eval()
        self.bt_transform = f"temperature:{float(temperature):g}"

    def _score(self, images, prompts):
        return self.mlp(self.image_embeds(images)).squeeze(-1)


def _aesthetic_weights(path, local_files_only: bool) -> Path:
    if path is not None:
        p = Path(path)
        p = p / AESTHETIC_FILE if p.is_dir() else p
        if not p.is_file():
            raise RewardLoadError(f"aesthetic: no predictor weights at {p}; download {AESTHETIC_URL}")
        return p
    root = Path(os.environ["CAPO_CACHE"]) if os.environ.get("CAPO_CACHE") else Path.home() / ".cache" / "capo"
    p = root / "rewards" / AESTHETIC_FILE
    if p.is_file():
        return p
    offline = local_files_only or any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                                      for v in ("HF_HUB_OFFLINE", "CAPO_OFFLINE"))
    hint = f"download {AESTHETIC_URL} to {p} (or anywhere, and pass path=FILE)"
    if offline:
        raise RewardLoadError(f"aesthetic: predictor weights {AESTHETIC_FILE} not found (offline): {hint}")
    try:
        import torch

        p.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(AESTHETIC_URL, str(p), progress=False)
    except Exception as e:  # noqa: BLE001 - any network failure means the same thing here
        raise RewardLoadError(f"aesthetic: could not download the predictor weights ({first_line(e)}): {hint}") from e
    return p


def aesthetic(path=None, device=None, clip_path=None, processor=None, dtype=None,
              temperature: float = AESTHETIC_TEMPERATURE, batch_size: int = DEFAULT_BATCH_SIZE,
              local_files_only: bool = False) -> Aesthetic:
    """LAION improved aesthetic predictor: ``path`` = the MLP weights (``.pth`` file or a
    directory holding ``sac+logos+ava1-l14-linearMSE.pth``), ``clip_path`` = a local
    ``openai/clip-vit-large-patch14``."""
    import torch

    weights = _aesthetic_weights(path, local_files_only)
    model, proc, dev = _load_hf_clip("aesthetic", AESTHETIC_CLIP, AESTHETIC_CLIP, clip_path, processor, device, dtype,
                                     local_files_only)
    mlp = aesthetic_mlp(int(model.config.projection_dim))
    mlp.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return Aesthetic(model, proc, mlp, dev, batch_size, temperature=temperature)


# ----------------------------------------------------------------------------- HPSv2.1
class HPS(Reward):
    name = "hps"

    def __init__(self, model, tokenizer, device, batch_size, antialias: bool = True, autocast=None):
        super().__init__(device, batch_size)
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.antialias, self.autocast = bool(antialias), autocast
        size = model.visual.image_size
        self.size = int(size if isinstance(size, int) else size[0])
        self.mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_CLIP_MEAN)
        self.std = tuple(getattr(model.visual, "image_std", None) or OPENAI_CLIP_STD)
        self.bt_transform = f"temperature:{1.0 / float(self.model.logit_scale.detach().exp()):.6g}"

    def preprocess(self, images):
        """HPSv2's validation transform (``hps_pixels``)."""
        return hps_pixels(images, self.size, self.mean, self.std, antialias=self.antialias)

    def _score(self, images, prompts):
        dt = next(self.model.parameters()).dtype
        px = self.preprocess(images).to(self.device, dt)
        img = self.model.encode_image(px, normalize=True).float()
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True).float()
        return (img * txt).sum(-1)


def hps_model(arch: str = HPS_ARCH, device: str = "cpu"):
    """``(model, tokenizer)``: the open_clip architecture HPSv2 builds (``create_model_and_transforms(
    'ViT-H-14', 'laion2B-s32B-b79K', force_quick_gelu=False, ...)``, hpsv2/img_score.py) with the
    activation of that tag (plain GELU), random weights: the checkpoint replaces them all."""
    model, _, tokenizer = openclip.create(arch, None, trained_as=HPS_TAG, load_weights=False, device=device)
    return model, tokenizer


def hps(path=None, device=None, arch: str = HPS_ARCH, dtype=None, autocast="auto", antialias: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE, local_files_only: bool = False) -> HPS:
    """HPSv2.1: OpenCLIP ``ViT-H-14`` with the ``xswu/HPSv2`` checkpoint ``HPS_v2.1_compressed.pt``
    (``path``: that file, or a directory holding it).

    Precision: upstream keeps float32 weights (``precision='amp'``) and scores under
    ``torch.cuda.amp.autocast()`` (float16) on CUDA; ``autocast="auto"`` does the same (float16
    autocast on CUDA, none on CPU); ``autocast=None`` scores in the weights' dtype (``dtype``,
    default float32), ``"bfloat16"`` / ``"float16"`` autocast on any device. ``antialias``: see
    ``hps_pixels``."""
    import torch

    require("open_clip", "open_clip_torch", "hps")
    if path is None:
        try:
            from huggingface_hub import hf_hub_download

            ckpt = hf_hub_download(HPS_REPO, HPS_FILE, local_files_only=local_files_only)
        except OSError as e:
            raise RewardLoadError(f"hps: cannot get {HPS_FILE} from {HPS_REPO} ({first_line(e)}). Download it on a "
                                  f"connected machine with `hf download {HPS_REPO} {HPS_FILE}` and pass path=FILE.") from e
    else:
        p = Path(path)
        ckpt = p / HPS_FILE if p.is_dir() else p
        if not Path(ckpt).is_file():
            raise RewardLoadError(f"hps: no checkpoint at {ckpt}; it is {HPS_FILE} from the hub repo {HPS_REPO}")
    model, tokenizer = hps_model(arch)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors have no common base class
        raise RewardLoadError(f"hps: cannot read {ckpt} as a weights-only checkpoint ({first_line(e)})") from e
    try:
        model.load_state_dict(state.get("state_dict", state))
    except RuntimeError as e:
        raise RewardLoadError(f"hps: {ckpt} does not fit open_clip's {arch!r} ({first_line(e)}); it should be "
                              f"{HPS_FILE} from {HPS_REPO} (HPSv2's open_clip fork, same state-dict layout)") from e
    if dtype is not None:
        model.to(dtype)
    dev = resolve_device(device)
    return HPS(model, tokenizer, dev, batch_size, antialias=antialias,
               autocast=autocast_dtype(autocast, dev, "float16"))


# ----------------------------------------------------------------------------- ImageReward
class ImageReward(Reward):
    name = "imagereward"
    bt_transform = f"temperature:{1.0 / IMAGEREWARD_STD:.6g}"

    def __init__(self, model, device, batch_size):
        super().__init__(device, batch_size)
        self.model = model.to(device).eval()

    def _score(self, images, prompts):
        """Batched ``ImageReward.inference_rank``: [CLS] of the image-grounded text encoder -> MLP."""
        import torch

        m = self.model
        tok = m.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                               return_tensors="pt").to(self.device)
        px = torch.stack([m.preprocess(im) for im in to_pil(images)]).to(self.device)
        img = m.blip.visual_encoder(px)
        att = torch.ones(img.shape[:-1], dtype=torch.long, device=self.device)
        out = m.blip.text_encoder(tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=img,
                                  encoder_attention_mask=att, return_dict=True)
        r = m.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (r - m.mean) / m.std


def imagereward(path=None, device=None, batch_size: int = DEFAULT_BATCH_SIZE, local_files_only: bool = False):
    """ImageReward v1.0 via the ``image-reward`` package (weights ``THUDM/ImageReward``:
    ``ImageReward.pt`` + ``med_config.json``; ``path``: the ``.pt`` file, or a directory
    holding both files, used as the package's download root)."""
    RM = require("ImageReward", "image-reward", "imagereward")
    dev = resolve_device(device)
    name, root = IMAGEREWARD_NAME, None
    if path is not None:
        p = Path(path)
        name, root = (IMAGEREWARD_NAME, str(p)) if p.is_dir() else (str(p), str(p.parent))
    try:
        model = RM.load(name, device=str(dev), download_root=root)
    except (OSError, RuntimeError) as e:
        raise RewardLoadError(f"imagereward: cannot load {IMAGEREWARD_REPO} (ImageReward.pt, med_config.json): "
                              f"{first_line(e)}. {hub_hint(IMAGEREWARD_REPO)}") from e
    return ImageReward(model, dev, batch_size)


# ----------------------------------------------------------------------------- VQAScore
class VQAScore(Reward):
    name = "vqascore-blip"
    bt_transform = "logit"

    def __init__(self, model, processor, device, batch_size, question: str = VQA_QUESTION, answer: str = VQA_ANSWER):
        super().__init__(device, batch_size)
        self.model, self.processor = model.to(device).eval(), processor
        self.pixels = Pixels.from_processor(processor)
        self.question, self.answer = question, answer
        tc = model.config.text_config
        ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"] + [tc.sep_token_id]
        self.targets = ids  # the answer's tokens, then the end token
        self.decoder_inputs = [tc.bos_token_id] + ids[:-1]

    def _score(self, images, prompts):
        """``exp(mean_k log p(answer_k | image, question, answer_<k))`` (t2v_metrics' VQAScore).

        Questions of equal token length are scored together, unpadded: transformers 5's BLIP text
        cross-attention drops ``encoder_attention_mask`` (``BlipTextLayer`` hands it to
        ``BlipTextAttention`` as ``attention_mask``, which its cross-attention branch ignores;
        checked on 5.24), so a padded question would leak its padding into the answer decoder and
        an item's score would depend on its batch. Unpadded, every transformers version agrees."""
        import torch

        m, b = self.model, len(prompts)
        ids = self.processor.tokenizer([self.question.format(p) for p in prompts], truncation=True)["input_ids"]
        px = self.pixels(images).to(self.device, m.dtype)
        img = m.vision_model(pixel_values=px).last_hidden_state
        out = torch.empty(b, device=self.device)
        for n in sorted({len(x) for x in ids}):
            rows = [i for i, x in enumerate(ids) if len(x) == n]
            q_ids = torch.tensor([ids[i] for i in rows], device=self.device)
            mask = torch.ones_like(q_ids)
            im = img[rows]
            img_mask = torch.ones(im.shape[:-1], dtype=torch.long, device=self.device)
            q = m.text_encoder(input_ids=q_ids, attention_mask=mask, encoder_hidden_states=im,
                               encoder_attention_mask=img_mask).last_hidden_state
            dec = torch.tensor([self.decoder_inputs] * len(rows), device=self.device)
            logits = m.text_decoder(input_ids=dec, encoder_hidden_states=q, encoder_attention_mask=mask).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            tgt = torch.tensor([self.targets] * len(rows), device=self.device)
            out[rows] = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).mean(-1).exp()
        return out


def vqascore_blip(path=None, device=None, processor=None, dtype=None, question: str = VQA_QUESTION,
             answer: str = VQA_ANSWER, batch_size: int = DEFAULT_BATCH_SIZE, local_files_only: bool = False):
    """VQAScore over a transformers BLIP VQA model (default ``Salesforce/blip-vqa-base``); the
    paper's CLIP-FlanT5 is ``vqascore`` (``capo.rewards.vqascore``)."""
    require("transformers", "transformers", "vqascore-blip")
    from transformers import AutoProcessor, BlipForQuestionAnswering

    kw = {"local_files_only": True} if local_files_only else {}
    model = from_pretrained(BlipForQuestionAnswering, path or VQA_MODEL, "vqascore-blip", VQA_MODEL,
                             **({"dtype": dtype} if dtype else {}), **kw)
    proc_src = processor or (path if has_processor(path) else VQA_MODEL)
    proc = from_pretrained(AutoProcessor, proc_src, "vqascore-blip processor", VQA_MODEL, **kw)
    return VQAScore(model, proc, resolve_device(device), batch_size, question=question, answer=answer)
