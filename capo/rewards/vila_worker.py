"""The VILA-R worker process (see ``capo.rewards.vila``): TensorFlow only, no torch.

    python -m capo.rewards.vila_worker SAVED_MODEL_DIR [--fake]

Reads batches of uint8 images from stdin, writes their VILA-R scores to stdout. ``--fake``
(tests only) scores with a numpy stand-in (mean brightness / 255) instead of TensorFlow.
"""

import io
import sys

import numpy as np

from capo.rewards.vila import from_bytes, read_frame, to_bytes, write_frame


def load(path: str, fake: bool):
    if fake:
        return lambda x: x.reshape(len(x), -1).mean(1) / 255.0
    import tensorflow as tf
    from PIL import Image

    predict = tf.saved_model.load(path).signatures["serving_default"]
    # VILA-R's serving_default takes one string tensor (the encoded image) and returns
    # {"predictions": [[score]]}; upstream calls it positionally, capo by the input's name, which
    # every TensorFlow version accepts for a signature function
    names = list(predict.structured_input_signature[1])
    if len(names) != 1:
        raise ValueError(f"{path}: serving_default takes {names}, not one encoded image (not VILA-R)")

    def score(x):
        out = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            pred = predict(**{names[0]: tf.constant(buf.getvalue())})["predictions"]
            out.append(float(np.asarray(pred).reshape(-1)[0]))
        return np.asarray(out)

    return score


def main(argv) -> None:
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    try:
        model = load(argv[0], "--fake" in argv)
    except Exception as e:  # missing TensorFlow, a bad SavedModel
        out.write(b"E"), write_frame(out, f"{type(e).__name__}: {e}".encode())
        return
    out.write(b"O"), write_frame(out, b"ready")
    while (frame := read_frame(inp)) is not None and frame:
        try:
            scores = np.asarray(model(from_bytes(frame)), dtype=np.float64)
            out.write(b"O"), write_frame(out, to_bytes(scores))
        except Exception as e:
            out.write(b"E"), write_frame(out, f"{type(e).__name__}: {e}".encode())


if __name__ == "__main__":
    main(sys.argv[1:])
