"""The package's layers (docs/design.md) point one way: no module imports a higher layer, and no
modules import each other in a circle, within a layer or across.

Every ``import`` and ``from ... import`` in spinppo/, at the top of a module or inside a function, is
read with ``ast``; a lazy import counts as much as any other.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spinppo"

# Lowest first. A module may import its own layer and the layers below it. Keep in step with the table
# in docs/design.md.
LAYERS = [
    ("spinppo.utils",),
    ("spinppo.envs",),
    ("spinppo.core",),
    ("spinppo.algos", "spinppo.tools"),
    ("spinppo.cli",),
    ("spinppo.run",),
]


def layer_of(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    if module == "spinppo":
        return -1  # the package's __init__: a version string, importable from anywhere
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/design.md")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def spinppo_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a spinppo module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "spinppo"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "spinppo":
                # "from spinppo.cli import exits" imports spinppo.cli.exits
                found += [(node.lineno, node.module)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            arg = node.args[0] if node.args else None
            text = arg.value if isinstance(arg, ast.Constant) else getattr(arg, "values", [None])[0]
            text = text.value if isinstance(text, ast.Constant) else text
            if isinstance(text, str) and text.startswith("spinppo."):
                found.append((node.lineno, text.rstrip(".")))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_higher_layer(path):
    me = module_name(path)
    mine = layer_of(me)
    upward = [
        f"line {line}: {target} (layer {layer_of(target)})"
        for line, target in spinppo_imports(path)
        if layer_of(target) > mine
    ]
    assert not upward, f"{me} (layer {mine}) imports upward: " + "; ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The test itself: a lower module importing a higher one, lazily, is caught."""
    bad = PACKAGE / "utils" / "_layer_probe.py"
    source = (
        "def f():\n"
        "    from spinppo.run import main\n"
        "    return importlib.import_module('spinppo.cli.train')\n"
    )
    bad_path = tmp_path / "spinppo" / "utils" / "_layer_probe.py"
    bad_path.parent.mkdir(parents=True)
    bad_path.write_text(source)
    targets = [t for _, t in spinppo_imports(bad_path)]
    assert targets == ["spinppo.run", "spinppo.cli.train"]
    assert layer_of(module_name(bad)) < layer_of("spinppo.run")


def test_every_layer_is_in_the_design_doc():
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    for prefixes in LAYERS:
        for prefix in prefixes:
            assert f"`{prefix}" in design, f"{prefix} is not described in docs/design.md"


# ----------------------------------------------------------------------------------------------- circles


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the modules of ``sources`` (module -> source text) it imports, lazily or not.

    ``from spinppo.cli import exits`` imports the module ``spinppo.cli.exits``; ``import_module`` of a name
    built at run time (``f"spinppo.algos.{name}"``) may import any module under its constant prefix.
    """
    graph: dict[str, set[str]] = {}
    for me, source in sources.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(source, me)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in sources else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module",
                "__import__",
            ):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                    prefix = str(arg.values[0].value)  # f"spinppo.algos.{name}"
                    found.update(m for m in sources if m.startswith(prefix))
        graph[me] = {m for m in found if m in sources and m != me}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_no_modules_import_each_other_in_a_circle():
    graph = import_graph({module_name(p): p.read_text() for p in MODULES})
    assert graph["spinppo.cli.flags"], "the graph lost the package's imports"
    circle = find_circle(graph)
    assert circle is None, "modules import each other in a circle: " + " -> ".join(circle)


def test_the_check_sees_a_circle_through_a_lazy_import():
    sources = {
        "spinppo.cli.a": "from spinppo.cli import b\n",
        "spinppo.cli.b": "def f():\n    import spinppo.cli.c\n",
        "spinppo.cli.c": "import importlib\ndef g(x):\n    importlib.import_module(f'spinppo.cli.{x}')\n",
        "spinppo.tools.d": "from spinppo.cli.a import x\n",
    }
    graph = import_graph(sources)
    assert graph["spinppo.cli.c"] == {"spinppo.cli.a", "spinppo.cli.b"}
    assert find_circle(graph) == ["spinppo.cli.a", "spinppo.cli.b", "spinppo.cli.c", "spinppo.cli.a"]
    del sources["spinppo.cli.c"]
    assert find_circle(import_graph(sources)) is None
