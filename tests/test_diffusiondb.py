"""DiffusionDB prompts (issue #11): the recipe by hand on a fixture parquet in the real format."""

import hashlib

import pandas as pd
import pytest

from capo.datasets import diffusiondb
from capo.prompts import load_prompts


@pytest.fixture
def metadata(tmp_path):
    rows = [  # prompt, prompt_nsfw, image_nsfw (DiffusionDB's metadata.parquet columns, plus two others)
        ("a castle on a hill at dawn", 0.01, 0.02),
        ("  a castle on a hill at dawn ", 0.05, 0.30),  # duplicate after strip; its image is flagged
        ("portrait of a cat wearing a hat", 0.02, 0.01),
        ("portrait of a cat wearing a hat", 0.03, 0.05),  # exact duplicate, clean
        ("red", 0.0, 0.0),  # too short
        ("word " * 70, 0.0, 0.0),  # too long
        ("an explicit prompt about things", 0.9, 0.0),  # NSFW prompt
        ("a quiet harbour with fishing boats", 0.1, None),  # missing image score: flagged
        ("a watercolor of mountains and a lake", 0.19, 0.2),  # at the threshold: kept
        ("", 0.0, 0.0),  # blank
    ]
    df = pd.DataFrame(rows, columns=["prompt", "prompt_nsfw", "image_nsfw"])
    df["image_name"], df["seed"] = [f"{i}.png" for i in range(len(df))], range(len(df))
    path = tmp_path / "metadata.parquet"
    df.to_parquet(path)
    return path


def test_recipe_by_hand(metadata):
    records, counts = diffusiondb.select(pd.read_parquet(metadata))
    kept = {"portrait of a cat wearing a hat", "a watercolor of mountains and a lake"}
    assert {r["prompt"] for r in records} == kept
    # 10 rows -> 7 distinct non-blank texts -> 5 of 3..60 words -> 2 with both scores <= 0.2
    assert counts == {"rows": 10, "unique": 7, "length_ok": 5, "nsfw_ok": 2}
    order = sorted(kept, key=lambda p: hashlib.sha256(f"capo-diffusiondb/0/{p}".encode()).digest())
    assert [r["prompt"] for r in records] == order
    assert records[0]["id"] == "ddb-" + hashlib.sha256(order[0].encode()).hexdigest()[:16]


def test_order_is_seeded_and_independent_of_row_order(metadata):
    df = pd.read_parquet(metadata)
    a, _ = diffusiondb.select(df, nsfw_max=1.0)
    b, _ = diffusiondb.select(df.iloc[::-1], nsfw_max=1.0)
    c, _ = diffusiondb.select(df, nsfw_max=1.0, seed=1)
    assert a == b and sorted(map(str, a)) == sorted(map(str, c))
    # with the NSFW filter at 1: the castle and the explicit prompt come back; the harbour has no score
    assert len(a) == 4 and "a quiet harbour with fishing boats" not in {r["prompt"] for r in a}


def test_named_spec_and_limit(metadata):
    recs = load_prompts(f"diffusiondb:{metadata}")
    assert len(recs) == 2 and recs[0]["prompt_id"].startswith("ddb-")
    assert load_prompts(f"diffusiondb:{metadata.parent}", limit=1) == recs[:1]  # a folder holding it works too


def test_missing_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download poloclub/diffusiondb metadata.parquet"):
        diffusiondb.metadata_path(None)
    with pytest.raises(FileNotFoundError, match="no metadata.parquet or metadata-large.parquet"):
        diffusiondb.metadata_path(tmp_path)
    bad = tmp_path / "metadata.parquet"
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match="cannot read as DiffusionDB metadata"):
        diffusiondb.load(bad)
    pd.DataFrame({"prompt": ["a b c"]}).to_parquet(tmp_path / "m2.parquet")
    with pytest.raises(ValueError, match="lacks column"):
        diffusiondb.load(tmp_path / "m2.parquet")
