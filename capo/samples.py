"""A samples directory, as data: what ``capo generate`` writes and every later stage reads.

The per-item seeds, the image folders (GenEval's layout), PNG writes, shard completion, the
samples index and images read back, and the latent cache. Data-layer code: it imports nothing
above ``capo.artifacts``, so evaluation, the shapes world and datasets use it without reaching
up into the stages that write samples.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from capo import artifacts


def item_seed(seed: int, prompt_id: str, k: int) -> int:
    """The seed of image ``k`` of prompt ``prompt_id``: 63 bits of sha256("seed/prompt_id/k")."""
    h = hashlib.sha256(f"{seed}/{prompt_id}/{k}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def image_folders(records: list[dict]) -> list[str]:
    """Each prompt's image folder, ``<i:05d>`` as upstream GenEval numbers them: ``i`` is the
    record's line in the upstream file (``index``, which the named sets carry) so a subset keeps
    upstream's numbers; the position in the list when the records carry no unique indices."""
    idx = [r.get("index") for r in records]
    if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx) and len(set(idx)) == len(idx):
        return [f"{i:05d}" for i in idx]
    return [f"{p:05d}" for p in range(len(records))]


def shard_done(out: Path, s: int) -> bool:
    return (out / "cache" / f"shard-{s:05d}.json").is_file()


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with artifacts.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def load_samples(samples) -> tuple[dict, "object"]:
    """A complete samples directory's manifest and index table (clear errors otherwise)."""
    d = Path(samples)
    if not (d / artifacts.MANIFEST).is_file():
        raise artifacts.ArtifactError(f"{d}: not a samples directory (no {artifacts.MANIFEST}); run `capo generate` first")
    m = artifacts.read_json(d / artifacts.MANIFEST)
    if m.get("stage") not in ("generate", "import"):
        raise artifacts.ArtifactError(f"{d}: holds a {m.get('stage')!r} run, not generated samples")
    if not m.get("complete"):
        raise artifacts.ArtifactError(f"{d}: generation is unfinished; re-run the same `capo generate` to resume it")
    return m, artifacts.read_table(artifacts.verify(d, "index.parquet", "the samples index"))


def load_images(root: Path, paths) -> np.ndarray:
    """uint8 (B, H, W, 3) images; a missing or unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for rel in paths:
        f = root / rel
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB")))
        except FileNotFoundError:
            raise artifacts.ArtifactError(f"{f}: image file missing (re-run `capo generate` on the same "
                                          "directory with --overwrite to regenerate it)") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise artifacts.ArtifactError(f"{f}: corrupt image ({type(e).__name__}: {e})") from None
    return np.stack(out)


class LatentCache:
    """Cached latents and text embeddings of a samples directory, read lazily: each shard is
    memory-mapped (``safetensors.safe_open``) and only the rows a batch needs are read."""

    OPEN_SHARDS = 16  # memory-mapped shard handles kept open per process

    def __init__(self, samples: Path):
        self.samples = samples
        self.where: dict[tuple[str, int], tuple[int, int]] = {}  # (prompt_id, sample_id) -> (shard, row)
        self.prompt_where: dict[str, tuple[int, int]] = {}
        self.records: dict[int, dict | None] = {}  # shard -> integrity record of its cached tensors
        for f in sorted((samples / "cache").glob("shard-*.json")):
            meta = artifacts.read_json(f)
            s = meta["shard"]
            self.records[s] = meta.get("file")
            if not (samples / "cache" / f"shard-{s:05d}.safetensors").is_file():
                raise artifacts.ArtifactError(f"{samples}: shard {s} has no cached latents; generate with cache=true")
            for i, r in enumerate(meta["rows"]):
                self.where[(r["prompt_id"], int(r["sample_id"]))] = (s, i)
            for r in meta["rows"]:
                self.prompt_where.setdefault(r["prompt_id"], (s, meta["prompts"].index(r["prompt_idx"])))
        self._open: dict[int, object] = {}
        self._checked: set[int] = set()

    def __getstate__(self):  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}

    def _shard(self, s: int):
        if s not in self._open:
            from safetensors import safe_open

            f = self.samples / "cache" / f"shard-{s:05d}.safetensors"
            if s not in self._checked:  # once per shard and process
                artifacts.check_file(f, self.records.get(s), f"cached latents of shard {s} of {self.samples}",
                                     f"rerun the `capo generate` that wrote {self.samples} with --overwrite")
                self._checked.add(s)
            if len(self._open) >= self.OPEN_SHARDS:
                self._open.pop(next(iter(self._open)))
            self._open[s] = safe_open(str(f), framework="pt")
        return self._open[s]

    def _rows(self, name: str, where) -> "torch.Tensor":
        import torch

        return torch.stack([self._shard(s).get_slice(name)[i] for s, i in where])

    def latents(self, keys) -> "torch.Tensor":
        missing = [k for k in keys if k not in self.where]
        if missing:
            k = missing[0]
            raise artifacts.ArtifactError(f"{self.samples}: no cached latent for prompt_id={k[0]!r}, sample_id={k[1]}")
        return self._rows("latents", [self.where[k] for k in keys])

    def text(self, prompt_ids) -> tuple["torch.Tensor", "torch.Tensor"]:
        where = [self.prompt_where[p] for p in prompt_ids]
        return self._rows("hidden", where), self._rows("pooled", where)
