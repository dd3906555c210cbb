import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kdbench import store
from kdbench.errors import ConfigError
from kdbench.runner.runs import ensure_run
from kdbench.store import FAILED
from kdbench.spec import Recipe, RunSpec
from kdbench.engine import EngineOptions, TrainingDiverged, learning_rate, train_run

from conftest import TINY_DIGITS, TINY_RECIPE, student_spec

QUIET = EngineOptions(progress=False)


def comparable(record):
    """A record without what legitimately differs between two executions (timing, host)."""
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")}
            for row in record.dump()["metrics"]]


def test_teacher_run_writes_record_weights_and_logits(teacher_out):
    out, spec = teacher_out
    run_dir = out / spec.run_id
    record = json.loads((run_dir / store.RECORD).read_text())
    assert record["status"] == "finished" and record["run_id"] == spec.run_id
    assert [row["epoch"] for row in record["metrics"]] == [1, 2]
    assert [row["epoch"] for row in store.read_metrics(run_dir)] == [1, 2]
    assert record["summary"]["test_top1_last"] == record["metrics"][-1]["test_top1"]
    assert record["summary"]["test_top1_last"] > 40  # 10 classes: chance is 10%
    assert {"torch", "device", "git_commit"} <= set(record["environment"])
    assert record["timing"]["images_per_s"] > 0
    assert set(torch.load(run_dir / store.WEIGHTS, weights_only=True)) == {"model"}
    logits = torch.load(run_dir / store.TEST_LOGITS, weights_only=True)
    assert logits["logits"].dtype == torch.float16 and logits["logits"].shape[1] == 10
    assert not (run_dir / store.CHECKPOINT).exists()


def test_kd_student_trains_and_finished_runs_are_not_redone(teacher_out, monkeypatch):
    out, teacher = teacher_out
    spec = student_spec(teacher)
    record = ensure_run(spec, out, QUIET)
    assert set(record.dump()["metrics"][0]) >= {"loss_ce", "loss_kd", "val_top1", "test_top5"}
    assert record.summary.teacher_test_top1 > 40
    monkeypatch.setattr("kdbench.runner.runs.train_cohort", lambda *a, **k: pytest.fail("finished run trained again"))
    assert ensure_run(spec, out, QUIET) == record


def test_same_seed_same_metrics_and_other_seed_differs(teacher_out, tmp_path):
    out, teacher = teacher_out
    a = train_run(student_spec(teacher), tmp_path / "a", QUIET, out / teacher.run_id / store.WEIGHTS)
    b = train_run(student_spec(teacher), tmp_path / "b", QUIET, out / teacher.run_id / store.WEIGHTS)
    c = train_run(student_spec(teacher, seed=1), tmp_path / "c", QUIET, out / teacher.run_id / store.WEIGHTS)
    assert comparable(a) == comparable(b)
    assert comparable(a) != comparable(c)


def test_resume_after_interruption_equals_uninterrupted(teacher_out, tmp_path, monkeypatch):
    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    spec = student_spec(teacher, recipe=TINY_RECIPE.model_copy(update={"epochs": 3}))
    whole = train_run(spec, tmp_path / "whole", QUIET, weights)

    real_write = store.write_metrics

    def die_after_second_epoch(run_dir, rows):
        real_write(run_dir, rows)
        if len(rows) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_metrics", die_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, tmp_path / "cut", QUIET, weights)
    monkeypatch.setattr(store, "write_metrics", real_write)
    assert (tmp_path / "cut" / store.CHECKPOINT).exists()
    assert not (tmp_path / "cut" / store.RECORD).exists()
    resumed = train_run(spec, tmp_path / "cut", QUIET, weights)
    assert comparable(resumed) == comparable(whole)
    assert resumed.summary == whole.summary


