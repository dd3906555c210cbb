"""``kdbench ablate``: an Optuna study over one method's hyperparameters, from a suite's
``ablation:`` block.

The block::

    ablation:
      method: figkd          # a label of the suite's `methods`: its hyperparameters are the base
      pair: 0                # which entry of `pairs` (default 0) ...
      dataset: synthetic-fg  # ... and which of its datasets (default its first)
      trials: 8              # trials per call of `kdbench ablate` (default 20)
      workers: 1             # processes sharing the study (default 1); on the CPU each gets cores/workers threads
      seed: 0                # seeds the TPE sampler (default 0)
      startup_trials: 4      # random trials before TPE models the space, and before pruning (default 5)
      warmup_epochs: 1       # epochs a trial always trains before it can be pruned (default 1)
      space:                 # hyperparameter: a list of choices, or a range
        wavelet: [haar, db2, sym4]             # a list is always categorical
        level: [1, 2, 3]
        temperature: {low: 1, high: 8, log: true}
        w_kd: {low: 0.5, high: 4}              # optional: log (low > 0), step (not with log)
      storage: null          # an Optuna RDB URL; default sqlite:///<out>/<suite>/ablation/study.db
      study_name: null       # default <suite name>-<method label>

A range is sampled as the hyperparameter's own type (``level`` as an integer, ``temperature``
as a float). Every choice and both ends of every range are checked against the method's
typed hyperparameters before anything trains; errors name the suite file, the key and its
line.

How it runs:

- The teacher is the suite's teacher job for the pair and dataset, trained (or found) in
  ``<out>/<suite>/runs`` like ``kdbench run`` would.
- Each trial is the suite's run of the method on that pair and dataset with the suite's
  first seed and the sampled hyperparameters, trained into the same ``runs`` folder, so a
  configuration sampled twice (or already run by the suite) is trained once; a run is
  locked while it trains, as the runner does.
- The score is validation top-1 (never test) under the suite's selection rule: the best
  epoch's for ``best_val``, the last epoch's for ``last``. Each epoch's validation top-1 is
  reported to Optuna's MedianPruner, which may stop a trial early; a pruned trial's run
  keeps its checkpoint and continues if sampled again. A trial whose configuration cannot
  train (a level too deep for the number of classes, a diverged loss) fails with its reason
  and the study goes on.
- The study lives in its storage: calling ``kdbench ablate`` again runs ``trials`` more
  trials in the same study (a trial left running by a killed process is marked failed by
  Optuna's heartbeat). ``workers`` > 1 starts that many processes on the same storage,
  sharing the trials; each seeds its sampler from (seed, worker, trials so far). A changed
  ``space`` needs a new ``study_name`` (Optuna refuses other choices for a parameter of a
  study). ``--trials 0`` only rewrites the outputs.

Outputs, in ``<out>/<suite>/ablation/``:

- ``trials.csv``, ``trials.md``, ``trials.tex``: one row per trial: number, state, val
  top-1, epochs trained (pruned trials stop early), the sampled hyperparameters, run id and
  the reason of a failure; the best trial in bold. The Markdown and the LaTeX caption also
  give the best configuration and its test accuracy retrained over the suite's seeds.
- ``best.json``: the best trial's number, hyperparameters and val top-1, and its test top-1
  (suite selection rule) for each of the suite's seeds with mean and std, each seed's run id,
  and the seeds whose run failed.
- ``figures/``: ``history`` (optimisation history), ``importances`` (fANOVA parameter
  importances), ``slices`` (val top-1 against each hyperparameter), drawn by
  ``optuna.visualization.matplotlib`` and restyled, and ``wavelet_level`` (mean val top-1
  of the complete trials for each wavelet × level, with the number of trials), each as PDF
  and PNG. A figure that cannot be drawn yet (importances need two complete trials) is
  left out and the reason is printed and written to ``trials.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pydantic
from pydantic import Field, NonNegativeInt, PositiveInt

from kdbench import records
from kdbench.errors import ConfigError, KDBenchError, did_you_mean
from kdbench.method import METHODS, Method, parse_hparams
from kdbench.results import RUNS
from kdbench.runs import ensure_run, finished_record, teacher_weights
from kdbench.spec import RunSpec, Strict
from kdbench.suite import Job, Suite, suite_error, load_suite
from kdbench.training import EngineOptions, train_run

from . import style
from .runs import SELECTION_COLUMN
from .tables import latex_escape, latex_table, markdown_table

HEARTBEAT_SECONDS = 60
HEATMAP = ("wavelet", "level")


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

    def spec(self, hparams: dict[str, Any], seed: int | None = None) -> RunSpec:
        """The template run with ``hparams`` over its own (and ``seed`` instead of the first)."""
        base = self.template.spec
        return base.replace(hparams={**base.hparams, **hparams}, seed=base.seed if seed is None else seed)


def load_ablation(path: str | Path) -> Ablation:
    """Read a suite and validate its ``ablation:`` block; ConfigError names file, key and line."""
    suite = load_suite(path)
    text = suite.path.read_text()
    if suite.file.ablation is None:
        raise ConfigError(f"{suite.path}: no 'ablation:' block; see `kdbench ablate --help` for its keys")
    try:
        config = AblationConfig(**suite.file.ablation)
    except pydantic.ValidationError as exc:
        raise _explain(suite, text, ["ablation"], exc, AblationConfig) from None
    methods = suite.file.methods
    if config.method not in methods:
        raise suite_error(suite, text, ["ablation", "method"], f"no method labelled '{config.method}' in 'methods'"
                    f"{did_you_mean(config.method, methods) or '; labels: ' + ', '.join(methods)}")
    if config.pair >= len(suite.file.pairs):
        raise suite_error(suite, text, ["ablation", "pair"], f"the suite has {len(suite.file.pairs)} pair(s); use 0 to {len(suite.file.pairs) - 1}")
    pair = suite.file.pairs[config.pair]
    dataset = config.dataset or pair.datasets[0]
    if dataset not in pair.datasets:
        raise suite_error(suite, text, ["ablation", "dataset"], f"pair {config.pair} runs on {', '.join(pair.datasets)}, not '{dataset}'")
    template = next(j for j in suite.jobs if j.label == config.method and j.pair == f"{pair.teacher}→{pair.student}"
                    and j.spec.dataset.name == dataset and j.spec.seed == suite.file.seeds[0])
    method = METHODS.get(template.spec.method)
    space = [_param(suite, text, method, template.spec.hparams, name, entry) for name, entry in config.space.items()]
    return Ablation(suite, config, space, template)


def _explain(suite: Suite, text: str, loc: list, exc: pydantic.ValidationError, model: type[pydantic.BaseModel]) -> ConfigError:
    lines = []
    for err in exc.errors():
        where = [*loc, *err["loc"]]
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            message = f"unknown key{did_you_mean(key, model.model_fields) or '; allowed: ' + ', '.join(model.model_fields)}"
        elif err["type"] == "missing":
            message = "missing key"
        else:
            message = f"{err['msg']} (got {err.get('input')!r})"
        lines.append(str(suite_error(suite, text, where, message)))
    return ConfigError("\n".join(lines))


def _param(suite: Suite, text: str, method: type[Method], base: dict[str, Any], name: str, entry: Any) -> Param:
    """A validated ``space`` entry."""
    loc = ["ablation", "space", name]
    fields = method.HParams.model_fields
    if name not in fields:
        raise suite_error(suite, text, loc, f"method '{method.name}' has no hyperparameter '{name}'"
                    f"{did_you_mean(name, fields) or '; it has ' + ', '.join(fields)}")

    def check(value: Any) -> None:
        try:
            parse_hparams(method, {**base, name: value})
        except ConfigError as exc:
            raise suite_error(suite, text, loc, f"{value!r} is not a valid value: {exc}") from None

    if isinstance(entry, list):
        if not entry:
            raise suite_error(suite, text, loc, "the list of choices is empty")
        for choice in entry:
            if not isinstance(choice, (str, int, float, bool, type(None))):
                raise suite_error(suite, text, loc, f"choice {choice!r}: a choice must be a single value (string, number, bool, null)")
            check(choice)
        return Param(name, choices=tuple(entry))
    if not isinstance(entry, dict):
        raise suite_error(suite, text, loc, f"give a list of choices or a range {{low, high[, log][, step]}}, not {entry!r}")
    try:
        rng = Range(**entry)
    except pydantic.ValidationError as exc:
        raise _explain(suite, text, loc, exc, Range) from None
    kind = fields[name].annotation
    if kind not in (int, float):
        raise suite_error(suite, text, loc, f"a range needs a numeric hyperparameter; '{name}' is {getattr(kind, '__name__', kind)}: "
                    "give a list of choices")
    ends = [rng.low, rng.high] + ([rng.step] if rng.step is not None else [])
    if kind is int and not all(float(v).is_integer() for v in ends):
        raise suite_error(suite, text, loc, f"'{name}' is an integer: low, high and step must be whole numbers")
    if rng.low >= rng.high:
        raise suite_error(suite, text, loc, f"low ({rng.low}) must be below high ({rng.high})")
    if rng.log and (rng.low <= 0 or rng.step is not None):
        raise suite_error(suite, text, loc, "a log range needs low > 0 and no step")
    if rng.step is not None and rng.step <= 0:
        raise suite_error(suite, text, loc, f"step must be positive (got {rng.step})")
    check(kind(rng.low))
    check(kind(rng.high))
    return Param(name, low=rng.low, high=rng.high, log=rng.log, step=rng.step, integer=kind is int)


# --- running the study --------------------------------------------------------------------


def run_ablation(suite_path: str | Path, out: str | Path = "results", trials: int | None = None,
                 workers: int | None = None, storage: str | None = None, device: str = "auto",
                 printer: Callable[[str], None] = print) -> list[Path]:
    """Run ``trials`` more trials of the suite's ablation, then write its outputs; returns the files.

    ``trials``, ``workers`` and ``storage`` override the block's values; ``trials=0`` only
    rewrites the outputs from the study as it is.
    """
    ablation = load_ablation(suite_path)
    config = ablation.config
    directory = Path(out) / ablation.suite.name
    runs = directory / RUNS
    folder = directory / "ablation"
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or config.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    trials = config.trials if trials is None else trials
    workers = max(1, min(workers or config.workers, trials))
    engine = EngineOptions(device=device, data_root=ablation.suite.file.data_root, progress=False)
    with _cpu_share(device, workers):
        for dependency in ablation.template.depends_on:
            teacher = next(j for j in ablation.suite.jobs if j.run_id == dependency)
            printer(f"teacher: {teacher.describe()} [{teacher.run_id}]")
            with _locked(runs, teacher.run_id):
                ensure_run(teacher.spec, runs, engine)
        optuna.create_study(study_name=ablation.study_name, storage=_storage(url), direction="maximize",
                            load_if_exists=True)
        printer(f"study '{ablation.study_name}' in {url}: {trials} more trial(s) on {workers} worker(s)")
        shares = [trials // workers + (i < trials % workers) for i in range(workers)]
        arguments = [(str(ablation.suite.path), str(out), url, share, i, workers, device) for i, share in enumerate(shares)]
        with ProcessPoolExecutor(max(1, workers - 1), mp_context=get_context("spawn")) as pool:
            others = [pool.submit(_optimize, *a) for a in arguments[1:]]  # worker 0 is this process
            _optimize(*arguments[0])
            for other in others:
                other.result()
        study = optuna.load_study(study_name=ablation.study_name, storage=_storage(url))
        return write_outputs(ablation, study, runs, folder, engine, printer)


@contextlib.contextmanager
def _cpu_share(device: str, workers: int) -> Iterator[None]:
    """With several CPU workers, each process trains with its share of the cores, as the suite
    runner's jobs do (small models scale better across processes than threads); one worker
    keeps the process's own setting. The setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if workers > 1 and (device == "cpu" or not torch.cuda.is_available()):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _storage(url: str) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS)


