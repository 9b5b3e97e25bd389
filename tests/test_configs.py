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


def test_build_layers_defaults_file_and_tokens(tmp_path):
    """``build(cls, file, tokens, defaults=...)``: the file wins over the defaults, tokens over both;
    an unknown key in the defaults is the same helpful error as in a file."""
    from capo.config import ConfigError
    from capo.stages.pairs import PairsConfig

    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ndraws: 2\n")
    d = {"rewards_tables": ["a.parquet"], "out": "o", "seed": 1, "draws": 5, "max_tries": 7}
    cfg = build(PairsConfig, str(f), ["draws=4"], defaults=d)
    assert (cfg.seed, cfg.draws, cfg.max_tries, cfg.out) == (3, 4, 7, "o")
    assert build(PairsConfig, None, [], defaults=d).draws == 5
    with pytest.raises(ConfigError, match="seeed"):
        build(PairsConfig, None, [], defaults={**d, "seeed": 1})


def test_preset_config_is_the_preset_with_tokens_over_it():
    from capo.experiments.preset import load_preset, preset_config

    raw = load_preset("quick")
    cfg = preset_config("quick", ["seeds=[7]"])
    assert cfg.preset == "quick" and cfg.seeds == [7]
    assert cfg.steps == raw["steps"] and cfg.bases == raw["bases"]
    with pytest.raises(ValueError, match="unknown reproduce preset"):
        preset_config("no-such-preset")