def test_nan_loss_fails_with_its_reason_recorded(teacher_out, tmp_path):
    out, teacher = teacher_out
    spec = student_spec(teacher, recipe=Recipe(epochs=1, lr=1e6, batch_size=64))
    with pytest.raises(TrainingDiverged, match="not finite in epoch 1"):
        ensure_run(spec, out, QUIET)
    failure = json.loads((out / spec.run_id / FAILED).read_text())
    assert failure["status"] == "failed" and "TrainingDiverged" in failure["error"]


def test_distillation_without_a_teacher_is_a_config_error(tmp_path):
    from conftest import TINY_DIGITS
    from kdbench.spec import RunSpec

    spec = RunSpec(dataset=TINY_DIGITS, student="resnet8", method="kd", recipe=TINY_RECIPE)
    with pytest.raises(ConfigError, match="method 'kd' distils from a teacher"):
        train_run(spec, tmp_path, QUIET)


@pytest.mark.parametrize(
    "recipe, epoch, fraction, expected",
    [
        (Recipe(epochs=240, lr=0.05), 150, 0.5, 0.05),  # mdistiller: decay once epoch > 150
        (Recipe(epochs=240, lr=0.05), 151, 0.0, 0.005),
        (Recipe(epochs=240, lr=0.05), 240, 0.9, 0.05 * 0.1**3),
        (Recipe(epochs=8, lr=0.1), 6, 0.0, 0.01),  # default milestones scale: 5, 6, 7 of 8
        (Recipe(epochs=10, lr=0.1, schedule="cosine"), 6, 0.0, 0.05),
        (Recipe(epochs=10, lr=0.1, schedule="constant", warmup_epochs=2), 2, 0.0, 0.1 * (1 + 1e-3) / 2),
    ],
)
def test_learning_rate_schedule(recipe, epoch, fraction, expected):
    assert math.isclose(learning_rate(recipe, epoch, fraction), expected, rel_tol=1e-9)


def test_cohort_records_equal_separate_runs(teacher_out, tmp_path):
    from kdbench.engine import train_cohort

    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    specs = [student_spec(teacher, method=m) for m in ("kd", "dkd", "crd", "figkd")]
    specs.append(student_spec(teacher, method="none").model_copy(update={"teacher": None}))
    specs.append(student_spec(teacher, method="kd", student="resnet14"))
    alone = [train_run(s, tmp_path / "alone" / s.run_id, QUIET, weights) for s in specs]
    together = train_cohort(specs, [tmp_path / "cohort" / s.run_id for s in specs], QUIET, weights)
    for a, b in zip(alone, together):
        assert comparable(a) == comparable(b)
        assert a.summary == b.summary


def test_one_failing_run_does_not_stop_its_cohort(teacher_out, tmp_path):
    from kdbench.engine import train_cohort

    out, teacher = teacher_out
    good = student_spec(teacher)
    bad = student_spec(teacher, hparams={"w_kd": float("inf")})
    results = train_cohort([bad, good], [tmp_path / "bad", tmp_path / "good"], QUIET, out / teacher.run_id / store.WEIGHTS)
    assert isinstance(results[0], TrainingDiverged)
    assert results[1].status == "finished"
    assert comparable(results[1]) == comparable(train_run(good, tmp_path / "alone", QUIET, out / teacher.run_id / store.WEIGHTS))


def test_device_resident_data_path_trains_reproducibly(teacher_out, tmp_path):
    """The on-device path (default on CUDA) runs on the CPU when asked for, and falls back
    to the loader path for sets that are not held in memory."""
    from dataclasses import replace

    from kdbench.engine import Execution, ResidentTrainSet, open_data

    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    resident = replace(QUIET, device_data=True)
    a = train_run(student_spec(teacher), tmp_path / "a", resident, weights)
    b = train_run(student_spec(teacher), tmp_path / "b", resident, weights)
    assert comparable(a) == comparable(b)
    assert a.summary.test_top1_last > 30
    assert not Execution.of(QUIET, torch.device("cpu")).device_data
    smoke = open_data(student_spec(teacher), replace(QUIET, subset=64), augment=True)
    assert ResidentTrainSet.of(smoke, True, torch.device("cpu")) is None  # a subset view: loader path


