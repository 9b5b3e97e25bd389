"""Each kind of artifact a stage reads back, truncated in turn: the reading stage stops with
an error naming the file, what it belongs to and how to recover (issue #10)."""

import pytest

from capo import artifacts
from capo.models import ModelLoadError, load_model
from capo.stages import pairs, score, train


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def train_cfg(root, out, **kw):
    # samples= the copy's own (the pairs' manifest names the original chain's samples directory)
    return train.TrainConfig(model=str(root / "base"), pairs=str(root / "pairs-frs"), samples=str(root / "samples"),
                             out=str(out), steps=2,
                             batch_size=2, lr=1e-3, checkpoint_every=2, keep_checkpoints=0, quiet=True, **kw)


def test_truncated_score_table_stops_pairs(chain_copy, tmp_path):
    t = chain_copy / "samples" / "rewards" / "toy-bright" / "scores.parquet"
    truncate(t)
    with pytest.raises(artifacts.ArtifactError, match=r"scores.parquet: \d+ bytes, but \d+ were written \(a reward "
                                                      r"table: truncated or replaced\); rerun the score run"):
        pairs.run(pairs.PairsConfig(rewards_tables=[str(t)], out=str(tmp_path / "p")))


def test_truncated_samples_index_stops_score(chain_copy, tmp_path):
    truncate(chain_copy / "samples" / "index.parquet")
    with pytest.raises(artifacts.ArtifactError, match=r"index.parquet: .*the samples index.*rerun the generate run"):
        score.run(score.ScoreConfig(samples=str(chain_copy / "samples"), rewards=["toy-red"], out=str(tmp_path / "s")))


@pytest.mark.parametrize("name,what", [("pairs.parquet", "the training pairs"),
                                       ("candidates.parquet", "the FRS candidates")])
def test_truncated_pairs_stop_train(chain_copy, tmp_path, name, what):
    truncate(chain_copy / "pairs-frs" / name)
    with pytest.raises(artifacts.ArtifactError, match=rf"{name}: .*\({what}: truncated.*rerun the pairs run"):
        train.run(train_cfg(chain_copy, tmp_path / "t"))


def test_truncated_latent_cache_stops_train(chain_copy, tmp_path):
    shards = sorted((chain_copy / "samples" / "cache").glob("shard-*.safetensors"))
    assert len(shards) >= 2
    for shard in shards:  # whichever shard the first batch reads
        truncate(shard, 0.9)
    with pytest.raises(artifacts.ArtifactError, match=r"shard-\d+.safetensors: .*cached latents of shard \d+.*"
                                                      r"rerun the `capo generate`.*--overwrite"):
        train.run(train_cfg(chain_copy, tmp_path / "t"))


def test_truncated_or_altered_checkpoint_weights_refuse_to_load(chain_copy, tmp_path):
    train.run(train_cfg(chain_copy, tmp_path / "t"))
    final = tmp_path / "t" / "final"
    assert load_model(str(final)) is not None
    w = final / "denoiser.safetensors"
    good = w.read_bytes()
    truncate(w)
    with pytest.raises(ModelLoadError, match=r"denoiser.safetensors: \d+ bytes, but \d+ were written \(the weights of "
                                             r"checkpoint .*rerun the train or merge command"):
        load_model(str(final))
    w.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        load_model(str(final))
    # a checkpoint written before integrity records existed: safetensors' own error, named
    meta = artifacts.read_json(final / "capo_checkpoint.json")
    del meta["files"]
    artifacts.write_json(final / "capo_checkpoint.json", meta)
    truncate(w)
    with pytest.raises(ModelLoadError, match="cannot read the checkpoint's weights"):
        load_model(str(final))
