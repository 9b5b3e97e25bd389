"""The weights and data files each real component needs, and whether they are on this machine.

``NEEDS[name]`` lists the files behind a registered base model, reward model, benchmark or
dataset; ``missing(names)`` checks each without loading anything (the Hugging Face cache by
``try_to_load_from_cache``, capo's own cache, an environment variable or a path) and returns the
absent ones with the command that fetches each. ``capo reproduce --preset paper-sdxl --dry-run``
prints them.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from capo.eval.prompts import default_cache_dir, get_prompt_set


@dataclass(frozen=True)
class Need:
    what: str  # what it is, for people
    kind: str  # hub | dataset | env | prompts | path | package
    source: str  # hub repo id | environment variable | prompt set name | a glob of local files | module
    file: str = ""  # hub / dataset: a file of the repo that must be cached; env / path / package: how to get it
    gated: bool = False

    def present(self) -> bool:
        if self.kind in ("hub", "dataset"):
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(self.source, self.file, repo_type="model" if self.kind == "hub" else "dataset")
            return isinstance(hit, str)
        if self.kind == "env":
            v = os.environ.get(self.source)
            return bool(v) and Path(v).exists()
        if self.kind == "prompts":  # in capo's cache (checksums are checked when the set is read)

            return all((default_cache_dir() / f.local).is_file() for f in get_prompt_set(self.source).files())
        if self.kind == "path":
            return bool(glob.glob(self.source))
        if self.kind == "package":
            import importlib.util

            return importlib.util.find_spec(self.source) is not None
        raise ValueError(f"unknown need kind {self.kind!r}")

    def fetch(self) -> str:
        if self.kind == "hub":
            gate = "  # gated: accept the licence on its model page and `hf auth login` first" if self.gated else ""
            return f"hf download {self.source}{gate}"
        if self.kind == "dataset":
            return f"hf download {self.source} {self.file} --repo-type dataset"
        if self.kind == "env":
            return f"set {self.source}=DIR (see `capo ls rewards`: {self.file})"
        if self.kind == "prompts":
            return (f"python -c \"from capo.eval.prompts import load_prompt_set; load_prompt_set('{self.source}')\""
                    "  # online; or copy the upstream files into ~/.cache/capo/benchmarks")
        if self.kind in ("path", "package"):
            return self.file
        raise ValueError(f"unknown need kind {self.kind!r}")


_CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
NEEDS: dict[str, list[Need]] = {
    "sdxl": [Need("SDXL base 1.0", "hub", "stabilityai/stable-diffusion-xl-base-1.0", "model_index.json")],
    "sd3-medium": [Need("SD3 medium", "hub", "stabilityai/stable-diffusion-3-medium-diffusers", "model_index.json",
                        gated=True)],
    "mps": [Need("MPS weights (imscore's port of MPS_overall_checkpoint.pth)", "hub", "RE-N-Y/mpsv1",
                 "model.safetensors"),
            Need("MPS's CLIP-H config, tokenizer and processor", "hub", _CLIP_H, "preprocessor_config.json")],
    "vqascore": [Need("CLIP-FlanT5-XXL", "hub", "zhiqiulin/clip-flant5-xxl", "config.json"),
                 Need("its CLIP vision tower config and processor", "hub", "openai/clip-vit-large-patch14-336",
                      "preprocessor_config.json")],
    "vqascore-xl": [Need("CLIP-FlanT5-XL", "hub", "zhiqiulin/clip-flant5-xl", "config.json"),
                    Need("its CLIP vision tower config and processor", "hub", "openai/clip-vit-large-patch14-336",
                         "preprocessor_config.json")],
    "vqascore-blip": [Need("BLIP VQA", "hub", "Salesforce/blip-vqa-base", "config.json")],
    "vila": [Need("VILA-R SavedModel (google/vila on Kaggle Models)", "env", "CAPO_VILA_PATH",
                  "google/vila, TensorFlow 2, image"),
             Need("TensorFlow for VILA's worker process", "package", "tensorflow", "pip install 'capo[vila]'")],
    "pickscore": [Need("PickScore v1", "hub", "yuvalkirstain/PickScore_v1", "config.json"),
                  Need("its CLIP-H processor", "hub", _CLIP_H, "preprocessor_config.json")],
    "hps": [Need("HPS v2.1", "hub", "xswu/HPSv2", "HPS_v2.1_compressed.pt")],
    "clipscore": [Need("CLIP ViT-B/32", "hub", "openai/clip-vit-base-patch32", "config.json")],
    "aesthetic": [Need("CLIP ViT-L/14", "hub", "openai/clip-vit-large-patch14", "config.json")],
    "geneval": [Need("GenEval prompts", "prompts", "geneval"),
                Need("Mask2Former COCO instance segmentation (GenEval's detector)", "hub",
                     "facebook/mask2former-swin-small-coco-instance", "config.json"),
                Need("open_clip ViT-L-14 OpenAI weights (GenEval's colour classifier)", "hub",
                     "timm/vit_large_patch14_clip_224.openai", "open_clip_pytorch_model.bin")],
    "compbench": [Need(f"T2I-CompBench {c} prompts", "prompts", f"t2i-compbench:{c}")
                  for c in ("color", "shape", "texture", "spatial", "non_spatial")]
                 + [Need("BLIP VQA capfilt-large (CompBench's attribute scorer)", "hub",
                         "Salesforce/blip-vqa-capfilt-large", "config.json"),
                    Need("open_clip ViT-B-32 OpenAI weights (CompBench's non-spatial CLIPScore)", "hub",
                         "timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin"),
                    Need("Mask2Former COCO (CompBench's 2D-spatial detector in capo)", "hub",
                         "facebook/mask2former-swin-small-coco-instance", "config.json")],
    "parti": [Need("PartiPrompts", "prompts", "parti")],
    "dpg-bench": [Need("DPG-Bench prompts", "prompts", "dpg-bench")],
    "diffusiondb": [Need("DiffusionDB prompt metadata", "dataset", "poloclub/diffusiondb", "metadata.parquet")],
}


def needs_of(name: str) -> list[Need]:
    """What ``name`` (a model, reward, benchmark, prompt spec) needs; [] for anything built in
    (the shapes world) or given as a local path."""
    base = name.split("@")[0]
    if base.startswith("diffusiondb:") or base.startswith("shapes") or Path(name).exists():
        return []
    return list(NEEDS.get(base, []))


def missing(names) -> list[Need]:
    """The absent needs of ``names`` (each once, in order)."""
    out, seen = [], set()
    for n in names:
        for need in needs_of(n):
            if (need.kind, need.source, need.file) not in seen:
                seen.add((need.kind, need.source, need.file))
                if not need.present():
                    out.append(need)
    return out
