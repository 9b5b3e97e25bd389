"""The method's math, pure: arrays/tensors and numbers in, arrays/tensors out.

Public API (stable names):

=====================================  ==============================================
``calibrate(rewards, transform=...)``  calibrated rewards R_ca (Eq. 7)
``calibrate_against(rewards, ref)``    R_ca against a reference sample set (online CaPO)
``pareto_sets(points)``                upper / lower Pareto sets (Sec. 4.3)
``select_pairs(calibrated, ...)``      best-worst, SUM, FRS pair selection (Sec. 4.3)
``implicit_reward(...)``               diffusion implicit reward R_theta (Eq. 5)
``dpo_loss / ipo_loss / capo_loss``    objectives (Eq. 4, Eq. 8)
``merge(base, models, ...)``           SOUP: linear / slerp merging of task vectors
``divergence_term(...)``               reverse-process KL term between policy and reference
=====================================  ==============================================

Submodules: ``schedules`` (log-SNR), ``implicit`` (Eq. 5, weighting Sec. 4.4),
``objectives``, ``calibration``, ``selection``, ``merging``, ``divergence``.
"""

from capo.method.calibration import bt_transform, calibrate, calibrate_against, parse_transform
from capo.method.divergence import divergence_factor, divergence_term, param_distance
from capo.method.implicit import (
    implicit_reward,
    loss_factor,
    sample_pair_noise,
    sigmoid_factor,
    squared_error,
)
from capo.method.merging import merge
from capo.method.objectives import OBJECTIVES, capo_loss, dpo_loss, ipo_loss
from capo.method.schedules import ddpm_terms, eps_from_prediction, flow_terms
from capo.method.selection import (
    SELECTORS,
    PairSelection,
    frs_sets,
    nondominated_sort,
    pareto_sets,
    select_pairs,
)

__all__ = [
    "OBJECTIVES", "SELECTORS", "PairSelection", "bt_transform", "calibrate", "calibrate_against", "capo_loss",
    "ddpm_terms", "divergence_factor", "divergence_term", "dpo_loss", "eps_from_prediction", "flow_terms", "frs_sets", "implicit_reward",
    "ipo_loss", "loss_factor", "merge", "param_distance", "nondominated_sort", "pareto_sets", "parse_transform",
    "sample_pair_noise", "select_pairs", "sigmoid_factor", "squared_error",
]
