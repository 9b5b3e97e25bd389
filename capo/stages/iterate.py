"""Stage `iterate`: online (iterative) preference training, calibrated against the base model.

The paper trains once on the base model's own samples (offline). ``capo iterate`` goes on:
for rounds ``r = 1..R``::

    round 1:  train on ``pairs`` (a ``capo pairs`` output on the base model's samples),
              exactly as ``capo train`` does (R = 1 IS offline training)
    round r:  sample the same prompts from round r-1's checkpoint (as many images per prompt
              as round 1 used), score them with round 1's rewards, calibrate each sample
              against round 1's base-model samples of its prompt (``calibration=reference``:
              ``R_ca(x) = 1/N sum_j sigmoid(R(x) - R(x_j^base))``, its expected win-rate over
              the base model, a target that does not drift as the policy improves; or
              ``calibration=self``: Eq. 7 within the round's own samples), select pairs with
              round 1's selector, and continue training from round r-1's checkpoint

with the KL reference fixed to the base model (``reference=base``, default) or moved to the
previous round's checkpoint (``reference=previous``). ``steps`` is the total over all rounds
(round r gets ``steps // R``, the first ``steps % R`` rounds one more), so R = 1, 2, 3 at the
same ``steps`` and the same images per prompt in all (round 1's pairs made with
``n = N / R``) compare at an equal budget of generated images and optimizer steps. The
optimizer state starts afresh each round (AdamW moments are not carried over).

Seeds: round r trains with ``seed + 1000 (r - 1)`` and samples with the round-1 samples'
seed ``+ 1000 (r - 1)``, so no round reuses another's noise. Layout::

    out/manifest.json
    out/round-1/train/                      round 1 (its samples and pairs are the inputs)
    out/round-<r>/{samples,pairs,train}/    r >= 2; samples/rewards/<reward>/ the scores

Every round's stages are ordinary capo stages with their own manifests, each skipped when
complete and resumed when not, so a killed iteration resumes at the round and stage where
it stopped. Round r's samples record the fingerprint of round r-1's checkpoint, and round
r's training refuses samples that are not its own model's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from capo import artifacts, tracking
from capo import models
from capo.config import stage_config, to_dict
from capo.stages import generate, pairs, score, train

SEED_STRIDE = 1000  # seed offset between rounds (training seed and sampling seed)
SINGLE_PROCESS = True  # drives other stages; refused under several processes (cli)


@stage_config
class IterateConfig:
    model: str  # base model: registered name, pipeline dir or capo checkpoint
    pairs: str  # round 1's pairs: a `capo pairs` output on the base model's own samples
    out: str  # output directory: round-<r>/ stages
    rounds: int = 2  # R (1: offline training, the same as `capo train`)
    calibration: str = "reference"  # rounds > 1: against round 1's base samples, or Eq. 7 within the round
    reference: str = "base"  # KL reference of rounds > 1: the base model, or the previous round's checkpoint
    objective: str = "capo"  # preference objective (capo ls objectives)
    beta: float = 500.0  # KL strength (as `capo train`)
    weighting: str = "constant"  # w_t: 1, or sigmoid(-lambda_t + b)
    bias: float = 1.5  # b of the sigmoid weighting
    noise: str = "shared"  # eps_w and eps_l of a pair: one draw, or two
    lora_rank: int = 0  # 0: full fine-tuning; >0: LoRA of this rank
    lr: float = 1e-5  # AdamW learning rate (optimizer state restarts each round)
    steps: int = 100  # optimizer steps in all, split evenly over the rounds
    batch_size: int = 8  # pairs per step
    seed: int = 0  # training seed of round 1 (round r: seed + 1000 (r - 1))
    batch: int = 64  # images per sampler / reward call
    overwrite: bool = False
    quiet: bool = False
    report_to: str = "none"  # experiment tracker of every round's training (capo train; capo.tracking)
    run_name: str | None = None  # tracker runs <run_name>.round-<r> (default: the out directory's name)

    RULES: ClassVar[dict[str, str]] = {
        "rounds": ">= 1", "calibration": "reference | self", "reference": "base | previous",
        "objective": "@objectives", "beta": "> 0", "weighting": "constant | sigmoid", "noise": "shared | independent",
        "lora_rank": ">= 0", "lr": "> 0", "steps": ">= 1", "batch_size": ">= 1", "seed": ">= 0", "batch": ">= 1",
        "report_to": tracking.RULE}

    def contradictions(self):
        if self.steps < self.rounds:
            yield f"steps: {self.steps} cannot be split over rounds = {self.rounds} (each round needs a step)"
        if err := tracking.missing(self.report_to):
            yield err


def round_steps(steps: int, rounds: int) -> list[int]:
    """Optimizer steps of each round: ``steps`` split evenly, the first rounds taking the rest."""
    q, rest = divmod(steps, rounds)
    return [q + (1 if r < rest else 0) for r in range(rounds)]


def round_dir(out, r: int) -> Path:
    return Path(out) / f"round-{r}"


def round_checkpoint(out, r: int) -> Path:
    """The checkpoint round ``r`` ends with."""
    return round_dir(out, r) / "train" / "final"


def first_round(pairs_dir: Path) -> dict:
    """What round 1's pairs were made from: samples directory, reward tables, rewards, the
    selector and its options, the number of samples per prompt used."""
    pm = artifacts.read_json(pairs_dir / artifacts.MANIFEST) if (pairs_dir / artifacts.MANIFEST).is_file() else None
    if not pm or pm.get("stage") != "pairs" or not pm.get("complete"):
        raise artifacts.ArtifactError(f"{pairs_dir}: not a complete `capo pairs` output")
    if not pm.get("samples"):
        raise ValueError(f"{pairs_dir}: its reward tables are not `capo score` tables of a samples directory; "
                         "online rounds need to know the samples, prompts and rewards round 1 used")
    if pm["config"].get("reference"):
        raise ValueError(f"{pairs_dir}: already calibrated against a reference; round 1's pairs must be Eq. 7 pairs "
                         "of the base model's own samples")
    samples = Path(pm["samples"]["path"])
    sm = artifacts.read_json(samples / artifacts.MANIFEST)
    tables = [v["path"] for k, v in sorted(pm["inputs"].items(), key=lambda kv: (len(kv[0]), kv[0]))
              if k.startswith("rewards_table_")]  # in the order given (rewards_table_2 before _10)
    n = pm["config"].get("n") or sm["config"]["n"]
    c = pm["config"]
    return {"samples": samples, "samples_manifest": sm, "tables": tables, "rewards": list(pm["rewards"]),
            "transforms": dict(pm["transforms"]), "selector": c["selector"], "weights": c.get("weights"),
            "seed": c.get("seed", 0), "draws": c.get("draws", 1), "max_tries": c.get("max_tries", 16), "n": int(n),
            "run_key": pm["run_key"]}


def run(cfg: IterateConfig) -> dict:
    t0 = time.time()
    first = first_round(Path(cfg.pairs))
    sm = first["samples_manifest"]
    if sm["inputs"]["model"]["sha256"] != models.model_fingerprint(cfg.model):
        raise artifacts.ArtifactError(
            f"{cfg.pairs}: built from samples of {sm['inputs']['model']['path']!r}, not of {cfg.model!r}: round 1 "
            "trains on the base model's own samples")
    out = Path(cfg.out)
    config = tracking.unkeyed(to_dict(cfg)) | {"out": None, "overwrite": None, "quiet": None, "batch": None}
    manifest = artifacts.make_manifest("iterate", config, {
        "model": {"path": cfg.model, "sha256": sm["inputs"]["model"]["sha256"]},
        "pairs": {"path": cfg.pairs, "sha256": first["run_key"]}})
    if artifacts.prepare_out_dir(out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}
    log = (lambda m: None) if cfg.quiet else (lambda m: print(f"iterate [{time.time() - t0:5.0f}s] {m}", flush=True))

    steps = round_steps(cfg.steps, cfg.rounds)
    common = dict(objective=cfg.objective, beta=cfg.beta, weighting=cfg.weighting, bias=cfg.bias, noise=cfg.noise,
                  lora_rank=cfg.lora_rank, lr=cfg.lr, batch_size=cfg.batch_size, keep_checkpoints=0, quiet=True)
    prompts = str(first["samples"] / "prompts.jsonl")
    rounds = []
    pairs_dir, model = Path(cfg.pairs), cfg.model
    name = cfg.run_name or tracking.default_run_name(out)
    for r in range(1, cfg.rounds + 1):
        d = round_dir(out, r)
        if r > 1:
            log(f"round {r}: sample {first['n']} images per prompt from round {r - 1}'s checkpoint")
            generate.run(generate.GenerateConfig(model=model, prompts=prompts, out=str(d / "samples"), n=first["n"],
                                                 seed=sm["config"]["seed"] + SEED_STRIDE * (r - 1),
                                                 steps=sm["config"].get("steps"), guidance=sm["config"].get("guidance"),
                                                 batch_size=cfg.batch, quiet=True))
            score.run(score.ScoreConfig(samples=str(d / "samples"), rewards=first["rewards"], batch_size=cfg.batch,
                                        quiet=True))
            tables = [str(d / "samples" / "rewards" / rw / "scores.parquet") for rw in first["rewards"]]
            pairs_dir = d / "pairs"
            pairs.run(pairs.PairsConfig(
                rewards_tables=tables, out=str(pairs_dir), selector=first["selector"], rewards=first["rewards"],
                weights=first["weights"], transforms=first["transforms"], seed=first["seed"] + SEED_STRIDE * (r - 1),
                draws=first["draws"], max_tries=first["max_tries"], n=first["n"],
                reference=first["tables"] if cfg.calibration == "reference" else None))
        log(f"round {r}: train {steps[r - 1]} steps ({cfg.objective}, beta={cfg.beta:g})")
        ref = None if r == 1 or cfg.reference == "previous" else cfg.model
        train.run(train.TrainConfig(model=model, pairs=str(pairs_dir), out=str(d / "train"), reference=ref,
                                    steps=steps[r - 1], seed=cfg.seed + SEED_STRIDE * (r - 1),
                                    checkpoint_every=steps[r - 1], log_every=max(1, steps[r - 1] // 5),
                                    report_to=cfg.report_to, run_name=f"{name}.round-{r}", **common))
        model = str(round_checkpoint(out, r))
        rounds.append({"round": r, "steps": steps[r - 1], "checkpoint": model,
                       "fingerprint": models.model_fingerprint(model), "pairs": str(pairs_dir),
                       "samples": str(first["samples"] if r == 1 else d / "samples")})
    done = artifacts.finish(out, manifest, rounds=rounds, final=model, seconds=round(time.time() - t0, 3))
    log(f"done: {model}")
    return {**done, "skipped": False}


def summary(cfg: IterateConfig, res: dict) -> str:
    """``capo iterate``'s closing line."""
    return f"iterate: {len(res['rounds'])} round(s) in {res['seconds']:.1f}s -> final checkpoint {res['final']}"
