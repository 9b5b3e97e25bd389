"""open_clip models built as their weights were trained.

OpenAI's CLIP weights were trained with QuickGELU (``x * sigmoid(1.702 x)``). open_clip >= 2.29
builds plain GELU for ``create_model_and_transforms("ViT-L-14", pretrained="openai")`` unless
the architecture is named ``*-quickgelu`` or ``force_quick_gelu=True`` is passed, and only
logs a warning: the features then come from mis-activated layers. Every open_clip model capo
builds goes through ``create`` here, which reads the pretrained tag's config
(``open_clip.get_pretrained_cfg(arch, tag)["quick_gelu"]``) and forces the activation the
weights were trained with, for a tag name and for a local weights file alike (``trained_as``
names the tag a local file was released as).

``activation_of(model)`` reports what a built model uses; tests build every model capo
creates with random weights and compare it with the tag's config, whatever open_clip version
is installed.
"""

from __future__ import annotations

import os
from typing import Any


def pretrained_config(arch: str, tag: str | None) -> dict:
    """open_clip's config of a pretrained tag (``{}`` for none, a file or an unknown tag)."""
    import open_clip

    if not tag or os.path.isfile(str(tag)):
        return {}
    try:
        return dict(open_clip.get_pretrained_cfg(arch, tag) or {})
    except Exception:  # noqa: BLE001 - unknown arch/tag: open_clip's create call names it
        return {}


def trained_with_quick_gelu(arch: str, tag: str | None) -> bool:
    """Were the weights of ``(arch, tag)`` trained with QuickGELU? True for ``*-quickgelu``
    architectures and for tags whose config says ``quick_gelu`` (every ``openai`` tag)."""
    return arch.endswith("-quickgelu") or bool(pretrained_config(arch, tag).get("quick_gelu", False))


def activation_of(model) -> str:
    """``"quick_gelu"`` or ``"gelu"``: the activation of a built open_clip model's MLPs (raises if
    it has neither or both, which no released CLIP has)."""
    import torch

    from open_clip.transformer import QuickGELU

    kinds = set()
    for m in model.modules():
        if isinstance(m, QuickGELU):
            kinds.add("quick_gelu")
        elif isinstance(m, torch.nn.GELU):
            kinds.add("gelu")
    if len(kinds) != 1:
        raise ValueError(f"cannot tell the activation of {type(model).__name__}: found {sorted(kinds) or 'none'}")
    return kinds.pop()


def create(arch: str, pretrained: str | None = None, *, trained_as: str | None = None, device: str = "cpu",
           load_weights: bool = True, **kwargs: Any):
    """``(model, preprocess, tokenizer)`` of an open_clip model with its weights' activation.

    ``pretrained``: an open_clip tag (``"openai"``) or a local weights file; ``trained_as``: the
    tag whose config applies to a local file (default: ``pretrained`` itself). ``hf-hub:`` ids
    carry their own config and are passed through. ``load_weights=False`` builds the
    architecture with random weights (tests). Extra keyword arguments go to open_clip.
    """
    import open_clip

    if arch.startswith("hf-hub:"):
        model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device, **kwargs)
        return model, preprocess, open_clip.get_tokenizer(arch)
    tag = trained_as or pretrained
    quick = trained_with_quick_gelu(arch, tag)
    cfg = pretrained_config(arch, tag)
    # a local file carries no preprocessing config: take the tag's (mean, std, interpolation, resize mode)
    for key, kw in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                    ("resize_mode", "image_resize_mode")):
        if key in cfg and kw not in kwargs:
            kwargs[kw] = cfg[key]
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=pretrained if load_weights else None, device=device,
        force_quick_gelu=quick, **kwargs)
    return model, preprocess, open_clip.get_tokenizer(arch)
