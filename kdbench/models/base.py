"""One output type and one feature-tap mechanism for every model kdbench trains.

Every model is a ``Backbone``: ``forward_features`` computes the final feature map (before
global pooling), ``pool`` turns it into the embedding, ``head`` maps the embedding to
logits. The final map and the embedding are computed on every forward anyway, so they are
returned for free. Intermediate stages are tapped with forward hooks installed only for the
stages a method asked for (``tap``), so a logits-only method pays nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class ModelOutput:
    """What a model returns: logits (B×C), tapped stage maps by name, the final feature map
    (before pooling), the pooled embedding, and the classifier head that maps an embedding
    to logits (so a method can classify local regions of the final map, as SDD does)."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    feature_map: Tensor | None = None
    embedding: Tensor | None = None
    head: Callable[[Tensor], Tensor] | None = None

    def detach(self) -> ModelOutput:
        return ModelOutput(
            self.logits.detach(),
            {k: v.detach() for k, v in self.features.items()},
            None if self.feature_map is None else self.feature_map.detach(),
            None if self.embedding is None else self.embedding.detach(),
            self.head,
        )


class Backbone(nn.Module, ABC):
    """Base class of kdbench models.

    Subclasses set ``stage_names`` (attribute paths of the modules whose outputs are the
    stages ``stage1``, ``stage2``, …) and implement ``forward_features`` and ``head``.
    """

    stage_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._tapped: dict[str, Tensor] = {}
        self._tap_handles: list[torch.utils.hooks.RemovableHandle] = []

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map, before global pooling."""

    @property
    @abstractmethod
    def head(self) -> nn.Module:
        """The classifier applied to the pooled embedding."""

    def pool(self, feature_map: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)

    @property
    def stages(self) -> list[str]:
        return [f"stage{i}" for i in range(1, len(self.stage_names) + 1)]

    def tap(self, stages: Sequence[str]) -> None:
        """Return the outputs of ``stages`` (names from ``self.stages``) in ``features``."""
        for handle in self._tap_handles:
            handle.remove()
        self._tap_handles = []
        for stage in stages:
            if stage not in self.stages:
                raise ValueError(
                    f"{type(self).__name__} has no stage '{stage}'; it has {', '.join(self.stages)}"
                )
            module = self.get_submodule(self.stage_names[self.stages.index(stage)])
            self._tap_handles.append(module.register_forward_hook(self._store(stage)))

    def _store(self, stage: str):
        def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
            self._tapped[stage] = output

        return hook

    def forward(self, x: Tensor) -> ModelOutput:
        feature_map = self.forward_features(x)
        embedding = self.pool(feature_map)
        features, self._tapped = self._tapped, {}
        head = self.head
        return ModelOutput(head(embedding), features, feature_map, embedding, head)
