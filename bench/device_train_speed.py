"""GPU benchmark (issue #9): capo's own training step beside a bare PyTorch loop, on random-init
backbones of the real shapes (SDXL UNet 2.57B, SD3-medium MMDiT 2.03B; no downloads).

For each model and mode (full fine-tuning; LoRA r64 on SDXL) it measures, on one GPU:

* bare: a hand-written loop in the anchor's recipe (fp32 weights under bf16 autocast, SDPA,
  fused AdamW, gradient checkpointing, policy forward + backward and a bf16 reference forward
  per pair, B pairs per step);
* capo: ``capo.stages.train.run`` on a synthetic samples directory (random cached latents and
  text embeddings in capo's cache format) with the same settings (mixed_precision=bf16,
  gradient_checkpointing=on), stopped after --steps steps before any checkpoint is written;

and prints pairs/s (median over steps after --warmup), peak GiB (torch.cuda.max_memory_allocated)
and capo / bare. Targets (issue #9): capo >= 1.0x the bare pairs/s with at most 10% more peak
memory.

Sampling (images/s, 50 steps with classifier-free guidance, bf16, 1024 px): a whole random-init
pipeline of the real architectures (denoiser from ``capo/models/configs``; text encoders and VAE
from the checkpoints' published configs, ``ARCH`` below; a byte-level tokenizer with the real
vocabulary size, since tokenizer files cannot be downloaded; SD3 without T5, on both sides),
timed two ways on the same pipeline object, alternating call by call: the bare diffusers pipeline call
(``StableDiffusionXLPipeline`` with DDIM, guidance 7.5 / ``StableDiffusion3Pipeline`` with its
flow Euler, guidance 5.0) and capo's ``model.sample`` (what ``capo generate`` runs: per-item seeds,
the same sampler). Target: capo >= 1.0x the bare pipeline.

    python bench/device_train_speed.py [--models sdxl,sd3] [--pairs 4] [--steps 12] [--warmup 4]
    python bench/device_train_speed.py --tiny     # a CPU smoke test with tiny configs
    python bench/device_train_speed.py --no-train # sampling only (--no-sample: training only)
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from capo import artifacts
from capo.models import MODELS, model_fingerprint
from capo.plan import CONFIGS

TINY = {"sdxl": {"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [2, 4],
                 "transformer_layers_per_block": [1, 1], "cross_attention_dim": 32,
                 "projection_class_embeddings_input_dim": 6 * 256 + 32, "norm_num_groups": 8},
        "sd3": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "caption_projection_dim": 32,
                "joint_attention_dim": 32, "pooled_projection_dim": 32, "sample_size": 8, "pos_embed_max_size": 16}}


class BenchModel:
    """A random-init denoiser behind the part of capo's model interface training uses."""

    def __init__(self, kind: str, tiny: bool):
        import diffusers

        self.kind = kind
        f, cls = ("sdxl-unet.json", "UNet2DConditionModel") if kind == "sdxl" else \
            ("sd3-medium-transformer.json", "SD3Transformer2DModel")
        cfg = {k: v for k, v in json.loads((CONFIGS / f).read_text()).items() if not k.startswith("_")}
        cfg |= TINY[kind] if tiny else {}
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds
            self.denoiser = getattr(diffusers, cls).from_config(cfg)
        self.res = 64 if tiny else 1024
        self.prediction_type = "epsilon" if kind == "sdxl" else "flow"
        c = self.denoiser.config
        self.latent_shape = (c.in_channels, self.res // 8, self.res // 8)
        self.text = ((77, c.cross_attention_dim), (c.projection_class_embeddings_input_dim - 6 * 256,)) \
            if kind == "sdxl" else ((333 if not tiny else 16, c.joint_attention_dim), (c.pooled_projection_dim,))

    def modules(self):
        return {"denoiser": self.denoiser}

    @property
    def device(self):
        return next(self.denoiser.parameters()).device

    def train_scheduler(self):
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        if self.kind == "sdxl":
            return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        return FlowMatchEulerDiscreteScheduler(shift=3.0)

    def predict(self, x_t, t, hidden, pooled):
        dt = next(self.denoiser.parameters()).dtype
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).expand(b) if torch.as_tensor(t).ndim == 0 else t.to(x_t.device)
        if self.kind == "sdxl":
            ids = torch.tensor([self.res, self.res, 0, 0, self.res, self.res], device=x_t.device, dtype=dt).expand(b, -1)
            out = self.denoiser(x_t.to(dt), t, encoder_hidden_states=hidden.to(dt),
                                added_cond_kwargs={"text_embeds": pooled.to(dt), "time_ids": ids}, return_dict=False)[0]
        else:
            out = self.denoiser(hidden_states=x_t.to(dt), timestep=t.float(), encoder_hidden_states=hidden.to(dt),
                                pooled_projections=pooled.to(dt), return_dict=False)[0]
        return out.to(x_t.dtype)


