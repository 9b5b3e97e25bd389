"""Pick-a-Pic v2 labelled pairs -> capo's samples + pairs format (Table 4's Diffusion-DPO baseline).

Source: the dataset's parquet shards (``yuvalkirstain/pickapic_v2``, ``data/train-*.parquet``),
one row per human comparison with the columns capo reads: ``caption``, ``jpg_0`` / ``jpg_1``
(encoded image bytes), ``label_0`` / ``label_1`` (1 / 0 for a preference, 0.5 / 0.5 for a tie)
and ``ranking_id`` (the comparison's id). As Diffusion-DPO does, rows whose ``label_0`` is not
0 or 1 (ties, unlabelled rows) are dropped; the preferred image is ``jpg_0`` when
``label_0 == 1``, else ``jpg_1``.

``import_pairs`` writes, for the model that will be trained (its VAE and text encoders):

* ``<out>/samples``: a samples directory like ``capo generate``'s (manifest stage ``import``
  naming the source files and the model the latents were encoded for; ``prompts.jsonl``, one
  record per comparison, ``prompt_id = pap-<ranking_id>``; ``images/<p>/samples/0000.png``
  (preferred) and ``0001.png`` (the other) after the resize; ``index.parquet``; the cache
  shards of latents and text embeddings ``capo train`` reads);
* ``<out>/pairs``: ``pairs.parquet`` (``pos_sample_id`` 0, ``neg_sample_id`` 1, ``target_gap``
  1: DPO ignores it) with a ``capo pairs`` manifest (selector ``human``).

Images are converted to RGB, resized so the shorter side is the model's resolution (bicubic)
and center-cropped (Diffusion-DPO crops randomly per step and flips; capo caches one
deterministic crop so training is reproducible). Work is cut into shards of ``shard_rows``
comparisons; a killed import resumes at the first unfinished shard. A corrupt image is an
error naming the file, the row and the ranking id.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np

from capo import artifacts
from capo import models
from capo.samples import shard_done, write_png

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "ranking_id")


class PickapicError(ValueError):
    pass


def read_rows(paths: list[str], limit: int | None = None):
    """The labelled, untied comparisons of the parquet shards, in file then row order, as a
    DataFrame with ``file`` and ``row`` columns; and the counts of what was dropped."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames, counts = [], {"rows": 0, "ties_or_unlabelled": 0}
    for p in paths:
        try:
            names = pq.ParquetFile(p).schema_arrow.names
        except FileNotFoundError:
            raise PickapicError(f"{p}: no such Pick-a-Pic parquet file") from None
        except Exception as e:
            raise PickapicError(f"{p}: cannot read as parquet ({type(e).__name__}: {e})") from None
        if missing := [c for c in COLUMNS if c not in names]:
            raise PickapicError(f"{p}: not a Pick-a-Pic v2 shard: missing column(s) {', '.join(missing)}")
        f = pd.read_parquet(p, columns=list(COLUMNS))
        f["file"], f["row"] = str(p), np.arange(len(f))
        counts["rows"] += len(f)
        keep = f["label_0"].isin([0, 1]) & (f["label_0"] + f["label_1"] == 1)
        counts["ties_or_unlabelled"] += int((~keep).sum())
        frames.append(f[keep])
        if limit is not None and sum(map(len, frames)) >= limit:
            break
    if not frames:
        raise PickapicError("no Pick-a-Pic files given")
    df = pd.concat(frames, ignore_index=True)
    if limit is not None:
        df = df.iloc[:limit]
    dup = df["ranking_id"].astype(str).duplicated()
    if dup.any():
        raise PickapicError(f"ranking_id {df['ranking_id'][dup].iloc[0]!r} appears more than once across the files")
    counts["pairs"] = int(len(df))
    return df.reset_index(drop=True), counts


