"""Seconds per call of a step, on any device: the one timer of ``kdbench bench``, the
doctor's smoke and the cost estimate. CUDA work is asynchronous, so each measurement
synchronises the device before and after; contenders alternate round by round so that a
machine's drift (other jobs, clocks) falls on all of them alike."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], None], device: torch.device, steps: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


ROUND_SECONDS = 0.3  # a contender's calls per round fill at least this long, unless steps are given


def interleaved(contenders: dict[str, Callable[[], None]], device: torch.device, steps: int | None,
                rounds: int) -> dict[str, float]:
    """Median seconds per call of each contender, measured in alternating rounds of
    ``steps`` calls each (None: as many as fill ROUND_SECONDS, per contender)."""
    calls = {name: calls_per_round(fn, device, steps) for name, fn in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(seconds_per_call(fn, device, calls[name]))
    return {name: statistics.median(values) for name, values in samples.items()}


def calls_per_round(fn: Callable[[], None], device: torch.device, steps: int | None) -> int:
    """``steps``, else as many calls as fill ROUND_SECONDS, timed after a warm-up call
    (allocator, cuDNN autotuning, lazy initialisation)."""
    fn()
    return steps or max(1, math.ceil(ROUND_SECONDS / seconds_per_call(fn, device, 1)))
