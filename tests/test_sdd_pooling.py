"""SDD's two poolings of the local regions (methods/sdd.py, ``pooling``).

The reference is written here from the description of the authors' SPP
(SDD-CVPR2024, mdistiller/models/*/utils.py): average-pool the final map to 4×4, then
pool the 2×2 and 1×1 grids from that 4×4 grid. Adaptive average pooling of n cells to m
averages, for output i, input cells floor(i·n/m) .. ceil((i+1)·n/m) − 1; it is written out
in numpy, never with torch's pooling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdbench.errors import ConfigError
from kdbench.method import Batch, create_method
from kdbench.methods.sdd import local_logits
from kdbench.models import ModelOutput


def np_adaptive_pool(x: np.ndarray, m: int) -> np.ndarray:
    """D×H×W → D×m×m by explicit windows."""
    def windows(n: int) -> list[range]:
        return [range(math.floor(i * n / m), math.ceil((i + 1) * n / m)) for i in range(m)]

    out = np.empty((x.shape[0], m, m))
    for i, rows in enumerate(windows(x.shape[1])):
        for j, cols in enumerate(windows(x.shape[2])):
            out[:, i, j] = x[:, rows][:, :, cols].mean((1, 2))
    return out


def np_cells(x: np.ndarray, scales: tuple[int, ...], official: bool) -> np.ndarray:
    """N×D pooled cells of one D×H×W map, scales in order, row-major within a grid."""
    source = np_adaptive_pool(x, 4) if official else x
    return np.concatenate([np_adaptive_pool(source, m).reshape(x.shape[0], -1).T for m in scales])


def output_of(fmap: torch.Tensor, head: nn.Module) -> ModelOutput:
    embedding = fmap.mean((2, 3))
    return ModelOutput(head(embedding), {}, fmap, embedding, head)


def random_output(
    side: int, d: int = 5, c: int = 6, b: int = 2, seed: int = 0
) -> tuple[ModelOutput, np.ndarray, nn.Linear]:
    g = np.random.default_rng(seed)
    fmap = g.normal(size=(b, d, side, side))
    torch.manual_seed(seed)
    head = nn.Linear(d, c).double()
    return output_of(torch.tensor(fmap), head), fmap, head


def np_logits(fmap: np.ndarray, head: nn.Linear, scales: tuple[int, ...], official: bool) -> np.ndarray:
    w, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    return np.stack([np_cells(x, scales, official) @ w.T + bias for x in fmap])


@pytest.mark.parametrize("scales", [(1, 2, 4), (1, 2)])
def test_official_code_on_7x7_follows_the_authors_grid_and_differs_from_direct(scales):
    output, fmap, head = random_output(7)
    official = local_logits(output, scales, "official_code").detach().numpy()
    direct = local_logits(output, scales, "direct").detach().numpy()
    np.testing.assert_allclose(official, np_logits(fmap, head, scales, official=True), rtol=1e-10)
    np.testing.assert_allclose(direct, np_logits(fmap, head, scales, official=False), rtol=1e-10)
    assert np.abs(official - direct).max() > 1e-3  # every scale differs on 7×7, the global one too
    assert np.abs(official[:, 0] - direct[:, 0]).max() > 1e-3


def test_official_code_global_cell_on_7x7_weights_rows_as_described():
    # 7→4 windows are rows 0-1, 1-3, 3-5, 5-6; the mean of the four window means gives
    # row weights 1/8, 1/8+1/12, 1/12, 1/12+1/12, 1/12, 1/12+1/8, 1/8 (same for columns).
    w = np.array([1 / 8, 5 / 24, 1 / 12, 1 / 6, 1 / 12, 5 / 24, 1 / 8])
    output, fmap, _ = random_output(7, seed=3)
    output.head = nn.Identity()  # the cells themselves
    global_cell = local_logits(output, (1,), "official_code")[:, 0].numpy()
    np.testing.assert_allclose(global_cell, np.einsum("bdhw,h,w->bd", fmap, w, w), rtol=1e-10)


@pytest.mark.parametrize("side", [8, 4])
def test_the_poolings_agree_when_the_side_is_a_multiple_of_four(side):
    output, fmap, head = random_output(side, seed=1)
    official = local_logits(output, (1, 2, 4), "official_code").detach().numpy()
    np.testing.assert_allclose(official, local_logits(output, (1, 2, 4), "direct").detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(official, np_logits(fmap, head, (1, 2, 4), official=False), rtol=1e-10)


def test_the_method_uses_its_pooling():
    student, _, _ = random_output(7, c=4, seed=4)
    teacher, _, _ = random_output(7, c=4, seed=5)
    batch = Batch(images=torch.zeros(2, 3, 2, 2), labels=torch.tensor([0, 3]), index=torch.arange(2))
    direct = create_method("sdd").loss(student, teacher, batch, 1)["sdd"]
    official = create_method("sdd", pooling="official_code").loss(student, teacher, batch, 1)["sdd"]
    assert torch.isfinite(official) and not torch.isclose(direct, official)


def test_official_code_takes_only_the_authors_scales():
    assert create_method("sdd", pooling="official_code", scales=[1, 2]).hparams.scales == (1, 2)
    with pytest.raises(ConfigError, match="official_code.*use pooling: direct"):
        create_method("sdd", pooling="official_code", scales=[1, 3])
