"""Image folders capo did not write: read them in the benchmarks' own layouts.

``capo eval images=DIR`` and ``capo compare`` score images from anywhere. ``read_image_set``
reads a folder (or a table) into one list of ``(prompt_id, sample_id, path)`` rows and the prompt
records they belong to, checking everything before any model loads: missing or extra images,
unknown prompts and unreadable files are named together in one ``ImageSetError``.

Layouts (``detect_layout``):

==============  ==========================================================================
``capo``        a ``capo generate`` directory (``manifest.json``, ``index.parquet``)
``geneval``     upstream GenEval (``generation/diffusers_generate.py``): ``<i:05d>/metadata.jsonl``
                (the line ``i`` of ``evaluation_metadata.jsonl``) and ``<i:05d>/samples/<k>.png``
                (``evaluate_images.py`` reads digit folders and files matching ``\\d+\\.png``)
``t2i-compbench`` upstream T2I-CompBench: ``samples/<prompt>_<k:06d>.png`` (or the files at the
                top; ``capo.eval.t2i_compbench.parse_sample_name``: the prompt before the ``_``)
``dpg-bench``   upstream DPG-Bench (ELLA): ``<prompt file stem>.png``, one 2x2 grid per prompt
``table``       a ``.jsonl`` or ``.csv`` file with ``prompt`` and ``path`` columns (paths
                relative to the file), optional ``prompt_id`` (default: the prompt) and
                ``sample_id`` (default: the image's rank among its prompt's rows)
==============  ==========================================================================

``to_samples_dir`` turns an image set into a capo samples directory of stage ``import``
(index paths point at the original files; nothing is copied), which every capo stage that
reads samples accepts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from capo import artifacts
from capo.artifacts import sha256_file
from capo.eval.dpg_bench import PIC_NUM, write_grid_folder
from capo.eval.geneval import CAPO_RECORD_KEYS, upstream_metadata
from capo.eval.t2i_compbench import parse_sample_name
from capo.eval.t2i_compbench import write_upstream_layout
from capo.samples import image_folders
from capo.samples import load_samples

LAYOUTS = ("capo", "geneval", "t2i-compbench", "dpg-bench", "table")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_MAX_LISTED = 8


class ImageSetError(ValueError):
    """A folder of images that cannot be evaluated as it is; the message lists every problem."""


@dataclass
class ImageSet:
    layout: str
    root: Path
    records: list[dict]  # prompt records: prompt_id, prompt and the benchmark's metadata
    rows: list[dict] = field(default_factory=list)  # prompt_id, sample_id, path (absolute)

    @property
    def n_images(self) -> int:
        return len(self.rows)


def _listing(kind: str, items: Sequence[Any]) -> str:
    items = list(items)
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {kind}: " + ", ".join(str(i) for i in items[:_MAX_LISTED]) + more


def _raise_if(root: Path, layout: str, problems: dict[str, list]) -> None:
    lines = [_listing(k, v) for k, v in problems.items() if v]
    if lines:
        raise ImageSetError(f"{root} ({layout} layout) cannot be evaluated:\n  - " + "\n  - ".join(lines))


def detect_layout(path: str | Path) -> str:
    """Which of ``LAYOUTS`` a path holds (an error naming what was looked for otherwise)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in (".jsonl", ".csv"):
            return "table"
        raise ImageSetError(f"{p}: a file of images must be a .jsonl or .csv table with prompt and path columns")
    if not p.is_dir():
        raise ImageSetError(f"{p}: no such directory")
    if (p / "manifest.json").is_file() and (p / "index.parquet").is_file():
        return "capo"
    subdirs = [d for d in p.iterdir() if d.is_dir()]
    if any(d.name.isdigit() and (d / "metadata.jsonl").is_file() for d in subdirs):
        return "geneval"
    flat = p / "samples" if (p / "samples").is_dir() else p
    names = [f.name for f in flat.iterdir() if f.is_file()]
    if any(re.fullmatch(r".+_\d{6}\.(png|jpg|jpeg)", n, re.I) for n in names):
        return "t2i-compbench"
    if any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
        return "dpg-bench"
    raise ImageSetError(
        f"{p}: not an image folder capo can read: expected a capo samples directory, GenEval's "
        "<00000>/metadata.jsonl + samples/, T2I-CompBench's samples/<prompt>_<000000>.png, "
        "DPG-Bench's <prompt id>.png, or a .jsonl/.csv table of prompt, path")


