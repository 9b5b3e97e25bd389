"""Training loops of the learned rewards (``build.train_rewards`` drives them), all from
scratch on CPU, on a pool of images labelled once by the hidden truth (``label_images``:
detections, alignment, aesthetic):

- ``shapes-pref``: Bradley-Terry loss ``-log sigmoid(R(x_w) - R(x_l))`` on all pairs of
  images of a prompt, the winner drawn by a simulated rater exactly as
  ``truth.simulate_choices`` draws it (``P(a) = sigmoid((u_a - u_b) / 0.1)``);
- ``shapes-vqa``: cross-entropy of the matching head on each image's own prompt and one
  hard-negative prompt (``perturb_prompt``, drawn afresh at every step); the label of
  every (image, prompt) pair is "yes" iff ``truth.alignment >= MATCH_THRESHOLD`` (a
  perturbed prompt that still matches is a "yes"; a degraded image of the right prompt
  may be a "no"). ``vqa_targets`` also offers graded targets (not the default);
- ``shapes-aesthetic``: squared error to ``1 + 9 * (truth.aesthetic + noise)``, noise
  ``N(0, AESTHETIC_LABEL_NOISE)`` standing in for raters' disagreement.
"""

from __future__ import annotations

import contextlib
import time
from itertools import combinations
from typing import Callable, Sequence

import numpy as np

from capo.progress import progress
from ..evaluator import detect
from .models import AestheticReward, PrefReward, VQAReward, images_to_tensor
from .negatives import hard_negative
from ..pretrain import lr_at
from ..truth import aesthetic, alignment, ALIGNMENT_WEIGHT, preference_probability

AESTHETIC_LABEL_NOISE = 0.03  # std of the noise on truth.aesthetic labels (aesthetic units, [0, 1])
MATCH_THRESHOLD = 0.8  # truth.alignment at or above which an (image, prompt) pair is a "yes"


def bt_loss(score_a, score_b, choice):
    """Bradley-Terry negative log-likelihood, mean over pairs: ``-log sigmoid(R_w - R_l)``
    with ``choice`` 0 where ``a`` won, 1 where ``b`` won (``truth.simulate_choices``)."""
    import torch.nn.functional as F

    sign = 1.0 - 2.0 * choice.to(score_a.dtype)  # +1: a won
    return F.softplus(-sign * (score_a - score_b)).mean()


