"""Benchmark prompt sets by name, fetched from pinned upstream commits and checked by sha256.

==========================  ====================================================================
name                        upstream file(s) (repository @ commit : path)
==========================  ====================================================================
``geneval``                 djghosh13/geneval @ af4902f : prompts/evaluation_metadata.jsonl (553)
``t2i-compbench:<cat>``     Karine-Huang/T2I-CompBench @ 1b70949 : examples/dataset/<cat>_val.txt
                            for color, shape, texture, spatial, non_spatial, complex, numeracy,
                            3d_spatial (300 each); complex also reads complex_val_spatial.txt and
                            complex_val_action.txt to tag each prompt's 3-in-1 kind
``parti``                   google-research/parti @ 5a65797 : PartiPrompts.tsv, column Prompt (1632)
``dpg-bench``               TencentQQGYLab/ELLA @ 3c228f1 : dpg_bench/prompts/*.txt (1065 files,
                            natural order of the names; per-file sha256 in dpg_bench_sha256.json)
==========================  ====================================================================

Where the files come from, in order (``load_prompt_set``):

1. ``source``: a local file or folder (such as a copy of the upstream files, laid out as
   ``<root>/geneval/...``, ``<root>/t2i-compbench/...``, ``<root>/parti/...``,
   ``<root>/dpg-bench/prompts/...``, or the set's own folder); checksums are verified unless
   ``verify=False``.
2. the cache: ``cache_dir``, else ``$CAPO_CACHE/benchmarks``, else ``~/.cache/capo/benchmarks``
   (same layout).
3. a download (urllib) of ``https://raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>``
   into the cache, checked before it is moved into place (atomic rename); never when
   ``HF_HUB_OFFLINE`` or ``CAPO_OFFLINE`` is set.

Records are dicts with at least ``id`` (a string, unique in the set), ``index`` (position in
the upstream order) and ``prompt``, plus the set's metadata.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from capo import artifacts
from capo.artifacts import sha256_file

RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"

GENEVAL = ("djghosh13/geneval", "af4902f24d3ca90ebbb446dd9891a59e0f82725f")
T2I_COMPBENCH = ("Karine-Huang/T2I-CompBench", "1b7094991a57f3c22abdd4f6e8ba6c1a15517073")
PARTI = ("google-research/parti", "5a657978134374ce28973948331b319adef164bd")
ELLA = ("TencentQQGYLab/ELLA", "3c228f1dc6c4d3cad0a47493816151a419f14db3")

T2I_COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex",
                            "numeracy", "3d_spatial")

# benchmarks/SOURCES.md
_COMPBENCH_SHA256 = {
    "3d_spatial_val.txt": "c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9",
    "color_val.txt": "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d",
    "complex_val.txt": "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4",
    "complex_val_action.txt": "d49ee4c7f99e3f3379fb8704a54ff5288b83bb412971edf616a4721c2473308e",
    "complex_val_spatial.txt": "6c7ac0ab75c7c9080cfc7b421fb059b9b0febb98471707aeedf58771088abc02",
    "complex_val_spatialaction.txt": "e02ddc7fed812e6577e7386ec2137ce0a994a5ce19771661f68df7ac349a6ca9",
    "non_spatial_val.txt": "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d",
    "numeracy_val.txt": "dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe",
    "shape_val.txt": "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae",
    "spatial_val.txt": "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988",
    "texture_val.txt": "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f",
}
DPG_SHA256_FILE = Path(__file__).with_name("dpg_bench_sha256.json")
PARTI_COLUMNS = ("Prompt", "Category", "Challenge", "Note")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class UpstreamFile:
    """One pinned upstream file: where it lives locally (``local``, relative to a benchmarks
    root or cache dir), where it comes from, and its sha256."""

    local: str
    repo: str
    commit: str
    path: str
    sha256: str

    @property
    def url(self) -> str:
        return RAW_URL.format(repo=self.repo, commit=self.commit, path=self.path)


@dataclass(frozen=True)
class PromptSet:
    """A named prompt set: its files (a callable, so large manifests load lazily) and a parser
    from resolved paths (keyed by ``UpstreamFile.local``) to records."""

    name: str
    files: Callable[[], tuple[UpstreamFile, ...]]
    parse: Callable[[Mapping[str, Path]], list[dict]]
    description: str


# --------------------------------------------------------------------------- parsers


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines (the final newline optional); a blank line is an error naming it."""
    lines = _read_text(path).splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}:{lineno}: blank line")
    if not lines:
        raise ValueError(f"{path}: no prompts")
    return lines


