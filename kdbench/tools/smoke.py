"""The doctor's smoke of each fast path (``kdbench doctor``): autocast at the suite's
precision, channels-last, the device-held training set augmented in batches, a prepared
store's batch crop, ``torch.compile``, stacked students and a two-process data-parallel step,
each a ``Check`` (PASS, FAIL or SKIP with its reason, and its step time). Channels-last is
the engine's default on every device, so it runs everywhere; autocast, the device-held set
and the prepared-store crop are for CUDA, and compile and stacked students pay on GPUs
only, so without a GPU those are SKIPped unless ``paths_on_cpu`` asks for them."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal
from unittest import mock

import torch

from ..engine.timing import interleaved



STEPS = 3  # timed steps of each fast path, after one untimed (warm-up, compilation)


Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass
class Check:
    """One line of the doctor's answer."""

    name: str
    status: Status
    detail: str
    seconds: float | None = None  # a fast path's seconds per step

    def line(self) -> str:
        timing = f" ({self.seconds * 1e3:.1f} ms/step)" if self.seconds is not None else ""
        return f"  {self.status:<4}  {self.name:<28} {self.detail}{timing}"


# -- the fast paths ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What the fast paths are smoked with: the suite's first pair at its image size and
    batch (a small pair and batch where they run on the CPU)."""

    dataset: str
    teacher: str
    student: str
    image_size: int
    batch_size: int
    num_classes: int
    precisions: tuple[str, ...]  # those the suite trains at


def probe_of(suite, device: torch.device) -> Probe:
    """The suite's probe (the default pair without a suite); on the CPU a small one."""
    if device.type != "cuda":
        return Probe("synthetic-fg", "resnet20", "resnet8", 16, 8, 10,
                     tuple(sorted({j.spec.recipe.precision for j in suite.jobs})) if suite else ("bf16",))
    if suite is None:
        return Probe("synthetic-fg", "resnet32x4", "resnet8x4", 32, 64, 100, ("bf16", "fp16"))
    from ..runner.cost import data_shape

    job = next(j for j in suite.jobs if j.spec.teacher is not None) if any(
        j.spec.teacher for j in suite.jobs) else suite.jobs[0]
    shape = data_shape(job.spec.dataset, suite.file.data_root)
    return Probe(job.spec.dataset.name, job.spec.teacher.model if job.spec.teacher else job.spec.student,
                 job.spec.student, shape.image_size if shape else 224, job.spec.recipe.batch_size,
                 shape.num_classes if shape else 100,
                 tuple(sorted({j.spec.recipe.precision for j in suite.jobs})))


