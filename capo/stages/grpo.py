"""``capo train objective=grpo``: online GRPO, the policy-gradient baseline (issue #22).

The math is ``capo.method.grpo`` (equations and sources there). One rollout, then
``grpo_updates`` optimizer steps on it::

    rollout r:  batch_size prompts per process (epoch permutations of the prompt set, seeded by
                (seed, epoch)), group_size images each, sampled from the CURRENT policy along a
                stochastic chain of sample_steps Gaussian steps (DDIM with eta = noise_level on
                a DDPM model; Flow-GRPO's SDE with a = noise_level on a flow model), with
                classifier-free guidance; every step's x_t, x_next and log pi_old kept
                rewards:    each image scored by every reward; one score per image (advantage=sum |
                calibrated | pareto); group-relative advantages, clipped
    update:     the rollout's images shuffled and split into grpo_updates minibatches (each in
                grad_accum micro-batches); per optimizer step a set J of trained steps
                (grpo_sde=all: grpo_steps of the stochastic steps at random, or all of them;
                grpo_sde=window: the rollout's stochastic window, the other steps of its chain
                were deterministic); for each micro-batch and j in J: the policy's guided
                prediction at (x_j, t_j) gives the step's mean, log pi_theta(x_{j+1}), the clipped
                surrogate and (beta > 0) the closed-form KL to the frozen reference's step; the
                loss is averaged over images and trained steps; one AdamW step.

The denoiser stays in eval mode (no dropout), so the log-probabilities of the update equal
the rollout's before the first step (ratio 1: tested). Rollouts depend only on
``(seed, rollout index, prompt id, image index)``; checkpoints are written at rollout
boundaries, so a resumed run continues exactly. Inputs: a ``capo pairs`` output (its samples'
prompts, its rewards, their BT transforms and its weights: the prompts and rewards a DPO /
CaPO cell on the same pairs trains on) or ``prompts=`` with ``rewards=``. Outputs as ``capo
train``: ``metrics.jsonl`` (per logged step: losses, ratio, clip fraction, KL, each reward's
rollout mean, each ``monitor_rewards`` reward's rollout mean as ``monitor_<name>``, the budget
so far), ``checkpoints/``, ``final/`` and a manifest whose
``budget`` counts generated images and denoiser passes (one image through the denoiser once;
a guided call counts two).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from capo import artifacts
from capo import models
from capo.config import to_dict
from capo.dist import accelerator as make_accelerator, prepare_out_dir
from capo.method.grpo import (
    ddim_std,
    ddim_step,
    flow_sde_std,
    flow_sde_step,
    gaussian_log_prob,
    group_advantages,
    group_scores,
    grpo_loss,
    step_kl,
)
from capo.method.schedules import eps_from_prediction
from capo.progress import progress
from capo.prompts import load_prompts, records_fingerprint
from capo.rewards import load_reward
from capo.stages.training import (frozen_reference, latest_checkpoint, logged_step, make_optimizer, make_policy,
                                  reference_denoiser, rotate_checkpoints, save_final, TrainingDiverged,
                                  use_checkpointing)

NOISE_DEFAULTS = {"ddim": 1.0, "flow": 0.7}  # DDPO's eta; Flow-GRPO's a
TRACKING_KEYS = ("report_to", "run_name", "tracker_project")  # never part of a run key (capo.tracking)


def contradictions(cfg):
    """What cannot hold in a ``TrainConfig`` with ``objective=grpo`` (called by its validation)."""
    if (cfg.pairs is None) == (cfg.prompts is None):
        yield "pairs, prompts: objective=grpo rolls out the prompts of a `capo pairs` output (pairs=DIR) or of prompts=SET"
    if cfg.prompts is not None and not cfg.rewards:
        yield "rewards: objective=grpo with prompts= needs the reward models (rewards=a,b)"
    if cfg.pairs is not None and cfg.rewards:
        yield "rewards: objective=grpo with pairs= takes the pairs' rewards; use prompts= to name others"
    if cfg.rewards and len(set(cfg.rewards)) != len(cfg.rewards):
        yield f"rewards: {cfg.rewards} names a reward twice"
    if cfg.reward_weights is not None and cfg.rewards and len(cfg.reward_weights) != len(cfg.rewards):
        yield f"reward_weights: {len(cfg.reward_weights)} weights for {len(cfg.rewards)} rewards"
    if cfg.rewards and (extra := sorted(set(cfg.reward_paths) - set(cfg.rewards))):
        yield f"reward_paths: {', '.join(extra)} not among rewards {cfg.rewards}"
    if cfg.sample_steps is not None and cfg.grpo_steps > cfg.sample_steps:
        yield f"grpo_steps: {cfg.grpo_steps} is more than sample_steps = {cfg.sample_steps}"
    if (cfg.batch_size * cfg.group_size) % (cfg.grpo_updates * cfg.grad_accum):
        yield (f"batch_size x group_size = {cfg.batch_size * cfg.group_size} images per rollout cannot be split into "
               f"grpo_updates x grad_accum = {cfg.grpo_updates * cfg.grad_accum} equal micro-batches")
    if cfg.rewards and (both := sorted(set(cfg.rewards) & set(cfg.monitor_rewards))):
        yield f"monitor_rewards: {', '.join(both)} also trained on (a monitor is never trained on)"
    if len(set(cfg.monitor_rewards)) != len(cfg.monitor_rewards):
        yield f"monitor_rewards: {cfg.monitor_rewards} names a reward twice"
    if cfg.ema > 0:
        yield "ema: not supported for objective=grpo"
    if getattr(cfg, "report_to", "none") != "none":
        yield "report_to: objective=grpo logs to metrics.jsonl only"


# ----------------------------------------------------------------------------- inputs
def _prompt_source(cfg) -> dict:
    """Prompt records, rewards, their BT transforms and weights, and the manifest inputs."""
    if cfg.prompts is not None:
        records = load_prompts(cfg.prompts)
        return {"records": records, "rewards": list(cfg.rewards), "transforms": None, "weights": cfg.reward_weights,
                "inputs": {"prompts": {"path": cfg.prompts, "sha256": records_fingerprint(records)}}}
    pairs = Path(cfg.pairs)
    pm = artifacts.read_json(pairs / artifacts.MANIFEST) if (pairs / artifacts.MANIFEST).is_file() else None
    if not pm or pm.get("stage") != "pairs" or not pm.get("complete"):
        raise artifacts.ArtifactError(f"{pairs}: not a complete `capo pairs` output")
    samples = Path(cfg.samples or (pm.get("samples") or {}).get("path") or "")
    if not (samples / "prompts.jsonl").is_file():
        raise artifacts.ArtifactError(f"{pairs}: its samples directory {str(samples)!r} has no prompts.jsonl; pass "
                                      "samples=DIR, or prompts= and rewards= instead of pairs=")
    records = [json.loads(x) for x in (samples / "prompts.jsonl").read_text().splitlines() if x.strip()]
    return {"records": records, "rewards": list(pm["rewards"]), "transforms": dict(pm["transforms"]),
            "weights": cfg.reward_weights if cfg.reward_weights is not None else pm["config"].get("weights"),
            "inputs": {"pairs": {"path": str(pairs), "sha256": pm["run_key"]},
                       "prompts": {"path": str(samples / "prompts.jsonl"), "sha256": records_fingerprint(records)}}}


def image_seed(seed: int, rollout: int, prompt_id: str, k: int) -> int:
    """The seed of image ``k`` of ``prompt_id`` in rollout ``rollout``: 63 bits of a sha256."""
    h = hashlib.sha256(f"{seed}/grpo/{rollout}/{prompt_id}/{k}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def rollout_prompts(n: int, seed: int, rollout: int, per_process: int, world: int, rank: int) -> list[int]:
    """Indices of this process's prompts in rollout ``rollout``: consecutive slices of epoch
    permutations of the ``n`` prompts (each depends on ``(seed, epoch)`` alone)."""
    start, ids = (rollout * world + rank) * per_process, []
    while len(ids) < per_process:
        epoch, off = divmod(start + len(ids), n)
        perm = np.random.default_rng([seed, 7, epoch]).permutation(n)
        ids += perm[off: off + per_process - len(ids)].tolist()
    return ids


# ----------------------------------------------------------------------------- the chain
class Chain:
    """A model's sampling chain as ``N`` Gaussian steps: DDIM on the model's DDIM timesteps
    (DDPM models), or Flow-GRPO's SDE on the sigmas of ``FlowMatchEulerDiscreteScheduler``
    with the model's shift (flow models). Step ``i`` maps ``x_i`` to ``x_{i+1}``; the
    denoiser is called at ``t_model[i]``."""

    def __init__(self, model, steps: int, noise_level: float | None):
        import torch

        self.model, self.N = model, int(steps)
        self.flow = model.prediction_type == "flow"
        self.noise = float(noise_level if noise_level is not None else NOISE_DEFAULTS["flow" if self.flow else "ddim"])
        if self.flow:
            sched = model.train_scheduler()
            sched.set_timesteps(self.N, device="cpu")
            self.sigmas = sched.sigmas.double().cpu()
            self.cap = float(self.sigmas[1])  # Flow-GRPO: sigma = 1 is replaced by sigmas[1] in 1 - sigma
            self.t_model = (self.sigmas[:-1] * 1000.0).float()
            self.std = flow_sde_std(self.sigmas[:-1], self.sigmas[1:], self.noise, self.cap)[1]
        else:
            from diffusers import DDIMScheduler

            if self.noise > 1:
                raise ValueError(f"noise_level: DDIM's eta must be at most 1 (the DDPM posterior), got {self.noise}")
            sched = model.sampler(self.N)
            if not isinstance(sched, DDIMScheduler):
                sched = DDIMScheduler.from_config(model.train_scheduler().config)
                sched.set_timesteps(self.N)
            ts = sched.timesteps.cpu().long()
            abar = sched.alphas_cumprod.double().cpu()
            prev = ts - sched.config.num_train_timesteps // sched.num_inference_steps  # as DDIMScheduler.step
            self.abar_t = abar[ts]
            self.abar_prev = torch.where(prev >= 0, abar[prev.clamp(min=0)], torch.as_tensor(
                float(sched.final_alpha_cumprod), dtype=torch.float64))
            self.t_model = ts
            self.std = ddim_std(self.abar_t, self.abar_prev, self.noise)
        self.stochastic = (self.std > 0).nonzero().flatten().tolist()  # steps with a density

    def step(self, i: int, x, pred, stochastic: bool = True):
        """``(mean, std)`` of step ``i`` from the raw model output ``pred`` at ``x``; deterministic
        (eta = 0 / the ODE's Euler step, std 0) when not ``stochastic``."""
        level = self.noise if stochastic else 0.0
        if self.flow:
            return flow_sde_step(x, pred, float(self.sigmas[i]), float(self.sigmas[i + 1]), level, self.cap)
        a_t = float(self.abar_t[i])
        import torch

        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        eps = eps_from_prediction(pred, x, one * a_t ** 0.5, one * (1 - a_t) ** 0.5, self.model.prediction_type)
        return ddim_step(x, eps, a_t, float(self.abar_prev[i]), level)


def guided(model, net, x, t, cond, uncond, guidance: float):
    """The guided prediction of denoiser ``net`` (``model.predict`` runs ``model.denoiser``)."""
    model.denoiser = net
    return model.guided_predict(x, t, cond, uncond, guidance).float()


def sample_chain(model, net, chain: Chain, cond, uncond, guidance: float, seeds, stochastic: list[bool], autocast):
    """One rollout micro-batch: latents ``(B, N + 1, C, H, W)`` along the chain and the
    log-probabilities ``(B, N)`` of the stochastic steps (NaN at deterministic ones). Image k's
    initial noise is ``model.initial_noise([seeds[k]])`` and its step noises come from a CPU
    generator seeded by ``seeds[k] + 1``: nothing depends on the batch."""
    import torch

    x = model.initial_noise(seeds).float()
    gens = [torch.Generator().manual_seed((int(s) + 1) % 2 ** 63) for s in seeds]
    xs, lps = [x], []
    with torch.no_grad():
        for i in range(chain.N):
            with autocast():
                pred = guided(model, net, x, chain.t_model[i].to(x.device), cond, uncond, guidance)
            mean, std = chain.step(i, x, pred, stochastic[i])
            if stochastic[i]:
                z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device)
                x = mean + std * z
                lps.append(gaussian_log_prob(x, mean, std))
            else:
                x = mean
                lps.append(torch.full((x.shape[0],), float("nan"), device=x.device))
            xs.append(x)
    return torch.stack(xs, 1), torch.stack(lps, 1)


