"""MPS, the paper's overall-preference reward (Zhang et al., "Learning Multi-dimensional Human
Preference for Text-to-Image Generation", CVPR 2024; Kwai-Kolors/MPS), implemented in capo.

Why capo implements it instead of depending on a package (checked 2026-12, wheels read):
``imscore`` 0.0.11 (MIT per its classifier) ports MPS as ``MPS.from_pretrained("RE-N-Y/mpsv1")``
but hard-codes the ``laion/CLIP-ViT-H-14...`` ids in its constructor, so it downloads the whole
CLIP-H before overwriting it and loads offline only from a pre-filled hub cache, and its README
asks for ``transformers<5`` (capo runs transformers 5); ``t2v_metrics`` 3.0 (Apache-2.0) has no MPS
at all (its ``build_mps_model`` port lives in ``evalscope`` 1.14.1, which fetches from ModelScope
and pulls ``modelscope[datasets]``) and pins ``torch==2.5.1``. capo reads imscore's weights file
(and the original pickle) instead.

Upstream facts (the MPS repository publishes only compiled ``trainer`` modules; the model code
is public in copies that agree line for line: Open-Sora-Plan ``opensora/eval/mps/trainer/models``,
evalscope ``t2v_metrics/models/clipscore_models/build_mps_model``, imscore ``imscore/mps``):

* a CLIP ViT-H-14 (transformers ``CLIPModel``, architecture, tokenizer and processor of
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) whose text and image features are the projections
  of EVERY token: ``text_f = text_projection(text last_hidden_state)`` (B, 77, D),
  ``image_f = visual_projection(vision last_hidden_state)`` (B, 257, D, no post-layernorm), and
  the prompt's pooled feature ``text_eos = text_projection(hidden at the EOS token)``;
* ``cross_model = Cross_model(dim=1024, layer_num=4, dim_head=64, heads=16, ff_mult=4)``: per
  layer ``q = q + CrossAttention(q, text_f, mask)`` (pre-LayerNorm without bias, multi-query
  attention: one 64-wide key/value head, SwiGLU feed-forward in parallel), then
  ``q = q + ParallelTransformerBlock(q)`` (fused q/k/v/ff projection, rotary embeddings on q
  and k, unmasked, SwiGLU feed-forward in parallel); every Linear without bias;
* the condition mask: ``s = max_j <text_f_i, cond_f_j>`` over the condition's tokens
  (unnormalised dot products), divided by its maximum over the prompt's tokens, then
  ``mask_i = 0 if s_i > threshold else -inf`` (the README's inference and training forward use
  0.01, the standalone eval scripts 0.3: ``threshold=``; upstream divides by the max over the
  whole batch, which equals this per-item max for the batch of one it scores, so capo uses the
  per-item max and an item's score does not depend on its batch);
* the score ``logit_scale.exp() * cos(cross_model(image_f, text_f, mask)[:, 0], text_eos)``;
  the condition text of the "overall" model is ``OVERALL_CONDITION``; text tokenised to 77 with
  ``padding="max_length"`` and no attention mask (CLIP's causal mask makes padding harmless);
  the EOS token is the first occurrence of the tokenizer's EOS id (upstream sets
  ``eos_token_id = 2``, transformers' legacy ``argmax(input_ids)``, the same token for CLIP's
  vocabulary, where EOS has the largest id).

Images are preprocessed as transformers 4.x's PIL ``CLIPImageProcessor`` does (the README's
``CLIPImageProcessor.from_pretrained``; ``capo.rewards.base.Pixels``), not with transformers 5's
torchvision default. Precision: upstream's forward casts the pixels and the mask to half
(``image_inputs.half()``, ``mask.half()``), so the released model runs in float16 on a GPU; capo
scores in ``dtype`` (default float32; ``dtype=torch.float16`` on CUDA is upstream's).

BT transform: ``identity``. MPS is trained, like PickScore, with the softmax over a pair of
``logit_scale * cos`` logits (the README's inference takes ``softmax`` of exactly these scores).

Weights, in the order tried:

* ``path=FILE`` or the first of these in ``path=DIR``: the released ``MPS_overall_checkpoint.pth``
  (a whole pickled model of the unpublished ``trainer`` package around transformers 4.x objects,
  ``CLIPTextTransformer`` and others that transformers 5 no longer has; capo unpickles every
  ``trainer.*`` and ``transformers.*`` class, and any class it cannot find, as a stand-in that
  keeps only its state, then reads the tensors off the module tree by path, so the file loads
  whatever transformers is installed; unpickling runs code from the file, so use only a file you
  trust), ``MPS_overall_state_dict.pt`` (ModelScope ``AI-ModelScope/MPS``), ``model.safetensors``
  (imscore's port on the hub, ``RE-N-Y/mpsv1``, keys prefixed ``mps.``);
* default: ``RE-N-Y/mpsv1`` (``model.safetensors``) from the Hugging Face cache or hub.

The CLIP architecture, tokenizer and processor come from ``DIR`` when it holds a CLIP
``config.json``, else from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (only its config, tokenizer
and processor files are read: the MPS file holds every weight).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from capo.rewards import RewardLoadError
from capo.rewards.base import (CLIP_MAX_TOKENS, DEFAULT_BATCH_SIZE, Pixels, Reward, first_line, from_pretrained, require,
                               resolve_device)

MPS_REPO, MPS_FILE = "RE-N-Y/mpsv1", "model.safetensors"  # imscore's port of MPS_overall_checkpoint.pth
MPS_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
MPS_FILES = ("MPS_overall_checkpoint.pth", "MPS_overall_state_dict.pt", "model.safetensors")
OVERALL_CONDITION = ("light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, "
                     "structure, instance, texture, quantity, attributes, position, number, location, word, things.")
THRESHOLD = 0.01  # README inference / training forward (the eval scripts use 0.3)
HOW = (f"MPS weights: `hf download {MPS_REPO} {MPS_FILE}` (imscore's port), or the released "
       "MPS_overall_checkpoint.pth (Google Drive link in the Kwai-Kolors/MPS README) passed as path=FILE; "
       f"the CLIP-H config, tokenizer and processor: `hf download {MPS_CLIP} config.json tokenizer.json "
       "tokenizer_config.json vocab.json merges.txt special_tokens_map.json preprocessor_config.json`")


# ----------------------------------------------------------------------------- the cross model
class LayerNorm(nn.Module):
    """LayerNorm with a fixed zero bias (a buffer, saved in the state dict)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)

