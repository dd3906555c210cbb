"""The engine's fast paths, each forced on on the CPU through EngineOptions, in a short
cohort (kd and crd: logits, and features with a memory bank) whose records are compared
with the plain path's.

Each path changes only how the numbers are computed, and training amplifies any change
(an epoch of 16-px digits moves val top-5 by up to 10 points from float rounding alone),
so the paths that round differently are compared after two steps (the first 128 samples,
batch 64), each with its tolerance on the loss terms and on the accuracy (one sample of
128 is 0.8 points; after two steps bf16 moved test top-5 by 9 samples):
- channels-last, the vmapped student stack and torch.compile compute in float32 with
  other kernels: rounding only;
- bfloat16 autocast (the recipe's precision bf16: another run id, the same data) keeps 8 bits of mantissa in convolutions and matrix products;
- float16 autocast keeps 11, behind a GradScaler (its state is checkpointed and resumed).
The device-held training set needs the whole set in memory (a subset goes through the
loader), so it trains a whole epoch: without augmentation it sees the loader's pixels
(normalised in batch, so up to rounding); with augmentation it draws crops and flips per
batch from the data stream, other images than the loader's, so only the epoch's losses
are comparable, loosely.

CUDA-only parts these cannot reach: pinned host memory, non-blocking copies, loader
processes feeding a GPU, cuDNN's kernels, NCCL (docs/speed.md: "Not yet run").
"""

import math
import os
from dataclasses import replace

import pytest
import torch

from kdbench import store
from kdbench.spec import Recipe
from kdbench.engine import EngineOptions, train_cohort

from conftest import TINY_RECIPE, student_spec

PLAIN = EngineOptions(progress=False, device="cpu", channels_last=False)  # NCHW, every fast path off
TWO_STEPS = replace(PLAIN, subset=128)
ONE_EPOCH = Recipe(**{**TINY_RECIPE.model_dump(), "epochs": 1})
METHODS = ("kd", "crd")
SAMPLE = 100 / 128  # points of accuracy one sample of the subset is worth


def comparable(record):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")}
            for row in record.dump()["metrics"]]


def cohort(teacher_out, folder, options, recipe=ONE_EPOCH):
    out, teacher = teacher_out
    specs = [student_spec(teacher, method=m, recipe=recipe) for m in METHODS]
    results = train_cohort(specs, [folder / s.run_id for s in specs], options,
                           out / teacher.run_id / store.WEIGHTS)
    for spec, result in zip(specs, results):
        assert not isinstance(result, BaseException), (spec.method, result)
    return results


def assert_close(plain, fast, loss_rel, points):
    """Every loss term within ``loss_rel`` (relative) and every accuracy within ``points``
    percentage points of the plain path's; the rest of each row equal."""
    for method, a, b in zip(METHODS, plain, fast, strict=True):
        for row_a, row_b in zip(comparable(a), comparable(b), strict=True):
            for key, value in row_a.items():
                loss, accuracy = key.startswith("loss_"), key.endswith(("top1", "top5"))
                assert math.isclose(value, row_b[key], rel_tol=loss_rel if loss else 0,
                                    abs_tol=points if accuracy else 0), (method, key, value, row_b[key])


@pytest.fixture(scope="module")
def plain(teacher_out, tmp_path_factory):
    return cohort(teacher_out, tmp_path_factory.mktemp("plain"), TWO_STEPS)


def test_channels_last(teacher_out, plain, tmp_path, monkeypatch):
    converted = []
    to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: converted.append(k.get("memory_format"))
                        or to(self, *a, **k))
    fast = cohort(teacher_out, tmp_path, replace(TWO_STEPS, channels_last=True))
    assert converted.count(torch.channels_last) == 1 + len(METHODS)  # the teacher and each student
    assert_close(plain, fast, loss_rel=1e-4, points=2 * SAMPLE)


def test_bfloat16_autocast(teacher_out, plain, tmp_path, monkeypatch):
    dtypes = []
    autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device, dtype: dtypes.append((device, dtype))
                        or autocast(device, dtype=dtype))
    fast = cohort(teacher_out, tmp_path, TWO_STEPS, recipe=ONE_EPOCH.model_copy(update={"precision": "bf16"}))
    assert set(dtypes) == {("cpu", torch.bfloat16)}
    assert_close(plain, fast, loss_rel=5e-2, points=12 * SAMPLE)