def _parse_geneval(paths: Mapping[str, Path]) -> list[dict]:
    records = load_metadata(paths["geneval/evaluation_metadata.jsonl"])
    # ids follow upstream's image folders (generation/diffusers_generate.py: f"{index:0>5}")
    return [{"id": f"{i:05d}", "index": i, **rec} for i, rec in enumerate(records)]


def _parse_compbench(category: str):
    def parse(paths: Mapping[str, Path]) -> list[dict]:
        lines = _read_lines(paths[f"t2i-compbench/{category}_val.txt"])
        records = [{"id": f"{i:04d}", "index": i, "prompt": line.strip(), "category": category}
                   for i, line in enumerate(lines)]
        if category == "complex":
            spatial = _read_lines(paths["t2i-compbench/complex_val_spatial.txt"])
            action = _read_lines(paths["t2i-compbench/complex_val_action.txt"])
            for rec, line in zip(records, lines):
                rec["complex_kind"] = complex_kind(line, spatial, action)
        return records

    return parse


def _parse_parti(paths: Mapping[str, Path]) -> list[dict]:
    """Tab-separated, header ``Prompt Category Challenge Note``; fields are taken literally
    (pandas' default quoting would strip the quotes of the one prompt that starts with '"')."""
    path = paths["parti/PartiPrompts.tsv"]
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or tuple(lines[0].rstrip("\r").split("\t")) != PARTI_COLUMNS:
        raise ValueError(f"{path}:1: header must be {' / '.join(PARTI_COLUMNS)} (tab-separated), "
                         f"got {lines[0][:80] if lines else ''!r}")
    records = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(PARTI_COLUMNS):
            raise ValueError(f"{path}:{lineno}: expected {len(PARTI_COLUMNS)} tab-separated columns, "
                             f"got {len(fields)}")
        if not fields[0].strip():
            raise ValueError(f"{path}:{lineno}: empty Prompt")
        i = len(records)
        records.append({"id": f"{i:04d}", "index": i, "prompt": fields[0], "category": fields[1],
                        "challenge": fields[2], "note": fields[3]})
    if not records:
        raise ValueError(f"{path}: no prompts")
    return records


def _parse_dpg(paths: Mapping[str, Path]) -> list[dict]:
    records = []
    for i, f in enumerate(_dpg_files()):
        path = paths[f.local]
        text = _read_text(path).strip()
        if not text:
            raise ValueError(f"{path}: empty prompt file")
        name = Path(f.local).name
        records.append({"id": name[:-len(".txt")], "index": i, "prompt": text, "file": name})
    return records


# --------------------------------------------------------------------------- registry


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as integers ("2.txt" < "10.txt"): DPG-Bench's order."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@functools.lru_cache(maxsize=None)
def _dpg_files() -> tuple[UpstreamFile, ...]:
    try:
        manifest = json.loads(DPG_SHA256_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"cannot read the DPG-Bench checksums {DPG_SHA256_FILE}: {e}") from e
    names = sorted(manifest["files"], key=natural_key)
    return tuple(UpstreamFile(f"dpg-bench/prompts/{n}", *ELLA, f"dpg_bench/prompts/{n}",
                              manifest["files"][n]) for n in names)


def _compbench_file(fname: str) -> UpstreamFile:
    return UpstreamFile(f"t2i-compbench/{fname}", *T2I_COMPBENCH, f"examples/dataset/{fname}",
                        _COMPBENCH_SHA256[fname])


def _make_registry() -> dict[str, PromptSet]:
    sets = {
        "geneval": PromptSet(
            "geneval",
            lambda: (UpstreamFile("geneval/evaluation_metadata.jsonl", *GENEVAL,
                                  "prompts/evaluation_metadata.jsonl",
                                  "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"),),
            _parse_geneval, "GenEval evaluation metadata (553 prompts, 6 tags)"),
        "parti": PromptSet(
            "parti",
            lambda: (UpstreamFile("parti/PartiPrompts.tsv", *PARTI, "PartiPrompts.tsv",
                                  "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb"),),
            _parse_parti, "PartiPrompts (1632 prompts)"),
        "dpg-bench": PromptSet("dpg-bench", _dpg_files, _parse_dpg, "DPG-Bench prompts (1065)"),
    }
    for cat in T2I_COMPBENCH_CATEGORIES:
        fnames = [f"{cat}_val.txt"]
        if cat == "complex":
            fnames += ["complex_val_spatial.txt", "complex_val_action.txt"]
        files = tuple(_compbench_file(f) for f in fnames)
        sets[f"t2i-compbench:{cat}"] = PromptSet(f"t2i-compbench:{cat}", lambda files=files: files,
                                                 _parse_compbench(cat), f"T2I-CompBench {cat} (val)")
    return sets


