"""Models of one architecture run as one network (``torch.func``): their parameters and
buffers are stacked along a new first dimension and the forward is vmapped over it, so K
small students launch the kernels of one K-times-wider network (convolutions become
grouped ones) instead of K networks' worth of small kernels. On a GPU that small students
leave mostly idle, this is how a cohort goes past the bound of sharing the teacher; on a
CPU it is slower (``kdbench bench`` measures both).

The outputs are the separate forwards' up to float rounding. The stack is rebuilt from the
models' own tensors on every call (a copy of a few MB for CIFAR students), so gradients
reach each model's own parameters and optimizers, checkpoints and evaluation see ordinary
models; BatchNorm's running statistics, updated on the stack, are copied back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from . import create_model
from .base import Backbone, ModelOutput


class StackedForward:
    """The training-mode forward of several ``model_name`` models on one batch, as one
    vmapped call, with ``stages`` tapped (the union of what their methods need)."""

    def __init__(self, model_name: str, num_classes: int, stages: Sequence[str]) -> None:
        with torch.device("meta"):  # only the structure is used: the tensors come from the models
            self.base = create_model(model_name, num_classes=num_classes)
        self.base.tap(stages)
        self.parameter_names = [name for name, _ in self.base.named_parameters()]
        self.buffer_names = [name for name, _ in self.base.named_buffers()]
        # random layers (dropout) would draw from one stream for all models: refuse them
        self._vmapped = vmap(self._forward, in_dims=(0, 0, None), randomness="error")

    def __call__(self, models: Sequence[Backbone], images: Tensor) -> list[ModelOutput]:
        params = [torch.stack(group) for group in zip(*(m.parameters() for m in models))]
        buffers = [torch.stack(group) for group in zip(*(m.buffers() for m in models))]
        logits, features, feature_map, embedding = self._vmapped(params, buffers, images)
        with torch.no_grad():
            for k, model in enumerate(models):
                torch._foreach_copy_(list(model.buffers()), [stacked[k] for stacked in buffers])
        return [ModelOutput(logits[k], {name: f[k] for name, f in features.items()}, feature_map[k], embedding[k],
                            model.head)
                for k, model in enumerate(models)]

    def _forward(self, params: list[Tensor], buffers: list[Tensor], images: Tensor
                 ) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        state = {**dict(zip(self.parameter_names, params)), **dict(zip(self.buffer_names, buffers))}
        out = functional_call(self.base, state, (images,))
        return out.logits, out.features, out.feature_map, out.embedding
