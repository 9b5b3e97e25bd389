"""Write examples/rewards_demo.csv: a small synthetic rewards table for `capo pairs`.

50 prompts x 16 samples with three correlated rewards on their native scales: ``mps``
(a BT logit, identity transform), ``vqa`` (a probability, logit transform) and
``aesthetic`` (a 1-10 score, temperature transform). Deterministic from the seed.

    python examples/make_rewards_demo.py
"""

from pathlib import Path

import numpy as np
import pandas as pd


def main(P: int = 50, N: int = 16, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=(P, N))  # a latent "true" quality each reward sees partly
    align = rng.normal(size=(P, N))
    rows = {
        "prompt_id": np.repeat([f"demo-{p:03d}" for p in range(P)], N),
        "sample_id": np.tile(np.arange(N), P),
        "mps": (11.0 + 0.8 * quality + 0.3 * align + 0.3 * rng.normal(size=(P, N))).reshape(-1),
        "vqa": (1 / (1 + np.exp(-(1.5 + align + 0.2 * quality)))).reshape(-1),
        "aesthetic": (6.0 + 0.6 * quality - 0.3 * align + 0.3 * rng.normal(size=(P, N))).reshape(-1),
    }
    out = Path(__file__).with_name("rewards_demo.csv")
    pd.DataFrame(rows).round(6).to_csv(out, index=False)
    print(f"wrote {out} ({P * N} rows)")


if __name__ == "__main__":
    main()