def test_float16_autocast_with_a_gradient_scaler(teacher_out, plain, tmp_path, monkeypatch):
    from kdbench.engine import cohort as engine_cohort

    options = TWO_STEPS
    fast = cohort(teacher_out, tmp_path, options, recipe=ONE_EPOCH.model_copy(update={"precision": "fp16"}))
    assert_close(plain, fast, loss_rel=1e-2, points=10 * SAMPLE)
    # a second epoch resumes each run's scaler from its checkpoint
    scales = []
    resume = engine_cohort.resume
    monkeypatch.setattr(engine_cohort, "resume", lambda trainee, device: resume(trainee, device) or scales.append(
        trainee.scaler.get_scale()))
    two_epochs = Recipe(**{**ONE_EPOCH.model_dump(), "epochs": 2, "precision": "fp16"})
    out, teacher = teacher_out
    spec = student_spec(teacher, recipe=two_epochs)
    first = train_cohort([spec], [tmp_path / "resumed" / spec.run_id],
                         replace(options, on_epoch=lambda epoch, row: _stop()), out / teacher.run_id / store.WEIGHTS)
    assert isinstance(first[0], Interrupted)
    saved = torch.load(tmp_path / "resumed" / spec.run_id / store.CHECKPOINT, weights_only=False)["scaler"]
    assert saved["scale"] > 0
    second = train_cohort([spec], [tmp_path / "resumed" / spec.run_id], options, out / teacher.run_id / store.WEIGHTS)
    assert scales[-1] == saved["scale"] and [r.epoch for r in second[0].metrics] == [1, 2]


class Interrupted(Exception):
    pass


def _stop():
    raise Interrupted("stopped after the first epoch")


def test_stacked_students(teacher_out, plain, tmp_path):
    fast = cohort(teacher_out, tmp_path, replace(TWO_STEPS, stack_students=True))
    assert_close(plain, fast, loss_rel=1e-4, points=2 * SAMPLE)


def test_torch_compile(teacher_out, plain, tmp_path, monkeypatch):
    """Dynamo's graph capture and AOTAutograd, through the aot_eager backend: inductor's
    C++ code generation (the default backend) took 98 s for one resnet8 forward and
    backward on a 2-core machine, so it runs only with KDBENCH_SLOW_TESTS=1."""
    compiled = []
    compile_ = torch.nn.Module.compile
    backend = {} if os.environ.get("KDBENCH_SLOW_TESTS") else {"backend": "aot_eager"}
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **k: compiled.append(self)
                        or compile_(self, **{**k, **backend}))
    fast = cohort(teacher_out, tmp_path, replace(TWO_STEPS, compile=True))
    assert len(compiled) == len(METHODS)
    assert_close(plain, fast, loss_rel=1e-4, points=2 * SAMPLE)


def test_device_held_data_without_augmentation_sees_the_loaders_pixels(teacher_out, tmp_path):
    recipe = Recipe(**{**ONE_EPOCH.model_dump(), "augment": "none"})
    loader = cohort(teacher_out, tmp_path / "loader", PLAIN, recipe)
    held = cohort(teacher_out, tmp_path / "held", replace(PLAIN, device_data=True), recipe)
    assert_close(loader, held, loss_rel=1e-3, points=15)


def test_device_held_data_with_batch_augmentation(teacher_out, tmp_path, monkeypatch):
    from kdbench.engine import ResidentTrainSet

    augmented = []
    batches = ResidentTrainSet.batches
    monkeypatch.setattr(ResidentTrainSet, "batches", lambda self, *a: augmented.append(self.augment)
                        or batches(self, *a))
    loader = cohort(teacher_out, tmp_path / "loader", PLAIN)
    held = cohort(teacher_out, tmp_path / "held", replace(PLAIN, device_data=True))
    assert augmented == [True]  # the epoch's batches were cropped and flipped on the device
    assert_close(loader, held, loss_rel=0.1, points=20)


@pytest.mark.parametrize("channels_last", [False, True])
def test_evaluation_sees_the_layout_training_does(channels_last) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from kdbench.engine.evaluation import evaluate, predict
    from kdbench.engine.options import Execution
    from kdbench.models import create_model

    execution = Execution.of(replace(PLAIN, channels_last=channels_last), torch.device("cpu"))
    model = execution.laid_out(create_model("resnet8", num_classes=3))
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2] * 2)), batch_size=4)
    evaluate(model, loader, execution)
    predict(model, loader, execution)
    assert seen == [channels_last] * 4