def test_execution_resolves_each_default_by_device():
    """What "None: on CUDA only" comes to on each device (a CUDA device needs no GPU to be
    named), and options that say otherwise win."""
    from kdbench.engine import Execution, usable_cores

    cpu = Execution.of(QUIET, torch.device("cpu"))
    assert (cpu.channels_last, cpu.device_data, cpu.workers, cpu.pin_memory) == (True, False, 0, False)
    cuda = Execution.of(QUIET, torch.device("cuda"))
    assert (cuda.channels_last, cuda.device_data, cuda.pin_memory) == (True, True, True)
    assert cuda.workers == min(8, usable_cores())
    forced = Execution.of(replace(QUIET, channels_last=False, device_data=False, workers=3), torch.device("cuda"))
    assert (forced.channels_last, forced.device_data, forced.workers) == (False, False, 3)
    forced = Execution.of(replace(QUIET, channels_last=True, device_data=True, workers=2), torch.device("cpu"))
    assert (forced.channels_last, forced.device_data, forced.workers) == (True, True, 2)


def test_execution_resolves_the_recipes_precision(monkeypatch):
    from kdbench.engine import Execution
    from kdbench.errors import MachineError

    cpu = torch.device("cpu")
    fp32 = Execution.of(QUIET, cpu, "fp32")
    with fp32.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert fp32.grad_scaler() is None
    bf16 = Execution.of(QUIET, cpu, "bf16")
    with bf16.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert bf16.grad_scaler() is None
    fp16 = Execution.of(QUIET, cpu, "fp16")
    assert isinstance(fp16.grad_scaler(), torch.amp.GradScaler)
    assert fp16.grad_scaler() is not fp16.grad_scaler()  # each trainee its own
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    with pytest.raises(MachineError, match="Tesla V100 does not support it"):
        Execution.of(QUIET, torch.device("cuda"), "bf16")
    assert Execution.of(QUIET, torch.device("cuda"), "fp16").scales_gradients


def test_a_trainee_is_set_up_at_its_own_precision():
    from kdbench.engine import Execution, TraineeSetup, make_trainee
    from kdbench.method import create_method

    spec = RunSpec(dataset=TINY_DIGITS, student="resnet8", method="none", recipe=TINY_RECIPE)
    setup = TraineeSetup(10, None, torch.zeros(2, 3, 16, 16), None, Execution.of(QUIET, torch.device("cpu"), "bf16"))
    with pytest.raises(ValueError, match="trains in fp32, but its trainee would be set up for bf16"):
        make_trainee(spec, Path("."), create_method("none"), setup)


def test_loader_processes_persist_and_stay_reproducible(teacher_out, tmp_path):
    from dataclasses import replace

    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    with_workers = replace(QUIET, workers=1)
    a = train_run(student_spec(teacher), tmp_path / "a", with_workers, weights)
    b = train_run(student_spec(teacher), tmp_path / "b", with_workers, weights)
    assert comparable(a) == comparable(b) and len(a.metrics) == 2