@contextlib.contextmanager
def _locked(runs: Path, run_id: str) -> Iterator[None]:
    """Hold ``runs/<run id>.lock`` (the runner's lock), waiting for another process that holds it."""
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{run_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _optimize(suite_path: str, out: str, url: str, trials: int, worker: int, workers: int, device: str) -> None:
    """Run ``trials`` trials of the study in this process, as worker ``worker`` of ``workers``."""
    ablation = load_ablation(suite_path)
    config = ablation.config
    engine = EngineOptions(device=device, data_root=ablation.suite.file.data_root, progress=False)
    study = optuna.load_study(study_name=ablation.study_name, storage=_storage(url))
    seed = int(np.random.SeedSequence([config.seed, worker, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.startup_trials)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials, n_warmup_steps=config.warmup_epochs)
    runs = Path(out) / ablation.suite.name / RUNS
    with _cpu_share(device, workers):
        study.optimize(lambda trial: _objective(trial, ablation, runs, engine), n_trials=trials, catch=(KDBenchError,))


def _objective(trial: optuna.Trial, ablation: Ablation, runs: Path, engine: EngineOptions) -> float:
    """Train (or find) the trial's run and return its validation score; prunes per epoch."""
    spec = ablation.spec({p.name: p.suggest(trial) for p in ablation.space})
    trial.set_user_attr("run_id", spec.run_id)

    def on_epoch(epoch: int, row: dict[str, Any]) -> None:
        trial.report(row["val_top1"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val top-1 {row['val_top1']:.2f} after epoch {epoch} is below the median")

    with _locked(runs, spec.run_id):
        record = finished_record(runs, spec.run_id)
        for row in record["metrics"] if record else records.read_metrics(runs / spec.run_id):
            on_epoch(row["epoch"], row)  # epochs trained before, by an earlier trial or the suite
        if record is None:
            try:
                record = train_run(spec, runs / spec.run_id, replace(engine, on_epoch=on_epoch), teacher_weights(spec, runs))
            except KDBenchError as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
                raise
    return validation_score(record, ablation.suite.file.selection)


def validation_score(record: dict[str, Any], selection: str) -> float:
    """A run's val top-1 under the selection rule: the best epoch's, or the last epoch's."""
    return record["summary"]["val_top1_best"] if selection == "best_val" else record["metrics"][-1]["val_top1"]


# --- outputs -----------------------------------------------------------------------------


def trials_frame(study: optuna.Study, names: list[str]) -> pd.DataFrame:
    """One row per trial: trial, state, val_top1 (complete trials only: Optuna keeps a pruned trial's last
    reported value, which is no score), epochs, the hyperparameters ``names``, run_id, error."""
    complete = optuna.trial.TrialState.COMPLETE
    rows = [{"trial": t.number, "state": t.state.name, "val_top1": t.value if t.state == complete else None,
             "epochs": max(t.intermediate_values, default=None), **t.params,
             "run_id": t.user_attrs.get("run_id"), "error": t.user_attrs.get("error")} for t in study.trials]
    return pd.DataFrame(rows, columns=["trial", "state", "val_top1", "epochs", *names, "run_id", "error"])


def write_outputs(ablation: Ablation, study: optuna.Study, runs: Path, folder: Path, engine: EngineOptions,
                  printer: Callable[[str], None] = print) -> list[Path]:
    """Retrain the best configuration over the suite's seeds; write tables, ``best.json`` and figures."""
    names = [p.name for p in ablation.space]
    frame = trials_frame(study, names)
    complete = frame[frame["state"] == "COMPLETE"]
    best = _retrain_best(ablation, study, runs, engine, printer) if len(complete) else None
    (folder / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    notes: list[str] = []
    figures = folder / "figures"
    drawn = [
        *_optuna_figure("history", optuna.visualization.matplotlib.plot_optimization_history, study,
                        figures / "history", style.SINGLE, 0.75, notes),
        *_optuna_figure("importances", optuna.visualization.matplotlib.plot_param_importances, study,
                        figures / "importances", style.SINGLE, 0.75, notes),
        *_optuna_figure("slices", optuna.visualization.matplotlib.plot_slice, study,
                        figures / "slices", style.DOUBLE, 0.3, notes),
        *_heatmap(complete, figures / "wavelet_level", notes),
    ]
    summary = _best_text(ablation, best)
    for line in [summary, *(f"figure left out: {note}" for note in notes)]:
        printer(line)
    return [folder / "best.json", *_trial_tables(frame, names, summary, notes, ablation.study_name, folder), *drawn]


def _trial_tables(frame: pd.DataFrame, names: list[str], summary: str, notes: list[str], study: str,
                  folder: Path) -> list[Path]:
    """``trials.csv``, ``trials.md`` and ``trials.tex``; the best complete trial's score in bold."""
    header = ["Trial", "State", "Val top-1", "Epochs", *names, "Run", "Error"]
    body = [[str(t.trial), t.state, _number(t.val_top1), _number(t.epochs), *(_number(getattr(t, n)) for n in names),
             _number(t.run_id), _number(t.error).split("\n")[0][:100]] for t in frame.itertuples()]
    best = frame["val_top1"].idxmax() if frame["val_top1"].notna().any() else None
    paths = [folder / "trials.csv", folder / "trials.md", folder / "trials.tex"]
    frame.to_csv(paths[0], index=False)
    bold = [[f"**{c}**" if i == best and k == 2 else c for k, c in enumerate(row)] for i, row in enumerate(body)]
    paths[1].write_text(f"# Ablation {study}\n\n{summary}\n\n" + markdown_table(header, bold)
                        + "".join(f"\nFigure left out: {note}\n" for note in notes))
    tex = [[f"\\textbf{{{c}}}" if i == best and k == 2 else latex_escape(c) for k, c in enumerate(row)]
           for i, row in enumerate(body)]
    paths[2].write_text(latex_table([[latex_escape(h) for h in header]], tex, latex_escape(summary), f"tab:{study}",
                                    "rlrr" + "c" * len(names) + "ll"))
    return paths


def _retrain_best(ablation: Ablation, study: optuna.Study, runs: Path, engine: EngineOptions,
                  printer: Callable[[str], None]) -> dict[str, Any]:
    """The best trial and its test accuracy, trained with each of the suite's seeds."""
    trial = study.best_trial
    column = SELECTION_COLUMN[ablation.suite.file.selection]
    tests: dict[int, float] = {}
    failed: dict[int, str] = {}
    run_ids: dict[int, str] = {}
    for seed in ablation.suite.file.seeds:
        spec = ablation.spec(trial.params, seed)
        run_ids[seed] = spec.run_id
        printer(f"best configuration, seed {seed}: {spec.describe()} [{spec.run_id}]")
        try:
            with _locked(runs, spec.run_id):
                tests[seed] = ensure_run(spec, runs, engine)["summary"][column]
        except Exception as exc:  # recorded in the run's failed.json by ensure_run; the other seeds go on
            failed[seed] = f"{type(exc).__name__}: {exc}"
    values = list(tests.values())
    return {
        "study": ablation.study_name, "trial": trial.number, "params": trial.params, "val_top1": trial.value,
        "selection": ablation.suite.file.selection,
        "test_top1": {"mean": statistics.mean(values) if values else None,
                      "std": statistics.stdev(values) if len(values) > 1 else None,
                      "n": len(values), "per_seed": tests, "failed": failed},
        "run_ids": run_ids,
    }


def _best_text(ablation: Ablation, best: dict[str, Any] | None) -> str:
    if best is None:
        return f"Ablation of {ablation.config.method}: no trial has completed yet."
    test = best["test_top1"]
    spread = f" ± {test['std']:.2f}" if test["std"] is not None else ""
    accuracy = f"{test['mean']:.2f}{spread}" if test["mean"] is not None else "–"
    params = ", ".join(f"{k}={_number(v)}" for k, v in best["params"].items())
    failed = f" ({len(test['failed'])} seed(s) failed: {', '.join(map(str, test['failed']))})" if test["failed"] else ""
    return (f"Ablation of {ablation.config.method} on {ablation.template.spec.dataset.name}, {ablation.template.pair}, "
            f"scored by validation top-1 (selection rule: {best['selection']}). Best: trial {best['trial']} ({params}), "
            f"val top-1 {best['val_top1']:.2f}; retrained with seeds {', '.join(map(str, ablation.suite.file.seeds))}: "
            f"test top-1 {accuracy} over {test['n']} run(s){failed}.")


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def _optuna_figure(name: str, plot: Callable[..., Any], study: optuna.Study, stem: Path, width: float, aspect: float,
                   notes: list[str]) -> list[Path]:
    """An ``optuna.visualization.matplotlib`` figure, restyled; a note instead when it cannot be drawn."""
    style.apply()
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna switches to ggplot: keep that local
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. a slice of a parameter with a single value
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"{name}: {exc}")
            return []
    fig = np.ravel(axes)[0].figure
    fig.set_size_inches(width, width * aspect)
    style.restyle(fig)
    return style.save(fig, stem)


def _heatmap(complete: pd.DataFrame, stem: Path, notes: list[str]) -> list[Path]:
    """Mean val top-1 of the complete trials per wavelet × level, annotated with the count."""
    import seaborn as sns

    rows, cols = HEATMAP
    if complete.empty or not set(HEATMAP) <= set(complete.columns):
        notes.append(f"wavelet_level: needs complete trials that vary {rows} and {cols}")
        return []
    stats = complete.groupby([rows, cols])["val_top1"].agg(["mean", "count"])
    mean, count = stats["mean"].unstack(), stats["count"].unstack()
    labels = mean.map(lambda v: "" if np.isnan(v) else f"{v:.1f}") + count.map(lambda n: "" if np.isnan(n) else f"\nn={n:.0f}")
    fig, axes = style.figure(style.SINGLE, aspect=0.8)
    sns.heatmap(mean, annot=labels, fmt="", cmap="viridis", ax=axes[0, 0], cbar_kws={"label": "mean val top-1 (%)"},
                linewidths=0.5, annot_kws={"fontsize": 6})
    axes[0, 0].set_xlabel(cols)
    axes[0, 0].set_ylabel(rows)
    axes[0, 0].grid(False)
    return style.save(fig, stem)
