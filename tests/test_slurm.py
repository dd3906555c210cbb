"""The runner against a real Slurm: a one-node cluster on this machine (``slurm_cluster``),
a tiny suite with ``executor: {kind: slurm}``, and what a cluster does to jobs every day:
requeues, time limits, ``scancel``, a failing method, a queue, two runners at once.

Skipped, with the reason, where the cluster cannot start (not root, Slurm not installed:
``apt-get install slurm-wlm munge``). One cluster serves the module; each test has its
own results folder.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from kdbench import store
from kdbench.engine import EngineOptions
from kdbench.runner import Outcome, RunnerOptions, run_suite
from kdbench.spec import RunSpec
from kdbench.suite import Suite, load_suite
from slurm_cluster import LocalSlurm

# test-only methods: KD that sleeps KDBENCH_TEST_PACE seconds per step (a job that lasts
# long enough to requeue, at no CPU cost, computing what KD computes) and one that raises
METHODS = '''
import os
import time

from kdbench.method import register_method
from kdbench.methods.kd import KD


@register_method
class PacedKD(KD):
    """KD, sleeping KDBENCH_TEST_PACE seconds per step."""

    name = "paced_kd"

    def loss(self, student, teacher, batch, epoch):
        time.sleep(float(os.environ.get("KDBENCH_TEST_PACE", "0")))
        return super().loss(student, teacher, batch, epoch)


@register_method
class Raises(KD):
    """A method whose every step raises."""

    name = "raises"

    def loss(self, student, teacher, batch, epoch):
        raise RuntimeError("this method always raises")
'''

# the machine's figures, not the run's: its speed, and its host, versions and commit
# (environment: the same here, but for git_commit when a commit lands between two runs)
VARYING = {"timing", "environment"}
ROW_TIMING = {"epoch_seconds", "images_per_s"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> LocalSlurm:
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    reason = slurm.start()
    if reason:
        pytest.skip(f"no Slurm cluster: {reason}")
    saved = {name: os.environ.get(name) for name in slurm.environment}
    os.environ.update(slurm.environment)
    yield slurm
    slurm.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


METHOD_LABELS = {"kd": {}, "paced": {"method": "paced_kd"}, "paced_t2": {"method": "paced_kd", "temperature": 2},
                 "broken": {"method": "raises"}}
EPOCHS = 8


@pytest.fixture(scope="module")
def method_file(tmp_path_factory) -> Path:
    """METHODS as a file (one for the module: a method is registered once per process)."""
    path = tmp_path_factory.mktemp("methods") / "test_methods.py"
    path.write_text(METHODS)
    return path


def make_suite(folder: Path, method_file: Path, methods: dict = METHOD_LABELS, epochs: int = EPOCHS,
               slurm: dict | None = None, kind: str = "slurm") -> Suite:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"name": "tiny", "seeds": [0], "recipe": {"epochs": epochs, "batch_size": 64},
            "datasets": {"digits": {"options": {"image_size": 8}}},
            "pairs": [{"dataset": "digits", "teacher": "resnet8", "student": "resnet8"}],
            "methods": methods, "method_files": [str(method_file)],
            "executor": {"kind": kind, "cohort_size": 1, "slurm": slurm or {}}}
    (folder / f"{kind}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return load_suite(folder / f"{kind}.yaml")


SUBSET = 256  # samples per split: 4 steps an epoch


def run(suite: Suite, out: Path, lines: list[str] | None = None) -> Outcome:
    return run_suite(suite, RunnerOptions(out=out, printer=(lines.append if lines is not None else lambda _: None),
                                          engine=EngineOptions(progress=False, subset=SUBSET)))


def differences(a: dict, b: dict, path: str = "") -> list[str]:
    """The keys (dotted) where two records differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}.{i}")]
    return [] if a == b else [path]


def records(runs: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/record.json")}


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory, method_file) -> Path:
    """The suite's runs trained by the local executor, with the core share of a Slurm job
    (one core: cpus_per_task's default), so planned for a machine of one core."""
    folder = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "sched_getaffinity", lambda pid: {0})
        outcome = run(make_suite(folder / "suite", method_file, kind="local"), folder / "out")
    assert len(outcome.finished) == 4 and len(outcome.failed) == 1
    return folder / "out" / "tiny" / "runs"


@pytest.fixture(scope="module")
def local_records(local_runs) -> dict[str, dict]:
    return records(local_runs)


def with_teacher(suite: Suite, local_runs: Path, out: Path) -> str:
    """The suite's teacher, finished, in ``out`` (copied from the local runs): a test of
    what happens to students need not wait for it."""
    teacher = ids(suite, "teacher").pop()
    shutil.copytree(local_runs / teacher, out / "tiny" / "runs" / teacher)
    return teacher


