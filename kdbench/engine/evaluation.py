"""Evaluation: top-1 and top-5 accuracy of a model on a split, and its logits."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from . import distributed
from ..models import Backbone
from .batches import to_device
from .options import Execution


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: Backbone, loader: DataLoader, execution: Execution, keep_logits: bool = False,
             reduce: bool = False) -> dict[str, Any]:
    """Top-1 and top-5 accuracy in %, with the batches in the layout the model trained in;
    ``reduce``: counted over the shards of all ranks."""
    device = execution.device
    model.eval()
    correct1 = correct5 = total = 0
    kept: list[Tensor] = []
    labels_kept: list[Tensor] = []
    for images, labels in loader:
        images, labels = to_device(images, execution), labels.to(device, non_blocking=True)
        logits = model(images).logits.float()
        c1, c5 = topk_correct(logits, labels)
        correct1, correct5, total = correct1 + c1, correct5 + c5, total + len(labels)
        if keep_logits:
            kept.append(logits.half().cpu())
            labels_kept.append(labels.cpu())
    if reduce and distributed.active():
        counts = torch.tensor([correct1, correct5, total], dtype=torch.float64, device=device)
        correct1, correct5, total = (int(c) for c in distributed.all_reduce_sum(counts).tolist())
    result: dict[str, Any] = {"top1": 100.0 * correct1 / max(total, 1), "top5": 100.0 * correct5 / max(total, 1)}
    if keep_logits:
        result["logits"], result["labels"] = torch.cat(kept), torch.cat(labels_kept)
    return result


@torch.no_grad()
def predict(model: Backbone, loader: DataLoader, execution: Execution) -> Tensor:
    """The model's float logits on every sample of ``loader``, in order, on the CPU."""
    return torch.cat([model(to_device(images, execution)).logits.float().cpu() for images, _ in loader])
