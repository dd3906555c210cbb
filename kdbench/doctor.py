"""``kdbench doctor [SUITE]``: whether this machine will run this suite, before the hours start.

What ``python -m torch.utils.collect_env`` or ``accelerate env`` say about a machine, aimed
at the job:

- the machine: Python, torch, CUDA, cuDNN and NCCL versions, each GPU with its memory and
  bf16 / fp16 support, CPU cores, the packages kdbench may import, and the free disk where
  results, data and prepared stores go;
- for a suite: each data set opened (its split counts, or the loader's message, which
  names the missing file and the fix), each teacher checkpoint read, its sha256 and whether
  it loads into its model, each prepared store present and valid or the space it will
  take, the results folder writable, the tracking sinks importable, and what the suite
  will cost (``runner.cost``);
- a short smoke of each fast path: autocast at the suite's precision, channels-last, the
  device-held training set augmented in batches, a prepared store's batch crop,
  ``torch.compile``, stacked students, and a two-process data-parallel step: each PASS,
  FAIL or SKIP with its reason, and its step time.

The engine turns the first four on for CUDA only, and compile and stacked students pay on
GPUs only, so on a machine without one they are SKIPped, saying so; ``paths_on_cpu`` runs
them on the CPU anyway (the tests and the acceptance script's CPU form check the code
that way). The data-parallel step runs two processes on the device, as ``torchrun
--nproc_per_node 2`` would (gloo on the CPU, and where the two share one GPU).

Any FAIL makes the command exit 1.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal
from unittest import mock

import torch

from .errors import KDBenchError

Status = Literal["PASS", "FAIL", "SKIP"]
PACKAGES = ("pydantic", "numpy", "torchvision", "timm", "PyWavelets", "ptwt", "optuna", "submitit", "pandas",
            "matplotlib", "tensorboard", "wandb")
STEPS = 3  # timed steps of each fast path, after one untimed (warm-up, compilation)


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


# -- the machine ---------------------------------------------------------------------------------


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def machine_facts(places: dict[str, Path]) -> list[str]:
    """Versions, devices, cores and the free disk at each of ``places`` (what → folder)."""
    cuda = torch.cuda.is_available()
    lines = [f"  Python {platform.python_version()} ({sys.executable})",
             f"  torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none (a CPU build)'}, cuDNN "
             f"{torch.backends.cudnn.version() if cuda else 'n/a'}, NCCL {_nccl() if cuda else 'n/a'}"]
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        capability = (props.major, props.minor)
        lines.append(f"  cuda:{i} {props.name}, {gib(props.total_memory)}, sm_{props.major}{props.minor}, "
                     f"bf16 {'yes' if capability >= (8, 0) else 'no'}, fp16 {'yes' if capability >= (5, 3) else 'no'}"
                     f"{' (tensor cores)' if capability >= (7, 0) else ''}")
    if not cuda:
        lines.append("  no CUDA device: runs train on the CPU")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines.append(f"  CPU: {os.cpu_count()} cores, {usable} usable by this process, torch uses "
                 f"{torch.get_num_threads()} threads")
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    lines.append("  packages: " + ", ".join(versions))
    for what, folder in places.items():
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        lines.append(f"  free disk for {what}: {gib(shutil.disk_usage(existing).free)} at {folder.resolve()}")
    return lines


def _nccl() -> str:
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError) as exc:
        return f"unavailable ({exc})"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


# -- a suite's inputs ----------------------------------------------------------------------------


def suite_checks(suite, out: Path, data_root: str | None) -> list[Check]:
    """Data sets, teacher checkpoints, prepared stores, results folder, tracking sinks."""
    from .data import create_dataset, resolve_data_root
    from .data.batch_crops import resized_short_side
    from .data.prepared import store_root
    from .errors import DataError
    from .runner.cost import OFFICIAL_TRAIN_TEST

    checks = []
    classes: dict[str, int] = {}
    root = resolve_data_root(data_root or suite.file.data_root)
    for spec in {j.spec.dataset.model_dump_json(): j.spec.dataset for j in suite.jobs}.values():
        options = {**spec.options, "prepared": False} if "prepared" in spec.options else spec.options
        try:
            data = create_dataset(spec.name, root, val_fraction=spec.val_fraction, augment="none", **options)
        except DataError as exc:
            checks.append(Check(f"data {spec.name}", "FAIL", str(exc)))
            if spec.options.get("prepared") and spec.name in OFFICIAL_TRAIN_TEST:
                short = resized_short_side(spec.options.get("image_size", 224))
                need = 3 * short * round(short * 4 / 3) * sum(OFFICIAL_TRAIN_TEST[spec.name])
                checks.append(Check(f"prepared {spec.name}", "SKIP", f"made from the set once it is here: about "
                                    f"{gib(need)} (4:3 photos) at {store_root(root)}"))
            continue
        classes[spec.name] = data.num_classes
        checks.append(Check(f"data {spec.name}", "PASS", f"{len(data.train)} train / {len(data.val)} val / "
                                                          f"{len(data.test)} test, {data.num_classes} classes, "
                                                          f"{data.input_size} px"))
        if spec.options.get("prepared"):
            checks.append(prepared_check(data, root))
    checks.extend(teacher_checks(suite, classes))
    checks.append(writable_check(out / suite.name))
    checks.extend(tracking_checks(suite.file.track))
    return checks


def prepared_check(data, root: Path) -> Check:
    """The set's prepared store: present and valid, or the space it will take."""
    from PIL import Image

    from .data.prepared import INDEX, Listing, PreparedStore
    from .errors import DataError

    name = f"prepared {data.name}"
    listing = Listing.of_splits(data, root)
    if (listing.directory / INDEX).is_file():
        try:
            store = PreparedStore(listing.directory)
        except DataError as exc:
            return Check(name, "FAIL", str(exc))
        return Check(name, "PASS", f"{listing.directory}: {sum(store.index['counts'].values())} images, "
                                   f"{gib(store.index['bytes'])} (`kdbench data verify {data.name}` rereads it)")
    sample = listing.paths[:: max(1, len(listing.paths) // 64)]
    pixels = []
    for path in sample:
        with Image.open(path) as image:  # the header only
            width, height = image.size
        scale = listing.short_side / min(width, height)
        pixels.append(round(width * scale) * round(height * scale))
    need = 3 * sum(pixels) / len(pixels) * len(listing.paths)
    parent = next(p for p in (listing.directory, *listing.directory.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    detail = (f"not made yet: about {gib(need)} at {listing.directory.parent} (free {gib(free)}); made on first use, "
              f"or ahead with `kdbench data prepare {data.name}`")
    return Check(name, "PASS" if free > need else "FAIL",
                 detail if free > need else f"{detail}; not enough space: set $KDBENCH_PREPARED to a larger disk")


def teacher_checks(suite, classes: dict[str, int]) -> list[Check]:
    """Each teacher checkpoint the suite names: found, its sha256, loaded into its model."""
    from .checkpoints import load_weights
    from .models import create_model
    from .runner.cost import OFFICIAL_CLASSES
    from .spec import file_sha256

    checks = []
    refs = {(j.spec.teacher.model, j.spec.teacher.checkpoint, j.spec.dataset.name): j.spec.teacher
            for j in suite.jobs if j.spec.teacher is not None and j.spec.teacher.checkpoint}
    for (model, checkpoint, dataset), ref in refs.items():
        name = f"teacher {model} ({dataset})"
        path = Path(checkpoint)
        if not path.is_file():
            checks.append(Check(name, "FAIL", f"checkpoint {path} does not exist; fix the pair's teacher_checkpoint "
                                              "or set the variables its path names"))
            continue
        num_classes = classes.get(dataset, OFFICIAL_CLASSES.get(dataset))
        digest = file_sha256(path)[:16]
        if num_classes is None:
            checks.append(Check(name, "SKIP", f"{path}, sha256 {digest}…: not loaded, the data set's class count "
                                              "is unknown while it is missing"))
            continue
        try:
            load_weights(create_model(model, num_classes=num_classes), path, what=f"teacher {model}")
        except (KDBenchError, RuntimeError, OSError) as exc:
            checks.append(Check(name, "FAIL", f"{path}, sha256 {digest}…: {str(exc).splitlines()[0]}"))
        else:
            checks.append(Check(name, "PASS", f"{path}, sha256 {digest}…, loads into {model} ({num_classes} classes)"))
    return checks


def writable_check(folder: Path) -> Check:
    """Whether the results folder (or the nearest folder above it that exists) takes a file."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kdbench-doctor-"):
            pass
    except OSError as exc:
        return Check("results folder", "FAIL", f"cannot write in {existing} ({exc.strerror}); give --out a writable "
                                               "folder")
    return Check("results folder", "PASS", f"{folder} writable" + ("" if existing == folder else f" ({existing} exists)"))


def tracking_checks(wanted: list[str]) -> list[Check]:
    """Each tracking sink: importable, or the install command (a FAIL where the suite streams to it)."""
    from .tracking import SINKS, require

    checks = []
    for sink in SINKS:
        try:
            require([sink])
        except KDBenchError as exc:
            checks.append(Check(f"tracking {sink}", "FAIL" if sink in wanted else "SKIP",
                                str(exc) + ("" if sink in wanted else " (the suite does not stream to it)")))
        else:
            checks.append(Check(f"tracking {sink}", "PASS", "importable" + (", the suite streams to it"
                                                                              if sink in wanted else "")))
    return checks


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
    from .runner.cost import data_shape

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
        from .engine import Execution, RngStream, TraineeSetup, make_trainee
        from .engine.batches import to_device
        from .method import Batch, TrainContext, create_method
        from .models import create_model
        from .spec import DataSpec, Recipe, RunSpec, TeacherRef

        torch.manual_seed(0)
        self.device = device
        recipe = Recipe(epochs=1, batch_size=probe.batch_size, precision=precision)
        self.execution = Execution.of(options, device, recipe.precision)
        n, size = probe.batch_size, probe.image_size
        images = torch.randn(n, 3, size, size) if images is None else images
        labels = torch.randint(probe.num_classes, (len(images),)) if labels is None else labels
        channels_last = self.execution.channels_last
        self.batch = Batch(to_device(images, device, channels_last), labels.to(device),
                           torch.arange(len(labels), device=device))
        self.teacher = create_model(probe.teacher, num_classes=probe.num_classes).to(device).eval()
        self.teacher.requires_grad_(False)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
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
        from .engine.step import cohort_step

        cohort_step(self.batch, self.teacher, self.trainees, 1, 0.0, self.execution.autocast, stacks=self.stacks)
        failed = next((t.error for t in self.trainees if t.error is not None), None)
        if failed is not None:
            raise failed

    def finite(self) -> bool:
        return all(torch.isfinite(p).all() for t in self.trainees for p in t.model.parameters())


def timed(fn: Callable[[], None], device: torch.device, steps: int = STEPS) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after an untimed one (bench's
    synchronised timer)."""
    from .bench import interleaved

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
    from .data import create_dataset
    from .engine import EpochBatches, ResidentTrainSet, RngStream
    from .engine.batches import to_device

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
        step.batch.images = to_device(batch_images, device, step.execution.channels_last)
        step()

    seconds = timed(augment_and_step, device)
    where = images.device.type == device.type
    return [Check("device-held set", "PASS" if where else "FAIL",
                  f"{len(data.train)} images on {images.device}, batch crop + flip, then the KD step", seconds)]


def smoke_prepared_crop(probe: Probe, device: torch.device, options, image_size: int = 224,
                        images: int = 48) -> list[Check]:
    """A prepared store of synthetic JPEGs, its batches RandomResizedCrop-ped on the device."""
    from .bench import write_jpeg_folder
    from .data import create_dataset
    from .engine import EpochBatches, ResidentTrainSet, RngStream

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
    from .engine.step import student_stacks

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
    from . import distributed

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
    "autocast": smoke_autocast, "channels-last": smoke_channels_last, "device-held set": smoke_device_data,
    "prepared-store crop": smoke_prepared_crop, "torch.compile": smoke_compile, "stacked students": smoke_stacked,
}
WHY_GPU = {
    "autocast": "bf16 and fp16 autocast are for GPUs", "channels-last": "on by default on CUDA only",
    "device-held set": "on by default on CUDA only", "prepared-store crop": "crops on the GPU",
    "torch.compile": "pays on GPUs only", "stacked students": "pays on GPUs only",
}


def fast_path_checks(probe: Probe, device: torch.device, paths_on_cpu: bool = False,
                     compile_backend: str = "inductor", skip: tuple[str, ...] = ()) -> list[Check]:
    """Each fast path's smoke on ``device`` (see the module docstring); an exception in one
    is its FAIL, with the exception's last line."""
    from .engine import EngineOptions

    options = EngineOptions(device=str(device), progress=False)
    checks = []
    for name, smoke in [*GPU_PATHS.items(), ("two-process step", smoke_data_parallel)]:
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


# -- the command ---------------------------------------------------------------------------------


def run_doctor(suite_path: str | None, out: str = "results", data_root: str | None = None, device_name: str = "auto",
               paths_on_cpu: bool = False, compile_backend: str = "inductor", skip: tuple[str, ...] = (),
               estimate: bool = True, json_path: str | None = None, precision: str | None = None,
               printer: Callable[[str], None] = print) -> list[Check]:
    """Print what the doctor finds (see the module docstring) and, with ``json_path``, write
    it there as JSON (the machine's lines, the checks, the cost lines); returns its checks.
    ``precision`` overrides the suite's recipes, as ``kdbench run --precision`` does."""
    from .data import resolve_data_root
    from .data.prepared import store_root
    from .engine import resolve_device
    from .spec import Recipe

    suite = None
    if suite_path is not None:
        from .suite import load_suite

        suite = load_suite(suite_path, {"precision": precision} if precision else None)
    root = resolve_data_root(data_root or (suite.file.data_root if suite else None))
    results = Path(out) / suite.name if suite else Path(out)
    printer("kdbench doctor: the machine")
    facts = machine_facts({"results": results, "data": root, "prepared stores": store_root(root)})
    for line in facts:
        printer(line)
    cost: list[str] = []
    checks: list[Check] = []
    if suite is not None:
        printer(f"\nthe suite {suite.path} ({len(suite.jobs)} runs)")
        found = suite_checks(suite, Path(out), data_root)
        for check in found:
            printer(check.line())
        checks += found
    device = resolve_device(device_name)
    probe = probe_of(suite, device)
    if precision is not None:
        probe = replace(probe, precisions=(Recipe(precision=precision).precision,))
    printer(f"\nfast paths on {device} ({probe.teacher}→{probe.student}, {probe.image_size} px, batch "
            f"{probe.batch_size})")
    smoked = fast_path_checks(probe, device, paths_on_cpu, compile_backend, skip)
    for check in smoked:
        printer(check.line())
    checks += smoked
    if suite is not None and estimate:
        from .engine import EngineOptions
        from .runner.cost import describe, suite_estimate
        from .runner.planning import RunnerOptions, plan_suite

        printer("")
        options = RunnerOptions(out=Path(out), engine=EngineOptions(device=str(device), data_root=data_root,
                                                                    progress=False), printer=printer)
        cost = describe(suite_estimate(plan_suite(suite, options), printer), torch.get_num_threads())
        for line in cost:
            printer(line)
    if json_path is not None:
        Path(json_path).write_text(json.dumps({"machine": [line.strip() for line in facts], "device": str(device),
                                               "checks": [asdict(c) for c in checks], "cost": cost}, indent=1))
    failed = [c.name for c in checks if c.status == "FAIL"]
    printer(f"\n{len(failed)} FAIL" + (f": {', '.join(failed)}" if failed else ", "
                                       f"{sum(c.status == 'PASS' for c in checks)} PASS, "
                                       f"{sum(c.status == 'SKIP' for c in checks)} SKIP"))
    return checks
