"""The package's shape, checked from the source (docs/design.md): stages import one way, no cycles,
short modules, one home for each job. Reads files with ``ast``; imports nothing of cxrkit."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "cxrkit"
MAX_LINES = 600

#: stage → the stages it may import (besides itself); the top-level helpers (``cxrkit``,
#: ``cxrkit._legacy``) may be imported by all. Order: core ← data ← synthetic/model ← train/evaluate
#: ← use ← report ← cli.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "synthetic": {"core", "data"},
    "model": {"core", "data"},
    "evaluate": {"core", "data", "model"},
    "train": {"core", "data", "model", "evaluate"},
    "use": {"core", "data", "model"},
    "report": {"core", "data", "model", "evaluate", "use"},
    "cli": {"core", "data", "synthetic", "model", "train", "evaluate", "use", "report"},
}
#: finer rules inside the allowed stages (module prefix → module prefixes it must not import)
FORBIDDEN = {
    "cxrkit.report": ("cxrkit.data.cache", "cxrkit.use.explain.", "cxrkit.train"),
    "cxrkit.use": ("cxrkit.train", "cxrkit.evaluate", "cxrkit.report"),
}


def _modules(root: Path = PKG) -> dict[str, Path]:
    mods = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module → the cxrkit modules it imports (lazy imports inside functions included)."""
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps: set[str] = set()
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")
                    parts = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                # a module's own package __init__ is not an import of substance (Python runs it first)
                if (
                    t
                    and t != name
                    and not (mods[t].name == "__init__.py" and name.startswith(t + "."))
                ):
                    deps.add(t)
        graph[name] = deps
    return graph


MODS = _modules()
GRAPH = _imports(MODS)


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_the_package() -> None:
    # guards the test itself: an empty walk would make every rule below pass vacuously
    assert {"cxrkit.core.errors", "cxrkit.data.labels", "cxrkit.model.artifact"} <= set(MODS)
    assert "cxrkit.core.errors" in GRAPH["cxrkit.data.labels"]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_every_module_is_in_a_stage() -> None:
    loose = [
        m
        for m in MODS
        if _stage(m) is None and m not in {"cxrkit", "cxrkit.__main__", "cxrkit._legacy"}
    ]
    assert loose == [], f"modules outside the stage folders of docs/design.md: {loose}"


def test_stages_import_only_downward() -> None:
    bad = []
    for m, deps in GRAPH.items():
        stage = _stage(m)
        if stage is None:
            continue
        for d in deps:
            other = _stage(d)
            if other is not None and other != stage and other not in ALLOWED[stage]:
                bad.append(f"{m} imports {d}")
    assert bad == []


def _hits(module: str, banned: str) -> bool:
    # "pkg.mod" bans the module and everything under it; "pkg.mod." only what is under it (internals)
    if banned.endswith("."):
        return module.startswith(banned)
    return module == banned or module.startswith(banned + ".")


def test_finer_import_rules() -> None:
    bad = []
    for m, deps in GRAPH.items():
        for prefix, banned in FORBIDDEN.items():
            if m == prefix or m.startswith(prefix + "."):
                bad += [f"{m} imports {d}" for d in deps if any(_hits(d, b) for b in banned)]
    assert bad == []


def test_nothing_in_the_library_imports_the_cli() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in GRAPH.items()
        if _stage(m) != "cli" and m != "cxrkit.__main__"
        for d in deps
        if _stage(d) == "cli"
    ]
    assert bad == []


def test_no_module_over_the_line_limit() -> None:
    long = {m: n for m, f in MODS.items() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _top_level_assignments() -> dict[str, list[str]]:
    """UPPER_CASE constant name → modules that assign it at top level."""
    where: dict[str, list[str]] = defaultdict(list)
    for m, f in MODS.items():
        for node in ast.parse(f.read_text()).body:
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target.id]
            where.update(
                {t: where[t] + [m] for t in targets if re.fullmatch(r"[A-Z][A-Z0-9_]+", t)}
            )
    return where


def test_each_public_constant_is_defined_once() -> None:
    twice = {k: v for k, v in _top_level_assignments().items() if len(v) > 1}
    assert twice == {}


def _defs() -> dict[str, list[str]]:
    where: dict[str, list[str]] = defaultdict(list)
    for m, f in MODS.items():
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(m)
    return where


def test_each_public_function_and_class_is_defined_once() -> None:
    # two public things of one name in two modules is how a job ends up written twice
    twice = {k: v for k, v in _defs().items() if len(v) > 1}
    assert twice == {}


@pytest.mark.parametrize(
    ("what", "pattern", "home"),
    [
        ("'did you mean' suggestions", r"get_close_matches", "cxrkit.core.errors"),
        (
            "resolving a run or model folder",
            r"def resolve_artifact\b|def resolve_run\b",
            "cxrkit.model.artifact",
        ),
        ("building an artifact's input pipeline", r"InputPipeline\(", "cxrkit.model.artifact"),
        (
            "the pad/crop/stretch geometry",
            r"def placement\b|def _fit_geometry\b",
            "cxrkit.data.imaging",
        ),
        ("writing comparison tables", r"comparison\.(md|csv|json)\"", "cxrkit.evaluate.compare"),
    ],
)
def test_one_home_for_each_job(what: str, pattern: str, home: str) -> None:
    rx = re.compile(pattern)
    found = sorted(m for m, f in MODS.items() if rx.search(f.read_text()))
    # the training data module builds the training pipeline from a config, not from an artifact
    if "InputPipeline" in pattern:
        found = [m for m in found if m not in {"cxrkit.data.loader", "cxrkit.data.inputs"}]
    assert found == [home], f"{what}: expected only in {home}, found in {found}"
