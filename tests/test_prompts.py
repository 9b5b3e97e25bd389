"""Prompt sets, offline, against the upstream copies in shared/benchmarks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from capo.eval import prompts as P

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
pytestmark = pytest.mark.skipif(not BENCH.is_dir(), reason=f"benchmark copies not at {BENCH}")

GENEVAL_URL = ("https://raw.githubusercontent.com/djghosh13/geneval/af4902f24d3ca90ebbb446dd9891a59e0f82725f/"
               "prompts/evaluation_metadata.jsonl")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path / "capo-cache"))  # never the user's cache


@pytest.mark.parametrize("name,count", [
    ("geneval", 553), ("parti", 1632), ("dpg-bench", 1065),
    *[(f"t2i-compbench:{c}", 300) for c in P.T2I_COMPBENCH_CATEGORIES],
])
def test_counts_from_shared_copies(name, count):
    records = P.load_prompt_set(name, source=BENCH)
    assert len(records) == count
    assert len({r["id"] for r in records}) == count
    assert [r["index"] for r in records] == list(range(count))
    assert all(isinstance(r["prompt"], str) and r["prompt"].strip() for r in records)
    if name != "parti":  # Parti's Prompt column is kept verbatim: ten prompts carry edge spaces
        assert all(r["prompt"].strip() == r["prompt"] for r in records)


def test_record_metadata():
    g = P.load_prompt_set("geneval", source=BENCH)
    assert g[0] == {"id": "00000", "index": 0, "tag": "single_object",
                    "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    parti = P.load_prompt_set("parti", source=BENCH)
    assert parti[0] == {"id": "0000", "index": 0, "prompt": "bond", "category": "Abstract", "challenge": "Basic",
                        "note": "Biology-inspired concepts with multiple meanings"}
    assert any(r["prompt"].startswith('"G I G G L E"') for r in parti)  # quotes kept literally
    color = P.load_prompt_set("t2i-compbench:color", source=BENCH)
    assert color[0]["prompt"] == "a green bench and a blue bowl" and color[0]["category"] == "color"
    kinds = [r["complex_kind"] for r in P.load_prompt_set("t2i-compbench:complex", source=BENCH)]
    assert {k: kinds.count(k) for k in set(kinds)} == {"spatial": 58, "action": 212, "all": 30}


def test_dpg_bench_natural_order_and_pinned_checksums():
    recs = P.load_prompt_set("dpg-bench", source=BENCH)
    assert [r["id"] for r in recs[:12]] == [str(i) for i in range(12)]
    assert recs[-1]["id"] == "whoops39"
    manifest = json.loads(P.DPG_SHA256_FILE.read_text())
    assert manifest["count"] == 1065 == len(manifest["files"])
    h = hashlib.sha256()
    for r in recs:
        data = (BENCH / "dpg-bench" / "prompts" / r["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["files"][r["file"]]
        h.update(data)
    assert h.hexdigest() == manifest["concatenated_sha256"]
    assert h.hexdigest().startswith("1ec6e8f972a2cc88")  # SOURCES.md: "1ec6e8f972a2cc88..."


def test_source_may_be_the_sets_folder_or_file():
    assert len(P.load_prompt_set("geneval", source=BENCH / "geneval")) == 553
    assert len(P.load_prompt_set("geneval", source=BENCH / "geneval" / "evaluation_metadata.jsonl")) == 553
    assert len(P.load_prompt_set("dpg-bench", source=BENCH / "dpg-bench")) == 1065
    assert len(P.load_prompt_set("dpg-bench", source=BENCH / "dpg-bench" / "prompts")) == 1065
    complex_ = P.load_prompt_set("t2i-compbench:complex", source=BENCH / "t2i-compbench" / "complex_val.txt")
    assert len(complex_) == 300  # companions found beside the file
    with pytest.raises(FileNotFoundError, match="complex_val_spatial.txt"):
        P.load_prompt_set("t2i-compbench:complex", source=BENCH / "geneval")


def test_upstream_urls_are_pinned():
    (f,) = P.get_prompt_set("geneval").files()
    assert f.url == GENEVAL_URL
    dpg = P.get_prompt_set("dpg-bench").files()
    assert dpg[0].url == ("https://raw.githubusercontent.com/TencentQQGYLab/ELLA/"
                          "3c228f1dc6c4d3cad0a47493816151a419f14db3/dpg_bench/prompts/0.txt")
    (c,) = P.get_prompt_set("t2i-compbench:3d_spatial").files()
    assert c.url.endswith("/Karine-Huang/T2I-CompBench/1b7094991a57f3c22abdd4f6e8ba6c1a15517073/"
                          "examples/dataset/3d_spatial_val.txt")


# ------------------------------------------------------------------ checksums, cache, offline


def test_checksum_mismatch_names_expected_and_got(tmp_path):
    bad = tmp_path / "PartiPrompts.tsv"
    data = (BENCH / "parti" / "PartiPrompts.tsv").read_bytes().replace(b"bond", b"bind", 1)
    bad.write_bytes(data)
    got = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError) as e:
        P.load_prompt_set("parti", source=bad)
    msg = str(e.value)
    assert "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb" in msg and got in msg
    assert "verify=False" in msg
    assert P.load_prompt_set("parti", source=bad, verify=False)[0]["prompt"] == "bind"


def _seed_cache(cache: Path, *locals_: str) -> None:
    for local in locals_:
        (cache / local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BENCH / local, cache / local)


def test_cache_is_used_offline(tmp_path):
    cache = tmp_path / "cache"
    _seed_cache(cache, "geneval/evaluation_metadata.jsonl")
    assert len(P.load_prompt_set("geneval", cache_dir=cache)) == 553


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPO_CACHE", str(tmp_path))
    assert P.default_cache_dir() == tmp_path / "benchmarks"
    _seed_cache(tmp_path / "benchmarks", "parti/PartiPrompts.tsv")
    assert len(P.load_prompt_set("parti")) == 1632
    monkeypatch.delenv("CAPO_CACHE")
    assert P.default_cache_dir() == Path.home() / ".cache" / "capo" / "benchmarks"


def test_offline_without_cache_names_files_and_url(tmp_path, monkeypatch):
    def no_network(url, timeout=60.0):
        raise AssertionError("must not download offline")

    monkeypatch.setattr(P, "_fetch", no_network)
    with pytest.raises(FileNotFoundError) as e:
        P.load_prompt_set("geneval", cache_dir=tmp_path / "empty")
    msg = str(e.value)
    assert "geneval/evaluation_metadata.jsonl" in msg and GENEVAL_URL in msg
    assert str(tmp_path / "empty") in msg and "HF_HUB_OFFLINE" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("CAPO_OFFLINE", "true")
    with pytest.raises(FileNotFoundError, match="1065 file"):
        P.load_prompt_set("dpg-bench", cache_dir=tmp_path / "empty")


def test_offline_with_corrupt_cache_says_so(tmp_path):
    cache = tmp_path / "cache"
    _seed_cache(cache, "t2i-compbench/shape_val.txt")
    (cache / "t2i-compbench/shape_val.txt").write_text("an oblong cucumber\n")
    with pytest.raises(FileNotFoundError, match="37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae"):
        P.load_prompt_set("t2i-compbench:shape", cache_dir=cache)


def test_download_into_cache_atomically(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("CAPO_OFFLINE", raising=False)
    fetched = []

    def fake_fetch(url, timeout=60.0):
        fetched.append(url)
        return (BENCH / "t2i-compbench" / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(P, "_fetch", fake_fetch)
    cache = tmp_path / "cache"
    recs = P.load_prompt_set("t2i-compbench:complex", cache_dir=cache)
    assert len(recs) == 300 and len(fetched) == 3
    assert sorted(p.name for p in (cache / "t2i-compbench").iterdir()) == [
        "complex_val.txt", "complex_val_action.txt", "complex_val_spatial.txt"]  # no partial files
    P.load_prompt_set("t2i-compbench:complex", cache_dir=cache)
    assert len(fetched) == 3  # served from the cache the second time

    monkeypatch.setattr(P, "_fetch", lambda url, timeout=60.0: b"tampered\n")
    with pytest.raises(ValueError, match="checksum mismatch"):
        P.load_prompt_set("t2i-compbench:color", cache_dir=cache)
    assert not (cache / "t2i-compbench" / "color_val.txt").exists()
    assert not [p for p in (cache / "t2i-compbench").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ malformed files


def test_malformed_parti_rows_and_header(tmp_path):
    lines = (BENCH / "parti" / "PartiPrompts.tsv").read_text(encoding="utf-8").split("\n")
    bad = tmp_path / "PartiPrompts.tsv"
    bad.write_text("\n".join(lines[:5] + ["a prompt\twith two columns"] + lines[5:]), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:6: expected 4 tab-separated columns, got 2"):
        P.load_prompt_set("parti", source=bad, verify=False)
    bad.write_text("Text\tCategory\tChallenge\tNote\nbond\tA\tB\tC\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}:1: header"):
        P.load_prompt_set("parti", source=bad, verify=False)


def test_malformed_geneval_line(tmp_path):
    lines = (BENCH / "geneval" / "evaluation_metadata.jsonl").read_text().splitlines()
    bad = tmp_path / "evaluation_metadata.jsonl"
    lines[41] = lines[41][:-1]  # drop the closing brace of line 42
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}:42: not valid JSON"):
        P.load_prompt_set("geneval", source=bad, verify=False)


def test_malformed_compbench_and_dpg(tmp_path):
    bad = tmp_path / "color_val.txt"
    bad.write_text("a red car\n\na blue dog\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: blank line"):
        P.load_prompt_set("t2i-compbench:color", source=bad, verify=False)
    dpg = tmp_path / "prompts"
    shutil.copytree(BENCH / "dpg-bench" / "prompts", dpg)
    (dpg / "17.txt").write_text("  \n")
    with pytest.raises(ValueError, match=r"17\.txt: empty prompt file"):
        P.load_prompt_set("dpg-bench", source=dpg, verify=False)
    with pytest.raises(ValueError, match=r"17\.txt.*expected sha256"):
        P.load_prompt_set("dpg-bench", source=dpg)
    (dpg / "17.txt").unlink()
    with pytest.raises(FileNotFoundError, match="dpg-bench/prompts/17.txt"):
        P.load_prompt_set("dpg-bench", source=dpg)


# ------------------------------------------------------------------ limit / subset / registry


def test_limit_and_subset():
    full = P.load_prompt_set("parti", source=BENCH)
    assert P.load_prompt_set("parti", source=BENCH, limit=5) == full[:5]
    a = P.load_prompt_set("parti", source=BENCH, subset=50, seed=1)
    b = P.load_prompt_set("parti", source=BENCH, subset=50, seed=1)
    c = P.load_prompt_set("parti", source=BENCH, subset=50, seed=2)
    assert a == b and a != c and len(a) == 50
    assert [r["index"] for r in a] == sorted(r["index"] for r in a)
    assert P.load_prompt_set("parti", source=BENCH, subset=50, seed=1, limit=3) == a[:3]
    with pytest.raises(ValueError, match="subset"):
        P.load_prompt_set("parti", source=BENCH, subset=5000)
    with pytest.raises(ValueError, match="limit"):
        P.load_prompt_set("parti", source=BENCH, limit=-1)


def test_unknown_names_suggest_nearest():
    with pytest.raises(KeyError, match="Did you mean 't2i-compbench:color'") as e:
        P.get_prompt_set("t2i-compbench:colour")
    assert "dpg-bench" in str(e.value) and "geneval" in str(e.value)
    with pytest.raises(KeyError, match="'parti'"):
        P.load_prompt_set("partiprompts", source=BENCH)
    assert P.list_prompt_sets() == sorted(P.PROMPT_SETS)


# ------------------------------------------------------------------ capo.prompts: val/test halves, stratified subsets
# (they need no benchmark copies but for the parti one; the module's skip mark covers them all the same)

from capo import prompts as CP  # noqa: E402
from capo.stages.evaluate import prompt_set_dir  # noqa: E402


def _tagged_jsonl(path: Path, sizes: dict[str, int], extra: list[dict] | None = None) -> Path:
    lines = [json.dumps({"prompt": f"a {tag} prompt number {i}", "tag": tag})
             for tag, n in sizes.items() for i in range(n)]
    lines += [json.dumps(r) for r in extra or []]
    path.write_text("\n".join(lines) + "\n")
    return path


def _halves(spec, **kw):
    return CP.load_prompts(spec + "@val", **kw), CP.load_prompts(spec + "@test", **kw)


@pytest.mark.parametrize("spec", ["shapes:geneval", "shapes:train", "shapes:compbench:color"])
def test_val_test_disjoint_cover_and_stratified(spec):
    full = CP.load_prompts(spec)
    val, test = _halves(spec)
    ids = lambda rs: [r["prompt_id"] for r in rs]  # noqa: E731
    assert not set(ids(val)) & set(ids(test))
    assert sorted(ids(val) + ids(test)) == sorted(ids(full))
    by_id = {r["prompt_id"]: r for r in full}
    assert all(by_id[r["prompt_id"]] == r for r in val + test)  # the full set's records and ids
    assert ids(val) == [i for i in ids(full) if i in set(ids(val))]  # in the set's order
    sv, st, sf = CP.strata_of(val), CP.strata_of(test), CP.strata_of(full)
    for tag, n in sf.items():
        assert sv.get(tag, 0) == n // 2 and st[tag] == n - n // 2  # val floor(n/2), test ceil(n/2)
        if n >= 2:
            assert sv[tag] >= 1 and st[tag] >= 1


def test_split_by_hash_of_text_not_order_seed_or_limit(tmp_path):
    f = _tagged_jsonl(tmp_path / "p.jsonl", {"a": 5, "b": 4, "c": 1})
    val, test = _halves(str(f))
    # by hand: within a tag, ranked by sha256("capo-split/" + prompt), the first floor(n/2) to val
    for tag, n in {"a": 5, "b": 4, "c": 1}.items():
        prompts = [f"a {tag} prompt number {i}" for i in range(n)]
        ranked = sorted(prompts, key=lambda p: hashlib.sha256(("capo-split/" + p).encode()).hexdigest())
        assert {r["prompt"] for r in val if r["tag"] == tag} == set(ranked[:n // 2])
        assert {r["prompt"] for r in test if r["tag"] == tag} == set(ranked[n // 2:])
    assert CP.strata_of(test) == {"a": 3, "b": 2, "c": 1} and CP.strata_of(val) == {"a": 2, "b": 2}
    # reversed file: the same halves (ids follow the file, prompts do not move between halves)
    rev = tmp_path / "rev.jsonl"
    rev.write_text("\n".join(reversed(f.read_text().splitlines())) + "\n")
    assert {r["prompt"] for r in CP.load_prompts(str(rev) + "@val")} == {r["prompt"] for r in val}
    # the order of calls and a limit change nothing but the length
    assert CP.load_prompts(str(f) + "@test") == test and CP.load_prompts(str(f) + "@val") == val
    assert CP.load_prompts(str(f) + "@val", limit=3) == val[:3]
    for k in (1, 2, 3, 4):
        sub = CP.load_prompts(str(f) + "@test", limit=k, stratify=True, subset_seed=7)
        assert {r["prompt_id"] for r in sub} <= {r["prompt_id"] for r in test}


def test_split_ids_are_full_set_ids_and_stable_under_limit():
    full_ids = {r["prompt"]: r["prompt_id"] for r in CP.load_prompts("shapes:geneval")}
    val, test = _halves("shapes:geneval")
    assert all(full_ids[r["prompt"]] == r["prompt_id"] for r in val + test)
    for k in (1, 5, 17):
        assert CP.load_prompts("shapes:geneval@val", limit=k) == val[:k]
        sub = CP.load_prompts("shapes:geneval@test", limit=k, stratify=True)
        assert {r["prompt_id"] for r in sub} <= {r["prompt_id"] for r in test}
    assert CP.load_prompts("shapes:geneval@test", limit=2) == test[:2]


def test_split_of_txt_file_and_untagged_stratum(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("".join(f"prompt {i}\n" for i in range(7)))
    val, test = _halves(str(f))
    assert len(val) == 3 and len(test) == 4
    assert sorted(r["prompt_id"] for r in val + test) == [f"{i:05d}" for i in range(7)]
    assert CP.strata_of(val) == {CP.UNTAGGED: 3}


def test_split_suffix_errors_and_files_named_with_at(tmp_path):
    f = _tagged_jsonl(tmp_path / "p.jsonl", {"a": 3})
    with pytest.raises(CP.PromptError, match=r"unknown split suffix '@train'.*@val, @test"):
        CP.load_prompts(str(f) + "@train")
    with pytest.raises(CP.PromptError, match="unknown split suffix '@Val'"):
        CP.load_prompts("shapes:geneval@Val")
    with pytest.raises(CP.PromptError, match="no prompt set before"):
        CP.load_prompts("@val")
    odd = tmp_path / "odd@test"  # a real file wins over the suffix
    odd.write_text("one\ntwo\n")
    assert len(CP.load_prompts(str(odd))) == 2
    with pytest.raises(CP.PromptError, match="limit must be >= 0"):
        CP.load_prompts(str(f), limit=-1)


def test_split_validates_the_full_set(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a\nb\nc\nb\n")
    with pytest.raises(CP.PromptError, match="duplicate prompt 'b' at line 2 and line 4"):
        CP.load_prompts(str(f) + "@val")
    f.write_text("a\n\nc\n")
    with pytest.raises(CP.PromptError, match="blank prompt at line 2"):
        CP.load_prompts(str(f) + "@test", limit=1)


def test_split_of_benchmark_set_from_cache(monkeypatch, tmp_path):
    if not BENCH.is_dir():
        pytest.skip("needs shared/benchmarks")
    _seed_cache(tmp_path / "capo-cache" / "benchmarks", "parti/PartiPrompts.tsv")
    val, test = _halves("parti")
    assert len(val) + len(test) == 1632 and not {r["prompt_id"] for r in val} & {r["prompt_id"] for r in test}
    assert set(CP.strata_of(val)) == set(CP.strata_of(test)) == set(CP.strata_of(CP.load_prompts("parti")))


def test_allocate_largest_remainder_by_hand():
    # quotas 32 * (50, 24, 12, 6, 6, 2) / 100 = 16, 7.68, 3.84, 1.92, 1.92, 0.64: floors 16, 7, 3, 1, 1, 0
    # (28), the 4 left to the largest remainders (.92, .92, .84, .68) -> 16, 8, 4, 2, 2, 0; the empty
    # stratum takes one from the one most above its quota (position, +0.32) -> 16, 7, 4, 2, 2, 1
    assert CP.allocate([50, 24, 12, 6, 6, 2], 32) == [16, 7, 4, 2, 2, 1]
    assert CP.allocate([6, 3, 1], 5) == [3, 1, 1]  # 3, 1.5, 0.5 -> 3, 2, 0 -> 3, 1, 1
    assert CP.allocate([6, 3, 1], 2) == [1, 1, 0]  # fewer draws than strata: no minimum
    assert CP.allocate([5, 5], 3) == [2, 1]  # equal remainders: the earlier stratum
    assert CP.allocate([4, 4, 2], 10) == [4, 4, 2]
    assert sum(CP.allocate([7, 1, 1, 1, 90], 4)) == 4 and min(CP.allocate([7, 1, 1, 1, 90], 5)) == 1


def test_stratified_subset_proportions_seeded_and_in_order(tmp_path):
    f = _tagged_jsonl(tmp_path / "p.jsonl", {"a": 12, "b": 6, "c": 2})
    full = CP.load_prompts(str(f))
    sub = CP.load_prompts(str(f), limit=10, stratify=True, subset_seed=3)
    assert CP.strata_of(sub) == {"a": 6, "b": 3, "c": 1}  # 12, 6, 2 halved
    assert [r["prompt_id"] for r in sub] == sorted(r["prompt_id"] for r in sub)  # the set's order
    assert all(r in full for r in sub)
    # by hand: within a stratum the first by sha256("capo-subset/<seed>/" + prompt)
    a = sorted((r["prompt"] for r in full if r["tag"] == "a"),
               key=lambda p: hashlib.sha256(f"capo-subset/3/{p}".encode()).hexdigest())[:6]
    assert {r["prompt"] for r in sub if r["tag"] == "a"} == set(a)
    assert CP.load_prompts(str(f), limit=10, stratify=True, subset_seed=3) == sub  # reproducible
    others = [CP.load_prompts(str(f), limit=10, stratify=True, subset_seed=s) for s in range(4)]
    assert any(o != sub for o in others) and all(CP.strata_of(o) == CP.strata_of(sub) for o in others)
    assert CP.load_prompts(str(f), limit=10) == full[:10]  # stratify=False: the first K, as before
    assert CP.load_prompts(str(f), limit=50, stratify=True) == full  # K >= N: everything
    assert CP.load_prompts(str(f), limit=3, stratify=True, subset_seed=1) != []
    assert CP.strata_of(CP.load_prompts(str(f), limit=3, stratify=True)) == {"a": 1, "b": 1, "c": 1}


def test_limit_32_of_shapes_geneval_covers_every_tag():
    full = CP.load_prompts("shapes:geneval")
    tags = set(CP.strata_of(full))
    assert len(tags) == 6
    assert set(CP.strata_of(CP.load_prompts("shapes:geneval", limit=32))) != tags  # first 32: color_attr missing
    sub = CP.load_prompts("shapes:geneval", limit=32, stratify=True)
    assert len(sub) == 32 and set(CP.strata_of(sub)) == tags
    assert CP.strata_of(sub) == {"single_object": 1, "two_object": 2, "counting": 2, "colors": 4, "position": 7,
                                 "color_attr": 16}
    for s in range(5):
        assert set(CP.strata_of(CP.load_prompts("shapes:geneval", limit=32, stratify=True, subset_seed=s))) == tags
    assert set(CP.strata_of(CP.load_prompts("shapes:geneval@test", limit=32, stratify=True))) == tags


def test_strata_of_counts_tag_then_category():
    recs = [{"prompt": "x", "tag": "t"}, {"prompt": "y", "category": "c"}, {"prompt": "z"},
            {"prompt": "w", "tag": "t", "category": "c"}]
    assert CP.strata_of(recs) == {"t": 2, "c": 1, CP.UNTAGGED: 1}


# --------------------------------------------------------------------------- unions A+B
SHAPES_TEST_UNION = "shapes:geneval@test+shapes:compbench:color@test+shapes:compbench:numeracy@test"


def test_union_of_shapes_halves_keeps_ids_and_order():
    parts = [CP.load_prompts(p) for p in SHAPES_TEST_UNION.split("+")]
    u = CP.load_prompts(SHAPES_TEST_UNION)
    assert len(u) == sum(len(p) for p in parts) == 50 + 25 + 25
    # the shapes world's ids are unique across sets, so they are kept: the same prompt gets
    # the same image seeds (item_seed(seed, prompt_id, k)) in the union as in its own set
    assert u == [r for p in parts for r in p]
    assert CP.strata_of(u)["color"] == 25 and CP.strata_of(u)["numeracy"] == 25
    # a limit applies to the union; stratified, every part's strata stay represented
    sub = CP.load_prompts(SHAPES_TEST_UNION, limit=24, stratify=True)
    assert len(sub) == 24 and {"color", "numeracy", "position"} <= set(CP.strata_of(sub))
    assert CP.load_prompts(SHAPES_TEST_UNION, limit=3) == u[:3]


def test_union_namespaces_colliding_ids_and_refuses_shared_prompts(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("red\ngreen\n")
    b.write_text("blue\n")
    u = CP.load_prompts(f"{a}+{b}")
    # both files number from 00000: every id gets its part's name
    assert [r["prompt_id"] for r in u] == [f"{a}/00000", f"{a}/00001", f"{b}/00000"]
    assert [r["prompt"] for r in u] == ["red", "green", "blue"]
    b.write_text("blue\ngreen\n")
    with pytest.raises(CP.PromptError, match=f"prompt 'green' is in both {a} and {b}"):
        CP.load_prompts(f"{a}+{b}")
    with pytest.raises(CP.PromptError, match="named twice"):
        CP.load_prompts(f"{a}+{a}")
    with pytest.raises(CP.PromptError, match="an empty part"):
        CP.load_prompts(f"{a}+")
    # each part is validated and split on its own; a file whose name holds '+' is that file
    with pytest.raises(CP.PromptError, match="unknown split suffix"):
        CP.load_prompts(f"{a}+{b}@train")
    plus = tmp_path / "x+y.txt"
    plus.write_text("one\n")
    assert [r["prompt"] for r in CP.load_prompts(str(plus))] == ["one"]


def test_union_sample_dir_name_is_short_and_distinct():
    long = "+".join(f"shapes:compbench:{c}@test" for c in ("color", "shape", "texture", "spatial", "numeracy"))
    d = prompt_set_dir(long)
    assert len(d) <= 100 and d.startswith("shapes-compbench-color-test-shapes")
    assert d != prompt_set_dir(long.replace("numeracy", "complex"))
    assert prompt_set_dir("shapes:geneval@test") == "shapes-geneval-test"


def test_short_name_of_a_long_union():
    long = "+".join(f"shapes:compbench:{c}@test" for c in ("color", "shape", "texture"))
    assert CP.short_name(long) == "shapes:compbench:color@test+2 more sets"
    assert CP.short_name("shapes:geneval@test+shapes:train") == "shapes:geneval@test+shapes:train"
    assert CP.short_name("shapes:geneval@test") == "shapes:geneval@test"
