"""DPG-Bench (Hu et al., 2024, ELLA): question graph, 2x2 grid layout, VQA backends, scores.

Replicates TencentQQGYLab/ELLA @ 3c228f1 ``dpg_bench/compute_dpg_bench.py`` (functions
``prepare_dpg_data``, ``crop_image``, ``compute_dpg_one_sample``, ``main``), run as its
``dpg_bench/dist_eval.sh`` runs it (``--pic-num 4 --vqa-model mplug``).

Questions: ``dpg_bench/dpg_bench.csv`` at that commit, columns ``item_id, text, keywords,
proposition_id, dependency, category_broad, category_detailed, tuple,
question_natural_language``; one row per proposition, ``item_id`` = the prompt file's stem
(``partiprompts94``), ``dependency`` = comma-separated parent proposition ids, 0 = none.

What upstream does, step by step (each a function here):

1. ``prepare_dpg_data`` (``parse_questions``): reads the CSV with pandas and **skips its first
   data row** (``if i == 0: continue``; ELLA issue #61: that row belongs to
   ``partiprompts97``). Rows are grouped by runs of equal ``item_id``: an id that comes back
   after another id starts its question dict afresh (dict overwrite). Within an item, a repeated
   proposition id overwrites the earlier row in place.
2. Layout (``split_grid``): one image per prompt, ``<item_id>.<ext>`` (the key is the file name
   up to its first dot), four generations tiled 2x2; tile ``k`` is the crop box
   ``(0,0,r,r), (r,0,2r,r), (0,r,r,2r), (r,r,2r,2r)[k]`` with ``r = --resolution``; the first
   ``--pic-num`` (4 in ``dist_eval.sh``, 1 in argparse) tiles are scored.
3. Per tile (``tile_scores``): every question of the item is asked; its score is
   ``float(answer == 'yes')``: the exact string, no lower-casing, no stripping. Then
   (``apply_dependency_rule``) the questions are visited in the item's order and a question is
   **zeroed** (kept in the denominator, not skipped) when any of its parents (0 = no parent,
   ignored) has score 0 *in the dict being updated*: so a parent zeroed earlier in the visit
   zeroes its children listed after it, while a child listed before its zeroed parent keeps its
   score. Parents are looked at in the listed order until the first zero (``break``); a parent
   id that the item does not have raises ``KeyError``, unless an earlier parent was 0.
   Tile score = sum / count over all the item's questions after the rule.
4. Per prompt: the mean of its tile scores. A ``KeyError`` (or any exception) in steps 2-3
   makes upstream print ``Failed filename`` and drop the prompt from every aggregate;
   capo reports such prompts under ``summary["failed"]`` and likewise leaves them out.
5. ``main`` (``summarize``): **DPG-Bench score** = mean over the scored prompts of the prompt
   score. **Category scores** pool questions over prompts: a question's category is its
   ``tuple`` column up to the first ``(``, stripped (L2, e.g. ``entity - whole``), and the L1
   category is that up to the first ``-``, stripped (``entity``, ``attribute``, ``relation``,
   ``global``, ``other``); the value pooled is the question's **raw** score (before the
   dependency rule) **on the last scored tile only** (``qid2scores_orig`` of the last crop).
   Upstream prints every score x 100; capo reports fractions in [0, 1].

The VQA model upstream is mPLUG-large through modelscope (``mplug_vqa``, exact, extra
``capo[dpg]``). ``blip_vqa`` is a **variant** in plain transformers (BLIP VQA, answer = the
generated text): its numbers are not DPG-Bench numbers and are labelled so (``PROTOCOL``).

capo differs from upstream only where upstream is silent about a broken input: missing,
extra, duplicate, unreadable or wrongly sized images are an error listing all of them before
any VQA model is built (upstream skips such files, or crops black padding from a too-small
image), and the question file is pinned (``DPG_CSV_GIT_BLOB``).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from capo import artifacts
from capo.eval import prompts as _prompts
from capo.eval.geneval import _load_error
from capo.eval.geneval import _to_pil_rgb as f
from capo.eval.prompts import ELLA, natural_key, RAW_URL
from capo.progress import progress as bar

# ----------------------------------------------------------------------------- constants

CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language")
CSV_PATH = "dpg_bench/dpg_bench.csv"
CSV_LOCAL = "dpg-bench/dpg_bench.csv"  # under a benchmarks root or the cache dir
# The git blob id of dpg_bench/dpg_bench.csv in the tree of ELLA @ 3c228f1 (sha1 over
# b"blob <size>\0" + content); the snapshot behind this module lacked the file's content
# (over 4 MiB), so its sha256 could not be taken. Set DPG_CSV_SHA256 once a verified copy has
# been hashed; both are checked when both are set.
DPG_CSV_GIT_BLOB = "98457fc9901943f51ff9a30367250fc292533bed"
DPG_CSV_SHA256: str | None = None

PIC_NUM = 4            # dist_eval.sh: PIC_NUM=${PIC_NUM:-4}
GRID = 2               # 2x2 tiles
YES = "yes"            # qid2scores[id] = float(answer == 'yes')
L1_CATEGORIES = ("entity", "attribute", "relation", "global", "other")

MPLUG_MODEL = "damo/mplug_visual-question-answering_coco_large_en"
BLIP_VQA_MODEL = "Salesforce/blip-vqa-capfilt-large"
DPG_EXTRA_HELP = (
    "DPG-Bench's own VQA model (mPLUG-large, {model!r}) runs through modelscope: "
    "pip install 'capo[dpg]' (modelscope with its 'framework' extra; upstream's own list is ELLA's "
    "requirements-for-dpg_bench.txt). The weights come from the ModelScope hub (modelscope.cn) on first "
    "use and are cached under ~/.cache/modelscope. The transformers-only variant is blip_vqa() "
    "(get_vqa('blip-vqa')), whose scores are not DPG-Bench's."
)

PROTOCOL: dict[str, Any] = {
    "benchmark": "DPG-Bench",
    "upstream": f"{ELLA[0]} @ {ELLA[1]} : dpg_bench/compute_dpg_bench.py, dpg_bench/dist_eval.sh",
    "questions": f"{ELLA[0]} @ {ELLA[1]} : {CSV_PATH} (git blob {DPG_CSV_GIT_BLOB}); first data row "
                 "dropped as upstream does",
    "layout": "one PNG per prompt named <prompt file stem>.png, 4 samples tiled 2x2 "
              "(sample k at column k % 2, row k // 2)",
    "pic_num": PIC_NUM,
    "answer_rule": "score 1 iff the VQA answer string == 'yes' (exact)",
    "dependency_rule": "in CSV order, a question is zeroed if any parent's current score is 0",
    "overall": "mean over prompts of the mean over tiles of the mean over questions (after the rule)",
    "categories": "L1/L2 from the tuple column; per question, pooled over prompts; raw answers of the "
                  "last tile",
    "vqa": {
        "mplug": {"model": MPLUG_MODEL, "backend": "modelscope pipeline visual-question-answering",
                  "exact": True, "extra": "capo[dpg]"},
        "blip-vqa": {"model": BLIP_VQA_MODEL, "backend": "transformers BlipForQuestionAnswering.generate",
                     "exact": False,
                     "why": "variant: upstream's mPLUG runs only through modelscope; BLIP answers differ, "
                            "so its scores are not comparable with published DPG-Bench numbers"},
    },
}


class DPGLayoutError(ValueError):
    """The images do not match DPG-Bench's layout; the message lists every problem found."""