PROMPT_SETS: dict[str, PromptSet] = _make_registry()


def list_prompt_sets() -> list[str]:
    return sorted(PROMPT_SETS)


def get_prompt_set(name: str) -> PromptSet:
    """The registered set ``name``; an unknown name is answered with the nearest known ones."""
    if name not in PROMPT_SETS:
        near = difflib.get_close_matches(name, list(PROMPT_SETS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise KeyError(f"unknown prompt set {name!r}.{hint} Known: {', '.join(list_prompt_sets())}")
    return PROMPT_SETS[name]


# --------------------------------------------------------------------------- resolution


def default_cache_dir() -> Path:
    root = os.environ.get("CAPO_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "capo") / "benchmarks"


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "CAPO_OFFLINE"))


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "capo"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _download(f: UpstreamFile, dest: Path) -> None:
    """Fetch ``f`` and write it to ``dest`` atomically, only if its sha256 matches."""
    try:
        data = _fetch(f.url)
    except Exception as e:
        raise RuntimeError(f"download of {f.url} failed: {e}. Provide the file yourself at {dest} "
                           "(or pass source=) and retry") from e
    got = hashlib.sha256(data).hexdigest()
    if got != f.sha256:
        raise ValueError(f"checksum mismatch for {f.url}: expected sha256 {f.sha256}, got {got}")
    artifacts.write_bytes(dest, data)


def _source_candidates(source: Path, f: UpstreamFile) -> list[Path]:
    parts = Path(f.local).parts
    return [source / f.local, source / Path(*parts[1:]), source / parts[-1]]


def _names(files: Sequence[UpstreamFile], k: int = 3) -> str:
    shown = ", ".join(f.local for f in files[:k])
    return shown + (f" and {len(files) - k} more" if len(files) > k else "")


def resolve_files(name: str, cache_dir: str | os.PathLike | None = None,
                  source: str | os.PathLike | None = None, verify: bool = True) -> dict[str, Path]:
    """Local paths of the files of prompt set ``name``, keyed by ``UpstreamFile.local``, found
    (and checked) in the order of the module docstring."""
    spec = get_prompt_set(name)
    files = spec.files()
    if source is not None:
        return _resolve_source(spec.name, files, Path(source), verify)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found: dict[str, Path] = {}
    missing: list[UpstreamFile] = []
    bad: list[tuple[UpstreamFile, str]] = []
    for f in files:
        p = cache / f.local
        if p.is_file():
            got = sha256_file(p)
            if got == f.sha256:
                found[f.local] = p
                continue
            bad.append((f, got))
        missing.append(f)
    if not missing:
        return found
    if is_offline():
        lines = [f"prompt set {name!r}: {len(missing)} file(s) missing from the cache {cache} and "
                 "downloads are off (HF_HUB_OFFLINE / CAPO_OFFLINE is set)."]
        for f, got in bad[:3]:
            lines.append(f"  {cache / f.local} has sha256 {got}, expected {f.sha256}")
        lines.append(f"Provide {_names(missing)} under {cache} (or pass source=<folder or file>); "
                     f"from {missing[0].url}" + (" and the same folder upstream" if len(missing) > 1 else ""))
        raise FileNotFoundError("\n".join(lines))
    for f in missing:
        _download(f, cache / f.local)
        found[f.local] = cache / f.local
    return found


def _resolve_source(name: str, files: Sequence[UpstreamFile], source: Path, verify: bool) -> dict[str, Path]:
    if not source.exists():
        raise FileNotFoundError(f"prompt set {name!r}: source {source} does not exist")
    found: dict[str, Path] = {}
    if source.is_file():  # the set's main file; any companions are looked for beside it
        found[files[0].local] = source
        rest, base = files[1:], source.parent
    else:
        rest, base = files, source
    missing = []
    for f in rest:
        p = next((c for c in _source_candidates(base, f) if c.is_file()), None)
        if p is None:
            missing.append(f)
        else:
            found[f.local] = p
    if missing:
        raise FileNotFoundError(f"prompt set {name!r}: {_names(missing)} not found under {base} "
                                f"(looked for <root>/{missing[0].local}, the set's folder, and the bare "
                                f"file name); upstream: {missing[0].url}")
    if verify:
        by_local = {f.local: f for f in files}
        for local, p in found.items():
            got = sha256_file(p)
            if got != by_local[local].sha256:
                raise ValueError(f"checksum mismatch for {p} ({name}: {local}): expected sha256 "
                                 f"{by_local[local].sha256}, got {got}. Pass verify=False to use it anyway")
    return found


# --------------------------------------------------------------------------- loading


def load_prompt_set(name: str, cache_dir: str | os.PathLike | None = None,
                    source: str | os.PathLike | None = None, limit: int | None = None,
                    subset: int | None = None, seed: int = 0, verify: bool = True) -> list[dict]:
    """Records of prompt set ``name`` (see the module docstring for names and sources).

    ``subset=k``: k records drawn without replacement by ``numpy.random.default_rng(seed)``,
    kept in upstream order (the same k and seed always give the same records); then
    ``limit=K`` keeps the first K.
    """
    import numpy as np

    records = get_prompt_set(name).parse(resolve_files(name, cache_dir, source, verify))
    if subset is not None:
        if not 0 <= subset <= len(records):
            raise ValueError(f"subset={subset} out of range for {name!r} ({len(records)} prompts)")
        keep = np.sort(np.random.default_rng(seed).choice(len(records), size=subset, replace=False))
        records = [records[i] for i in keep]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        records = records[:limit]
    return records


# ----------------------------------------------------------------------------- benchmark file formats
# GenEval's metadata lines and T2I-CompBench's complex-prompt kinds are parsed here, where the
# files are read; capo.eval.geneval and capo.eval.t2i_compbench import them.
RELATIONS = ("left of", "right of", "above", "below")


def load_metadata(path: str | os.PathLike) -> list[dict]:
    """Read GenEval's ``evaluation_metadata.jsonl``: one JSON object a line.

    Each record needs ``tag`` and ``prompt`` (strings) and ``include`` (a non-empty list of
    ``{"class": str, "count": int >= 1, optional "color": str, optional "position":
    [relation, index of an earlier include clause]}``); ``exclude`` is optional
    (``{"class", "count"}``). Errors name the file and the line.
    """
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                raise ValueError(f"{where}: blank line in GenEval metadata")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            _validate_record(rec, where)
            records.append(rec)
    if not records:
        raise ValueError(f"{path}: no GenEval records")
    return records


def _validate_record(rec: Any, where: str) -> None:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("tag", "prompt"):
        if not isinstance(rec.get(key), str):
            raise ValueError(f"{where}: '{key}' must be a string")
    include = rec.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"{where}: 'include' must be a non-empty list")
    for j, req in enumerate(include):
        _validate_clause(req, f"{where}: include[{j}]")
        if "position" in req:
            pos = req["position"]
            if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                    or not isinstance(pos[1], int) or not 0 <= pos[1] < j):
                raise ValueError(f"{where}: include[{j}].position must be [one of {list(RELATIONS)}, "
                                 f"index of an earlier clause], got {pos!r}")
        if "color" in req and not isinstance(req["color"], str):
            raise ValueError(f"{where}: include[{j}].color must be a string")
    exclude = rec.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"{where}: 'exclude' must be a list")
    for j, req in enumerate(exclude):
        _validate_clause(req, f"{where}: exclude[{j}]")


def _validate_clause(req: Any, where: str) -> None:
    if not isinstance(req, dict) or not isinstance(req.get("class"), str):
        raise ValueError(f"{where} must be an object with a string 'class'")
    count = req.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}.count must be an integer >= 1, got {count!r}")


def complex_key(prompt: str) -> str:
    """How ``3_in_1.py`` matches prompts across files: the text before the first '.', lower-cased."""
    return prompt.strip("\n").split(".")[0].lower()


def complex_kind(prompt: str, spatial_prompts: Iterable[str], action_prompts: Iterable[str]) -> str:
    """``"spatial"`` if the prompt is in ``complex_val_spatial.txt``, else ``"action"`` if in
    ``complex_val_action.txt``, else ``"all"`` (upstream order of the tests)."""
    key = complex_key(prompt)
    if key in {complex_key(p) for p in spatial_prompts}:
        return "spatial"
    if key in {complex_key(p) for p in action_prompts}:
        return "action"
    return "all"
