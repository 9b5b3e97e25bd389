"""Every open_clip model capo builds has the activation its weights were trained with.

OpenAI's CLIP weights were trained with QuickGELU; open_clip >= 2.29 builds plain GELU for
``("ViT-L-14", pretrained="openai")`` unless told otherwise. The models are built on the meta
device (the activation is a module type; no weights or memory needed), whatever open_clip
version is installed.
"""

import pytest
import torch

from capo import openclip
from capo.eval import geneval

# (architecture, pretrained tag) of every open_clip model capo creates, with the activation the
# weights were trained with: OpenAI's CLIPs QuickGELU, LAION's OpenCLIP-H (HPS's base) GELU.
USED = [
    (geneval.COLOR_CLIP_ARCH, "openai", "quick_gelu"),  # GenEval colour classifier
    ("ViT-B-32", "openai", "quick_gelu"),  # T2I-CompBench CLIPScore (OpenAI's clip.load("ViT-B/32"))
    ("ViT-H-14", "laion2b_s32b_b79k", "gelu"),  # HPSv2.1's base
]


@pytest.mark.parametrize("arch,tag,expected", USED)
def test_models_built_with_their_trained_activation(arch, tag, expected):
    assert openclip.trained_with_quick_gelu(arch, tag) == (expected == "quick_gelu")
    with torch.device("meta"):
        model, _, _ = openclip.create(arch, tag, load_weights=False, device="meta")
    assert openclip.activation_of(model) == expected


def test_a_local_file_takes_the_activation_of_the_tag_it_was_released_as(tmp_path):
    f = tmp_path / "ViT-B-32.pt"
    f.write_bytes(b"")
    assert openclip.trained_with_quick_gelu("ViT-B-32", str(f)) is False  # a file alone says nothing
    with torch.device("meta"):
        model, _, _ = openclip.create("ViT-B-32", str(f), trained_as="openai", load_weights=False, device="meta")
    assert openclip.activation_of(model) == "quick_gelu"


@pytest.fixture
def built(monkeypatch):
    """open_clip's factory with the weights left out and the model built on the meta device;
    records what each call built."""
    import open_clip

    real = open_clip.create_model_and_transforms
    calls = []

    def fake(arch, pretrained=None, **kw):
        kw["device"] = "meta"
        with torch.device("meta"):
            out = real(arch, pretrained=None, **kw)
        calls.append({"arch": arch, "pretrained": pretrained, "model": out[0]})
        return out

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    return calls


def test_geneval_colour_classifier_is_built_with_quick_gelu(built, tmp_path):
    geneval.clip_color_classifier(device="meta")
    f = tmp_path / "ViT-L-14.pt"
    f.write_bytes(b"")
    geneval.clip_color_classifier(str(f), device="meta")  # a local copy of OpenAI's weights
    assert [c["arch"] for c in built] == ["ViT-L-14", "ViT-L-14"]
    assert [c["pretrained"] for c in built] == ["openai", str(f)]
    assert all(openclip.activation_of(c["model"]) == "quick_gelu" for c in built)


def test_colour_precision_follows_upstream():
    assert geneval.color_precision("auto", "cuda") == "amp"  # clip_benchmark's amp=True default
    assert geneval.color_precision("auto", "cpu") == "fp32"
    assert geneval.color_precision("fp32", "cuda:1") == "fp32"
    with pytest.raises(ValueError, match="auto, amp or fp32"):
        geneval.color_precision("bf16", "cpu")
