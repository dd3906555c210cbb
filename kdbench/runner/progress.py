"""The time a suite has left, estimated from what its own jobs have done.

A job (a cohort: one process training its runs in lock-step) is measured by its own
epochs: its seconds per epoch (teacher forward and per-epoch evaluation included) from its
first epoch's end to its last's, once it has two; its start-up (process, data, models)
as the time to its first epoch's end less one epoch; its tail as the time from its last
epoch to its end (final evaluation, files). With one epoch seen, its seconds per epoch are
the seconds its runs report having trained in it, times the ratio of a whole epoch to its
training seen on jobs like it (evaluation and files): the time to its first epoch's end,
start-up included, would count the start-up again in every epoch still to come. That gives

- a running job's time left: its seconds per epoch × the epochs it has left, plus the
  tail of jobs like it, less the time since its last epoch;
- a queued job's time (or a started one's that has not finished an epoch): the start-up
  of jobs like it, its epochs × its cost at the seconds per cost-epoch of jobs like it,
  and their tail.

Jobs like it: those of its kind (same role, data set, batch size, models and labels: the
same cohort in another seed) once one has shown the figure, else those of its family
(kinds apart only in their labels: a data set's other student cohorts), else every job
seen, whose rates stand in per cost-sample, times its data set's samples per epoch when
a job on that set reported them (else per cost-epoch).

A job's cost is what one sample costs it in parameters touched: the teacher's forward
(once for the cohort) plus three times (forward and backward) each student's parameter
count; a proxy for its FLOPs, which within the zoo's families (ResNets, WRNs at one
resolution) follow the parameters to a few per cent. It leaves out what a method adds
(CRD's memory, FreeKD's transforms), which is why a kind's own rate comes first.

The jobs then go onto the runner's slots as the runner would start them: each as soon
as a slot is free and the teachers it waits for have finished. Until one job has finished
an epoch there is no basis, and ``estimate`` answers None (say "estimating…").
"""

from __future__ import annotations

import functools
import heapq
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import store
from ..suite import Job


@dataclass(frozen=True)
class Work:
    """A job as the estimate sees it."""

    key: str  # identifies the job (its first run id)
    kind: str  # jobs of one kind (role, data set, batch, models and labels) train at one speed per cost-epoch
    family: str  # its kind less the labels: where a kind not seen yet takes its figures from
    dataset: str
    cost: float  # per sample: teacher forward + 3 × each student's parameters (see above)
    epochs: int  # epochs each run trains in all
    depends_on: frozenset[str] = frozenset()  # keys of the jobs it waits for
    produces: frozenset[str] = frozenset()  # what other jobs' depends_on name it by (its run ids)


@dataclass
class Running:
    """A job in progress: epochs done since it started, and when (seconds since it started)."""

    work: Work
    elapsed: float  # seconds since it started
    epochs_done: int = 0  # epochs it trained since it started
    epochs_before: int = 0  # epochs done before it started (resumed from a checkpoint)
    last_epoch_at: float = 0.0  # seconds since it started when its last epoch ended (its slowest run's row)
    first_epoch_at: float | None = None  # seconds since it started when its first epoch ended, if seen
    train_seconds: float | None = None  # seconds its last epoch trained, as its runs report (no evaluation)
    samples_per_epoch: float | None = None  # what one of its runs sees per epoch, once reported
    finished: bool = False  # ended ``elapsed`` seconds after it started


@dataclass
class Seen:
    """What one job has shown so far."""

    work: Work
    rate: float  # seconds per cost-epoch
    startup: float | None = None  # seconds before its first epoch began
    overhead: float | None = None  # a whole epoch's seconds over its training seconds (evaluation, files)
    tail: float | None = None  # seconds from its last epoch to its end, once finished


