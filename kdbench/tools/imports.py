"""kdbench's import graph, folder by folder: which step of the flow imports which.

``python -m kdbench.tools.imports [OUT.svg]`` draws it (Graphviz's ``dot``) from a source
checkout, ranked by ``LAYERS``; ``tests/test_architecture.py`` holds every import to those
layers. A node is a folder of ``kdbench/`` (a root module stands for itself) or one of the
repository's ``methods/`` and ``analysis/`` (installed as ``kdbench.methods`` and
``kdbench.analysis``); an edge, a module of one importing a module of the other. Imports are
read from the source with ``ast``, so the graph is the code's, whatever is installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

# The flow top to bottom: a folder may import only folders on a lower line. The package root
# (``kdbench``: its public names, ``__version__``, the bundled methods) is not a layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kdbench.cli",),
    ("kdbench.tools",),
    ("analysis",),  # records → reports
    ("kdbench.runner",),  # jobs → runs
    ("kdbench.suite",),  # a suite file → jobs
    ("kdbench.engine",),  # one cohort's training
    ("kdbench.store",),  # records
    ("kdbench.spec",),  # what one run is
    ("methods",),
    ("kdbench.method", "kdbench.data", "kdbench.wavelets"),
    ("kdbench.models",),
    ("kdbench.registry", "kdbench.locking"),
    ("kdbench.errors",),
)
# The one import up the layers: the method registry loads the bundled method files on first use.
PLUGIN_LOADING = {("kdbench.method", "methods")}
SOURCES = ("kdbench", "methods", "analysis")
INSTALLED_AS = {"kdbench.methods": "methods", "kdbench.analysis": "analysis"}


def source_name(module: str) -> str:
    """The module's name in the checkout: ``kdbench.analysis.report`` → ``analysis.report``."""
    for installed, folder in INSTALLED_AS.items():
        if module == installed or module.startswith(installed + "."):
            return folder + module[len(installed):]
    return module


def node_of(module: str) -> str:
    """``kdbench.engine.epoch`` → ``kdbench.engine``; ``analysis.report`` → ``analysis``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "kdbench" else parts[0]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """The absolute names of the modules ``module`` imports, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def folder_edges(root: Path) -> set[tuple[str, str]]:
    """Every (importer, imported) pair of distinct nodes in the checkout at ``root``."""
    files = {p: _module_name(p, root) for source in SOURCES for p in (root / source).rglob("*.py")}
    known = set(files.values())
    edges = set()
    for path, module in files.items():
        for name in map(source_name, _imported(ast.parse(path.read_text()), module, path.name == "__init__.py")):
            if name not in known:
                continue
            a, b = node_of(module), node_of(name)
            if a != b and "kdbench" not in (a, b):
                edges.add((a, b))
    return edges


def layer_of(node: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if node in layer)


FLOW = ("kdbench.suite", "kdbench.spec", "kdbench.runner", "kdbench.engine", "kdbench.store", "analysis")


def draw(root: Path, out: Path) -> None:
    """The graph as SVG at ``out``, one rank per layer, the flow's steps shaded. Drawn
    without the edges implied by others (Graphviz's ``tred``) and without those into
    ``kdbench.errors``, which every folder imports."""
    lines = ["digraph kdbench {", '  node [shape=box, fontname="Helvetica", fontsize=11];',
             '  edge [color="#777777", arrowsize=0.6];']
    for layer in LAYERS[:-1]:  # the last is kdbench.errors
        lines.append("  { rank=same; " + " ".join(
            f'"{n}"' + (' [style=filled, fillcolor="#dbe9f6"]' if n in FLOW else "") + ";" for n in layer) + " }")
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(folder_edges(root)) if b != "kdbench.errors"]
    lines.append("}")
    reduced = subprocess.run(["tred"], input="\n".join(lines), text=True, capture_output=True, check=True).stdout
    subprocess.run(["dot", "-Tsvg", "-o", str(out)], input=reduced, text=True, check=True)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/import_graph.svg")
    draw(Path(__file__).resolve().parents[2], target)
    print(f"wrote {target}")