def synthetic_run_inputs(root: Path, name: str, m: BenchModel, prompts: int = 16) -> Path:
    """A samples directory (2 cached latents per prompt) and best-worst pairs, in capo's formats."""
    import pandas as pd
    from safetensors.torch import save_file

    samples, pairs = root / "samples", root / "pairs"
    (samples / "cache").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    rows = [{"prompt_id": f"p{p:03d}", "sample_id": k, "prompt_idx": p, "seed": 0, "path": ""}
            for p in range(prompts) for k in range(2)]
    f = samples / "cache" / "shard-00000.safetensors"
    save_file({"latents": torch.randn((len(rows), *m.latent_shape), generator=g),
               "hidden": torch.randn((prompts, *m.text[0]), generator=g),
               "pooled": torch.randn((prompts, *m.text[1]), generator=g)}, str(f))
    artifacts.write_json(samples / "cache" / "shard-00000.json", {"shard": 0, "prompts": list(range(prompts)),
                                                                  "rows": rows, "file": artifacts.file_record(f)})
    artifacts.write_table(pd.DataFrame(rows), samples / "index.parquet")
    sm = artifacts.make_manifest("generate", {"n": 2, "seed": 0}, {
        "model": {"path": name, "sha256": model_fingerprint(name)}, "prompts": {"path": "synthetic", "sha256": "0"}})
    artifacts.write_json(samples / artifacts.MANIFEST, sm)
    artifacts.finish(samples, sm, files=["index.parquet"])
    pm = artifacts.make_manifest("pairs", {"selector": "best-worst"}, {"samples": {"path": str(samples),
                                                                                  "sha256": sm["run_key"]}})
    pm["samples"] = {"path": str(samples), "sha256": sm["run_key"]}
    pairs.mkdir()
    artifacts.write_json(pairs / artifacts.MANIFEST, pm)
    artifacts.write_table(pd.DataFrame({"prompt_id": [f"p{p:03d}" for p in range(prompts)], "draw": 0,
                                        "pos_sample_id": 0, "neg_sample_id": 1, "target_gap": 0.2}),
                          pairs / "pairs.parquet")
    artifacts.finish(pairs, pm, files=["pairs.parquet"], rewards=[])
    return pairs


def bare(m: BenchModel, B: int, steps: int, warmup: int, lora_rank: int, device) -> tuple[float, float]:
    """The anchor's loop: pairs/s (median after warmup) and peak GiB."""
    import copy

    from capo.method.schedules import add_noise

    net = m.denoiser.to(device).float().train()
    net.enable_gradient_checkpointing()
    ref = copy.deepcopy(net).to(torch.bfloat16).requires_grad_(False).eval() if not lora_rank else None
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        net.to(torch.bfloat16)
        net = get_peft_model(net, LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=[
            "to_q", "to_k", "to_v", "to_out.0"]))
        for p in net.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=device.type == "cuda")
    x0 = torch.randn((2 * B, *m.latent_shape), device=device)
    hidden = torch.randn((2 * B, *m.text[0]), device=device)
    pooled = torch.randn((2 * B, *m.text[1]), device=device)
    times = []
    for s in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        eps = torch.randn_like(x0)
        u = torch.rand(B, device=device).repeat(2)
        a, sg = (1 - u).view(-1, 1, 1, 1), u.view(-1, 1, 1, 1)
        x_t = add_noise(x0, eps, a, sg)
        t = (u * 999).long() if m.kind == "sdxl" else u * 1000
        m.denoiser = net
        with torch.autocast(device.type, dtype=torch.bfloat16):
            err = (m.predict(x_t, t, hidden, pooled).float() - eps).pow(2).mean((1, 2, 3))
            with torch.no_grad():
                if ref is None:
                    with net.disable_adapter():
                        ref_err = (m.predict(x_t, t, hidden, pooled).float() - eps).pow(2).mean((1, 2, 3))
                else:
                    m.denoiser = ref
                    ref_err = (m.predict(x_t, t, hidden, pooled).float() - eps).pow(2).mean((1, 2, 3))
                    m.denoiser = net
        r = ref_err - err
        loss = -torch.nn.functional.logsigmoid(500.0 * (r[:B] - r[B:])).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return B / statistics.median(times[warmup:]), _peak(device)