def test_stacked_students_train_like_separate_ones(teacher_out, tmp_path, monkeypatch):
    """A cohort's resnet8 students stepped as one vmapped network: the losses and weights
    of the same cohort stepped one by one, up to float rounding; a diverging member drops
    out and the rest stay stacked. A few steps only (two per epoch), since training
    amplifies rounding, as it amplifies a change in the number of threads."""
    from kdbench.models import create_model
    from kdbench.models.stacked import StackedForward
    from kdbench.engine import seed_everything, train_cohort

    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    methods = ("kd", "sdd", "crd", "freekd")  # logits, the head on local features, taps, a method's own modules
    specs = [student_spec(teacher, method=m) for m in methods]
    specs.append(student_spec(teacher, hparams={"w_kd": float("inf")}))
    few_steps = EngineOptions(progress=False, subset=128)
    separate = train_cohort(specs, [tmp_path / "separate" / s.run_id for s in specs], few_steps, weights)
    stacked_sizes = []
    call = StackedForward.__call__
    monkeypatch.setattr(StackedForward, "__call__", lambda self, models, x: stacked_sizes.append(len(models))
                        or call(self, models, x))
    stacked = train_cohort(specs, [tmp_path / "stacked" / s.run_id for s in specs],
                           replace(few_steps, stack_students=True), weights)
    assert stacked_sizes == [5, 5, 4, 4]  # the diverging run is caught at the end of epoch 1
    assert isinstance(separate[-1], TrainingDiverged) and isinstance(stacked[-1], TrainingDiverged)
    for spec, a, b in zip(specs, separate, stacked):
        if spec is specs[-1]:
            continue
        for row_a, row_b in zip(comparable(a), comparable(b), strict=True):
            for key, value in row_a.items():
                tolerance = 1e-4 if key.startswith("loss_") else 100 / 128 if key.endswith(("top1", "top5")) else 0
                assert math.isclose(value, row_b[key], rel_tol=tolerance, abs_tol=tolerance), (spec.method, key)
        # the weights' distance, relative to how far training moved them: about 1e-5 here,
        # as far as one thread against two moves them
        seed_everything(spec.seed)  # the student's initialisation, drawn as make_trainee draws it
        initial = _flat(create_model(spec.student, num_classes=10).state_dict())
        trained = [_flat(torch.load(d / spec.run_id / store.WEIGHTS, weights_only=True)["model"])
                   for d in (tmp_path / "separate", tmp_path / "stacked")]
        assert (trained[0] - trained[1]).norm() <= 1e-3 * (trained[0] - initial).norm(), spec.method


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.double().flatten() for k, v in state.items() if not k.endswith("num_batches_tracked")])


def test_students_that_cannot_be_stacked_step_one_by_one(teacher_out, tmp_path, monkeypatch):
    from kdbench.models.stacked import StackedForward
    from kdbench.engine import train_cohort

    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    specs = [student_spec(teacher, method=m) for m in ("kd", "dkd")]
    few_steps = EngineOptions(progress=False, subset=128)
    separate = train_cohort(specs, [tmp_path / "separate" / s.run_id for s in specs], few_steps, weights)

    def refuse(self, models, images):
        raise RuntimeError("vmap: called random operation while in randomness error mode")

    monkeypatch.setattr(StackedForward, "__call__", refuse)
    with pytest.warns(UserWarning, match="resnet8 students cannot be stacked, so they step one by one: vmap"):
        fallen_back = train_cohort(specs, [tmp_path / "stacked" / s.run_id for s in specs],
                                   replace(few_steps, stack_students=True), weights)
    assert [comparable(r) for r in fallen_back] == [comparable(r) for r in separate]


def test_out_of_memory_ends_a_lone_run_but_only_splits_a_cohort(teacher_out, tmp_path, monkeypatch):
    from kdbench.method import create_method
    from kdbench.runner.runs import CohortOutOfMemory, ensure_runs

    def out_of_memory(self, student, teacher, batch, epoch):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(type(create_method("kd")), "loss", out_of_memory)
    shared, teacher = teacher_out
    out = tmp_path / "results"
    out.mkdir()
    (out / teacher.run_id).symlink_to(shared / teacher.run_id)
    few_steps = EngineOptions(progress=False, subset=64)
    lone = student_spec(teacher)
    (result,) = ensure_runs([lone], out, few_steps)
    assert isinstance(result, torch.OutOfMemoryError)
    assert "out of memory" in store.read_json(out / lone.run_id / FAILED)["error"]
    cohort = [student_spec(teacher, seed=1), student_spec(teacher, seed=1, method="dkd")]
    results = ensure_runs(cohort, out, few_steps)
    assert all(isinstance(r, CohortOutOfMemory) for r in results)
    assert not any((out / s.run_id / FAILED).exists() for s in cohort)
