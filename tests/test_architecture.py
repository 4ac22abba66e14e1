"""The layering the code promises (docs/architecture.md): `common/` is the foundation and imports
nothing above it; the parts `actors/`, `learner/` and `replay/` import only `common/` and themselves;
only `deploy/` (the composition root) wires them together; and no modules import each other in a
circle. Read from the source's own import statements, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "actors", "learner", "replay", "deploy")
ALLOWED = {
    "common": {"common"},
    "actors": {"common", "actors"},
    "learner": {"common", "learner"},
    "replay": {"common", "replay"},
    "deploy": set(PACKAGES),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, at the top or inside a function. `from a import b`
    imports module `a.b` when that is a module, else names from `a`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found & known


def modules() -> dict[str, set[str]]:
    """module -> the project modules it imports. `__main__.py` files are left out: they are command
    entry points (`python -m actors` runs the CLI), not modules anything imports."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.name != "__main__.py"]
    known = {module_name(p) for p in files}
    return {module_name(p): project_imports(p, known) for p in files}


GRAPH = modules()


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_layer_allows(package):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package]
    )
    assert wrong == []


def test_no_modules_import_each_other_in_a_circle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif state.get(target) is None:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_builder_is_the_only_place_that_builds_the_learner_and_rollout_workers():
    builders = sorted(
        module_name(path)
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("QMixLearner", "RolloutWorker")
    )
    assert set(builders) == {"deploy.builder"}
