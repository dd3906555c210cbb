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

Channels-last is the engine's default on every device, so it runs everywhere; autocast,
the device-held set and the prepared-store crop are for CUDA, and compile and stacked
students pay on GPUs only, so on a machine without one those are SKIPped, saying so;
``paths_on_cpu`` runs them on the CPU anyway (the tests and the acceptance script's CPU
form check the code that way). The data-parallel step runs two processes on the device,
as ``torchrun --nproc_per_node 2`` would (gloo on the CPU, and where the two share one
GPU).

Any FAIL makes the command exit 1.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..engine import usable_cores
from ..errors import KDBenchError
from .smoke import Check, fast_path_checks, probe_of

PACKAGES = ("pydantic", "numpy", "torchvision", "timm", "PyWavelets", "ptwt", "optuna", "submitit", "pandas",
            "matplotlib", "tensorboard", "wandb")


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
    lines.append(f"  CPU: {os.cpu_count()} cores, {usable_cores()} usable by this process (what kdbench plans "
                 f"with), torch uses {torch.get_num_threads()} threads")
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
    from ..data import create_dataset, resolve_data_root
    from ..data.batch_crops import resized_short_side
    from ..data.prepared import store_root
    from ..errors import DataError
    from ..runner.cost import OFFICIAL_TRAIN_TEST

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

    from ..data.prepared import INDEX, Listing, PreparedStore
    from ..errors import DataError

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
    from ..store.checkpoints import load_weights
    from ..models import create_model
    from ..runner.cost import OFFICIAL_CLASSES
    from ..spec import file_sha256

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
    from ..engine.tracking import SINKS, require

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


# -- the command ---------------------------------------------------------------------------------


def run_doctor(suite_path: str | None, out: str = "results", data_root: str | None = None, device_name: str = "auto",
               paths_on_cpu: bool = False, compile_backend: str = "inductor", skip: tuple[str, ...] = (),
               estimate: bool = True, json_path: str | None = None, precision: str | None = None,
               printer: Callable[[str], None] = print) -> list[Check]:
    """Print what the doctor finds (see the module docstring) and, with ``json_path``, write
    it there as JSON (the machine's lines, the checks, the cost lines); returns its checks.
    ``precision`` overrides the suite's recipes, as ``kdbench run --precision`` does."""
    from ..data import resolve_data_root
    from ..data.prepared import store_root
    from ..engine import resolve_device
    from ..spec import Recipe

    suite = None
    if suite_path is not None:
        from ..suite import load_suite

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
        from ..engine import EngineOptions
        from ..runner.cost import describe, suite_estimate
        from ..runner.planning import RunnerOptions, plan_suite

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
