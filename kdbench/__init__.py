"""kdbench: a benchmark and ablation harness for knowledge distillation."""

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
