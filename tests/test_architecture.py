"""The package's imports follow the flow: each folder imports only the layers below it."""

from __future__ import annotations

from pathlib import Path

from kdbench.tools.imports import LAYERS, PLUGIN_LOADING, folder_edges, layer_of, node_of

ROOT = Path(__file__).resolve().parents[1]


def test_every_import_goes_down_the_layers() -> None:
    edges = folder_edges(ROOT)
    assert ("kdbench.runner", "kdbench.engine") in edges  # the graph is read at all
    upward = sorted((a, b) for a, b in edges - PLUGIN_LOADING if layer_of(a) >= layer_of(b))
    assert upward == [], f"imports against the flow (importer, imported): {upward}"


def test_every_folder_has_a_layer() -> None:
    placed = {node for layer in LAYERS for node in layer}
    folders = {node_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in (ROOT / "kdbench").glob("*")
               if p.suffix == ".py" or (p / "__init__.py").exists()} - {"kdbench.__init__"}
    assert folders <= placed, f"give these a layer in kdbench.tools.imports.LAYERS: {sorted(folders - placed)}"


def test_a_new_upward_import_is_caught(tmp_path: Path) -> None:
    for source in ("kdbench/engine", "kdbench/runner", "methods", "analysis"):
        (tmp_path / source).mkdir(parents=True)
    (tmp_path / "kdbench/__init__.py").write_text("")
    (tmp_path / "kdbench/runner/__init__.py").write_text("")
    (tmp_path / "kdbench/engine/__init__.py").write_text("from ..runner import plan\n")
    assert folder_edges(tmp_path) == {("kdbench.engine", "kdbench.runner")}
    assert layer_of("kdbench.engine") > layer_of("kdbench.runner")