def simulated_choices(utility_a: np.ndarray, utility_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth.simulate_choices``'s draw from precomputed utilities (0 = ``a`` preferred)."""
    p = preference_probability(utility_a, utility_b)
    return (rng.random(len(p)) >= p).astype(np.int64)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def label_images(records: Sequence[dict], images: np.ndarray) -> dict:
    """The truth's view of each image of its record: detections, alignment, aesthetic, utility."""

    dets = [detect(im) for im in images]
    align = np.array([alignment(r, None, d) for r, d in zip(records, dets)])
    aes = np.asarray(aesthetic(images), np.float64) if len(images) else np.zeros(0)
    return {"detections": dets, "alignment": align, "aesthetic": aes,
            "utility": ALIGNMENT_WEIGHT * align + (1 - ALIGNMENT_WEIGHT) * aes}


def _pool(records: Sequence[dict], k: int, sample_images: Callable, rng: np.random.Generator,
          neg_rng: np.random.Generator, progress_desc: str, show: bool, chunk: int = 256) -> dict:
    """``k`` images per record (image ``i * k + j`` is record ``i``'s ``j``-th), truth
    labels, and one hard-negative prompt per image with its truth label."""
    recs = [r for r in records for _ in range(k)]
    images, labels = [], []
    neg_records, neg_kinds, neg_align = [], [], []
    with progress(total=len(recs), desc=progress_desc, unit="img", disable=not show) as bar:
        for i in range(0, len(recs), chunk):
            part = recs[i:i + chunk]
            ims = sample_images(part, rng)
            lab = label_images(part, ims)
            for r, d in zip(part, lab["detections"]):
                neg = hard_negative(r, records, neg_rng)
                neg_records.append(neg[0])
                neg_kinds.append(neg[1])
                neg_align.append(alignment(neg[0], None, d))
            images.append(ims)
            labels.append(lab)
            bar.update(len(part))
    return {"records": recs, "images": np.concatenate(images),
            "alignment": np.concatenate([l["alignment"] for l in labels]),
            "aesthetic": np.concatenate([l["aesthetic"] for l in labels]),
            "utility": np.concatenate([l["utility"] for l in labels]),
            "detections": [d for l in labels for d in l["detections"]],
            "neg_records": neg_records, "neg_kinds": neg_kinds, "neg_alignment": np.asarray(neg_align)}


def _fit(params, loss_fn: Callable, steps: int, lr: float, deadline: float, desc: str, show: bool,
         warmup: int = 50, weight_decay: float = 0.01) -> dict:
    """AdamW, linear warmup then cosine to 10% (``pretrain.lr_at``); ``loss_fn(step)``
    returns the batch loss. Stops early at ``deadline`` (``time.monotonic``)."""
    import torch

    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses, t0, done = [], time.monotonic(), 0
    with progress(total=steps, desc=desc, unit="step", disable=not show) as bar:
        for step in range(steps):
            if time.monotonic() > deadline:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr, min(warmup, max(steps // 10, 1)), steps, "cosine")
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            done += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    tail = max(1, min(50, len(losses) // 5))
    return {"steps": done, "steps_planned": steps, "stopped_by_time": done < steps,
            "seconds": round(time.monotonic() - t0, 1),
            "loss_first": float(np.mean(losses[:tail])) if losses else None,
            "loss_last": float(np.mean(losses[-tail:])) if losses else None}


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless epochs of a fixed random order, ``batch_size`` indices at a time."""
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i:i + batch_size]


def train_pref(model: PrefReward, pool: dict, k: int, rng: np.random.Generator, steps: int, batch_size: int,
               lr: float, deadline: float, show: bool = True) -> dict:
    """Bradley-Terry training of ``shapes-pref`` on every pair of the ``k`` images of each
    pool record, one simulated choice per pair."""
    import torch

    n_rec = len(pool["images"]) // k
    pairs = np.array([(i * k + a, i * k + b) for i in range(n_rec) for a, b in combinations(range(k), 2)])
    u = pool["utility"]
    choice = simulated_choices(u[pairs[:, 0]], u[pairs[:, 1]], rng)
    images = torch.from_numpy(pool["images"])
    ids, mask = model.tokenize([pool["records"][i]["prompt"] for i in pairs[:, 0]])
    batches = _batches(len(pairs), batch_size, rng)
    model.module.train()

    def loss_fn(step):
        idx = torch.from_numpy(next(batches))
        p = torch.from_numpy(pairs)[idx]
        x = images_to_tensor(images[torch.cat([p[:, 0], p[:, 1]])].numpy())
        img = model.embed_images(x)
        txt = model.embed_texts(ids[idx], mask[idx])
        s = model.scale() * (img * torch.cat([txt, txt])).sum(-1)
        sa, sb = s.chunk(2)
        return bt_loss(sa, sb, torch.from_numpy(choice)[idx])

    out = _fit(model.module.parameters(), loss_fn, steps, lr, deadline, "shapes-pref (BT)", show)
    model.module.eval()
    return dict(out, pairs=int(len(pairs)), choice_agrees_with_utility=float(np.mean(
        (choice == 0) == (u[pairs[:, 0]] >= u[pairs[:, 1]]))))


def vqa_targets(alignment: np.ndarray, targets: str = "binary") -> np.ndarray:
    """P(yes) targets from the truth's alignment ``a``: ``binary`` (``a >=
    MATCH_THRESHOLD``), ``ramp`` (a rater answering "yes" with probability rising linearly
    from 0 at ``a = 2 * MATCH_THRESHOLD - 1`` through 1/2 at the threshold to 1 at
    ``a = 1``) or ``soft`` (``a`` itself)."""
    a = np.asarray(alignment, np.float64)
    if targets == "binary":
        return (a >= MATCH_THRESHOLD).astype(np.float64)
    if targets == "ramp":
        return np.clip((a - (2 * MATCH_THRESHOLD - 1)) / (2 * (1 - MATCH_THRESHOLD)), 0.0, 1.0)
    if targets == "soft":
        return np.clip(a, 0.0, 1.0)
    raise ValueError(f"unknown vqa targets {targets!r}; expected 'binary', 'ramp' or 'soft'")


def train_vqa(model: VQAReward, pool: dict, rng: np.random.Generator, steps: int, batch_size: int, lr: float,
              deadline: float, show: bool = True, targets: str = "binary", negatives: int = 1) -> dict:
    """Matching-head cross-entropy of ``shapes-vqa`` on each pool image with its own prompt
    and ``negatives`` hard-negative prompts drawn afresh at every step, targets from
    ``truth.alignment`` of the pair (``vqa_targets``, from the image's cached detections)."""
    import torch

    images = torch.from_numpy(pool["images"])
    records, dets = pool["records"], pool["detections"]
    y_pos = vqa_targets(pool["alignment"], targets)
    batches = _batches(len(images), batch_size, rng)
    seen = {"n": 0, "yes": 0.0}
    model.module.train()

    def loss_fn(step):
        idx = next(batches)
        prompts, y = [records[i]["prompt"] for i in idx], list(y_pos[idx])
        for _ in range(negatives):
            for i in idx:
                neg, _ = hard_negative(records[i], records, rng)
                prompts.append(neg["prompt"])
                y.append(float(vqa_targets([alignment(neg, None, dets[i])], targets)[0]))
        seen["n"] += len(y)
        seen["yes"] += float(np.sum(y))
        tokens = model.image_tokens(images_to_tensor(images[torch.from_numpy(idx)].numpy()))
        ids, mask = model.tokenize(prompts)
        logits = model.match_logits(torch.cat([tokens] * (1 + negatives)), ids, mask)
        y = torch.tensor(y, dtype=logits.dtype)
        logp = logits.log_softmax(-1)
        return -(y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()

    out = _fit(model.module.parameters(), loss_fn, steps, lr, deadline, "shapes-vqa (ITM)", show)
    model.module.eval()
    return dict(out, examples=seen["n"], yes_rate=seen["yes"] / max(seen["n"], 1), targets=targets,
                negatives_per_image=negatives)


def train_aesthetic(model: AestheticReward, pool: dict, rng: np.random.Generator, steps: int, batch_size: int,
                    lr: float, deadline: float, show: bool = True) -> dict:
    """Squared error of ``shapes-aesthetic`` to ``1 + 9 * (truth.aesthetic + noise)``."""
    import torch

    target = 1 + 9 * (pool["aesthetic"] + rng.normal(0, AESTHETIC_LABEL_NOISE, len(pool["aesthetic"])))
    net = model.module
    net.mean.fill_(float(target.mean()))
    net.std.fill_(float(target.std() + 1e-6))
    images = torch.from_numpy(pool["images"])
    y = torch.from_numpy(target).float()
    batches = _batches(len(images), batch_size, rng)
    net.train()

    def loss_fn(step):
        idx = torch.from_numpy(next(batches))
        pred = net(images_to_tensor(images[idx].numpy()))
        return (((pred - y[idx]) / net.std) ** 2).mean()

    out = _fit(net.parameters(), loss_fn, steps, lr, deadline, "shapes-aesthetic (MSE)", show)
    net.eval()
    return dict(out, examples=len(images), label_noise=AESTHETIC_LABEL_NOISE)