def assert_same_records(runs: Path, expected: dict[str, dict], run_ids: set[str]) -> None:
    """The runs' records equal the local executor's but for the machine's figures."""
    found = records(runs)
    assert set(found) == run_ids
    for run_id in run_ids:
        differ = differences(found[run_id], expected[run_id])
        allowed = [d for d in differ if d.split(".")[0] in VARYING
                   or (d.startswith("metrics.") and d.split(".")[-1] in ROW_TIMING)]
        assert differ == allowed, f"{run_id}: {sorted(set(differ) - set(allowed))}"


def ids(suite: Suite, *labels: str) -> set[str]:
    return {j.run_id for j in suite.jobs if j.label in labels}


def test_every_run_finishes_as_locally_a_failing_method_fails_alone_and_queued_jobs_wait(
        cluster, tmp_path, local_records, method_file) -> None:
    suite = make_suite(tmp_path / "suite", method_file, {k: v for k, v in METHOD_LABELS.items() if k != "paced_t2"})
    lines: list[str] = []
    outcome = run(suite, tmp_path / "slurm", lines)
    broken = ids(suite, "broken").pop()
    assert set(outcome.failed) == {broken} and "this method always raises" in outcome.failed[broken]
    assert store.status_of(tmp_path / "slurm" / "tiny" / "runs", broken) == store.RunStatus.FAILED
    assert sorted(outcome.finished) == sorted(ids(suite, "teacher", "kd", "paced"))
    assert_same_records(tmp_path / "slurm" / "tiny" / "runs", local_records, set(outcome.finished))
    # three students' jobs of one core each, two at a time: one waits in Slurm's queue,
    # counted as waiting (not running) and in the time left
    reports = [report.splitlines() for report in lines if report.startswith("[tiny] ") and " done, " in report]
    queued = [r for r in reports if r[0].startswith("[tiny] 1/4 done, 2 running, 0 failed, 1 waiting, about ")]
    assert queued and all(len(r) == 3 for r in queued), reports  # its two running runs listed
    print("\n".join(lines))


def wait_for(condition, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def in_thread(target, *args) -> tuple[threading.Thread, list]:
    """``target(*args)`` in a thread; its return value lands in the list."""
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(target(*args)), daemon=True)
    thread.start()
    return thread, answer


def job_of(folder: Path, run_id: str) -> str:
    """The Slurm job that trains the run (from submitit's pickled submissions)."""
    for path in folder.glob("*_submitted.pkl"):
        if any(RunSpec(**spec).run_id == run_id for spec in pickle.loads(path.read_bytes()).args[0]):
            return path.name.split("_")[0]
    raise AssertionError(f"no job trains {run_id}")


def watch_metrics(runs: Path, run_ids: set[str], stop: threading.Event) -> dict[str, list[list[dict]]]:
    """Every version of the runs' metrics files seen until ``stop`` (in a thread)."""
    seen: dict[str, list[list[dict]]] = {run_id: [] for run_id in run_ids}

    def watch() -> None:
        while not stop.wait(0.2):
            for run_id in run_ids:
                rows = store.read_metrics(runs / run_id)
                if rows and (not seen[run_id] or rows != seen[run_id][-1]):
                    seen[run_id].append(rows)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_a_requeued_job_and_one_out_of_time_resume_from_their_last_epochs(cluster, tmp_path, monkeypatch,
                                                                            local_runs, local_records,
                                                                            method_file) -> None:
    # two students of 8 epochs of 4 steps at 1.7 s, about 55 s each, against a time limit of
    # 1 minute whose signal comes 5 s early: slurmctld checks every 30 s and signals a job
    # once it is within 30 s of its signal time, so 25-55 s after it starts
    monkeypatch.setenv("KDBENCH_TEST_PACE", "1.7")
    suite = make_suite(tmp_path / "suite", method_file, {k: METHOD_LABELS[k] for k in ("paced", "paced_t2")},
                       slurm={"timeout_min": 1, "slurm_signal_delay_s": 5, "max_num_timeout": 10})
    runs = tmp_path / "out" / "tiny" / "runs"
    with_teacher(suite, local_runs, tmp_path / "out")
    stop = threading.Event()
    seen = watch_metrics(runs, ids(suite, "paced", "paced_t2"), stop)
    thread, outcome = in_thread(run, suite, tmp_path / "out")
    requeued = ids(suite, "paced_t2").pop()
    wait_for(lambda: len(store.read_metrics(runs / requeued)) >= 1, what="paced_t2's first epoch")
    job = job_of(tmp_path / "out" / "tiny" / "slurm", requeued)
    assert cluster.run("scontrol", "requeue", job).returncode == 0
    thread.join(timeout=600)
    stop.set()
    assert not thread.is_alive()
    logs = {path.name: path.read_text() for path in (tmp_path / "out" / "tiny" / "slurm").glob("*_log.*")}
    assert sorted(outcome[0].finished) == sorted(ids(suite, "paced", "paced_t2")), (outcome[0], cluster.jobs(), logs)
    assert_same_records(runs, local_records, ids(suite, "teacher", "paced", "paced_t2"))
    for run_id, versions in seen.items():  # no epoch trained twice: each version of the file extends the last
        final = json.loads(store.RunFolder.of(runs, run_id).record.read_text())["metrics"]
        assert all(final[: len(rows)] == rows for rows in versions), run_id
    assert logs[f"{job}_0_log.out"].count("Starting with JobEnvironment") >= 2  # ran again after the requeue
    assert any("this job is timed-out" in log and "Requeued job" in log for log in logs.values())


