"""An ablation: the Optuna study a suite's ``ablation:`` block defines over one method's
hyperparameters. This module reads and checks the block and says which run a configuration
is; ``kdbench.runner.tuning`` runs the study through the suite runner's worker, and
``kdbench.analysis.ablation`` writes its tables and figures.

The block::

    ablation:
      method: figkd          # a label of the suite's `methods`: its hyperparameters are the base
      pair: 0                # which entry of `pairs` (default 0) ...
      dataset: synthetic-fg  # ... and which of its datasets (default its first)
      trials: 8              # trials per call of `kdbench ablate` (default 20)
      workers: 1             # processes sharing the study (default 1); on the CPU they share the cores
      seed: 0                # seeds the TPE sampler (default 0)
      startup_trials: 4      # random trials before TPE models the space, and before pruning (default 5)
      warmup_epochs: 1       # epochs a trial always trains before it can be pruned (default 1)
      space:                 # hyperparameter: a list of choices, or a range
        wavelet: [haar, db2, sym4]             # a list is always categorical
        level: [1, 2, 3]
        temperature: {low: 1, high: 8, log: true}
        w_kd: {low: 0.5, high: 4}              # optional: log (low > 0), step (not with log)
      heatmap: [wavelet, level]  # optional: two searched hyperparameters, drawn as rows × columns
      storage: null          # an Optuna RDB URL; default sqlite:///<out>/<suite>/ablation/study.db
      study_name: null       # default <suite name>-<method label>

A range is sampled as the hyperparameter's own type (``level`` as an integer, ``temperature``
as a float). Every choice and both ends of every range are checked against the method's
typed hyperparameters before anything trains; errors name the suite file, the key and its
line.

A trial is the suite's run of the method on that pair and dataset with the suite's first
seed and the sampled hyperparameters over the suite's own (``Ablation.spec``): a RunSpec
like any other, so its run id is its content, and a configuration sampled twice, or already
run by the suite, is one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pydantic
from pydantic import Field, NonNegativeInt, PositiveInt

from ..errors import ConfigError, did_you_mean, explain_validation
from ..method import METHODS, Method, parse_hparams
from ..spec import RunSpec, Strict
from . import Job, Suite, load_suite, suite_error

FOLDER = "ablation"  # <out>/<suite>/ablation/: the study's storage, tables and figures


class AblationConfig(Strict):
    """The suite's ``ablation:`` block (see the module docstring)."""

    method: str
    pair: NonNegativeInt = 0
    dataset: str | None = None
    trials: PositiveInt = 20
    workers: PositiveInt = 1
    seed: NonNegativeInt = 0
    startup_trials: NonNegativeInt = 5
    warmup_epochs: NonNegativeInt = 1
    space: dict[str, Any] = Field(min_length=1)
    heatmap: tuple[str, str] | None = None
    storage: str | None = None
    study_name: str | None = None


class Range(Strict):
    """A numeric range of the ``space`` (its type is the hyperparameter's)."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: ``choices``, or a range from ``low`` to ``high``."""

    name: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Ablation:
    """A validated ablation: its suite, its block, its search space and the run it varies."""

    suite: Suite
    config: AblationConfig
    space: list[Param]
    template: Job  # the suite's run of the method on the pair and dataset, first seed

    @property
    def study_name(self) -> str:
        return self.config.study_name or f"{self.suite.name}-{self.config.method}"

    @property
    def teachers(self) -> list[Job]:
        """The suite's jobs the template waits for (its teacher run)."""
        return [job for job in self.suite.jobs if job.run_id in self.template.depends_on]

    def spec(self, hparams: dict[str, Any], seed: int | None = None) -> RunSpec:
        """The template run with ``hparams`` over its own (and ``seed`` instead of the first)."""
        base = self.template.spec
        return base.replace(hparams={**base.hparams, **hparams}, seed=base.seed if seed is None else seed)

    def directory(self, out: str | Path) -> Path:
        """The suite's results folder, which holds the trials' runs beside the suite's."""
        return Path(out) / self.suite.name

    def folder(self, out: str | Path) -> Path:
        """Where the study's storage (by default), tables and figures live."""
        return self.directory(out) / FOLDER

    def storage_url(self, out: str | Path, storage: str | None = None) -> str:
        """``storage``, else the block's, else the SQLite file in ``folder(out)``."""
        return storage or self.config.storage or f"sqlite:///{(self.folder(out) / 'study.db').resolve()}"


