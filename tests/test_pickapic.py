"""Pick-a-Pic v2 pairs (issue #11): a fixture parquet in the real format -> samples + pairs,
pairs by hand (ties dropped, both label orders), a corrupt image named, DPO trains on them."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from capo import artifacts
from capo.datasets import pickapic
from helpers import jpeg_bytes, write_shard


@pytest.fixture
def shard(tmp_path):
    return write_shard(tmp_path / "train-00000-of-00001.parquet")


def test_rows_ties_dropped_and_errors(shard, tmp_path):
    df, counts = pickapic.read_rows([str(shard)])
    assert list(df["ranking_id"]) == [11, 12, 14] and counts == {"rows": 4, "ties_or_unlabelled": 1, "pairs": 3}
    assert len(pickapic.read_rows([str(shard)], limit=2)[0]) == 2
    pd.DataFrame({"caption": ["x"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(pickapic.PickapicError, match="missing column"):
        pickapic.read_rows([str(tmp_path / "other.parquet")])
    with pytest.raises(pickapic.PickapicError, match="no such"):
        pickapic.read_rows([str(tmp_path / "none.parquet")])
    # resize: shorter side to the size, center crop; a solid colour stays that colour
    img = pickapic.decode(jpeg_bytes((250, 0, 0), size=(64, 32)), (16, 16), "x")
    assert img.shape == (16, 16, 3) and abs(int(img[..., 0].mean()) - 250) < 6 and img[..., 2].mean() < 6


def test_import_pairs_by_hand_then_dpo_trains(tiny_chain, shard, tmp_path):
    from capo.stages import train

    base = str(tiny_chain / "base")
    r = CliRunner().invoke(__import__("cli").main, ["import", "pickapic", str(shard), "--model", base,
                                                   "--out", str(tmp_path / "pap")])
    assert r.exit_code == 0, r.output
    assert "3 pairs (1 ties / unlabelled dropped of 4)" in r.output
    samples, pairs = tmp_path / "pap" / "samples", tmp_path / "pap" / "pairs"
    t = artifacts.read_table(pairs / "pairs.parquet")
    assert list(t["prompt_id"]) == ["pap-11", "pap-12", "pap-14"]
    assert (t["pos_sample_id"] == 0).all() and (t["neg_sample_id"] == 1).all()
    idx = artifacts.read_table(samples / "index.parquet")
    red = lambda pid, k: np.asarray(Image.open(samples / idx[(idx.prompt_id == pid) & (idx.sample_id == k)]  # noqa: E731
                                               .path.iloc[0]))[..., 0].mean()
    assert red("pap-11", 0) > 200 and red("pap-11", 1) < 50  # label_0 = 1: jpg_0 (red) is the preferred
    assert red("pap-12", 0) < 50 and red("pap-12", 1) > 200  # label_0 = 0: jpg_1 (blue) is the preferred
    # the cached latents are the model's encoding of those images
    from capo.models import load_model
    from capo.stages.train import LatentCache

    m = load_model(base)
    lat = LatentCache(samples).latents([("pap-12", 0)])
    img = np.array(Image.open(samples / idx.path.iloc[2]))[None]
    # (batched float arithmetic differs by ~1e-5 with the batch and thread count; another image is ~1 away)
    assert np.allclose(lat.numpy(), m.encode_images(img).numpy(), atol=1e-4)
    other = np.array(Image.open(samples / idx.path.iloc[3]))[None]
    assert not np.allclose(lat.numpy(), m.encode_images(other).numpy(), atol=1e-2)
    res = train.run(train.TrainConfig(model=base, pairs=str(pairs), out=str(tmp_path / "t"), objective="dpo",
                                      steps=2, batch_size=2, lr=1e-3, checkpoint_every=2, quiet=True))
    assert res["complete"] and res["counts"]["prompts_with_pairs"] == 3
    # another model may not train on latents encoded for this one
    from conftest import build_tiny

    other = build_tiny(tmp_path / "sd3", kind="sd3-like")
    with pytest.raises(artifacts.ArtifactError, match="not of"):
        train.run(train.TrainConfig(model=str(other), pairs=str(pairs), out=str(tmp_path / "t3"), objective="dpo",
                                    steps=1, quiet=True))
    pickapic.import_pairs([str(shard)], str(other), tmp_path / "pap3")  # encoded for the SD3-like model: trains
    res3 = train.run(train.TrainConfig(model=str(other), pairs=str(tmp_path / "pap3" / "pairs"),
                                       out=str(tmp_path / "t3"), objective="dpo", steps=2, batch_size=2, lr=1e-3,
                                       checkpoint_every=2, quiet=True))
    assert res3["complete"]


def test_corrupt_image_is_named(tiny_chain, tmp_path):
    df = pd.DataFrame([("a red circle", b"\xff\xd8 not a jpeg", jpeg_bytes((0, 0, 250)), 1.0, 0.0, 21)],
                      columns=["caption", "jpg_0", "jpg_1", "label_0", "label_1", "ranking_id"])
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    r = CliRunner().invoke(__import__("cli").main, ["import", "pickapic", str(path), "--model",
                                                   str(tiny_chain / "base"), "--out", str(tmp_path / "pap")])
    assert r.exit_code != 0
    assert f"{path} row 0 (ranking_id 21), image 0: corrupt or unreadable image" in r.output


@pytest.mark.parametrize("builder", ["build_sdxl", "build_sd3"])
def test_dpo_trains_on_pickapic_with_the_real_classes(shard, tmp_path, builder):
    """Table 4's baseline on the real pipelines (tiny random SDXL / SD3 of the diffusers classes)."""
    import helpers as B
    from capo.stages import train

    model = str(getattr(B, builder)(tmp_path / "model"))
    got = pickapic.import_pairs([str(shard)], model, tmp_path / "pap")
    assert got["counts"]["pairs"] == 3
    res = train.run(train.TrainConfig(model=model, pairs=got["pairs"], out=str(tmp_path / "t"), objective="dpo",
                                      steps=2, batch_size=2, lr=1e-3, checkpoint_every=2, quiet=True))
    assert res["complete"] and res["counts"]["prompts_with_pairs"] == 3
