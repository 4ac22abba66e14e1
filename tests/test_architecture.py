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
    entry points (`python -m deploy` runs the CLI), not modules anything imports."""
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
    """Rollout workers by name; learners through their registry entry (`family.learner_class(...)`),
    whatever their algorithm."""
    builders = sorted(
        module_name(path)
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "RolloutWorker")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "learner_class")
        )
    )
    assert set(builders) == {"deploy.builder"}


# --- the learner registry, the composition root's size, one source for each list of names -------

ALGORITHM_NAMES = {"qmix", "inspo"}
# Where algorithm names may be compared: the two registries and the presets that name each method's.
ALGORITHM_NAME_HOMES = {"common.config.algorithms", "learner.registry", "common.config.presets"}
LEARNER_CLASSES = {"QMixLearner", "InSPOLearner"}


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield module_name(path), path, ast.parse(path.read_text(), str(path))


def _mentions_algorithm(node: ast.AST) -> bool:
    """`x.algorithm`, `algorithm`, `x.get("algorithm")` or `x["algorithm"]` somewhere in `node`."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "algorithm":
            return True
        if isinstance(sub, ast.Name) and sub.id == "algorithm":
            return True
        if isinstance(sub, ast.Constant) and sub.value == "algorithm":
            return True
    return False


def test_no_algorithm_name_is_compared_outside_the_registries_and_the_presets():
    found = []
    for module, _, tree in _sources():
        if module in ALGORITHM_NAME_HOMES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                names = {o.value for o in operands if isinstance(o, ast.Constant)} & ALGORITHM_NAMES
                if names and any(_mentions_algorithm(o) for o in operands):
                    found.append(f"{module}:{node.lineno} compares learner.algorithm with {sorted(names)}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance"
                and any(isinstance(n, ast.Name) and n.id in LEARNER_CLASSES for n in ast.walk(node))
            ):
                found.append(f"{module}:{node.lineno} picks by learner class (isinstance)")
    assert found == []


def test_no_module_constructs_a_learner_class_by_name():
    """The builder asks `learner.registry` for the class; nothing constructs one by its name."""
    builders = sorted(
        module
        for module, _, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in LEARNER_CLASSES
    )
    assert builders == []


def test_no_module_of_the_composition_root_is_over_500_lines():
    long = sorted(
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in (ROOT / "deploy").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    )
    assert long == []


def test_no_module_of_the_parts_imports_deploy_entry_points_included():
    """`__main__.py` files count too: no part may have an entry point that reaches up into deploy/."""
    files = [p for pkg in ("actors", "learner", "replay", "common") for p in (ROOT / pkg).rglob("*.py")]
    known = {module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {target}"
        for path in files
        for target in project_imports(path, known)
        if target.split(".")[0] == "deploy"
    )
    assert wrong == []


def _strings(node: ast.AST) -> list[str] | None:
    """The strings of a tuple, list or set literal of three or more strings (wrapped in tuple(),
    frozenset() or set() too), or of a dict literal's keys; None for anything else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        if node.func.id in ("tuple", "frozenset", "set"):
            node = node.args[0]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = node.elts
    elif isinstance(node, ast.Dict):
        items = node.keys
    else:
        return None
    if len(items) >= 3 and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items):
        return [e.value for e in items]  # type: ignore[union-attr]
    return None


def _name_lists(tree: ast.Module):
    """Every named list of names: a module-level constant (or a class attribute) holding three or
    more strings, or a dict keyed by them; with its line and whether it is a dict."""
    bodies = [tree.body] + [n.body for n in tree.body if isinstance(n, ast.ClassDef)]
    for body in bodies:
        for node in body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            names = _strings(value) if value is not None else None
            if names:
                yield frozenset(names), node.lineno, isinstance(value, ast.Dict)


def test_each_list_of_names_is_written_once():
    """A list of names (world back-ends, acting back-ends, methods, ...) written out in two places
    drifts apart the day one of them changes: a list may not repeat another list or the keys of a
    table (two tables keyed by the same names, each with its own values, are fine)."""
    found = [
        (names, f"{module}:{line}", table)
        for module, _, tree in _sources()
        for names, line, table in _name_lists(tree)
    ]
    twice = sorted(
        f"{sorted(a)} at {where_a} and {where_b}"
        for i, (a, where_a, table_a) in enumerate(found)
        for b, where_b, table_b in found[i + 1 :]
        if a == b and not (table_a and table_b)
    )
    assert twice == []


def test_the_observation_flags_are_declared_once():
    """SMAC's observation flags are `ObsFlags`' fields; no other class or function spells them all out."""
    import dataclasses

    from common.envs.layout import ObsFlags

    flags = {f.name for f in dataclasses.fields(ObsFlags)}
    places = []
    for module, _, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = {
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
            elif isinstance(node, ast.FunctionDef):
                names = {a.arg for a in node.args.args + node.args.kwonlyargs}
            else:
                continue
            if flags <= names:
                places.append(f"{module}.{node.name}")
    assert places == ["common.envs.layout.ObsFlags"]
