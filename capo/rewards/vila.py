"""VILA-R (Google's VILA aesthetic model, the paper's third training reward) behind capo's
reward protocol, run in a separate worker process.

VILA-R is published for TensorFlow only (a SavedModel on TF Hub / Kaggle Models,
``google/vila/tensorFlow2/image``): its ``serving_default`` signature takes encoded image bytes
and returns ``predictions``, an aesthetic score in [0, 1]. torch and TensorFlow never share a
process here: ``vila`` starts ``python -m capo.rewards.vila_worker DIR`` and exchanges frames
over its stdin / stdout (8-byte big-endian length + ``numpy.save`` bytes of the uint8
``(B, H, W, 3)`` batch; the reply is a status byte, ``O`` with the ``float64 (B,)`` scores or
``E`` with an error message). The worker encodes each image as PNG, as the model expects bytes.

BT transform (declared): ``logit``, the [0, 1] score read as a probability (clipped to
[1e-6, 1 - 1e-6]): capo's choice, not upstream's (VILA-R is not trained as a BT model).
Install: ``pip install 'capo[vila]'`` (TensorFlow); weights: a local SavedModel directory
(``path=DIR`` or ``CAPO_VILA_PATH``).
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from capo.rewards import RewardLoadError

HOW = ("VILA-R is a TensorFlow SavedModel: download google/vila (TensorFlow 2, 'image') from Kaggle Models "
       "(formerly https://tfhub.dev/google/vila/image/1), unpack it and pass path=DIR (or set CAPO_VILA_PATH)")


def write_frame(stream, payload: bytes) -> None:
    stream.write(struct.pack(">Q", len(payload)) + payload)
    stream.flush()


def read_frame(stream) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack(">Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("truncated frame")
    return data


def to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def from_bytes(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


class VILA:
    """``reward(images, prompts)``: VILA-R scores (prompts are not used: an image-only model)."""

    name = "vila"
    bt_transform = "logit"

    def __init__(self, path: str, fake: bool = False):
        args = [sys.executable, "-m", "capo.rewards.vila_worker", str(path)] + (["--fake"] if fake else [])
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CAPO_VILA_GPU", "")}  # TF off the torch GPUs
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        status = self.proc.stdout.read(1)
        msg = read_frame(self.proc.stdout)
        if status != b"O":
            err = (msg or b"").decode() or self.proc.stderr.read().decode()[-2000:]
            raise RewardLoadError(f"vila: the TensorFlow worker failed to start: {err}")

    def __call__(self, images, prompts=None) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"vila: images must be uint8 (B, H, W, 3), got {x.shape}")
        write_frame(self.proc.stdin, to_bytes(x))
        status = self.proc.stdout.read(1)
        data = read_frame(self.proc.stdout)
        if status != b"O" or data is None:
            raise RuntimeError(f"vila worker: {(data or b'').decode() or 'exited'}")
        return from_bytes(data).astype(np.float64)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                write_frame(self.proc.stdin, b"")
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def vila(path=None, device=None, _fake: bool = False, **kwargs) -> VILA:
    """The ``vila`` reward factory. ``_fake`` (tests only) swaps the TensorFlow model for a
    numpy stand-in inside the same worker, to test the process protocol without TensorFlow."""
    if not _fake and importlib.util.find_spec("tensorflow") is None:
        raise RewardLoadError("vila: needs TensorFlow, run in its own worker process: pip install 'capo[vila]'. "
                              + HOW)
    path = path or os.environ.get("CAPO_VILA_PATH")
    if not _fake and (not path or not (Path(path) / "saved_model.pb").is_file()):
        raise RewardLoadError(f"vila: no VILA-R SavedModel at {path!r} (a directory with saved_model.pb). " + HOW)
    return VILA(path or "-", fake=_fake)