class KDStep:
    """A KD cohort step of the probe's pair on random images, built by the engine's own
    ``make_trainee`` under the given options and precision."""

    def __init__(self, probe: Probe, device: torch.device, options, precision: str = "fp32", students: int = 1,
                 images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        from ..engine import Execution, RngStream, TraineeSetup, make_trainee
        from ..engine.batches import to_device
        from ..method import Batch, TrainContext, create_method
        from ..models import create_model
        from ..spec import DataSpec, Recipe, RunSpec, TeacherRef

        torch.manual_seed(0)
        self.device = device
        recipe = Recipe(epochs=1, batch_size=probe.batch_size, precision=precision)
        self.execution = Execution.of(options, device, recipe.precision)
        n, size = probe.batch_size, probe.image_size
        images = torch.randn(n, 3, size, size) if images is None else images
        labels = torch.randint(probe.num_classes, (len(images),)) if labels is None else labels
        self.batch = Batch(to_device(images, self.execution), labels.to(device),
                           torch.arange(len(labels), device=device))
        self.teacher = self.execution.laid_out(create_model(probe.teacher, num_classes=probe.num_classes).to(device))
        self.teacher.eval().requires_grad_(False)
        context = partial(TrainContext, probe.num_classes, labels, 1, 0)
        spec = RunSpec(dataset=DataSpec(name="synthetic-fg", options={"image_size": 16}), student=probe.student,
                       method="kd", teacher=TeacherRef(model=probe.teacher, checkpoint="random"), recipe=recipe)
        setup = TraineeSetup(probe.num_classes, self.teacher, images[:2], context, self.execution)
        self.trainees = []
        for seed in range(students):
            trainee = make_trainee(spec.replace(seed=seed), Path("."), create_method("kd"), setup)
            trainee.rng = RngStream(seed, device)
            self.trainees.append(trainee)
        self.stacks: list = []

    def __call__(self) -> None:
        from ..engine.step import cohort_step

        cohort_step(self.batch, self.teacher, self.trainees, 1, 0.0, self.execution.autocast, stacks=self.stacks)
        failed = next((t.error for t in self.trainees if t.error is not None), None)
        if failed is not None:
            raise failed

    def finite(self) -> bool:
        return all(torch.isfinite(p).all() for t in self.trainees for p in t.model.parameters())


def timed(fn: Callable[[], None], device: torch.device, steps: int = STEPS) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after an untimed one (the engine's
    synchronised timer)."""
    return interleaved({"fn": fn}, device, steps, 1)["fn"]


def smoke_autocast(probe: Probe, device: torch.device, options) -> list[Check]:
    checks = []
    for precision in probe.precisions:
        name = f"autocast {precision}"
        if precision == "fp32":
            checks.append(Check(name, "SKIP", "the suite trains in fp32 (its recipe's precision): no autocast"))
            continue
        step = KDStep(probe, device, options, precision)
        seconds = timed(step, device)
        scaler = " with a GradScaler" if step.trainees[0].scaler is not None else ""
        ok = step.finite()
        checks.append(Check(name, "PASS" if ok else "FAIL",
                            f"KD step {probe.teacher}→{probe.student}{scaler}" + ("" if ok else ": weights not finite"),
                            seconds))
    return checks


def smoke_channels_last(probe: Probe, device: torch.device, options) -> list[Check]:
    step = KDStep(probe, device, replace(options, channels_last=True))
    seconds = timed(step, device)
    nhwc = step.batch.images.is_contiguous(memory_format=torch.channels_last)
    conv = next(p for p in step.trainees[0].model.parameters() if p.dim() == 4)
    ok = nhwc and conv.is_contiguous(memory_format=torch.channels_last)
    return [Check("channels-last", "PASS" if ok else "FAIL",
                  "NHWC batch and weights" if ok else "the batch or the weights are not NHWC", seconds)]


def smoke_device_data(probe: Probe, device: torch.device, options) -> list[Check]:
    """The built-in set held on the device, a batch cropped and flipped there, into a KD step."""
    from ..data import create_dataset
    from ..engine import EpochBatches, ResidentTrainSet, RngStream
    from ..engine.batches import to_device

    data = create_dataset("synthetic-fg", image_size=probe.image_size,
                          train_per_class=max(10, -(-probe.batch_size * 3 // 20)))  # 20 classes, 2 batches and more
    resident = ResidentTrainSet.of(data, "standard", device)
    if resident is None:
        return [Check("device-held set", "FAIL", "synthetic-fg was not held on the device")]
    sampler = EpochBatches(len(data.train), probe.batch_size, 0)
    stream = RngStream(0, device)
    images, labels, _ = next(resident.batches(sampler, stream))
    step = KDStep(replace(probe, num_classes=data.num_classes), device, options, images=images.cpu(),
                  labels=labels.cpu())

    def augment_and_step() -> None:
        batch_images, _, _ = next(resident.batches(sampler, stream))
        step.batch.images = to_device(batch_images, step.execution)
        step()

    seconds = timed(augment_and_step, device)
    where = images.device.type == device.type
    return [Check("device-held set", "PASS" if where else "FAIL",
                  f"{len(data.train)} images on {images.device}, batch crop + flip, then the KD step", seconds)]


def smoke_prepared_crop(probe: Probe, device: torch.device, options, image_size: int = 224,
                        images: int = 48) -> list[Check]:
    """A prepared store of synthetic JPEGs, its batches RandomResizedCrop-ped on the device."""
    from .bench import write_jpeg_folder
    from ..data import create_dataset
    from ..engine import EpochBatches, ResidentTrainSet, RngStream

    with tempfile.TemporaryDirectory(prefix="kdbench-doctor-") as tmp, \
            mock.patch.dict(os.environ, {"KDBENCH_PREPARED": str(Path(tmp) / "prepared")}):
        write_jpeg_folder(Path(tmp) / "jpegs", images)
        data = create_dataset("imagefolder", tmp, path="jpegs", image_size=image_size, train_crop="random_resized",
                              prepared=True)
        resident = ResidentTrainSet.of(data, "standard", device)
        if resident is None:
            return [Check("prepared-store crop", "FAIL", "the prepared store was not held on the device")]
        sampler = EpochBatches(len(data.train), min(probe.batch_size, len(data.train)), 0)
        stream = RngStream(0, device)
        shapes = []

        def crop() -> None:
            batch, _, _ = next(resident.batches(sampler, stream))
            shapes.append(tuple(batch.shape))

        seconds = timed(crop, device)
    ok = all(shape[1:] == (3, image_size, image_size) for shape in shapes)
    return [Check("prepared-store crop", "PASS" if ok else "FAIL",
                  f"{images} JPEGs → store → BatchResizedCrop({image_size}) on {device.type}, "
                  f"{shapes[0][0]} images per batch" + ("" if ok else f": got shapes {sorted(set(shapes))}"), seconds)]


def smoke_compile(probe: Probe, device: torch.device, options, backend: str = "inductor") -> list[Check]:
    if backend == "inductor" and device.type == "cpu" and not (shutil.which("cc") or shutil.which("gcc")):
        return [Check(f"torch.compile {backend}", "FAIL", "inductor on the CPU needs a C compiler (cc / gcc) on PATH")]
    engine_compile = torch.nn.Module.compile  # the engine calls model.compile(): inductor, unless told here
    with mock.patch.object(torch.nn.Module, "compile", lambda module: engine_compile(module, backend=backend)):
        step = KDStep(probe, device, replace(options, compile=True))
        start = time.perf_counter()
        step()  # compilation
        first = time.perf_counter() - start
        seconds = timed(step, device)
    ok = step.finite()
    return [Check(f"torch.compile {backend}", "PASS" if ok else "FAIL",
                  f"student compiled, first step {first:.1f} s" + ("" if ok else ": weights not finite"), seconds)]


def smoke_stacked(probe: Probe, device: torch.device, options) -> list[Check]:
    from ..engine.step import student_stacks

    step = KDStep(probe, device, options, students=3)
    alone = timed(step, device)
    step.stacks = student_stacks(step.trainees, probe.num_classes, replace(options, stack_students=True))
    seconds = timed(step, device)
    vmapped = bool(step.stacks) and all(s.forward is not None for s in step.stacks)
    return [Check("stacked students", "PASS" if vmapped and step.finite() else "FAIL",
                  (f"3 {probe.student} as one vmapped network: {alone / seconds:.2f}x the cohort's speed"
                   if vmapped else f"{probe.student} does not vmap: the students stepped one by one"), seconds)]


def smoke_data_parallel(probe: Probe, device: torch.device, options) -> list[Check]:
    """Two processes, as ``torchrun --nproc_per_node 2``, each a KD step on its half of the
    batch in DistributedDataParallel; PASS when both end with the same weights."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="kdbench-doctor-dp-") as tmp:
        try:  # DDP's warning that KD leaves no parameter unused is not the doctor's news
            with mock.patch.dict(os.environ, {"TORCH_CPP_LOG_LEVEL": "ERROR"}):
                mp.start_processes(_data_parallel_rank, args=(2, port, probe, str(device), options, tmp), nprocs=2,
                                   start_method="spawn")
        except mp.ProcessRaisedException as exc:
            return [Check("two-process step", "FAIL", str(exc).strip().splitlines()[-1])]
        results = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(2)]
    same = all(torch.equal(a, b) for a, b in zip(results[0]["weights"], results[1]["weights"]))
    return [Check("two-process step", "PASS" if same else "FAIL",
                  f"2 ranks on {device}, {results[0]['backend']}, DDP + SyncBatchNorm"
                  + ("" if same else ": the ranks' weights differ after the step"), results[0]["seconds"])]