# ----------------------------------------------------------------------------- run
# One run in named phases: ``setup`` (inputs, manifest, models, policy, optimizer, resume),
# per rollout ``rollout`` then ``update`` per optimizer step (with ``log_and_checkpoint``), and
# ``finish``. ``Run`` holds what the phases share.
@dataclasses.dataclass
class Run:
    cfg: object
    out: Path
    manifest: dict
    accelerator: object
    records: list
    weights: object
    model: object
    rewards: list
    monitors: list
    transforms: list
    chain: Chain
    K: int  # chain steps trained per update
    guidance: float
    policy: object = None
    unwrapped: object = None
    reference: object = None
    opt: object = None
    sched: object = None
    step: int = 0
    last_ckpt: int = 0
    budget: dict = dataclasses.field(default_factory=lambda: {
        "rollout_images": 0, "rollout_passes": 0, "update_passes": 0, "reference_passes": 0})
    uncond: dict = dataclasses.field(default_factory=dict)
    window: list = dataclasses.field(default_factory=list)
    t_window: float = 0.0

    @property
    def cfg_mult(self) -> int:  # denoiser passes per guided call
        return 1 if self.guidance == 1.0 else 2

    @property
    def metrics_f(self) -> Path:
        return self.out / "metrics.jsonl"

    def unconditional(self, n: int):
        import torch

        if self.guidance == 1.0:
            return None
        if n not in self.uncond:
            with torch.no_grad():
                self.uncond[n] = tuple(v.detach() for v in self.model.unconditional(n))
        return self.uncond[n]

    def ref_prediction(self, x, t, cond, unc):
        import torch

        with torch.no_grad(), self.accelerator.autocast():
            if self.reference is None:
                with self.unwrapped.disable_adapter():
                    return guided(self.model, self.unwrapped, x, t, cond, unc, self.guidance)
            return guided(self.model, self.reference, x, t, cond, unc, self.guidance)