def capo_step(m: BenchModel, name: str, B: int, steps: int, warmup: int, lora_rank: int, root: Path,
              device) -> tuple[float, float]:
    from capo.stages import train

    MODELS.register(name, lambda: m) if name not in MODELS.names() else None
    pairs = synthetic_run_inputs(root, name, m)
    train.run(train.TrainConfig(model=name, pairs=str(pairs), out=str(root / "train"), objective="dpo", beta=500.0,
                                lora_rank=lora_rank, lr=1e-6, steps=steps + 1000, stop_after=steps, batch_size=B,
                                mixed_precision="bf16" if device.type == "cuda" else "no",
                                gradient_checkpointing="on", checkpoint_every=10**6, log_every=1, quiet=True))
    rates = [json.loads(x)["pairs_per_s"] for x in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[warmup:]), _peak(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset(device) -> None:
    """Free what the previous measurement left and start a new peak count."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


# Text encoders and VAE of the real checkpoints (their config.json on the hub): SDXL's CLIP ViT-L
# and OpenCLIP bigG; SD3-medium's CLIP-L and CLIP-G (with projections) and its 16-channel VAE.
ARCH = {
    "clip-l": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    "clip-g": dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                norm_num_groups=32, sample_size=1024),
    "vae-sdxl": dict(latent_channels=4, scaling_factor=0.13025, force_upcast=True),
    "vae-sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                    use_post_quant_conv=False),
}
TINY_ARCH = {"clip": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          projection_dim=32),
             "vae": dict(block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4, sample_size=64)}


def byte_tokenizer(vocab_size: int):
    """A CLIP tokenizer over single bytes (no merges), padded to ``vocab_size`` entries, BOS/EOS last."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {}
    for c in sorted(ByteLevel.alphabet()):  # the 256 byte-level symbols
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    while len(vocab) < vocab_size - 2:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = vocab_size - 2, vocab_size - 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")


def pipeline(kind: str, tiny: bool, device):
    """A random-init pipeline of the real architecture (``ARCH``), bf16 on ``device`` (fp32 on CPU)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dt = torch.bfloat16 if device.type == "cuda" else torch.float32
    small = TINY_ARCH["clip"] if tiny else {}
    with torch.device(device):
        tok = byte_tokenizer(49408)
        ids = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        te_l = CLIPTextConfig(**{**ARCH["clip-l"], **small, **ids})
        te_g = CLIPTextConfig(**{**ARCH["clip-g"], **small, **ids})
        vae = diffusers.AutoencoderKL(**{**ARCH["vae"], **(TINY_ARCH["vae"] if tiny else {}), **ARCH[f"vae-{kind}"]})
        den = BenchModel(kind, tiny).denoiser
        if kind == "sdxl":
            if tiny:
                den = diffusers.UNet2DConditionModel.from_config({**den.config, "cross_attention_dim": 64,
                                                                  "projection_class_embeddings_input_dim": 6 * 256 + 32})
            sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                     timestep_spacing="leading", steps_offset=1)
            pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(te_l), tokenizer=tok,
                                                       text_encoder_2=CLIPTextModelWithProjection(te_g),
                                                       tokenizer_2=tok, unet=den, scheduler=sched,
                                                       force_zeros_for_empty_prompt=True)
        else:
            if tiny:
                den = diffusers.SD3Transformer2DModel.from_config({**den.config, "joint_attention_dim": 32,
                                                                   "pooled_projection_dim": 64})
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=den, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                text_encoder=CLIPTextModelWithProjection(te_l), tokenizer=tok,
                text_encoder_2=CLIPTextModelWithProjection(te_g), tokenizer_2=tok, text_encoder_3=None,
                tokenizer_3=None)
    return pipe.to(device, dt)


def sampling(kind: str, tiny: bool, B: int, reps: int, device) -> dict:
    """images/s and peak GiB of the bare pipeline call and of capo's sampler, same pipeline object."""
    from diffusers import DDIMScheduler

    from capo.models.diffusers_backends import SD3Model, SDXLModel

    steps, guidance = 50, (7.5 if kind == "sdxl" else 5.0)
    res = 64 if tiny else 1024
    pipe = pipeline(kind, tiny, device)
    pipe.set_progress_bar_config(disable=True)
    model = SDXLModel(pipe, resolution=(res, res)) if kind == "sdxl" else \
        SD3Model(pipe, sampler="euler", resolution=(res, res))
    if kind == "sdxl":  # the paper's DDIM, from the checkpoint's scheduler config, as capo builds it
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompts = [f"a photograph of object number {i} on a table" for i in range(B)]
    times, peaks = {"bare": [], "capo": []}, {"bare": _peak(device) * 0, "capo": _peak(device) * 0}  # nan on CPU
    for r in range(reps + 1):  # the first round warms up; bare and capo alternate (drift hits both)
        seeds = [1000 * r + i for i in range(B)]
        for name in ("bare", "capo"):
            _reset(device)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                if name == "bare":
                    pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=res, width=res,
                         generator=[torch.Generator(device).manual_seed(s) for s in seeds], output_type="np")
                else:
                    model.sample(prompts, seeds, steps=steps, guidance=guidance, batch_size=B)
            _sync(device)
            if r:
                times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], _peak(device)) if device.type == "cuda" else peaks[name]
    out = {k: (B / statistics.median(times[k]), peaks[k]) for k in times}
    del pipe, model
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="sdxl,sd3")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (a CPU smoke test)")
    ap.add_argument("--images", type=int, default=4, help="images per sampling call")
    ap.add_argument("--sample-reps", type=int, default=2, help="timed sampling calls per side (after one warm-up)")
    ap.add_argument("--no-train", dest="train", action="store_false")
    ap.add_argument("--no-sample", dest="sample", action="store_false")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; {a.pairs} pairs per step, "
          f"median of steps {a.warmup + 1}..{a.steps}")
    if a.sample:
        print(f"\nsampling: {a.images} images per call, 50 steps with CFG, median of {a.sample_reps} calls")
        print("| model | bare images/s | capo images/s | capo / bare | bare peak GiB | capo peak GiB |")
        print("|---|---|---|---|---|---|")
        for kind in a.models.split(","):
            torch.manual_seed(0)
            r = sampling(kind, a.tiny, a.images, a.sample_reps, device)
            (bi, bp), (ci, cp) = r["bare"], r["capo"]
            print(f"| {kind} | {bi:.3f} | {ci:.3f} | {ci / bi:.2f} | {bp:.1f} | {cp:.1f} |", flush=True)
            _reset(device)
    if not a.train:
        return
    print(f"\ntraining: {a.pairs} pairs per step")
    print("| model | mode | bare pairs/s | capo pairs/s | capo / bare | bare peak GiB | capo peak GiB |")
    print("|---|---|---|---|---|---|---|")
    modes = [(k, 0) for k in a.models.split(",")] + ([("sdxl", a.lora_rank)] if "sdxl" in a.models else [])
    for kind, r in modes:
        torch.manual_seed(0)
        m = BenchModel(kind, a.tiny)
        _reset(device)
        b_rate, b_peak = bare(m, a.pairs, a.steps, a.warmup, r, device)
        del m
        torch.manual_seed(0)
        m = BenchModel(kind, a.tiny)
        _reset(device)
        with tempfile.TemporaryDirectory() as tmp:
            c_rate, c_peak = capo_step(m, f"bench-{kind}-r{r}", a.pairs, a.steps, a.warmup, r, Path(tmp), device)
        del m
        _reset(device)
        print(f"| {kind} | {'LoRA r%d' % r if r else 'full'} | {b_rate:.2f} | {c_rate:.2f} | {c_rate / b_rate:.2f} | "
              f"{b_peak:.1f} | {c_peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
