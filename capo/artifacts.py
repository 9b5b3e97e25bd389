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
import math
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
        if Path(tmp).is_file():  # mkstemp makes 0600: give the file what the umask gives ordinary files
            os.chmod(tmp, 0o666 & ~_UMASK)
        _fault_point()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Fault injection for the kill-anywhere tests: with CAPO_KILL_AT_WRITE=k the process kills
# itself (SIGKILL: no cleanup, no finally) at its k-th atomic write, after the temp file is
# written and before it is renamed into place, the worst moment for a run to die.
_WRITES = 0


def _fault_point() -> None:
    global _WRITES
    at = os.environ.get("CAPO_KILL_AT_WRITE")
    if at:
        _WRITES += 1
        if _WRITES == int(at):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def _has_content(d: Path) -> bool:
    """Whether directory ``d`` holds anything but debris (its lock, temp files)."""
    return d.is_dir() and any(not _debris(p) for p in d.iterdir())


def _debris(p: Path) -> bool:
    """What a killed run may leave besides its outputs: its lock file, a temp file."""
    return p.name == LOCK or (p.name.startswith(".") and p.name.endswith(".tmp"))


def remove_stale_temps(out_dir) -> int:
    """Delete the temp files (``.<name>.<random>.tmp``) a killed run left in ``out_dir``;
    called by the run that resumes into it (holding its lock). Returns how many."""
    stale = [p for p in Path(out_dir).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def follow_umask(directory) -> None:
    """Give the files under ``directory`` the mode the umask gives ordinary files (libraries that
    write through private temp files, such as accelerate's ``save_state``, leave them 0600)."""
    for f in Path(directory).rglob("*"):
        if f.is_file():
            os.chmod(f, 0o666 & ~_UMASK)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, obj: Any) -> None:
    """Strict JSON (RFC 8259 has no NaN or Infinity): a non-finite number is written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    write_text(path, text + "\n")


def _finite(o):
    """``o`` with every non-finite float (NaN, +-inf; numpy scalars and arrays too) as None."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):
        return _finite(o.tolist())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


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


# Integrity records: what a stage wrote, so that what is read back is what was written.
# Files up to SAMPLED_ABOVE bytes are hashed whole; bigger ones (an SDXL checkpoint, a latent
# cache of 100K prompts) by their size and the sha256 of their first and last 8 MiB, which
# catches truncation and torn writes at disk speed without reading gigabytes per load.
SAMPLED_ABOVE = 256 << 20
_SAMPLE = 8 << 20


def file_record(path) -> dict:
    """``{"size", "sha256"}`` of a file (``"sha256_sampled"`` for files over ``SAMPLED_ABOVE``)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= SAMPLED_ABOVE:
        return {"size": size, "sha256": sha256_file(path)}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        f.seek(size - _SAMPLE)
        h.update(f.read(_SAMPLE))
    return {"size": size, "sha256_sampled": h.hexdigest()}


def check_file(path, record: dict | None, what: str, recover: str) -> None:
    """Raise ``ArtifactError`` naming ``path``, ``what`` it is and how to ``recover`` when the
    file is missing or differs from its ``record`` (no record: nothing to check)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing ({what}); {recover}")
    if not record:
        return
    size = path.stat().st_size
    if size != record["size"]:
        raise ArtifactError(f"{path}: {size} bytes, but {record['size']} were written ({what}: truncated or "
                            f"replaced); {recover}")
    now = file_record(path)
    key = "sha256" if "sha256" in record else "sha256_sampled"
    if now.get(key) != record[key]:
        raise ArtifactError(f"{path}: its sha256 differs from the one recorded when it was written ({what}: "
                            f"corrupted); {recover}")


def verify(out_dir, name: str, what: str) -> Path:
    """Check ``out_dir/name`` against the record in ``out_dir``'s manifest (``finish(files=)``);
    returns the path."""
    out = Path(out_dir)
    m = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    recover = (f"rerun the {m.get('stage', 'stage')} run that wrote {out} with --overwrite"
               + (f" ({m['command']})" if m.get("command") else ""))
    check_file(out / name, (m.get("files") or {}).get(name), what, recover)
    return out / name


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


