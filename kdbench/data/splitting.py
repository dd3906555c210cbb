"""The seeded validation split: ``stratified_split`` and ``Splitter``, which every loader
hands its official train and test splits to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .datasets import DataSplits, ImageDataset
from .transforms import Augment, SplitTransforms


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held_out) positions, both sorted: ``round(fraction·N)`` items held out, each
    class contributing in proportion to its size (±1), chosen at random from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    # Each item's key is its rank within its shuffled class, jittered and scaled to [0, 1):
    # the smallest keys overall take about the same fraction of every class.
    key = torch.empty(len(labels))
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        n = len(members)
        ranks = torch.randperm(n, generator=generator)
        key[members] = (ranks + torch.rand(n, generator=generator)) / n
    order = key.argsort()
    held = round(fraction * len(labels))
    return order[held:].sort().values, order[:held].sort().values


@dataclass(frozen=True)
class Splitter:
    """The choices every dataset shares, given by ``create_dataset``."""

    name: str
    seed: int
    val_fraction: float
    augment: Augment

    def make(
        self,
        train: ImageDataset,
        test: ImageDataset,
        classes: Sequence[str],
        input_size: int,
        transforms: SplitTransforms,
    ) -> DataSplits:
        """Carve the validation split out of the official ``train`` split and attach the
        transforms."""
        kept, held = stratified_split(train.labels, self.val_fraction, self.seed)
        train_split = train.subset(kept, transforms.transform(self.augment))
        return DataSplits(
            train=train_split,
            val=train.subset(held, transforms.eval),
            test=test.subset(torch.arange(len(test)), transforms.eval),
            num_classes=len(classes),
            input_size=input_size,
            classes=list(classes),
            train_labels=train_split.labels,
            name=self.name,
            transforms=transforms,
        )