@dataclass
class TimeLeft:
    """Rates observed so far, and the estimate they give; pure (times are passed in)."""

    slots: int
    samples_per_epoch: dict[str, float] = field(default_factory=dict)  # data set → samples one run sees per epoch
    seen: dict[str, Seen] = field(default_factory=dict)  # job key → what it showed

    def typical(self, work: Work, figure: Callable[[Seen], float | None]) -> float | None:
        """The median of ``figure`` over the jobs like ``work`` that show it (see the module
        docstring), None if none does."""
        for alike in (lambda s: s.work.kind == work.kind, lambda s: s.work.family == work.family, lambda s: True):
            values = [value for s in self.seen.values() if alike(s) and (value := figure(s)) is not None]
            if values:
                return statistics.median(values)
        return None

    def startup(self, work: Work) -> float:
        """Seconds a job like ``work`` takes before its first epoch begins."""
        return self.typical(work, lambda s: s.startup) or 0.0

    def tail(self, work: Work) -> float:
        """Seconds a job like ``work`` takes after its last epoch (final evaluation, files)."""
        return self.typical(work, lambda s: s.tail) or 0.0

    def epoch_seconds(self, job: Running) -> float:
        """A job's seconds per epoch: between its first and last epochs' ends once it has
        two; else its training seconds times the overhead of jobs like it, at most the
        time to its epoch's end from its start."""
        if job.first_epoch_at is not None and job.epochs_done >= 2:
            return (job.last_epoch_at - job.first_epoch_at) / (job.epochs_done - 1)
        whole = job.last_epoch_at / job.epochs_done
        if not job.train_seconds:
            return whole
        overhead = self.typical(job.work, lambda s: s.overhead) or 1.0
        return min(whole, job.train_seconds * overhead)

    def observe(self, job: Running) -> None:
        """Learn from a job that finished at least one epoch (a finished job: all of them)."""
        if job.samples_per_epoch:
            self.samples_per_epoch[job.work.dataset] = job.samples_per_epoch
        if job.epochs_done < 1 or job.last_epoch_at <= 0:
            return
        per_epoch = self.epoch_seconds(job)
        seen = Seen(job.work, per_epoch / job.work.cost)
        if job.first_epoch_at is not None and job.epochs_done >= 2:
            seen.startup = max(0.0, job.first_epoch_at - per_epoch)
            seen.overhead = per_epoch / job.train_seconds if job.train_seconds else None
        elif job.train_seconds:  # its epochs from its runs' training seconds: the rest was start-up
            seen.startup = max(0.0, job.last_epoch_at - per_epoch * job.epochs_done)
        if job.finished:
            seen.tail = max(0.0, job.elapsed - job.last_epoch_at)
        self.seen[job.work.key] = seen

    def cost_epoch_seconds(self, work: Work) -> float | None:
        """Seconds per cost-epoch expected of ``work``, None without any basis."""
        for alike in (lambda s: s.work.kind == work.kind, lambda s: s.work.family == work.family):
            rates = [s.rate for s in self.seen.values() if alike(s)]
            if rates:
                return statistics.median(rates)
        if not self.seen:
            return None
        per_sample = [s.rate / self.samples_per_epoch[s.work.dataset] for s in self.seen.values()
                      if s.work.dataset in self.samples_per_epoch]
        if per_sample and work.dataset in self.samples_per_epoch:
            return statistics.median(per_sample) * self.samples_per_epoch[work.dataset]
        return statistics.median(s.rate for s in self.seen.values())

    def remaining(self, job: Running) -> float | None:
        """Seconds the running job has left."""
        left = job.work.epochs - job.epochs_before - job.epochs_done
        if job.epochs_done >= 1 and job.last_epoch_at > 0:
            return max(0.0, self.epoch_seconds(job) * left + self.tail(job.work) - (job.elapsed - job.last_epoch_at))
        rate = self.cost_epoch_seconds(job.work)
        return None if rate is None else max(0.0, self.startup(job.work) + rate * job.work.cost * left
                                             + self.tail(job.work) - job.elapsed)

    def estimate(self, running: list[Running], queued: list[Work]) -> float | None:
        """Seconds until the last job finishes, None until there is a basis: the running
        jobs hold their slots until they finish, the queued ones start in order, each on
        the first free slot once the jobs it waits for have finished."""
        if not self.seen:
            return None
        finish: dict[str, float] = {}
        free: list[float] = []
        for job in running:
            left = self.remaining(job)
            if left is None:
                return None
            free.append(left)
            finish.update({name: left for name in job.work.produces})
        free += [0.0] * max(0, self.slots - len(free))
        heapq.heapify(free)
        end = max(free, default=0.0)
        for work in _in_dependency_order(queued):
            rate = self.cost_epoch_seconds(work)
            assert rate is not None  # a basis exists
            slot_free = heapq.heappop(free)
            start = max([slot_free, *(finish.get(name, 0.0) for name in work.depends_on)])
            done = start + self.startup(work) + rate * work.cost * work.epochs + self.tail(work)
            heapq.heappush(free, done)
            finish.update({name: done for name in work.produces})
            end = max(end, done)
        return end


def _in_dependency_order(queued: list[Work]) -> list[Work]:
    """The queued jobs in their order, each after the queued jobs it waits for."""
    waiting = list(queued)
    produced = {name for work in queued for name in work.produces}
    placed: set[str] = set()
    ordered = []
    while waiting:
        ready = next((w for w in waiting if not (w.depends_on & produced) - placed), waiting[0])
        waiting.remove(ready)
        ordered.append(ready)
        placed |= ready.produces
    return ordered


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _accuracy(row: dict) -> str:
    """A running job's last accuracy: on val, or on test where the run has no validation
    split (a published protocol's, which selects nothing during training)."""
    return f"test {row['test_top1']:.1f}" if math.isnan(row["val_top1"]) else f"val {row['val_top1']:.1f}"


