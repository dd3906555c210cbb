"""``kdbench bench``: what the harness costs, measured side by side in one process.

(a) Per-method step time: one optimisation step of the student (the training loop's own
    step: student forward, the method's loss, backward, SGD step) for every method, on a
    teacher output computed once, as a ratio to KD's. Each round times KD and every
    method back to back (a block of calls filling ROUND_SECONDS, its size fixed once after
    a warm-up, in an order rotated from round to round) and takes each method's ratio to
    KD in that round, so that the machine's drift between rounds cancels. Each block
    follows another method's, as a cohort steps its students: timed after a block of its
    own, a step runs on what its own allocations left behind (ReviewKD's is then cheaper,
    by what the allocator holds, not by its arithmetic) and two runs agree less well
    (docs/speed.md has the figures). Unlike ``torch.utils.benchmark``'s autorange, no
    round spends time sizing its blocks again.
    A ratio is the median of its rounds', given with that median's 95% confidence interval
    (distribution-free: two order statistics of the rounds' ratios) and the rounds'
    interquartile range. Rounds go on until every interval lies within RATIO_SPREAD / 2
    of its median, so that two runs whose intervals hold the truth agree within
    RATIO_SPREAD, or until ROUNDS_AT_MOST or SECONDS_AT_MOST: then the ratios that did not
    settle are named (a busy machine's rounds scatter too widely).
(b) Cohort: every method as one cohort (one teacher forward per batch) against the same
    runs one by one. With t the teacher forward and s_i each student's step, one by one
    costs Σ(t + s_i) and a cohort t + Σs_i: the bound on the speed-up is printed beside
    the measured one. Then the same cohort with its students stacked (one vmapped
    network, ``EngineOptions.stack_students``), which alone can pass the bound.
(c) Data: the training set's loader (decoding, augmentation, collation) in images/s
    against the training step's images/s, to show which one limits a run. Then at 224 px:
    a few hundred synthetic JPEGs written to a temporary folder, read by the PIL folder
    loader and from their prepared store (``kdbench.data.prepared``, batch
    RandomResizedCrop on the device), against a ResNet34 → ResNet18 KD step.
(d) Overhead: the harness's KD step against a minimal hand-written PyTorch KD loop.

All timings are medians over interleaved rounds, so drift of the machine's speed hits
every contender alike. Inputs are random tensors of the named size (a) (b) (d) and the
named data set (c).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from ..data import DataSplits
from ..method import Batch, TrainContext, create_method, list_methods
from ..models import create_model
from ..spec import DataSpec, Recipe, RunSpec, TeacherRef
from ..engine.timing import ROUND_SECONDS, calls_per_round, interleaved, seconds_per_call, sync
from ..engine import (EngineOptions, EpochBatches, Execution, Indexed, ResidentTrainSet, RngStream, TraineeSetup,
                      make_trainee, open_data, resolve_device)
from ..engine.batches import loader_batches, to_device
from ..engine.step import cohort_step, student_stacks, trainee_step


RATIO_SPREAD = 0.05  # (a): two runs' ratios should agree within this (relative); see the module docstring
ROUNDS_AT_MOST = 30
SECONDS_AT_MOST = 180.0  # (a) stops adding rounds after this long (a busy machine never settles)


@dataclass
class StepRatio:
    seconds: float  # median seconds per step over the rounds
    ratio: float  # median over the rounds of the round's ratio to the reference
    interval: tuple[float, float] | None  # 95% confidence interval of that median; None: too few rounds
    quartiles: tuple[float, float]  # first and third quartile of the rounds' ratios
    rounds: int
    settled: bool  # its interval lies within RATIO_SPREAD / 2 of it


def step_ratios(contenders: dict[str, Callable[[], None]], reference: str, steps: int | None, rounds: int,
                device: torch.device) -> dict[str, StepRatio]:
    """(a): each contender's seconds per call and ratio to ``reference`` (see the module
    docstring). With ``steps`` given, exactly ``rounds`` rounds of that many calls each."""
    calls = {name: calls_per_round(fn, device, steps) for name, fn in contenders.items()}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    start = time.perf_counter()
    for round_ in range(rounds if steps else ROUNDS_AT_MOST):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        this_round = {name: seconds_per_call(contenders[name], device, calls[name]) for name in order}
        for name, value in this_round.items():
            seconds[name].append(value)
            ratios[name].append(value / this_round[reference])
        settled = all(_settled(r) for r in ratios.values())
        if not steps and round_ + 1 >= rounds and (settled or time.perf_counter() - start > SECONDS_AT_MOST):
            break
    result = {}
    for name in names:
        median = statistics.median(ratios[name])
        first, _, third = _quartiles(ratios[name])
        result[name] = StepRatio(statistics.median(seconds[name]), median, _median_interval(ratios[name]),
                                 (first, third), len(ratios[name]), _settled(ratios[name]))
    return result


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    return tuple(statistics.quantiles(values, n=4, method="inclusive")) if len(values) > 1 else (values[0],) * 3


def _median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A confidence interval of the median that assumes no distribution: the j-th smallest
    and j-th largest value, j the largest with P(Binomial(n, 1/2) < j) ≤ (1 - confidence) / 2;
    None below 6 values, too few for 95%."""
    n, below, j = len(values), 0.0, 0
    while j < n and below + math.comb(n, j) / 2**n <= (1 - confidence) / 2:
        below += math.comb(n, j) / 2**n
        j += 1
    ordered = sorted(values)
    return (ordered[j - 1], ordered[n - j]) if j else None