class MissingParentError(KeyError):
    """A dependency names a proposition the item does not have (upstream: ``KeyError``, the
    prompt is dropped as ``Failed filename``)."""


# ----------------------------------------------------------------------------- question file


@dataclass
class DPGItem:
    """The questions of one prompt, keyed by proposition id in upstream's (CSV) order."""

    item_id: str
    questions: dict[int, str] = field(default_factory=dict)
    dependencies: dict[int, list[int]] = field(default_factory=dict)
    tuples: dict[int, str] = field(default_factory=dict)
    category_broad: dict[int, Any] = field(default_factory=dict)
    category_detailed: dict[int, Any] = field(default_factory=dict)


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file with content ``data`` (what a commit's tree records)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def csv_url() -> str:
    return RAW_URL.format(repo=ELLA[0], commit=ELLA[1], path=CSV_PATH)


def check_csv_bytes(data: bytes, where: str) -> None:
    """Raise ``ValueError`` unless ``data`` is the pinned ``dpg_bench.csv``."""
    got = git_blob_sha1(data)
    if got != DPG_CSV_GIT_BLOB:
        raise ValueError(f"checksum mismatch for {where}: expected git blob {DPG_CSV_GIT_BLOB} "
                         f"(dpg_bench.csv at ELLA @ {ELLA[1][:7]}), got {got}. Pass verify=False to use it anyway")
    if DPG_CSV_SHA256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != DPG_CSV_SHA256:
            raise ValueError(f"checksum mismatch for {where}: expected sha256 {DPG_CSV_SHA256}, got {got}")


def resolve_csv(csv: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                verify: bool = True) -> Path:
    """Local path of ``dpg_bench.csv``: ``csv`` if given (a file, or a folder holding
    ``dpg-bench/dpg_bench.csv`` or ``dpg_bench.csv``); else the cache (``cache_dir``, else
    ``$CAPO_CACHE/benchmarks``, else ``~/.cache/capo/benchmarks``) at ``dpg-bench/dpg_bench.csv``;
    else a download from the pinned commit, checked before it is moved into place. Never
    downloads when ``HF_HUB_OFFLINE`` / ``CAPO_OFFLINE`` is set."""
    if csv is not None:
        p = Path(csv)
        if p.is_dir():
            p = next((c for c in (p / CSV_LOCAL, p / "dpg_bench.csv") if c.is_file()), p / CSV_LOCAL)
        if not p.is_file():
            raise FileNotFoundError(f"DPG-Bench question file {p} not found; upstream: {csv_url()}")
        if verify:
            check_csv_bytes(p.read_bytes(), str(p))
        return p
    cache = Path(cache_dir) if cache_dir is not None else _prompts.default_cache_dir()
    p = cache / CSV_LOCAL
    bad = ""
    if p.is_file():
        try:
            check_csv_bytes(p.read_bytes(), str(p))
            return p
        except ValueError as e:
            bad = f" The cached copy is not the pinned file: {e}."
    if _prompts.is_offline():
        raise FileNotFoundError(
            f"DPG-Bench question file missing from the cache {cache} and downloads are off "
            f"(HF_HUB_OFFLINE / CAPO_OFFLINE is set).{bad} Provide it at {p} (or pass csv=<file>); "
            f"from {csv_url()}")
    try:
        data = _prompts._fetch(csv_url())
    except Exception as e:
        raise RuntimeError(f"download of {csv_url()} failed: {e}. Provide the file yourself at {p} "
                           "(or pass csv=) and retry") from e
    check_csv_bytes(data, csv_url())
    artifacts.write_bytes(p, data)
    return p


def _parse_dependency(value: Any, where: str) -> list[int]:
    if not isinstance(value, str):
        if isinstance(value, (int, np.integer)):
            value = str(value)
        else:
            raise ValueError(f"{where}: dependency must be text like '0' or '1,2', got {value!r}")
    try:
        return [int(d.strip()) for d in value.split(",")]
    except ValueError:
        raise ValueError(f"{where}: dependency {value!r} is not a comma-separated list of integers") from None


def parse_questions(csv: str | os.PathLike, drop_first_row: bool = True) -> dict[str, DPGItem]:
    """Upstream's ``prepare_dpg_data``: items keyed by ``item_id`` (a string), in CSV order.

    ``drop_first_row=True`` is upstream's behaviour (the first data row is never read).
    Pandas parses the file with its defaults, as upstream does, except that ``item_id`` is
    kept as text. A row without a question or tuple, or a malformed dependency, is an error
    naming its line."""
    import pandas as pd

    path = Path(csv)
    df = pd.read_csv(path, dtype={"item_id": str})
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}")
    items: dict[str, DPGItem] = {}
    previous = None
    cols = [df[c].tolist() for c in ("item_id", "proposition_id", "dependency", "tuple",
                                     "question_natural_language", "category_broad", "category_detailed")]
    for i, (item_id, pid, dep, tup, question, broad, detailed) in enumerate(zip(*cols)):
        if i == 0 and drop_first_row:
            continue
        where = f"{path}:{i + 2}"  # line number: header is line 1
        if not isinstance(item_id, str):
            raise ValueError(f"{where}: empty item_id")
        try:
            qid = int(pid)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: proposition_id {pid!r} is not an integer") from None
        deps = _parse_dependency(dep, where)
        for name, v in (("tuple", tup), ("question_natural_language", question)):
            if not isinstance(v, str):
                raise ValueError(f"{where}: {name} is empty")
        if item_id != previous:
            items[item_id] = DPGItem(item_id)  # upstream: question_dict[current_id] = dict(...)
        item = items[item_id]
        item.questions[qid] = question
        item.dependencies[qid] = deps
        item.tuples[qid] = tup
        item.category_broad[qid] = broad
        item.category_detailed[qid] = detailed
        previous = item_id
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


