"""The import graph is the architecture: read from the source with ``ast`` (every import of the
package anywhere in a module, inside functions and ``if TYPE_CHECKING:`` blocks too), it has no
cycle, no import goes up the layers listed in ``docs/architecture.md``, and no module but the
command line imports the package from inside a function.

The checker runs on the package itself and, to show it can fail, on small packages planted in
a temporary folder with a cycle, an upward import or a function-level import.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
# cli.py imports each command's module when the command runs: `wavedistill --help` stays fast
FUNCTION_LEVEL_ALLOWED = frozenset({"cli"})


@dataclass(frozen=True)
class Import:
    """One import of the package: ``source`` imports ``target`` (both dotted module names) at
    ``line``; ``nested`` when the statement sits inside a function."""

    source: str
    target: str
    line: int
    nested: bool


def read_layers(doc: Path) -> list[list[str]]:
    """The layers, bottom to top, from the fenced ```` ```layers ```` block of ``doc``: one line
    per layer naming its top-level modules and subpackages (spaces or commas between them;
    ``__init__`` is the package's own ``__init__.py``)."""
    match = re.search(r"^```layers\n(.*?)^```", doc.read_text(), re.M | re.S)
    assert match, f"{doc.name}: no ```layers block"
    return [
        re.split(r"[,\s]+", line.strip()) for line in match.group(1).splitlines() if line.strip()
    ]


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` file of the package (a package's own name
    for its ``__init__.py``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` names: itself, or the longest enclosing module (``pkg.mod.func``
    -> ``pkg.mod``); None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports_in(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of the package in one module, each with whether a function holds it."""
    found = []
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: counted from the importing module's package
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - child.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the module `pkg.mod` when there is one
                names = [f"{base}.{alias.name}" for alias in child.names]
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.append(Import(module, target, child.lineno, nested))
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def import_graph(package_dir: Path) -> list[Import]:
    """Every import of the package by the package's own modules."""
    modules = modules_of(package_dir)
    return [imp for module, path in modules.items() for imp in _imports_in(module, path, modules)]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def _layer_of(module: str) -> str:
    """The layer name of a module: its top-level module or subpackage under the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def architecture_problems(
    package_dir: Path,
    layers: list[list[str]],
    function_level_allowed: frozenset[str] = FUNCTION_LEVEL_ALLOWED,
) -> list[str]:
    """One line per breach of the rules of the module docstring (empty: none)."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    imports = import_graph(package_dir)
    problems = [
        f"{module}: in no layer of the architecture"
        for module in modules_of(package_dir)
        if _layer_of(module) not in rank
    ]
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
        low, high = (rank.get(_layer_of(m), -1) for m in (imp.source, imp.target))
        if high > low >= 0:
            problems.append(f"{imp.source}:{imp.line} imports {imp.target}, a higher layer")
        if imp.nested and _layer_of(imp.source) not in function_level_allowed:
            problems.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in _cycles(edges)]
    return problems


# -- the package -----------------------------------------------------------------------------


def test_the_package_keeps_its_layers_without_cycles_or_function_level_imports():
    problems = architecture_problems(ROOT / "wavedistill", read_layers(DOC))
    assert not problems, "\n".join(problems)


def test_every_subpackage_and_top_level_module_is_in_exactly_one_layer():
    names = [name for layer in read_layers(DOC) for name in layer]
    assert len(names) == len(set(names))
    package = ROOT / "wavedistill"
    present = {p.stem for p in package.glob("*.py")} | {
        p.parent.name for p in package.glob("*/__init__.py")
    }
    assert set(names) == present


# -- the checker on planted packages ---------------------------------------------------------


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package ``pkg`` in ``tmp_path`` made of ``{relative path: source}``."""
    for name, source in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return tmp_path / "pkg"


LAYERS_DOC = """\
# Fake

```layers
__init__ base
low
high cli
```
"""


def planted_layers(tmp_path: Path) -> list[list[str]]:
    (tmp_path / "doc.md").write_text(LAYERS_DOC)
    return read_layers(tmp_path / "doc.md")


def test_the_layers_block_is_read_bottom_to_top(tmp_path):
    assert planted_layers(tmp_path) == [["__init__", "base"], ["low"], ["high", "cli"]]


def test_a_clean_package_passes(tmp_path):
    package = plant(
        tmp_path,
        {
            "__init__.py": "",
            "base.py": "X = 1\n",
            "low/__init__.py": "",
            "low/a.py": "from pkg.base import X\nfrom . import b\n",
            "low/b.py": "import pkg.base\n",
            "high.py": "from pkg.low.a import b\n",
            "cli.py": "def main():\n    from pkg.high import b\n",
        },
    )
    assert architecture_problems(package, planted_layers(tmp_path)) == []


def test_a_cycle_through_a_function_level_import_fails(tmp_path):
    package = plant(
        tmp_path,
        {
            "__init__.py": "",
            "base.py": "",
            "low/__init__.py": "",
            "low/a.py": "from pkg.low.b import f\n",
            "low/b.py": "def f():\n    from pkg.low import a\n",
        },
    )
    problems = architecture_problems(package, planted_layers(tmp_path))
    assert "import cycle: pkg.low.a <-> pkg.low.b" in problems
    assert "pkg.low.b:2 imports pkg.low.a inside a function" in problems


def test_an_upward_import_fails_even_under_type_checking(tmp_path):
    package = plant(
        tmp_path,
        {
            "__init__.py": "",
            "base.py": "",
            "low/__init__.py": "",
            "low/a.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from ..high import Thing
            """,
            "high.py": "Thing = int\n",
        },
    )
    problems = architecture_problems(package, planted_layers(tmp_path))
    assert problems == ["pkg.low.a:3 imports pkg.high, a higher layer"]


def test_a_module_outside_every_layer_fails(tmp_path):
    package = plant(tmp_path, {"__init__.py": "", "base.py": "", "stray.py": ""})
    assert architecture_problems(package, planted_layers(tmp_path)) == [
        "pkg.stray: in no layer of the architecture"
    ]