class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args):
        return self.fn(x, *args) + x

class SwiGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x

class RotaryEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, n, device):
        freqs = torch.outer(torch.arange(n, device=device, dtype=self.inv_freq.dtype), self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)

def rotate(pos, t):  # t * cos + rotate_half(t) * sin, rotate_half([x1 | x2]) = [-x2 | x1]
    x1, x2 = t.chunk(2, dim=-1)
    return t * pos.cos() + torch.cat((-x2, x1), dim=-1) * pos.sin()

def heads_first(x, h):  # b n (h d) -> b h n d
    b, n, _ = x.shape
    return x.view(b, n, h, -1).transpose(1, 2)

def heads_last(x):  # b h n d -> b n (h d)
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)

class CrossAttention(nn.Module):
    """Multi-query cross attention from the image tokens to the text tokens, with a parallel
    SwiGLU feed-forward on the (normed) queries."""

    def __init__(self, dim, dim_head, heads, ff_mult):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = LayerNorm(dim)
        self.context_norm = nn.Identity()
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim * 2, bias=False), SwiGLU(),
                                nn.Linear(ff_mult * dim, dim, bias=False))

    def forward(self, x, context, mask):
        x = self.norm(x)
        q = heads_first(self.to_q(x), self.heads) * self.scale
        k, v = self.to_kv(self.context_norm(context)).chunk(2, dim=-1)
        sim = torch.einsum("bhid,bjd->bhij", q, k) + mask.unsqueeze(1)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        out = heads_last(torch.einsum("bhij,bjd->bhid", attn, v))
        return self.to_out(out) + self.ff(x)

class ParallelTransformerBlock(nn.Module):
    """Self-attention (multi-query, rotary) and a SwiGLU feed-forward from one fused projection."""

    def __init__(self, dim, dim_head, heads, ff_mult):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = LayerNorm(dim)
        self.fused_dims = (heads * dim_head, dim_head, dim_head, ff_mult * dim * 2)
        self.rotary_emb = RotaryEmbedding(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff_mult * dim, dim, bias=False))

    def forward(self, x):
        x = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(x).split(self.fused_dims, dim=-1)
        pos = self.rotary_emb(x.shape[1], x.device)
        q, k = rotate(pos, heads_first(q, self.heads)), rotate(pos, k)
        sim = torch.einsum("bhid,bjd->bhij", q * self.scale, k)
        attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        return self.attn_out(heads_last(torch.einsum("bhij,bjd->bhid", attn, v))) + self.ff_out(ff)

class CrossModel(nn.Module):
    """MPS's ``Cross_model``: the image tokens attend to the prompt's tokens, layer by layer."""

    def __init__(self, dim, layer_num=4, dim_head=64, heads=16, ff_mult=4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Residual(CrossAttention(dim, dim_head, heads, ff_mult)),
                           Residual(ParallelTransformerBlock(dim, dim_head, heads, ff_mult))])
            for _ in range(layer_num))

    def forward(self, query, context, mask):
        for cross, block in self.layers:
            query = block(cross(query, context, mask))
        return query

