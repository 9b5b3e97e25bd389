"""VILA-R reward (issue #11): TensorFlow only in a worker process; the missing-extra error
always; the process protocol with the worker's numpy stand-in; the real worker on a
TensorFlow SavedModel with VILA-R's signature when TensorFlow is installed (skipped otherwise;
run with TensorFlow 2.21 in a separate venv: ``PYTHONPATH=. /tmp/tfvenv/bin/python -m pytest
tests/test_vila.py``, the venv holding tensorflow-cpu, numpy, pillow and pytest)."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from capo.rewards import REWARDS, RewardLoadError, load_reward


def test_registered_and_the_missing_pieces_are_named(tmp_path, monkeypatch):
    assert "vila" in REWARDS.names()
    monkeypatch.delenv("CAPO_VILA_PATH", raising=False)
    with pytest.raises(RewardLoadError) as e:
        load_reward("vila", path=str(tmp_path))
    msg = str(e.value)
    if importlib.util.find_spec("tensorflow") is None:
        assert "pip install 'capo[vila]'" in msg
    else:
        assert "saved_model.pb" in msg
    assert "google/vila" in msg


def test_the_worker_never_imports_torch():
    code = "import sys, capo.rewards.vila_worker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_worker_protocol_with_the_numpy_stand_in():
    r = load_reward("vila", _fake=True)
    assert r.bt_transform == "logit"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 16, 12, 3), dtype=np.uint8)
    got = r(x, [""] * 5)
    assert got.dtype == np.float64 and np.allclose(got, x.reshape(5, -1).mean(1) / 255.0)
    assert np.allclose(r(x[2:3], [""]), got[2:3])  # an item's score does not depend on its batch
    with pytest.raises(ValueError, match="uint8"):
        r(np.zeros((2, 4, 4)), ["", ""])
    r.close()
    assert r.proc.poll() == 0  # the worker exits cleanly when told to


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed")
def test_real_worker_with_a_savedmodel_of_the_same_signature(tmp_path):
    import tensorflow as tf

    class Fake(tf.Module):  # VILA-R's signature: encoded image bytes -> {"predictions": score}
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def serve(self, image_bytes):
            img = tf.io.decode_png(image_bytes, channels=3)
            return {"predictions": tf.reshape(tf.reduce_mean(tf.cast(img, tf.float32)) / 255.0, [1, 1])}

    m = Fake()
    tf.saved_model.save(m, str(tmp_path / "vila"), signatures={"serving_default": m.serve})
    r = load_reward("vila", path=str(tmp_path / "vila"))
    x = np.random.default_rng(1).integers(0, 256, size=(3, 8, 13, 3), dtype=np.uint8)
    got = r(x, [""] * 3)  # PNG-encoded by the worker, decoded by the model: lossless
    assert got.dtype == np.float64 and np.allclose(got, x.reshape(3, -1).mean(1) / 255.0, atol=1e-6)
    assert np.allclose(r(x[1:2], [""]), got[1:2])
    r.close()
    assert r.proc.poll() == 0
