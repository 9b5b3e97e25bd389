"""Figures of the rewards against the hidden truth: ranks, AUC, correlations, pairwise
agreement, and ``evaluate_rewards``, the held-out figures of ``build.train_rewards``.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from .models import AESTHETIC, VQA
from .training import MATCH_THRESHOLD, simulated_choices


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN without both classes."""
    labels = np.asarray(labels, bool)
    n1, n0 = labels.sum(), (~labels).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[labels].sum() - n1 * (n1 - 1) / 2) / (n1 * n0))


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b) -> float:
    return pearson(_ranks(a), _ranks(b))


def pairwise_agreement(reward_a, reward_b, truth_a, truth_b) -> float:
    """Share of pairs the reward orders as the truth does (truth ties skipped, reward ties half)."""
    dr = np.asarray(reward_a, np.float64) - np.asarray(reward_b, np.float64)
    dt = np.asarray(truth_a, np.float64) - np.asarray(truth_b, np.float64)
    keep = np.abs(dt) > 1e-12
    if not keep.any():
        return float("nan")
    agree = np.where(dr[keep] == 0, 0.5, (np.sign(dr[keep]) == np.sign(dt[keep])).astype(np.float64))
    return float(agree.mean())


def evaluate_rewards(rewards: dict, pool: dict, k: int, rng: np.random.Generator) -> dict:
    """Held-out figures (see ``train_rewards``) for ``rewards`` (name -> reward) on ``pool``
    (``k`` images per record)."""
    images, records = pool["images"], pool["records"]
    prompts = [r["prompt"] for r in records]
    scores = {name: np.asarray(r(images, prompts), np.float64) for name, r in rewards.items()}
    n_rec = len(images) // k
    pairs = np.array([(i * k + a, i * k + b) for i in range(n_rec) for a, b in combinations(range(k), 2)])
    a, b = pairs[:, 0], pairs[:, 1]
    u = pool["utility"]
    choice = simulated_choices(u[a], u[b], rng)
    human = np.where(choice == 0, 1.0, -1.0)  # +1: a chosen
    out = {"n_records": n_rec, "n_images": len(images), "n_pairs": int(len(pairs)),
           "pairwise_agreement": {}, "choice_agreement": {}}
    for name, s in scores.items():
        out["pairwise_agreement"][name] = pairwise_agreement(s[a], s[b], u[a], u[b])
        out["choice_agreement"][name] = pairwise_agreement(s[a], s[b], human, -human)
    out["choice_agreement"]["utility (ceiling)"] = pairwise_agreement(u[a], u[b], human, -human)
    out["aesthetic_truth_agreement"] = {name: pairwise_agreement(s[a], s[b], pool["aesthetic"][a],
                                                                 pool["aesthetic"][b]) for name, s in scores.items()}
    out["alignment_truth_agreement"] = {name: pairwise_agreement(s[a], s[b], pool["alignment"][a],
                                                                 pool["alignment"][b]) for name, s in scores.items()}
    if VQA in rewards:
        neg = np.asarray(rewards[VQA](images, [r["prompt"] for r in pool["neg_records"]]), np.float64)
        p = np.concatenate([scores[VQA], neg])
        y = np.concatenate([pool["alignment"], pool["neg_alignment"]]) >= MATCH_THRESHOLD
        kinds = np.array(["own_prompt"] * len(images) + list(pool["neg_kinds"]))
        out["vqa"] = {"auc": auc(p, y), "accuracy": float(np.mean((p >= 0.5) == y)), "n": int(len(p)),
                      "yes_rate": float(y.mean()),
                      "accuracy_by_kind": {kd: float(np.mean((p[kinds == kd] >= 0.5) == y[kinds == kd]))
                                           for kd in sorted(set(kinds))},
                      "n_by_kind": {kd: int((kinds == kd).sum()) for kd in sorted(set(kinds))},
                      "auc_own_vs_negative_prompt": auc(np.concatenate([scores[VQA], neg]),
                                                        np.r_[np.ones(len(images)), np.zeros(len(neg))])}
    if AESTHETIC in rewards:
        s = scores[AESTHETIC]
        out["aesthetic"] = {"pearson": pearson(s, pool["aesthetic"]), "spearman": spearman(s, pool["aesthetic"]),
                            "mean_score": float(s.mean()), "std_score": float(s.std())}
    if AESTHETIC in rewards and VQA in rewards:
        sa, sv = scores[AESTHETIC], scores[VQA]
        out["conflict"] = {
            "pearson_aesthetic_vqa": pearson(sa, sv),
            "spearman_aesthetic_vqa": spearman(sa, sv),
            "pair_disagreement_aesthetic_vqa": 1 - pairwise_agreement(sa[a], sa[b], sv[a], sv[b]),
            "truth_pearson_aesthetic_alignment": pearson(pool["aesthetic"], pool["alignment"]),
            "truth_pair_disagreement_aesthetic_alignment": 1 - pairwise_agreement(
                pool["aesthetic"][a], pool["aesthetic"][b], pool["alignment"][a], pool["alignment"][b]),
        }
    return out