def _unreadable(paths: Sequence[Path]) -> list[str]:
    from PIL import Image

    bad = []
    for f in paths:
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            bad.append(f"{f.name} ({type(e).__name__})")
    return bad


def read_image_set(path: str | Path, *, prompts: list[dict] | None = None, n: int | None = None,
                   layout: str | None = None, check_images: bool = True) -> ImageSet:
    """Read a folder or table of images (see the module doc).

    ``prompts``: the benchmark's records the images must belong to (each with ``id`` or
    ``prompt_id`` and ``prompt``); a prompt outside them is an error, and, with ``n``, so is a
    prompt of them with other than ``n`` images. ``check_images`` opens every file
    (``PIL.Image.verify``) so that an unreadable one is named before any model loads.
    """
    root = Path(path)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise ImageSetError(f"unknown image layout {layout!r}; known: {', '.join(LAYOUTS)}")
    reader = {"capo": _read_capo, "geneval": _read_geneval, "t2i-compbench": _read_compbench,
              "dpg-bench": _read_dpg, "table": _read_table}[layout]
    problems: dict[str, list] = {"unknown prompts": [], "missing images": [], "extra files": [],
                                 "unreadable images": [], "malformed entries": []}
    known = None
    if prompts is not None:
        known = {}
        for r in prompts:
            known[str(r.get("prompt_id", r.get("id", r["prompt"])))] = r
    image_set = reader(root, known, problems)
    if n is not None:
        counts: dict[str, int] = {}
        for row in image_set.rows:
            counts[row["prompt_id"]] = counts.get(row["prompt_id"], 0) + 1
        for r in image_set.records:
            got = counts.get(r["prompt_id"], 0)
            if got != n:
                problems["missing images" if got < n else "extra files"].append(
                    f"{r['prompt']!r} has {got} image(s), expected {n}")
    if check_images and image_set.layout != "capo":
        problems["unreadable images"] += _unreadable([Path(r["path"]) for r in image_set.rows])
    _raise_if(root, layout, problems)
    if not image_set.rows:
        raise ImageSetError(f"{root} ({layout} layout): no images")
    return image_set


def _record(known: dict | None, prompt_id: str, prompt: str, problems, extra: dict | None = None) -> dict | None:
    if known is None:
        return {**(extra or {}), "prompt_id": prompt_id, "prompt": prompt}
    rec = known.get(prompt_id)
    if rec is None:
        rec = next((r for r in known.values() if r["prompt"] == prompt), None)
    if rec is None:
        problems["unknown prompts"].append(repr(prompt))
        return None
    return {**rec, "prompt_id": str(rec.get("prompt_id", rec.get("id", prompt_id)))}


def _read_capo(root: Path, known, problems) -> ImageSet:
    _, index = load_samples(root)
    recs = [json.loads(line) for line in (root / "prompts.jsonl").read_text(encoding="utf-8").splitlines() if line]
    records, remap = [], {}
    for r in recs:
        rec = _record(known, str(r["prompt_id"]), r["prompt"], problems, r)
        if rec is not None:
            remap[str(r["prompt_id"])] = rec["prompt_id"]
            records.append(rec)
    rows = [{"prompt_id": remap[str(p)], "sample_id": int(s), "path": str((root / rel).resolve())}
            for p, s, rel in zip(index["prompt_id"], index["sample_id"], index["path"]) if str(p) in remap]
    problems["missing images"] += [r["path"] for r in rows if not Path(r["path"]).is_file()]
    return ImageSet("capo", root, records, rows)


def _read_geneval(root: Path, known, problems) -> ImageSet:
    records, rows = [], []
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        if not d.name.isdigit():
            problems["extra files"].append(d.name + "/")
            continue
        meta_file = d / "metadata.jsonl"
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or "prompt" not in meta or "tag" not in meta:
                raise ValueError("needs prompt and tag")
        except FileNotFoundError:
            problems["malformed entries"].append(f"{d.name}/metadata.jsonl missing")
            continue
        except ValueError as e:
            problems["malformed entries"].append(f"{d.name}/metadata.jsonl ({e})")
            continue
        prompt_id = d.name
        if known is not None:
            rec = known.get(prompt_id)
            if rec is None or upstream_metadata(rec) != upstream_metadata(meta):
                problems["unknown prompts"].append(f"{d.name}: {meta['prompt']!r}" + (
                    " (differs from the benchmark's line of that number)" if rec is not None else ""))
                continue
            rec = {**rec, "prompt_id": prompt_id}
        else:
            rec = {**{k: v for k, v in meta.items() if k not in CAPO_RECORD_KEYS}, "id": prompt_id,
                   "index": int(d.name), "prompt_id": prompt_id}
        records.append(rec)
        samples = d / "samples"
        files = sorted(samples.iterdir()) if samples.is_dir() else []
        for f in files:
            if f.is_file() and re.match(r"\d+\.png", f.name):  # evaluate_images.py's test
                rows.append({"prompt_id": prompt_id, "sample_id": int(re.match(r"\d+", f.name).group()),
                             "path": str(f.resolve())})
            elif f.name != "grid.png":
                problems["extra files"].append(f"{d.name}/samples/{f.name}")
    return ImageSet("geneval", root, records, rows)


