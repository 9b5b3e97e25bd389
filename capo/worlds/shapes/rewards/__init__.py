"""The shapes world's rewards: three learned proxies mirroring the paper's reward models,
the hidden truth as a "gold" reward for evaluation only, and how the learned ones are
trained and measured.

- ``prompts``: parsing world prompts back to records (``parse_prompt``);
- ``negatives``: hard-negative prompts (``perturb_prompt``, ``hard_negative``);
- ``degradations``: image degradations (``degrade``);
- ``samplers``: the images the rewards learn from (``render_sampler``,
  ``pipeline_sampler``, ``mixed_sampler``);
- ``models``: the reward models (``PrefReward``, ``VQAReward``, ``AestheticReward``,
  ``GoldReward``; the table of names, paper analogues and BT transforms) and their
  loaders (``load_pref``, ``load_vqa``, ``load_aesthetic``, ``load_gold``, registered in
  ``capo.rewards``);
- ``training``: truth labels, the training pool and the three training loops;
- ``metrics``: figures against the hidden truth (``evaluate_rewards``);
- ``build``: the driver, ``train_rewards``, and ``figures_table``.

The public names of all of them are re-exported here.
"""

from .build import TIME_SHARES, TRAIN_DEFAULTS, figures_table, train_rewards
from .degradations import DEGRADATIONS, degrade
from .metrics import auc, evaluate_rewards, pairwise_agreement, pearson, spearman
from .models import (AESTHETIC, AESTHETIC_TEMPERATURE, CLASSES, CONFIG_NAME, DEFAULT_BATCH_SIZE, GOLD, LEARNED,
                     MODEL_CONFIGS, PATCH_SIZE, PREF, VQA, WEIGHTS_NAME, AestheticReward, GoldReward, LearnedReward,
                     PrefReward, VQAReward, artifact_dir, images_to_tensor, load_aesthetic, load_gold, load_pref,
                     load_vqa)
from .negatives import PERTURBATIONS, hard_negative, perturb_phrase, perturb_prompt
from ..parsing import parse_phrase, parse_prompt, phrase_record, phrase_text
from .samplers import CONTENT_ERRORS, mixed_sampler, pipeline_sampler, render_sampler
from .training import (AESTHETIC_LABEL_NOISE, MATCH_THRESHOLD, bt_loss, label_images, simulated_choices,
                       train_aesthetic, train_pref, train_vqa, vqa_targets)

__all__ = [
    "AESTHETIC", "AESTHETIC_LABEL_NOISE", "AESTHETIC_TEMPERATURE", "CLASSES", "CONFIG_NAME", "CONTENT_ERRORS",
    "DEFAULT_BATCH_SIZE", "DEGRADATIONS", "GOLD", "LEARNED", "MATCH_THRESHOLD", "MODEL_CONFIGS", "PATCH_SIZE",
    "PERTURBATIONS", "PREF", "TIME_SHARES", "TRAIN_DEFAULTS", "VQA", "WEIGHTS_NAME",
    "AestheticReward", "GoldReward", "LearnedReward", "PrefReward", "VQAReward",
    "artifact_dir", "auc", "bt_loss", "degrade", "evaluate_rewards", "figures_table", "hard_negative",
    "images_to_tensor", "label_images", "load_aesthetic", "load_gold", "load_pref", "load_vqa", "mixed_sampler",
    "pairwise_agreement", "parse_phrase", "parse_prompt", "pearson", "perturb_phrase", "perturb_prompt",
    "phrase_record", "phrase_text", "pipeline_sampler", "render_sampler", "simulated_choices", "spearman",
    "train_aesthetic", "train_pref", "train_rewards", "train_vqa", "vqa_targets",
]
