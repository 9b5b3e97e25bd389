"""Every experiment config in configs/ names the command that runs it and is valid for its stage."""

import re
from pathlib import Path

import pytest

from capo.config import build, load_yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"generate": "capo.stages.generate:GenerateConfig", "score": "capo.stages.score:ScoreConfig",
          "train": "capo.stages.train:TrainConfig", "merge": "capo.stages.merge:MergeConfig",
          "eval": "capo.stages.evaluate:EvalConfig", "sweep": "capo.stages.sweep:SweepConfig",
          "reproduce": "capo.experiments.reproduce:ReproduceConfig", "iterate": "capo.stages.iterate:IterateConfig",
          "online": "capo.experiments.online:OnlineConfig"}
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_header_command_and_keys(path):
    import importlib

    head = path.read_text().splitlines()[0]
    m = re.match(r"# (?:accelerate launch -m )?capo (\w+) ", head)
    assert m, f"{path.name}: first line must be the command that runs it, got {head!r}"
    stage = m.group(1)
    assert stage in STAGES
    if stage == "reproduce":
        assert f"--preset {path.stem.removeprefix('reproduce-')}" in head
    else:
        assert f"--config configs/{path.name}" in head
    module, cls = STAGES[stage].split(":")
    cfg = build(getattr(importlib.import_module(module), cls), str(path), [])  # unknown keys raise
    assert set(load_yaml(path)) <= set(vars(cfg))
