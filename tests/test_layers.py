"""The import contract: hyperbatch's layers point one way.

Each layer imports only the layers below it (and itself); siblings joined by ``|`` are
independent (neither imports the other). Every import statement counts, also one inside a
function or under ``TYPE_CHECKING``. The subpackages live in the repository's top-level folders
(setup.py maps them), which import-linter's graph builder cannot follow through the editable
install, so this test reads the sources itself: every ``.py`` file of the namespace, named as
setup.py installs it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: top to bottom
LAYERS: tuple[str, ...] = (
    "hyperbatch.cli",
    "hyperbatch.runners",
    "hyperbatch.jobs",
    "hyperbatch.engines",
    "hyperbatch.schemas",
    "hyperbatch.accelerators | hyperbatch.storage",
    "hyperbatch.retry | hyperbatch.timestamps",
)
#: folders of the namespace, as setup.py maps them
FOLDERS = {
    "hyperbatch": "hyperbatch",
    "hyperbatch.jobs": "jobs",
    "hyperbatch.runners": "runners",
    "hyperbatch.engines": "engines",
    "hyperbatch.schemas": "schemas",
}


def modules() -> dict[str, Path]:
    """Every module of the namespace -> its file."""
    out = {}
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if (
                package == "hyperbatch"
                and parts
                and parts[0] in {p.split(".")[1] for p in FOLDERS if p != "hyperbatch"}
            ):
                continue  # not there: those folders live at the top level
            out[name] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """The hyperbatch modules ``path`` imports (absolute and relative)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "hyperbatch" or m.startswith("hyperbatch.")}


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, sibling) of a module, or None for the root package itself."""
    for i, layer in enumerate(LAYERS):
        for sibling in (s.strip() for s in layer.split("|")):
            if module == sibling or module.startswith(sibling + "."):
                return i, sibling
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is None:
                continue
            if theirs[0] < mine[0]:
                out.append(f"{module} imports {target}: {mine[1]} is below {theirs[1]}")
            elif theirs[0] == mine[0] and theirs[1] != mine[1]:
                out.append(f"{module} imports {target}: {mine[1]} and {theirs[1]} are independent")
    return out


def test_every_module_has_a_layer():
    unplaced = [
        m
        for m in modules()
        if layer_of(m) is None and m not in ("hyperbatch", "hyperbatch.__main__")
    ]
    assert unplaced == []


def test_layers_point_one_way():
    graph = {name: imports(path, name) for name, path in modules().items()}
    assert len(graph) > 50, "the namespace was not found"
    assert violations(graph) == []


def test_the_root_package_imports_nothing():
    """``import hyperbatch`` stays free: it is the namespace, not a layer."""
    assert imports(ROOT / "hyperbatch" / "__init__.py", "hyperbatch") == set()


@pytest.mark.parametrize(
    ("module", "target", "why"),
    [
        ("hyperbatch.engines.models", "hyperbatch.jobs.spec", "is below"),
        ("hyperbatch.schemas.formats", "hyperbatch.engines.base", "is below"),
        ("hyperbatch.jobs.spec", "hyperbatch.cli.common", "is below"),
        ("hyperbatch.storage", "hyperbatch.accelerators", "are independent"),
    ],
)
def test_the_contract_catches_an_upward_import(module, target, why):
    assert any(why in v for v in violations({module: {target}}))


def test_relative_imports_are_resolved(tmp_path):
    pkg = tmp_path / "mod.py"
    pkg.write_text("from ..jobs import spec\nfrom . import other\n")
    assert imports(pkg, "hyperbatch.engines.mod") == {
        "hyperbatch.jobs",
        "hyperbatch.jobs.spec",
        "hyperbatch.engines",
        "hyperbatch.engines.other",
    }


def test_folders_match_setup_py():
    text = (ROOT / "setup.py").read_text()
    assert 'SUBPACKAGES = ("jobs", "runners", "engines", "schemas")' in text
    assert os.path.isdir(ROOT / "hyperbatch")