def _read_compbench(root: Path, known, problems) -> ImageSet:
    flat = root / "samples" if (root / "samples").is_dir() else root
    records: dict[str, dict] = {}
    rows = []
    for f in sorted(flat.iterdir()):
        if not f.is_file():
            continue
        parsed = parse_sample_name(f.name)
        if parsed is None:
            problems["extra files"].append(f.name)
            continue
        prompt, k = parsed
        rec = _record(known, prompt, prompt, problems)
        if rec is None:
            continue
        records.setdefault(rec["prompt_id"], rec)
        rows.append({"prompt_id": rec["prompt_id"], "sample_id": k, "path": str(f.resolve())})
    return ImageSet("t2i-compbench", root, list(records.values()), rows)


def _read_dpg(root: Path, known, problems) -> ImageSet:
    records: dict[str, dict] = {}
    rows = []
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
            if f.is_file():
                problems["extra files"].append(f.name)
            continue
        rec = _record(known, f.stem, f.stem, problems)
        if rec is None:
            continue
        records.setdefault(rec["prompt_id"], rec)
        rows.append({"prompt_id": rec["prompt_id"], "sample_id": 0, "path": str(f.resolve())})
    return ImageSet("dpg-bench", root, list(records.values()), rows)


def _read_table(root: Path, known, problems) -> ImageSet:
    import pandas as pd

    try:
        if root.suffix.lower() == ".csv":
            df = pd.read_csv(root, dtype=str, keep_default_na=False)
        else:
            df = pd.read_json(root, lines=True, dtype=False)
    except ValueError as e:
        raise ImageSetError(f"{root}: cannot read the table ({e})") from None
    missing_cols = [c for c in ("prompt", "path") if c not in df.columns]
    if missing_cols:
        raise ImageSetError(f"{root}: the table needs columns prompt and path; missing {', '.join(missing_cols)}")
    records: dict[str, dict] = {}
    rows, counts, seen = [], {}, set()
    for i, r in enumerate(df.to_dict("records"), 2 if root.suffix.lower() == ".csv" else 1):
        prompt = str(r["prompt"])
        if not prompt.strip() or not str(r["path"]).strip():
            problems["malformed entries"].append(f"line {i}: empty prompt or path")
            continue
        pid = str(r["prompt_id"]) if str(r.get("prompt_id", "") or "").strip() else None
        if known is not None:
            rec = _record(known, pid or prompt, prompt, problems)
        else:
            pid = pid or prompt  # the prompt itself: two tables pair by prompt whatever their row order
            rec = {"prompt_id": pid, "prompt": prompt}
        if rec is None:
            continue
        records.setdefault(rec["prompt_id"], rec)
        sid = r.get("sample_id")
        if sid is None or str(sid).strip() == "":
            sid = counts.get(rec["prompt_id"], 0)
        counts[rec["prompt_id"]] = counts.get(rec["prompt_id"], 0) + 1
        try:
            sid = int(sid)
        except ValueError:
            problems["malformed entries"].append(f"line {i}: sample_id {sid!r} is not an integer")
            continue
        if (rec["prompt_id"], sid) in seen:
            problems["malformed entries"].append(f"line {i}: image {sid} of {prompt!r} listed twice")
            continue
        seen.add((rec["prompt_id"], sid))
        f = Path(str(r["path"]))
        f = f if f.is_absolute() else root.parent / f
        if not f.is_file():
            problems["missing images"].append(str(f))
            continue
        rows.append({"prompt_id": rec["prompt_id"], "sample_id": sid, "path": str(f.resolve())})
    return ImageSet("table", root, list(records.values()), rows)


