"""One output type and one feature-tap mechanism for every model kdbench trains.

Every model is a ``Backbone``: ``forward_features`` computes the final feature map (before
global pooling), ``pool`` turns it into the embedding, ``head`` maps the embedding to
logits. The final map and the embedding are computed on every forward anyway, so they are
returned for free. Intermediate stages are tapped with forward hooks installed only for the
stages a method asked for (``tap``), so a logits-only method pays nothing.

A stage's pre-activation map (the map before its last activation, mdistiller's
``preact_feats``, which ReviewKD distils to) is tapped as ``"stage3:preact"``
(``preact("stage3")``): by default it is the input of the stage's last activation module,
and every forward checks that this activation's output is the stage's output (a stage that
does not end with an activation module is refused, not guessed); a model whose pre-activation
maps are elsewhere names their modules in ``preact_sources``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn


PREACT = ":preact"
# Where activation modules are defined: torch's and timm's (its own GELU, Swish, …).
_ACTIVATION_MODULES = frozenset({"torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me"})


def preact(stage: str) -> str:
    """The tap name of ``stage``'s pre-activation map: ``preact("stage3") == "stage3:preact"``."""
    return stage + PREACT


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
    # Where a stage's pre-activation map is when it is not the input of the stage's last
    # activation module: the attribute path of the module whose input it is, or None for the
    # stage's own output (a stage that ends without an activation).
    preact_sources: ClassVar[dict[str, str | None]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._tapped: dict[str, Tensor] = {}
        self._activated: dict[str, Tensor] = {}
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
        """Return the outputs of ``stages`` (names from ``self.stages``, or ``preact(name)``
        for a stage's pre-activation map) in ``features``, under the names asked for."""
        for handle in self._tap_handles:
            handle.remove()
        self._tap_handles = []
        for name in stages:
            stage = name.removesuffix(PREACT)
            if stage not in self.stages:
                raise ValueError(
                    f"{type(self).__name__} has no stage '{stage}'; it has {', '.join(self.stages)}"
                )
            module = self.get_submodule(self.stage_names[self.stages.index(stage)])
            if name == stage:
                self._tap_handles.append(module.register_forward_hook(self._store(name)))
            else:
                self._tap_handles += self._tap_preact(name, stage, module)

    def _tap_preact(self, name: str, stage: str, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        if stage in self.preact_sources:
            source = self.preact_sources[stage]
            if source is None:
                return [module.register_forward_hook(self._store(name))]
            return [self.get_submodule(source).register_forward_pre_hook(self._store_input(name))]
        path = self._last_activation(stage, module)
        activation = self.get_submodule(path)

        def remember(act: nn.Module, inputs: object, output: Tensor) -> None:
            self._activated[name] = output

        def check(stage_module: nn.Module, inputs: object, output: Tensor) -> None:
            if output is not self._activated.pop(name, None):
                raise ValueError(
                    f"{type(self).__name__}'s {stage} does not end with its last activation module ({path}), so "
                    f"it has no pre-activation map to tap as '{name}'; tap '{stage}' instead"
                )

        return [activation.register_forward_pre_hook(self._store_input(name)),
                activation.register_forward_hook(remember), module.register_forward_hook(check)]

    def _last_activation(self, stage: str, module: nn.Module) -> str:
        """Attribute path of the last activation module registered in ``stage`` (the module itself included)."""
        prefix = self.stage_names[self.stages.index(stage)]
        paths = [path for path, m in module.named_modules() if type(m).__module__ in _ACTIVATION_MODULES]
        if not paths:
            raise ValueError(f"{type(self).__name__}'s {stage} holds no activation module, so it has no "
                             f"pre-activation map to tap as '{preact(stage)}'; tap '{stage}' instead")
        return f"{prefix}.{paths[-1]}" if paths[-1] else prefix

    def _store(self, stage: str):
        def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
            self._tapped[stage] = output

        return hook

    def _store_input(self, name: str):
        """A pre-hook keeping the module's input; a copy when the module overwrites it (inplace ReLU)."""
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self._tapped[name] = inputs[0].clone() if getattr(module, "inplace", False) else inputs[0]

        return hook

    def forward(self, x: Tensor) -> ModelOutput:
        feature_map = self.forward_features(x)
        embedding = self.pool(feature_map)
        features, self._tapped, self._activated = self._tapped, {}, {}
        head = self.head
        return ModelOutput(head(embedding), features, feature_map, embedding, head)
