"""Shared fixtures: a tiny shapes pipeline and a small samples -> rewards -> pairs chain."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CAPO_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


class ToyReward:
    """Deterministic image statistics standing in for reward models in pipeline tests."""

    def __init__(self, name, fn, bt_transform):
        self.name, self.fn, self.bt_transform = name, fn, bt_transform

    def __call__(self, images, prompts):
        return self.fn(np.asarray(images, dtype=np.float64))


def _register_toy_rewards():
    from capo.rewards import REWARDS

    toys = {
        "toy-bright": (lambda x: x.reshape(len(x), -1).mean(1) / 25.5, "temperature:10"),
        "toy-red": (lambda x: (x[..., 0] - x[..., 2]).reshape(len(x), -1).mean(1) / 50, "identity"),
        "toy-nan": (lambda x: np.full(len(x), np.nan), "identity"),
        "toy-gold": (lambda x: x[..., 1].reshape(len(x), -1).mean(1) / 25.5, "identity"),  # a hidden truth (green)
    }
    for name, (fn, bt) in toys.items():
        if name not in REWARDS:
            REWARDS.register(name, (lambda n, f, b: lambda device=None, **kw: ToyReward(n, f, b))(name, fn, bt))


_register_toy_rewards()

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle",
           "a photo of a green square left of a circle"]


def tiny_blip_vqa(tmp_path: Path, words: list[str]):
    """A tiny random ``BlipForQuestionAnswering`` (BERT ids up to BLIP's [DEC]/[ENC], 30524) and a
    ``BertTokenizer`` over ``words`` (special tokens first), for the BLIP-VQA scorers' tests."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering

    cfg = BlipConfig(
        text_config=dict(vocab_size=30524, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37))
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(cfg).eval()
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    return model, BertTokenizer(str(tmp_path / "vocab.txt"))


def build_tiny(path: Path, kind: str = "sdxl-like", seed: int = 0) -> Path:
    import torch

    from capo.worlds.shapes.grammar import VOCAB
    from capo.worlds.shapes.pipeline import build_pipeline

    torch.manual_seed(seed)
    pipe = build_pipeline(kind, VOCAB, size="tiny")
    pipe.default_steps = 3
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """base model -> 4 prompts x 4 samples -> two toy reward tables -> FRS and best-worst pairs."""
    from capo.stages import generate, pairs, score

    root = tmp_path_factory.mktemp("chain")
    build_tiny(root / "base")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    generate.run(generate.GenerateConfig(model=str(root / "base"), prompts=str(root / "prompts.txt"),
                                         out=str(root / "samples"), n=4, batch_size=8, shard_prompts=2))
    score.run(score.ScoreConfig(samples=str(root / "samples"), rewards=["toy-bright", "toy-red"]))
    tables = [str(root / "samples" / "rewards" / r / "scores.parquet") for r in ("toy-bright", "toy-red")]
    pairs.run(pairs.PairsConfig(rewards_tables=tables, out=str(root / "pairs-frs"), selector="frs"))
    pairs.run(pairs.PairsConfig(rewards_tables=tables[:1], out=str(root / "pairs-bw")))
    return root


@pytest.fixture
def chain_copy(tiny_chain, tmp_path):
    dst = tmp_path / "chain"
    shutil.copytree(tiny_chain, dst, symlinks=True)
    return dst


def byte_chars() -> list[str]:
    """GPT-2/CLIP's reversible byte -> unicode table (the 256 base symbols of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b), cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]
