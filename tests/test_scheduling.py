"""The runner's share of the cores per job, and its estimate of the time left."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.engine import EngineOptions, usable_cores
from kdbench.runner.progress import Running, SuiteProgress, TimeLeft, Work
from kdbench.runner import RunnerOptions, core_plan, cost, form_cohorts, plan_suite, planning
from kdbench.suite import load_suite

QUICK = Path(__file__).parents[1] / "suites" / "quick.yaml"

ONE_TEACHER = """
name: one_teacher
seeds: [0, 1]
recipe: {epochs: 2, batch_size: 32}
teacher_recipe: {epochs: 3, batch_size: 32}
datasets:
  digits: {options: {image_size: 16}}
pairs:
  - {dataset: digits, teacher: resnet20, student: resnet8}
methods:
  kd: {}
  dkd: {}
executor: {kind: local, cohort_size: 1}
"""


def test_a_teacher_every_job_waits_for_gets_every_core(tmp_path):
    path = tmp_path / "one_teacher.yaml"
    path.write_text(ONE_TEACHER)
    jobs = load_suite(path).jobs
    plan = core_plan(jobs, slots=2, cores=2, cohort_size=1)
    teacher = next(j for j in jobs if j.is_teacher)
    assert plan[teacher.run_id] == 2  # alone in its wave
    assert {plan[j.run_id] for j in jobs if not j.is_teacher} == {1}  # four cohorts of one, two at a time
    # 16 cores, 4 workers: the students' wave has 4 cohorts, each gets a quarter
    plan = core_plan(jobs, slots=4, cores=16, cohort_size=1)
    assert plan[teacher.run_id] == 16 and {plan[j.run_id] for j in jobs if not j.is_teacher} == {4}
    # cohorts of up to 8: one per seed (a cohort shares its seed), side by side
    plan = core_plan(jobs, slots=2, cores=2, cohort_size=8)
    assert plan[teacher.run_id] == 2 and {plan[j.run_id] for j in jobs if not j.is_teacher} == {1}
    assert len(form_cohorts(jobs, 8)) == 3
    # two processes per job (data-parallel): each process gets its share of the job's
    assert core_plan(jobs, slots=2, cores=8, cohort_size=8, processes_per_job=2)[teacher.run_id] == 4


def test_quick_suite_plan_its_teacher_gets_the_cores():
    suite = load_suite(QUICK)
    jobs = suite.jobs
    teacher = next(j for j in jobs if j.is_teacher)
    plan = core_plan(jobs, slots=2, cores=2, cohort_size=8)
    assert set(plan) == {j.run_id for j in jobs}
    # one teacher, alone in its wave, gets both cores; then a cohort per seed, two side by
    # side, and the third seed's, which trains after them, both cores again
    assert plan[teacher.run_id] == 2
    shares = {seed: {plan[j.run_id] for j in jobs if not j.is_teacher and j.spec.seed == seed} for seed in suite.file.seeds}
    assert shares == {0: {1}, 1: {1}, 2: {2}}
    assert set(core_plan(jobs, slots=1, cores=2, cohort_size=8).values()) == {2}
    # one teacher per data set; per data set and seed, the labels in cohorts of at most 8
    per_seed = math.ceil(len(suite.file.methods) / 8)
    assert len(form_cohorts(jobs, 8)) == len(suite.file.datasets) * (1 + len(suite.file.seeds) * per_seed)


def test_a_plan_shares_the_cores_over_the_whole_suite_whatever_it_selects(tmp_path):
    """--only kd trains the teacher and kd's runs, each with the share it has in the whole
    suite: the teacher alone in its wave, the four student cohorts two at a time."""
    path = tmp_path / "one_teacher.yaml"
    path.write_text(ONE_TEACHER)
    cpus = usable_cores()
    plan = plan_suite(load_suite(path), RunnerOptions(out=tmp_path, only={"method": "kd"}, workers=2,
                                                      engine=EngineOptions(device="cpu")))
    assert [j.label for j in plan.jobs] == ["teacher", "kd", "kd"] and len(plan.everything) == 5
    assert plan.slots == [("cpu",)] * 2
    assert {j.label: plan.cores[j.run_id] for j in plan.everything} == {"teacher": cpus, "kd": max(1, cpus // 2),
                                                                         "dkd": max(1, cpus // 2)}


def test_a_dry_run_and_its_estimate_read_one_plan_and_look_at_no_device(tmp_path, monkeypatch, capsys):
    path = tmp_path / "one_teacher.yaml"
    path.write_text(ONE_TEACHER)
    selections = []
    only = planning._only
    monkeypatch.setattr(planning, "_only", lambda *args: selections.append(args[2]) or only(*args))

    def no_device(*args):
        raise AssertionError("a dry run asked for the slots")

    def measured(groups, device, options, say):  # one second per image for every call, no timing
        rates = cost.Rates()
        for group in groups:
            rates.batch[group.key] = 10
            rates.seconds.update({(group.key, "forward", t): 1.0 for t in group.teachers})
            rates.seconds.update({(group.key, "step", *k): 1.0 for k in group.steps})
            rates.seconds.update({(group.key, "eval", s): 1.0 for s in group.students})
        return rates

    monkeypatch.setattr(planning, "make_slots", no_device)
    monkeypatch.setattr(cost, "measure", measured)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--only", "method=kd"]) == 0
    out = capsys.readouterr().out
    assert selections == [{"method": "kd"}]  # selected once, for the listing and the estimate
    assert sum(line.startswith("not started") for line in out.splitlines()) == 3 and "3 runs: 3 not started" in out
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert total.split()[1] == "3"  # the estimate costs the same three runs


def test_a_waves_last_round_shares_the_cores_among_its_own_cohorts(tmp_path):
    """Five student cohorts of one on two slots and 12 cores: two rounds of two at 6
    cores each, then the fifth alone with all 12; on three slots, one round of three at 4,
    then two at 6."""
    path = tmp_path / "one_teacher.yaml"
    path.write_text(ONE_TEACHER.replace("seeds: [0, 1]", "seeds: [0, 1, 2, 3, 4]").replace("  dkd: {}\n", ""))
    jobs = load_suite(path).jobs
    students = [j.run_id for unit in form_cohorts(jobs, 1) for j in unit if not j.is_teacher]
    assert len(students) == 5
    assert [core_plan(jobs, slots=2, cores=12, cohort_size=1)[s] for s in students] == [6, 6, 6, 6, 12]
    assert [core_plan(jobs, slots=3, cores=12, cohort_size=1)[s] for s in students] == [4, 4, 4, 6, 6]


@pytest.mark.parametrize("cores", [1, 3])
def test_never_less_than_one_thread(cores):
    jobs = load_suite(QUICK).jobs
    assert min(core_plan(jobs, slots=8, cores=cores, cohort_size=1).values()) == 1


def _teacher_then_students(students: int = 4) -> tuple[Work, list[Work]]:
    teacher = Work(key="t", kind="teacher", family="teacher", dataset="digits", cost=1, epochs=10,
                   produces=frozenset({"t"}))
    cohorts = [Work(key=f"s{i}", kind="students", family="students", dataset="digits", cost=2, epochs=4,
                    depends_on=frozenset({"t"}), produces=frozenset({f"s{i}"})) for i in range(students)]
    return teacher, cohorts


def test_no_estimate_before_a_first_epoch():
    teacher, students = _teacher_then_students()
    time_left = TimeLeft(slots=2)
    starting = Running(teacher, elapsed=30.0)
    time_left.observe(starting)
    assert time_left.estimate([starting], students) is None


def test_a_lone_teacher_then_student_cohorts_on_two_slots():
    """A teacher at 6 s per epoch after 3 of its 10 epochs (18 s, 2 s ago): 7 × 6 - 2 = 40 s
    left. Its students have no rate of their own, so the teacher's cost-epoch (6 s) stands in:
    a cohort of cost 2 × 4 epochs = 48 s; four cohorts on two slots, two rounds: 96 s."""
    teacher, students = _teacher_then_students()
    time_left = TimeLeft(slots=2)
    running = Running(teacher, elapsed=20.0, epochs_done=3, last_epoch_at=18.0)
    time_left.observe(running)
    assert time_left.estimate([running], students) == pytest.approx(40 + 96)
    # the students' own rate once one cohort reports: 2 epochs in 8 s = 2 s per cost-epoch
    first = Running(students[0], elapsed=9.0, epochs_done=2, last_epoch_at=8.0)
    time_left.observe(first)
    # that cohort: 2 epochs × 4 s left, less the 1 s since its last epoch = 7 s; three more
    # cohorts of 2 × 4 × 2 = 16 s on two slots: 0 → 16, 7 → 23, 16 → 32
    assert time_left.remaining(first) == pytest.approx(7)
    assert time_left.estimate([first], students[1:]) == pytest.approx(16 + 16)


def test_resumed_job_and_a_kind_not_seen_yet():
    teacher, students = _teacher_then_students(1)
    time_left = TimeLeft(slots=1)
    resumed = Running(teacher, elapsed=10.0, epochs_done=1, epochs_before=8, last_epoch_at=10.0)
    time_left.observe(resumed)
    assert time_left.remaining(resumed) == pytest.approx(10)  # one epoch of 10 s left
    # another data set, twice the samples per epoch: twice the seconds per cost-epoch
    other = Work(key="o", kind="other", family="other", dataset="cifar", cost=1, epochs=3)
    time_left.samples_per_epoch.update({"digits": 1000, "cifar": 2000})
    assert time_left.cost_epoch_seconds(other) == pytest.approx(20)
    assert time_left.estimate([resumed], [other]) == pytest.approx(10 + 60)


def test_jobs_waiting_for_a_queued_teacher_start_after_it():
    teacher, students = _teacher_then_students(2)
    time_left = TimeLeft(slots=3)
    time_left.observe(Running(teacher, elapsed=1.0, epochs_done=1, last_epoch_at=1.0))  # 1 s per cost-epoch
    # the students come first in the queue but wait for the teacher: 10 s, then 8 s side by side
    assert time_left.estimate([], [*students, teacher]) == pytest.approx(18)


def test_the_time_after_the_last_epoch_counts():
    """A finished teacher: 10 epochs in 10 s, then 3 s of final evaluation; its student
    cohort (cost 2 × 4 epochs at the fallback 1 s per cost-epoch) takes 8 + 3 s."""
    teacher, students = _teacher_then_students(1)
    time_left = TimeLeft(slots=1)
    time_left.observe(Running(teacher, elapsed=13.0, epochs_done=10, last_epoch_at=10.0, finished=True))
    assert time_left.tail(students[0]) == pytest.approx(3)
    assert time_left.estimate([], students) == pytest.approx(11)


def test_start_up_is_told_apart_from_the_epochs():
    """First epoch ends at 10 s, second at 14 s: 4 s per epoch and 6 s of start-up, which
    a queued job pays once (6 + 3 × 4 = 18 s), not in every epoch."""
    teacher, students = _teacher_then_students(1)
    other = Work(key="t2", kind="teacher", family="teacher", dataset="digits", cost=1, epochs=3)
    time_left = TimeLeft(slots=1)
    running = Running(teacher, elapsed=15.0, epochs_done=2, last_epoch_at=14.0, first_epoch_at=10.0)
    time_left.observe(running)
    assert time_left.startup(other) == pytest.approx(6) and time_left.epoch_seconds(running) == pytest.approx(4)
    assert time_left.remaining(running) == pytest.approx(8 * 4 - 1)
    assert time_left.estimate([], [other]) == pytest.approx(18)


def test_one_epoch_seen_its_start_up_is_not_an_epoch_to_come():
    """A teacher's first epoch ends 10 s after its start, its run reporting 4 s of training
    in it. With no job yet to tell evaluation's share: 4 s per epoch, 6 s of start-up, and
    9 × 4 - 1 = 35 s left (the 10 s to the epoch's end taken as the epoch would say 89 s).
    Once another teacher's epochs are 5 s apart for 4 s of training each (a whole epoch is
    1.25 × its training), 4 × 1.25 = 5 s per epoch: 9 × 5 - 1 = 44 s, start-up 10 - 5 = 5 s."""
    teacher, _ = _teacher_then_students(0)
    time_left = TimeLeft(slots=2)
    first = Running(teacher, elapsed=11.0, epochs_done=1, last_epoch_at=10.0, train_seconds=4.0)
    time_left.observe(first)
    assert time_left.epoch_seconds(first) == pytest.approx(4) and time_left.startup(teacher) == pytest.approx(6)
    assert time_left.remaining(first) == pytest.approx(35)
    other = Work(key="t2", kind="teacher", family="teacher", dataset="digits", cost=1, epochs=10)
    time_left.observe(Running(other, elapsed=14.0, epochs_done=2, first_epoch_at=8.0, last_epoch_at=13.0,
                              train_seconds=4.0))
    assert time_left.seen["t2"].overhead == pytest.approx(1.25) and time_left.seen["t2"].startup == pytest.approx(3)
    assert time_left.remaining(first) == pytest.approx(44)
    time_left.observe(first)
    assert time_left.seen["t"].startup == pytest.approx(5)
    # never more than the time to the epoch's end: 3 s of training × 1.25 > 3.5 s to its end
    quick = Running(teacher, elapsed=3.5, epochs_done=1, last_epoch_at=3.5, train_seconds=3.0)
    assert time_left.epoch_seconds(quick) == pytest.approx(3.5)


def test_a_kind_not_seen_yet_takes_its_family_figures_before_every_job_s():
    """A teacher (10 s per cost-epoch, 1 s of start-up) and a cohort of eight students
    (cost 4, epochs 8 s apart: 2 s per cost-epoch, 3 s of start-up) have been seen. A cohort
    of three other labels on the same data (cost 2, 4 epochs) takes its family's figures,
    not the median of every job's (6 s, 2 s): 3 + 2 × 2 × 4 = 19 s after the eight's
    2 × 8 - 1 = 15 s on the one slot. Once the three's kind shows in another seed (epochs
    3 s apart: 1.5 s per cost-epoch, 2 s of start-up), its own: 15 + 2 + 1.5 × 2 × 4 = 29 s."""
    teacher, _ = _teacher_then_students(0)
    eight = Work(key="e0", kind="eight", family="students", dataset="digits", cost=4, epochs=4)
    three = Work(key="h0", kind="three", family="students", dataset="digits", cost=2, epochs=4)
    time_left = TimeLeft(slots=1)
    time_left.observe(Running(teacher, elapsed=31.0, epochs_done=2, first_epoch_at=11.0, last_epoch_at=21.0))
    running = Running(eight, elapsed=20.0, epochs_done=2, first_epoch_at=11.0, last_epoch_at=19.0)
    time_left.observe(running)
    assert time_left.cost_epoch_seconds(three) == pytest.approx(2) and time_left.startup(three) == pytest.approx(3)
    assert time_left.estimate([running], [three]) == pytest.approx(15 + 19)
    other_seed = Work(key="h1", kind="three", family="students", dataset="digits", cost=2, epochs=4)
    time_left.observe(Running(other_seed, elapsed=10.0, epochs_done=2, first_epoch_at=5.0, last_epoch_at=8.0))
    assert time_left.estimate([running], [three]) == pytest.approx(29)


def test_a_cohort_s_epoch_ends_with_its_slowest_run_s_row(tmp_path):
    """A cohort of two runs started at t = 100 s: one has written its second epoch's row (at
    130 s), the other only its first (at 112 s). The cohort has done one epoch, which ended
    at 112 s, 12 s after its start, not at 130 s; it trained 3 + 3 s in it (the runs' shares)."""
    path = tmp_path / "one_teacher.yaml"
    path.write_text(ONE_TEACHER.replace("cohort_size: 1", "cohort_size: 8"))
    unit = tuple(j for j in load_suite(path).jobs if not j.is_teacher and j.spec.seed == 0)  # kd and dkd
    assert len(unit) == 2
    row = {"epoch": 1, "val_top1": 50.0, "images_per_s": 100.0, "epoch_seconds": 3.0}
    for job, rows, written in zip(unit, (2, 1), (130.0, 112.0)):
        metrics = tmp_path / "runs" / job.run_id / "metrics.jsonl"
        metrics.parent.mkdir(parents=True)
        metrics.write_text("".join(json.dumps(row) + "\n" for _ in range(rows)))
        os.utime(metrics, (written, written))
    progress = SuiteProgress("one_teacher", tmp_path / "runs", total=2, slots=1)
    progress.begun[id(unit)] = (100.0, 0)
    job = progress.running(unit)
    assert job.epochs_done == 1 and job.last_epoch_at == pytest.approx(12) and job.train_seconds == pytest.approx(6)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux's CPU affinity")
def test_the_cores_counted_are_those_the_process_may_run_on() -> None:
    # as in a Slurm job given one core of a larger node: the planner must not count the node's
    script = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
             "from kdbench.engine import usable_cores; print(usable_cores())"
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "1"
