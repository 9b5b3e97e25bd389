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

    from capo.cli import main

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


# ----------------------------------------------------------------------------- GRPO (issue #22 item 4)
SDXL_COUNT = {"kind": "sdxl", "params": 2_567_463_684, "lora_params": 0, "resolution": (1024, 1024)}
T_FWD = 1 / (0.573 * 50 * 2)  # s per denoiser pass: the SDXL sampling anchor makes 100 passes per image
T_PAIR = 1 / 4.65  # s per DPO training pair (2 images: policy fwd+bwd and reference fwd each), SDXL full


def _fast_sdxl_count(monkeypatch):
    """SDXL's exact count (test_shipped_architectures_have_the_published_parameter_counts) without
    the 10 s meta build, so that each test stays short when run alone."""
    real = plan._shipped_count
    monkeypatch.setattr(plan, "_shipped_count", lambda m, r: dict(SDXL_COUNT) if (m, r) == ("sdxl", 0) else real(m, r))


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    import helpers as B

    return str(B.build_sdxl(tmp_path_factory.mktemp("grpo-plan") / "sdxl"))


def test_grpo_step_passes_and_time_by_hand(tiny_sdxl):
    """A tiny folder of the real SDXL classes (kind sdxl: SDXL's anchors): B = 2 prompts x G = 4
    images, N = 5 DDIM steps of which 4 have a density (set_alpha_to_one: the last step is exact),
    CFG, 2 updates of 2 micro-batches per rollout, 3 steps, 3 rewards."""
    from capo.models import load_model
    from capo.stages.grpo import Chain

    assert plan.grpo_chain("sdxl") == {"steps": 50, "stochastic": 50, "guidance": 7.5, "cfg": 2}
    assert plan.grpo_chain("sd3-medium", sample_steps=10) == {"steps": 10, "stochastic": 10, "guidance": 5.0, "cfg": 2}
    ch = plan.grpo_chain(tiny_sdxl, sample_steps=5)
    assert ch["stochastic"] == len(Chain(load_model(tiny_sdxl), 5, None).stochastic) == 4  # as the run's chain
    kw = dict(batch_size=2, group_size=4, sample_steps=5, grpo_updates=2, grad_accum=2, rewards=3, steps=3,
              mixed_precision="bf16")
    p = plan.grpo_plan(tiny_sdxl, beta=0.1, **kw)
    assert p["trained_steps"] == 4 and p["cfg"] == 2 and p["micro_images"] == 2
    # per rollout: B*G*N*c rollout passes, B*G*K*c update and reference passes, B*G decodes, B*G*L reward calls
    assert p["per_rollout"] == {"rollout_images": 8, "rollout_passes": 2 * 4 * 5 * 2, "update_passes": 2 * 4 * 4 * 2,
                                "reference_passes": 2 * 4 * 4 * 2, "vae_decodes": 8, "reward_calls": 24,
                                "reward_calls_per_reward": 8}
    # per run: ceil(3 / 2) = 2 rollouts; each of the 3 optimizer steps trains 8 / 2 images x K x c
    assert p["per_run_per_gpu"] == {"rollouts": 2, "rollout_images": 16, "rollout_passes": 160,
                                    "update_passes": 3 * 4 * 4 * 2, "reference_passes": 96}
    # time: rollout passes at the sampling anchor; update + reference at the DPO anchor's per-image rate
    assert p["pass_seconds"]["forward"] == pytest.approx(T_FWD)
    assert p["pass_seconds"]["forward_backward"] == pytest.approx(T_PAIR / 2 - T_FWD)
    s = p["seconds_per_rollout"]
    assert s["rollout"] == pytest.approx(80 / 57.3) and s["update"] + s["reference"] == pytest.approx(64 / 2 / 4.65)
    assert p["seconds_per_step"] == pytest.approx((80 / 57.3 + 32 / 4.65) / 2)
    assert p["hours"] == pytest.approx((160 / 57.3 + 96 / 2 / 4.65) / 3600)
    # beta = 0: no reference pass, the update alone; no CFG (guidance 1): c = 1
    p0 = plan.grpo_plan(tiny_sdxl, beta=0.0, **kw)
    assert p0["per_rollout"]["reference_passes"] == 0
    assert p0["seconds_per_rollout"]["total"] == pytest.approx(80 * T_FWD + 64 * (T_PAIR / 2 - T_FWD))
    p1 = plan.grpo_plan(tiny_sdxl, beta=0.1, guidance=1.0, **kw)
    assert p1["cfg"] == 1 and p1["per_rollout"]["rollout_passes"] == 40 and p1["per_rollout"]["update_passes"] == 32
    # LoRA: the LoRA anchor (3.71 pairs/s); a window of 2 trained steps
    pl = plan.grpo_plan(tiny_sdxl, beta=0.1, lora_rank=2, grpo_steps=2, **kw)
    assert pl["trained_steps"] == 2 and pl["pass_seconds"]["forward_backward"] == pytest.approx(1 / 3.71 / 2 - T_FWD)
    with pytest.raises(ValueError, match="equal micro-batches"):
        plan.grpo_plan(tiny_sdxl, **{**kw, "grad_accum": 3})


