"""Model registry: the CIFAR KD zoo under its published names, plus any timm model.

``create_model("resnet8x4", num_classes=100)`` builds a zoo model;
``create_model("timm:resnet18", num_classes=200)`` builds a timm model (no download: timm
ImageNet weights are used only when ``pretrained=True`` and the machine can fetch them).
"""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .base import Backbone, ModelOutput, preact

MODELS: Registry[Callable[..., Backbone]] = Registry("model")
TIMM_PREFIX = "timm:"


def register_model(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register a model factory under its function name (timm style)."""
    return MODELS.register(fn.__name__, fn)


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> Backbone:
    if name.startswith(TIMM_PREFIX):
        from .timm_adapter import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX):], num_classes, pretrained, **kwargs)
    if pretrained:
        raise ValueError(
            f"model '{name}' is a CIFAR zoo model and has no built-in pretrained weights; "
            "pass a checkpoint path instead (teacher_checkpoint)"
        )
    return MODELS.get(name)(num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def is_model(name: str) -> bool:
    """A zoo model, or a timm architecture timm knows (``hf-hub:`` names are timm's to resolve)."""
    if name.startswith(TIMM_PREFIX):
        import timm
        from timm.models import parse_model_name

        source, timm_name = parse_model_name(name[len(TIMM_PREFIX):])
        return source is not None or timm.is_model(timm_name)
    return name in MODELS


from . import cifar  # noqa: E402,F401  (registers the zoo)

__all__ = ["Backbone", "ModelOutput", "create_model", "list_models", "preact", "register_model", "is_model"]
