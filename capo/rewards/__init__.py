"""Reward models behind one protocol, each declaring its Bradley-Terry transform.

A reward model is a callable ``reward(images, prompts) -> np.ndarray (B,) float64`` with
attributes ``name`` and ``bt_transform`` (``identity`` | ``logit`` | ``temperature:T``,
see ``capo.method.calibration``), built by a factory registered in ``REWARDS``
(``capo ls rewards``). Factories import their heavy dependencies lazily, take
``device=None`` and an optional ``path`` (a local directory instead of the hub id), and
raise ``RewardLoadError`` naming the model and how to get it when weights are missing.
Images are uint8 ``(B, H, W, 3)``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from capo.registry import REWARDS



class RewardModel(Protocol):
    name: str
    bt_transform: str

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray: ...


class RewardLoadError(RuntimeError):
    """Weights or packages for a reward model are missing; the message says how to get them."""


def load_reward(name: str, **kwargs) -> RewardModel:
    return REWARDS.get(name)(**kwargs)

# What each real reward's whole path (weights file -> model -> preprocessing -> score) was checked
# against (the protocol card's ``winrate`` part, ``capo.eval.protocol``). Measured on random
# weights at the real input sizes; the tests named hold the measurements.
PARITY = {
    "pickscore": {"exact": True, "status": "4.x PIL CLIPImageProcessor, float32; max diff 1.2e-6 (scale 100)",
                  "test": "test_reward_parity, test_real_rewards::test_pickscore"},
    "hps": {"exact": True, "status": "HPSv2's tensor transform (resize float tensor, pad 0), GELU ViT-H-14, fp16 "
                                     "autocast on CUDA; max diff 6e-8; antialias=True as current torchvision",
            "test": "test_reward_parity::test_hps_preprocessing_equals_hpsv2, test_real_rewards::test_hps"},
    "aesthetic": {"exact": True, "status": "OpenAI CLIP _transform(224) (rounded crop offset); max diff 0; "
                                           "upstream runs fp16 on CUDA, capo fp32 unless dtype=float16",
                  "test": "test_real_rewards::test_aesthetic"},
    "clipscore": {"exact": True, "status": "OpenAI CLIP _transform(224), 2.5 max(cos, 0); max diff 1.1e-7",
                  "test": "test_real_rewards::test_clipscore"},
    "mps": {"exact": True, "status": "4.x PIL processor; the released pickle loads; max diff 0",
            "test": "test_mps"},
    "vqascore": {"exact": True, "status": "expand2square + 4.x PIL processor (336); bf16 weights + autocast on "
                                          "CUDA as upstream (float32 on a CPU; 4.8e-5 apart); max diff 0",
                 "test": "test_vqascore_t5"},
    "vqascore-xl": {"exact": True, "status": "as vqascore", "test": "test_vqascore_t5"},
    "vqascore-blip": {"exact": False, "status": "capo's variant of VQAScore on BLIP (not the paper's); its "
                                                "preprocessing is the 4.x PIL processor; unpadded questions",
                      "test": "test_real_rewards::test_vqascore"},
    "vila": {"exact": True, "status": "worker run once against a TensorFlow 2.21 SavedModel with VILA-R's signature",
             "test": "test_vila"},
    "imagereward": {"exact": False, "status": "the image-reward package's own code; not run here (package absent)",
                    "test": "test_real_rewards::test_imagereward_error"},
}
