"""The package's layers (docs/design.md) point one way: no module imports a higher layer.

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
