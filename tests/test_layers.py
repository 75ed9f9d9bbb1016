"""The import graph, read from the source: layers import one way, module-level imports form no circle, and an
import inside a function says why it is not at the top.

Layers, bottom to top: 0 rules and schemas (pure functions and table shapes), 1 engines, store, config, readers,
2 stages and the runner, 3 the CLI, SFT, evaluation and dev tools. An import may go down or sideways, never up.
Imports under ``if TYPE_CHECKING:`` are for type checkers only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "schemas", "sft", "evaluation")

# (layer, module prefixes); the first match wins, so the specific entries come first.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (
        0,
        (
            "schemas",
            "curation.rules",
            "curation.errors",
            "curation.answers",
            "curation.prompt",
            "curation.formats",
            "curation.strict_json",
        ),
    ),
    (3, ("curation.cli", "curation.__main__", "curation.devtools", "curation.mesh.cli", "sft", "evaluation")),
    (2, ("curation.stages", "curation.pipeline")),
    (1, ("curation",)),
]


# Modules whose in-function imports are not held to the rule yet: others are reworking them (issue 19).
UNREVIEWED_IN_FUNCTION = {
    "curation.devtools.synth",
    "curation.engines.vllm_engine",
    "curation.stages.decontaminate",
    "evaluation.sweep",
}
# What marks a deferred import: `# deferred: <why>` on the import or on the line above its run of imports.
DEFERRED = "# deferred:"


def layer(module: str) -> int | None:
    for level, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, at module level?) for every import of ``path`` outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(sub) for sub in ast.walk(node))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested.update(id(sub) for sub in ast.walk(node) if sub is not node)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        out += [(name, id(node) not in nested) for name in names if name.split(".")[0] in PACKAGES]
    return out


def test_every_project_module_has_a_layer() -> None:
    assert [m for m in modules() if layer(m) is None] == []


def test_no_import_runs_up_the_layers() -> None:
    upward = []
    for module, path in sorted(modules().items()):
        for target, _ in imports(path):
            if layer(target) is not None and layer(target) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert upward == []


def test_module_level_imports_form_no_circle() -> None:
    mods = modules()

    def owner(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {o for t, top in imports(p) if top and (o := owner(t)) and o != m} for m, p in mods.items()}
    # A package's __init__ importing its own submodules is how packages are built, not a circle.
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []


def in_function_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported project module, says why) for each import of a project module inside a function."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    out = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for holder in ast.walk(func):
            for field in ("body", "orelse", "finalbody"):
                body = getattr(holder, field, None)
                if not isinstance(body, list):
                    continue
                for i, node in enumerate(body):
                    if isinstance(node, ast.Import):
                        names = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        names = [node.module]
                    else:
                        continue
                    names = [n for n in names if n.split(".")[0] in PACKAGES]
                    if not names:
                        continue
                    first = i  # the run of imports this one belongs to, and the line above it
                    while first > 0 and isinstance(body[first - 1], (ast.Import, ast.ImportFrom)):
                        first -= 1
                    start = body[first].lineno - 1
                    span = lines[start - 1 if start else 0 : node.end_lineno]
                    reasoned = any(DEFERRED in line for line in span)
                    out += [(node.lineno, name, reasoned) for name in names]
    return sorted(set(out))


def test_in_function_imports_of_project_modules_say_why() -> None:
    """Project modules are imported at the top; inside a function only to defer a heavy optional package
    (vllm, torch, transformers, ray, duckdb, lxml, numba) until it is used, with `# deferred: <why>`."""
    silent = [
        f"{path.relative_to(ROOT)}:{line} imports {target} inside a function without `{DEFERRED} <why>`"
        for module, path in sorted(modules().items())
        if module not in UNREVIEWED_IN_FUNCTION
        for line, target, reasoned in in_function_imports(path)
        if not reasoned
    ]
    assert silent == []


def test_the_unreviewed_modules_still_exist() -> None:
    """A module that is gone, or follows the rule now, leaves the list, so the list only shrinks."""
    mods = modules()
    stale = [
        m
        for m in UNREVIEWED_IN_FUNCTION
        if m not in mods or all(reasoned for _, _, reasoned in in_function_imports(mods[m]))
    ]
    assert stale == []
