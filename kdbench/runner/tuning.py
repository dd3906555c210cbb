"""``kdbench ablate``: run the Optuna study of a suite's ``ablation:`` block
(``kdbench.suite.ablation``) as a client of the suite runner.

- Every run (the teacher, each trial, the best configuration's retraining) is a RunSpec
  trained by the runner's worker, ``kdbench.runner.execute_cohort``, into the suite's
  ``runs`` folder: under the run's lock, a finished run read instead of trained, a failure
  booked in its ``failed.json``, an interrupted run resumed from its checkpoint. A run
  another process holds (a ``kdbench run`` of the suite, another worker of the study) is
  waited for. A failed configuration sampled again fails at once with its booked reason
  (delete its run folder to train it again).
- The teacher is the suite's teacher job for the pair and dataset, trained (or found) as
  ``kdbench run`` would.
- A trial is the suite's run of the method on that pair and dataset with the suite's first
  seed and the sampled hyperparameters (``Ablation.spec``), so a configuration sampled twice
  (or already run by the suite) is trained once.
- The score is validation top-1 (never test) under the suite's selection rule: the best
  epoch's for ``best_val``, the last epoch's for ``last``. Each epoch's validation top-1 is
  reported to Optuna's MedianPruner through the engine's ``on_epoch`` (so trials train in
  the process that holds the Optuna trial); a pruned trial's run stops with ``RunStopped``,
  keeps its checkpoint and continues if sampled again. Epochs trained before (by an earlier
  trial or the suite) are reported first. A trial whose configuration cannot train (a level
  too deep for the number of classes, a diverged loss) fails with its reason and the study
  goes on.
- The study lives in its storage: calling ``kdbench ablate`` again runs ``trials`` more
  trials in the same study (a trial left running by a killed process is marked failed by
  Optuna's heartbeat). ``workers`` > 1 starts that many processes on the same storage,
  sharing the trials (the runner's ``WorkerPool``: a Ctrl-C ends them all, their runs
  resume from their last epochs); each seeds its sampler from (seed, worker, trials so
  far). A changed ``space`` needs a new ``study_name`` (Optuna refuses other choices for a
  parameter of a study). ``--trials 0`` trains nothing new.
- On the CPU each process trains with its share of the cores by the runner's rule
  (``kdbench.runner.core_plan``): the teacher alone gets them all, the trials are a wave of
  ``workers`` jobs side by side. The best configuration is retrained, after the trials, on
  the suite's seeds one after the other in this process, with the trials' share.

``kdbench.analysis.ablation`` then writes the trials table, ``best.json`` and the figures
from the study's storage and the runs' records.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ..suite.ablation import Ablation, load_ablation
from ..engine import EngineOptions, resolve_device, usable_cores
from ..errors import KDBenchError, MachineError, RunStopped
from ..locking import exclusive_lock
from . import core_plan, execute_cohort
from .executors import WorkerPool
from .workers import WorkerAnswer, WorkerOutcome
from ..spec import RunSpec
from ..store import RUNS, RunFolder, RunRecord, finished_record, read_metrics

HEARTBEAT_SECONDS = 60
DONE = (WorkerOutcome.FINISHED, WorkerOutcome.SKIPPED)  # the run has its record


class TrialFailed(KDBenchError):
    """A trial's run failed (its reason is booked in the run's ``failed.json``); the study goes on."""


def run_ablation(suite_path: str | Path, out: str | Path = "results", trials: int | None = None,
                 workers: int | None = None, storage: str | None = None, device: str = "auto",
                 printer: Callable[[str], None] = print) -> Ablation:
    """Run ``trials`` more trials of the suite's ablation, then retrain the best configuration
    on the suite's seeds; returns the ablation, whose outputs ``kdbench.analysis.ablation``
    writes. ``trials``, ``workers`` and ``storage`` override the block's values."""
    ablation = load_ablation(suite_path)
    config = ablation.config
    runs = ablation.directory(out) / RUNS
    ablation.folder(out).mkdir(parents=True, exist_ok=True)
    url = ablation.storage_url(out, storage)
    trials = config.trials if trials is None else trials
    workers = max(1, min(workers or config.workers, trials))
    engine = EngineOptions(device=device, data_root=ablation.suite.file.data_root, progress=False)
    shares = thread_shares(ablation, workers, engine)
    for teacher in ablation.teachers:
        printer(f"teacher: {teacher.describe()} [{teacher.run_id}]")
        result = train(ablation, teacher.spec, runs, replace(engine, threads=shares[teacher.run_id]))
        if result.status not in DONE:
            raise KDBenchError(f"teacher run {teacher.run_id} ({teacher.describe()}) did not finish: "
                               f"{result.reason}")
    optuna.create_study(study_name=ablation.study_name, storage=_storage(url), direction="maximize",
                        load_if_exists=True)
    printer(f"study '{ablation.study_name}' in {url}: {trials} more trial(s) on {workers} worker(s)")
    trial_engine = replace(engine, threads=shares[ablation.template.run_id])
    counts = [trials // workers + (i < trials % workers) for i in range(workers)]
    arguments = [(str(ablation.suite.path), str(out), url, count, i, trial_engine) for i, count in enumerate(counts)]
    pool = WorkerPool(max(1, workers - 1))
    stopped = True  # until every worker is done: a Ctrl-C here ends the others (their trials resume)
    try:
        others = [pool.submit(_optimize, *a) for a in arguments[1:]]  # worker 0 is this process
        _optimize(*arguments[0])
        for other in others:
            other.result()
        stopped = False
    finally:
        pool.close(stopped)
    study = optuna.load_study(study_name=ablation.study_name, storage=_storage(url))
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        retrain_best(ablation, study, runs, trial_engine, printer)
    return ablation


def thread_shares(ablation: Ablation, workers: int, engine: EngineOptions) -> dict[str, int | None]:
    """Per run id (the teachers', the template's for every trial), the intra-op threads its
    process trains with: on the CPU the runner's ``core_plan`` of the ablation's graph, the
    teachers a wave before ``workers`` trials side by side; None (the engine's default) on a GPU."""
    plan = core_plan([*ablation.teachers, *[ablation.template] * workers], slots=workers,
                     cores=usable_cores(), cohort_size=1)
    on_cpu = resolve_device(engine.device).type == "cpu"
    return {run_id: threads if on_cpu else None for run_id, threads in plan.items()}


def train(ablation: Ablation, spec: RunSpec, runs: Path, engine: EngineOptions) -> WorkerAnswer:
    """The runner's worker on one run in this process: execute_cohort's answer (status, a
    ``WorkerOutcome``, and reason). While another process holds the run's lock (it trains
    the run), wait for the lock and ask again: the run is then finished, or resumes here."""
    files = [str(p) for p in ablation.suite.method_files()]
    while True:
        result = execute_cohort([spec.model_dump(mode="json")], str(runs), engine, files)[spec.run_id]
        if result.status == WorkerOutcome.MACHINE:
            raise MachineError(result.reason)
        if result.status != WorkerOutcome.BUSY:
            return result
        with exclusive_lock(RunFolder.of(runs, spec.run_id).lock):
            pass


def _storage(url: str) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS)