def load_questions(csv: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   verify: bool = True, drop_first_row: bool = True) -> dict[str, DPGItem]:
    """``parse_questions(resolve_csv(csv, cache_dir, verify), drop_first_row)``."""
    return parse_questions(resolve_csv(csv, cache_dir, verify), drop_first_row=drop_first_row)


# ----------------------------------------------------------------------------- scoring rules


def answer_score(answer: str) -> float:
    """``float(answer == 'yes')``: the exact string."""
    return float(answer == YES)


def apply_dependency_rule(scores: Mapping[int, float], dependencies: Mapping[int, Sequence[int]]
                          ) -> dict[int, float]:
    """Scores after upstream's rule (a new dict; ``scores`` is left alone): visit the
    questions in ``dependencies``' order; zero a question if, scanning its parents in order and
    skipping 0, one has score 0 in the dict being updated (stop at the first such). A parent
    missing from ``scores`` raises ``MissingParentError`` when reached."""
    out = dict(scores)
    for qid, parents in dependencies.items():
        for parent in parents:
            if parent == 0:
                continue
            if parent not in out:
                raise MissingParentError(f"question {qid} depends on proposition {parent}, which this item "
                                         f"does not have (it has {sorted(out)})")
            if out[parent] == 0:
                out[qid] = 0
                break
    return out


