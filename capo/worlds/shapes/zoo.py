"""The shipped shapes-world models, loaded by name (``shapes-sdxl``, ``shapes-sd3``).

The artifacts live in ``capo/worlds/shapes/artifacts/`` (built by ``capo world build``
and committed); each model directory's content hash is its fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from capo import artifacts
from capo.models.errors import ModelLoadError
from capo.worlds.shapes.pipeline import ShapesPipeline

ARTIFACTS = Path(__file__).with_name("artifacts")


def artifact_dir(name: str) -> Path:
    d = ARTIFACTS / name
    if not d.is_dir():
        raise ModelLoadError(f"shapes-world model {name!r} is not built: expected {d}. Build the world with "
                             "`capo world build` (about 30 minutes on a CPU) or use a fresh clone, which ships it")
    return d


def _load(name: str):
    return ShapesPipeline.from_pretrained(artifact_dir(name))


def _fingerprint(name: str):
    return lambda: artifacts.fingerprint(artifact_dir(name))


def load_sdxl_like():
    return _load("sdxl-like")


def load_sd3_like():
    return _load("sd3-like")


load_sdxl_like.fingerprint = _fingerprint("sdxl-like")
load_sd3_like.fingerprint = _fingerprint("sd3-like")