def _settled(values: list[float]) -> bool:
    """Whether the median's confidence interval lies within RATIO_SPREAD / 2 of it."""
    interval, median = _median_interval(values), statistics.median(values)
    return interval is not None and max(median - interval[0], interval[1] - median) <= median * RATIO_SPREAD / 2


LARGE_TEACHER, LARGE_STUDENT = "timm:resnet34", "timm:resnet18"  # the fine-grained suite's pair
LARGE_SIZE = 224


def write_jpeg_folder(folder: Path, images: int, classes: int = 10, seed: int = 0) -> None:
    """An ImageFolder tree (train/<class>/, one test image per class) of ``images`` JPEGs
    about the size of CUB-200's (short side 300 to 500 px, either orientation, quality 90):
    smooth random colour fields with pixel noise, which decode like photographs do."""
    generator = np.random.default_rng(seed)
    for i in range(images):
        split = "test" if i < classes else "train"
        short, long = sorted(generator.integers(300, 501, size=2))
        height, width = (short, long) if generator.random() < 0.7 else (long, short)
        field = Image.fromarray(generator.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (int(width), int(height)), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + generator.normal(0, 12, (height, width, 3)).astype(np.int16)
        path = folder / split / f"class{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def large_image_data(batch_size: int, images: int, device: torch.device, options: EngineOptions,
                     steps: int | None, rounds: int, printer: Callable[[str], None], teacher_name: str = LARGE_TEACHER,
                     student_name: str = LARGE_STUDENT, image_size: int = LARGE_SIZE, precision: str = "fp32"
                     ) -> dict[str, float]:
    """(c) at 224 px: a folder of ``images`` synthetic JPEGs read by the PIL folder loader and
    from its prepared store (item by item through the loader, and batch RandomResizedCrop on
    ``device``), in images/s on one thread, against the fine-grained suite's ResNet34 →
    ResNet18 KD step."""
    with tempfile.TemporaryDirectory(prefix="kdbench-bench-") as tmp, \
            mock.patch.dict(os.environ, {"KDBENCH_PREPARED": str(Path(tmp) / "prepared")}):
        root = Path(tmp)
        write_jpeg_folder(root / "jpegs", images)
        spec = partial(DataSpec, name="imagefolder")
        folder_options = {"path": "jpegs", "image_size": image_size, "train_crop": "random_resized"}
        engine = replace(options, data_root=str(root))
        folder = open_data(RunSpec(dataset=spec(options=folder_options), student=student_name), engine, "standard")
        start = time.perf_counter()
        store = open_data(RunSpec(dataset=spec(options={**folder_options, "prepared": True}), student=student_name),
                          engine, "standard")
        prepare_seconds = time.perf_counter() - start
        resident = ResidentTrainSet.of(store, "standard", device)
        sampler = EpochBatches(len(folder.train), batch_size, 0)

        def loader_epoch(data: DataSplits) -> None:
            for _ in loader_batches(DataLoader(Indexed(data.train), batch_sampler=sampler), RngStream(0, device)):
                pass

        def store_epoch() -> None:
            for _ in resident.batches(sampler, RngStream(0, device)):
                pass

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # images/s per core, as a loader process runs (PIL decodes on one anyway)
        try:
            epoch = interleaved({"folder": partial(loader_epoch, folder), "store items": partial(loader_epoch, store),
                                 "store": store_epoch}, device, 1, rounds)
        finally:
            torch.set_num_threads(threads)
        rates = {name: len(folder.train) / seconds for name, seconds in epoch.items()}
        kd = RunSpec(dataset=spec(options=folder_options), student=student_name, method="kd",
                     teacher=TeacherRef(model=teacher_name, checkpoint="random"), recipe=Recipe(precision=precision))
        execution = Execution.of(options, device, kd.recipe.precision)
        teacher = execution.laid_out(create_model(teacher_name, num_classes=len(folder.classes)).to(device))
        teacher.eval().requires_grad_(False)
        batch_images, labels, index = next(resident.batches(sampler, RngStream(0, device)))
        context = partial(TrainContext, len(folder.classes), folder.train_labels, 200, 0)
        trainee = make_trainee(kd, Path("."), create_method("kd"),
                               TraineeSetup(len(folder.classes), teacher, batch_images[:2].cpu(), context, execution))
        trainee.rng = RngStream(0, device)
        batch = Batch(to_device(batch_images, execution), labels.to(device), index.to(device))
        step = interleaved({"kd": lambda: cohort_step(batch, teacher, [trainee], 1, 0.0, execution.autocast)}, device,
                           steps or 1, rounds)["kd"]
    step_rate = len(batch.labels) / step
    printer(f"    {image_size} px, {images} synthetic JPEGs (CUB-sized), RandomResizedCrop + flip, batch {batch_size}, "
            f"data paths on one thread:\n"
            f"      folder loader (PIL, 0 workers)          {rates['folder']:8,.0f} images/s\n"
            f"      prepared store, loader (0 workers)      {rates['store items']:8,.0f} images/s\n"
            f"      prepared store, batch crop on {device.type:<5}  {rates['store']:8,.0f} images/s "
            f"({rates['store'] / rates['folder']:.1f}x the folder)\n"
            f"      {teacher_name} → {student_name} KD step  {step_rate:8,.{0 if step_rate >= 10 else 2}f} images/s\n"
            f"      preparing the store took {prepare_seconds:.1f} s (once per set)")
    return {"large_folder_images_per_s": rates["folder"], "large_store_images_per_s": rates["store"],
            "large_store_items_images_per_s": rates["store items"],
            "large_kd_images_per_s": step_rate, "large_prepare_seconds": prepare_seconds}


