"""Random streams. Every epoch reseeds the data stream and each run's own stream from
(seed, epoch), so a run resumed from its last checkpoint draws exactly what an
uninterrupted one draws, and a run draws the same alone as in a cohort."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """Seed of a random stream in an epoch: 0 shuffles, 1 augments, 2 is the run's own."""
    return (seed * 100_003 + epoch) * 3 + stream


class RngStream:
    """A private torch random stream: ``with stream.active():`` swaps it in for the global
    one and keeps where it got to, so interleaved users do not disturb each other."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device if device.type == "cuda" else None
        with torch.random.fork_rng(devices=[self.device] if self.device else []):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self) -> tuple[Tensor, Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device else None

    def _set(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.device:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(outer)