def tile_scores(answers: Mapping[int, str], item: DPGItem) -> tuple[float, dict[int, float], dict[int, float]]:
    """One tile: ``(score, raw, ruled)``, ``raw[q] = answer_score(answers[q])``, ``ruled`` after
    ``apply_dependency_rule``, ``score = sum(ruled) / len(ruled)``."""
    raw = {qid: answer_score(answers[qid]) for qid in item.questions}
    ruled = apply_dependency_rule(raw, item.dependencies)
    return sum(ruled.values()) / len(ruled), raw, ruled


def score_item(answers_per_tile: Sequence[Mapping[int, str]], item: DPGItem) -> dict:
    """One prompt: ``{"score", "tile_scores", "raw", "ruled"}`` where ``score`` is the mean of
    the tile scores, ``raw``/``ruled`` per tile; raises ``MissingParentError`` like upstream."""
    if not answers_per_tile:
        raise ValueError(f"{item.item_id}: no tiles")
    scores, raws, ruleds = [], [], []
    for answers in answers_per_tile:
        s, raw, ruled = tile_scores(answers, item)
        scores.append(s)
        raws.append(raw)
        ruleds.append(ruled)
    return {"score": sum(scores) / len(scores), "tile_scores": scores, "raw": raws, "ruled": ruleds}


def question_category(tuple_text: str) -> tuple[str, str]:
    """``(L1, L2)`` of a question from its ``tuple`` column: L2 = text before the first ``(``,
    stripped; L1 = L2 before its first ``-``, stripped."""
    l2 = tuple_text.split("(")[0].strip()
    return l2.split("-")[0].strip(), l2


def summarize(prompt_results: Iterable[Mapping[str, Any]]) -> dict:
    """Upstream's printout from per-prompt results ``{"item_id", "score", "categories": [(L1, L2,
    raw score on the last tile), ...]}`` (``failed`` results, with ``"error"``, are counted
    and left out).

    Returns ``{"overall", "categories": {L1: mean}, "subcategories": {L2: mean},
    "counts": {"prompts", "failed", "questions", "categories": {L1: n}, "subcategories":
    {L2: n}}, "failed": {item_id: error}}``; fractions in [0, 1] (upstream prints x 100)."""
    scores: list[float] = []
    l1: dict[str, list[float]] = {}
    l2: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    for r in prompt_results:
        if r.get("error") is not None:
            failed[str(r["item_id"])] = str(r["error"])
            continue
        s = float(r["score"])
        if not math.isfinite(s):
            raise ValueError(f"{r.get('item_id')}: score is {s}")
        scores.append(s)
        for c1, c2, v in r["categories"]:
            l1.setdefault(c1, []).append(float(v))
            l2.setdefault(c2, []).append(float(v))
    if not scores:
        raise ValueError("summarize() needs at least one scored prompt"
                         + (f" ({len(failed)} failed: {', '.join(sorted(failed)[:5])})" if failed else ""))
    return {
        "overall": float(np.mean(scores)),
        "categories": {c: float(np.mean(v)) for c, v in l1.items()},
        "subcategories": {c: float(np.mean(l2[c])) for c in sorted(l2)},
        "counts": {"prompts": len(scores), "failed": len(failed), "questions": sum(len(v) for v in l1.values()),
                   "categories": {c: len(v) for c, v in l1.items()},
                   "subcategories": {c: len(l2[c]) for c in sorted(l2)}},
        "failed": failed,
    }


