"""Memory and data-path features of `capo train` (issue #9): gradient checkpointing, the lazy
memory-mapped latent cache, DataLoader workers, torch.compile, bf16 reference, 8-bit AdamW's
missing-extra error. Each must leave the trained weights as they were (or say why not)."""

import importlib.util

import pytest
import torch
from safetensors.torch import load_file

from capo.stages import train


def _train(chain, out, **kw):
    args = dict(model=str(chain / "base"), pairs=str(chain / "pairs-frs"), out=str(out), steps=3, batch_size=2,
                lr=1e-3, checkpoint_every=3, keep_checkpoints=0, quiet=True) | kw
    train.run(train.TrainConfig(**args))
    return load_file(str(out / "final" / "denoiser.safetensors"))


@pytest.fixture(scope="module")
def plain(tiny_chain, tmp_path_factory):
    return _train(tiny_chain, tmp_path_factory.mktemp("plain") / "t")


def _same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_gradient_checkpointing_gives_the_same_weights(tiny_chain, plain, tmp_path):
    from capo.models import load_model

    assert not train.use_checkpointing("auto", load_model(str(tiny_chain / "base")).kind)  # shapes models: off
    assert train.use_checkpointing("auto", "sdxl") and train.use_checkpointing("auto", "sd3")  # real backbones: on
    assert train.use_checkpointing("on", "sdxl-like") and not train.use_checkpointing("off", "sdxl")
    got = _train(tiny_chain, tmp_path / "t", gradient_checkpointing="on")
    assert _same(got, plain, atol=1e-6)
    assert not _same(got, load_file(str(tmp_path / "t" / "final" / "denoiser.safetensors")) | {
        next(iter(got)): got[next(iter(got))] + 1})  # (the comparison can fail)


def test_data_workers_give_the_same_bytes(tiny_chain, plain, tmp_path):
    got = _train(tiny_chain, tmp_path / "t", data_workers=2)
    assert _same(got, plain)


def test_latent_cache_reads_rows_without_loading_shards(tiny_chain, monkeypatch):
    import safetensors.torch

    samples = tiny_chain / "samples"
    whole = load_file(str(next((samples / "cache").glob("shard-00000.safetensors"))))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("a whole shard was loaded"))
    cache = train.LatentCache(samples)
    keys = sorted(k for k, (s, _) in cache.where.items() if s == 0)[:3]
    want = torch.stack([whole["latents"][cache.where[k][1]] for k in keys])
    assert torch.equal(cache.latents(keys), want)
    hidden, pooled = cache.text([keys[0][0]])
    assert torch.equal(hidden[0], whole["hidden"][cache.prompt_where[keys[0][0]][1]])


def test_compile_eager_trains_to_the_same_weights(tiny_chain, plain, tmp_path):
    got = _train(tiny_chain, tmp_path / "t", compile="eager")
    assert _same(got, plain, atol=1e-5)


def test_bf16_mixed_precision_trains(tiny_chain, plain, tmp_path):
    got = _train(tiny_chain, tmp_path / "t", mixed_precision="bf16")
    assert all(torch.isfinite(v).all() for v in got.values())
    assert not _same(got, plain)  # bf16 arithmetic: close to, not equal to, the fp32 run
    assert _same(got, plain, atol=5e-2)
    # the same process trains in fp32 again afterwards (accelerate keeps one precision per process)
    assert _same(_train(tiny_chain, tmp_path / "t32"), plain)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed")
def test_8bit_adamw_without_the_extra_is_a_clear_error(tiny_chain, tmp_path):
    with pytest.raises(ValueError, match=r"pip install 'capo\[bnb\]'"):
        _train(tiny_chain, tmp_path / "t", optimizer="adamw-8bit")


def test_reference_follows_mixed_precision(tiny_chain):
    from capo.models import load_model

    net = load_model(str(tiny_chain / "base")).denoiser
    for mp, dtype in (("no", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        ref = train.frozen_reference(net, None, False, mp, torch.device("cpu"))
        assert ref is not net and {p.dtype for p in ref.parameters()} == {dtype}
        assert not any(p.requires_grad for p in ref.parameters())
    assert train.frozen_reference(net, None, True, "bf16", torch.device("cpu")) is None  # LoRA: adapter disabled
    assert {p.dtype for p in net.parameters()} == {torch.float32}  # the policy keeps its fp32 weights


def test_checkpointing_gradients_equal_on_the_sd3_like_transformer(tmp_path):
    from conftest import build_tiny

    from capo.models import load_model

    def grads(on: bool):
        m = load_model(str(build_tiny(tmp_path / f"sd3-{on}", kind="sd3-like")))
        net = m.denoiser.train().double()
        if on:
            net.enable_gradient_checkpointing()
        g = torch.Generator().manual_seed(0)
        x = torch.randn((2, *m.latent_shape), generator=g, dtype=torch.float64)
        hidden, pooled = (v.detach().double() for v in m.encode_prompts(["a red circle", "two squares"]))
        net.zero_grad()
        m.predict(x, torch.tensor([100.0, 700.0], dtype=torch.float64), hidden, pooled).pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    a, b = grads(False), grads(True)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.allclose(a[k], b[k], atol=1e-12, rtol=1e-9) for k in a)


def test_lora_under_bf16_keeps_the_frozen_base_in_bf16(tiny_chain, tmp_path, monkeypatch):
    seen = {}
    real = train.make_optimizer

    def spy(name, params, **kw):
        seen["trainable"] = {p.dtype for p in params}
        return real(name, params, **kw)

    monkeypatch.setattr(train, "make_optimizer", spy)
    real_ref = train.frozen_reference

    def spy_ref(base, *a):
        seen["frozen"] = {p.dtype for p in base.parameters() if not p.requires_grad}
        return real_ref(base, *a)

    monkeypatch.setattr(train, "frozen_reference", spy_ref)
    from capo.models import load_model

    train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"),
                                out=str(tmp_path / "t"), steps=3, batch_size=2, lr=1e-3, checkpoint_every=3,
                                keep_checkpoints=0, lora_rank=2, mixed_precision="bf16", quiet=True))
    assert seen["trainable"] == {torch.float32}  # the adapter and its optimizer state in fp32
    assert seen["frozen"] == {torch.bfloat16}  # the frozen base (the reference under LoRA) in bf16
    m = load_model(str(tmp_path / "t" / "final"))  # the merged checkpoint loads and samples
    assert all(torch.isfinite(p).all() for p in m.denoiser.parameters())
    import json

    adapter = tmp_path / "t" / "final" / "adapter" / "adapter_config.json"
    assert json.loads(adapter.read_text())["r"] == 2


@pytest.mark.slow
def test_compile_inductor_trains_on_cpu(tiny_chain, plain, tmp_path):
    """compile=inductor (what compile=true means on a GPU) trains on the CPU with a tiny model
    (generated C++ kernels, about 100 s of compiling): the same update as eager PyTorch. Fused
    kernels round differently and Adam magnifies it to ~1e-4 per weight, so the check is the
    direction of the whole update (cosine > 0.99), not bitwise equality."""
    got = _train(tiny_chain, tmp_path / "t", compile="inductor")
    base = load_file(str(tiny_chain / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    du = torch.cat([(got[k] - base[k]).flatten() for k in sorted(got)])
    dp = torch.cat([(plain[k] - base[k]).flatten() for k in sorted(plain)])
    assert du.abs().max() > 1e-4  # it trained
    assert torch.nn.functional.cosine_similarity(du, dp, dim=0) > 0.99
