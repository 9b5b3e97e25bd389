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
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from capo import artifacts
from capo.config import to_dict
from capo.progress import progress

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
    from capo.prompts import load_prompts, records_fingerprint

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

        from capo.method.grpo import ddim_std, flow_sde_std

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
        from capo.method.grpo import ddim_step, flow_sde_step
        from capo.method.schedules import eps_from_prediction

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

    from capo.method.grpo import gaussian_log_prob

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
def run(cfg) -> dict:
    import torch
    from accelerate.utils import set_seed

    from capo.dist import accelerator as make_accelerator
    from capo.dist import prepare_out_dir
    from capo.method.grpo import grpo_loss, group_advantages, group_scores, step_kl, gaussian_log_prob
    from capo.models import load_model, model_fingerprint, save_checkpoint
    from capo.rewards import load_reward
    from capo.stages.training import (TrainingDiverged, compute_dtype, frozen_reference, latest_checkpoint, logged_step,
                                      make_optimizer, reference_denoiser, use_checkpointing)

    t_start = time.time()
    src = _prompt_source(cfg)
    records = src["records"]
    accelerator = make_accelerator(mixed_precision=cfg.mixed_precision)
    out = Path(cfg.out)
    config = {k: v for k, v in to_dict(cfg).items() if k not in TRACKING_KEYS}
    config |= {"out": None, "overwrite": None, "quiet": None, "stop_after": None}
    inputs = {"model": {"path": cfg.model, "sha256": model_fingerprint(cfg.model)}, **src["inputs"]}
    if cfg.reference:
        inputs["reference"] = {"path": cfg.reference, "sha256": model_fingerprint(cfg.reference)}
    manifest = artifacts.make_manifest("train", config, inputs, processes=accelerator.num_processes)
    if artifacts.existing_run(out, manifest, cfg.overwrite) == "complete":
        return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": True}
    model = load_model(cfg.model)
    rewards = [load_reward(r, device=accelerator.device, **({"path": cfg.reward_paths[r]} if r in cfg.reward_paths else {}))
               for r in src["rewards"]]
    transforms = [(src["transforms"] or {}).get(r.name, r.bt_transform) for r in rewards]
    if both := sorted(set(src["rewards"]) & set(cfg.monitor_rewards)):
        raise ValueError(f"monitor_rewards: {', '.join(both)} also trained on (the pairs' rewards); a monitor is never trained on")
    monitors = [load_reward(r, device=accelerator.device) for r in cfg.monitor_rewards]
    ref_net = reference_denoiser(cfg.reference, model.denoiser) if cfg.reference else None
    chain = Chain(model, cfg.sample_steps or model.default_steps, cfg.noise_level)
    if not chain.stochastic:
        raise ValueError("the sampling chain has no stochastic step (noise_level and the schedule give std 0 everywhere)")
    K = min(cfg.grpo_steps or len(chain.stochastic), len(chain.stochastic))
    guidance = float(model.default_guidance if cfg.guidance is None else cfg.guidance)
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
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        targets = sorted({n.split(".")[-1] for n, m in base.named_modules() if n.endswith(("to_q", "to_k", "to_v"))}
                         | {"to_out.0"})
        if (half := compute_dtype(cfg.mixed_precision)) is not None:
            base.to(half)
        policy = get_peft_model(base, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                                 init_lora_weights="gaussian", target_modules=targets))
        for p in policy.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        policy = base
    reference = frozen_reference(base, ref_net, cfg.lora_rank > 0, cfg.mixed_precision, accelerator.device) \
        if cfg.beta > 0 else None
    if cfg.compile != "off":
        policy = torch.compile(policy, backend=cfg.compile)
    policy.eval()  # no dropout: the update's log-probabilities are the rollout's
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = make_optimizer(cfg.optimizer, params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    policy, opt, sched = accelerator.prepare(policy, opt, sched)
    unwrapped = accelerator.unwrap_model(policy)

    step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        if not cfg.quiet and accelerator.is_main_process:
            print(f"train: resuming from {ckpt} (step {step})")
    metrics_f = out / "metrics.jsonl"
    if accelerator.is_main_process and metrics_f.is_file():
        artifacts.write_text(metrics_f, "".join(x + "\n" for x in metrics_f.read_text().splitlines()
                                                if logged_step(x) is not None and logged_step(x) <= step))

    world, rank, B, G, U = accelerator.num_processes, accelerator.process_index, cfg.batch_size, cfg.group_size, \
        cfg.grpo_updates
    n_img = B * G
    micro = n_img // (U * cfg.grad_accum)
    cfg_mult = 1 if guidance == 1.0 else 2
    names = [r.name for r in rewards]
    pids = [r["prompt_id"] for r in records]
    texts = [r["prompt"] for r in records]
    uncond_cache: dict[int, tuple] = {}

    def unconditional(n):
        if guidance == 1.0:
            return None
        if n not in uncond_cache:
            with torch.no_grad():
                uncond_cache[n] = tuple(v.detach() for v in model.unconditional(n))
        return uncond_cache[n]

    def ref_prediction(x, t, cond, unc):
        with torch.no_grad(), accelerator.autocast():
            if reference is None:
                with unwrapped.disable_adapter():
                    return guided(model, unwrapped, x, t, cond, unc, guidance)
            return guided(model, reference, x, t, cond, unc, guidance)

    budget = {"rollout_images": 0, "rollout_passes": 0, "update_passes": 0, "reference_passes": 0}
    if ckpt is not None:  # the budget spent up to the checkpoint, saved with it
        budget = json.loads((ckpt / "budget.json").read_text())
    bar = progress(total=cfg.steps, initial=step, desc="grpo", unit="step",
                   disable=cfg.quiet or not accelerator.is_local_main_process)
    window: list[dict] = []
    t_window, last_ckpt = time.time(), step
    while step < cfg.steps:
        r = step // U  # the rollout this step trains on
        # ---- rollout: B prompts x G images from the current policy
        t0 = time.time()
        idx = rollout_prompts(len(records), cfg.seed, r, B, world, rank)
        rng = np.random.default_rng([cfg.seed, 17, r])
        stoch = [False] * chain.N
        if cfg.grpo_sde == "window":
            start = int(rng.integers(0, len(chain.stochastic) - K + 1))
            window_steps = chain.stochastic[start:start + K]
        else:
            window_steps = chain.stochastic
        for i in window_steps:
            stoch[i] = True
        with torch.no_grad():
            hidden, pooled = (v.detach() for v in model.encode_prompts([texts[i] for i in idx]))
        owner = torch.arange(B, device=hidden.device).repeat_interleave(G)  # image -> its prompt in the rollout
        seeds = [image_seed(cfg.seed, r, pids[i], k) for i in idx for k in range(G)]
        policy.eval()
        lat, old_lp = [], []
        for s in range(0, n_img, micro):
            o = owner[s:s + micro]
            z, lp = sample_chain(model, unwrapped, chain, (hidden[o], pooled[o]), unconditional(len(o)), guidance,
                                 seeds[s:s + micro], stoch, accelerator.autocast)
            lat.append(z)
            old_lp.append(lp)
        lat, old_lp = torch.cat(lat), torch.cat(old_lp)
        raw, mon = np.zeros((n_img, len(rewards))), np.zeros((n_img, len(monitors)))
        for s in range(0, n_img, micro):
            images = model.decode_latents(lat[s:s + micro, -1])
            prompts = [texts[idx[int(o)]] for o in owner[s:s + micro]]
            for j, rw in enumerate(rewards):
                raw[s:s + micro, j] = np.asarray(rw(images, prompts), dtype=np.float64)
            for j, rw in enumerate(monitors):  # logged only: never in the scores or advantages
                mon[s:s + micro, j] = np.asarray(rw(images, prompts), dtype=np.float64)
        if not np.isfinite(raw).all():
            raise ValueError(f"a reward returned NaN/inf in rollout {r}: rewards {names}")
        scores = group_scores(raw.reshape(B, G, -1), cfg.advantage, transforms, src["weights"])
        adv_np = group_advantages(scores, cfg.advantage_norm, cfg.advantage_eps, cfg.advantage_clip)
        adv = torch.as_tensor(adv_np.reshape(-1), dtype=torch.float32, device=lat.device)
        budget["rollout_images"] += n_img * world
        budget["rollout_passes"] += n_img * world * chain.N * cfg_mult
        roll = {**{f"reward_{n}": float(raw[:, j].mean()) for j, n in enumerate(names)},
                **{f"monitor_{rw.name}": float(np.nanmean(mon[:, j])) for j, rw in enumerate(monitors)},
                "score": float(scores.mean()), "adv_abs": float(np.abs(adv_np).mean()),
                "zero_std_groups": float((scores.std(1) <= 1e-12).mean()), "rollout_s": round(time.time() - t0, 3)}
        order = np.random.default_rng([cfg.seed, 23, r]).permutation(n_img)
        # ---- updates: U optimizer steps on this rollout
        for u in range(step - r * U, U):
            mb = order[u * (n_img // U):(u + 1) * (n_img // U)]
            if cfg.grpo_sde == "window" or K == len(chain.stochastic):
                J = list(window_steps)
            else:
                J = sorted(np.random.default_rng([cfg.seed, 19, step]).choice(chain.stochastic, K, replace=False).tolist())
            mets = []
            n_back, n_total = 0, cfg.grad_accum * len(J)
            for a in range(cfg.grad_accum):
                m = torch.as_tensor(mb[a * micro:(a + 1) * micro], device=lat.device)
                o = owner[m]
                cond, unc = (hidden[o], pooled[o]), unconditional(len(m))
                for j in J:
                    x, x_next, t = lat[m, j], lat[m, j + 1], chain.t_model[j].to(lat.device)
                    last = n_back == n_total - 1
                    with (contextlib.nullcontext() if last else accelerator.no_sync(policy)):
                        with accelerator.autocast():
                            pred = guided(model, policy, x, t, cond, unc, guidance)
                        mean, std = chain.step(j, x, pred, True)
                        lp = gaussian_log_prob(x_next, mean, std)
                        kl = None
                        if cfg.beta > 0:
                            mean_ref, _ = chain.step(j, x, ref_prediction(x, t, cond, unc), True)
                            kl = step_kl(mean, mean_ref, std)
                        loss, met = grpo_loss(lp, old_lp[m, j], adv[m], cfg.clip_range, cfg.beta, kl)
                        if not torch.isfinite(loss):
                            raise TrainingDiverged(
                                f"loss is {loss.item()} at step {step} (rollout {r}, chain step {j}); stopped. "
                                f"Last good checkpoint: {latest_checkpoint(out) or 'none'}. Lower lr.")
                        accelerator.backward(loss / n_total)
                    n_back += 1
                    mets.append({"loss": loss.item(), **{k: v.item() for k, v in met.items()}})
            gn = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            if not torch.isfinite(gn):
                raise TrainingDiverged(f"gradient norm is {gn.item()} at step {step}; stopped before the update. "
                                       f"Last good checkpoint: {latest_checkpoint(out) or 'none'}. Lower lr.")
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            budget["update_passes"] += len(mb) * world * len(J) * cfg_mult
            budget["reference_passes"] += len(mb) * world * len(J) * cfg_mult * (cfg.beta > 0)
            step += 1
            bar.update(1)
            window.append({**{k: float(np.mean([x[k] for x in mets])) for k in mets[0]}, "grad_norm": float(gn),
                           **roll})
            if step % cfg.log_every == 0 or step == cfg.steps:
                rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                rec = accelerator.reduce({k: torch.tensor(v, device=accelerator.device) for k, v in rec.items()}, "mean")
                rec = {"step": step, **{k: round(float(v), 6) for k, v in rec.items()}, "lr": sched.get_last_lr()[0],
                       **budget, "images_per_s": round(len(window) * n_img * world / U / (time.time() - t_window), 2)}
                if accelerator.is_main_process:
                    with open(metrics_f, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    bar.set_postfix(loss=rec["loss"], reward=rec[f"reward_{names[0]}"])
                window, t_window = [], time.time()
            boundary = step % U == 0 or step == cfg.steps
            if boundary and (step - last_ckpt >= cfg.checkpoint_every or step == cfg.steps):
                d = out / "checkpoints" / f"step-{step:06d}"
                accelerator.wait_for_everyone()
                accelerator.save_state(str(d))
                if accelerator.is_main_process:
                    artifacts.follow_umask(d)
                    artifacts.write_json(d / "budget.json", budget)
                    artifacts.write_json(d / "trainer_state.json", {"step": step})  # last: the checkpoint is complete
                    import shutil

                    done = sorted(p.parent for p in (out / "checkpoints").glob("step-*/trainer_state.json"))
                    for old in done[:-max(1, cfg.keep_checkpoints)]:
                        shutil.rmtree(old)
                accelerator.wait_for_everyone()
                last_ckpt = step
            if cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.steps:
                bar.close()
                return {"stopped_at": step, "skipped": False, "complete": False}
            if step >= cfg.steps:
                break
    bar.close()

    accelerator.wait_for_everyone()
    model.denoiser = unwrapped
    state = accelerator.get_state_dict(policy) if cfg.lora_rank == 0 else None
    if state is not None:
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if accelerator.is_main_process:
        extra = {"objective": "grpo", "beta": cfg.beta, "steps": cfg.steps, "train_run": manifest["run_key"]}
        if cfg.lora_rank > 0:
            save_checkpoint(out / "final", cfg.model, lora_model=unwrapped, extra=extra)
        else:
            save_checkpoint(out / "final", cfg.model, denoiser_state=state, extra=extra)
        lines = [json.loads(x) for x in metrics_f.read_text().splitlines()] if metrics_f.is_file() else []
        artifacts.finish(out, manifest, counts={"steps": cfg.steps, "rollouts": -(-cfg.steps // U),
                                                "prompts": len(records)},
                         budget=budget, chain={"steps": chain.N, "noise_level": chain.noise, "trained_steps": K,
                                               "guidance": guidance, "rewards": names, "transforms": transforms},
                         final_metrics=lines[-1] if lines else None, seconds=round(time.time() - t_start, 3))
        if cfg.keep_checkpoints == 0:
            import shutil

            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    return {**artifacts.read_json(out / artifacts.MANIFEST), "skipped": False}
