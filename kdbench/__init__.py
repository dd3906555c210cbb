"""kdbench: a benchmark and ablation harness for knowledge distillation."""

from pathlib import Path

# Installed, methods/ and analysis/ are subpackages (pyproject.toml maps them in). In a
# source checkout they sit beside this folder; a process that imports kdbench from the
# checkout (python -m from the repository root, or a worker it spawns) finds them there.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "methods").is_dir() and (_checkout / "methods" / "__init__.py").is_file():
    __path__.append(str(_checkout))

from .data import create_dataset, list_datasets, register_dataset
from .method import Method, create_method, list_methods, load_method_files, register_method
from .models import ModelOutput, create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = [
    "Method",
    "ModelOutput",
    "create_dataset",
    "create_method",
    "create_model",
    "list_datasets",
    "list_methods",
    "list_models",
    "load_method_files",
    "register_dataset",
    "register_method",
    "register_model",
]
