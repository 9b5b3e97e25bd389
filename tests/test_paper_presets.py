"""The paper presets (configs/reproduce-paper-*.yaml): the dry-run plan by hand, the missing
weights on an empty cache, and the tiny-scale run end to end with tiny models of the real classes.

The tiny run stands the real hub ids up in a private Hugging Face cache (``HF_HUB_CACHE``):
SDXL, MPS (imscore's file layout + the CLIP-H files), CLIP-FlanT5-XXL and its vision processor,
PickScore, and DiffusionDB's metadata table, each a tiny random model of the real class; the
benchmark prompt files come from ``../shared/benchmarks`` through capo's cache. So ``capo
reproduce --preset paper-sdxl --scale ...`` loads everything by the same names a real run does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, SHARED
from capo import plan
from capo.experiments import budget
from capo.experiments import reproduce as R

CAPO = [sys.executable, "-m", "capo"]


def paper_cfg(**over):
    return R.ReproduceConfig(**{**R.load_preset("paper-sdxl"), "preset": "paper-sdxl", **over})


def test_presets_load_and_validate():
    for name in ("paper-sdxl", "paper-sd3"):
        data = R.load_preset(name)
        cfg = R.ReproduceConfig(**{**data, "preset": name})
        assert cfg.rewards == ["mps", "vqascore", "vila"] and cfg.n == 16 and cfg.train_limit == 100_000
        assert cfg.train_prompts == "diffusiondb" and cfg.human_pairs and cfg.pickapic
    assert R.load_preset("paper-sdxl")["eval_prompts"] == "parti@test"
    assert R.load_preset("paper-sd3")["eval_prompts"] == "dpg-bench@test"
    with pytest.raises(Exception, match="pickapic=GLOB"):
        paper_cfg(pickapic=None)
    with pytest.raises(Exception, match="is set by the caller"):
        paper_cfg(train_options={"beta": 3.0})
    with pytest.raises(Exception, match="not a capo train key"):
        paper_cfg(train_options={"grad_acum": 2})


def test_experiment_plan_by_hand(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    cfg = paper_cfg(train_limit=1000, n_ablation=[], val_prompts="shapes:geneval@val", val_limit=10,
                    eval_prompts="shapes:geneval@test", eval_limit=20, benchmarks=False, steps=100, batch_size=4,
                    train_options={"grad_accum": 2, "mixed_precision": "bf16"}, gpus=8, biases=[1.5], seeds=[0, 1],
                    pickapic=str(tmp_path / "*.parquet"))
    p = budget.experiment(cfg)
    b = p["bases"]["sdxl"]
    # cells: 3 objectives x (3 single + SUM + FRS) + capo-frs-constant (Table 5's other weighting) + dpo-human
    assert b["cells"] == 17 and b["runs_sweep"] == 17 * 3 and b["runs_seeds"] == 17 and b["soups"] == 6
    assert b["models_eval"] == 1 + 17 * 2 + 6
    im = b["images"]
    assert im["training samples"] == 1000 * 16
    assert im["validation (beta selection)"] == (51 + 1) * 10
    assert im["test (win-rates)"] == 41 * 20 and im["total"] == 16000 + 520 + 820
    assert b["reward_evaluations"] == 16000 * 3 + (520 + 820) * 3
    assert p["pairs_per_step"] == 4 * 2 * 8 and b["pairs"] == 68 * 100 * 64
    assert b["gpu_hours"]["sampling"] == pytest.approx(17340 / 0.573 / 3600)
    assert b["gpu_hours"]["training"] == pytest.approx(435200 / 4.65 / 3600)
    assert b["disk_bytes"]["latent cache (float32)"] == 16000 * 4 * 128 * 128 * 4 + 1000 * (77 * 2048 + 1280) * 4
    assert b["peak_gib_per_gpu"] == pytest.approx(plan.plan("sdxl", mixed_precision="bf16", pairs_per_gpu=4,
                                                            accum=2, gpus=8)["peak_gib_per_gpu"])
    assert p["exact_counts"]  # the shapes sets are built in: counted, not estimated
    text = budget.render_experiment(p)
    assert "17,340" in text and "GPU-hours" in text
    # scale: every prompt count and the steps shrink, nothing else
    s = R.scaled(paper_cfg(scale=0.001))
    assert (s.train_limit, s.val_limit, s.steps, s.n) == (100, 2, 1, 16) and s.eval_limit >= 2
    assert s.out == "runs/reproduce-paper-sdxl-x0.001"


def _env(tmp_path, hub):
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "CAPO_OFFLINE": "1",
           "CAPO_CACHE": str(tmp_path / "capo"), "CAPO_QUIET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CAPO_VILA_PATH", None)
    return env


def test_dry_run_lists_every_missing_weight(tmp_path):
    hub = tmp_path / "empty-hub"
    hub.mkdir()
    out = subprocess.run([*CAPO, "reproduce", "--preset", "paper-sdxl", "--dry-run"], cwd=tmp_path,
                         env=_env(tmp_path, hub), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for hub_id in ("stabilityai/stable-diffusion-xl-base-1.0", "RE-N-Y/mpsv1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                   "zhiqiulin/clip-flant5-xxl", "openai/clip-vit-large-patch14-336", "poloclub/diffusiondb",
                   "facebook/mask2former-swin-small-coco-instance", "Salesforce/blip-vqa-capfilt-large"):
        assert f"hf download {hub_id}" in text, hub_id
    for name in ("CAPO_VILA_PATH", "[parti]", "[geneval]", "[t2i-compbench:color]", "pickapic_v2",
                 "pip install 'capo[vila]'"):
        assert name in text, name
    assert "GPU-hours" in text and "3,200,000" in text  # 100K prompts x 16 samples
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    sd3 = subprocess.run([*CAPO, "reproduce", "--preset", "paper-sd3", "--dry-run"], cwd=tmp_path,
                         env=_env(tmp_path, hub), capture_output=True, text=True, timeout=300)
    assert sd3.returncode == 0 and "stabilityai/stable-diffusion-3-medium-diffusers" in sd3.stdout
    assert "[dpg-bench]" in sd3.stdout and "gated" in sd3.stdout


# ----------------------------------------------------------------------------- the tiny-scale run
def _cache(hub: Path, repo: str, src: Path, kind: str = "models", files=None) -> None:
    """``src`` as the cached snapshot of ``repo`` (huggingface_hub's cache layout)."""
    d = hub / f"{kind}--{repo.replace('/', '--')}"
    snap = d / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True, exist_ok=True)
    if files is None:
        shutil.copytree(src, snap, dirs_exist_ok=True)
    for f in files or []:
        shutil.copy(Path(src) / f, snap / f)
    (d / "refs").mkdir(exist_ok=True)
    (d / "refs" / "main").write_text("0" * 40)


