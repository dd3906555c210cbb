"""Data-parallel training of one run over several processes, launched by ``torchrun``.

When ``torchrun`` starts the process (``WORLD_SIZE`` > 1, with ``RANK`` and ``LOCAL_RANK``),
``engine.train_cohort`` calls ``setup``: it joins the process group (nccl with device
``cuda:LOCAL_RANK`` on CUDA, gloo on CPU, and gloo where more processes than GPUs share
them, as ``torchrun --nproc_per_node 2`` on one GPU) once per process and leaves it at exit. Every rank
then takes its slice of each global batch. Each run's student and method train as one
``DistributedDataParallel`` module (``data_parallel``), whose backward pass averages the
gradients over ranks bucket by bucket while it runs; the engine scales each rank's loss by
its share of the global batch times the number of ranks, so the average is the gradient of
the global batch's mean loss. BatchNorm layers use the statistics of the global batch, loss
sums and accuracy counts are summed across ranks, and only rank 0 writes files. Outside
``torchrun`` nothing here does anything: no process group, every helper is the identity.

DistributedDataParallel is built with ``find_unused_parameters``: a method may have no
parameters of its own, or parameters only some steps use, and may leave some of the
student's unused (its classifier, if it reads only features). A parameter that no rank used
in a step keeps no gradient (None), so SGD's weight decay leaves it alone, as in one
process; one that some rank used gets the average. The price is one walk of the autograd
graph per step, and torch's once-per-process warning that it found no unused parameter
when a method uses them all (static_graph would be wrong for a method whose parameters
are used on some steps only). Buffers are not broadcast at every forward
(``forward_sync_buffers=False``; they are copied from rank 0 once, when the module is
wrapped): the synchronised BatchNorm keeps them equal, and a method's state is its own to
keep equal.

Failures: between the loss and the backward the ranks agree whether any of them raised
(``any_failed``); if one did, every rank skips the step and the run fails on all of them,
none left waiting in the backward's all-reduce. A rank that fails between two collectives
(inside a synchronised BatchNorm's forward, before a method's gather, or in the backward
itself) still leaves the others waiting on a collective it never joins, as any collective
code would.

BatchNorm: ``torch.nn.SyncBatchNorm`` runs only on GPUs, so on CUDA the student's and the
method's BatchNorm layers become ``nn.SyncBatchNorm``, and on CPU ``CPUSyncBatchNorm`` below
(sums of x and x² all-reduced in float64, differentiable through the all-reduce). Both
keep the BatchNorm state-dict keys, so weights load into an ordinary model.

State a method keeps across samples is the method's to keep equal on every rank: its
``TrainContext.gather`` (``all_gather_cat`` here) gives every rank the global batch's rows in
order (CRD updates its memory with it, so every rank's memory is the single process's).
Random draws (dropout, augmentation, a method's sampling) come from per-rank streams and so
differ from a single process. All ranks must see the same run folder (one machine, or a
shared file system); the checkpoint is read by every rank when a run resumes.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group if torchrun launched us; the device this rank trains on
    (``cuda:LOCAL_RANK`` when ``device`` is CUDA). Without torchrun: ``device`` unchanged."""
    if not launched():
        return device
    if device.type == "cuda":
        # more processes than GPUs (two on one GPU, to check the path): they take turns on the devices
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # NCCL refuses two ranks on one GPU ("Duplicate GPU detected"); gloo reduces CUDA tensors too, via the host
        shared = device.type == "cuda" and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > torch.cuda.device_count()
        backend = "nccl" if device.type == "cuda" and not shared else "gloo"
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, **kwargs)
        atexit.register(teardown)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def rank_seed(seed: int) -> int:
    """A seed of this rank's own random stream; ``seed`` itself in a single process."""
    return seed * world() + rank()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself without torchrun)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_cat(tensor: Tensor) -> Tensor:
    """The ranks' ``tensor``s concatenated along dim 0 in rank order, which is the order of
    the global batch when each rank holds its slice (``tensor`` itself without torchrun).
    Their first dimensions may differ (a last, uneven batch)."""
    if not active():
        return tensor
    size = torch.tensor([len(tensor)], device=tensor.device)
    sizes = [torch.empty_like(size) for _ in range(world())]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    padded = torch.cat([tensor, tensor.new_zeros((longest - len(tensor), *tensor.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks of ``tensor`` (a new tensor; ``tensor`` itself without torchrun)."""
    if not active():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def any_failed(failed: bool, device: torch.device) -> bool:
    """Whether ``failed`` on any rank (one all-reduce of a flag; ``failed`` itself without
    torchrun), so that all ranks agree to skip a step and none hangs."""
    if not active():
        return failed
    flag = torch.tensor([float(failed)], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def data_parallel(module: nn.Module) -> nn.Module:
    """``module`` in DistributedDataParallel under torchrun (``module`` itself otherwise):
    rank 0's parameters and buffers are copied to every rank, and the backward pass
    averages the gradients over ranks. Inputs are not moved (they are on the device)."""
    if not active():
        return module
    return nn.parallel.DistributedDataParallel(module, forward_sync_buffers=False, find_unused_parameters=True)


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks, differentiable: the gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm over the batch of all ranks, for CPU tensors (gloo), where
    ``nn.SyncBatchNorm`` is not supported. Any input rank: statistics over all but dim 1."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and active()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        x = input.double()
        count = torch.tensor([input.numel() / input.shape[1]], dtype=torch.float64)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = input.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, c] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        out = out.to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with its BatchNorm layers synchronised across ranks (unchanged without torchrun)."""
    if not active():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        sync = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        sync.load_state_dict(module.state_dict())
        for new, old in zip(sync.parameters(), module.parameters()):
            new.requires_grad_(old.requires_grad)
        sync.train(module.training)
        sync.to(next(iter([*module.parameters(), *module.buffers()]), torch.empty(0)).device)
        return sync
    for name, child in module.named_children():
        new = _convert_cpu(child)
        if new is not child:
            module.add_module(name, new)
    return module