def test_grpo_plan_counts_equal_a_runs_budget(tiny_chain, tmp_path):
    """The plan's per-run counts are the budget `capo train objective=grpo` records (tiny shapes
    base: 3 chain steps, 3 steps of 2 updates per rollout, so the last rollout is half used)."""
    from capo.stages import train

    kw = dict(batch_size=2, group_size=4, grpo_updates=2, grad_accum=2, steps=3, beta=0.01)
    res = train.run(train.TrainConfig(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"),
                                      out=str(tmp_path / "o"), objective="grpo", lr=1e-3, quiet=True, **kw))
    p = plan.grpo_plan(str(tiny_chain / "base"), **kw)
    assert res["budget"] == {k: p["per_run_per_gpu"][k] for k in res["budget"]}
    assert p["per_run_per_gpu"]["rollouts"] == res["counts"]["rollouts"] == 2
    assert p["trained_steps"] == res["chain"]["trained_steps"] and p["sample_steps"] == res["chain"]["steps"]


def test_grpo_memory_holds_a_reference_only_when_beta_and_a_copy(tiny_sdxl):
    """capo.stages.grpo keeps a reference only when beta > 0, and under LoRA it is the base with
    the adapter disabled (frozen_reference gives None): no second copy unless reference= names one."""
    import torch

    from capo.stages.train import frozen_reference

    assert frozen_reference(torch.nn.Linear(2, 2), None, True, "bf16", "cpu") is None  # LoRA: adapter disabled
    assert frozen_reference(torch.nn.Linear(2, 2), None, False, "bf16", "cpu") is not None  # full: a copy
    c = plan.count(tiny_sdxl, lora_rank=2)
    P, L = c["params"], plan.count(tiny_sdxl, lora_rank=2)["lora_params"]
    N, n_img = 5, 8
    rollout = n_img * ((N + 1) * 4 * 8 * 8 + N) * 4  # float32 latents (4 x 64/8 x 64/8) along the chain + log-probs
    kw = dict(batch_size=2, group_size=4, sample_steps=N, mixed_precision="bf16")

    def static(**more):
        p = plan.grpo_plan(tiny_sdxl, **kw, **more)
        return p, sum(p["static_gib"].values()) * GIB

    p, full = static(beta=0.1)
    assert full == pytest.approx(18 * P + rollout) and p["reference_copy"]  # 4 + 4 + 8 + the bf16 reference's 2
    assert p["peak_gib_per_gpu"] == pytest.approx(full / GIB + p["activations_gib_per_pair"] * 8 * 2 / 2)
    p, no_kl = static(beta=0.0)
    assert no_kl == pytest.approx(16 * P + rollout) and "reference" not in p["static_gib"]
    p, lora = static(beta=0.1, lora_rank=2)
    assert lora == pytest.approx(2 * P + 16 * L + rollout) and not p["reference_copy"]
    assert "frozen base (reference: adapter off)" in p["static_gib"] and "reference" not in p["static_gib"]
    assert static(beta=0.0, lora_rank=2)[1] == pytest.approx(lora)  # the frozen base is there anyway
    p, other = static(beta=0.1, lora_rank=2, reference=True)  # reference=another model: a second frozen copy
    assert other == pytest.approx(4 * P + 16 * L + rollout) and p["reference_copy"]


