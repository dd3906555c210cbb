"""The runner's share of the cores per job, and its estimate of the time left."""

from pathlib import Path

import pytest

from kdbench.runner import core_plan, form_cohorts
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


def test_quick_suite_plan_two_teachers_share_the_cores():
    jobs = load_suite(QUICK).jobs
    plan = core_plan(jobs, slots=2, cores=2, cohort_size=8)
    assert set(plan) == {j.run_id for j in jobs}
    assert set(plan.values()) == {1}  # two teachers side by side, then eight student cohorts
    assert set(core_plan(jobs, slots=1, cores=2, cohort_size=8).values()) == {2}
    assert len(form_cohorts(jobs, 8)) == 10


@pytest.mark.parametrize("cores", [1, 3])
def test_never_less_than_one_thread(cores):
    jobs = load_suite(QUICK).jobs
    assert min(core_plan(jobs, slots=8, cores=cores, cohort_size=1).values()) == 1