def decode(data: bytes, size: tuple[int, int], where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB (H, W, 3) at ``size`` (shorter side resized, center crop)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            H, W = size
            s = max(H / im.height, W / im.width)
            im = im.resize((max(W, round(im.width * s)), max(H, round(im.height * s))), Image.BICUBIC)
            left, top = (im.width - W) // 2, (im.height - H) // 2
            return np.array(im.crop((left, top, left + W, top + H)))  # a writable copy
    except Exception as e:
        raise PickapicError(f"{where}: corrupt or unreadable image ({type(e).__name__}: {e})") from None


def import_pairs(paths: list[str], model: str, out, limit: int | None = None, shard_rows: int = 64,
                 batch: int = 16, overwrite: bool = False) -> dict:
    """Pick-a-Pic comparisons -> ``<out>/samples`` and ``<out>/pairs`` (module docstring)."""
    import pandas as pd

    t0 = time.time()
    out = Path(out)
    df, counts = read_rows(paths, limit)
    config = {"source": "pickapic", "limit": limit, "shard_rows": shard_rows}
    inputs = {"model": {"path": model, "sha256": models.model_fingerprint(model)}}
    inputs |= {f"pickapic_{i}": p for i, p in enumerate(paths)}
    manifest = artifacts.make_manifest("import", config, inputs)
    samples = out / "samples"
    if artifacts.existing_run(samples, manifest, overwrite) != "complete":
        m = models.load_model(model)  # inputs load before anything is written
        if not artifacts.prepare_out_dir(samples, manifest, overwrite):
            _write_samples(df, m, samples, shard_rows, batch)
            index = pd.concat([pd.DataFrame(artifacts.read_json(f)["rows"])
                               for f in sorted((samples / "cache").glob("shard-*.json"))], ignore_index=True)
            artifacts.write_table(index, samples / "index.parquet")
            artifacts.finish(samples, manifest, files=["index.parquet"],
                             counts={**counts, "prompts": len(df), "images": len(index)},
                             seconds=round(time.time() - t0, 3))
    sm = artifacts.read_json(samples / artifacts.MANIFEST)
    pm = artifacts.make_manifest("pairs", {"selector": "human", "source": "pickapic", "rewards": []},
                                 {"samples": {"path": str(samples), "sha256": sm["run_key"]}})
    pm["samples"] = {"path": str(samples), "sha256": sm["run_key"]}
    pairs = out / "pairs"
    if not artifacts.prepare_out_dir(pairs, pm, overwrite):
        ids = [f"pap-{r}" for r in df["ranking_id"].astype(str)]
        table = pd.DataFrame({"prompt_id": ids, "draw": 0, "pos_sample_id": 0, "neg_sample_id": 1, "target_gap": 1.0})
        artifacts.write_table(table, pairs / "pairs.parquet")
        artifacts.finish(pairs, pm, files=["pairs.parquet"], rewards=[], transforms={},
                         counts={"prompts": len(table), "pairs": len(table), **counts})
    return {"samples": str(samples), "pairs": str(pairs), "counts": counts, "seconds": round(time.time() - t0, 3)}


def _write_samples(df, model, samples: Path, shard_rows: int, batch: int) -> None:
    """The samples directory's prompts, images and cache shards (resumes at the first unfinished shard)."""
    import torch
    from safetensors.torch import save_file

    if not (samples / "prompts.jsonl").is_file():
        artifacts.write_text(samples / "prompts.jsonl", "".join(
            json.dumps({"prompt_id": f"pap-{r.ranking_id}", "prompt": str(r.caption), "prompt_idx": i,
                        "source": {"file": r.file, "row": int(r.row)}}, ensure_ascii=False) + "\n"
            for i, r in enumerate(df.itertuples())))
    size = tuple(model.resolution)
    for s in range(math.ceil(len(df) / shard_rows)):
        if shard_done(samples, s):
            continue
        part = df.iloc[s * shard_rows:(s + 1) * shard_rows]
        images, rows = [], []
        for i, r in zip(part.index, part.itertuples()):
            where = f"{r.file} row {r.row} (ranking_id {r.ranking_id})"
            pos, neg = (r.jpg_0, r.jpg_1) if r.label_0 == 1 else (r.jpg_1, r.jpg_0)
            for k, data in enumerate((pos, neg)):
                img = decode(data["bytes"] if isinstance(data, dict) else data, size, f"{where}, image {k}")
                rel = f"images/{i:05d}/samples/{k:04d}.png"
                write_png(samples / rel, img)
                images.append(img)
                rows.append({"prompt_id": f"pap-{r.ranking_id}", "sample_id": k, "prompt_idx": int(i), "seed": -1,
                             "path": rel, "prompt": str(r.caption)})
        with torch.no_grad():
            lat = torch.cat([model.encode_images(np.stack(images[j:j + batch])).cpu()
                             for j in range(0, len(images), batch)])
            hidden, pooled = model.encode_prompts([str(c) for c in part["caption"]])
        f = samples / "cache" / f"shard-{s:05d}.safetensors"
        with artifacts.atomic_path(f) as tmp:
            save_file({"latents": lat.float().contiguous(), "hidden": hidden.float().cpu().contiguous(),
                       "pooled": pooled.float().cpu().contiguous()}, str(tmp))
        artifacts.write_json(samples / "cache" / f"shard-{s:05d}.json",
                             {"shard": s, "prompts": [int(i) for i in part.index], "rows": rows,
                              "file": artifacts.file_record(f)})
