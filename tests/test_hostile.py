"""Hostile and careless use (issue 16): corrupt files in a results folder, a preemption
signal, a typo. Each test pins what kdbench does instead of a traceback or a silent loss."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from conftest import student_spec
from kdbench.analysis.runs import read_test_logits
from kdbench.store.checkpoints import atomic_write_bytes, load_weights, read_state_dict
from kdbench.cli import main
from kdbench.data import create_dataset
from kdbench.errors import CheckpointError, ConfigError, MachineError
from kdbench.method import load_method_files
from kdbench.runner import RunnerOptions, Scheduler, execute_cohort, plan_suite, run_suite, select_jobs
from kdbench.runner.planning import write_manifest
from kdbench.runner.workers import CohortJob, WorkerAnswer, WorkerOutcome
from kdbench.runner.runs import ensure_run, ensure_runs
from kdbench.spec import RunSpec
from kdbench.store import CorruptResultsFile, ManifestJob, load_manifest, load_results, read_run_file, run_folder, status_of
from kdbench.suite import UniqueKeyLoader, load_suite
from kdbench.engine import EngineOptions


def write_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (shade, 255 - shade, 80)).save(path)


# --- data and checkpoints -------------------------------------------------------------

def test_imagefolder_skips_hidden_entries_and_warns_about_empty_test_classes(tmp_path: Path) -> None:
    base = tmp_path / "set"
    for split, count in (("train", 3), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(count if (split, name) != ("test", "dog") else 0):
                write_image(base / split / name / f"{i}.png", 40 * c)
    write_image(base / "train" / ".ipynb_checkpoints" / "0-checkpoint.png", 9)  # a notebook's folder
    write_image(base / "test" / ".ipynb_checkpoints" / "0-checkpoint.png", 9)
    write_image(base / "train" / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png", 9)
    write_image(base / "train" / "cat" / "._0.png", 9)  # macOS resource fork
    (base / "test" / "dog").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"set/test has no images of 1 class\(es\): dog"):
        data = create_dataset("imagefolder", tmp_path, path="set", image_size=16, val_fraction=0.0)
    assert data.classes == ["cat", "dog"]
    assert len(data.train) == 6 and len(data.test) == 2


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_dataparallel_checkpoint_is_loaded_with_its_prefix_stripped(tmp_path: Path, capfd) -> None:
    source = nn.DataParallel(small())
    torch.save({"state_dict": source.state_dict()}, tmp_path / "dp.pt")
    target = small()
    load_weights(target, tmp_path / "dp.pt", what="teacher")
    for key, value in source.module.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    assert "saved from nn.DataParallel; its 'module.' prefix is stripped" in capfd.readouterr().err


class Evil:
    def __reduce__(self):
        return (print, ("this ran arbitrary code",))


def test_refused_checkpoints_say_why_and_what_to_do_in_one_line(tmp_path: Path) -> None:
    torch.save({"model": small().state_dict(), "extra": Evil()}, tmp_path / "evil.pt")
    torch.save({"model": small()}, tmp_path / "module.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "module.pt").read_bytes()[:200])
    expected = {
        "evil.pt": "cannot be loaded safely: it holds a pickled Python object (print)",
        "module.pt": "it holds a pickled Python object (torch.nn.modules.container.Sequential)",
        "cut.pt": "cannot be read: it is truncated or corrupt",
    }
    for name, gist in expected.items():
        with pytest.raises(CheckpointError) as info:
            read_state_dict(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and "\x1b" not in message and gist in message and name in message
        assert "re-save" in message and len(message) < 400


# --- files honour the umask -----------------------------------------------------------

def test_written_files_have_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "record.json", b"{}")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640


# --- results on disk ------------------------------------------------------------------

TINY = {
    "name": "tiny",
    "seeds": [0],
    "recipe": {"epochs": 1, "batch_size": 256},
    "datasets": {"digits": {"options": {"image_size": 8}}},
    "pairs": [{"dataset": "digits", "teacher": "resnet14", "student": "resnet8"}],
    "methods": {"none": {}, "kd": {}},
}


def write_suite(folder: Path, suite: dict | None = None, **changes) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump({**(suite or TINY), **changes}, sort_keys=False))
    return path


def quiet(lines: list[str] | None = None, **kw) -> RunnerOptions:
    printer = lines.append if lines is not None else (lambda line: None)
    return RunnerOptions(printer=printer, workers=1, engine=EngineOptions(progress=False), **kw)


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory) -> tuple[Path, Path]:
    """A suite file and a results root holding its three finished runs (teacher, none, kd)."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_suite(folder)
    suite = load_suite(path)
    runs = folder / "results" / "tiny" / "runs"
    for job in sorted(suite.jobs, key=lambda j: not j.is_teacher):  # in this process: no worker to start
        assert ensure_runs([job.spec], runs, EngineOptions(progress=False))[0].status == "finished"
    write_manifest(suite, suite.jobs, runs.parent)
    return path, folder / "results"


