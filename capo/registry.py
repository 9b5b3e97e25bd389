"""Small registries: name -> entry, with lazy entries and helpful unknown-name errors.

An entry is either an object or a ``"module:attr"`` string imported on first use, so
registering heavy factories (diffusers pipelines, CLIP rewards) costs nothing until a
name is asked for, and ``capo --help`` stays fast.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from capo import vocabulary


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the known names and the nearest ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, entry: Any = None, doc: str = ""):
        """``reg.register("x", obj)``, ``reg.register("x", "pkg.mod:attr")`` (or ``"pkg.mod:Class.attr"``)
        or as a decorator."""
        if entry is None:
            def deco(obj):
                self.register(name, obj, doc or (obj.__doc__ or "").strip().split("\n")[0])
                return obj
            return deco
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        self._docs[name] = doc
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def doc(self, name: str) -> str:
        return self._docs.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            near = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, _, attr = entry.partition(":")
            entry = importlib.import_module(module)
            for part in attr.split("."):  # "pkg.mod:Class.method" names a class's loader
                entry = getattr(entry, part)
            self._entries[name] = entry
        return entry


SELECTORS = Registry("selector")
for _name, _doc in vocabulary.PAIR_SELECTORS.items():  # sum: best-worst on the weighted sum of calibrated rewards
    SELECTORS.register(_name, "capo.method.selection:" + ("frs" if _name == "frs" else "best_worst"), _doc)

OBJECTIVES = Registry("objective")
for _name, _doc in vocabulary.OBJECTIVES.items():
    OBJECTIVES.register(_name, f"capo.method.objectives:{_name}_loss", _doc)
OBJECTIVES.register("grpo", "capo.method.grpo:grpo_loss", vocabulary.BASELINES["grpo"])

TRANSFORMS = Registry("BT transform")
TRANSFORMS.register("identity", "capo.method.calibration:bt_transform", "BT-trained logit rewards")
TRANSFORMS.register("logit", "capo.method.calibration:bt_transform", "probabilities: log(p / (1 - p))")
TRANSFORMS.register("temperature:T", "capo.method.calibration:bt_transform", "bounded scores: R / T")

ALL = {"selectors": SELECTORS, "objectives": OBJECTIVES, "transforms": TRANSFORMS}


# Base models (capo.models): factories imported only when a model is loaded.
MODELS = Registry("model")
MODELS.register("shapes-sdxl", "capo.worlds.shapes.zoo:load_sdxl_like",
                "shapes world, SDXL-like: UNet2DConditionModel, DDPM eps, DDIM + CFG")
MODELS.register("shapes-sd3", "capo.worlds.shapes.zoo:load_sd3_like",
                "shapes world, SD3-like: SD3Transformer2DModel, rectified flow, Euler + CFG")
# Real base models (capo.models.diffusers_backends): a hub id from the local HF cache, or path=DIR.
MODELS.register("sdxl", "capo.models.diffusers_backends:load_sdxl",
                "SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0): DDPM eps, DDIM, guidance 7.5, 50 steps")
MODELS.register("sd3-medium", "capo.models.diffusers_backends:load_sd3_medium",
                "SD3 medium (stabilityai/stable-diffusion-3-medium-diffusers): rectified flow, flow DPM-solver, "
                "guidance 5.0, 50 steps")
# Saved pipeline directories (capo.models.load_model): the file that marks the format -> its loader.
PIPELINE_DIRS = Registry("pipeline directory format")
PIPELINE_DIRS.register("capo_pipeline.json", "capo.worlds.shapes.pipeline:ShapesPipeline.from_pretrained",
                       "a shapes-world pipeline saved by ShapesPipeline.save_pretrained")
PIPELINE_DIRS.register("model_index.json", "capo.models.diffusers_backends:load_diffusers_dir",
                       "a diffusers pipeline directory (SDXL or SD3 layout)")


# Reward models (capo.rewards): factories imported only when a reward is loaded.
REWARDS = Registry("reward model")
# The paper's reward models, real implementations (capo.rewards.real).
REWARDS.register("pickscore", "capo.rewards.real:pickscore", "PickScore v1 (yuvalkirstain/PickScore_v1): logit_scale * cos")
REWARDS.register("hps", "capo.rewards.real:hps", "HPSv2.1 (xswu/HPSv2, OpenCLIP ViT-H-14): cos(image, text)")
REWARDS.register("imagereward", "capo.rewards.real:imagereward", "ImageReward v1.0 (THUDM/ImageReward; pip image-reward)")
REWARDS.register("aesthetic", "capo.rewards.real:aesthetic", "LAION improved aesthetic predictor on CLIP ViT-L/14, ~1-10")
REWARDS.register("clipscore", "capo.rewards.real:clipscore", "CLIPScore 2.5 * max(cos, 0), CLIP ViT-B/32 (Hessel et al.)")
REWARDS.register("vqascore", "capo.rewards.vqascore:vqascore_t5", "VQAScore P('Yes' | image, question) over CLIP-FlanT5-XXL (zhiqiulin/clip-flant5-xxl), the paper's")
REWARDS.register("vqascore-xl", "capo.rewards.vqascore:vqascore_xl", "VQAScore over CLIP-FlanT5-XL (zhiqiulin/clip-flant5-xl), for smaller GPUs")
REWARDS.register("vqascore-blip", "capo.rewards.real:vqascore_blip", "VQAScore P('yes' | image, question) over BLIP VQA (blip-vqa-base): not the paper's numbers")
REWARDS.register("vila", "capo.rewards.vila:vila", "VILA-R aesthetic (Google, TensorFlow SavedModel) in a worker process; extra capo[vila]")
REWARDS.register("mps", "capo.rewards.mps:mps", "MPS overall preference (Kwai-Kolors/MPS; CLIP-H + cross-attention head, RE-N-Y/mpsv1)")

# The shapes world's reward models (capo.worlds.shapes.rewards): learned proxies trained
# from scratch against the world's hidden truth, plus that truth itself for evaluation.
REWARDS.register("shapes-pref", "capo.worlds.shapes.rewards:load_pref", "shapes world, MPS/PickScore analogue: tiny CLIP, BT-trained logit_scale * cos")
REWARDS.register("shapes-vqa", "capo.worlds.shapes.rewards:load_vqa", "shapes world, VQAScore analogue: tiny BLIP image-text matching P(yes)")
REWARDS.register("shapes-aesthetic", "capo.worlds.shapes.rewards:load_aesthetic", "shapes world, VILA analogue: image-only ViT regressor, ~1-10")
REWARDS.register("shapes-gold", "capo.worlds.shapes.rewards:load_gold", "shapes world hidden truth (truth.utility): evaluation only, not learned")


# Prompt sets a world generates itself, named FAMILY:NAME (capo.prompts); each entry maps NAME to records.
WORLD_PROMPTS = Registry("world prompt family")
WORLD_PROMPTS.register("shapes", "capo.worlds.shapes.grammar:named_prompt_set",
                       "the shapes world's sets: shapes:train, shapes:geneval, shapes:compbench:<category> (@val/@test halves)")


# What `capo eval` measures (benchmarks=...): name -> the summary of one model's per-image results.
BENCHMARKS = Registry("benchmark")
for _name, _doc in {
        "winrate": "win-rate over the base under each reward, with two-level CIs (and mean-score deltas)",
        "geneval": "GenEval: per-tag and overall accuracy of a detector's verdicts (upstream's rules and results.jsonl)",
        "compbench": "T2I-CompBench(++): per-category scores (BLIP-VQA, UniDet, CLIPScore, 3-in-1)",
        "dpg": "DPG-Bench: per-prompt question accuracy by mPLUG-large (or BLIP-VQA, a variant)",
        "divergence": "the reverse-process KL term from the base on the model's own images, and the parameter distance",
}.items():
    BENCHMARKS.register(_name, f"capo.stages.evaluate:{_name}_summary", _doc)


def all_registries() -> dict[str, Registry]:
    """Every registry, by the name ``capo ls`` and config rules (``@rewards``) use."""
    return {**ALL, "models": MODELS, "pipeline-dirs": PIPELINE_DIRS, "rewards": REWARDS, "world-prompts": WORLD_PROMPTS,
            "benchmarks": BENCHMARKS}
