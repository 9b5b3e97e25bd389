"""`capo export` (issue #21): a capo checkpoint as a diffusers pipeline directory or diffusers LoRA
weights, with a Hub model card.

The parity tests train tiny SDXL / SD3 models of the real diffusers classes with `capo train`
(full and LoRA, on Pick-a-Pic-format pairs), export them, and load the exports with plain
diffusers in a fresh process (``python -I``, capo never imported there): the images it samples
for the same prompts and seeds are capo's, to one 8-bit level per pixel, and the final latents
agree to 1e-4 (a LoRA applied unfused differs from capo's merged weights by float rounding,
~1e-5 measured; a full export agrees exactly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from capo import export as E
from capo.models import CHECKPOINT_FILE, load_model

PROMPTS = ["a red cube", "two blue spheres on grass"]
SEEDS = [11, 12345]
STEPS, GUIDANCE = 3, 4.0
LATENT_ATOL = 1e-4  # final latents, plain diffusers vs capo
PIXEL_TOL = 1  # uint8 levels

# What a user runs: diffusers only. A worker started once per module (so that its imports overlap
# the test's own set-up): it reads a jobs file per line on stdin, loads each export with plain
# diffusers, samples, and writes an npz per job; it never imports capo (checked after every job).
PLAIN = r'''
import json, sys
import numpy as np, torch, diffusers
from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline  # the imports, before the first job

def run(job):
    pipe = getattr(diffusers, job["class"]).from_pretrained(job["pipeline"])
    if job.get("lora"):
        pipe.load_lora_weights(job["lora"], **({"weight_name": job["weight_name"]} if job.get("weight_name") else {}))
    if job.get("scheduler") == "ddim":
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    elif job.get("scheduler") == "flow-dpm":
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=pipe.scheduler.config.num_train_timesteps, use_flow_sigmas=True,
            prediction_type="flow_prediction", flow_shift=pipe.scheduler.config.shift, solver_order=2,
            algorithm_type="dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    final = {}

    def keep(p, i, t, kw):
        final["latents"] = kw["latents"].clone()
        return kw

    images = pipe(prompt=job["prompts"], num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                  generator=[torch.Generator("cpu").manual_seed(s) for s in job["seeds"]], output_type="np",
                  callback_on_step_end=keep).images
    out = {"images": np.round(images * 255).astype(np.uint8), "latents": final["latents"].float().numpy()}
    if job.get("denoiser_inputs"):
        from safetensors.torch import load_file

        x = load_file(job["denoiser_inputs"])
        with torch.no_grad():
            out["denoised"] = pipe.transformer(hidden_states=x["x"], timestep=x["t"], encoder_hidden_states=x["hidden"],
                                               pooled_projections=x["pooled"], return_dict=False)[0].numpy()
    np.savez(job["out"], **out)

for line in sys.stdin:
    try:
        for job in json.loads(open(line.strip()).read()):
            run(job)
        assert not any(m == "capo" or m.startswith("capo.") for m in sys.modules), "capo was imported"
        print("PLAIN-OK", flush=True)
    except Exception as e:
        import traceback
        traceback.print_exc()
        print("PLAIN-FAILED " + repr(e).replace("\n", " "), flush=True)
'''


class PlainDiffusers:
    """The worker process: ``python -I`` (no PYTHONPATH, no user site, no script directory on
    sys.path), plain diffusers from the venv."""

    def __init__(self, root: Path):
        self.root = root
        (root / "plain.py").write_text(PLAIN)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
        self.log = open(root / "plain.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-I", str(root / "plain.py")], cwd=root, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.n = 0

    def __call__(self, jobs: list[dict]) -> dict[str, dict]:
        self.n += 1
        for j in jobs:
            j.setdefault("prompts", PROMPTS)
            j.setdefault("seeds", SEEDS)
            j.setdefault("steps", STEPS)
            j.setdefault("guidance", GUIDANCE)
            j["out"] = str(self.root / f"plain-{self.n}-{j['name']}.npz")
        f = self.root / f"jobs-{self.n}.json"
        f.write_text(json.dumps(jobs))
        self.proc.stdin.write(f"{f}\n")
        self.proc.stdin.flush()
        line = ""
        while not line.startswith("PLAIN-"):
            line = self.proc.stdout.readline()
            if not line:
                break
        if not line.startswith("PLAIN-OK"):
            self.log.flush()
            pytest.fail(f"plain diffusers failed: {line}\n{(self.root / 'plain.log').read_text()[-3000:]}")
        return {j["name"]: dict(np.load(j["out"])) for j in jobs}

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    worker = PlainDiffusers(tmp_path_factory.mktemp("plain"))
    yield worker
    worker.close()


def assert_same_samples(plain: dict, images: np.ndarray, latents: torch.Tensor, what: str) -> None:
    np.testing.assert_allclose(plain["latents"], latents.numpy(), atol=LATENT_ATOL, rtol=0, err_msg=what)
    diff = np.abs(plain["images"].astype(int) - images.astype(int)).max()
    assert plain["images"].shape == images.shape and diff <= PIXEL_TOL, f"{what}: images differ by {diff} levels"


# ----------------------------------------------------------------------------- trained checkpoints
def train_runs(root: Path, builder: str) -> dict:
    """A tiny base of the real class, Pick-a-Pic-format pairs for it, and two `capo train` runs:
    full (CaPO) and LoRA (DPO, rank 4, alpha 8: a scaling of 2 that the export folds in)."""
    import helpers as B
    from helpers import write_shard

    from capo.datasets import pickapic
    from capo.stages import train

    base = str(getattr(B, builder)(root / "base"))
    pap = pickapic.import_pairs([str(write_shard(root / "shard.parquet"))], base, root / "pap")
    common = dict(model=base, pairs=pap["pairs"], steps=2, batch_size=2, checkpoint_every=2, keep_checkpoints=0,
                  quiet=True)
    train.run(train.TrainConfig(out=str(root / "full"), objective="capo", lr=1e-3, **common))
    train.run(train.TrainConfig(out=str(root / "lora"), objective="dpo", lr=3e-2, lora_rank=4, lora_alpha=8.0,
                                **common))
    return {"base": base, "full": root / "full" / "final", "lora": root / "lora" / "final"}


@pytest.fixture(scope="module")
def sdxl_runs(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("sdxl"), "build_sdxl")


@pytest.fixture(scope="module")
def sd3_runs(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("sd3"), "build_sd3")


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# ----------------------------------------------------------------------------- parity
def test_sdxl_full_and_lora_sample_capos_images_in_plain_diffusers(plain, sdxl_runs, tmp_path):
    full = E.run(E.ExportConfig(checkpoint=str(sdxl_runs["full"]), out=str(tmp_path / "full")))
    lora = E.run(E.ExportConfig(checkpoint=str(sdxl_runs["lora"]), out=str(tmp_path / "lora"), kohya=True))
    assert full["kind"] == "pipeline" and (tmp_path / "full" / "model_index.json").is_file()
    assert (tmp_path / "full" / "unet" / "config.json").is_file()
    assert lora["kind"] == "lora" and sorted(os.listdir(tmp_path / "lora")) == [
        "README.md", "capo_export.json", E.LORA_WEIGHTS, E.KOHYA_WEIGHTS]
    from safetensors.torch import load_file

    assert all(k.startswith("unet.") for k in load_file(str(tmp_path / "lora" / E.LORA_WEIGHTS)))
    kohya = load_file(str(tmp_path / "lora" / E.KOHYA_WEIGHTS))
    assert any(k.startswith("lora_unet_") and k.endswith(".alpha") for k in kohya)

    cls = "StableDiffusionXLPipeline"
    got = plain([
        {"name": "full", "class": cls, "pipeline": str(tmp_path / "full"), "scheduler": "ddim"},
        {"name": "lora", "class": cls, "pipeline": sdxl_runs["base"], "lora": str(tmp_path / "lora"), "scheduler": "ddim"},
        {"name": "kohya", "class": cls, "pipeline": sdxl_runs["base"], "lora": str(tmp_path / "lora"),
         "weight_name": E.KOHYA_WEIGHTS, "scheduler": "ddim"}])
    base_images, base_latents = load_model(sdxl_runs["base"]).sample(PROMPTS, SEEDS, steps=STEPS, guidance=GUIDANCE)
    for name in ("full", "lora"):
        images, latents = load_model(str(sdxl_runs[name])).sample(PROMPTS, SEEDS, steps=STEPS, guidance=GUIDANCE)
        assert (latents - base_latents).abs().max() > 1e-3, f"{name}: training changed nothing; the test would be vacuous"
        assert_same_samples(got[name], images, latents, f"SDXL {name}")
        if name == "lora":
            assert_same_samples(got["kohya"], images, latents, "SDXL LoRA, kohya keys")
    card = (tmp_path / "lora" / "README.md").read_text()
    fm = front_matter(card)
    assert fm["library_name"] == "diffusers" and "license" in fm and fm["license"] is None
    assert {"capo", "dpo", "lora", "stable-diffusion-xl"} <= set(fm["tags"])
    for s in ("load_lora_weights", "DDIMScheduler.from_config", "objective: **dpo**, beta = 500",
              "LoRA rank 4, alpha 8.0", "human preference labels (pickapic), 3 pairs", "| lr | 0.03 |"):
        assert s in card, s


def test_sd3_full_and_lora_in_plain_diffusers(plain, sd3_runs, tmp_path):
    """capo's SD3 sampler (flow DPM-Solver++ on the exact sigma * 1000) is not what the pipeline's
    DPM scheduler does (integer timesteps), so: the same transformer function on the same inputs
    (at the DPM's exact, non-integer times), and the same images with the flow Euler scheduler
    the pipeline ships (capo's sampler="euler")."""
    from safetensors.torch import save_file

    from capo.models import diffusers_backends as DB

    for name in ("full", "lora"):
        E.run(E.ExportConfig(checkpoint=str(sd3_runs[name]), out=str(tmp_path / name)))
    assert (tmp_path / "full" / "transformer" / "config.json").is_file()
    assert (tmp_path / "lora" / E.LORA_WEIGHTS).is_file()
    models = {name: load_model(str(sd3_runs[name])) for name in ("full", "lora")}
    m = models["full"]
    sched = m.sampler(STEPS)
    t = torch.stack([m.model_time(sched, i, None) for i in range(2)])
    assert (t != t.round()).any()  # times the DPM scheduler would round
    hidden, pooled = m.encode_prompts(PROMPTS)
    x = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(0))
    save_file({"x": x, "t": t, "hidden": hidden.contiguous(), "pooled": pooled.contiguous()}, str(tmp_path / "in.st"))
    cls = "StableDiffusion3Pipeline"
    got = plain([
        {"name": "full", "class": cls, "pipeline": str(tmp_path / "full"), "denoiser_inputs": str(tmp_path / "in.st")},
        {"name": "lora", "class": cls, "pipeline": sd3_runs["base"], "lora": str(tmp_path / "lora"),
         "denoiser_inputs": str(tmp_path / "in.st")},
        {"name": "full-dpm", "class": cls, "pipeline": str(tmp_path / "full"), "scheduler": "flow-dpm"}])
    base_latents = load_model(sd3_runs["base"]).sample(PROMPTS, SEEDS, steps=STEPS, guidance=GUIDANCE)[1]
    for name, model in models.items():
        with torch.no_grad():
            out = model.predict(x, t, hidden, pooled)
        np.testing.assert_allclose(got[name]["denoised"], out.numpy(), atol=1e-5, rtol=0, err_msg=name)
        euler = DB.SD3Model(model.pipe, sampler="euler")  # the pipeline with the trained transformer
        images, latents = euler.sample(PROMPTS, SEEDS, steps=STEPS, guidance=GUIDANCE)
        assert_same_samples(got[name], images, latents, f"SD3 {name}, flow Euler")
        dpm_images, dpm_latents = model.sample(PROMPTS, SEEDS, steps=STEPS, guidance=GUIDANCE)
        assert (dpm_latents - base_latents).abs().max() > 1e-3, f"{name}: training changed nothing"
    # capo's default DPM sampler vs diffusers' DPM scheduler: near (rounded timesteps), not asserted equal
    gap = np.abs(got["full-dpm"]["latents"] - models["full"].sample(PROMPTS, SEEDS, steps=STEPS,
                                                                      guidance=GUIDANCE)[1].numpy()).max()
    assert gap < 0.05, gap
    card = (tmp_path / "full" / "README.md").read_text()
    assert {"capo", "sd3"} <= set(front_matter(card)["tags"]) and "rounds its timesteps" in card


# ----------------------------------------------------------------------------- the card
@pytest.fixture(scope="module")
def shapes_runs(tiny_chain, tmp_path_factory):
    """Two trained shapes checkpoints (CaPO full, DPO LoRA), their merge and an evaluation."""
    from capo.stages import evaluate, merge, train

    root = tmp_path_factory.mktemp("shapes")
    common = dict(model=str(tiny_chain / "base"), pairs=str(tiny_chain / "pairs-frs"), steps=2, batch_size=2,
                  keep_checkpoints=0, quiet=True)
    train.run(train.TrainConfig(out=str(root / "capo"), objective="capo", beta=250.0, **common))
    train.run(train.TrainConfig(out=str(root / "dpo"), objective="dpo", **common))
    merge.run(merge.MergeConfig(checkpoints=[str(root / "capo/final"), str(root / "dpo/final")], out=str(root / "soup")))
    prompts = root / "prompts.txt"
    prompts.write_text("a photo of a red circle\na photo of two squares\n")
    evaluate.run(evaluate.EvalConfig(out=str(root / "eval"), models=[f"base={tiny_chain / 'base'}",
                                                                       f"ours={root / 'capo/final'}"],
                                     prompts=str(prompts), n=2, rewards=["toy-bright", "toy-red"], n_boot=200,
                                     quiet=True))
    return root


def test_card_has_config_provenance_results_and_protocol(shapes_runs, tmp_path):
    from capo.eval.protocol import render

    ck = shapes_runs / "capo" / "final"
    res = E.run(E.ExportConfig(checkpoint=str(ck), out=str(tmp_path / "x"), results=str(shapes_runs / "eval")))
    assert res["kind"] == "shapes" and res["results_label"] == "ours"  # found by its fingerprint
    card = (tmp_path / "x" / "README.md").read_text()
    fm = front_matter(card)
    assert fm["license"] is None and "capo" in fm["tags"] and "base_model" not in fm  # a local base: left to the user
    assert "# base_model:" in card
    # training config, objective and beta, the pairs' provenance (prompts, rewards, selector)
    for s in ("objective: **capo**, beta = 250", "| lr | 1e-05 |", "| steps | 2 |", "selector: `frs`",
              "`toy-bright` (temperature:10)", "`toy-red` (identity)", "calibration: eq7", "prompts.txt",
              "4 images per prompt from the model it was trained from"):
        assert s in card, s
    # evaluation with intervals and the protocol card
    results = json.loads((shapes_runs / "eval" / "results.json").read_text())
    w = results["results"]["ours"]["winrate"]["toy-bright"]
    assert f"win {w['win_rate']:.1f} [{w['ci_low']:.1f}, {w['ci_high']:.1f}] %" in card
    assert render(results["protocol"]) in card
    # the shapes pipeline is capo's own format: it loads in capo and samples what the checkpoint does
    assert "not a diffusers pipeline" in card and not (tmp_path / "x" / "model_index.json").exists()
    a = load_model(str(tmp_path / "x")).sample(["a photo of a red circle"], [3], steps=2)[1]
    b = load_model(str(ck)).sample(["a photo of a red circle"], [3], steps=2)[1]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    rec = json.loads((tmp_path / "x" / E.EXPORT_RECORD).read_text())
    assert rec["fingerprint"] == json.loads((ck / CHECKPOINT_FILE).read_text())["fingerprint"]
    assert "README.md" in rec["files"] and rec["files"]["README.md"]["size"] == len(card.encode())


def test_merged_checkpoint_card_names_each_source(shapes_runs, tmp_path):
    res = E.run(E.ExportConfig(checkpoint=str(shapes_runs / "soup"), out=str(tmp_path / "soup"), name="soup"))
    card = (tmp_path / "soup" / "README.md").read_text()
    assert res["kind"] == "shapes" and "\n# soup\n" in card
    assert "SOUP merge (slerp) of 2" in card and "objective: **capo**, beta = 250" in card
    assert "objective: **dpo**, beta = 500" in card and {"capo", "dpo", "model-merge"} <= set(front_matter(card)["tags"])


def test_cli_and_errors(tiny_chain, shapes_runs, sdxl_runs, tmp_path, monkeypatch):
    cli = __import__("cli").main
    ck = str(shapes_runs / "capo" / "final")
    r = CliRunner().invoke(cli, ["export", ck, f"out={tmp_path / 'a'}"])
    assert r.exit_code == 0, r.output
    assert "export:" in r.output and (tmp_path / "a" / "README.md").is_file()

    def fails(args, *needles):
        r = CliRunner().invoke(cli, ["export", *args])
        assert r.exit_code == 2, r.output
        for n in needles:
            assert n in r.output, (n, r.output)

    # an existing non-empty out: refused, untouched
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    fails([ck, "--out", str(tmp_path / "full")], "never overwrites")
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    (tmp_path / "empty").mkdir()  # an empty one is fine
    assert E.run(E.ExportConfig(checkpoint=ck, out=str(tmp_path / "empty")))["kind"] == "shapes"
    # not checkpoints
    fails([str(shapes_runs / "capo"), f"out={tmp_path / 'b'}"], "training run directory", str(shapes_runs / "capo" / "final"))
    fails([sdxl_runs["base"], f"out={tmp_path / 'b'}"], "already a diffusers pipeline")
    fails([str(tiny_chain / "base"), f"out={tmp_path / 'b'}"], "shapes-world pipeline directory")
    fails([str(tmp_path / "nowhere"), f"out={tmp_path / 'b'}"], "no such file")
    fails([str(tmp_path / "full"), f"out={tmp_path / 'b'}"], "not a capo checkpoint")
    # formats that do not exist for this checkpoint
    fails([ck, f"out={tmp_path / 'b'}", "format=lora"], "shapes-world checkpoint")
    fails([str(sdxl_runs["full"]), f"out={tmp_path / 'b'}", "format=lora"], "no low-rank form")
    fails([ck, f"out={tmp_path / 'b'}", "format=zip"], "format")
    # results that do not evaluate this checkpoint
    fails([str(shapes_runs / "dpo" / "final"), f"out={tmp_path / 'b'}", f"results={shapes_runs / 'eval'}"],
          "none of its models")
    fails([ck, f"out={tmp_path / 'b'}", f"results={shapes_runs / 'eval'}", "label=base"], "base model")
    fails([str(shapes_runs / "dpo" / "final"), f"out={tmp_path / 'b'}", f"results={shapes_runs / 'eval'}",
           "label=ours"], "is not this checkpoint")
    assert not (tmp_path / "b").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]

    # the base model not on this machine: a moved local base, and a registered hub base not in the cache
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in os.listdir(sdxl_runs["full"]):
        (moved / f).symlink_to(Path(sdxl_runs["full"]) / f)
    meta = json.loads((Path(sdxl_runs["full"]) / CHECKPOINT_FILE).read_text())
    (moved / CHECKPOINT_FILE).unlink()
    (moved / CHECKPOINT_FILE).write_text(json.dumps({**meta, "base": str(tmp_path / "gone" / "sdxl")}))
    fails([str(moved), f"out={tmp_path / 'b'}"], f"its base model {tmp_path / 'gone' / 'sdxl'} is not on this machine")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    (moved / CHECKPOINT_FILE).write_text(json.dumps({**meta, "base": "sdxl"}))
    fails([str(moved), f"out={tmp_path / 'b'}"], "'sdxl'", "stabilityai/stable-diffusion-xl-base-1.0",
          "hf download stabilityai/stable-diffusion-xl-base-1.0")
    assert not (tmp_path / "b").exists()