def test_train_grpo_dry_run_prints_the_plan_and_writes_nothing(tmp_path, monkeypatch):
    import capo.models

    from capo.cli import main

    _fast_sdxl_count(monkeypatch)
    monkeypatch.setattr(capo.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    r = CliRunner().invoke(main, ["train", "objective=grpo", "model=sdxl", "prompts=parti", "rewards=mps,vqascore",
                                  f"out={tmp_path / 'run'}", "mixed_precision=bf16", "batch_size=4", "group_size=8",
                                  "sample_steps=10", "grpo_steps=2", "beta=0.01", "steps=100", "dry_run=true"])
    assert r.exit_code == 0, r.output
    # 4 x 8 images: 4*8*10*2 rollout passes, 4*8*2*2 update and reference passes, 2 rewards
    assert "GRPO, 2,567,463,684 denoiser parameters" in r.output and "peak per GPU" in r.output
    assert ("640 forward passes (B·G·N·c), 128 forward+backward (B·G·K·c), 128 reference forward, 32 VAE decodes, "
            "64 reward calls (2 reward(s))") in r.output
    per_rollout = 640 * T_FWD + 128 * T_PAIR / 2
    assert f"= {per_rollout:.1f} s on one" in r.output and f"{100 * per_rollout / 3600:.2f} h" in r.output
    assert not (tmp_path / "run").exists()


def _reproduce(monkeypatch, tmp_path, *args):
    from capo.cli import main

    _fast_sdxl_count(monkeypatch)
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(main, ["reproduce", "--preset", "paper-sdxl", *args])


def test_reproduce_dry_run_prints_the_grpo_cells(tmp_path, monkeypatch):
    """paper-sdxl with grpo=true: 8 GRPO cells (3 rewards alone and their mix x sum | calibrated),
    each a 3-point beta sweep + 1 more seed = 32 runs of 500 steps of 4 prompts x 8 images on 8 GPUs,
    SDXL's 50 DDIM steps all trained with CFG; GPU-hours by hand from the anchors."""
    from capo.config import to_dict
    from capo.experiments import reproduce as R

    r = _reproduce(monkeypatch, tmp_path, "--dry-run", "grpo=true")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "total: 2,863 GPU-hours" in out  # the DPO / CaPO plan as before
    assert "8 cells (each training reward alone and their mix x advantage sum | calibrated), 24 sweep runs" in out
    assert "= 32 training runs" in out
    passes = 500 * 8 * 4 * 8 * 50 * 2  # steps x GPUs x B x G x N x c per run, rollout = update = reference
    assert f"per run 128,000 rollout images, {passes:,} rollout passes, {passes:,} forward+backward passes" in out
    assert "(a DPO / CaPO run: 512,000, on offline samples)" in out  # 500 steps x 512 pairs x 2
    h_roll = 32 * passes * T_FWD / 3600
    h_upd = 32 * passes * (T_PAIR / 2 - T_FWD) / 3600
    h_eval = (24 * 200 + 8 * 2 * 816) / 0.573 / 3600  # validation of the sweep runs, test of every (cell, seed)
    total = 2 * h_roll + h_upd + h_eval
    assert (f"GPU-hours: rollouts {h_roll:,.1f} + updates {h_upd:,.1f} + reference {h_roll:,.1f} + evaluation "
            f"sampling {h_eval:,.1f} = {total:,.1f}") in out
    assert f"GRPO total: {total:,.0f} GPU-hours" in out
    assert not (tmp_path / "runs").exists()
    # without grpo=true, no GRPO cells; grpo is never part of a run key (like the power keys)
    assert "GRPO cells" not in _reproduce(monkeypatch, tmp_path, "--dry-run").output
    assert "grpo" not in to_dict(R.ReproduceConfig(grpo=True, dry_run=True))


def test_reproduce_grpo_without_dry_run_is_an_error(tmp_path, monkeypatch):
    from capo.config import ConfigError
    from capo.experiments import reproduce as R

    r = _reproduce(monkeypatch, tmp_path, "grpo=true")
    assert r.exit_code != 0 and "reproduce prices the GRPO cells" in r.output and "configs/grpo-shapes.yaml" in r.output
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="runs in capo online"):
        R.ReproduceConfig(grpo=True)
