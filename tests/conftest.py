"""Shared fixtures: one tiny teacher trained once per test session on `digits`."""

from pathlib import Path

import pytest

from kdbench.spec import DataSpec, Recipe, RunSpec, TeacherRef

TINY_DIGITS = DataSpec(name="digits", options={"image_size": 16})
TINY_RECIPE = Recipe(epochs=2, batch_size=64, lr=0.05)


@pytest.fixture(scope="session")
def teacher_out(tmp_path_factory) -> tuple[Path, RunSpec]:
    """A results folder holding a finished resnet14 teacher on 16-px digits."""
    from kdbench.runner.runs import ensure_run
    from kdbench.engine import EngineOptions

    out = tmp_path_factory.mktemp("teacher_results")
    spec = RunSpec(dataset=TINY_DIGITS, student="resnet14", method="none", recipe=TINY_RECIPE, seed=0)
    ensure_run(spec, out, EngineOptions(progress=False))
    return out, spec


def student_spec(teacher: RunSpec, method: str = "kd", **changes) -> RunSpec:
    fields = dict(dataset=TINY_DIGITS, student="resnet8", method=method, recipe=TINY_RECIPE, seed=0,
                  teacher=TeacherRef(model=teacher.student, run_id=teacher.run_id))
    fields.update(changes)
    return RunSpec(**fields)


def pytest_configure(config):
    # Tests use tiny models: one intra-op thread is as fast and does not fight the
    # subprocesses some tests start for the two cores of a CI machine.
    import torch

    torch.set_num_threads(1)
