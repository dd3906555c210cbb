"""How runs are executed: the device, memory layout, where the training data lives. None of
this changes what a run computes, so none of it is in a run's id; the training precision
does, so it is the recipe's (``Recipe.precision``), and ``autocast_factory`` turns it into
autocast contexts here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MachineError
from ..tracking import Tracking


@dataclass
class EngineOptions:
    """How runs are executed; none of this changes what they compute, so none is in their id."""

    device: str = "auto"
    data_root: str | None = None
    workers: int | None = None  # data-loader processes; None: 0 on CPU, min(8, cores) on CUDA
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


def autocast_factory(device: torch.device, precision: str
                     ) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """A factory of autocast contexts for a recipe's ``precision`` (fp32: none), and whether
    fp16 gradients need a GradScaler. A GPU without bf16 is refused rather than given fp16,
    which would be another run."""
    if precision == "fp32":
        return contextlib.nullcontext, False
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MachineError(f"the recipe asks for bf16 but {torch.cuda.get_device_name(device)} does not support it; "
                           "set the suite's recipe precision to fp16 or fp32 (each is a different run)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype == torch.float16


def uses_channels_last(options: EngineOptions, device: torch.device) -> bool:
    """Whether models and batches are NHWC: the options', else on CUDA only."""
    return device.type == "cuda" if options.channels_last is None else options.channels_last


def uses_device_data(options: EngineOptions, device: torch.device) -> bool:
    """Whether a training set held as pixels stays on the device: the options', else on CUDA only."""
    return options.device_data if options.device_data is not None else device.type == "cuda"
