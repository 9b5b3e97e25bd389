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


def test_the_anchor_and_an_out_of_sample_check():
    full = plan.plan("sdxl", mixed_precision="bf16", pairs_per_gpu=4)
    assert full["peak_gib_per_gpu"] == pytest.approx(46.0)  # calibrated on this row: equal by construction
    assert plan.plan("sd3-medium", mixed_precision="bf16", pairs_per_gpu=4)["peak_gib_per_gpu"] == pytest.approx(38.0)
    # LoRA r64 calibrated at 4 pairs (11.4 GiB) predicts the held-out 8-pair peak, 16.9 GiB, within 15%
    lora8 = plan.plan("sdxl", lora_rank=64, mixed_precision="bf16", pairs_per_gpu=8)
    assert abs(lora8["peak_gib_per_gpu"] - 16.9) / 16.9 < 0.15
    # static memory alone: SDXL full fine-tuning needs 43 GiB before any activation
    assert full["static_gib_total"] == pytest.approx(18 * 2_567_463_684 / GIB)
    assert plan.plan("sdxl", checkpointing="off")["peak_gib_per_gpu"] is None  # not measured: not estimated
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
