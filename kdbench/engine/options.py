"""How runs are executed: the device, mixed precision, memory layout, where the training
data lives. None of this changes what a run computes, so none of it is in a run's id."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import MachineError
from ..tracking import Tracking


@dataclass
class EngineOptions:
    """How runs are executed; none of this changes what they compute, so none is in their id."""

    device: str = "auto"
    data_root: str | None = None
    workers: int | None = None  # data-loader processes; None: 0 on CPU, min(8, cores) on CUDA
    # Mixed precision: None on CUDA only (bf16 where supported, else fp16 with a GradScaler);
    # True on the CPU too (bf16 autocast: the tests run the path there), False off.
    amp: bool | None = None
    amp_dtype: Literal["bfloat16", "float16"] | None = None  # None: bf16 unless a GPU lacks it
    channels_last: bool | None = None  # NHWC models and batches: None on CUDA only, True on the CPU too
    compile: bool = False  # torch.compile the student (CUDA; slow to start, faster to run)
    # Keep a training set held as pixels (the built-in sets, CIFAR-100, a prepared store) on
    # the device and augment whole batches there instead of in loader processes; None: on
    # CUDA only.
    device_data: bool | None = None
    progress: bool = True
    subset: int | None = None  # use only the first N samples of each split (smoke runs)
    threads: int | None = None  # torch intra-op threads for a job (the runner shares the cores)
    # Step a cohort's students of one architecture as one vmapped network (models.stacked):
    # for GPUs that small students leave idle; slower on a CPU. Records equal the separate
    # runs' up to float rounding instead of exactly. Not with compile or torchrun.
    stack_students: bool = False
    # Called after each epoch's checkpoint with (epoch, metrics row); Optuna's pruning
    # raises from here. Runs in the training process.
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None
    tracking: Tracking | None = None  # TensorBoard / W&B sinks of each epoch's metrics (kdbench.tracking)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MachineError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu "
                           "or a machine with a GPU")
    return device


def loader_workers(options: EngineOptions, device: torch.device) -> int:
    """Data-loader processes: the options', else none on the CPU and up to 8 on CUDA."""
    if options.workers is not None:
        return options.workers
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def autocast_factory(device: torch.device, enabled: bool | None, dtype: str | None = None
                     ) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """A factory of autocast contexts, and whether fp16 gradients need a GradScaler;
    ``enabled`` None: on CUDA only."""
    if not (device.type == "cuda" if enabled is None else enabled):
        return contextlib.nullcontext, False
    if dtype is not None:
        chosen = getattr(torch, dtype)
    else:
        chosen = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast(device.type, dtype=chosen)), chosen == torch.float16


def uses_channels_last(options: EngineOptions, device: torch.device) -> bool:
    """Whether models and batches are NHWC: the options', else on CUDA only."""
    return device.type == "cuda" if options.channels_last is None else options.channels_last


def uses_device_data(options: EngineOptions, device: torch.device) -> bool:
    """Whether a training set held as pixels stays on the device: the options', else on CUDA only."""
    return options.device_data if options.device_data is not None else device.type == "cuda"