def _optimize(suite_path: str, out: str, url: str, trials: int, worker: int, engine: EngineOptions) -> None:
    """Run ``trials`` trials of the study in this process, as worker ``worker``."""
    ablation = load_ablation(suite_path)
    config = ablation.config
    study = optuna.load_study(study_name=ablation.study_name, storage=_storage(url))
    seed = int(np.random.SeedSequence([config.seed, worker, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.startup_trials)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=config.warmup_epochs)
    runs = ablation.directory(out) / RUNS
    study.optimize(lambda trial: objective(trial, ablation, runs, engine), n_trials=trials, catch=(TrialFailed,))


class _EpochReporter:
    """Reports a trial's run's epochs to Optuna, each once, and stops the run (``RunStopped``)
    when the pruner says so; epochs trained before this trial are reported first."""

    def __init__(self, trial: optuna.Trial, run_dir: Path) -> None:
        self.trial, self.run_dir = trial, run_dir
        self.reported = 0  # the last epoch reported
        self.pruned = ""

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        """The engine's ``on_epoch``: the run's earlier epochs (its metrics file, under its lock), then this one."""
        self.report([*(r for r in read_metrics(self.run_dir) if r["epoch"] < epoch), row])

    def report(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["epoch"] <= self.reported:
                continue
            self.reported = row["epoch"]
            self.trial.report(row["val_top1"], row["epoch"])
            if self.trial.should_prune():
                self.pruned = f"val top-1 {row['val_top1']:.2f} after epoch {row['epoch']} is below the median"
                raise RunStopped(self.pruned)


def objective(trial: optuna.Trial, ablation: Ablation, runs: Path, engine: EngineOptions) -> float:
    """Train (or find) the trial's run through the runner's worker and return its validation
    score; prunes per epoch."""
    spec = ablation.spec({p.name: p.suggest(trial) for p in ablation.space})
    trial.set_user_attr("run_id", spec.run_id)
    reporter = _EpochReporter(trial, RunFolder.of(runs, spec.run_id).path)
    result = train(ablation, spec, runs, replace(engine, on_epoch=reporter))
    if result.status == WorkerOutcome.STOPPED:
        raise optuna.TrialPruned(reporter.pruned)
    if result.status not in DONE:
        trial.set_user_attr("error", result.reason)
        raise TrialFailed(result.reason)
    record = finished_record(runs, spec.run_id)
    try:
        reporter.report([row.dump() for row in record.metrics])  # a run found finished: its epochs, as if trained now
    except RunStopped:
        raise optuna.TrialPruned(reporter.pruned) from None
    return validation_score(record, ablation.suite.file.selection)


def validation_score(record: RunRecord, selection: str) -> float:
    """A run's val top-1 under the selection rule: the best epoch's, or the last epoch's."""
    return record.summary.val_top1_best if selection == "best_val" else record.metrics[-1].val_top1


def retrain_best(ablation: Ablation, study: optuna.Study, runs: Path, engine: EngineOptions,
                 printer: Callable[[str], None] = print) -> None:
    """Train the best trial's configuration with each of the suite's seeds; a seed that
    fails is booked in its run's ``failed.json`` and the others go on."""
    for seed in ablation.suite.file.seeds:
        spec = ablation.spec(study.best_trial.params, seed)
        printer(f"best configuration, seed {seed}: {spec.describe()} [{spec.run_id}]")
        result = train(ablation, spec, runs, engine)
        if result.status not in DONE:
            printer(f"  failed: {result.reason}")
