"""Suite validation (a corpus of malformed suites and the message each must give),
expansion and hashing, teacher sharing, the runner's resume, isolation and locking."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from kdbench.errors import ConfigError, DataError
from kdbench.store import load_results
from kdbench.runner import RunnerOptions, run_suite
from kdbench.suite import load_suite
from kdbench.engine import EngineOptions
from kdbench.method import list_methods

REPO = Path(__file__).resolve().parents[1]

VALID = {
    "name": "tiny",
    "seeds": [0, 1],
    "recipe": {"epochs": 1, "batch_size": 128},
    "datasets": {"digits": {"options": {"image_size": 8}}},
    "pairs": [{"dataset": "digits", "teacher": "resnet14", "student": "resnet8"}],
    "methods": {"none": {}, "kd": {}},
}


def write(tmp_path: Path, suite) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(suite if isinstance(suite, str) else yaml.safe_dump(suite, sort_keys=False))
    return path


def changed(**changes):
    suite = json.loads(json.dumps(VALID))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = suite
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return suite


MALFORMED = [
    (changed(seedz=[0]), r"unknown key 'seedz'; did you mean 'seeds'"),
    (changed(seeds="zero"), r"'seeds': Input should be a valid list"),
    (changed(seeds=[-1]), r"'seeds.0': Input should be greater than or equal to 0"),
    (changed(datasets=...), r"missing key 'datasets'"),
    (changed(datasets={"digts": {}}), r"'datasets.digts': unknown dataset; did you mean 'digits'"),
    (changed(methods={"dkdd": {}}), r"'methods.dkdd': unknown method 'dkdd'; did you mean 'dkd'"),
    (changed(methods={"kd_hot": {"temperature": 8}}), r"a label that is not a method needs 'method: <name>'"),
    (changed(methods={"kd": {"tmperature": 4}}), r"'methods.kd': method 'kd': unknown hyperparameter 'tmperature'; did you mean 'temperature'"),
    (changed(methods={"kd": {"temperature": "hot"}}), r"method 'kd': hyperparameter 'temperature'"),
    (changed(methods={}), r"'methods': Dictionary should have at least 1 item"),
    (changed(pairs__0__student="resnet8x5"), r"'pairs.0.student': unknown model 'resnet8x5'; did you mean 'resnet8x4'"),
    (changed(pairs__0__dataset="cifar100"), r"'pairs.0.dataset': dataset 'cifar100' is not in 'datasets'"),
    (changed(pairs__0__techer="resnet14"), r"unknown key 'pairs.0.techer'; did you mean 'teacher'"),
    (changed(pairs__0__hparams={"dkd": {"beta": 2}}), r"'pairs.0.hparams.dkd': no method labelled 'dkd' in 'methods'"),
    (changed(recipe={"epoch": 3}), r"'recipe': unknown recipe key 'epoch'; did you mean 'epochs'"),
    (changed(recipe={"lr": -0.1}), r"'recipe.lr': Input should be greater than 0"),
    (changed(recipe={"optimizer": "adam"}), r"'recipe.optimizer': Input should be 'sgd' or 'adamw'"),
    (changed(selection="best"), r"'selection': Input should be 'best_val' or 'last'"),
    (changed(name="my suite/1"), r"'name': String should match pattern"),
    (changed(executor={"kind": "sge"}), r"'executor.kind': Input should be 'local' or 'slurm'"),
    (changed(executor={"processes_per_job": 0}), r"'executor.processes_per_job': Input should be greater than 0"),
    (changed(datasets={"digits": {"val_fraction": 1.5}}), r"'datasets.digits.val_fraction': Input should be less than 1"),
    ("- just\n- a list\n", r"a suite is a YAML mapping"),
    ("name: [unclosed\n", r"not valid YAML"),
]


@pytest.mark.parametrize("suite, message", MALFORMED, ids=[f"case{i}" for i in range(len(MALFORMED))])
def test_malformed_suite_is_refused_with_file_key_and_hint(tmp_path, suite, message):
    path = write(tmp_path, suite)
    with pytest.raises(ConfigError, match=message) as info:
        load_suite(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "results").exists()


TWO_PAIRS = """\
name: tiny
seeds: [0]
recipe: {epochs: 1, batch_size: 256}
datasets:
  digits:
    options: {image_size: 8}
    recipe: {lr: 0.1}
pairs:
  - {dataset: digits, teacher: resnet14, student: resnet8}
  - dataset: digits
    teacher: resnet20
    student: resnet8
methods:
  kd: {temperature: 4}