def _data_parallel_rank(rank: int, world: int, port: int, probe: Probe, device_name: str, options, folder: str) -> None:
    from ..engine import distributed

    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    device = distributed.setup(torch.device(device_name))
    torch.manual_seed(0)
    images = torch.randn(probe.batch_size, 3, probe.image_size, probe.image_size)
    labels = torch.randint(probe.num_classes, (probe.batch_size,))
    half = slice(rank * probe.batch_size // world, (rank + 1) * probe.batch_size // world)
    step = KDStep(replace(probe, batch_size=half.stop - half.start), device, options, images=images[half],
                  labels=labels[half])
    for trainee in step.trainees:
        trainee.network = distributed.data_parallel(trainee.network)
    seconds = timed(step, device)
    weights = [p.detach().cpu() for p in step.trainees[0].model.parameters()]
    backend = torch.distributed.get_backend()
    torch.save({"weights": weights, "seconds": seconds, "backend": backend}, Path(folder) / f"rank{rank}.pt")
    distributed.teardown()


GPU_PATHS: dict[str, Callable[..., list[Check]]] = {
    "autocast": smoke_autocast, "device-held set": smoke_device_data,
    "prepared-store crop": smoke_prepared_crop, "torch.compile": smoke_compile, "stacked students": smoke_stacked,
}
WHY_GPU = {
    "autocast": "bf16 and fp16 autocast are for GPUs",
    "device-held set": "on by default on CUDA only", "prepared-store crop": "crops on the GPU",
    "torch.compile": "pays on GPUs only", "stacked students": "pays on GPUs only",
}


def fast_path_checks(probe: Probe, device: torch.device, paths_on_cpu: bool = False,
                     compile_backend: str = "inductor", skip: tuple[str, ...] = ()) -> list[Check]:
    """Each fast path's smoke on ``device`` (see the module docstring); an exception in one
    is its FAIL, with the exception's last line."""
    from ..engine import EngineOptions

    options = EngineOptions(device=str(device), progress=False)
    checks = []
    for name, smoke in [("channels-last", smoke_channels_last), *GPU_PATHS.items(),
                        ("two-process step", smoke_data_parallel)]:
        if name in skip:
            checks.append(Check(name, "SKIP", "left out (--skip)"))
            continue
        if name in GPU_PATHS and device.type != "cuda" and not paths_on_cpu:
            checks.append(Check(name, "SKIP", f"no CUDA device ({WHY_GPU[name]})"))
            continue
        with _restored_threads():
            try:
                checks.extend(smoke(probe, device, options, backend=compile_backend) if smoke is smoke_compile
                              else smoke(probe, device, options))
            except Exception as exc:  # the check's answer, not the doctor's failure
                last = traceback.format_exception_only(exc)[-1].strip()
                checks.append(Check(name, "FAIL", last))
    return checks


@contextmanager
def _restored_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