def fingerprint(image_set: ImageSet) -> str:
    """sha256 over the set's (prompt_id, sample_id, file sha256) rows: what an evaluation of it
    depends on, wherever the files lie."""
    import hashlib

    h = hashlib.sha256()
    for r in sorted(image_set.rows, key=lambda r: (r["prompt_id"], r["sample_id"])):
        h.update(f"{r['prompt_id']}/{r['sample_id']}/{sha256_file(r['path'])}\n".encode())
    return h.hexdigest()


def to_samples_dir(image_set: ImageSet, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``image_set`` as a capo samples directory (stage ``import``): ``prompts.jsonl``,
    ``index.parquet`` (paths to the original files) and a manifest fingerprinting the images.
    An existing identical import is reused."""
    import pandas as pd

    out = Path(out)
    config = {"layout": image_set.layout, "root": str(image_set.root.resolve())}
    manifest = artifacts.make_manifest("import", config, {"images": {"path": str(image_set.root),
                                                                      "sha256": fingerprint(image_set)}})
    if artifacts.prepare_out_dir(out, manifest, overwrite):
        return out
    order = {r["prompt_id"]: i for i, r in enumerate(image_set.records)}
    prompt_of = {r["prompt_id"]: r["prompt"] for r in image_set.records}
    rows = sorted(image_set.rows, key=lambda r: (order[r["prompt_id"]], r["sample_id"]))
    artifacts.write_text(out / "prompts.jsonl", "".join(
        json.dumps({**r, "prompt_idx": i}, ensure_ascii=False) + "\n" for i, r in enumerate(image_set.records)))
    index = pd.DataFrame([{"prompt_id": r["prompt_id"], "sample_id": int(r["sample_id"]),
                           "prompt_idx": order[r["prompt_id"]], "seed": -1, "path": r["path"],
                           "prompt": prompt_of[r["prompt_id"]]} for r in rows])
    artifacts.write_table(index, out / "index.parquet")
    artifacts.finish(out, manifest, files=["index.parquet"],
                     counts={"prompts": len(image_set.records), "images": len(index)})
    return out


def write_layout(samples: str | Path, layout: str, out: str | Path) -> Path:
    """Write a capo samples directory in a benchmark's own layout, for upstream's tools to read:
    ``geneval`` (``<i:05d>/metadata.jsonl`` with upstream's metadata line, ``samples/<k:05>.png``),
    ``t2i-compbench`` (``samples/<prompt>_<idx:06d>.png``, ``idx`` running over the prompts as
    upstream's ``inference_eval.py`` numbers them) or ``dpg-bench`` (``<prompt id>.png``, the first
    four images tiled 2x2). Files are copied; ``out`` must not hold images already."""
    import shutil

    image_set = read_image_set(samples, layout="capo")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ImageSetError(f"{out}: not empty; write a layout into a new directory")
    by_prompt: dict[str, list[str]] = {}
    for r in sorted(image_set.rows, key=lambda r: (r["prompt_id"], r["sample_id"])):
        by_prompt.setdefault(r["prompt_id"], []).append(r["path"])
    records = [r for r in image_set.records if r["prompt_id"] in by_prompt]
    if layout == "geneval":
        missing = [r["prompt_id"] for r in records if "tag" not in r or "include" not in r]
        if missing:
            raise ImageSetError(f"{samples}: {len(missing)} prompt(s) without GenEval metadata (tag, include), "
                                f"e.g. {missing[:3]}; only a GenEval-form prompt set has this layout")
        for folder, r in zip(image_folders(records), records):
            artifacts.write_text(out / folder / "metadata.jsonl", json.dumps(upstream_metadata(r)) + "\n")
            for k, f in enumerate(by_prompt[r["prompt_id"]]):
                (out / folder / "samples").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / folder / "samples" / f"{k:05}.png")
    elif layout == "t2i-compbench":
        write_upstream_layout(out, [r["prompt"] for r in records], [by_prompt[r["prompt_id"]] for r in records])
    elif layout == "dpg-bench":
        short = [r["prompt_id"] for r in records if len(by_prompt[r["prompt_id"]]) < PIC_NUM]
        if short:
            raise ImageSetError(f"{samples}: DPG-Bench tiles {PIC_NUM} images per prompt; {len(short)} prompt(s) "
                                f"have fewer, e.g. {short[:3]}")
        write_grid_folder({str(r.get("id", r["prompt_id"])): by_prompt[r["prompt_id"]][:PIC_NUM] for r in records}, out)
    else:
        raise ImageSetError(f"cannot write layout {layout!r}; known: geneval, t2i-compbench, dpg-bench")
    return out
