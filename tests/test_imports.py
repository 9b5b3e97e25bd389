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


def internal_imports(source: str) -> set[str]:
    """Files of capo (and cli) that ``source`` imports, at module top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        mods = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in ("capo", "cli"):
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names if a.name.split(".")[0] == "capo"]
        for m in mods:
            f = module_file(m)
            if f:
                out.add(f)
    return out


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
        for t in internal_imports(source) - {rel}:
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
    return {rel: internal_imports(src) - {rel} for rel, src in sources.items()}


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


def import_placement() -> dict[str, int]:
    """Imports of capo modules in capo/: at module top (or in a top-level block), in the CLI's
    functions, in a branch inside a function, directly in a function's body."""
    counts = {"top": 0, "cli": 0, "branch": 0, "function": 0}
    for f in sorted((ROOT / "capo").rglob("*.py")):
        if "/artifacts/" in str(f):
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            mods = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if not any(m and m.split(".")[0] == "capo" for m in mods):
                continue
            up, in_function = parents[id(node)], False
            while up is not tree:
                if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    in_function = True
                    break
                up = parents[id(up)]
            if not in_function:
                counts["top"] += 1
            elif f.name == "cli.py":
                counts["cli"] += 1
            elif isinstance(parents[id(node)], (ast.FunctionDef, ast.AsyncFunctionDef)):
                counts["function"] += 1
            else:
                counts["branch"] += 1
    return counts


def test_imports_sit_at_the_top_as_architecture_md_says():
    """ARCHITECTURE.md's "Where imports sit" counts are the code's: a new import of a capo module
    inside a function (not the CLI, not a branch) fails here until it moves to the top or the
    page says why it stays."""
    import re

    c = import_placement()
    text = (ROOT / "ARCHITECTURE.md").read_text()
    total = sum(c.values())
    assert f"({c['top']} of {total} imports)" in text, c
    assert f"The {total - c['top']} imports of capo modules that stay inside" in text, c
    assert re.search(rf"\*\*the CLI\*\* \(`capo/cli.py`, {c['cli']}\)", text), c
    assert re.search(rf"\*\*one branch's code\*\* \({c['branch']}\)", text), c
    assert re.search(rf"\*\*names looked up when called\*\* \({c['function']}:", text), c
