"""DiffusionDB training prompts (the paper trains on "100K prompts from DiffusionDB").

Source: the dataset's text-only metadata table, ``metadata.parquet`` (DiffusionDB 2M, 2M rows,
~1.5M unique prompts) or ``metadata-large.parquet`` (DiffusionDB Large), from
``poloclub/diffusiondb`` on the Hugging Face hub (dataset repo). Columns read: ``prompt``,
``prompt_nsfw`` and ``image_nsfw`` (upstream's dataset card: ``prompt_nsfw`` is the maximum of
Detoxify's ``toxicity`` and ``sexual_explicit`` scores of the prompt, ``image_nsfw`` an NSFW
detector's likelihood for the image, both in [0, 1]).

capo's recipe (the paper states only "100K prompts"; each choice is a parameter):

1. **exact de-duplication** on the prompt text with surrounding whitespace stripped (one
   record per distinct text; a prompt's NSFW scores are the maximum over its rows, so one
   flagged image flags the prompt);
2. **length filter**: ``min_words <= words <= max_words`` (default 3..60: shorter prompts
   carry little to prefer, longer ones overrun CLIP's 77 tokens; words split on whitespace);
3. **NSFW filter**: ``prompt_nsfw <= nsfw_max`` and ``image_nsfw <= nsfw_max`` (default 0.2;
   a missing score counts as flagged);
4. **order**: by ``sha256("capo-diffusiondb/<seed>/" + prompt)``, so the first K records are
   a seeded uniform sample of K, the same on every machine and for any row order of the
   table; ``capo generate --prompts diffusiondb --limit 100000`` is the paper's 100K.

Record ids: ``ddb-`` + the first 16 hex digits of ``sha256(prompt)``: stable across runs,
machines, seeds and table versions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = "poloclub/diffusiondb"
FILES = ("metadata.parquet", "metadata-large.parquet")
MIN_WORDS, MAX_WORDS, NSFW_MAX, SEED = 3, 60, 0.2, 0


class DiffusionDBError(FileNotFoundError):
    pass


def metadata_path(path: str | os.PathLike | None = None) -> Path:
    """A local metadata table: ``path`` (a parquet file or a folder holding one), else the
    hub cache's copy of ``metadata.parquet``; a clear error saying how to fetch it otherwise."""
    if path:
        p = Path(path)
        if p.is_dir():
            found = [p / f for f in FILES if (p / f).is_file()]
            if not found:
                raise DiffusionDBError(f"{p}: no {' or '.join(FILES)} in this folder")
            return found[0]
        if not p.is_file():
            raise DiffusionDBError(f"{p}: no such DiffusionDB metadata table")
        return p
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(REPO, FILES[0], repo_type="dataset")
    except ImportError:
        hit = None
    if isinstance(hit, str) and Path(hit).is_file():
        return Path(hit)
    raise DiffusionDBError(
        f"DiffusionDB's {FILES[0]} is not in the local hub cache. Fetch it (about 0.2 GB, text only) with\n"
        f"  huggingface-cli download {REPO} {FILES[0]} --repo-type dataset\n"
        f"or pass its path: --prompts diffusiondb:/path/to/{FILES[0]}")


def prompt_id(prompt: str) -> str:
    return "ddb-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def select(df, *, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS, nsfw_max: float = NSFW_MAX,
           seed: int = SEED) -> tuple[list[dict], dict]:
    """The recipe (module docstring) on a metadata DataFrame: records in seeded order, and the
    counts each step kept."""
    import numpy as np
    import pandas as pd

    missing = [c for c in ("prompt", "prompt_nsfw", "image_nsfw") if c not in df.columns]
    if missing:
        raise ValueError(f"DiffusionDB metadata lacks column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    counts = {"rows": int(len(df))}
    f = pd.DataFrame({"prompt": df["prompt"].astype("string").str.strip(),
                      "prompt_nsfw": pd.to_numeric(df["prompt_nsfw"], errors="coerce").fillna(np.inf),
                      "image_nsfw": pd.to_numeric(df["image_nsfw"], errors="coerce").fillna(np.inf)})
    f = f[f["prompt"].notna() & (f["prompt"] != "")]
    f = f.groupby("prompt", sort=False, as_index=False).max()  # 1. exact de-duplication; max NSFW over rows
    counts["unique"] = int(len(f))
    words = f["prompt"].str.split().str.len()
    f = f[(words >= min_words) & (words <= max_words)]  # 2. length
    counts["length_ok"] = int(len(f))
    f = f[(f["prompt_nsfw"] <= nsfw_max) & (f["image_nsfw"] <= nsfw_max)]  # 3. NSFW
    counts["nsfw_ok"] = int(len(f))
    prompts = f["prompt"].tolist()
    salt = f"capo-diffusiondb/{seed}/"
    prompts.sort(key=lambda p: hashlib.sha256((salt + p).encode("utf-8")).digest())  # 4. seeded order
    return [{"id": prompt_id(p), "prompt": p} for p in prompts], counts


def load(path: str | os.PathLike | None = None, **recipe) -> list[dict]:
    """Records of the recipe on the metadata table at ``path`` (or the hub cache)."""
    import pandas as pd

    import pyarrow.parquet as pq

    src = metadata_path(path)
    cols = ["prompt", "prompt_nsfw", "image_nsfw"]
    try:
        names = pq.ParquetFile(src).schema_arrow.names
        df = pd.read_parquet(src, columns=[c for c in cols if c in names])
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{src}: cannot read as DiffusionDB metadata ({type(e).__name__}: {e})") from None
    return select(df, **recipe)[0]