def copy_results(finished_suite, tmp_path: Path) -> tuple[Path, Path]:
    path, results = finished_suite
    shutil.copytree(results, tmp_path / "results")
    return path, tmp_path / "results"


def test_a_corrupt_record_is_named_set_aside_and_its_run_done_again(finished_suite, tmp_path: Path, capsys) -> None:
    path, results = copy_results(finished_suite, tmp_path)
    suite = load_suite(path)
    runs = results / "tiny" / "runs"
    kd = next(j for j in suite.jobs if j.label == "kd")
    record = runs / kd.run_id / "record.json"
    record.write_text(record.read_text()[:100])  # cut short, as by a full disk
    teacher = next(j for j in suite.jobs if j.is_teacher)
    (runs / teacher.run_id / "weights.pt").write_bytes(b"PK\x03\x04")  # what the students load
    (runs / "stray").mkdir()
    (runs / "stray" / "record.json").write_bytes(b"\x00\xff garbage")
    assert status_of(runs, kd.run_id) == "corrupt"
    with pytest.warns(UserWarning) as caught:
        frame = load_results(results / "tiny")
    messages = " | ".join(str(w.message) for w in caught)
    assert f"{kd.run_id}/record.json: not valid JSON" in messages and "stray/record.json: not " in messages
    assert len(frame) == 2 and kd.run_id not in set(frame.run_id)
    with pytest.warns(UserWarning, match="left out of the results"):
        assert main(["report", str(results / "tiny")]) == 0  # the report of what is sound
    lines: list[str] = []
    outcome = run_suite(suite, quiet(lines, out=results))
    assert sorted(outcome.finished) == sorted([teacher.run_id, kd.run_id]) and len(outcome.skipped) == 1
    assert len(list((runs / teacher.run_id).glob("weights.pt.corrupt-*"))) == 1
    assert len(list((runs / teacher.run_id).glob("record.json.corrupt-*"))) == 1
    assert read_run_file(record).status == "finished"
    aside = list((runs / kd.run_id).glob("record.json.corrupt-*"))
    assert len(aside) == 1 and len(aside[0].read_text()) == 100  # kept as it was

    (runs / kd.run_id / "test_logits.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=rf"{kd.run_id}/test_logits.pt' cannot be .*spectrum is left out"):
        assert read_test_logits(results / "tiny", kd.run_id) is None

    (results / "tiny" / "manifest.json").write_text('{"suite": "tiny", "jobs": [')
    with pytest.raises(CorruptResultsFile, match=r"tiny/manifest.json: not valid JSON at line 1, column 28.*kdbench run"):
        load_results(results / "tiny")
    assert main(["report", str(results / "tiny")]) == 2
    assert "manifest.json: not valid JSON at line 1" in capsys.readouterr().err


def with_teacher(teacher_out: tuple[Path, RunSpec], folder: Path) -> RunSpec:
    """The session's finished teacher, copied into ``folder``."""
    out, teacher = teacher_out
    shutil.copytree(out / teacher.run_id, folder / teacher.run_id)
    return teacher


def test_a_garbage_checkpoint_is_set_aside_and_a_broken_member_fails_alone(teacher_out, tmp_path: Path, capfd) -> None:
    """One cohort: a run with a garbage checkpoint (restarts), one whose method cannot be
    set up (FiGKD's level too deep for 10 classes), one whose checkpoint does not fit
    its student, and a healthy one. Only the two broken runs fail."""
    teacher = with_teacher(teacher_out, tmp_path)
    garbage = student_spec(teacher, "kd", hparams={"temperature": 3.0})
    too_deep = student_spec(teacher, "figkd", hparams={"level": 8})
    misfit = student_spec(teacher, "kd", hparams={"temperature": 2.0})
    healthy = student_spec(teacher, "kd")
    (tmp_path / garbage.run_id).mkdir()
    (tmp_path / garbage.run_id / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (tmp_path / misfit.run_id).mkdir()
    torch.save({"student": nn.Linear(2, 2).state_dict(), "method": {}, "optimizer": {}, "history": []},
               tmp_path / misfit.run_id / "checkpoint.pt")
    results = ensure_runs([garbage, too_deep, misfit, healthy], tmp_path, EngineOptions(progress=False))
    assert results[0].status == "finished" and results[3].status == "finished"
    assert isinstance(results[1], ConfigError) and "level 8 is too deep for 10 classes" in str(results[1])
    assert isinstance(results[2], RuntimeError) and "Missing key(s) in state_dict" in str(results[2])
    assert read_run_file(tmp_path / too_deep.run_id / "failed.json").error.startswith("ConfigError")
    assert (tmp_path / misfit.run_id / "failed.json").exists()
    assert len(list((tmp_path / garbage.run_id).glob("checkpoint.pt.corrupt-*"))) == 1
    assert "checkpoint.pt' cannot be read: it is truncated or corrupt" in capfd.readouterr().err


def test_only_never_shrinks_what_a_report_sees(finished_suite, tmp_path: Path) -> None:
    path, results = copy_results(finished_suite, tmp_path)
    suite = load_suite(path)
    (results / "tiny" / "manifest.json").unlink()
    assert run_suite(suite, quiet(out=results, only={"method": "kd"})).ok
    manifest = load_manifest(results / "tiny")
    assert {j.run_id for j in manifest.jobs} == {j.run_id for j in suite.jobs}
    stale = ManifestJob(run_id="0" * 16, label="old", pair="p", role="student", dataset="digits", seed=0, depends_on=[])
    manifest.jobs.append(stale)  # a run of an earlier version of the suite, still on disk
    (results / "tiny" / "manifest.json").write_text(json.dumps(manifest.dump()))
    write_manifest(suite, suite.jobs[:1], results / "tiny")
    jobs = load_manifest(results / "tiny").jobs
    assert stale in jobs and {j.run_id for j in jobs} >= {j.run_id for j in suite.jobs}


def test_a_suite_takes_the_runs_another_suite_finished_and_trains_only_the_rest(finished_suite, tmp_path: Path) -> None:
    path, results = copy_results(finished_suite, tmp_path)
    tiny = {j.label: j.run_id for j in load_suite(path).jobs}
    (tmp_path / "wider").mkdir()
    wider = load_suite(write_suite(tmp_path / "wider", name="wider", methods={
        "none": {}, "kd": {}, "kd_t2": {"method": "kd", "temperature": 2}}))
    assert {j.label: j.run_id for j in wider.jobs if j.label in tiny} == tiny  # the suite's name is not in a run id
    lines: list[str] = []
    assert run_suite(wider, quiet(lines, out=results, dry_run=True)).ok
    assert sum(line.startswith("finished in tiny ") for line in lines) == 3
    assert not (results / "wider" / "runs").exists()  # a dry run takes nothing
    lines.clear()
    outcome = run_suite(wider, quiet(lines, out=results))
    assert sorted(outcome.skipped) == sorted(tiny.values())
    assert outcome.finished == [j.run_id for j in wider.jobs if j.label == "kd_t2"]
    assert any("3 runs already finished in " in line and "taken as they are" in line for line in lines)
    for run_id in tiny.values():  # the same files, not copies
        for name in ("record.json", "weights.pt"):
            assert (results / "wider" / "runs" / run_id / name).samefile(results / "tiny" / "runs" / run_id / name)
    assert sorted(load_results(results / "wider").label) == ["kd", "kd_t2", "none", "teacher"]
    assert sorted(load_results(results / "tiny").label) == ["kd", "none", "teacher"]


def test_a_slurm_job_requeued_after_its_run_finished_answers_it_finished(finished_suite, tmp_path: Path,
                                                                         monkeypatch) -> None:
    # a time limit's signal between a run's record and its job's answer requeues the job: the
    # run is the job's own, not finished by another kdbench process (seen in CI: the runner
    # booked it as skipped and never as finished)
    path, results = copy_results(finished_suite, tmp_path)
    kd = next(j for j in load_suite(path).jobs if j.label == "kd")
    runs = results / "tiny" / "runs"
    record = json.loads((runs / kd.run_id / "record.json").read_text())
    assert "slurm_job" not in record["environment"]  # trained outside Slurm: not written as null
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_folder.environment(torch.device("cpu")).slurm_job == "4242"
    record["environment"]["slurm_job"] = "4242"
    (runs / kd.run_id / "record.json").write_text(json.dumps(record))
    monkeypatch.setattr("kdbench.runner.workers._join_slurm_tasks", lambda: None)  # one task, no submitit job

    def answer() -> WorkerAnswer:
        return CohortJob()([kd.spec.model_dump(mode="json")], str(runs), EngineOptions(progress=False), [])[kd.run_id]

    assert answer() == WorkerAnswer(WorkerOutcome.FINISHED)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # another job: another runner's
    assert answer() == WorkerAnswer(WorkerOutcome.SKIPPED, "finished by another kdbench process")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert answer().status == WorkerOutcome.SKIPPED


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_the_machine_lacks_stops_before_anything_is_written(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    options = quiet(out=tmp_path / "results")
    options.engine = EngineOptions(device="cuda", progress=False)
    with pytest.raises(MachineError, match="CUDA is not available here; use --device cpu"):
        run_suite(suite, options)
    assert not (tmp_path / "results").exists()
    # in a worker (the runner's check passed on a login node): the machine's failure, not the run's
    answer = execute_cohort([suite.jobs[0].spec.model_dump(mode="json")], str(tmp_path / "runs"),
                            EngineOptions(device="cuda", progress=False), [])
    assert answer[suite.jobs[0].run_id].status == "machine"
    assert not list((tmp_path / "runs").glob("*/failed.json"))


def test_a_full_disk_is_no_failure_of_the_run(teacher_out, tmp_path: Path, monkeypatch, capsys) -> None:
    spec = student_spec(with_teacher(teacher_out, tmp_path), "kd")

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_folder, "atomic_write_bytes", disk_full)
    with pytest.raises(MachineError, match=r"the machine failed, not the run: \[Errno 28\] No space left"):
        ensure_run(spec, tmp_path, EngineOptions(progress=False))
    monkeypatch.undo()
    assert not (tmp_path / spec.run_id / "failed.json").exists()  # so a plain rerun retries it
    scheduler = Scheduler(plan_suite(load_suite(write_suite(tmp_path)), quiet(out=tmp_path)))
    job = load_suite(write_suite(tmp_path)).jobs[0]

    class Answered:
        def done(self) -> bool:
            return True

        def result(self):
            return {job.run_id: WorkerAnswer(WorkerOutcome.MACHINE, "MachineError: the machine failed, not the run")}

    with pytest.raises(MachineError, match=r"stopped at .*the machine failed, not the run"):
        scheduler._finish((job,), Answered())
    assert not scheduler.outcome.failed

    monkeypatch.setattr(run_folder, "atomic_write_bytes", disk_full)  # the runner's own files: the manifest
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    assert "the machine failed, not the run: [Errno 28] No space left on device" in capsys.readouterr().err


# --- signals --------------------------------------------------------------------------

def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session, from /proc."""
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            alive.append(int(stat_file.parent.name))
    return alive


@pytest.mark.parametrize("how", ["SIGTERM to the runner", "SIGINT to its process group (Ctrl-C)"])
def test_a_signal_stops_the_runner_and_its_workers_at_once(tmp_path: Path, how: str) -> None:
    path = write_suite(tmp_path, recipe={"epochs": 200, "batch_size": 256})
    runner = subprocess.Popen([sys.executable, "-m", "kdbench.cli", "run", str(path), "--out", str(tmp_path / "out"),
                               "--workers", "1", "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "out").glob("tiny/runs/*/spec.json")):  # a worker is training
            assert runner.poll() is None and time.time() < deadline, runner.stdout.read()
            time.sleep(0.2)
        assert len(session_processes(runner.pid)) >= 2
        signalled = time.time()
        if how.startswith("SIGTERM"):
            runner.send_signal(signal.SIGTERM)
        else:
            os.killpg(runner.pid, signal.SIGINT)
        output = runner.communicate(timeout=60)[0]
        assert time.time() - signalled < 20  # not after the cohort's 200 epochs
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert runner.returncode == 130 and "Traceback" not in output, output
    assert f"to go on, run kdbench run {path}" in output
    time.sleep(0.5)
    assert session_processes(runner.pid) == []  # no worker left behind, holding its run's lock


def test_slurm_jobs_are_requeued_with_their_cohort() -> None:
    from submitit.helpers import DelayedSubmission

    job = CohortJob()
    again = job.checkpoint([{"spec": 1}], "runs", EngineOptions(), [])
    assert isinstance(again, DelayedSubmission) and again.function is job
    assert again.args == ([{"spec": 1}], "runs", EngineOptions(), [])


# --- command line and suite validation ------------------------------------------------

@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--batch-size", "0"), ("--batch-size", "x")])
def test_train_refuses_a_count_below_one_naming_the_option(option: str, value: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "digits", "--student", "resnet8", "--out", str(tmp_path / "out"), option, value])
    assert info.value.code == 2 and f"argument {option}: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_command_line_values_are_messages_not_tracebacks(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        assert main(["train", "--dataset", "digits", "--student", "resnet8", "--out", str(out)]) == 2
        assert f"--out {out}: {tmp_path / 'afile'} is a file, not a folder; give a folder" in capsys.readouterr().err
    assert main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--student", "resnet8", "--lr", "-1",
                 "--out", str(tmp_path / "out")]) == 2
    assert "kdbench: error: Recipe: lr: Input should be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_method_file_that_does_not_compile_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import torch\n\ndef loss(:\n    pass\n")
    with pytest.raises(ConfigError, match=r"method file '.*broken.py', line 3: invalid syntax: def loss\(:; fix"):
        load_method_files(tmp_path / "broken.py")
    (tmp_path / "raises.py").write_text("x = 1\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError, match=r"raises.py', line 2 fails when imported: RuntimeError: no GPU here"):
        load_method_files(tmp_path / "raises.py")


def test_only_with_a_value_that_matches_nothing_names_the_valid_values(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, seeds=[0, 1]))
    with pytest.raises(ConfigError, match=r"--only method=kdd matches no run of suite .*suite.yaml; its method "
                                          r"values are kd, none"):
        select_jobs(suite, RunnerOptions(only={"method": "kdd"}))
    with pytest.raises(ConfigError, match=r"--only seed=7 .* its seed values are 0, 1"):
        select_jobs(suite, RunnerOptions(only={"seed": "7"}))
    assert [j.label for j in select_jobs(suite, RunnerOptions(only={"method": "kd", "seed": "1"}))] == ["teacher", "kd"]


SUITE_TEXT = """\
name: tiny
seeds: [0]
recipe: {epochs: 1, batch_size: 256}
datasets:
  digits: {options: {image_size: 8}}
pairs:
  - {dataset: digits, teacher: resnet14, student: resnet8}
methods:
  kd: {}
"""


@pytest.mark.parametrize("change, message", [
    (("seeds: [0]", "seeds: [0, 1, 0]"),
     r"suite.yaml \(line 2\): 'seeds': Value error, seed 0 is listed more than once; .* list each seed once"),
    (("methods:\n  kd: {}", "methods:\n  kd: {}\n  none: {}\n  kd: {temperature: 2}"),
     r"suite.yaml \(line 11\): key 'kd' is given twice in one mapping \(first on line 9\); YAML would keep only "
     r"the last, so remove or merge one"),
    (("name: tiny", "name: tiny\nexecutor: {workers: 0}"),
     r"suite.yaml \(line 2\): 'executor.workers': Input should be greater than 0"),
    (("  - {dataset: digits, teacher: resnet14, student: resnet8}",
      "  - {dataset: digits, teacher: resnet14, student: resnet8}\n  - {dataset: digits, teacher: resnet14}"),
     r"suite.yaml \(line 8\): missing key 'pairs.1.student'; add it"),
    (("teacher: resnet14", "teacher: timm:resnet18x"),
     r"suite.yaml \(line 7\): 'pairs.0.teacher': unknown model 'timm:resnet18x'"),
    (("name: tiny", "name: tiny\nmethod_files: [mine.py]"),
     r"suite.yaml \(line 2\): 'method_files.0': 'mine.py' does not exist \(looked for .*mine.py\); method files "
     r"are found relative to the suite file"),
])
def test_suite_mistakes_name_file_line_key_and_fix(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    (tmp_path / "suite.yaml").write_text(SUITE_TEXT.replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_suite(tmp_path / "suite.yaml")


def test_a_binary_file_given_as_the_suite_is_named(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match=r"weights.pt: not a text file \(byte \d+ is not UTF-8\); a suite is a YAML"):
        load_suite(tmp_path / "weights.pt")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    text = SUITE_TEXT.replace("recipe: {epochs: 1, batch_size: 256}",
                              "base: &base {epochs: 1, batch_size: 256}\nrecipe: {<<: *base, epochs: 2}")
    assert yaml.load(text, Loader=UniqueKeyLoader)["recipe"] == {"epochs": 2, "batch_size": 256}


def test_a_dry_run_that_finds_inputs_missing_exits_1(tmp_path: Path, capsys) -> None:
    suite = yaml.safe_load(SUITE_TEXT)
    suite["pairs"][0]["teacher_checkpoint"] = str(tmp_path / "absent.pt")
    path = write_suite(tmp_path, suite)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 1
    assert (f"missing: {path} (line 15): 'pairs.0.teacher_checkpoint': teacher resnet14: checkpoint "
            f"{tmp_path / 'absent.pt'} does not exist; fix teacher_checkpoint") in capsys.readouterr().out
    suite["pairs"][0]["teacher_checkpoint"] = "$KDBENCH_UNSET_FOLDER/resnet14.pt"
    path = write_suite(tmp_path, suite)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 1
    assert ("resnet14.pt does not exist; its path names $KDBENCH_UNSET_FOLDER, which is not set here: export "
            "KDBENCH_UNSET_FOLDER=<folder> first") in capsys.readouterr().out
    assert main(["run", str(write_suite(tmp_path, yaml.safe_load(SUITE_TEXT))), "--out", str(tmp_path / "out"),
                 "--dry-run"]) == 0


def test_a_figkd_level_too_deep_for_the_classes_is_refused_before_anything_is_written(tmp_path):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "deep", "seeds": [0], "recipe": {"epochs": 1, "batch_size": 32},
        "datasets": {"digits": {"options": {"image_size": 16}}},
        "pairs": [{"dataset": "digits", "teacher": "resnet14", "student": "resnet8"}],
        "methods": {"kd": {}, "figkd": {"level": 8}},
    }))
    with pytest.raises(ConfigError) as info:
        run_suite(load_suite(suite_file), RunnerOptions(out=tmp_path / "out", printer=lambda *a: None))
    message = str(info.value)
    assert str(suite_file) in message and "'methods.figkd'" in message and "(line " in message
    import pywt

    assert "10 classes" in message and f"1..{pywt.dwt_max_level(10, pywt.Wavelet('haar').dec_len)}" in message
    assert not (tmp_path / "out").exists()