# ----------------------------------------------------------------------------- layout


def _to_pil_rgb(image):
    """RGB PIL image from a PIL image, a uint8 HxWx3 array or a path. A file is read as it is
    (no EXIF rotation: upstream's ``Image.open`` applies none)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    return f(image)


def crop_boxes(resolution: int, pic_num: int = PIC_NUM) -> list[tuple[int, int, int, int]]:
    """Upstream's ``crop_tuples_list[:pic_num]``: top-left, top-right, bottom-left, bottom-right."""
    r = int(resolution)
    boxes = [(0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r)]
    if not 1 <= pic_num <= len(boxes):
        raise ValueError(f"pic_num must be 1..4, got {pic_num}")
    return boxes[:pic_num]


def _tile_size(width: int, height: int, pic_num: int, resolution: int | None) -> int:
    """The tile side ``r``; raises ``ValueError`` when the image cannot hold the tiles."""
    if resolution is None:
        if width != height or width % GRID:
            raise ValueError(f"a 2x2 grid must be square with an even side, got {width}x{height} "
                             "(pass resolution= for another layout)")
        return width // GRID
    r = int(resolution)
    need_w = r * (2 if pic_num >= 2 else 1)
    need_h = r * (2 if pic_num >= 3 else 1)
    if r <= 0 or width < need_w or height < need_h:
        raise ValueError(f"{width}x{height} is too small for {pic_num} tile(s) of {r}x{r}")
    return r


def split_grid(image, pic_num: int = PIC_NUM, resolution: int | None = None) -> list:
    """The tiles upstream scores: crops ``crop_boxes(r, pic_num)`` of the grid image, ``r =
    resolution`` or half the (square) image's side."""
    im = _to_pil_rgb(image)
    r = _tile_size(im.width, im.height, pic_num, resolution)
    return [im.crop(box) for box in crop_boxes(r, pic_num)]


