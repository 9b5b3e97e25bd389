"""`capo export CHECKPOINT out=DIR`: a capo checkpoint as files other tools read, with a model card.

A capo checkpoint (``capo_checkpoint.json`` plus ``denoiser.safetensors`` or a peft ``adapter/``)
only loads in capo. ``run`` writes, into an empty or new ``out``:

* a **full fine-tune** (or a ``capo merge`` output, which is one) as a complete diffusers pipeline
  directory: the base model's components and the trained denoiser with its config
  (``DiffusionPipeline.save_pretrained``), so ``StableDiffusionXLPipeline.from_pretrained(out)``
  (or ``StableDiffusion3Pipeline``) reads it;
* a **LoRA** in diffusers' LoRA format, ``pytorch_lora_weights.safetensors``
  (``<Pipeline>.save_lora_weights``), so ``pipe.load_lora_weights(out)`` on the base reads it.
  Keys are diffusers' peft names (``unet.<module>.lora_A.weight``); peft's scaling
  ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA) is folded into ``lora_B``, so the file holds
  ``W + B A`` at scale 1, the convention of every reader that finds no alpha (diffusers, ComfyUI,
  A1111). ``kohya=true`` adds ``pytorch_lora_weights_kohya.safetensors`` (``lora_unet_*`` keys with
  ``.alpha``, diffusers' ``convert_state_dict_to_kohya``, what diffusers' own SDXL training script
  writes): SDXL only, since diffusers has no kohya converter for SD3's transformer;
* ``README.md``: a model card in the Hub's format (YAML front matter: ``base_model``,
  ``library_name: diffusers``, tags, an empty ``license`` for the user) with the training config,
  the objective and beta, where the preference pairs came from (prompts, samples, rewards,
  selector, calibration; read from the manifests capo wrote beside the checkpoint's run), how to
  sample like capo, and, with ``results=`` (a ``capo eval`` ``results.json``), the evaluation
  with its 95% intervals and protocol card;
* ``capo_export.json``: what was exported, from which checkpoint (fingerprint), with each
  written file's size and sha256.

The shapes world's ``ShapesPipeline`` is not a diffusers pipeline class (its text encoder,
tokenizer and sampler are capo's own): its checkpoints export as a ``ShapesPipeline``
directory (``save_pretrained``, LoRA merged in), loadable by ``capo.models.load_model(out)``,
and the card says so. ``format=lora`` is refused for it.

Sampling like capo in plain diffusers. The export keeps the base's own scheduler config; capo's
sampler (``capo.models.diffusers_backends``) is, for SDXL, ``DDIMScheduler.from_config`` of that
config (eta 0) with the pipeline's guidance, and its per-item noise ``torch.randn(latent_shape,
generator=torch.Generator(device).manual_seed(seed))`` is what the pipeline draws from a *list*
of such generators, so ``pipe(prompts, generator=[torch.Generator(device).manual_seed(s) for s in
seeds], ...)`` with the DDIM scheduler gives capo's images (tested: latents to 1e-4, pixels to
one 8-bit level). For SD3 capo's default sampler is flow DPM-Solver++ conditioned on the exact
``sigma * 1000``; diffusers' ``DPMSolverMultistepScheduler`` rounds its timesteps to integers, so
``pipe()`` with it differs slightly; with the pipeline's shipped flow Euler scheduler capo
(``sampler="euler"``) and ``pipe()`` agree exactly (tested), and the transformer is the same
function either way (tested on the same inputs).

Failures write nothing: a path that is not a capo checkpoint (a pipeline directory, a run
directory whose checkpoint is ``final/``), an ``out`` that holds files (exports never
overwrite), a base model that is not on this machine (the error names it and how to get it),
damaged weights or a changed base (``capo.models.check_checkpoint``). The export is written to
a temporary sibling of ``out`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import ClassVar

from capo import artifacts
from capo.config import build, stage_config
from capo.models import (
    check_checkpoint,
    CHECKPOINT_FILE,
    diffusers_backends as DB,
    load_checkpoint,
    ModelLoadError,
    MODELS,
)
from capo.registry import UnknownNameError
from capo.report.compare import compare_table
from capo.weights import missing

EXPORT_RECORD = "capo_export.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
KOHYA_WEIGHTS = "pytorch_lora_weights_kohya.safetensors"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
HUB_IDS = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
           "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers"}
# each supported diffusers pipeline class: its denoiser component, save_lora_weights keyword and Hub tag
DIFFUSERS_CLASSES = {"StableDiffusionXLPipeline": ("unet", "unet_lora_layers", "stable-diffusion-xl"),
                     "StableDiffusion3Pipeline": ("transformer", "transformer_lora_layers", "sd3")}


class ExportError(ValueError):
    """An export that cannot be made; the message says what is wrong and what to do."""


@stage_config
class ExportConfig:
    checkpoint: str  # CHECKPOINT: a capo checkpoint directory (a train run's final/, a merge output, an iterate round's checkpoint)
    out: str  # output directory: new or empty (an export never overwrites)
    format: str = "auto"  # auto: full -> pipeline, LoRA -> lora | pipeline (LoRA merged into the weights) | lora
    kohya: bool = False  # LoRA: also write kohya-style keys (pytorch_lora_weights_kohya.safetensors; SDXL only)
    results: str | None = None  # a `capo eval` results.json (or its directory): evaluation + protocol in the card
    label: str | None = None  # the model of `results` that is this checkpoint (default: found by its fingerprint)
    dtype: str = "fp32"  # dtype of the written weights (diffusers loads them as float32 unless given torch_dtype)
    base_model: str | None = None  # the card's base_model hub id (default: the registered base's hub id, if any)
    name: str | None = None  # the card's title (default: the out directory's name)

    RULES: ClassVar[dict[str, str]] = {"format": "auto | pipeline | lora", "dtype": "fp32 | fp16 | bf16"}

    def contradictions(self):
        if self.kohya and self.format == "pipeline":
            yield "kohya: set, but format = pipeline (kohya keys are a LoRA format)"
        if self.label and not self.results:
            yield "label: set, but no results (label names a model of a results.json)"


def config_from_cli(checkpoint: str, tokens, config_path: str | None = None) -> ExportConfig:
    """``capo export CHECKPOINT key=value ...``: the checkpoint as given (not parsed as YAML)."""
    import dataclasses

    cfg = build(ExportConfig, config_path, [*tokens, "checkpoint=."])
    return dataclasses.replace(cfg, checkpoint=checkpoint)


# ----------------------------------------------------------------------------- inputs
def read_checkpoint(path) -> dict:
    """The checkpoint's metadata, or an ``ExportError`` saying what ``path`` is instead."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise ExportError(f"{p}: not a capo checkpoint (a checkpoint is a directory holding {CHECKPOINT_FILE})")
    if (p / CHECKPOINT_FILE).is_file():
        try:
            return json.loads((p / CHECKPOINT_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{p / CHECKPOINT_FILE}: not valid JSON ({e}); the checkpoint is damaged: re-create it "
                              "(rerun the train or merge command that wrote it with --overwrite)") from None
    if (p / "final" / CHECKPOINT_FILE).is_file():
        raise ExportError(f"{p}: a training run directory, not a checkpoint; its final weights are {p / 'final'}")
    if (p / "model_index.json").is_file():
        raise ExportError(f"{p}: already a diffusers pipeline directory (model_index.json), not a capo checkpoint; "
                          "diffusers reads it as it is (from_pretrained)")
    if (p / "capo_pipeline.json").is_file():
        raise ExportError(f"{p}: a shapes-world pipeline directory, not a capo checkpoint (no {CHECKPOINT_FILE})")
    raise ExportError(f"{p}: not a capo checkpoint (no {CHECKPOINT_FILE}); export takes the directory that "
                      "`capo train` writes as <out>/final, `capo merge` as <out>, or an iterate round's checkpoint")


def check_out(out) -> None:
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        what = "a file" if not o.is_dir() else "a directory that holds files"
        raise ExportError(f"{o}: {what}; an export never overwrites: give a new or empty directory "
                          "(or remove this one first)")


def base_chain(meta: dict) -> list[tuple[str, dict | None]]:
    """``[(spec, checkpoint meta or None), ...]`` from the checkpoint's base down to the root base
    model (an iterate round's base is the previous round's checkpoint)."""
    chain, spec, seen = [], meta["base"], set()
    while True:
        p = Path(spec)
        sub = json.loads((p / CHECKPOINT_FILE).read_text()) if (p / CHECKPOINT_FILE).is_file() else None
        chain.append((spec, sub))
        if sub is None or spec in seen:
            return chain
        seen.add(spec)
        spec = sub["base"]


def require_base(spec: str, ckpt) -> None:
    """An ``ExportError`` naming the base model and how to get it, when it is not on this machine."""
    p = Path(spec)
    if p.is_dir() and ((p / "model_index.json").is_file() or (p / "capo_pipeline.json").is_file()):
        return
    if spec in MODELS:
        absent = missing([spec])
        if absent:
            raise ExportError(f"{ckpt}: its base model {spec!r} ({absent[0].what}, {absent[0].source}) is not on this "
                              f"machine (no copy in the Hugging Face cache); get it with `{absent[0].fetch()}` and "
                              "export again")
        return
    if p.exists():
        raise ExportError(f"{ckpt}: its base model {spec} is neither a diffusers pipeline directory "
                          "(model_index.json), a shapes pipeline (capo_pipeline.json) nor a capo checkpoint")
    raise ExportError(f"{ckpt}: its base model {spec} is not on this machine (no such directory). The checkpoint "
                      f"holds only the fine-tuned weights; put a copy of that base model at {spec} (the same files: "
                      "its fingerprint is checked) and export again")


def pipeline_class_of(spec: str) -> str | None:
    """The diffusers pipeline class of a root base spec (None: the shapes world's pipeline)."""
    p = Path(spec)
    if (p / "model_index.json").is_file():
        return json.loads((p / "model_index.json").read_text()).get("_class_name")
    if (p / "capo_pipeline.json").is_file() or spec.startswith("shapes"):
        return None
    if spec in MODELS:
        return {"sdxl": DB.SDXLModel.pipeline_class, "sd3-medium": DB.SD3Model.pipeline_class}.get(spec)
    return None


def hub_id_of(spec: str) -> str | None:
    """The Hub id of a root base: a registered name's, or a directory in the Hugging Face cache."""
    if spec in HUB_IDS:
        return HUB_IDS[spec]
    parts = Path(spec).resolve().parts
    for i, part in enumerate(parts):
        if part.startswith("models--") and i + 2 < len(parts) and parts[i + 1] == "snapshots":
            return part[len("models--"):].replace("--", "/")
    return None


# ----------------------------------------------------------------------------- LoRA
def diffusers_lora_state(adapter_dir) -> tuple[dict, int]:
    """A peft adapter of a capo checkpoint -> ``{module.lora_A.weight / lora_B.weight: tensor}``
    (the denoiser's own module names) with peft's scaling folded into ``lora_B``; and the rank."""
    from safetensors.torch import load_file

    adir = Path(adapter_dir)
    cfg = json.loads((adir / "adapter_config.json").read_text())
    unsupported = [k for k, bad in (("use_dora", cfg.get("use_dora")), ("modules_to_save", cfg.get("modules_to_save")),
                                    ("bias", cfg.get("bias", "none") != "none"), ("alpha_pattern", cfg.get("alpha_pattern")),
                                    ("rank_pattern", cfg.get("rank_pattern"))) if bad]
    if cfg.get("peft_type", "LORA") != "LORA" or unsupported:
        raise ExportError(f"{adir}: a {cfg.get('peft_type')} adapter with {', '.join(unsupported) or 'other options'}; "
                          "only a plain LoRA (what `capo train lora_rank=R` writes) exports to diffusers' format")
    state = load_file(str(adir / "adapter_model.safetensors"))
    out, ranks = {}, set()
    alpha, rslora = float(cfg["lora_alpha"]), bool(cfg.get("use_rslora", False))
    for k, v in state.items():
        name = k.removeprefix("base_model.model.")
        if ".lora_A." in name:
            out[name] = v.float().contiguous()
            ranks.add(int(v.shape[0]))
        elif ".lora_B." in name:
            r = int(v.shape[1])
            scale = alpha / (math.sqrt(r) if rslora else r)
            out[name] = (v.float() * scale).contiguous()
        else:
            raise ExportError(f"{adir}: unexpected adapter tensor {k!r}; only lora_A / lora_B weights export")
    return out, max(ranks) if ranks else 0


# ----------------------------------------------------------------------------- provenance
def _manifest(d: Path) -> dict | None:
    f = d / artifacts.MANIFEST
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except json.JSONDecodeError:
        return None


def provenance(ckpt, meta: dict | None = None, depth: int = 0) -> dict:
    """What capo recorded about how a checkpoint was made: its metadata, the training run's
    config, the pairs (selector, rewards, calibration), the samples (prompts, n, seed), and for
    a merge each merged checkpoint's own provenance. Absent records are left out."""
    p = Path(ckpt)
    if meta is None:
        try:
            meta = json.loads((p / CHECKPOINT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {"checkpoint": str(p), "missing": True}
    keep = ("format", "base", "base_fingerprint", "fingerprint", "objective", "beta", "steps", "method", "weights")
    prov: dict = {"checkpoint": str(p), **{k: meta[k] for k in keep if k in meta}}
    if meta.get("format") == "lora" and (p / "adapter" / "adapter_config.json").is_file():
        acfg = json.loads((p / "adapter" / "adapter_config.json").read_text())
        prov["lora"] = {"r": acfg.get("r"), "alpha": acfg.get("lora_alpha"), "rslora": acfg.get("use_rslora", False),
                        "targets": sorted(acfg.get("target_modules") or [])}
    tm = _manifest(p.parent)
    if tm and tm.get("stage") == "train" and (not meta.get("train_run") or tm.get("run_key") == meta.get("train_run")):
        prov["train"] = {k: v for k, v in tm["config"].items() if v is not None}
        prov["train"]["final_metrics"] = tm.get("final_metrics")
        prov["train_versions"] = {k: tm.get("versions", {}).get(k) for k in ("capo", "torch", "diffusers")}
        prov["git_commit"] = tm.get("git_commit")
        pairs_dir = Path((tm.get("inputs", {}).get("pairs") or {}).get("path", ""))
        pm = _manifest(pairs_dir) if pairs_dir.name else None
        if pm:
            pc = pm.get("config", {})
            prov["pairs"] = {"selector": pc.get("selector"), "rewards": pm.get("rewards") or pc.get("rewards") or [],
                             "transforms": pm.get("transforms") or {}, "weights": pc.get("weights"),
                             "calibration": pm.get("calibration"), "source": pc.get("source"),
                             "reference": pm.get("reference") or pc.get("reference"),
                             "counts": pm.get("counts"), "run_key": pm.get("run_key")}
        samples_dir = Path((tm.get("inputs", {}).get("samples") or {}).get("path", ""))
        sm = _manifest(samples_dir) if samples_dir.name else None
        if sm:
            sc = sm.get("config", {})
            prov["samples"] = {"stage": sm.get("stage"), "prompts": sc.get("prompts"),
                               "prompts_sha256": (sm.get("inputs", {}).get("prompts") or {}).get("sha256"),
                               "limit": sc.get("limit"), "n": sc.get("n"), "seed": sc.get("seed"),
                               "steps": sc.get("steps"), "guidance": sc.get("guidance"), "model": sc.get("model"),
                               "source": sc.get("source"), "counts": sm.get("counts"), "run_key": sm.get("run_key"),
                               "files": sorted(v["path"] for k, v in sm.get("inputs", {}).items()
                                               if k.startswith("pickapic_"))}
    if meta.get("merged_from") and depth < 4:
        prov["merged_from"] = [provenance(c, depth=depth + 1) for c in meta["merged_from"]]
    if (Path(meta.get("base", "")) / CHECKPOINT_FILE).is_file() and depth < 8:
        prov["base_checkpoint"] = provenance(meta["base"], depth=depth + 1)
    return prov


# ----------------------------------------------------------------------------- evaluation
def read_results(path) -> tuple[dict, dict | None, Path]:
    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    if not f.is_file():
        raise ExportError(f"{path}: no `capo eval` results.json there")
    try:
        res = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(res, dict) or "results" not in res or "models" not in res:
        raise ExportError(f"{f}: not a `capo eval` results.json (no 'models' / 'results')")
    return res, _manifest(f.parent), f


def results_label(results: dict, manifest: dict | None, ckpt, meta: dict, label: str | None, where) -> str:
    """The label under which ``results`` evaluated this checkpoint: by the fingerprint the
    evaluation recorded for each model (robust to moved directories), else by path."""
    models = results["models"]
    fps = {k.removeprefix("model:"): v.get("sha256") for k, v in ((manifest or {}).get("inputs") or {}).items()
           if k.startswith("model:")}
    mine = [lb for lb in models if fps.get(lb) == meta.get("fingerprint")]
    if not mine:
        here = Path(ckpt).resolve()
        mine = [lb for lb, spec in models.items() if spec and Path(str(spec)).resolve() == here]
    if label is not None:
        if label not in models:
            raise ExportError(f"{where}: no model labelled {label!r}; its models: {', '.join(models)}")
        if label == results.get("base"):
            raise ExportError(f"{where}: {label!r} is the evaluation's base model, not a fine-tuned one")
        if label in fps and fps[label] != meta.get("fingerprint"):
            raise ExportError(f"{where}: model {label!r} ({models[label]}) is not this checkpoint (fingerprint "
                              f"{str(fps[label])[:12]}, the checkpoint's {meta.get('fingerprint', '')[:12]})")
        return label
    mine = [lb for lb in mine if lb != results.get("base")]
    if len(mine) == 1:
        return mine[0]
    if not mine:
        raise ExportError(f"{where}: none of its models ({', '.join(f'{k}={v}' for k, v in models.items())}) is "
                          f"the checkpoint {ckpt}; evaluate it (capo eval) or pass label=NAME")
    raise ExportError(f"{where}: several models are this checkpoint ({', '.join(mine)}); pass label=NAME")


def evaluation_section(results: dict, label: str, source: Path) -> list[str]:
    lines = [f"Evaluated by `capo eval` ({source.name}) as **{label}** against the base model "
             f"**{results['base']}** on the same prompts and per-item seeds. Win-rates are the share of prompts x "
             "seeds where this model's image scores above the base's (ties count one half); changes are "
             "model minus base.", "", compare_table(results, label)]
    div = (results["results"].get(label) or {}).get("divergence")
    if div:
        lines += ["", "Divergence from the base (capo.eval.divergence): "
                  + ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                              for k, v in div.items() if not isinstance(v, (dict, list)))]
    return lines


# ----------------------------------------------------------------------------- the card
def _yaml_list(items) -> list[str]:
    return [f"- {json.dumps(str(i))}" for i in items]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return f"`{json.dumps(v)}`"
    return f"`{v}`" if isinstance(v, str) and v else str(v)


def _pairs_lines(prov: dict, indent: str = "") -> list[str]:
    out = []
    pr, sm = prov.get("pairs"), prov.get("samples")
    if sm:
        if sm.get("stage") == "import":
            files = ", ".join(Path(f).name for f in sm.get("files") or []) or "?"
            c = sm.get("counts") or {}
            out.append(f"{indent}- images and prompts: labelled comparisons imported with `capo import pickapic` "
                       f"({files}; {c.get('prompts', '?')} prompts)")
        else:
            c = sm.get("counts") or {}
            sha = f", sha256 {str(sm['prompts_sha256'])[:12]}" if sm.get("prompts_sha256") else ""
            lim = f", first {sm['limit']}" if sm.get("limit") else ""
            out.append(f"{indent}- prompts: `{sm.get('prompts')}` ({c.get('prompts', '?')} prompts{lim}{sha})")
            sampler = ", ".join(([f"{sm['steps']} steps"] if sm.get("steps") else [])
                                + ([f"guidance {sm['guidance']}"] if sm.get("guidance") is not None else [])) \
                or "the model's default steps and guidance"
            out.append(f"{indent}- samples: {sm.get('n')} images per prompt from the model it was trained from, "
                       f"seed {sm.get('seed')}, {sampler} ({c.get('images', '?')} images)")
    if pr:
        if pr.get("selector") == "human":
            out.append(f"{indent}- pairs: human preference labels ({pr.get('source') or 'labelled'}), "
                       f"{(pr.get('counts') or {}).get('pairs', '?')} pairs")
        else:
            rw = ", ".join(f"`{r}`" + (f" ({pr['transforms'][r]})" if (pr.get("transforms") or {}).get(r) else "")
                           for r in pr.get("rewards") or []) or "?"
            out.append(f"{indent}- rewards (Bradley-Terry transform): {rw}"
                       + (f"; weights {pr['weights']}" if pr.get("weights") else ""))
            cal = pr.get("calibration") or "?"
            if pr.get("reference"):
                cal += " against a reference model's samples"
            c = pr.get("counts") or {}
            out.append(f"{indent}- selector: `{pr.get('selector')}`; calibration: {cal}; "
                       f"{c.get('pairs', '?')} pairs over {c.get('prompts', '?')} prompts")
    return out


def _training_lines(prov: dict, indent: str = "") -> list[str]:
    lines = []
    obj = prov.get("objective", (prov.get("train") or {}).get("objective"))
    beta = prov.get("beta", (prov.get("train") or {}).get("beta"))
    tr = prov.get("train") or {}
    head = f"{indent}- objective: **{obj}**, beta = {_fmt(beta)}"
    if tr.get("weighting"):
        head += f", weighting {tr['weighting']}" + (f" (b = {tr.get('bias')})" if tr.get("weighting") == "sigmoid" else "")
    lines.append(head)
    if prov.get("lora"):
        lo = prov["lora"]
        lines.append(f"{indent}- LoRA rank {lo['r']}, alpha {lo['alpha']}{' (rsLoRA)' if lo.get('rslora') else ''} "
                     f"on {', '.join(lo['targets'])}")
    lines += _pairs_lines(prov, indent)
    return lines


def render_card(cfg: ExportConfig, meta: dict, prov: dict, kind: str, pipeline_class: str | None, root: str,
                files: list[str], results: tuple | None, notes: list[str]) -> str:
    hub = cfg.base_model or hub_id_of(root)
    obj = meta.get("objective") or ("merge" if meta.get("merged_from") else None)
    title = cfg.name or Path(cfg.out).name
    arch = DIFFUSERS_CLASSES.get(pipeline_class or "", (None, None, None))[2]
    objectives = sorted({s.get("objective") for s in prov.get("merged_from", []) if s.get("objective")}
                        | ({obj} if obj and obj != "merge" else set()))
    tags = ["capo", *objectives, *(["calibrated-preference-optimization"] if "capo" in objectives else []),
            "preference-optimization", "text-to-image"]
    if pipeline_class:
        tags += ["diffusers", arch, "diffusers:" + pipeline_class]
    if kind == "lora":
        tags.append("lora")
    if meta.get("merged_from"):
        tags.append("model-merge")
    fm = ["---"]
    fm.append(f"base_model: {hub}" if hub else
              f"# base_model: not a Hub model here ({root}); set it to the Hub id of that model")
    if hub:
        fm.append(f"base_model_relation: {'adapter' if kind == 'lora' else 'finetune'}")
    fm.append(f"library_name: {'diffusers' if pipeline_class else 'capo'}")
    fm.append("license:  # set this: the base model's licence governs these weights (see its model page)")
    fm.append("pipeline_tag: text-to-image")
    fm.append("tags:")
    fm += _yaml_list(dict.fromkeys(t for t in tags if t))
    fm.append("---")

    what = {"pipeline": "a complete diffusers pipeline (the base model's components and the fine-tuned "
                        f"{DIFFUSERS_CLASSES.get(pipeline_class or '', ('denoiser',))[0]})",
            "lora": "a LoRA of the base model's denoiser in diffusers' format",
            "shapes": "a capo shapes-world pipeline (`ShapesPipeline`, not a diffusers pipeline class)"}[kind]
    body = ["", f"# {title}", ""]
    how = ("a SOUP merge (" + str(meta.get("method")) + ") of " + str(len(meta["merged_from"])) + " fine-tuned models"
           if meta.get("merged_from") else f"preference fine-tuning with **{obj}**" if obj else "fine-tuning")
    body.append(f"{'A LoRA for' if kind == 'lora' else 'Fine-tuned from'} `{hub or root}` with capo by {how}. "
                f"This directory is {what}.")
    body += ["", "## Use", ""]
    steps, guidance, sched = _sampler_of(pipeline_class)
    if kind == "shapes":
        body += ["```python", "from capo.models import load_model", "", "model = load_model(\"DIR\")  # this directory",
                 "images, latents = model.sample([\"a photo of a red circle\"], seeds=[0])", "```", "",
                 "The shapes world is capo's embedded test world: its pipeline has capo's own tokenizer, text "
                 "encoder and sampler, so diffusers' pipeline classes cannot load it."]
    else:
        load = (f"pipe = {pipeline_class}.from_pretrained(\"DIR\")  # this directory" if kind == "pipeline" else
                f"pipe = {pipeline_class}.from_pretrained(\"{hub or root}\")\npipe.load_lora_weights(\"DIR\")  # this directory")
        body += ["```python", "import torch", f"from diffusers import {pipeline_class}"
                 + (f", {sched.split('.')[0]}" if sched else ""), "", load]
        if sched:
            body.append(f"pipe.scheduler = {sched}  # capo's sampler")
        body += ["seeds = [0, 1]", "images = pipe([\"a castle on a hill at dawn\"] * len(seeds), "
                 f"num_inference_steps={steps}, guidance_scale={guidance},",
                 "             generator=[torch.Generator(\"cpu\").manual_seed(s) for s in seeds]).images", "```", "",
                 "capo draws image k's initial noise from `torch.Generator(device).manual_seed(seed_k)` alone, on "
                 "the device it samples on, in float32; a list of such generators gives the pipeline the same noise, "
                 "so on the same device and in float32 these are capo's images for those seeds (CPU and CUDA "
                 "generators draw different numbers, as everywhere in diffusers)."]
        if pipeline_class == "StableDiffusion3Pipeline":
            body += ["", "capo's own SD3 sampler is flow DPM-Solver++ (2nd order) conditioned on the exact "
                     "`sigma * 1000`; diffusers' `DPMSolverMultistepScheduler(use_flow_sigmas=True, "
                     "prediction_type=\"flow_prediction\", flow_shift=<the scheduler's shift>)` rounds its timesteps "
                     "to integers, so it gives nearly, not exactly, capo's images. With the shipped flow Euler "
                     "scheduler (the snippet above) the pipeline samples exactly what capo's `sampler=\"euler\"` does."]
        if kind == "lora":
            body += ["", f"`{LORA_WEIGHTS}` holds `W + B A` at scale 1: peft's `lora_alpha / r` is folded into "
                     "`lora_B`, so readers that find no alpha (diffusers, ComfyUI, A1111) apply it as trained."]
            if KOHYA_WEIGHTS in files:
                body.append(f"`{KOHYA_WEIGHTS}`: the same LoRA with kohya-style keys (`lora_unet_*`, `.alpha` = rank), "
                            "for tools that read those (`pipe.load_lora_weights(\"DIR\", weight_name="
                            f"\"{KOHYA_WEIGHTS}\")` reads it too).")
    body += ["", "## Training", ""]
    if meta.get("merged_from"):
        w = meta.get("weights")
        body.append(f"A merge of task vectors (fine-tuned minus base, `capo merge`, method {meta.get('method')}, "
                    f"weights {w if w else 'uniform'}) of:")
        for i, src in enumerate(prov.get("merged_from", []), 1):
            body.append(f"{i}. `{Path(src['checkpoint']).parent.name}/{Path(src['checkpoint']).name}`"
                        + (" (record missing)" if src.get("missing") else ""))
            body += _training_lines(src, "   ")
    else:
        body += _training_lines(prov)
    tr = prov.get("train")
    if tr:
        body += ["", "<details><summary>Training config (capo train)</summary>", "", "| key | value |", "|---|---|"]
        body += [f"| {k} | {_fmt(v)} |" for k, v in sorted(tr.items()) if k not in ("final_metrics", "model", "pairs")]
        body += ["", "</details>"]
        if tr.get("final_metrics"):
            fmx = tr["final_metrics"]
            body += ["", "Last logged step: " + ", ".join(f"{k} {_fmt(v)}" for k, v in fmx.items())]
    if prov.get("base_checkpoint"):
        b = prov["base_checkpoint"]
        body += ["", "Trained starting from an earlier capo checkpoint (e.g. an online round of `capo iterate`):"]
        body += _training_lines(b, "  ")
    body += ["", "## Evaluation", ""]
    if results:
        res, label, src = results
        body += evaluation_section(res, label, src)
    else:
        body.append("Not evaluated in this export (`capo export ... results=EVAL_DIR/results.json` adds `capo eval`'s "
                    "win-rates with their 95% intervals and the protocol card).")
    body += ["", "## Provenance", "",
             f"- capo checkpoint: `{Path(cfg.checkpoint).name}`, fingerprint `{meta.get('fingerprint', '')[:16]}`, "
             f"format {meta.get('format')}",
             f"- base model: `{root}`" + (f" (fingerprint `{str(meta.get('base_fingerprint'))[:16]}`)"
                                          if meta.get("base") == root else "")]
    if prov.get("git_commit"):
        v = prov.get("train_versions") or {}
        body.append(f"- trained with capo {v.get('capo')} (git {str(prov['git_commit'])[:10]}), torch {v.get('torch')}, "
                    f"diffusers {v.get('diffusers')}")
    body += [f"- {n}" for n in notes]
    body.append(f"- files: {', '.join(f'`{f}`' for f in files)}")
    return "\n".join(fm + body) + "\n"


def _sampler_of(pipeline_class: str | None) -> tuple[int, float, str | None]:
    if pipeline_class == "StableDiffusionXLPipeline":
        return DB.SDXL_DEFAULT_STEPS, DB.SDXL_DEFAULT_GUIDANCE, "DDIMScheduler.from_config(pipe.scheduler.config)"
    if pipeline_class == "StableDiffusion3Pipeline":
        return DB.SD3_DEFAULT_STEPS, DB.SD3_DEFAULT_GUIDANCE, None
    return 0, 0.0, None


# ----------------------------------------------------------------------------- run
def run(cfg: ExportConfig) -> dict:
    import torch

    ckpt = Path(cfg.checkpoint)
    meta = read_checkpoint(ckpt)
    check_out(cfg.out)
    if meta.get("format") not in ("full", "lora"):
        raise ExportError(f"{ckpt}: unknown checkpoint format {meta.get('format')!r}")
    chain = base_chain(meta)
    for spec, sub in chain:
        if sub is None:
            require_base(spec, ckpt)
    root = chain[-1][0]
    pipeline_class = pipeline_class_of(root)
    if pipeline_class is not None and pipeline_class not in DIFFUSERS_CLASSES:
        raise ExportError(f"{ckpt}: its base is a {pipeline_class}; export supports "
                          f"{', '.join(DIFFUSERS_CLASSES)}")
    results = None
    if cfg.results:
        res, rman, rfile = read_results(cfg.results)
        results = (res, results_label(res, rman, ckpt, meta, cfg.label, rfile), rfile)
    try:
        check_checkpoint(ckpt)  # weights intact, base unchanged since training
        for spec, _ in chain[:-1]:
            check_checkpoint(spec)
    except (ModelLoadError, UnknownNameError) as e:
        raise ExportError(str(e)) from None

    notes = []
    if pipeline_class is None:
        kind = "shapes"
        if cfg.format == "lora" or cfg.kohya:
            raise ExportError(f"{ckpt}: a shapes-world checkpoint; its pipeline is capo's own (not a diffusers class), "
                              "so it has no diffusers LoRA format: export it with format=auto (a ShapesPipeline "
                              "directory, the LoRA merged in)")
        notes.append("the shapes world's pipeline is not a diffusers pipeline class: exported as capo's "
                     "ShapesPipeline directory (capo.models.load_model reads it)"
                     + ("; the LoRA is merged into the weights" if meta["format"] == "lora" else ""))
    elif cfg.format == "lora" or (cfg.format == "auto" and meta["format"] == "lora"):
        kind = "lora"
        if meta["format"] != "lora":
            raise ExportError(f"{ckpt}: a full fine-tune has no low-rank form (LoRA extraction is not implemented); "
                              "export it as a pipeline (format=auto)")
        if len(chain) > 1:
            if cfg.format == "lora":
                raise ExportError(f"{ckpt}: its LoRA applies to {meta['base']}, itself a capo checkpoint, not to a "
                                  "model diffusers has; export it with format=pipeline (the LoRA merged in)")
            kind = "pipeline"
            notes.append(f"a LoRA on the capo checkpoint {meta['base']}: exported as a pipeline with the LoRA merged")
    else:
        kind = "pipeline"
        if meta["format"] == "lora":
            notes.append("exported from a LoRA checkpoint with the LoRA merged into the weights")
    if cfg.kohya and (kind != "lora" or pipeline_class != "StableDiffusionXLPipeline"):
        raise ExportError("kohya=true: kohya-style keys are written for SDXL LoRAs only (diffusers has no converter "
                          "for SD3's transformer, and a full model has no LoRA keys)")
    dtype = getattr(torch, DTYPES[cfg.dtype])

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if kind == "lora":
            import diffusers

            state, _ = diffusers_lora_state(ckpt / "adapter")
            state = {k: v.to(dtype) for k, v in state.items()}
            _, keyword, _ = DIFFUSERS_CLASSES[pipeline_class]
            getattr(diffusers, pipeline_class).save_lora_weights(str(tmp), **{keyword: state},
                                                                 weight_name=LORA_WEIGHTS, safe_serialization=True)
            if cfg.kohya:
                from diffusers.utils import convert_state_dict_to_kohya
                from safetensors.torch import save_file

                prefixed = {f"unet.{k}": v for k, v in state.items()}
                kohya = convert_state_dict_to_kohya(prefixed)
                save_file({k: v.contiguous() for k, v in kohya.items()}, str(tmp / KOHYA_WEIGHTS))
        else:
            model = load_checkpoint(ckpt)
            if kind == "shapes":
                model.denoiser.to(dtype)
                model.save_pretrained(tmp)
            else:
                pipe = model.pipe
                name = DIFFUSERS_CLASSES[pipeline_class][0]
                if getattr(pipe, name) is not model.denoiser:
                    pipe.register_modules(**{name: model.denoiser})
                pipe.to(dtype=dtype)
                pipe.save_pretrained(str(tmp), safe_serialization=True)
        prov = provenance(ckpt, meta)
        files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        card = render_card(cfg, meta, prov, kind, pipeline_class, root, files + ["README.md", EXPORT_RECORD],
                           results, notes)
        (tmp / "README.md").write_text(card)
        record = {"checkpoint": str(ckpt), "fingerprint": meta.get("fingerprint"), "base": root,
                  "base_model": cfg.base_model or hub_id_of(root), "pipeline_class": pipeline_class, "kind": kind,
                  "dtype": cfg.dtype, "results": str(results[2]) if results else None,
                  "results_label": results[1] if results else None, "notes": notes,
                  "files": {f: artifacts.file_record(tmp / f) for f in files + ["README.md"]},
                  "versions": artifacts.versions()}
        artifacts.write_json(tmp / EXPORT_RECORD, record)
        artifacts.follow_umask(tmp)
        check_out(out)  # still new or empty (another export may have finished meanwhile)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**record, "out": str(out), "files": sorted(record["files"]) + [EXPORT_RECORD]}
