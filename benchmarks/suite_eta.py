"""Run a suite and log the runner's time-left estimate against the time it really had
left, and how much of the machine's cores it left idle.

    python benchmarks/suite_eta.py [suite.yaml] [--rule per-worker|graph] [--out DIR]

Default suite: the quick suite. ``--rule per-worker`` shares the cores out as the runner
did before ``core_plan`` (cores // workers for every job), for a before/after of the idle
fraction, measured two ways: 1 - CPU seconds of the runner and its workers / (wall
seconds × cores), which other processes on a shared machine push up; and 1 - the threads
the runner gave its jobs × the seconds they ran / (wall seconds × cores), the cores the
schedule leaves unasked for, which they do not.
Each estimate is printed with the truth (known once the suite ends) and their ratio; the
target is a ratio within 1/1.5 .. 1.5 after each job's first epoch. A benchmark, not a
test: on a shared machine the figures move with the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from unittest import mock

from kdbench.runner.progress import TimeLeft, duration
from kdbench.runner import RunnerOptions, Scheduler, planning, run_suite, scheduler as scheduling
from kdbench.suite import load_suite
from kdbench.engine import EngineOptions, usable_cores

QUICK = Path(__file__).parents[1] / "suites" / "quick.yaml"


def per_worker(jobs, slots, cores, cohort_size, processes_per_job=1):  # the rule before core_plan
    return {job.run_id: max(1, cores // (slots * processes_per_job)) for job in jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default=str(QUICK))
    parser.add_argument("--rule", choices=("graph", "per-worker"), default="graph")
    parser.add_argument("--out", help="results folder (default: a temporary one, so every run trains afresh)")
    parser.add_argument("--report-seconds", type=float, default=3.0)
    args = parser.parse_args()

    schedulers: list[Scheduler] = []
    init = Scheduler.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        schedulers.append(self)

    lines: list[tuple[float, str]] = []
    threads: list[tuple[int, int]] = []  # per started job: (its unit's id, threads or loader processes)
    finished: dict[int, float] = {}  # per unit id: when it ended
    job_options, finish = Scheduler._job_options, Scheduler._finish

    def noting_threads(self, slot, unit):
        options = job_options(self, slot, unit)
        threads.append((id(unit), options.threads or options.workers or 1))
        return options

    def noting_end(self, unit, handle):
        finished[id(unit)] = time.time()
        return finish(self, unit, handle)
    measured: list[bool] = []  # per estimate: had every running job finished an epoch since it started?
    estimate = TimeLeft.estimate

    def noting(self, running, queued):
        measured.append(all(job.epochs_done >= 1 for job in running))
        return estimate(self, running, queued)
    start = time.time()
    cpu_before = _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="kdbench-eta-") as tmp, \
            mock.patch.object(Scheduler, "__init__", keep), mock.patch.object(TimeLeft, "estimate", noting), \
            mock.patch.object(Scheduler, "_job_options", noting_threads), \
            mock.patch.object(Scheduler, "_finish", noting_end), \
            mock.patch.object(scheduling, "REPORT_SECONDS", args.report_seconds), \
            mock.patch.object(planning, "core_plan", per_worker if args.rule == "per-worker" else planning.core_plan):
        options = RunnerOptions(out=Path(args.out or tmp), engine=EngineOptions(progress=False),
                                printer=lambda line: lines.append((time.time() - start, line)))
        outcome = run_suite(load_suite(args.suite), options)
        wall = time.time() - start  # the suite's end, not the temporary folder's removal
        cpu = _cpu_seconds() - cpu_before
    cores = usable_cores()
    scheduler = schedulers[0]
    total = wall - (scheduler.progress.started - start)  # the scheduler's clock starts after the data checks
    print(f"{args.suite}: {len(outcome.finished)} runs finished, {len(outcome.failed)} failed, "
          f"{duration(total)} wall (rule {args.rule}); the runner returned {start + wall - max(finished.values(), default=start + wall):.1f} s "
          "after booking its last job (its workers' exit), which no estimate counts")
    print(f"CPU {cpu:.0f} s over {wall:.0f} s × {cores} cores: idle fraction {1 - cpu / (wall * cores):.2f}, "
          f"load {os.getloadavg()[0]:.2f} now (others' work shares the cores)")
    asked = sum(n * (finished[unit] - scheduler.progress.begun[unit][0]) for unit, n in threads if unit in finished)
    print(f"threads × seconds given to jobs {asked:.0f} over {total:.0f} s × {cores} cores: "
          f"unasked-for fraction {1 - asked / (total * cores):.2f}")
    print(f"{'at':>7} {'estimate':>11} {'truth':>7} {'ratio':>6}  every running job past its first epoch")
    ratios = []
    for (at, left), past_first in zip(scheduler.progress.estimates, measured):
        truth = total - at
        ratio = left / truth if left is not None and truth > 0 else None
        if ratio is not None and past_first:
            ratios.append(ratio)
        shown = duration(left) if left is not None else "estimating…"
        print(f"{duration(at):>7} {shown:>11} {duration(truth):>7} "
              f"{f'{ratio:6.2f}' if ratio is not None else '     -'}  {'yes' if past_first else 'no'}")
    if ratios:
        inside = sum(1 / 1.5 <= r <= 1.5 for r in ratios)
        print(f"past first epochs: {inside}/{len(ratios)} estimates within a factor 1.5 of the truth "
              f"(ratios {min(ratios):.2f} .. {max(ratios):.2f})")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