def existing_run(out_dir, manifest: dict, overwrite: bool = False) -> str:
    """What ``out_dir`` holds for this run, without touching it: ``"complete"`` (the same run,
    finished), ``"resume"`` (the same run, unfinished), ``"new"`` (nothing, or something
    ``overwrite`` will replace). Another run or foreign files without ``overwrite`` raise
    ``ArtifactError``. Stages call it before loading their inputs, so that a run that cannot
    start leaves the directory as it was."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory")
    existing = out / MANIFEST
    if existing.is_file():
        old = read_json(existing)
        if old.get("run_key") == manifest["run_key"]:
            return "complete" if old.get("complete") else "resume"
        if not overwrite:
            raise ArtifactError(
                f"{out} already holds a different {old.get('stage', '?')} run (run_key {old.get('run_key', '?')[:12]}, "
                f"this one {manifest['run_key'][:12]}); pass --overwrite to replace it or choose another output directory"
            )
    elif _has_content(out) and not overwrite:
        raise ArtifactError(f"{out} is not empty and has no {MANIFEST}; pass --overwrite or choose another directory")
    return "new"


def prepare_out_dir(out_dir, manifest: dict, overwrite: bool = False) -> bool:
    """Get ``out_dir`` ready for a run. Returns True when the same run is already complete.

    A directory holding a different run (another ``run_key``), or foreign files without a
    manifest, is refused unless ``overwrite``; then it is emptied first.
    """
    out = Path(out_dir)
    state = existing_run(out, manifest, overwrite)
    if state == "complete":
        return True  # reuse
    if out.is_dir():
        lock(out)  # another process running in out is refused before anything changes
    if state == "resume":
        remove_stale_temps(out)  # what a killed run was writing when it died
        return False  # unfinished: resume into it
    if _has_content(out):
        unlock(out)
        shutil.rmtree(out)  # overwrite (existing_run refused it otherwise)
    out.mkdir(parents=True, exist_ok=True)
    lock(out)
    remove_stale_temps(out)  # a run killed while writing its first manifest
    write_json(out / MANIFEST, manifest)
    return False


# A run holds an exclusive lock (flock) on ``<out>/.lock`` from ``prepare_out_dir`` until
# ``finish``, so a second process started on the same directory is refused instead of
# interleaving its writes. The kernel drops the lock when the process dies (even by
# SIGKILL), so a killed run never blocks its own resume. One process may re-enter its own
# locks (a stage rerun in-process).
LOCK = ".lock"
_LOCKS: dict[str, int] = {}  # resolved directory -> fd holding its lock


def lock(out_dir) -> None:
    import fcntl

    out = Path(out_dir)
    key = str(out.resolve())
    if key in _LOCKS:
        return
    fd = os.open(out / LOCK, os.O_CREAT | os.O_RDWR, 0o666 & ~_UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArtifactError(f"{out} is in use by another capo process (it holds {out / LOCK}); wait for it to finish "
                            "or stop it; a run that was killed holds nothing, so its rerun resumes") from None
    _LOCKS[key] = fd


def unlock(out_dir) -> None:
    out = Path(out_dir)
    fd = _LOCKS.pop(str(out.resolve()), None)
    if fd is not None:
        (out / LOCK).unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def no_trace_on_failure(out_dir):
    """Run a stage so that, if it fails, the directories it created that hold nothing but an
    unfinished manifest are removed again (a refused or failed start leaves no trace; a
    run that did some work keeps it, to resume)."""
    out = Path(out_dir) if out_dir else None
    before = set(out.rglob("*")) | {out} if out is not None and out.exists() else set()
    try:
        yield
    except BaseException:
        if out is not None and out.is_dir():
            for d in sorted([p for p in out.rglob("*") if p.is_dir()] + [out], key=lambda p: -len(p.parts)):
                if d in before:
                    continue
                entries = [p for p in d.iterdir() if not _debris(p)]
                if entries == [d / MANIFEST] and d / MANIFEST not in before:
                    try:
                        done = read_json(d / MANIFEST).get("complete")
                    except ArtifactError:
                        done = False
                    if not done:
                        (d / MANIFEST).unlink()
                        entries = []
                if not entries:  # nothing but debris (its lock, temp files)
                    unlock(d)
                    shutil.rmtree(d)
        raise


def finish(out_dir, manifest: dict, files: Iterable[str] = (), **fields) -> dict:
    """Mark a run complete: write the final manifest with counts, timings and other fields,
    and an integrity record (``file_record``) of each of ``files`` (paths relative to the
    directory) that later stages ``verify`` when they read them."""
    if files:
        fields["files"] = {f: file_record(Path(out_dir) / f) for f in files}
    manifest = {**manifest, **fields, "complete": True}
    write_json(Path(out_dir) / MANIFEST, manifest)
    unlock(out_dir)
    return manifest
