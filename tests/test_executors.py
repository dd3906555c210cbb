"""The scheduler over the executor interface: any object with ``submit(slot, cohort)`` and
``close(stop)`` runs a suite. Here an executor that trains each cohort in this process
(no worker to spawn) runs a tiny suite whose one teacher fails: the other runs finish,
the failed teacher's students are failed by the scheduler, and both kinds of failure are
written by the store's one failure writer."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
import yaml

from kdbench import store
from kdbench.engine import EngineOptions
from kdbench.errors import ConfigError
from kdbench.runner import RunnerOptions, run_suite
from kdbench.runner.executors import Slot, WorkerPool
from kdbench.runner.scheduler import Scheduler
from kdbench.runner.workers import CohortTask, WorkerAnswer, WorkerOutcome, execute_cohort
from kdbench.suite import load_suite

SUITE = {"name": "tiny", "seeds": [0], "recipe": {"epochs": 1, "batch_size": 128},
         "datasets": {"digits": {"options": {"image_size": 8}}},
         "pairs": [{"dataset": "digits", "teacher": "resnet8", "student": "resnet8"},
                   {"dataset": "digits", "teacher": "resnet14", "student": "resnet8"}],
         "methods": {"kd": {}}}


class Answered:
    def __init__(self, answer: dict) -> None:
        self.answer = answer

    def started(self) -> bool:
        return True

    def done(self) -> bool:
        return True

    def result(self) -> dict:
        return self.answer


class InProcess:
    """Trains each cohort as it is submitted, in this process."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.closed: bool | None = None

    def submit(self, slot: Slot, cohort: CohortTask) -> Answered:
        self.slots.append(slot)
        return Answered(execute_cohort(cohort.specs, cohort.runs_dir, cohort.options, cohort.method_files))

    def close(self, stop: bool) -> None:
        self.closed = stop


def test_the_scheduler_runs_a_suite_on_any_executor(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    suite = load_suite(tmp_path / "suite.yaml")
    failing = next(j for j in suite.jobs if j.is_teacher and j.spec.student == "resnet14")
    runs = tmp_path / "out" / "tiny" / "runs"
    store.write_failure(runs / failing.run_id, failing.spec, RuntimeError("a teacher that failed before"))
    executor = InProcess()
    monkeypatch.setattr(Scheduler, "_executor", lambda self: executor)
    lines: list[str] = []
    outcome = run_suite(suite, RunnerOptions(out=tmp_path / "out", workers=1, printer=lines.append,
                                             engine=EngineOptions(progress=False)))
    students = {j.run_id for j in suite.jobs if failing.run_id in j.depends_on}
    assert set(outcome.failed) == {failing.run_id} | students
    assert sorted(outcome.finished) == sorted(j.run_id for j in suite.jobs if j.run_id not in outcome.failed)
    assert executor.slots == [("cpu",)] * 2 and executor.closed is False  # teacher, then its student
    for run_id in students:
        failure = store.read_run_file(store.RunFolder.of(runs, run_id).failure)
        assert failure.error == f"teacher run {failing.run_id} failed" and failure.traceback is None
        assert store.status_of(runs, run_id) == store.RunStatus.FAILED
    assert "RuntimeError: a teacher that failed before" in store.read_run_file(
        store.RunFolder.of(runs, failing.run_id).failure).traceback
    assert any(line.startswith("[tiny] 2/4 done, 0 running, 2 failed, 0 waiting") for line in lines), lines


class OtherIds(InProcess):
    """Answers as a Slurm job that started after kdbench changed how it computes run ids."""

    def submit(self, slot: Slot, cohort: CohortTask) -> Answered:
        return Answered({"0123456789abcdef": WorkerAnswer(WorkerOutcome.FINISHED)})


def test_a_job_answering_for_other_runs_stops_the_suite(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    suite = load_suite(tmp_path / "suite.yaml")
    monkeypatch.setattr(Scheduler, "_executor", lambda self: OtherIds())
    with pytest.raises(ConfigError, match=r"answered for runs 0123456789abcdef where it was given [0-9a-f]{16}(, [0-9a-f]{16})*: "
                                          r"kdbench changed between the job's submission and its start"):
        run_suite(suite, RunnerOptions(out=tmp_path / "out", workers=1, printer=lambda _: None,
                                       engine=EngineOptions(progress=False)))


def test_a_worker_answer_crosses_processes_with_its_outcome_as_its_string() -> None:
    [(run_id, answer)] = pickle.loads(pickle.dumps({"abc": WorkerAnswer(WorkerOutcome.SPLIT, "out of memory")})).items()
    assert (run_id, answer.status, answer.reason) == ("abc", "split", "out of memory")


def _worker_state() -> tuple[str | None, str | None, bool]:
    import os
    import signal

    return (os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"),
            signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def _sleep_long(pid_file: Path) -> None:
    import os
    import time

    pid_file.write_text(str(os.getpid()))
    time.sleep(60)


@pytest.mark.parametrize("environment, expected", [
    ({}, ("10000", None)),  # a short spin unless the user says how threads wait
    ({"OMP_WAIT_POLICY": "PASSIVE"}, (None, "PASSIVE")),
    ({"GOMP_SPINCOUNT": "5"}, ("5", None)),
])
def test_a_worker_pool_sets_how_openmp_threads_wait_and_leaves_ctrl_c_to_its_parent(monkeypatch, environment,
                                                                                   expected) -> None:
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    pool = WorkerPool(1)
    try:
        assert pool.submit(_worker_state).result(timeout=60) == (*expected, True)
    finally:
        pool.close(stop=False)
    assert {k: v for k, v in os.environ.items() if k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} == environment


def test_a_stopped_worker_pool_ends_its_processes_at_once(tmp_path: Path) -> None:
    pool = WorkerPool(1)
    pid_file = tmp_path / "pid"
    pool.submit(_sleep_long, pid_file)
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.05)
    start = time.time()
    pool.close(stop=True)
    assert time.time() - start < 20
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(int(pid_file.read_text()), 0)