def test_a_second_runner_then_scancel_then_the_same_run_train_each_run_once(cluster, tmp_path, monkeypatch,
                                                                             local_runs, local_records,
                                                                             method_file) -> None:
    monkeypatch.setenv("KDBENCH_TEST_PACE", "0.5")  # the paced runs: 8 epochs of 4 steps, 16 s
    suite = make_suite(tmp_path / "suite", method_file, {k: METHOD_LABELS[k] for k in ("kd", "paced", "paced_t2")})
    runs = tmp_path / "out" / "tiny" / "runs"
    teacher = with_teacher(suite, local_runs, tmp_path / "out")
    first, first_outcome = in_thread(run, suite, tmp_path / "out")
    wait_for(lambda: "PENDING" in cluster.jobs().values(), what="a job of the first runner in Slurm's queue")
    second, second_outcome = in_thread(run, suite, tmp_path / "out")
    paced = ids(suite, "paced", "paced_t2")
    wait_for(lambda: any(store.read_metrics(runs / run_id) for run_id in paced), what="a paced run's first epoch")
    submitted = tmp_path / "out" / "tiny" / "slurm"
    wait_for(lambda: len(list(submitted.glob("*_submitted.pkl"))) >= 6, what="the second runner's jobs")
    assert cluster.run("scancel", "--user", str(os.getuid())).returncode == 0
    for thread in (first, second):
        thread.join(timeout=120)
        assert not thread.is_alive()
    outcomes = first_outcome + second_outcome
    finished = [run_id for outcome in outcomes for run_id in outcome.finished]
    assert len(finished) == len(set(finished))  # no run trained by both runners
    assert not any(outcome.failed for outcome in outcomes)  # cancelled is not failed
    unfinished = {j.run_id for j in suite.jobs} - set(finished) - {teacher}
    assert unfinished and all(store.status_of(runs, r) != store.RunStatus.FAILED for r in unfinished)
    assert all(r in first_outcome[0].stopped or r in second_outcome[0].stopped for r in unfinished)
    written = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/record.json")}
    monkeypatch.setenv("KDBENCH_TEST_PACE", "0")
    again = run(suite, tmp_path / "out")
    assert again.ok and sorted(again.finished) == sorted(unfinished)  # nothing lost, nothing counted twice
    assert sorted(again.skipped) == sorted(written)  # nothing finished trained again
    assert {name: mtime for name, mtime in ((p.parent.name, p.stat().st_mtime_ns) for p in runs.glob("*/record.json"))
            if name in written} == written
    assert_same_records(runs, local_records, {j.run_id for j in suite.jobs})  # resumed: as if never cancelled


def test_a_job_past_its_requeues_leaves_its_run_stopped_for_the_next_run(cluster, tmp_path, monkeypatch,
                                                                         local_runs, local_records,
                                                                         method_file) -> None:
    # no requeue on a time limit: the job trains on after the signal (25-55 s) until Slurm
    # ends it at the limit (60-90 s: the same 30-s checks); its run needs 96 s
    monkeypatch.setenv("KDBENCH_TEST_PACE", "3")
    suite = make_suite(tmp_path / "suite", method_file, {"paced": METHOD_LABELS["paced"]},
                       slurm={"timeout_min": 1, "slurm_signal_delay_s": 5, "max_num_timeout": 0})
    with_teacher(suite, local_runs, tmp_path / "out")
    paced = ids(suite, "paced").pop()
    lines: list[str] = []
    outcome = run(suite, tmp_path / "out", lines)
    assert not outcome.failed and list(outcome.stopped) == [paced] and not outcome.ok
    assert "(TIMEOUT) before its runs finished" in outcome.stopped[paced]
    assert store.status_of(tmp_path / "out" / "tiny" / "runs", paced) != store.RunStatus.FAILED
    monkeypatch.setenv("KDBENCH_TEST_PACE", "0")
    again = run(suite, tmp_path / "out")
    assert again.ok and again.finished == [paced]
    assert_same_records(tmp_path / "out" / "tiny" / "runs", local_records, ids(suite, "teacher", "paced"))
