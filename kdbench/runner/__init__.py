"""Executes a suite's job graph: teachers before the students that need them, on every GPU
of the machine (one job each), a bounded pool of CPU processes, or Slurm via submitit.

- ``planning``: the ``Plan``, decided once: the jobs (``--only``, ``--smoke``), the slots
  and each run's cores (from the cohorts); the input checks, the manifest;
- ``scheduler``: the cohorts onto an executor's slots, and the book of what came of them;
- ``executors``: the slots, a local process pool and Slurm (submitit);
- ``workers``: what a worker process does with a cohort (locks, training, failures).

Safe to kill at any moment and to run twice at once on the same results folder:
- a finished run has ``record.json`` and is never redone;
- a run in progress holds an exclusive ``flock`` on ``runs/<id>.lock`` (released by the
  kernel when its process dies, even by SIGKILL), so a second runner skips it and waits;
- an interrupted run resumes from its last epoch checkpoint;
- a failed run writes ``failed.json`` with its reason and is not retried unless asked
  (``--retry-failed``); its students fail with "teacher failed"; the rest go on;
- a ``record.json`` or ``failed.json`` that is corrupt is set aside (renamed, kept) and
  its run done again; a failure of the machine (full disk, I/O error, a device it lacks)
  is not booked as the run's: it stops the suite, and a plain rerun retries;
- SIGINT and SIGTERM stop the worker processes at once (their runs resume from their
  last epochs); workers ignore SIGINT themselves, so a Ctrl-C reaches only the runner.
  Slurm jobs are ``submitit.helpers.Checkpointable``: preempted or timed out, submitit
  requeues them and their runs resume from their last epochs; a job the cluster ends
  (``scancel``) leaves its runs stopped, not failed, for a rerun to resume.
"""

from __future__ import annotations

from itertools import groupby

from .. import store
from ..engine import resolve_device
from ..errors import ConfigError, DataError
from ..spec import SELECTED_EPOCH
from ..suite import Suite
from .planning import (Plan, RunnerOptions, check_data, check_methods, check_teachers, core_plan, form_cohorts,
                       plan_suite, select_jobs, write_manifest)
from .scheduler import Outcome, Scheduler
from .workers import execute_cohort

__all__ = ["Outcome", "Plan", "RunnerOptions", "Scheduler", "core_plan", "execute_cohort", "form_cohorts", "plan_suite",
           "run_plan", "run_suite", "select_jobs"]


def run_suite(suite: Suite, options: RunnerOptions) -> Outcome:
    """``run_plan`` of the suite's plan (``plan_suite``)."""
    return run_plan(plan_suite(suite, options))


def run_plan(plan: Plan) -> Outcome:
    """Run the plan's jobs (or, with ``dry_run``, list where each stands); nothing is
    trained when an input is missing or a method cannot use its data set."""
    suite, jobs, say = plan.suite, plan.jobs, plan.options.printer
    legacy = store.legacy_runs(plan.directory)
    if legacy:
        raise ConfigError(f"nothing was trained: {store.legacy_message(plan.directory, legacy)}")
    classes, problems = check_data(jobs, plan.engine.data_root)
    problems += check_teachers(jobs, suite)
    invalid = check_methods(jobs, classes, suite)
    if invalid:
        raise ConfigError("nothing was trained:\n  " + "\n  ".join(invalid))
    elsewhere = plan.finished_elsewhere
    if plan.options.dry_run:
        statuses = {job.run_id: f"finished in {elsewhere[job.run_id].parent.parent.name}" if job.run_id in elsewhere
                    else str(store.status_of(plan.runs, job.run_id)) for job in jobs}
        width = max(map(len, statuses.values()), default=0)
        counts: dict[str, int] = {}
        for job in jobs:
            status = statuses[job.run_id]
            counts[status] = counts.get(status, 0) + 1
            say(f"{status:<{width}} {job.run_id}  {job.describe()}")
        say(f"{len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f" (results in {plan.directory}; runs another suite finished are taken, not trained again)")
        for dataset, specs in groupby(sorted((j.spec for j in jobs), key=lambda s: s.dataset.name),
                                      key=lambda s: s.dataset.name):
            specs = list(specs)
            say(f"{dataset}: trains on {'; '.join(sorted({s.dataset.training_split for s in specs}))}; precision "
                f"{', '.join(sorted({s.recipe.precision for s in specs}))}; reports {SELECTED_EPOCH[suite.file.selection]}"
                f"; a teacher trained here hands over {SELECTED_EPOCH[suite.file.teacher_weights]}")
        for problem in problems:
            say(f"missing: {problem}")
        return Outcome(missing=problems)
    if problems:
        raise DataError("cannot run, inputs are missing:\n  " + "\n  ".join(problems))
    if suite.file.executor.kind != "slurm":  # the nodes' devices are not the login node's
        resolve_device(plan.engine.device)
    plan.runs.mkdir(parents=True, exist_ok=True)
    if elsewhere:
        store.take_finished_runs(plan.directory, elsewhere)
        say(f"[{suite.name}] {len(elsewhere)} runs already finished in "
            f"{', '.join(sorted({str(p.parent.parent) for p in elsewhere.values()}))} (the same run ids): taken as "
            "they are, not trained again")
    # the whole suite's jobs, merged with those listed before: --only never hides runs from a report
    write_manifest(suite, plan.everything, plan.directory)
    return Scheduler(plan).run()