"""


@pytest.mark.parametrize("change, line, key", [
    (("teacher: resnet14", "teacher: resnet14x"), 9, "pairs.0.teacher"),  # not pair 1's teacher, below it
    (("teacher: resnet20", "teacher: resnet20x"), 11, "pairs.1.teacher"),
    (("{dataset: digits, teacher: resnet14", "{dataset: digitz, teacher: resnet14"), 9, "pairs.0.dataset"),
    (("seeds: [0]", "seeds:\n  - 0\n  - -1"), 4, "seeds.1"),  # the list item, not its key
    (("{lr: 0.1}", "{lr: -0.1}"), 7, "recipe.lr"),  # where the value at fault is set: the data set's recipe
    (("{lr: 0.1}", "{lrr: 0.1}"), 7, "recipe"),
    (("{epochs: 1, batch_size", "{epochs: 0, batch_size"), 3, "recipe.epochs"),
    (("    student: resnet8\n", ""), 10, "pairs.1"),  # a missing key: the mapping it belongs in
])
def test_errors_give_the_line_of_the_key_at_fault(tmp_path, change, line, key):
    """Lines read off the text above by eye: each error names the line its key (or the
    value at fault) is written on, whichever pair or layer it is in."""
    with pytest.raises(ConfigError) as info:
        load_suite(write(tmp_path, TWO_PAIRS.replace(*change)))
    assert f"suite.yaml (line {line}): " in str(info.value) and f"'{key}" in str(info.value)


def test_errors_give_the_line(tmp_path):
    text = textwrap.dedent("""\
        name: tiny
        datasets:
          digits: {}
        pairs:
          - {dataset: digits, teacher: resnet14, student: resnet8}
        methods:
          none: {}
          kd: {tmperature: 4}
        """)
    with pytest.raises(ConfigError, match=r"suite.yaml \(line 8\): 'methods.kd'"):
        load_suite(write(tmp_path, text))


def test_expansion_shares_the_teacher_and_hashes_specs(tmp_path):
    suite = load_suite(write(tmp_path, VALID))
    teachers = [j for j in suite.jobs if j.is_teacher]
    students = [j for j in suite.jobs if not j.is_teacher]
    assert len(teachers) == 1 and suite.jobs[0].is_teacher  # teachers come first
    assert len(students) == 4  # 2 methods × 2 seeds
    kd = [j for j in students if j.label == "kd"]
    assert all(j.depends_on == (teachers[0].run_id,) and j.spec.teacher.run_id == teachers[0].run_id for j in kd)
    assert all(j.spec.teacher is None and j.depends_on == () for j in students if j.label == "none")
    assert len({j.run_id for j in suite.jobs}) == len(suite.jobs)
    again = load_suite(write(tmp_path, VALID))
    assert [j.run_id for j in again.jobs] == [j.run_id for j in suite.jobs]
    hotter = load_suite(write(tmp_path, changed(methods={"none": {}, "kd": {"temperature": 2}})))
    assert {j.run_id for j in hotter.jobs if j.label == "kd"}.isdisjoint({j.run_id for j in kd})
    assert {j.run_id for j in hotter.jobs if j.label != "kd"} == {j.run_id for j in suite.jobs if j.label != "kd"}


def test_per_pair_overrides_and_labelled_variants(tmp_path):
    suite = load_suite(write(tmp_path, changed(
        methods={"kd": {}, "kd_t2": {"method": "kd", "temperature": 2}},
        pairs__0__hparams={"kd": {"w_ce": 0.5}},
    )))
    by_label = {j.label: j.spec for j in suite.jobs if j.spec.seed == 0}
    # specs hold every hyperparameter, KD's published defaults filled in
    assert {"temperature": 4.0, "w_ce": 0.5, "w_kd": 0.9}.items() <= by_label["kd"].hparams.items()
    assert by_label["kd_t2"].method == "kd"
    assert {"temperature": 2.0, "w_ce": 0.1, "w_kd": 0.9}.items() <= by_label["kd_t2"].hparams.items()


def test_missing_data_and_checkpoints_fail_before_training(tmp_path):
    suite = load_suite(REPO / "suites" / "fine_grained.yaml")
    options = RunnerOptions(out=tmp_path / "results", engine=EngineOptions(data_root=str(tmp_path / "empty")))
    with pytest.raises(DataError) as info:
        run_suite(suite, options)
    message = str(info.value)
    for name in ("cub200", "stanford-dogs", "mit67", "stanford40"):
        assert f"{name}: " in message
    assert str(tmp_path / "empty") in message
    assert not (tmp_path / "results").exists()
    lines = []
    run_suite(suite, RunnerOptions(out=tmp_path / "results", dry_run=True, printer=lines.append,
                                   engine=EngineOptions(data_root=str(tmp_path / "empty"))))
    assert sum(line.startswith("not started") for line in lines) == len(suite.jobs)
    assert any(line.startswith("missing: cub200") for line in lines)


def test_shipped_suites_validate():
    for path in sorted((REPO / "suites").glob("*.yaml")):
        assert load_suite(path).jobs, path


@pytest.mark.parametrize("method", list_methods())
def test_the_offline_suite_trains_every_registered_method(method):
    """suites/offline.yaml is the CPU table of every method: a new method joins it."""
    jobs = load_suite(REPO / "suites" / "offline.yaml").jobs
    assert method in {j.spec.method for j in jobs if not j.is_teacher}


def test_the_quick_suite_is_part_of_the_offline_suite():
    """One regime: every run of suites/quick.yaml, its teacher included, is a run of
    suites/offline.yaml with the same id."""
    quick, offline = (load_suite(REPO / "suites" / f"{name}.yaml") for name in ("quick", "offline"))
    assert {j.run_id for j in quick.jobs} <= {j.run_id for j in offline.jobs}


def quiet(**kw):
    return RunnerOptions(printer=lambda line: None, workers=1, engine=EngineOptions(progress=False), **kw)


NAN_METHOD = '''
import torch.nn.functional as F
from kdbench.method import Method, register_method


@register_method
class Diverges(Method):
    """Cross-entropy times NaN: a run that must fail without stopping the suite."""

    name = "diverges"

    def loss(self, student, teacher, batch, epoch):
        return {"ce": F.cross_entropy(student.logits, batch.labels) * float("nan")}
'''


def test_run_resume_failure_isolation_and_results(tmp_path):
    (tmp_path / "diverges.py").write_text(NAN_METHOD)
    suite_path = write(tmp_path, changed(methods={"none": {}, "kd": {}, "kd_nan": {"method": "diverges"}},
                                         method_files=["diverges.py"]))
    suite = load_suite(suite_path)
    outcome = run_suite(suite, quiet(out=tmp_path / "results"))
    failed = [j for j in suite.jobs if j.label == "kd_nan"]
    assert set(outcome.failed) == {j.run_id for j in failed}
    assert len(outcome.finished) == len(suite.jobs) - len(failed)
    frame = load_results(tmp_path / "results" / "tiny")
    assert len(frame) == len(suite.jobs)
    assert set(frame[frame.status == "failed"].label) == {"kd_nan"}
    assert frame[frame.status == "failed"].error.str.contains("not finite").all()
    assert set(frame.label) == {"teacher", "none", "kd", "kd_nan"}
    assert "spec.recipe.epochs" in frame.columns and "test_top1_best_val" in frame.columns
    again = run_suite(suite, quiet(out=tmp_path / "results"))
    assert again.finished == [] and len(again.skipped) == len(suite.jobs) - len(failed)


def test_only_filter_keeps_needed_teachers(tmp_path):
    from kdbench.runner import select_jobs

    suite = load_suite(write(tmp_path, VALID))
    jobs = select_jobs(suite, RunnerOptions(only={"method": "kd", "seed": "1"}))
    assert [j.label for j in jobs] == ["teacher", "kd"]
    assert [j.label for j in select_jobs(suite, RunnerOptions(only={"method": "none"}))] == ["none", "none"]
    smoke = select_jobs(suite, RunnerOptions(smoke=True))
    assert all(j.spec.recipe.epochs == 1 for j in smoke)
    teacher = next(j for j in smoke if j.is_teacher)
    assert all(j.depends_on == (teacher.run_id,) for j in smoke if j.label == "kd")


def run_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kdbench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finished_records(out: Path) -> dict[str, list]:
    rows = {}
    for record in sorted(out.glob("*/runs/*/record.json")):
        data = json.loads(record.read_text())
        rows[data["run_id"]] = [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")}
                                for r in data["metrics"]]
    return rows


def test_sigkill_then_rerun_gives_the_same_records(tmp_path):
    suite = changed(recipe={"epochs": 3, "batch_size": 128}, methods={"kd": {}})
    path = write(tmp_path, suite)
    reference = tmp_path / "reference"
    assert run_cli("run", str(path), "--out", str(reference), "--workers", "1", "--no-report").wait(timeout=300) == 0
    out = tmp_path / "killed"
    for delay in (4.0, 7.0):  # mid-teacher, then mid-student (at whatever point the kill lands)
        process = run_cli("run", str(path), "--out", str(out), "--workers", "1", "--no-report", start_new_session=True)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    final = run_cli("run", str(path), "--out", str(out), "--workers", "1", "--no-report")
    assert final.wait(timeout=300) == 0, final.stdout.read()
    assert finished_records(out) == finished_records(reference)
    rerun = run_cli("run", str(path), "--out", str(out))
    output = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0 and "nothing to do" in output
    assert "| KD |" in output and (out / "tiny" / "report" / "table.tex").exists()  # the report, at the end


def test_two_runners_never_run_the_same_job_twice(tmp_path):
    path = write(tmp_path, changed(recipe={"epochs": 2, "batch_size": 128}))
    out = tmp_path / "results"
    first = run_cli("run", str(path), "--out", str(out), "--workers", "1", "--no-report")
    second = run_cli("run", str(path), "--out", str(out), "--workers", "1", "--no-report")
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    suite = load_suite(path)
    assert len(finished_records(out)) == len(suite.jobs)
    for job in suite.jobs:  # each run's metrics were written by exactly one training
        metrics = (out / "tiny" / "runs" / job.run_id / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]
    trained = [line for p in (first, second) for line in p.stdout.read().splitlines() if " trained," in line]
    assert sum(int(line.split("] ")[1].split(" trained")[0]) for line in trained) == len(suite.jobs)


def test_submitit_executor_locally(tmp_path):
    suite = load_suite(write(tmp_path, changed(executor={"kind": "slurm", "slurm": {"cluster": "local", "timeout_min": 10}},
                                               seeds=[0])))
    outcome = run_suite(suite, quiet(out=tmp_path / "results"))
    assert outcome.ok and len(outcome.finished) == len(suite.jobs)
    assert (tmp_path / "results" / "tiny" / "slurm").is_dir()


def test_cohorts_group_runs_sharing_data_seed_recipe_and_teacher(tmp_path):
    from kdbench.runner import form_cohorts

    suite = load_suite(write(tmp_path, changed(methods={"none": {}, "kd": {}, "dkd": {}})))
    cohorts = form_cohorts(suite.jobs, size=8)
    teacher = next(j for j in suite.jobs if j.is_teacher)
    assert (teacher,) in cohorts  # never in a cohort with the students that wait for it
    students = [c for c in cohorts if teacher not in c]
    assert sorted(len(c) for c in students) == [3, 3]  # per seed: none rides along with kd and dkd
    assert all(len({j.spec.seed for j in c}) == 1 for c in students)
    assert all(len(c) <= 2 for c in form_cohorts(suite.jobs, size=2))


def test_a_job_of_several_processes_gets_disjoint_gpus(monkeypatch):
    import torch

    from kdbench.runner.executors import make_slots
    from kdbench.runner.workers import job_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 5)
    assert make_slots("auto", None, 2) == [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3")]
    assert make_slots("cuda", 1, 1) == [("cuda:0",)]
    with pytest.raises(ConfigError, match=r"processes_per_job is 8, but this machine has 5 GPU\(s\)"):
        make_slots("auto", None, 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))  # the cores this process may use
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # of a shared node, which are not all its to use
    assert make_slots("auto", None, 2) == [("cpu", "cpu")] * 4
    with pytest.raises(ConfigError, match="--device cuda:1 names one device"):
        make_slots("cuda:1", None, 2)
    assert job_gpus(("cuda:2", "cuda:3"), None) == "2,3"
    assert job_gpus(("cuda:2", "cuda:3"), "4,5,6,7") == "6,7"  # the runner sees part of the machine
    assert job_gpus(("cpu", "cpu"), "0") == ""


HUNGRY_METHOD = '''
import gc
import weakref

import torch
import torch.nn.functional as F
from kdbench.method import HParams, Method, register_method

ALIVE = weakref.WeakSet()


@register_method
class Hungry(Method):
    """Cross-entropy, on a device that holds the state of at most two runs at once."""

    name = "hungry"

    class HParams(HParams):
        tag: int = 0

    def setup(self, context):
        gc.collect()  # runs of earlier cohorts are gone
        ALIVE.add(self)

    def loss(self, student, teacher, batch, epoch):
        if len(ALIVE) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return {"ce": F.cross_entropy(student.logits, batch.labels)}
'''


def test_a_cohort_out_of_memory_goes_on_in_halves(tmp_path):
    (tmp_path / "hungry.py").write_text(HUNGRY_METHOD)
    methods = {f"hungry{i}": {"method": "hungry", "tag": i} for i in range(4)}
    suite = load_suite(write(tmp_path, changed(methods=methods, seeds=[0], method_files=["hungry.py"])))
    lines = []
    options = quiet(out=tmp_path / "results")
    options.printer = lines.append
    outcome = run_suite(suite, options)
    assert outcome.ok and len(outcome.finished) == len(suite.jobs) == 5, outcome.failed  # with the teacher
    assert any("a cohort of 4 runs ran out of device memory; it goes on as cohorts of 2 and 2" in line for line in lines)
    assert not list((tmp_path / "results").glob("tiny/runs/*/failed.json"))