def load_ablation(path: str | Path) -> Ablation:
    """Read a suite and validate its ``ablation:`` block; ConfigError names file, key and line."""
    suite = load_suite(path)
    if suite.file.ablation is None:
        raise ConfigError(f"{suite.path}: no 'ablation:' block; see `kdbench ablate --help` for its keys")
    try:
        config = AblationConfig(**suite.file.ablation)
    except pydantic.ValidationError as exc:
        raise _invalid(suite, ["ablation"], exc, AblationConfig) from None
    methods = suite.file.methods
    if config.method not in methods:
        raise suite_error(suite, ["ablation", "method"], f"no method labelled '{config.method}' in 'methods'"
                    f"{did_you_mean(config.method, methods) or '; labels: ' + ', '.join(methods)}")
    if config.pair >= len(suite.file.pairs):
        raise suite_error(suite, ["ablation", "pair"], f"the suite has {len(suite.file.pairs)} pair(s); use 0 to {len(suite.file.pairs) - 1}")
    pair = suite.file.pairs[config.pair]
    dataset = config.dataset or pair.datasets[0]
    if dataset not in pair.datasets:
        raise suite_error(suite, ["ablation", "dataset"], f"pair {config.pair} runs on {', '.join(pair.datasets)}, not '{dataset}'")
    if suite.file.datasets[dataset].val_fraction == 0:
        raise suite_error(suite, ["datasets", dataset, "val_fraction"],
                          "is 0, but an ablation scores its trials on the validation split and never on test; hold "
                          "one out (val_fraction: 0.1)")
    template = next(j for j in suite.jobs if j.label == config.method and j.pair == f"{pair.teacher}→{pair.student}"
                    and j.spec.dataset.name == dataset and j.spec.seed == suite.file.seeds[0])
    method = METHODS.get(template.spec.method)
    space = [_param(suite, method, template.spec.hparams, name, entry) for name, entry in config.space.items()]
    for axis in config.heatmap or ():
        if axis not in config.space:
            raise suite_error(suite, ["ablation", "heatmap"], f"'{axis}' is not searched: a heat-map axis must "
                              f"be a key of 'space' ({', '.join(config.space)})")
    return Ablation(suite, config, space, template)


def _invalid(suite: Suite, loc: list, exc: pydantic.ValidationError,
             model: type[pydantic.BaseModel]) -> ConfigError:
    """A ConfigError with one line per problem of ``exc``, each naming the suite file, key and line."""
    return ConfigError(explain_validation(
        exc, model, line=lambda problem: str(suite_error(suite, [*loc, *problem.loc], problem.detail))))


def _param(suite: Suite, method: type[Method], base: dict[str, Any], name: str, entry: Any) -> Param:
    """A validated ``space`` entry."""
    loc = ["ablation", "space", name]
    fields = method.HParams.model_fields
    if name not in fields:
        raise suite_error(suite, loc, f"method '{method.name}' has no hyperparameter '{name}'"
                    f"{did_you_mean(name, fields) or '; it has ' + ', '.join(fields)}")

    def check(value: Any) -> None:
        try:
            parse_hparams(method, {**base, name: value})
        except ConfigError as exc:
            raise suite_error(suite, loc, f"{value!r} is not a valid value: {exc}") from None

    if isinstance(entry, list):
        if not entry:
            raise suite_error(suite, loc, "the list of choices is empty")
        for choice in entry:
            if not isinstance(choice, (str, int, float, bool, type(None))):
                raise suite_error(suite, loc, f"choice {choice!r}: a choice must be a single value (string, number, bool, null)")
            check(choice)
        return Param(name, choices=tuple(entry))
    if not isinstance(entry, dict):
        raise suite_error(suite, loc, f"give a list of choices or a range {{low, high[, log][, step]}}, not {entry!r}")
    try:
        rng = Range(**entry)
    except pydantic.ValidationError as exc:
        raise _invalid(suite, loc, exc, Range) from None
    kind = fields[name].annotation
    if kind not in (int, float):
        raise suite_error(suite, loc, f"a range needs a numeric hyperparameter; '{name}' is {getattr(kind, '__name__', kind)}: "
                    "give a list of choices")
    ends = [rng.low, rng.high] + ([rng.step] if rng.step is not None else [])
    if kind is int and not all(float(v).is_integer() for v in ends):
        raise suite_error(suite, loc, f"'{name}' is an integer: low, high and step must be whole numbers")
    if rng.low >= rng.high:
        raise suite_error(suite, loc, f"low ({rng.low}) must be below high ({rng.high})")
    if rng.log and (rng.low <= 0 or rng.step is not None):
        raise suite_error(suite, loc, "a log range needs low > 0 and no step")
    if rng.step is not None and rng.step <= 0:
        raise suite_error(suite, loc, f"step must be positive (got {rng.step})")
    check(kind(rng.low))
    check(kind(rng.high))
    return Param(name, low=rng.low, high=rng.high, log=rng.log, step=rng.step, integer=kind is int)
