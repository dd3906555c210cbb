"""Any timm model as a kdbench ``Backbone``."""

from __future__ import annotations

import timm
from torch import Tensor, nn

from .base import Backbone


class TimmBackbone(Backbone):
    """Wraps a timm model: its ``forward_features`` is the final map, ``forward_head(…,
    pre_logits=True)`` the pooling, ``get_classifier()`` the head, and the modules named by its
    ``feature_info`` (when it has one) the stages. The model is kept as ``self.model``, so a
    state dict of the wrapped model loads under the ``model.`` prefix."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        feature_info = getattr(model, "feature_info", None) or []
        self.stage_names = tuple(f"model.{info['module']}" for info in feature_info)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def pool(self, feature_map: Tensor) -> Tensor:
        return self.model.forward_head(feature_map, pre_logits=True)

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()


def create_timm_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> Backbone:
    """``timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)``, wrapped."""
    return TimmBackbone(timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs))