class SuiteProgress:
    """What the scheduler's cohorts have done, read from their runs' metrics files: it
    feeds ``TimeLeft`` and writes the progress report. The scheduler calls ``start`` when it
    submits a cohort, ``poll`` on every turn of its loop, ``finish`` when a cohort ends and
    ``report`` every so often."""

    def __init__(self, name: str, runs: Path, total: int, slots: int) -> None:
        self.name, self.runs, self.total = name, runs, total
        self.started = time.time()
        self.time_left = TimeLeft(slots=slots)
        self.begun: dict[int, tuple[float, int]] = {}  # per running cohort: when it started, epochs done before
        self.first_epoch: dict[int, float | None] = {}  # per running cohort: when its first epoch ended
        self.estimates: list[tuple[float, float | None]] = []  # (seconds since the start, estimated seconds left)

    def start(self, unit: tuple[Job, ...]) -> None:
        self.begun[id(unit)] = (time.time(), min(len(store.read_metrics(self.runs / job.run_id)) for job in unit))
        self.first_epoch.pop(id(unit), None)

    def poll(self, running: list[tuple[Job, ...]]) -> None:
        """When each running cohort's first epoch ended: its metrics files' time while they
        hold that one epoch (polled every second; None if a second one came first)."""
        for unit in running:
            if id(unit) in self.first_epoch:
                continue
            started, before = self.begun[id(unit)]
            rows = [len(store.read_metrics(self.runs / job.run_id)) for job in unit]
            if min(rows) > before:
                self.first_epoch[id(unit)] = (max(self._metrics(job).stat().st_mtime for job in unit) - started
                                              if max(rows) == before + 1 else None)

    def finish(self, unit: tuple[Job, ...]) -> None:
        self.time_left.observe(self.running(unit, finished=True))

    def report(self, done: int, failed: int, queued: list[tuple[Job, ...]], running: list[tuple[Job, ...]]) -> str:
        """The suite's counts, the time it has left and each running run's last epoch."""
        left = sum(len(u) for u in queued)
        active = [job for unit in running for job in unit]
        eta = ""
        if left or active:
            progress = [self.running(unit) for unit in running]
            for job in progress:
                self.time_left.observe(job)
            seconds = self.time_left.estimate(progress, [self.work(unit) for unit in queued])
            self.estimates.append((time.time() - self.started, seconds))
            eta = f", about {duration(seconds)} left" if seconds is not None else ", estimating…"
        lines = [f"[{self.name}] {done}/{self.total} done, {len(active)} running, {failed} failed, {left} waiting{eta}"]
        for job in active:
            rows = store.read_metrics(self.runs / job.run_id)
            state = f"epoch {rows[-1]['epoch']}/{job.spec.recipe.epochs} {_accuracy(rows[-1])}" if rows else "starting"
            lines.append(f"    {job.describe()} {state}")
        return "\n".join(lines)

    def work(self, unit: tuple[Job, ...]) -> Work:
        """The cohort as the time estimate sees it; its family: role, data, batch and models;
        its kind: those and its labels (the same cohort in every seed)."""
        spec = unit[0].spec
        dataset = spec.dataset.model_dump_json()
        models = sorted({(j.spec.student, j.spec.teacher.model if j.spec.teacher else "") for j in unit})
        family = f"{'teacher' if unit[0].is_teacher else 'students'} {dataset} batch {spec.recipe.batch_size} {models}"
        kind = f"{family} {sorted(j.label for j in unit)}"
        teacher = next((j.spec.teacher.model for j in unit if j.spec.teacher), None)
        cost = (_parameters(teacher) if teacher else 0) + 3 * sum(_parameters(j.spec.student) for j in unit)
        return Work(key=unit[0].run_id, kind=kind, family=family, dataset=dataset, cost=cost, epochs=spec.recipe.epochs,
                    depends_on=frozenset(d for j in unit for d in j.depends_on),
                    produces=frozenset(j.run_id for j in unit))

    def running(self, unit: tuple[Job, ...], finished: bool = False) -> Running:
        """How far a started cohort got, from its runs' metrics.jsonl (its epochs end when
        the slowest run's row is written)."""
        started, before = self.begun[id(unit)]
        now = time.time()
        rows = [store.read_metrics(self.runs / job.run_id) for job in unit]
        epochs = min(len(r) for r in rows)
        # its last epoch ended with its slowest run's row: a run already a row ahead wrote its file later
        last = max((self._metrics(job).stat().st_mtime for job, r in zip(unit, rows) if r and len(r) == epochs),
                   default=started)
        latest = next((r[-1] for r in rows if r and r[-1].get("images_per_s")), None)
        return Running(self.work(unit), elapsed=now - started, epochs_done=max(0, epochs - before),
                       epochs_before=before, last_epoch_at=last - started, finished=finished,
                       first_epoch_at=self.first_epoch.get(id(unit)),
                       train_seconds=(sum(r[epochs - 1].get("epoch_seconds") or 0.0 for r in rows)
                                      if epochs > before else None),
                       samples_per_epoch=latest["images_per_s"] * latest["epoch_seconds"] if latest else None)

    def _metrics(self, job: Job) -> Path:
        return store.RunFolder.of(self.runs, job.run_id).metrics


@functools.cache
def _parameters(model: str) -> int:
    """A model's parameter count (at 10 classes: the head barely matters), the time
    estimate's proxy for what a sample costs it."""
    from ..models import create_model

    return sum(p.numel() for p in create_model(model, num_classes=10).parameters())