def run(cfg) -> dict:
    t_start = time.time()
    s = setup(cfg)
    if isinstance(s, dict):  # complete already
        return s
    U = cfg.grpo_updates
    bar = progress(total=cfg.steps, initial=s.step, desc="grpo", unit="step",
                   disable=cfg.quiet or not s.accelerator.is_local_main_process)
    s.t_window, s.last_ckpt = time.time(), s.step
    while s.step < cfg.steps:
        r = s.step // U  # the rollout this step trains on
        roll = rollout(s, r)
        for u in range(s.step - r * U, U):
            update(s, roll, u)
            bar.update(1)
            if s.accelerator.is_main_process and s.window:
                bar.set_postfix(loss=s.window[-1]["loss"], reward=s.window[-1][f"reward_{s.rewards[0].name}"])
            log_and_checkpoint(s, roll)
            if cfg.stop_after is not None and s.step >= cfg.stop_after and s.step < cfg.steps:
                bar.close()
                return {"stopped_at": s.step, "skipped": False, "complete": False}
            if s.step >= cfg.steps:
                break
    bar.close()
    return finish(s, t_start)


def setup(cfg) -> Run | dict:
    """Inputs and manifest (a complete run returns its manifest), models and rewards, the
    policy (full or LoRA), the frozen reference, the optimizer, and the state of a resumed run."""
    import torch
    from accelerate.utils import set_seed

    src = _prompt_source(cfg)
    accelerator = make_accelerator(mixed_precision=cfg.mixed_precision)
    out = Path(cfg.out)
    config = {k: v for k, v in to_dict(cfg).items() if k not in TRACKING_KEYS}
    config |= {"out": None, "overwrite": None, "quiet": None, "stop_after": None}
    inputs = {"model": {"path": cfg.model, "sha256": models.model_fingerprint(cfg.model)}, **src["inputs"]}
    if cfg.reference:
        inputs["reference"] = {"path": cfg.reference, "sha256": models.model_fingerprint(cfg.reference)}
    manifest = artifacts.make_manifest("train", config, inputs, processes=accelerator.num_processes)
    if artifacts.existing_run(out, manifest, cfg.overwrite) == "complete":
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}
    model = models.load_model(cfg.model)
    rewards = [load_reward(r, device=accelerator.device, **({"path": cfg.reward_paths[r]} if r in cfg.reward_paths else {}))
               for r in src["rewards"]]
    if both := sorted(set(src["rewards"]) & set(cfg.monitor_rewards)):
        raise ValueError(f"monitor_rewards: {', '.join(both)} also trained on (the pairs' rewards); a monitor is never trained on")
    ref_net = reference_denoiser(cfg.reference, model.denoiser) if cfg.reference else None
    chain = Chain(model, cfg.sample_steps or model.default_steps, cfg.noise_level)
    if not chain.stochastic:
        raise ValueError("the sampling chain has no stochastic step (noise_level and the schedule give std 0 everywhere)")
    s = Run(cfg=cfg, out=out, manifest=manifest, accelerator=accelerator, records=src["records"],
            weights=src["weights"], model=model, rewards=rewards,
            monitors=[load_reward(r, device=accelerator.device) for r in cfg.monitor_rewards],
            transforms=[(src["transforms"] or {}).get(r.name, r.bt_transform) for r in rewards], chain=chain,
            K=min(cfg.grpo_steps or len(chain.stochastic), len(chain.stochastic)),
            guidance=float(model.default_guidance if cfg.guidance is None else cfg.guidance))
    if prepare_out_dir(accelerator, out, manifest, cfg.overwrite):
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}

    set_seed(cfg.seed)
    for mod in model.modules().values():
        mod.requires_grad_(False)
    model.to(accelerator.device)
    model.denoiser.requires_grad_(True)
    cuda = accelerator.device.type == "cuda"
    if cuda and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if use_checkpointing(cfg.gradient_checkpointing, getattr(model, "kind", "")):
        model.denoiser.enable_gradient_checkpointing()
    base = model.denoiser
    policy = make_policy(base, cfg)
    s.reference = frozen_reference(base, ref_net, cfg.lora_rank > 0, cfg.mixed_precision, accelerator.device) \
        if cfg.beta > 0 else None
    if cfg.compile != "off":
        policy = torch.compile(policy, backend=cfg.compile)
    policy.eval()  # no dropout: the update's log-probabilities are the rollout's
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, cfg.warmup_steps)))
    s.policy, s.opt, s.sched = accelerator.prepare(policy, opt, sched)
    s.unwrapped = accelerator.unwrap_model(s.policy)

    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        s.step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        s.budget = json.loads((ckpt / "budget.json").read_text())  # the budget spent up to the checkpoint
        if not cfg.quiet and accelerator.is_main_process:
            print(f"train: resuming from {ckpt} (step {s.step})")
    if accelerator.is_main_process and s.metrics_f.is_file():
        artifacts.write_text(s.metrics_f, "".join(x + "\n" for x in s.metrics_f.read_text().splitlines()
                                                  if logged_step(x) is not None and logged_step(x) <= s.step))
    return s