@pytest.mark.slow
def test_paper_sdxl_at_tiny_scale_end_to_end(tmp_path):
    if not (SHARED / "benchmarks" / "parti" / "PartiPrompts.tsv").is_file():
        pytest.skip("../shared/benchmarks not here")
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPModel

    from capo.rewards import mps as M
    from helpers import CROSS, build_sdxl, tiny_clip_dir, tiny_clip_t5_dir, write_shard

    hub = tmp_path / "hub"
    _cache(hub, "stabilityai/stable-diffusion-xl-base-1.0", build_sdxl(tmp_path / "sdxl"))
    clip = tiny_clip_dir(tmp_path / "clip")
    _cache(hub, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", clip)
    _cache(hub, "yuvalkirstain/PickScore_v1", clip)
    c = CLIPModel.from_pretrained(clip)
    torch.manual_seed(3)
    cross = M.CrossModel(c.config.projection_dim, **CROSS)
    state = {f"mps.model.{k}": v for k, v in c.state_dict().items()}
    state |= {f"mps.cross_model.{k}": v for k, v in cross.state_dict().items()}
    (tmp_path / "mps").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "mps" / "model.safetensors"))
    _cache(hub, "RE-N-Y/mpsv1", tmp_path / "mps")
    t5 = tiny_clip_t5_dir(tmp_path / "clip-t5")
    _cache(hub, "zhiqiulin/clip-flant5-xxl", t5)
    _cache(hub, "openai/clip-vit-large-patch14-336", t5, files=["preprocessor_config.json"])
    prompts = ["a castle on a hill at dawn", "portrait of a cat wearing a hat", "a watercolor of mountains and a lake",
               "a quiet harbour with fishing boats", "a red bicycle leaning on a wall"]
    (tmp_path / "ddb").mkdir()
    pd.DataFrame({"prompt": prompts, "prompt_nsfw": 0.0, "image_nsfw": 0.0}).to_parquet(
        tmp_path / "ddb" / "metadata.parquet")
    _cache(hub, "poloclub/diffusiondb", tmp_path / "ddb", kind="datasets")
    (tmp_path / "capo").mkdir()
    os.symlink(SHARED / "benchmarks", tmp_path / "capo" / "benchmarks")
    (tmp_path / "pap").mkdir()
    write_shard(tmp_path / "pap" / "train-00000.parquet")

    run = tmp_path / "run"
    args = [*CAPO, "reproduce", "--preset", "paper-sdxl", "--scale", "0.00003", f"out={run}",
            "rewards=[mps,vqascore,pickscore]",  # VILA needs TensorFlow (its worker is tested in test_vila.py)
            "n=4", "n_ablation=[]", "biases=[1.5]", "seeds=[0]", "widen=0",
            "betas={dpo: [2500.0], ipo: [2500.0], capo: [2500.0]}",
            "benchmarks=false",  # GenEval / CompBench on real detectors: tests/test_geneval.py, test_t2i_compbench.py
            f"pickapic={tmp_path / 'pap'}/*.parquet"]
    out = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path, hub), capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    b = run / "sdxl"
    # 3 DiffusionDB prompts (100K x 0.00003) x 4 samples, scored by the three rewards
    idx = pd.read_parquet(b / "samples" / "index.parquet")
    assert len(idx) == 12 and idx["prompt_id"].str.startswith("ddb-").all()
    for r in ("mps", "vqascore", "pickscore"):
        s = pd.read_parquet(b / "samples" / "rewards" / r / "scores.parquet")[r]
        assert len(s) == 12 and s.notna().all()
    # Table 4's baseline trained on the Pick-a-Pic labels: 3 pairs (the tie dropped)
    assert len(pd.read_parquet(b / "human" / "pairs" / "pairs.parquet")) == 3
    sel = json.loads((b / "selected.json").read_text())
    assert "dpo-human" in sel and "capo-frs" in sel
    tm = json.loads((Path(sel["capo-frs"]["checkpoint"]).parent / "manifest.json").read_text())
    assert tm["config"]["mixed_precision"] == "bf16" and tm["config"]["grad_accum"] == 16
    assert tm["config"]["steps"] == 1  # 500 x 0.00003, at least 1
    tables = (run / "reports" / "tables.md").read_text()
    assert "Table 1" in tables and "Table 4" in tables and "dpo-human" in tables
