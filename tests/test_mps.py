"""MPS (capo.rewards.mps) on a tiny random CLIP of the real class with a random cross model.

The score is checked against a reference written here from the upstream listing in another
form (per-head loops, rotary embeddings as complex rotations, masked_fill instead of an
additive mask; pixels from the 4.x PIL processor re-derived in test_reward_parity), through
each weights format: imscore's safetensors (``mps.`` prefix), a plain state dict, and the
released whole-model pickle, whose ``trainer`` classes and transformers 4.x classes
(``CLIPTextTransformer``, ``CLIPSdpaAttention``, ...) do not exist here.
"""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from capo.rewards import REWARDS, RewardLoadError, load_reward
from capo.rewards import mps as M
from helpers import CROSS, check_common, clip_cfg, hf4_batch, make_images, tiny_clip_dir
from helpers import REWARD_PROMPTS as PROMPTS


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("mps-clip"), projection_dim=8)


@pytest.fixture(scope="module")
def state(clip_dir):
    """Upstream-layout weights: the tiny CLIP's own plus a random cross model (LayerNorm weights
    and their bias buffers randomised too, so a dropped buffer would show)."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_dir)
    torch.manual_seed(1)
    cross = M.CrossModel(clip.config.projection_dim, **CROSS)
    sd = {f"model.{k}": v for k, v in clip.state_dict().items()}
    for k, v in cross.state_dict().items():
        sd[f"cross_model.{k}"] = v if k.endswith("inv_freq") else torch.randn_like(v) * 0.3
    return sd


@pytest.fixture(scope="module")
def images():
    return make_images(width=57)  # resized to 32 x 45 and cropped at an odd offset


# ----------------------------------------------------------------------------- an independent reference
def _ln(x, w, b):
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def _swiglu(x):
    a, g = x.chunk(2, -1)
    return a * g * torch.sigmoid(g)


def _rot(t, n):
    """Rotary embedding as a complex rotation of (t_i, t_{i + d/2}) by angle pos / 10000^(2i/d)."""
    d = t.shape[-1]
    ang = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(t[..., : d // 2].double(), t[..., d // 2:].double()) * torch.exp(1j * ang)
    return torch.cat([z.real, z.imag], -1).to(t.dtype)


def reference(sd, clip, tok, images, prompts, threshold=M.THRESHOLD):
    H, Dh = CROSS["heads"], CROSS["dim_head"]
    out = []
    for img, prompt in zip(images, prompts):  # one item at a time, as the upstream eval scripts
        ids = tok([prompt], max_length=77, padding="max_length", truncation=True, return_tensors="pt").input_ids
        cid = tok([M.OVERALL_CONDITION], max_length=77, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids
        px = hf4_batch([img], clip_cfg(clip.config.vision_config.image_size))  # the 4.x CLIPImageProcessor
        with torch.no_grad():
            th = clip.text_model(input_ids=ids).last_hidden_state[0]
            ch = clip.text_model(input_ids=cid).last_hidden_state[0]
            t_tok, c_tok = th @ clip.text_projection.weight.T, ch @ clip.text_projection.weight.T
            eos = int((ids[0] == tok.eos_token_id).nonzero()[0])
            t_eos = t_tok[eos]
            q = clip.vision_model(pixel_values=px).last_hidden_state[0] @ clip.visual_projection.weight.T
            s = (t_tok @ c_tok.T).max(dim=1).values  # per prompt token: its best condition token
            keep = s / s.max() > threshold
            for layer in range(CROSS["layer_num"]):
                p = f"cross_model.layers.{layer}."
                w = lambda n: sd[p + n]  # noqa: E731
                x = _ln(q, w("0.fn.norm.weight"), w("0.fn.norm.bias"))
                k, v = (t_tok @ w("0.fn.to_kv.weight").T).split(Dh, -1)
                heads = []
                for h in range(H):
                    qh = (x @ w("0.fn.to_q.weight").T)[:, h * Dh:(h + 1) * Dh] / math.sqrt(Dh)
                    att = (qh @ k.T).masked_fill(~keep[None, :], float("-inf")).softmax(-1)
                    heads.append(att @ v)
                q = q + torch.cat(heads, -1) @ w("0.fn.to_out.weight").T + (
                    _swiglu(x @ w("0.fn.ff.0.weight").T) @ w("0.fn.ff.2.weight").T)
                x = _ln(q, w("1.fn.norm.weight"), w("1.fn.norm.bias"))
                f = x @ w("1.fn.fused_attn_ff_proj.weight").T
                inner = H * Dh
                qa, ka, va, ff = f[:, :inner], f[:, inner:inner + Dh], f[:, inner + Dh:inner + 2 * Dh], f[:, inner + 2 * Dh:]
                ka = _rot(ka, len(q))
                heads = [(_rot(qa[:, h * Dh:(h + 1) * Dh], len(q)) / math.sqrt(Dh) @ ka.T).softmax(-1) @ va
                         for h in range(H)]
                q = q + torch.cat(heads, -1) @ w("1.fn.attn_out.weight").T + _swiglu(ff) @ w("1.fn.ff_out.1.weight").T
            cos = torch.nn.functional.cosine_similarity(q[0], t_eos, dim=0)
            out.append(float(clip.logit_scale.exp() * cos))
    return np.array(out)


def _reference_of(r, sd, images):
    return reference(sd, r.net.model, r.tokenizer, images, PROMPTS)


# ----------------------------------------------------------------------------- the formats
def test_mps_safetensors_port(clip_dir, state, images, tmp_path):
    from safetensors.torch import save_file

    save_file({f"mps.{k}": v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    r = load_reward("mps", path=tmp_path / "model.safetensors", clip=clip_dir, device="cpu", batch_size=3)
    assert r.name == "mps" and r.bt_transform == "identity"
    s = check_common(r, images)
    np.testing.assert_allclose(s, _reference_of(r, state, images), rtol=1e-4, atol=1e-4)
    assert M.cross_shape(state) == CROSS


def test_mps_state_dict_in_a_folder_with_its_clip(clip_dir, state, images, tmp_path):
    import shutil

    d = tmp_path / "mps"
    shutil.copytree(clip_dir, d)  # config, tokenizer and processor beside the weights: path=DIR is enough
    torch.save(state, d / "MPS_overall_state_dict.pt")
    r = M.mps(path=d, device="cpu", batch_size=2)
    np.testing.assert_allclose(r(images, PROMPTS), _reference_of(r, state, images), rtol=1e-4, atol=1e-4)
    # the eval scripts' threshold keeps fewer prompt tokens: a different score, same reference
    r3 = M.mps(path=d, device="cpu", threshold=0.3)
    ref3 = reference(state, r3.net.model, r3.tokenizer, images, PROMPTS, threshold=0.3)
    np.testing.assert_allclose(r3(images, PROMPTS), ref3, rtol=1e-4, atol=1e-4)


def test_mps_released_pickle_without_its_trainer_package(clip_dir, state, images, tmp_path, monkeypatch):
    """MPS_overall_checkpoint.pth is a whole pickled module of the unpublished ``trainer``
    package: written here with a throwaway package, then read after it is gone."""
    pkg = tmp_path / "src" / "trainer" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "src" / "trainer" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cross_modeling.py").write_text(textwrap.dedent("""
        from capo.rewards.mps import CrossModel
        class Cross_model(CrossModel):
            pass
    """))
    (pkg / "clip_model.py").write_text(textwrap.dedent("""
        import torch
        class CLIPModel(torch.nn.Module):
            def __init__(self, model, cross):
                super().__init__()
                self.model, self.cross_model = model, cross
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    from transformers import CLIPModel as HFClip

    from trainer.models.clip_model import CLIPModel as Up
    from trainer.models.cross_modeling import Cross_model

    clip = HFClip.from_pretrained(clip_dir)
    cross = Cross_model(clip.config.projection_dim, **CROSS)
    cross.load_state_dict({k.removeprefix("cross_model."): v for k, v in state.items() if k.startswith("cross_model.")})
    torch.save(Up(clip, cross), tmp_path / "MPS_overall_checkpoint.pth")
    for name in [m for m in sys.modules if m == "trainer" or m.startswith("trainer.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "src")])
    with pytest.raises(ModuleNotFoundError):
        torch.load(tmp_path / "MPS_overall_checkpoint.pth", weights_only=False)
    r = M.mps(path=tmp_path / "MPS_overall_checkpoint.pth", clip=clip_dir, device="cpu")
    np.testing.assert_allclose(r(images, PROMPTS), _reference_of(r, state, images), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- errors
def test_mps_errors_name_weights_and_source(clip_dir, state, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(M.MPS_REPO, "model.safetensors"), str):
        with pytest.raises(RewardLoadError) as e:
            load_reward("mps", local_files_only=True)
        assert M.MPS_REPO in str(e.value) and "MPS_overall_checkpoint.pth" in str(e.value)
    with pytest.raises(RewardLoadError, match="holds none of"):
        M.mps(path=tmp_path, clip=clip_dir)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RewardLoadError, match="cannot read .*model.safetensors"):
        M.mps(path=tmp_path, clip=clip_dir)
    torch.save({k: v for k, v in state.items() if k.startswith("model.")}, tmp_path / "clip_only.pt")
    with pytest.raises(RewardLoadError, match="not an MPS checkpoint"):
        M.mps(path=tmp_path / "clip_only.pt", clip=clip_dir)
    big = tiny_clip_dir(tmp_path / "other-clip", projection_dim=12)  # weights of another architecture
    torch.save(state, tmp_path / "mps.pt")
    with pytest.raises(RewardLoadError, match="does not fit the CLIP architecture"):
        M.mps(path=tmp_path / "mps.pt", clip=big)
    assert "mps" in REWARDS.names()


# ----------------------------------------------------------------------------- the released pickle, as released
# Where each object of the released MPS_overall_checkpoint.pth came from: the unpublished trainer
# package around a transformers 4.x CLIPModel. Classes renamed from what transformers 5 / capo call them.
RELEASED_NAMES = {
    "CLIPModel": ("trainer.models.clip_model", "XCLIPModel"),  # MPS's CLIPModel subclass
    "CLIPTextModel": ("transformers.models.clip.modeling_clip", "CLIPTextTransformer"),
    "CLIPVisionModel": ("transformers.models.clip.modeling_clip", "CLIPVisionTransformer"),
    "CLIPAttention": ("transformers.models.clip.modeling_clip", "CLIPSdpaAttention"),
    "CrossModel": ("trainer.models.cross_modeling", "Cross_model"),
}


def _released_name(cls):
    if cls.__name__ in RELEASED_NAMES:
        return RELEASED_NAMES[cls.__name__]
    if cls.__module__.startswith("capo.rewards.mps"):
        return "trainer.models.cross_modeling", cls.__name__
    return cls.__module__, cls.__name__  # transformers' own module paths (modeling_clip, activations, config...)


def write_released_pickle(path, clip, cross):
    """``torch.save`` of the whole MPS model as the release has it: every transformers / capo object
    re-classed as a class of the 4.x / trainer module path it had (classes made here and registered
    only while pickling), persistent ``position_ids`` buffers (older 4.x), ``eos_token_id = 2`` on
    the text model and a non-persistent rotary cache (``pos_emb``), as after a forward."""
    import types

    fakes = {}

    def fake(cls, base, key=None):
        key = key or _released_name(cls)
        if key not in fakes:
            fakes[key] = type(key[1], (base,), {"__module__": key[0], "__qualname__": key[1]})
        return fakes[key]

    def refake(obj):  # a non-module object of a transformers class (the configs): a copy of the fake class
        if isinstance(obj, dict):
            return {k: refake(v) for k, v in obj.items()}
        if type(obj).__module__.startswith("transformers"):
            new = object.__new__(fake(type(obj), object))
            new.__dict__.update({k: refake(v) for k, v in vars(obj).items()})
            return new
        return obj

    for name, m in clip.named_modules():
        if name.endswith("embeddings"):
            n = m.position_embedding.weight.shape[0]
            m.register_buffer("position_ids", torch.arange(n)[None], persistent=True)
    clip.text_model.eos_token_id = 2
    for layer in cross.layers:
        layer[1].fn.register_buffer("pos_emb", torch.randn(7, CROSS["dim_head"]), persistent=False)
    root = torch.nn.Module()
    root.model, root.cross_model = clip, cross
    for m in root.modules():
        for k, v in list(vars(m).items()):
            if not k.startswith("_"):
                m.__dict__[k] = refake(v)
    for m in list(root.modules()):
        if m is root:  # MPS's own CLIPModel(nn.Module) holding .model and .cross_model
            m.__class__ = fake(None, torch.nn.Module, key=("trainer.models.clip_model", "CLIPModel"))
        elif type(m).__module__.startswith(("transformers", "capo")):
            m.__class__ = fake(type(m), torch.nn.Module)
    with pytest.MonkeyPatch.context() as mp:  # the classes exist only while pickling
        for (mod, name), cls in fakes.items():
            if mod.startswith("trainer"):
                for i in range(1, mod.count(".") + 2):
                    part = ".".join(mod.split(".")[:i])
                    if part not in sys.modules:
                        mp.setitem(sys.modules, part, types.ModuleType(part))
            mp.setattr(sys.modules[mod] if mod in sys.modules else __import__(mod, fromlist=["_"]), name, cls,
                       raising=False)
        torch.save(root, path)


def _globals_of(path):
    """(module, name) of every class / function the pickle names."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return {tuple(arg.split(" ", 1)) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_mps_released_pickle_of_transformers4_classes(clip_dir, state, images, tmp_path, monkeypatch):
    """The released file names transformers 4.x classes this transformers lacks (``CLIPTextTransformer``,
    ``CLIPSdpaAttention``) besides the ``trainer`` ones; capo stands in for them all and scores
    exactly as from the plain state dict."""
    import transformers.models.clip.modeling_clip as mc
    from transformers import CLIPModel as HFClip

    for name in [m for m in sys.modules if m == "trainer" or m.startswith("trainer.")]:  # another test's package
        monkeypatch.delitem(sys.modules, name)

    clip = HFClip.from_pretrained(clip_dir)
    cross = M.CrossModel(clip.config.projection_dim, **CROSS)
    cross.load_state_dict({k.removeprefix("cross_model."): v for k, v in state.items() if k.startswith("cross_model.")})
    f = tmp_path / "MPS_overall_checkpoint.pth"
    write_released_pickle(f, clip, cross)
    names = _globals_of(f)
    assert ("transformers.models.clip.modeling_clip", "CLIPTextTransformer") in names
    assert ("transformers.models.clip.configuration_clip", "CLIPConfig") in names
    assert ("trainer.models.cross_modeling", "Cross_model") in names
    assert {("trainer.models.clip_model", "CLIPModel"), ("trainer.models.clip_model", "XCLIPModel")} <= names
    assert not any(m.startswith("capo") for m, _ in names)  # nothing of capo's in the file
    assert not hasattr(mc, "CLIPSdpaAttention") and "trainer" not in sys.modules
    if not hasattr(mc, "CLIPTextTransformer"):  # transformers 5: unloadable even with a trainer package at hand
        with pytest.raises((AttributeError, ModuleNotFoundError)):
            torch.load(f, weights_only=False)
    got = M.read_state(f)
    assert set(got) >= set(state) - {k for k in state if k.endswith("position_ids")}
    assert not any(k.endswith("pos_emb") for k in got)  # non-persistent buffers stay out
    assert all(torch.equal(got[k], state[k]) for k in state if k in got)
    r = M.mps(path=f, clip=clip_dir, device="cpu")
    torch.save(state, tmp_path / "MPS_overall_state_dict.pt")
    r_sd = M.mps(path=tmp_path / "MPS_overall_state_dict.pt", clip=clip_dir, device="cpu")
    np.testing.assert_array_equal(r(images, PROMPTS), r_sd(images, PROMPTS))
    np.testing.assert_allclose(r(images, PROMPTS), _reference_of(r, state, images), rtol=1e-4, atol=1e-4)
