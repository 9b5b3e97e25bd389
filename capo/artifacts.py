"""The only module that knows paths, file formats, manifests and atomic writes.

Every stage writes into an output directory holding its files plus ``manifest.json``:
the resolved config, fingerprints (sha256) of its inputs, package versions, the git
commit, row counts and timings. ``run_key`` (a hash of the config and the input
fingerprints) identifies a run: a directory whose complete manifest has the same key
is reused, one with another key is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """A bad, mismatched or foreign artifact; the message says which file and why."""


# ---------------------------------------------------------------- atomic writes
@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------- tables
TABLE_SUFFIXES = (".parquet", ".csv")


def read_table(path):
    """Read a parquet or CSV table (by suffix) into a pandas DataFrame, with clear errors."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except Exception as e:  # pyarrow / pandas parser errors
        raise ArtifactError(f"{path}: cannot read table ({type(e).__name__}: {e})") from None
    raise ArtifactError(f"{path}: unknown table format {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def write_table(df, path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ArtifactError(f"{path}: unknown table format {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


# ---------------------------------------------------------------- fingerprints
def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path) -> str:
    """sha256 of a file, or of a directory's manifest (its identity) if it has one,
    else of its files' relative names and contents."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if (path / MANIFEST).is_file():
        m = read_json(path / MANIFEST)
        return m.get("run_key") or sha256_file(path / MANIFEST)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
        return h.hexdigest()
    raise ArtifactError(f"{path}: not found")


def run_key(config: dict, inputs: dict[str, str]) -> str:
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- provenance
def git_commit() -> str:
    """The git commit of the capo source tree (with ``-dirty`` when it has local changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def versions(packages: Iterable[str] = ("capo", "numpy", "pandas", "torch", "diffusers", "transformers",
                                        "accelerate", "peft")) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def make_manifest(stage: str, config: dict, inputs: dict[str, Any], **extra) -> dict:
    """A manifest for a stage's output. ``inputs`` maps a role name to a path (fingerprinted
    here) or to a ``{"path": ..., "sha256": ...}`` dict whose fingerprint is already known
    (a registered model's identity, a named prompt set's content hash)."""
    ins = {name: dict(v) if isinstance(v, dict) else {"path": str(v), "sha256": fingerprint(v)}
           for name, v in inputs.items()}
    return {
        "stage": stage,
        "config": config,
        "inputs": ins,
        "run_key": run_key(config, {name: v["sha256"] for name, v in ins.items()}),
        "versions": versions(),
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
        **extra,
    }


def prepare_out_dir(out_dir, manifest: dict, overwrite: bool = False) -> bool:
    """Get ``out_dir`` ready for a run. Returns True when the same run is already complete.

    A directory holding a different run (another ``run_key``), or foreign files without a
    manifest, is refused unless ``overwrite``; then it is emptied first.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory")
    existing = out / MANIFEST
    if existing.is_file():
        old = read_json(existing)
        if old.get("run_key") == manifest["run_key"]:
            return bool(old.get("complete"))  # complete: reuse; unfinished: resume into it
        if not overwrite:
            raise ArtifactError(
                f"{out} already holds a different {old.get('stage', '?')} run (run_key {old.get('run_key', '?')[:12]}, "
                f"this one {manifest['run_key'][:12]}); pass --overwrite to replace it or choose another output directory"
            )
        shutil.rmtree(out)
    elif out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{out} is not empty and has no {MANIFEST}; pass --overwrite or choose another directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(existing, manifest)
    return False


def finish(out_dir, manifest: dict, **fields) -> dict:
    """Mark a run complete: write the final manifest with counts, timings and other fields."""
    manifest = {**manifest, **fields, "complete": True}
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest
