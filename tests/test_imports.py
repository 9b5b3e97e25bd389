"""Imports run down the layers (issue #20): vocabulary <- method <- data <- models/rewards <- evaluation
<- stages <- reporting <- experiments <- CLI. ARCHITECTURE.md lists the same layers. A new upward import fails here;
the upward imports that remain from before are listed in KNOWN_CLIMBS, to be removed, never added to."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [  # lowest first; a module may import from its own layer or any below it
    ("vocabulary", ["capo/vocabulary.py", "capo/__init__.py"]),
    ("method", ["capo/method/"]),
    ("data", ["capo/artifacts.py", "capo/registry.py", "capo/config.py", "capo/progress.py", "capo/dist.py",
              "capo/prompts.py", "capo/samples.py", "capo/datasets/", "capo/eval/prompts.py", "capo/openclip.py"]),
    ("models", ["capo/models/", "capo/rewards/", "capo/worlds/", "capo/weights.py"]),
    ("eval", ["capo/eval/"]),
    ("stages", ["capo/stages/", "capo/plan.py", "capo/tracking.py", "capo/worlds/shapes/build.py",
                "capo/datasets/pickapic.py"]),
    ("report", ["capo/report/"]),
    ("experiments", ["capo/experiments/", "capo/export.py"]),
    ("cli", ["cli.py", "capo/__main__.py", "capo/cli.py"]),
]

# (importer, imported) pairs that climb today; issue #20 removed the last of them: keep it empty
KNOWN_CLIMBS: set[tuple[str, str]] = set()


def layer_of(rel: str) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if rel == p or (p.endswith("/") and rel.startswith(p)):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return best[0] if best else None


def module_file(mod: str) -> str | None:
    p = ROOT.joinpath(*mod.split("."))
    if (p / "__init__.py").is_file():
        return str((p / "__init__.py").relative_to(ROOT))
    if p.with_suffix(".py").is_file():
        return str(p.with_suffix(".py").relative_to(ROOT))
    return None


def runs_capo_code(init_file: str) -> bool:
    """Whether a package's ``__init__.py`` imports any capo module (an empty one runs nothing)."""
    return bool(internal_imports((ROOT / init_file).read_text(encoding="utf-8"), init_file, implied=False))


def internal_imports(source: str, rel: str = "", implied: bool = True) -> set[str]:
    """Files of capo (and cli) that ``source`` (the file ``rel``) imports, at module top or inside
    functions, relative imports resolved. ``implied``: also the ``__init__.py`` of each package
    on the way that Python runs first (``capo.models.sampling`` runs ``capo/models/__init__.py``),
    unless the package holds ``rel`` (it has started by then) or its ``__init__`` imports nothing."""
    here = rel.removesuffix(".py").replace("/", ".").split(".")[:-1]  # the importer's package
    out = set()
    for node in ast.walk(ast.parse(source)):
        mods = []
        if isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            if base and base.split(".")[0] in ("capo", "cli"):
                mods = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names if a.name.split(".")[0] == "capo"]
        for m in mods:
            parts = m.split(".")
            for k in range(1, len(parts) + 1):
                f = module_file(".".join(parts[:k]))
                if f is None or (k < len(parts) and not implied):
                    continue
                if f.endswith("__init__.py") and (rel.startswith(f.removesuffix("__init__.py"))
                                                  or (implied and f != rel and not runs_capo_code(f))):
                    continue
                out.add(f)
    return out - {rel}


def climbs(extra: dict[str, str] | None = None) -> set[tuple[str, str]]:
    """(importer, imported) pairs whose imported file sits in a higher layer; ``extra`` adds
    files (path -> source) that are not on disk."""
    sources = {str(f.relative_to(ROOT)): f.read_text(encoding="utf-8")
               for f in [ROOT / "cli.py", *sorted((ROOT / "capo").rglob("*.py"))] if "/artifacts/" not in str(f)}
    sources.update(extra or {})
    found = set()
    for rel, source in sources.items():
        lf = layer_of(rel)
        assert lf is not None, f"{rel} is in no layer: add it to LAYERS (and ARCHITECTURE.md)"
        for t in internal_imports(source, rel):
            lt = layer_of(t)
            if lt is not None and lt > lf:
                found.add((rel, t))
    return found


def test_no_new_upward_import():
    new = climbs() - KNOWN_CLIMBS
    assert not new, ("imports that climb a layer (see ARCHITECTURE.md): "
                     + "; ".join(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                                 for a, b in sorted(new)))


def graph() -> dict[str, set[str]]:
    """File -> the capo files it imports (at module top or inside functions)."""
    sources = {str(f.relative_to(ROOT)): f.read_text(encoding="utf-8")
               for f in [ROOT / "cli.py", *sorted((ROOT / "capo").rglob("*.py"))]}
    return {rel: internal_imports(src, rel) for rel, src in sources.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``g``: its strongly connected components of more than one file
    (Tarjan's algorithm, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circle():
    assert not cycles(graph()), f"import circles: {cycles(graph())}"


def test_a_planted_circle_is_caught():
    """Two files importing each other (one of them inside a function) form a circle."""
    g = graph()
    g["capo/stages/planted_a.py"] = internal_imports("from capo.stages.planted_b import f\n") | {"capo/stages/planted_b.py"}
    g["capo/stages/planted_b.py"] = {"capo/stages/planted_a.py", "capo/stages/train.py"}
    assert cycles(g) == [["capo/stages/planted_a.py", "capo/stages/planted_b.py"]]


def test_known_climbs_are_still_there():
    """A climb removed must leave KNOWN_CLIMBS too (the list only shrinks)."""
    gone = KNOWN_CLIMBS - climbs()
    assert not gone, f"no longer climbing, remove from KNOWN_CLIMBS: {sorted(gone)}"


def test_a_planted_upward_import_is_caught():
    planted = {"capo/method/planted.py": "def f():\n    from capo.stages.train import run\n",
               "capo/eval/planted.py": "import capo.report.tables\n"}
    assert climbs(planted) - KNOWN_CLIMBS == {("capo/method/planted.py", "capo/stages/train.py"),
                                              ("capo/eval/planted.py", "capo/report/tables.py")}


def test_architecture_md_names_the_layers():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name, prefixes in LAYERS:
        assert f"**{name}**" in text, f"ARCHITECTURE.md does not describe layer {name!r}"
        for p in prefixes:
            assert f"`{p}`" in text, f"ARCHITECTURE.md does not place {p} in layer {name!r}"


def imports_inside_functions(sources: dict[str, str] | None = None) -> list[str]:
    """``file:line`` of every import of a capo module (absolute or relative) inside a function
    of capo/ or cli.py; ``sources`` (path -> text) instead of the files on disk."""
    if sources is None:
        sources = {str(f.relative_to(ROOT)): f.read_text(encoding="utf-8")
                   for f in [ROOT / "cli.py", *sorted((ROOT / "capo").rglob("*.py"))] if "/artifacts/" not in str(f)}
    found = []
    for rel, source in sources.items():
        tree = ast.parse(source)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "capo"):
                    found.append(f"{rel}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "capo" for a in node.names):
                    found.append(f"{rel}:{node.lineno}")
    return sorted(set(found))


def test_capo_imports_sit_at_module_top():
    """ARCHITECTURE.md's rule: capo's own modules are imported at the top of the file, never
    inside a function (only heavy third-party packages load lazily)."""
    assert not imports_inside_functions(), imports_inside_functions()
    assert "never inside a function" in (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")


def test_a_planted_import_inside_a_function_is_caught():
    planted = {"capo/stages/planted.py": "import numpy\n\ndef f():\n    import torch\n    if True:\n"
                                         "        from capo.models import load_model\n    from . import train\n"}
    assert imports_inside_functions(planted) == ["capo/stages/planted.py:6", "capo/stages/planted.py:7"]


def test_imports_count_the_package_inits_python_runs_first():
    """Importing ``capo.models.sampling`` runs ``capo/models/__init__.py`` first (it imports capo
    modules), so a shapes-world file importing it depends on that file too: the circle that
    ``load_model`` importing the shapes pipeline would close is visible here. A relative import
    resolves against the importer's package; an ``__init__`` that imports nothing
    (``capo/eval/__init__.py``) and the importer's own packages add no edge."""
    got = internal_imports("from capo.models.sampling import GuidedSampling\n", "capo/worlds/shapes/planted.py")
    assert got == {"capo/models/__init__.py", "capo/models/sampling.py"}
    assert internal_imports("from .grammar import VOCAB\n", "capo/worlds/shapes/planted.py") == {
        "capo/worlds/shapes/grammar.py"}
    assert internal_imports("from ..truth import utility\n", "capo/worlds/shapes/rewards/planted.py") == {
        "capo/worlds/shapes/truth.py"}
    assert internal_imports("from capo.eval.prompts import PROMPT_SETS\n", "capo/prompts.py") == {
        "capo/eval/prompts.py"}
    g = graph()
    g["capo/models/__init__.py"] = g["capo/models/__init__.py"] | {"capo/worlds/shapes/pipeline.py"}
    assert any({"capo/models/__init__.py", "capo/worlds/shapes/pipeline.py"} <= set(c) for c in cycles(g))


def test_long_functions_are_the_ones_the_readme_names():
    """No function in capo/ is over 80 lines unless the README's list names it (and says why)."""
    import re

    long = set()
    for f in sorted((ROOT / "capo").rglob("*.py")):
        if "/artifacts/" in str(f):
            continue
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.add(f"{mod}.{node.name}")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    para = text[text.index("Functions are kept\nunder 80 lines"):text.index("## Development")]
    named = set(re.findall(r"`(capo(?:\.\w+)+)`", para))
    assert long == named, {"over 80 lines, not named": sorted(long - named), "named, not over": sorted(named - long)}
