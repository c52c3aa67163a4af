"""The layout of the code (docs/architecture.md): stages only import downwards, no import cycles,
a small `toolchain/` root, one definition per concept. Read from the sources with `ast`, so
every import counts: module level, inside functions and under TYPE_CHECKING."""
from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("toolchain", "passes", "targets")
MAX_ROOT_MODULES = 12

# Stage rank per module prefix (longest prefix wins). A module may import its own stage and the
# stages below it; predict / optimize / measure share one rank (they may import each other).
# fleet and bench share a rank but fleet never imports bench.
STAGES = {
    "targets": 0, "toolchain.core": 0,
    "passes": 1,
    "toolchain.predict": 2, "toolchain.optimize": 2, "toolchain.measure": 2,
    "toolchain.compile": 3,
    "toolchain.fleet": 4, "toolchain.bench": 4,
    "toolchain.cli": 5, "toolchain": 5,   # the package itself is the public API, on top
}
FORBIDDEN = (("toolchain.fleet", "toolchain.bench"),)


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_pkg else parts)
            out[name] = (path, is_pkg)
    return out


def _absolute(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (the deepest module each import names)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (_absolute(mod, is_pkg, node.level, node.module) if node.level
                        else node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def stage(module: str) -> tuple[str, int]:
    if module.count(".") == 1 and module.startswith("toolchain.") and \
            not any(module == p for p in STAGES):
        return "toolchain.core", STAGES["toolchain.core"]   # a root module: core
    best = max((p for p in STAGES if module == p or module.startswith(p + ".")), key=len)
    return best, STAGES[best]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        name, rank = stage(mod)
        for dep in deps:
            dep_name, dep_rank = stage(dep)
            if dep_rank > rank or (name, dep_name) in FORBIDDEN:
                bad.append(f"{mod} ({name}) imports {dep} ({dep_name})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def string_imports(root: Path) -> list[str]:
    """`importlib.import_module("toolchain...")` / `__import__("passes...")`: hidden edges."""
    pattern = re.compile(r"(import_module|__import__)\(\s*[\"'](toolchain|passes|targets)\b")
    return [str(p.relative_to(root)) for p, _ in modules(root).values()
            if pattern.search(p.read_text())]


def root_modules(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "toolchain").glob("*.py") if p.stem != "__init__")


def layout_problems(root: Path) -> list[str]:
    graph = imports(root)
    problems = upward_imports(graph)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    problems += [f"string import of a project module in {f}" for f in string_imports(root)]
    if len(root_modules(root)) > MAX_ROOT_MODULES:
        problems.append(f"{len(root_modules(root))} modules in toolchain/: "
                        f"{', '.join(root_modules(root))}")
    return problems


def test_the_tree_follows_the_stage_order_with_no_cycles():
    assert layout_problems(ROOT) == []


def _copy_tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    return tmp_path


@pytest.mark.parametrize("module, line, expected", [
    # an import against the stage order, hidden inside a function
    ("passes/skip_blocks.py", "def _late():\n    from toolchain.compile.driver import prepare\n",
     "passes.skip_blocks (passes) imports toolchain.compile.driver"),
    # the product using the evaluation harness, under TYPE_CHECKING
    ("toolchain/predict/kernel.py",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import toolchain.bench.table\n",
     "toolchain.predict.kernel (toolchain.predict) imports toolchain.bench.table"),
    ("toolchain/fleet/spec.py", "from toolchain.bench import scores\n",
     "toolchain.fleet.spec (toolchain.fleet) imports toolchain.bench.scores"),
    # a cycle inside one stage
    ("toolchain/optimize/costs.py", "from toolchain.optimize import pareto\n", "import cycle"),
    ("toolchain/space.py", "import importlib\nimportlib.import_module('toolchain.cli')\n",
     "string import"),
])
def test_a_planted_violation_is_found(tmp_path, module, line, expected):
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + "\n" + line)
    problems = layout_problems(root)
    assert any(expected in p for p in problems), problems


def test_too_many_root_modules_is_found(tmp_path):
    root = _copy_tree(tmp_path)
    for i in range(MAX_ROOT_MODULES + 1 - len(root_modules(root))):
        (root / "toolchain" / f"extra{i}.py").write_text("")
    assert any("modules in toolchain/" in p for p in layout_problems(root))


def _defs(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.M)
    return [f"{p.relative_to(ROOT)}:{m.group(0).strip()}" for pkg in PACKAGES
            for p in sorted((ROOT / pkg).rglob("*.py")) for m in rx.finditer(p.read_text())]


@pytest.mark.parametrize("what, pattern", [
    ("spearman", r"^\s*def _?spearman\b"),
    ("sha256 of a file", r"^\s*def _?sha256_file\b"),
    ("image resize", r"^\s*def _?(resize_images|resize_nchw|_resized)\b"),
    ("tool versions", r"^\s*def _?(tool_versions|_versions|_tools)\b"),
    ("choice label", r"^\s*def _?(choice_label|_label|_parts|label)\b"),
    ("measured designs to predictor units", r"^\s*def _?(designs_to_units|measured_units)\b"),
    ("designs already in a CSV", r"^\s*def _?measured_designs\b"),
    ("a model to fp16", r"^\s*def _?to_fp16\b"),
])
def test_one_definition_per_concept(what, pattern):
    found = _defs(pattern)
    assert len(found) == 1, f"{what}: {found}"


def test_no_two_classes_share_a_name():
    names = Counter(m.split(":")[-1] for m in _defs(r"^class (\w+)"))
    assert [n for n, c in names.items() if c > 1] == []


@pytest.mark.parametrize("constant", ["PRECISIONS", "BYTES_PER_PRECISION", "PER_CHANNEL_OPS"])
def test_shared_constants_are_defined_once(constant):
    assert len(_defs(rf"^_?{constant}\s*[:=]")) == 1, _defs(rf"^_?{constant}\s*[:=]")


def test_every_pass_has_its_test_file():
    helpers = {"__init__", "common"}   # the catalogue and the shared helpers are not passes
    passes = sorted(p.stem for p in (ROOT / "passes").glob("*.py") if p.stem not in helpers)
    missing = [p for p in passes if not (ROOT / "tests" / "passes" / f"test_{p}.py").is_file()]
    assert missing == []