def make_grid(images: Sequence[Any]):
    """Four equal square images tiled 2x2 (image k at column k % 2, row k // 2): what
    upstream's crops take apart."""
    from PIL import Image

    tiles = [_to_pil_rgb(im) for im in images]
    if len(tiles) != GRID * GRID:
        raise ValueError(f"a DPG-Bench grid takes {GRID * GRID} images, got {len(tiles)}")
    sizes = {t.size for t in tiles}
    if len(sizes) != 1 or tiles[0].width != tiles[0].height:
        raise ValueError(f"grid tiles must be square and of one size, got {sorted(sizes)}")
    r = tiles[0].width
    grid = Image.new("RGB", (GRID * r, GRID * r))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % GRID) * r, (k // GRID) * r))
    return grid


def write_grid_folder(samples: Mapping[str, Sequence[Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Write upstream's image folder: ``<out_dir>/<prompt id>.png``, each ``make_grid`` of the
    prompt's four samples (PIL images, uint8 HxWx3 arrays or paths), atomically. Returns the
    paths, in ``samples``' order."""
    out = Path(out_dir)
    bad = [pid for pid in samples if not pid or "/" in pid or "\\" in pid or "." in pid]
    if bad:
        raise ValueError(f"prompt ids must be plain file stems (no '.', '/'), got {bad[:5]}")
    paths = []
    for pid, images in samples.items():
        try:
            grid = make_grid(images)
        except ValueError as e:
            raise ValueError(f"prompt {pid!r}: {e}") from None
        p = out / f"{pid}.png"
        with artifacts.atomic_path(p) as tmp:
            grid.save(tmp, format="PNG")
        paths.append(p)
    return paths


def _image_key(name: str) -> str:
    return name.split(".")[0]  # upstream: osp.basename(image_path).split('.')[0]


def check_layout(images: str | os.PathLike | Mapping[str, Any], questions: Mapping[str, DPGItem],
                 expected_ids: Iterable[str] | None = None, pic_num: int = PIC_NUM,
                 resolution: int | None = None) -> dict[str, Any]:
    """The image (path, PIL image, array, or a sequence of tiles) of each expected prompt, in
    natural order of the ids; raises ``DPGLayoutError`` listing every missing, extra,
    duplicate, unreadable or wrongly sized image and every expected id without questions.

    ``images``: a folder (every file not starting with '.' is an image named
    ``<id>.<ext>``; sub-folders are ignored) or a mapping ``{id: image | [tiles]}``.
    ``expected_ids``: the prompts to score (default: every item of ``questions``)."""
    from PIL import Image

    problems: list[str] = []
    found: dict[str, Any] = {}
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.is_dir():
            raise DPGLayoutError(f"image folder {root} does not exist")
        by_key: dict[str, list[Path]] = {}
        for p in sorted(root.iterdir()):
            if p.name.startswith(".") or p.is_dir():
                continue
            by_key.setdefault(_image_key(p.name), []).append(p)
        for key, ps in by_key.items():
            if len(ps) > 1:
                problems.append(f"duplicate images for {key!r}: {', '.join(p.name for p in ps)}")
            found[key] = ps[0]
    else:
        found = dict(images)
    expected = list(questions) if expected_ids is None else [str(i) for i in expected_ids]
    exp_set = set(expected)
    no_questions = [i for i in expected if i not in questions]
    missing = [i for i in expected if i not in found]
    extra = [k for k in found if k not in exp_set]
    unreadable: list[str] = []
    for key in expected:
        if key not in found:
            continue
        v = found[key]
        try:
            if isinstance(v, (str, os.PathLike)):
                with Image.open(v) as im:
                    size = im.size
                    im.verify()
                _tile_size(*size, pic_num, resolution)
            elif isinstance(v, (list, tuple)):
                tiles = [_to_pil_rgb(t) for t in v]
                if not pic_num <= len(tiles) <= GRID * GRID:
                    raise ValueError(f"{len(tiles)} tiles, need {pic_num} to {GRID * GRID}")
                sizes = {t.size for t in tiles}
                if len(sizes) != 1 or tiles[0].width != tiles[0].height:
                    raise ValueError(f"tiles must be square and of one size, got {sorted(sizes)}")
                found[key] = tiles
            else:
                im = _to_pil_rgb(v)
                _tile_size(im.width, im.height, pic_num, resolution)
                found[key] = im
        except Exception as e:
            unreadable.append(f"{key} ({e})")

    def show(label: str, xs: list[str]) -> None:
        if xs:
            xs = sorted(xs, key=natural_key)
            problems.append(f"{len(xs)} {label}: {', '.join(xs[:20])}" + (" ..." if len(xs) > 20 else ""))

    show("expected prompt id(s) with no questions in dpg_bench.csv", no_questions)
    show("missing image(s)", missing)
    show("extra image(s) (not an expected prompt id)", extra)
    show("unreadable or wrongly sized image(s)", unreadable)
    if problems:
        where = f" in {images}" if isinstance(images, (str, os.PathLike)) else ""
        raise DPGLayoutError(f"DPG-Bench images{where} do not match the layout "
                             f"(one <prompt id>.png per prompt, a 2x2 grid):\n  " + "\n  ".join(problems))
    return {k: found[k] for k in sorted(expected, key=natural_key)}


def _tiles_of(value: Any, pic_num: int, resolution: int | None) -> list:
    if isinstance(value, list):
        return value[:pic_num]
    return split_grid(value, pic_num, resolution)


# ----------------------------------------------------------------------------- VQA backends


class VQA(Protocol):
    """``vqa(image, question) -> answer text``; optionally ``vqa_batch(images, questions)``."""

    name: str
    model_id: str
    exact: bool

    def vqa(self, image: Any, question: str) -> str: ...


class MPlugVQA:
    """DPG-Bench's VQA model: modelscope's visual-question-answering pipeline on mPLUG-large;
    the answer is the pipeline's ``text`` (upstream's ``MPLUG.vqa``). modelscope's
    ``MPlugPreprocessor`` converts the image to RGB, lower-cases the question and truncates it at
    25 tokens; the text is ``tokenizer.decode(..., skip_special_tokens=True)``."""

    name = "mplug"
    exact = True

    def __init__(self, model_id: str = MPLUG_MODEL, device: str | None = None, pipeline=None):
        self.model_id = model_id
        if pipeline is None:
            try:
                from modelscope.pipelines import pipeline as ms_pipeline
                from modelscope.utils.constant import Tasks
            except ImportError as e:
                raise RuntimeError(f"modelscope is not installed ({e}). "
                                   + DPG_EXTRA_HELP.format(model=model_id)) from e
            if device is None:
                import torch

                device = "gpu" if torch.cuda.is_available() else "cpu"
            try:
                pipeline = ms_pipeline(Tasks.visual_question_answering, model=model_id, device=device)
            except Exception as e:
                raise RuntimeError(f"could not build the mPLUG VQA pipeline {model_id!r}: {e}. "
                                   + DPG_EXTRA_HELP.format(model=model_id)) from e
        self.pipeline = pipeline

    def vqa(self, image: Any, question: str) -> str:
        return self.pipeline({"image": image, "question": question})["text"]


def mplug_vqa(model_id: str = MPLUG_MODEL, *, device: str | None = None) -> MPlugVQA:
    """Upstream's VQA model (exact); needs ``pip install 'capo[dpg]'``."""
    return MPlugVQA(model_id, device=device)


class BlipVQA:
    """VARIANT, not DPG-Bench's model: BLIP VQA in transformers; the answer is the generated
    text decoded with ``skip_special_tokens=True`` (as modelscope decodes mPLUG's)."""

    name = "blip-vqa"
    exact = False

    def __init__(self, model, processor, model_id: str = BLIP_VQA_MODEL, device: str | None = None,
                 batch_size: int = 16, generate_kwargs: Mapping[str, Any] | None = None):
        import torch

        self.model_id = model_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.batch_size = int(batch_size)
        self.generate_kwargs = dict(generate_kwargs or {})

    def vqa(self, image: Any, question: str) -> str:
        return self.vqa_batch([image], [question])[0]

    def vqa_batch(self, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
        import torch

        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        # Questions of equal token length go together, unpadded: transformers 5's BLIP text
        # cross-attention drops the question's padding mask (see capo.rewards.real's
        # vqascore-blip), so a padded batch would change answers.
        lengths = [len(x) for x in self.processor.tokenizer(list(questions))["input_ids"]]
        out: list[str] = [""] * len(images)
        dtype = next(self.model.parameters()).dtype
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        for rows_all in groups.values():
            for s in range(0, len(rows_all), self.batch_size):
                rows = rows_all[s:s + self.batch_size]
                inputs = self.processor(images=[_to_pil_rgb(images[i]) for i in rows],
                                        text=[questions[i] for i in rows], return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                with torch.no_grad():
                    ids = self.model.generate(**inputs, **self.generate_kwargs)
                for i, text in zip(rows, self.processor.batch_decode(ids, skip_special_tokens=True)):
                    out[i] = text
        return out


def blip_vqa(model_id_or_path: str = BLIP_VQA_MODEL, *, device: str | None = None, batch_size: int = 16,
             dtype=None, model=None, processor=None,
             generate_kwargs: Mapping[str, Any] | None = None) -> BlipVQA:
    """The transformers variant (``BlipForQuestionAnswering`` + ``BlipProcessor``, hub id or
    local path, or pass ``model`` and ``processor``); scores are labelled a variant."""
    if model is None or processor is None:
        from transformers import BlipForQuestionAnswering, BlipProcessor

        try:
            kw = {"dtype": dtype} if dtype is not None else {}
            model = model or BlipForQuestionAnswering.from_pretrained(model_id_or_path, **kw)
            processor = processor or BlipProcessor.from_pretrained(model_id_or_path)
        except Exception as e:
            raise _load_error("the BLIP VQA model", model_id_or_path, e) from e
    return BlipVQA(model, processor, model_id=model_id_or_path, device=device, batch_size=batch_size,
                   generate_kwargs=generate_kwargs)


VQAS: dict[str, Callable[..., VQA]] = {"mplug": mplug_vqa, "blip-vqa": blip_vqa}


def get_vqa(name: str, **kwargs) -> VQA:
    """Build the VQA backend ``name`` (``mplug``: exact; ``blip-vqa``: variant)."""
    if name not in VQAS:
        near = difflib.get_close_matches(name, list(VQAS), n=2, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise KeyError(f"unknown DPG-Bench VQA backend {name!r}.{hint} Known: {', '.join(sorted(VQAS))}")
    return VQAS[name](**kwargs)


def vqa_protocol(vqa: Any) -> dict:
    """``{"name", "model", "exact"}`` of a VQA backend, for the protocol card."""
    return {"name": getattr(vqa, "name", type(vqa).__name__), "model": getattr(vqa, "model_id", None),
            "exact": bool(getattr(vqa, "exact", False))}


# ----------------------------------------------------------------------------- entry point


def score_images(images: str | os.PathLike | Mapping[str, Any], vqa: Any, *,
                 questions: Mapping[str, DPGItem] | None = None, csv: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, verify: bool = True,
                 expected_ids: Iterable[str] | None = None, pic_num: int = PIC_NUM,
                 resolution: int | None = None, drop_first_row: bool = True, progress: bool = False) -> dict:
    """Score DPG-Bench images as upstream does.

    ``images``: the image folder (``<prompt id>.png``, 2x2 grids; ``write_grid_folder``) or a
    mapping ``{prompt id: grid image | path | [tiles]}``. ``vqa``: a backend (``.vqa(image,
    question)``, optionally ``.vqa_batch``), a registered name (``"mplug"``, ``"blip-vqa"``) or
    a zero-argument factory; names and factories are built only after the layout checks pass.
    ``questions``: parsed items, else ``load_questions(csv, cache_dir, verify, drop_first_row)``.
    ``expected_ids``: the prompts generated (default: all of the CSV's items).

    Returns ``{"rows", "prompts", "summary"}``: ``rows`` one per (prompt, tile, question) with
    ``item_id, tile, proposition_id, question, answer, raw, score`` (after the rule),
    ``dependency, category, subcategory, category_broad, category_detailed``; ``prompts`` one
    per prompt with ``item_id, score, tile_scores, error``; ``summary`` from ``summarize`` plus
    ``vqa`` (``vqa_protocol``), ``pic_num`` and ``protocol``.
    """
    if questions is None:
        questions = load_questions(csv, cache_dir, verify, drop_first_row)
    found = check_layout(images, questions, expected_ids, pic_num, resolution)
    if isinstance(vqa, str):
        vqa = get_vqa(vqa)
    elif not hasattr(vqa, "vqa") and callable(vqa):
        vqa = vqa()
    batch = getattr(vqa, "vqa_batch", None)

    rows: list[dict] = []
    results: list[dict] = []
    with bar(total=len(found), desc="DPG-Bench", unit="prompt", disable=not progress) as pbar:
        for item_id, value in found.items():
            item = questions[item_id]
            tiles = _tiles_of(value, pic_num, resolution)
            qids = list(item.questions)
            flat_images = [t for t in tiles for _ in qids]
            flat_questions = [item.questions[q] for _ in tiles for q in qids]
            if batch is not None:
                answers = list(batch(flat_images, flat_questions))
            else:
                answers = [vqa.vqa(im, q) for im, q in zip(flat_images, flat_questions)]
            if len(answers) != len(flat_questions):
                raise RuntimeError(f"VQA returned {len(answers)} answers for {len(flat_questions)} questions")
            for a in answers:
                if not isinstance(a, str):
                    raise TypeError(f"VQA answers must be strings, got {type(a).__name__}: {a!r:.80}")
            per_tile = [dict(zip(qids, answers[k * len(qids):(k + 1) * len(qids)])) for k in range(len(tiles))]
            try:
                res = score_item(per_tile, item)
                error = None
            except MissingParentError as e:
                res, error = None, f"KeyError: {e.args[0]}"
            for k, ans in enumerate(per_tile):
                for qid in qids:
                    c1, c2 = question_category(item.tuples[qid])
                    rows.append({"item_id": item_id, "tile": k, "proposition_id": qid,
                                 "question": item.questions[qid], "answer": ans[qid], "raw": answer_score(ans[qid]),
                                 "score": None if res is None else res["ruled"][k][qid],
                                 "dependency": ",".join(map(str, item.dependencies[qid])),
                                 "category": c1, "subcategory": c2,
                                 "category_broad": item.category_broad[qid],
                                 "category_detailed": item.category_detailed[qid]})
            if res is None:
                results.append({"item_id": item_id, "score": None, "tile_scores": None, "error": error})
            else:
                last = res["raw"][-1]
                cats = [(*question_category(item.tuples[q]), last[q]) for q in qids]
                results.append({"item_id": item_id, "score": res["score"], "tile_scores": res["tile_scores"],
                                "error": None, "categories": cats})
            pbar.update(1)
    summary = summarize(results)
    summary.update(vqa=vqa_protocol(vqa), pic_num=pic_num,
                   protocol="DPG-Bench" if vqa_protocol(vqa)["exact"] else
                   f"DPG-Bench rules with a variant VQA model ({vqa_protocol(vqa)['name']}); not comparable "
                   "with published DPG-Bench scores")
    prompts_out = [{k: v for k, v in r.items() if k != "categories"} for r in results]
    return {"rows": rows, "prompts": prompts_out, "summary": summary}