class MPSModel(nn.Module):
    """``model`` (transformers CLIPModel) + ``cross_model``: the upstream state-dict layout."""

    def __init__(self, clip, **cross):
        super().__init__()
        self.model = clip
        self.cross_model = CrossModel(clip.config.projection_dim, **cross)


def cross_shape(state: dict) -> dict:
    """``layer_num``, ``dim_head``, ``heads``, ``ff_mult`` of a cross model, read off its weights."""
    layers = {int(k.split(".")[2]) for k in state if k.startswith("cross_model.layers.")}
    if not layers:
        raise ValueError("no cross_model.* weights")
    to_q, to_kv = state["cross_model.layers.0.0.fn.to_q.weight"], state["cross_model.layers.0.0.fn.to_kv.weight"]
    ff_in = state["cross_model.layers.0.0.fn.ff.0.weight"]
    dim_head, dim = to_kv.shape[0] // 2, to_q.shape[1]
    return {"layer_num": max(layers) + 1, "dim_head": dim_head, "heads": to_q.shape[0] // dim_head,
            "ff_mult": ff_in.shape[0] // 2 // dim}


# ----------------------------------------------------------------------------- reading weights
STAND_IN_PACKAGES = ("trainer", "transformers")


class StandIn:
    """What an object of a stood-in class unpickles as: its pickled state kept as attributes
    (``__dict__``), constructor arguments in ``args``, pickled list / dict items in ``items``."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slots = state  # (__dict__, __slots__ values)
            self.__dict__.update(slots or {})
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["state"] = state

    def __setitem__(self, key, value):  # a pickled dict subclass
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):  # a pickled list subclass
        self.__dict__.setdefault("items", []).append(value)

    def extend(self, values):
        for v in values:
            self.append(v)


@functools.cache
def _stand_in(module: str, name: str):
    return type(name, (StandIn,), {"__module__": f"capo.rewards.mps.standin.{module}"})


class _StandIns(pickle.Unpickler):
    """Unpickles ``MPS_overall_checkpoint.pth``, a whole pickled model, whatever is installed. The
    file names classes of the unpublished ``trainer`` package and of the transformers 4.x it was
    saved with (``transformers.models.clip.modeling_clip.CLIPTextTransformer``, ``CLIPSdpaAttention``,
    the config classes, ...), which transformers 5 removed or changed: every class of those two
    packages, and any other class that cannot be found, becomes a ``StandIn`` that only keeps its
    pickled state; torch's own classes (``nn.Linear``, ``nn.LayerNorm``, parameters, storages) load
    as themselves. ``module_tensors`` then reads the tensors off the module tree by path."""

    def find_class(self, module, name):
        if module.split(".")[0] in STAND_IN_PACKAGES:
            return _stand_in(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stand_in(module, name)


class _PickleModule:  # what torch.load's pickle_module needs
    Unpickler = _StandIns
    load = staticmethod(lambda f, **kw: _StandIns(f, **kw).load())


def module_tensors(obj, prefix: str = "") -> dict:
    """``state_dict()`` of a pickled module tree, real ``nn.Module`` or ``StandIn`` alike: the
    ``_parameters`` and persistent ``_buffers`` of every module reached through ``_modules``."""
    d = getattr(obj, "__dict__", None) or {}
    out = {}
    for k, v in (d.get("_parameters") or {}).items():
        if torch.is_tensor(v):
            out[prefix + k] = v.detach()
    skip = d.get("_non_persistent_buffers_set") or set()
    for k, v in (d.get("_buffers") or {}).items():
        if torch.is_tensor(v) and k not in skip:
            out[prefix + k] = v
    for k, m in (d.get("_modules") or {}).items():
        if m is not None:
            out.update(module_tensors(m, f"{prefix}{k}."))
    return out


def read_state(file: Path) -> dict:
    """The MPS weights of ``file`` as ``{"model.*", "cross_model.*"}`` tensors."""
    file = Path(file)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            obj = torch.load(str(file), map_location="cpu", weights_only=False, pickle_module=_PickleModule)
            state = obj if isinstance(obj, dict) else module_tensors(obj)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, named with the reason
        raise RewardLoadError(f"mps: cannot read {file} ({type(e).__name__}: {first_line(e)}). {HOW}") from e
    if not isinstance(state, dict):
        raise RewardLoadError(f"mps: {file} holds a {type(state).__name__}, not MPS weights. {HOW}")
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.").removeprefix("mps.")
        if k.startswith(("model.", "cross_model.")) and torch.is_tensor(v):
            out[k] = v
    if not any(k.startswith("cross_model.") for k in out) or not any(k.startswith("model.") for k in out):
        raise RewardLoadError(f"mps: {file} has no model.* (CLIP) and cross_model.* weights: not an MPS checkpoint. "
                              f"{HOW}")
    return out


def _weights_file(path, local_files_only: bool) -> Path:
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if p.is_dir():
            for f in MPS_FILES:
                if (p / f).is_file():
                    return p / f
            raise RewardLoadError(f"mps: {p} holds none of {', '.join(MPS_FILES)}. {HOW}")
        raise RewardLoadError(f"mps: {p} does not exist. {HOW}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(MPS_REPO, MPS_FILE, local_files_only=local_files_only))
    except Exception as e:  # noqa: BLE001 - offline / not-found errors differ across huggingface_hub versions
        raise RewardLoadError(f"mps: cannot load {MPS_REPO}/{MPS_FILE} ({first_line(e)}). {HOW}") from e


# ----------------------------------------------------------------------------- the reward
class MPS(Reward):
    name = "mps"
    bt_transform = "identity"

    def __init__(self, model, tokenizer, image_processor, device, batch_size, condition: str = OVERALL_CONDITION,
                 threshold: float = THRESHOLD):
        super().__init__(device, batch_size)
        self.net, self.tokenizer, self.image_processor = model.to(device).eval(), tokenizer, image_processor
        self.pixels = Pixels.from_processor(image_processor)  # the 4.x CLIPImageProcessor's PIL steps
        self.condition, self.threshold = condition, float(threshold)
        self.cond_ids = self._ids([condition])

    def _ids(self, texts):
        return self.tokenizer(texts, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True,
                              return_tensors="pt")["input_ids"].to(self.device)

    def _text(self, ids):
        """(projections of every token (B, 77, D), projection at the first EOS token (B, D))."""

        clip = self.net.model
        hidden = clip.text_model(input_ids=ids).last_hidden_state
        eos = (ids == self.tokenizer.eos_token_id).int().argmax(-1)
        return clip.text_projection(hidden), clip.text_projection(hidden[torch.arange(len(ids)), eos])

    def _score(self, images, prompts):
        clip, b = self.net.model, len(prompts)
        text_f, text_eos = self._text(self._ids(prompts))
        cond_f, _ = self._text(self.cond_ids.expand(b, -1))
        px = self.pixels(images)
        image_f = clip.visual_projection(clip.vision_model(pixel_values=px.to(self.device, clip.dtype)).last_hidden_state)
        s = torch.einsum("bid,bjd->bji", text_f, cond_f).amax(dim=1, keepdim=True)  # (B, 1, 77): best condition token
        s = s / s.amax(dim=-1, keepdim=True)
        mask = torch.where(s > self.threshold, 0.0, float("-inf")).to(image_f.dtype).expand(-1, image_f.shape[1], -1)
        feat = self.net.cross_model(image_f, text_f, mask)[:, 0].float()
        cos = torch.nn.functional.cosine_similarity(feat, text_eos.float(), dim=-1)
        return clip.logit_scale.exp().float() * cos


def mps(path=None, device=None, clip=None, dtype=None, threshold: float = THRESHOLD, condition: str = OVERALL_CONDITION,
        batch_size: int = DEFAULT_BATCH_SIZE, local_files_only: bool = False):
    """MPS (module docstring). ``path``: the MPS weights file or a folder holding one (and,
    optionally, the CLIP config / tokenizer / processor); ``clip``: where those come from
    (default: ``path`` when it has them, else ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``)."""
    require("transformers", "transformers", "mps")
    from accelerate import init_empty_weights
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    kw = {"local_files_only": True} if local_files_only else {}
    file = _weights_file(path, local_files_only)
    src = clip or (path if path is not None and (Path(path) / "config.json").is_file() else MPS_CLIP)
    config = from_pretrained(CLIPConfig, src, "mps (CLIP-H config)", MPS_CLIP, **kw)
    tokenizer = from_pretrained(AutoTokenizer, src, "mps (CLIP-H tokenizer)", MPS_CLIP, **kw)
    processor = from_pretrained(CLIPImageProcessor, src, "mps (CLIP-H image processor)", MPS_CLIP, **kw)
    state = read_state(file)
    with init_empty_weights():
        net = MPSModel(CLIPModel(config), **cross_shape(state))
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("position_ids")]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise RewardLoadError(f"mps: {file} does not fit the CLIP architecture of {src} ("
                              + (f"{len(missing)} missing, e.g. {missing[:3]}" if missing else "")
                              + ("; " if missing and wrong else "")
                              + (f"{len(wrong)} of another shape, e.g. {wrong[:3]}" if wrong else "") + f"). {HOW}")
    net.load_state_dict({k: state[k] for k in own if k in state}, strict=False, assign=True)
    for name, buf in net.named_buffers():  # buffers left on the meta device (position ids) are rebuilt
        if buf.is_meta:
            raise RewardLoadError(f"mps: buffer {name} has no value after loading {file}")
    dt = dtype or torch.float32
    return MPS(net.to(dt), tokenizer, processor, resolve_device(device), batch_size, condition=condition, threshold=threshold)