def test_lora_folding_and_hub_ids(tmp_path):
    """peft's scaling alpha / r (alpha / sqrt(r) with rsLoRA) lands in lora_B; the card's base_model."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    net = torch.nn.Sequential()
    net.add_module("to_q", torch.nn.Linear(6, 6))
    for rs, scale in ((False, 8 / 4), (True, 8 / 2)):
        pm = get_peft_model(torch.nn.Sequential(net), LoraConfig(r=4, lora_alpha=8, use_rslora=rs,
                                                                 target_modules=["to_q"], init_lora_weights="gaussian"))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_()
        d = tmp_path / f"a{rs}"
        pm.save_pretrained(d)
        state, rank = E.diffusers_lora_state(d)
        raw = load_file(str(d / "adapter_model.safetensors"))
        b = next(k for k in raw if "lora_B" in k)
        assert rank == 4 and b.removeprefix("base_model.model.") in state
        torch.testing.assert_close(state[b.removeprefix("base_model.model.")], raw[b] * scale)
    assert E.hub_id_of("sdxl") == "stabilityai/stable-diffusion-xl-base-1.0"
    snap = tmp_path / "hub" / "models--acme--tiny-sdxl" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    assert E.hub_id_of(str(snap)) == "acme/tiny-sdxl" and E.hub_id_of(str(tmp_path)) is None