def run_bench(teacher_name: str = "resnet32x4", student_name: str = "resnet8x4", batch_size: int = 64,
              image_size: int = 32, num_classes: int = 100, methods: list[str] | None = None,
              steps: int | None = None, rounds: int = 5, device_name: str = "auto", dataset: str = "synthetic-fg",
              printer: Callable[[str], None] = print, large_images: int = 300, through: str = "d",
              precision: str = "fp32") -> dict[str, Any]:
    """The cases (a) to ``through`` (see the module docstring); (b)'s bound takes (a)'s step
    times and (c) (b)'s KD step, so each case comes with those before it."""
    device = resolve_device(device_name)
    methods = methods or list_methods()
    options = EngineOptions(device=str(device), progress=False)
    precision = Recipe(precision=precision).precision  # any spelling, as a suite takes it
    execution = Execution.of(options, device, precision)
    autocast = execution.autocast
    torch.manual_seed(0)
    teacher = execution.laid_out(create_model(teacher_name, num_classes=num_classes).to(device))
    teacher.eval().requires_grad_(False)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(num_classes, (batch_size,))
    num_samples = 50_000  # a CIFAR-sized training set for CRD's memory
    batch = Batch(to_device(images, execution), labels.to(device),
                  torch.randint(num_samples, (batch_size,), device=device))
    train_labels = torch.randint(num_classes, (num_samples,))
    teacher_ref = TeacherRef(model=teacher_name, checkpoint="random")

    created = {name: create_method(name) for name in methods}
    if any(m.needs.weak_view for m in created.values()):  # MLKD: a second view of the batch
        batch = replace(batch, weak_images=to_device(torch.randn_like(images), execution))
    teacher.tap(sorted({stage for m in created.values() if m.needs.teacher for stage in m.needs.teacher_stages}))
    context = partial(TrainContext, num_classes, train_labels, 240, 0,
                      teacher_train_logits=torch.randn(num_samples, num_classes))
    setup = TraineeSetup(num_classes, teacher, images[:2], context, execution)
    trainees = {}
    for name, method in created.items():
        spec = RunSpec(dataset=DataSpec(name=dataset, options={"image_size": image_size}), student=student_name,
                       method=name, teacher=teacher_ref if method.needs.teacher else None,
                       recipe=Recipe(epochs=240, precision=precision))
        trainees[name] = make_trainee(spec, Path("."), method, setup)
        trainees[name].rng = RngStream(0, device)

    def teacher_forward() -> None:
        with torch.no_grad(), autocast():
            teacher(batch.images)

    with torch.no_grad(), autocast():
        teacher_out = teacher(batch.images)
        teacher_weak = teacher(batch.weak_images) if batch.weak_images is not None else None

    def student_step(name: str) -> None:
        trainee = trainees[name]
        with trainee.rng.active():
            trainee_step(trainee, batch, teacher_out, 1, 0.0, autocast, teacher_weak=teacher_weak)

    def alone(name: str) -> None:
        cohort_step(batch, teacher, [trainees[name]], 1, 0.0, autocast)

    printer(f"kdbench bench: {teacher_name}→{student_name}, batch {batch_size}, {image_size}×{image_size}, "
            f"{num_classes} classes, {device} ({torch.get_num_threads()} threads), {precision}, median of {rounds} rounds × "
            f"{steps or f'{ROUND_SECONDS} s of'} steps")

    # (a) every student's step, against KD's
    reference = "kd" if "kd" in trainees else next(iter(trainees))
    measured = step_ratios({name: partial(student_step, name) for name in trainees}, reference, steps, rounds, device)
    step_seconds = {name: m.seconds for name, m in measured.items()}
    printer(f"\n(a) student step per method (a run alone costs this plus the teacher forward, if it has one); "
            f"ratio to {reference}: median of {measured[reference].rounds} rounds' ratios, its 95% confidence "
            f"interval, the rounds' interquartile range")
    printer(f"    {'method':<10} {'step ms':>9} {'vs ' + reference:>7}  {'95% CI':<11}  rounds' IQR")
    for name, m in measured.items():
        interval = f"[{m.interval[0]:.2f}–{m.interval[1]:.2f}]" if m.interval else f"none: {m.rounds} rounds"
        printer(f"    {name:<10} {m.seconds * 1e3:9.1f} {m.ratio:6.2f}x  {interval:<11}  "
                f"[{m.quartiles[0]:.2f}–{m.quartiles[1]:.2f}]")
    unsettled = [name for name, m in measured.items() if not m.settled]
    if unsettled and not steps:
        printer(f"    not settled after {measured[reference].rounds} rounds: the intervals of {', '.join(unsettled)} "
                f"reach past ±{RATIO_SPREAD * 50:.1f}%, so two runs may differ by more than {RATIO_SPREAD:.0%}")
    result: dict[str, Any] = {f"step_ratio_{name}": m.ratio for name, m in measured.items()}
    result.update({f"step_ratio_ci_{name}": m.interval for name, m in measured.items()})
    if through == "a":
        return result

    # (b): the teacher forward, every run alone (its step after a teacher forward, if it
    # needs one), the cohort, the cohort stacked
    contenders: dict[str, Callable[[], None]] = {"teacher forward": teacher_forward}
    contenders.update({f"alone {name}": partial(alone, name) for name in trainees})
    cohort = list(trainees.values())
    stacks = student_stacks(cohort, num_classes, replace(options, stack_students=True))
    contenders["cohort"] = lambda: cohort_step(batch, teacher, cohort, 1, 0.0, autocast)
    contenders["stacked cohort"] = lambda: cohort_step(batch, teacher, cohort, 1, 0.0, autocast, stacks=stacks)
    times = interleaved(contenders, device, steps, rounds)
    t = times["teacher forward"]
    one_by_one = sum(times[f"alone {name}"] for name in trainees)
    bound = sum(s + (t if trainees[name].method.needs.teacher else 0.0) for name, s in step_seconds.items()) / (
        t + sum(step_seconds.values()))
    speedup = one_by_one / times["cohort"]
    printer(f"\n(b) teacher forward t = {t * 1e3:.1f} ms; {len(trainees)} runs one by one {one_by_one * 1e3:.1f} ms "
            f"per batch, as one cohort {times['cohort'] * 1e3:.1f} ms")
    printer(f"    cohort speed-up: {speedup:.2f}x (bound {bound:.2f}x)")
    stacked_speedup = one_by_one / times["stacked cohort"]
    printer(f"    students stacked (one vmapped {student_name}): {times['stacked cohort'] * 1e3:.1f} ms, "
            f"speed-up {stacked_speedup:.2f}x (--stack-students pays where this beats the cohort)")
    result.update({"teacher_ms": t * 1e3, "cohort_speedup": speedup, "cohort_bound": bound,
                   "stacked_speedup": stacked_speedup})
    if through == "b":
        return result

    # (c) data pipeline against the training step
    data_spec = RunSpec(dataset=DataSpec(name=dataset, options={"image_size": image_size}), student=student_name)
    data = open_data(data_spec, options, augment=True)
    sampler = EpochBatches(len(data.train), batch_size, 0)
    start = time.perf_counter()
    loader = DataLoader(Indexed(data.train), batch_sampler=sampler)
    seen = sum(len(labels) for _, labels, _ in loader_batches(loader, RngStream(0, device)))
    data_rate = seen / (time.perf_counter() - start)
    step_rate = batch_size / times[f"alone {'kd' if 'kd' in trainees else next(iter(trainees))}"]
    printer(f"\n(c) data pipeline ({dataset}, {image_size} px, 0 workers): {data_rate:,.0f} images/s; "
            f"KD training step: {step_rate:,.0f} images/s "
            f"({'data' if data_rate < step_rate else 'the step'} limits)")
    resident = ResidentTrainSet.of(data, True, device)
    if resident is not None:
        sync(device)
        start = time.perf_counter()
        seen = sum(len(labels) for _, labels, _ in resident.batches(sampler, RngStream(0, device)))
        sync(device)
        resident_rate = seen / (time.perf_counter() - start)
        printer(f"    held on {device} and augmented in batch: {resident_rate:,.0f} images/s")
    large = large_image_data(batch_size, large_images, device, options, steps, rounds, printer,
                             precision=precision) if large_images else {}
    result.update({"data_images_per_s": data_rate, **large})
    if through == "c":
        return result

    # (d) harness overhead against a minimal hand-written KD loop on identical models
    if "kd" in trainees:
        plain_student = create_model(student_name, num_classes=num_classes).to(device)
        plain_student.load_state_dict(trainees["kd"].model.state_dict())
        optimizer = torch.optim.SGD(plain_student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

        def minimal_kd_step() -> None:
            with torch.no_grad():
                z_t = teacher(batch.images).logits
            z_s = plain_student(batch.images).logits
            loss = 0.1 * F.cross_entropy(z_s, batch.labels) + 0.9 * 16 * F.kl_div(
                F.log_softmax(z_s / 4, 1), F.softmax(z_t / 4, 1), reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        overhead = interleaved({"harness": partial(alone, "kd"), "minimal": minimal_kd_step}, device, steps, rounds)
        ratio = overhead["harness"] / overhead["minimal"]
        printer(f"\n(d) KD step: harness {overhead['harness'] * 1e3:.1f} ms, minimal PyTorch loop "
                f"{overhead['minimal'] * 1e3:.1f} ms ({(ratio - 1) * 100:+.1f}%)")
        result["harness_overhead"] = ratio - 1
    return result