def rollout(s: Run, r: int) -> dict:
    """Rollout ``r``: B prompts x G images from the current policy along the chain (latents and
    log-probabilities), their rewards (and monitors), scores and group-relative advantages."""
    import torch

    cfg, acc, chain = s.cfg, s.accelerator, s.chain
    world, B, G, U = acc.num_processes, cfg.batch_size, cfg.group_size, cfg.grpo_updates
    n_img = B * G
    micro = n_img // (U * cfg.grad_accum)
    texts, pids = [x["prompt"] for x in s.records], [x["prompt_id"] for x in s.records]
    t0 = time.time()
    idx = rollout_prompts(len(s.records), cfg.seed, r, B, world, acc.process_index)
    rng = np.random.default_rng([cfg.seed, 17, r])
    stoch = [False] * chain.N
    if cfg.grpo_sde == "window":
        start = int(rng.integers(0, len(chain.stochastic) - s.K + 1))
        window_steps = chain.stochastic[start:start + s.K]
    else:
        window_steps = chain.stochastic
    for i in window_steps:
        stoch[i] = True
    with torch.no_grad():
        hidden, pooled = (v.detach() for v in s.model.encode_prompts([texts[i] for i in idx]))
    owner = torch.arange(B, device=hidden.device).repeat_interleave(G)  # image -> its prompt in the rollout
    seeds = [image_seed(cfg.seed, r, pids[i], k) for i in idx for k in range(G)]
    s.policy.eval()
    lat, old_lp = [], []
    for a in range(0, n_img, micro):
        o = owner[a:a + micro]
        z, lp = sample_chain(s.model, s.unwrapped, chain, (hidden[o], pooled[o]), s.unconditional(len(o)), s.guidance,
                             seeds[a:a + micro], stoch, acc.autocast)
        lat.append(z)
        old_lp.append(lp)
    lat, old_lp = torch.cat(lat), torch.cat(old_lp)
    raw, mon = np.zeros((n_img, len(s.rewards))), np.zeros((n_img, len(s.monitors)))
    for a in range(0, n_img, micro):
        images = s.model.decode_latents(lat[a:a + micro, -1])
        prompts = [texts[idx[int(o)]] for o in owner[a:a + micro]]
        for j, rw in enumerate(s.rewards):
            raw[a:a + micro, j] = np.asarray(rw(images, prompts), dtype=np.float64)
        for j, rw in enumerate(s.monitors):  # logged only: never in the scores or advantages
            mon[a:a + micro, j] = np.asarray(rw(images, prompts), dtype=np.float64)
    names = [rw.name for rw in s.rewards]
    if not np.isfinite(raw).all():
        raise ValueError(f"a reward returned NaN/inf in rollout {r}: rewards {names}")
    scores = group_scores(raw.reshape(B, G, -1), cfg.advantage, s.transforms, s.weights)
    adv_np = group_advantages(scores, cfg.advantage_norm, cfg.advantage_eps, cfg.advantage_clip)
    s.budget["rollout_images"] += n_img * world
    s.budget["rollout_passes"] += n_img * world * chain.N * s.cfg_mult
    stats = {**{f"reward_{n}": float(raw[:, j].mean()) for j, n in enumerate(names)},
             **{f"monitor_{rw.name}": float(np.nanmean(mon[:, j])) for j, rw in enumerate(s.monitors)},
             "score": float(scores.mean()), "adv_abs": float(np.abs(adv_np).mean()),
             "zero_std_groups": float((scores.std(1) <= 1e-12).mean()), "rollout_s": round(time.time() - t0, 3)}
    return {"r": r, "lat": lat, "old_lp": old_lp, "owner": owner, "hidden": hidden, "pooled": pooled,
            "window_steps": window_steps, "n_img": n_img, "micro": micro,
            "adv": torch.as_tensor(adv_np.reshape(-1), dtype=torch.float32, device=lat.device),
            "order": np.random.default_rng([cfg.seed, 23, r]).permutation(n_img), "stats": stats}


