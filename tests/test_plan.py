"""The training plan (issue #9): parameter counts on the meta device, bytes per component by
hand, the anchor's peaks, and a dry run that loads and writes nothing."""

import pytest
from click.testing import CliRunner

from capo import plan

GIB = 2**30


def test_shipped_architectures_have_the_published_parameter_counts():
    assert plan.count("sdxl")["params"] == 2_567_463_684  # SDXL base UNet
    assert plan.count("sd3-medium")["params"] == 2_028_328_000  # SD3-medium MMDiT


def test_counts_and_bytes_by_hand_on_a_tiny_model(tiny_chain):
    from peft import LoraConfig, get_peft_model

    from capo.models import load_model

    net = load_model(str(tiny_chain / "base")).denoiser
    c = plan.count(str(tiny_chain / "base"), lora_rank=2)
    P = sum(p.numel() for p in net.parameters())
    assert c["params"] == P
    # the LoRA count equals what peft actually creates with capo train's targets
    targets = sorted({n.split(".")[-1] for n, _ in net.named_modules() if n.endswith(("to_q", "to_k", "to_v"))}
                     | {"to_out.0"})
    lora = get_peft_model(net, LoraConfig(r=2, lora_alpha=2, target_modules=targets))
    assert c["lora_params"] == sum(p.numel() for p in lora.parameters() if p.requires_grad) > 0
    full32 = plan.static_bytes(P, 0, False, "no", "adamw")
    assert sum(full32.values()) == 20 * P  # 4 weights + 4 grads + 8 moments + 4 reference
    assert sum(plan.static_bytes(P, 0, False, "bf16", "adamw").values()) == 18 * P
    assert sum(plan.static_bytes(P, 0, False, "bf16", "adamw-8bit").values()) == 12 * P
    assert plan.static_bytes(P, 0, False, "bf16", "adamw", shards=4)["optimizer state"] == 2 * P
    L = c["lora_params"]
    assert sum(plan.static_bytes(P, L, True, "bf16", "adamw").values()) == 2 * P + 16 * L


@pytest.mark.parametrize("model,lora,pairs,peak", [("sdxl", 0, 4, 46.0), ("sd3-medium", 0, 4, 38.0),
                                                    ("sdxl", 64, 4, 11.4), ("sdxl", 64, 8, 16.9)])
def test_architecture_derived_peaks_meet_the_measured_anchor(model, lora, pairs, peak):
    """Activations traced from the architecture (nothing calibrated) put every measured peak of
    issue #9's anchor (one H100, bf16, 1024 px, checkpointing) within 15%."""
    p = plan.plan(model, lora_rank=lora, mixed_precision="bf16", pairs_per_gpu=pairs)
    assert abs(p["peak_gib_per_gpu"] - peak) / peak < 0.15


def test_activation_trace_by_hand_and_without_checkpointing():
    full = plan.plan("sdxl", mixed_precision="bf16", pairs_per_gpu=4)
    assert full["static_gib_total"] == pytest.approx(18 * 2_567_463_684 / GIB)  # 43 GiB before any activation
    assert full["peak_gib_per_gpu"] == pytest.approx(full["static_gib_total"] + 4 * full["activations_gib_per_pair"])
    off = plan.plan("sdxl", mixed_precision="bf16", pairs_per_gpu=4, checkpointing="off")
    # without checkpointing every block keeps its tensors: many times more, and 4 pairs overflow 80 GB
    assert off["activations_gib_per_pair"] > 5 * full["activations_gib_per_pair"] and off["peak_gib_per_gpu"] > 80
    fp32 = plan.plan("sdxl", pairs_per_gpu=4)
    assert fp32["activations_gib_per_pair"] == pytest.approx(2 * full["activations_gib_per_pair"])
    # activations grow with the pixel count (attention's saved tensors are linear in it, not quadratic)
    small = plan.activation_per_pair("sdxl", True, (512, 512))
    big = plan.activation_per_pair("sdxl", True, (1024, 1024))
    assert 2.5 < big / small < 4.5
    with pytest.raises(ValueError, match="no throughput measured for GPU 'A100'"):
        plan.plan("sdxl", gpu="A100")


def test_dry_run_loads_and_writes_nothing(tmp_path, monkeypatch):
    import capo.models

    from cli import main

    monkeypatch.setattr(capo.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    r = CliRunner().invoke(main, ["train", "model=sdxl", "pairs=none", f"out={tmp_path / 'run'}",
                                  "mixed_precision=bf16", "batch_size=4", "dry_run=true"])
    assert r.exit_code == 0, r.output
    assert "2,567,463,684 denoiser parameters" in r.output and "peak per GPU" in r.output
    assert not (tmp_path / "run").exists()


def test_meta_trace_counts_what_a_real_forward_saves():
    """The meta-device trace (tensors told apart by object) against a real bf16 forward of a tiny
    UNet of the real class whose saved tensors are told apart by their storage's address (the
    0.5% left: CPU group norm keeps its statistics in bf16, CUDA and meta in float32)."""
    import json

    import diffusers
    import torch
    import torch.nn.functional as F

    cfg = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
               attention_head_dim=(2, 4), cross_attention_dim=32, norm_num_groups=4, use_linear_projection=True,
               addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8)
    traced = plan.traced_activations("sdxl", "UNet2DConditionModel", json.dumps(cfg, sort_keys=True), (64, 64))
    torch.manual_seed(0)
    m = diffusers.UNet2DConditionModel(**cfg).to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = plan.flash_attention
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            dt = torch.bfloat16
            m(torch.randn(2, 4, 8, 8, dtype=dt), torch.zeros(2, dtype=torch.long),
              encoder_hidden_states=torch.randn(2, 77, 32, dtype=dt),
              added_cond_kwargs={"text_embeds": torch.randn(2, 8, dtype=dt), "time_ids": torch.randn(2, 6, dtype=dt)})
    finally:
        F.scaled_dot_product_attention = sdpa
    assert sum(seen.values()) == pytest.approx(traced["off"], rel=0.02)
    assert 0 < traced["on"] < traced["off"]
