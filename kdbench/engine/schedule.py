"""The recipe's optimizer and learning-rate schedule (warm-up, then step, cosine or constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..spec import Recipe


def learning_rate(recipe: Recipe, epoch: int, fraction: float) -> float:
    """The learning rate ``fraction`` of the way through ``epoch`` (counted from 1)."""
    progress = epoch - 1 + fraction
    if progress < recipe.warmup_epochs:
        return recipe.lr * (progress + 1e-3) / recipe.warmup_epochs
    if recipe.schedule == "step":
        # mdistiller decays once epoch > milestone, i.e. from epoch milestone + 1 on
        return recipe.lr * recipe.gamma ** sum(epoch > m for m in recipe.decay_epochs)
    if recipe.schedule == "cosine":
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * progress / recipe.epochs))
    return recipe.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, recipe: Recipe, epoch: int, fraction: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(recipe, epoch, fraction)


def make_optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