def update(s: Run, roll: dict, u: int) -> None:
    """Optimizer step ``u`` on the rollout: its minibatch of images, the trained chain steps J,
    per micro-batch and step the clipped surrogate and the KL to the reference, one AdamW step."""
    import torch

    cfg, acc, chain = s.cfg, s.accelerator, s.chain
    U, n_img, micro, lat, adv = cfg.grpo_updates, roll["n_img"], roll["micro"], roll["lat"], roll["adv"]
    mb = roll["order"][u * (n_img // U):(u + 1) * (n_img // U)]
    if cfg.grpo_sde == "window" or s.K == len(chain.stochastic):
        J = list(roll["window_steps"])
    else:
        J = sorted(np.random.default_rng([cfg.seed, 19, s.step]).choice(chain.stochastic, s.K, replace=False).tolist())
    mets = []
    n_back, n_total = 0, cfg.grad_accum * len(J)
    for a in range(cfg.grad_accum):
        m = torch.as_tensor(mb[a * micro:(a + 1) * micro], device=lat.device)
        o = roll["owner"][m]
        cond, unc = (roll["hidden"][o], roll["pooled"][o]), s.unconditional(len(m))
        for j in J:
            x, x_next, t = lat[m, j], lat[m, j + 1], chain.t_model[j].to(lat.device)
            last = n_back == n_total - 1
            with (contextlib.nullcontext() if last else acc.no_sync(s.policy)):
                with acc.autocast():
                    pred = guided(s.model, s.policy, x, t, cond, unc, s.guidance)
                mean, std = chain.step(j, x, pred, True)
                lp = gaussian_log_prob(x_next, mean, std)
                kl = None
                if cfg.beta > 0:
                    mean_ref, _ = chain.step(j, x, s.ref_prediction(x, t, cond, unc), True)
                    kl = step_kl(mean, mean_ref, std)
                loss, met = grpo_loss(lp, roll["old_lp"][m, j], adv[m], cfg.clip_range, cfg.beta, kl)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {s.step} (rollout {roll['r']}, chain step {j}); stopped. "
                        f"Last good checkpoint: {latest_checkpoint(s.out) or 'none'}. Lower lr.")
                acc.backward(loss / n_total)
            n_back += 1
            mets.append({"loss": loss.item(), **{k: v.item() for k, v in met.items()}})
    gn = acc.clip_grad_norm_(s.policy.parameters(), cfg.max_grad_norm)
    if not torch.isfinite(gn):
        raise TrainingDiverged(f"gradient norm is {gn.item()} at step {s.step}; stopped before the update. "
                               f"Last good checkpoint: {latest_checkpoint(s.out) or 'none'}. Lower lr.")
    s.opt.step()
    s.sched.step()
    s.opt.zero_grad(set_to_none=True)
    world = acc.num_processes
    s.budget["update_passes"] += len(mb) * world * len(J) * s.cfg_mult
    s.budget["reference_passes"] += len(mb) * world * len(J) * s.cfg_mult * (cfg.beta > 0)
    s.step += 1
    s.window.append({**{k: float(np.mean([x[k] for x in mets])) for k in mets[0]}, "grad_norm": float(gn),
                     **roll["stats"]})


def log_and_checkpoint(s: Run, roll: dict) -> None:
    """The metrics line every ``log_every`` steps (means over the steps since the last one, over
    processes); a checkpoint (accelerate state, budget, step) at rollout boundaries."""
    import torch

    cfg, acc = s.cfg, s.accelerator
    if s.step % cfg.log_every == 0 or s.step == cfg.steps:
        rec = {k: float(np.mean([w[k] for w in s.window])) for k in s.window[0]}
        rec = acc.reduce({k: torch.tensor(v, device=acc.device) for k, v in rec.items()}, "mean")
        rec = {"step": s.step, **{k: round(float(v), 6) for k, v in rec.items()}, "lr": s.sched.get_last_lr()[0],
               **s.budget, "images_per_s": round(len(s.window) * roll["n_img"] * acc.num_processes / cfg.grpo_updates
                                                 / (time.time() - s.t_window), 2)}
        if acc.is_main_process:
            with open(s.metrics_f, "a") as f:
                f.write(json.dumps(rec) + "\n")
        s.window, s.t_window = [], time.time()
    boundary = s.step % cfg.grpo_updates == 0 or s.step == cfg.steps
    if boundary and (s.step - s.last_ckpt >= cfg.checkpoint_every or s.step == cfg.steps):
        d = s.out / "checkpoints" / f"step-{s.step:06d}"
        acc.wait_for_everyone()
        acc.save_state(str(d))
        if acc.is_main_process:
            artifacts.follow_umask(d)
            artifacts.write_json(d / "budget.json", s.budget)
            artifacts.write_json(d / "trainer_state.json", {"step": s.step})  # last: the checkpoint is complete
            rotate_checkpoints(s.out, cfg.keep_checkpoints)
        acc.wait_for_everyone()
        s.last_ckpt = s.step


def finish(s: Run, t_start: float) -> dict:
    """``final/`` (the full denoiser or the adapter), the manifest with the budget and the chain,
    and (``keep_checkpoints=0``) no resume state left."""
    import shutil

    cfg, acc = s.cfg, s.accelerator
    acc.wait_for_everyone()
    s.model.denoiser = s.unwrapped
    save_final(acc, s.policy, s.unwrapped, cfg, s.out,
               {"objective": "grpo", "beta": cfg.beta, "steps": cfg.steps, "train_run": s.manifest["run_key"]})
    if acc.is_main_process:
        lines = [json.loads(x) for x in s.metrics_f.read_text().splitlines()] if s.metrics_f.is_file() else []
        artifacts.finish(s.out, s.manifest, counts={"steps": cfg.steps, "rollouts": -(-cfg.steps // cfg.grpo_updates),
                                                    "prompts": len(s.records)},
                         budget=s.budget, chain={"steps": s.chain.N, "noise_level": s.chain.noise, "trained_steps": s.K,
                                                 "guidance": s.guidance, "rewards": [r.name for r in s.rewards],
                                                 "transforms": s.transforms},
                         final_metrics=lines[-1] if lines else None, seconds=round(time.time() - t_start, 3))
        if cfg.keep_checkpoints == 0:
            shutil.rmtree(s.out / "checkpoints", ignore_errors=True)
    acc.wait_for_everyone()
    return {**artifacts.read_json(s.out / artifacts.MANIFEST), "skipped": False}
