"""How runs are executed: the device, memory layout, where the training data lives. None of
this changes what a run computes, so none of it is in a run's id; the training precision
does, so it is the recipe's (``Recipe.precision``).

``EngineOptions`` is what a caller asks for; ``Execution`` is what it comes to on a device
at a precision (autocast, gradient scaling, memory layout, device-held data, loader
processes), resolved once, when a cohort is set up, and carried by the cohort."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from . import distributed
from ..errors import MachineError
from ..spec import Precision
from .tracking import Tracking

Module = TypeVar("Module", bound=torch.nn.Module)

Autocast = Callable[[], contextlib.AbstractContextManager]  # a factory of autocast contexts


@dataclass
class EngineOptions:
    """How runs are executed; none of this changes what they compute, so none is in their id."""

    device: str = "auto"
    data_root: str | None = None
    workers: int | None = None  # data-loader processes; None: 0 on CPU, min(8, cores) on CUDA
    # NHWC models and batches: faster on CUDA and, for the zoo's CNNs, on a CPU too (10-45%
    # per training step on the dev machine's, docs/speed.md); False for NCHW.
    channels_last: bool = True
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
    tracking: Tracking | None = None  # TensorBoard / W&B sinks of each epoch's metrics (kdbench.engine.tracking)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a Slurm allocation, ``taskset``,
    a container's cpuset), not the machine's count, which on a shared node is the whole
    node's and would oversubscribe the allocation."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MachineError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu "
                           "or a machine with a GPU")
    return device


@dataclass(frozen=True)
class Execution:
    """The options resolved on a device at a recipe's precision: what every part of the
    engine reads, so that each default ("on CUDA only") is decided here, once."""

    options: EngineOptions  # the rest of what was asked for: data root, subset, hooks, compile, stacking
    device: torch.device
    precision: Precision
    autocast: Autocast  # the precision's autocast contexts (fp32: none)
    scales_gradients: bool  # fp16: each trainee's gradients go through a GradScaler
    channels_last: bool  # NHWC models and training batches
    device_data: bool  # a training set held as pixels stays on the device: the options', else on CUDA only
    workers: int  # data-loader processes: the options', else none on the CPU and up to 8 on CUDA

    @classmethod
    def of(cls, options: EngineOptions, device: torch.device, precision: Precision = "fp32") -> Execution:
        """``options`` on ``device`` (resolved already: see ``resolve_device``) at
        ``precision``."""
        cuda = device.type == "cuda"
        autocast, scales = _autocast(device, precision)
        return cls(
            options, device, precision, autocast, scales,
            channels_last=options.channels_last,
            device_data=cuda if options.device_data is None else options.device_data,
            workers=(min(8, usable_cores()) if cuda else 0) if options.workers is None else options.workers,
        )

    def laid_out(self, model: Module) -> Module:
        """``model``, in place, in the memory layout of the batches it will see (NHWC when
        ``channels_last``)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def pin_memory(self) -> bool:
        """Loaders pin their batches in host memory for the copies to a GPU."""
        return self.device.type == "cuda"

    @property
    def show_progress(self) -> bool:
        """Progress is shown by rank 0 only, when the options ask for it."""
        return self.options.progress and distributed.is_main()

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A new trainee's gradient scaler (fp16), or None."""
        return torch.amp.GradScaler(self.device.type) if self.scales_gradients else None


def _autocast(device: torch.device, precision: Precision) -> tuple[Autocast, bool]:
    """The autocast contexts of ``precision`` on ``device`` (fp32: none), and whether fp16
    gradients need a GradScaler. A GPU without bf16 is refused rather than given fp16,
    which would be another run."""
    if precision == "fp32":
        return contextlib.nullcontext, False
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MachineError(f"the recipe asks for bf16 but {torch.cuda.get_device_name(device)} does not support it; "
                           "set the suite's recipe precision to fp16 or fp32 (each is a different run)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype == torch.float16
