"""The time a suite has left, estimated from what its own jobs have done.

A job (a cohort: one process training its runs in lock-step) is measured by its own
epochs: its seconds per epoch (teacher forward and per-epoch evaluation included) from its
first epoch's end to its last's, once it has two; its start-up (process, data, models)
as the time to its first epoch's end less one epoch; its tail as the time from its last
epoch to its end (final evaluation, files). That gives

- a running job's time left: its seconds per epoch × the epochs it has left, plus the
  jobs' tail seen so far, less the time since its last epoch;
- a queued job's time: its epochs × its cost at the seconds per cost-epoch observed on
  jobs of its kind (same data set, batch size, role and models); of a kind not seen yet,
  at the seconds per cost-sample of every job seen so far, times its data set's samples
  per epoch when a job on that set reported them (else per cost-epoch).

A job's cost is what one sample costs it in parameters touched: the teacher's forward
(once for the cohort) plus three times (forward and backward) each student's parameter
count; a proxy for its FLOPs, which within the zoo's families (ResNets, WRNs at one
resolution) follow the parameters to a few per cent.

The jobs then go onto the runner's slots as the runner would start them: each as soon
as a slot is free and the teachers it waits for have finished. Until one job has finished
an epoch there is no basis, and ``estimate`` answers None (say "estimating…").
"""

from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Work:
    """A job as the estimate sees it."""

    key: str  # identifies the job (its first run id)
    kind: str  # jobs of one kind train at one speed per run-epoch
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
    last_epoch_at: float = 0.0  # seconds since it started when its last epoch ended
    first_epoch_at: float | None = None  # seconds since it started when its first epoch ended, if seen
    samples_per_epoch: float | None = None  # what one of its runs sees per epoch, once reported
    finished: bool = False  # ended ``elapsed`` seconds after it started


@dataclass
class TimeLeft:
    """Rates observed so far, and the estimate they give; pure (times are passed in)."""

    slots: int
    per_cost_epoch: dict[str, float] = field(default_factory=dict)  # kind → seconds per cost-epoch
    samples_per_epoch: dict[str, float] = field(default_factory=dict)  # data set → samples one run sees per epoch
    _by_job: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # job key → (kind, dataset, rate)
    _tails: list[float] = field(default_factory=list)  # finished jobs' seconds from their last epoch to their end
    _startups: dict[str, float] = field(default_factory=dict)  # job key → seconds before its first epoch began

    @property
    def tail(self) -> float:
        """Seconds a job takes after its last epoch (final evaluation, files), as seen so far."""
        return statistics.median(self._tails) if self._tails else 0.0

    @property
    def startup(self) -> float:
        """Seconds a job takes before its first epoch begins, as seen so far."""
        return statistics.median(self._startups.values()) if self._startups else 0.0

    @staticmethod
    def epoch_seconds(job: Running) -> float:
        """A job's seconds per epoch: between its first and last epochs' ends once it has
        two, else to its first epoch's end from its start."""
        if job.first_epoch_at is not None and job.epochs_done >= 2:
            return (job.last_epoch_at - job.first_epoch_at) / (job.epochs_done - 1)
        return job.last_epoch_at / job.epochs_done

    def observe(self, job: Running) -> None:
        """Learn from a job that finished at least one epoch (a finished job: all of them)."""
        if job.samples_per_epoch:
            self.samples_per_epoch[job.work.dataset] = job.samples_per_epoch
        if job.epochs_done < 1 or job.last_epoch_at <= 0:
            return
        if job.finished:
            self._tails.append(max(0.0, job.elapsed - job.last_epoch_at))
        per_epoch = self.epoch_seconds(job)
        if job.first_epoch_at is not None and job.epochs_done >= 2:
            self._startups[job.work.key] = max(0.0, job.first_epoch_at - per_epoch)
        rate = per_epoch / job.work.cost
        self._by_job[job.work.key] = (job.work.kind, job.work.dataset, rate)
        rates = [r for kind, _, r in self._by_job.values() if kind == job.work.kind]
        self.per_cost_epoch[job.work.kind] = statistics.median(rates)

    def cost_epoch_seconds(self, work: Work) -> float | None:
        """Seconds per cost-epoch expected of ``work``, None without any basis."""
        if work.kind in self.per_cost_epoch:
            return self.per_cost_epoch[work.kind]
        if not self._by_job:
            return None
        per_sample = [rate / self.samples_per_epoch[dataset] for _, dataset, rate in self._by_job.values()
                      if dataset in self.samples_per_epoch]
        if per_sample and work.dataset in self.samples_per_epoch:
            return statistics.median(per_sample) * self.samples_per_epoch[work.dataset]
        return statistics.median(rate for _, _, rate in self._by_job.values())

    def remaining(self, job: Running) -> float | None:
        """Seconds the running job has left."""
        left = job.work.epochs - job.epochs_before - job.epochs_done
        if job.epochs_done >= 1 and job.last_epoch_at > 0:
            return max(0.0, self.epoch_seconds(job) * left + self.tail - (job.elapsed - job.last_epoch_at))
        rate = self.cost_epoch_seconds(job.work)
        return None if rate is None else max(0.0, self.startup + rate * job.work.cost * left + self.tail
                                             - job.elapsed)

    def estimate(self, running: list[Running], queued: list[Work]) -> float | None:
        """Seconds until the last job finishes, None until there is a basis: the running
        jobs hold their slots until they finish, the queued ones start in order, each on
        the first free slot once the jobs it waits for have finished."""
        if not self._by_job:
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
            done = start + self.startup + rate * work.cost * work.epochs + self.tail
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
