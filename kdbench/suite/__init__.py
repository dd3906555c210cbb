"""Suites: a YAML file of datasets × teacher/student pairs × methods × seeds, validated
before anything runs and expanded into a job graph of RunSpecs (teachers first).

A suite file::

    name: quick                      # results go to <out>/<name>/
    seeds: [0, 1]
    selection: best_val              # or last: which epoch's test accuracy reports use
    teacher_weights: last            # or best_val / best_test: the trained teacher's epoch students get
    recipe: {epochs: 6, lr: 0.05}    # student recipe (kdbench.spec.Recipe)
    teacher_recipe: {epochs: 10}     # optional; default: the student recipe
    datasets:
      digits: {options: {image_size: 16}, recipe: {batch_size: 32}}
    pairs:
      - {dataset: digits, teacher: resnet20, student: resnet8,
         hparams: {dkd: {beta: 2}}}                       # per-pair overrides by method label
      - {dataset: cifar100, teacher: resnet32x4, student: resnet8x4,
         teacher_checkpoint: ckpts/resnet32x4.pth}       # a published teacher instead of training one
    methods:                          # label: hyperparameters
      none: {}
      kd: {temperature: 4}
      figkd_random: {method: figkd, class_order: random,  # a label that is not a method names one
                     control: "class order"}             # a control: reported apart, saying what it isolates
      mlkd_strong: {method: mlkd, recipe: {augment: strong}}  # the label's own recipe, applied last
    reference: kd                     # the label every other is compared with, paired by seed
    paper:                            # published numbers, set against ours on their rule by reports
      digits/resnet20/resnet8: {kd: 90.1, dkd: {value: 91.0, source: "a number's own source"}}
    sources: {kd: "Hinton et al. 2015, Table 1"}   # where each label's published numbers come from
    protocol_notes: ["crops from a 256-px copy"]    # departures from the published protocol
    executor: {kind: local, workers: 2}  # processes_per_job: 4 trains each job on 4 GPUs
    method_files: [my_methods/]       # extra method files to load (paths relative to the suite)
    track: [tensorboard]              # stream every epoch to TensorBoard and/or wandb (kdbench.engine.tracking)

Errors name the file, the key path, the line where known, and a suggestion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import Field, NonNegativeInt, PositiveInt

from ..errors import ConfigError, KDBenchError, ValidationProblem, did_you_mean, explain_validation
from ..spec import DataSpec, Recipe, RunSpec, Strict, TeacherRef, TeacherWeights


class DatasetEntry(Strict):
    options: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    recipe: dict[str, Any] = Field(default_factory=dict)  # overrides of the suite recipe
    teacher_recipe: dict[str, Any] = Field(default_factory=dict)


class PairEntry(Strict):
    dataset: str | list[str]
    teacher: str
    student: str
    teacher_checkpoint: str | None = None
    teacher_seed: NonNegativeInt = 0
    hparams: dict[str, dict[str, Any]] = Field(default_factory=dict)  # method label → overrides
    recipe: dict[str, Any] = Field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


class ExecutorEntry(Strict):
    kind: Literal["local", "slurm"] = "local"
    workers: PositiveInt | None = None  # local: parallel jobs (default: one per GPU, else one per core up to 8)
    # Runs sharing data, seed, recipe and teacher train together, one data stream and one
    # teacher forward per batch, at most this many at once; 1: off. A cohort that runs out
    # of device memory is halved and goes on from its runs' last epochs.
    cohort_size: PositiveInt = 8
    # Processes that train each job together, data-parallel (one GPU each; on CPU, gloo
    # processes): for sets too big for one GPU. Slurm: the default of tasks_per_node.
    processes_per_job: PositiveInt = 1
    slurm: dict[str, Any] = Field(default_factory=dict)  # submitit parameters (partition, timeout_min, …)


class PaperNumber(Strict):
    """A published number with its own source, where it differs from its label's."""

    value: float
    source: str = Field(min_length=1)


class SuiteFile(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    data_root: str | None = None
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1)
    # Which epoch's test accuracy is the suite's number: the best on the validation split,
    # or the last (a published protocol, trained on the whole training split).
    selection: Literal["best_val", "last"] = "best_val"
    teacher_weights: TeacherWeights = "last"  # the epoch of a trained teacher that students learn from
    recipe: dict[str, Any] = Field(default_factory=dict)
    teacher_recipe: dict[str, Any] | None = None
    datasets: dict[str, DatasetEntry] = Field(min_length=1)
    pairs: list[PairEntry] = Field(min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    reference: str = "kd"  # paired statistics compare every label with this one
    # Published top-1 by "dataset/teacher/student" and label; where each label's numbers
    # come from (``sources``, or a number's own); the suite's known departures from the
    # published protocol. Every report prints them in its protocol card.
    paper: dict[str, dict[str, float | PaperNumber]] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict)
    protocol_notes: list[str] = Field(default_factory=list)
    executor: ExecutorEntry = Field(default_factory=ExecutorEntry)
    method_files: list[str] = Field(default_factory=list)
    track: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)  # kdbench.engine.tracking sinks
    ablation: dict[str, Any] | None = None  # read by kdbench.suite.ablation

    @pydantic.field_validator("seeds")
    @classmethod
    def _seeds_once(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {', '.join(map(str, repeated))} is listed more than once; each seed is one "
                             "repetition of every run, so list each seed once")
        return seeds

    @property
    def paper_values(self) -> dict[str, dict[str, float]]:
        """The published numbers alone, by "dataset/teacher/student" and label."""
        return {key: {label: n.value if isinstance(n, PaperNumber) else n for label, n in numbers.items()}
                for key, numbers in self.paper.items()}

    @property
    def paper_sources(self) -> dict[str, dict[str, str]]:
        """The numbers that name their own source, as ``paper_values``."""
        sourced = {key: {label: n.source for label, n in numbers.items() if isinstance(n, PaperNumber)}
                   for key, numbers in self.paper.items()}
        return {key: labels for key, labels in sourced.items() if labels}


# Keys of a ``methods:`` entry that describe the label rather than set a hyperparameter.
METHOD = "method"
CONTROL = "control"
RECIPE = "recipe"  # recipe overrides of one label (in ``methods`` or in a pair's ``hparams``), applied last
META = (METHOD, CONTROL, RECIPE)
MERGE = "tag:yaml.org,2002:merge"  # YAML's ``<<`` key


@dataclass(frozen=True)
class Job:
    """One run of a suite: its spec, the label its method goes by, what it waits for."""

    spec: RunSpec
    label: str  # method label, or "teacher"
    pair: str  # "teacher→student"
    depends_on: tuple[str, ...] = ()

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def is_teacher(self) -> bool:
        return self.label == "teacher"

    def describe(self) -> str:
        return f"{self.spec.dataset.name:<14} {self.pair:<24} {self.label:<16} seed={self.spec.seed}"


@dataclass(frozen=True)
class SourceLines:
    """Where each key and list item of a YAML file is, read once from its node tree, so that
    every message about the file names the line of what it is about."""

    keys: dict[tuple[str | int, ...], int]  # key path → the line of its key (a list item: its own line)
    values: dict[tuple[str | int, ...], int]  # key path → the line its value starts on (): the document's

    @classmethod
    def of(cls, node: yaml.Node | None) -> SourceLines:
        lines = cls({}, {})

        def walk(node: yaml.Node, path: tuple[str | int, ...], above: frozenset[int]) -> None:
            lines.values[path] = node.start_mark.line + 1
            children = ([(str(k.value), k, v) for k, v in node.value if k.tag != MERGE]  # merged keys: the mapping's line
                        if isinstance(node, yaml.MappingNode) else
                        [(i, v, v) for i, v in enumerate(node.value)] if isinstance(node, yaml.SequenceNode) else [])
            for part, key, value in children if id(node) not in above else ():  # not round an alias of an ancestor
                lines.keys[(*path, part)] = key.start_mark.line + 1
                walk(value, (*path, part), above | {id(node)})

        if node is not None:
            walk(node, (), frozenset())
        return lines

    def key(self, loc: list | tuple) -> str:
        """' (line N)' of the deepest key of ``loc`` (mapping keys, list positions) in the file, or ''."""
        line = None
        for depth in range(1, len(loc) + 1):
            if (found := self.keys.get(tuple(loc[:depth]))) is None:
                break
            line = found
        return f" (line {line})" if line else ""

    def problem(self, problem: ValidationProblem) -> str:
        """' (line N)' of a pydantic problem: its key's, or a missing key's mapping's (where its value starts)."""
        loc = problem.loc[:-1]
        return (f" (line {self.values[loc]})" if loc in self.values else "") if problem.kind == "missing" else self.key(problem.loc)


@dataclass
class Suite:
    path: Path
    file: SuiteFile
    lines: SourceLines
    jobs: list[Job] = field(default_factory=list)
    recipe_overrides: dict[str, Any] = field(default_factory=dict)  # from the command line, applied last

    @property
    def name(self) -> str:
        return self.file.name

    def method_files(self) -> list[Path]:
        return [(self.path.parent / p).resolve() for p in self.file.method_files]

    @property
    def controls(self) -> dict[str, str]:
        """Control labels and what each isolates."""
        return {label: entry[CONTROL] for label, entry in self.file.methods.items() if CONTROL in entry}

    @property
    def reference(self) -> str | None:
        """The label paired statistics compare with; None when the suite has no such label
        and did not name one."""
        return self.file.reference if self.file.reference in self.file.methods else None


def load_suite(path: str | Path, recipe_overrides: dict[str, Any] | None = None) -> Suite:
    """Read, validate and expand a suite file; raises ConfigError naming file, key and line.
    ``recipe_overrides`` (``kdbench run --precision``) apply last to every recipe, teachers'
    included."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file '{path}' does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a suite is a YAML file such "
                          "as suites/quick.yaml") from None
    loader = UniqueKeyLoader(text)
    try:  # yaml.load's steps, keeping the node tree for the lines
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    except DuplicateKey as exc:
        raise ConfigError(f"{path} (line {exc.line}): key '{exc.key}' is given twice in one mapping (first on line "
                          f"{exc.first}); YAML would keep only the last, so remove or merge one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines = SourceLines.of(node)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite is a YAML mapping with keys {', '.join(SuiteFile.model_fields)}")
    try:
        file = SuiteFile(**raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain_validation(exc, SuiteFile,
                                             line=lambda problem: f"{path}{lines.problem(problem)}: {problem}")) from None
    suite = Suite(path, file, lines, recipe_overrides=dict(recipe_overrides or {}))
    for index, (entry, resolved) in enumerate(zip(file.method_files, suite.method_files())):
        if not resolved.exists():
            raise suite_error(suite, ["method_files", index],
                              f"'{entry}' does not exist (looked for {resolved}); method files are found relative "
                              "to the suite file")
    suite.jobs = _expand(suite)
    return suite


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"key {key!r} on line {line} was given on line {first}")
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a key given twice in one mapping (PyYAML keeps the last one
    silently). Keys merged in with ``<<`` may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def suite_error(suite: Suite, loc: list, message: str, line_of: list | None = None) -> KDBenchError:
    """A ConfigError naming the suite file, the line of ``loc`` (or of ``line_of``, where the
    value at fault is set) where known, and the key path."""
    return ConfigError(f"{suite.path}{suite.lines.key(loc if line_of is None else line_of)}: "
                       f"'{'.'.join(map(str, loc))}': {message}")


def _recipe(suite: Suite, loc: list, *layers: tuple[list, dict[str, Any]]) -> Recipe:
    """The recipe of ``layers`` (each the key path it is written at, and its keys), later
    ones winning, the command line's overrides last. An error names ``loc`` and the line of
    the layer that set the key at fault."""
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged.update(layer)
    merged.update(suite.recipe_overrides)
    try:
        return Recipe(**merged)
    except pydantic.ValidationError as exc:
        def set_at(problem: ValidationProblem) -> list | None:
            key = problem.loc[0] if problem.loc else None
            return None if key in suite.recipe_overrides else next(
                ([*at, *problem.loc] for at, layer in reversed(layers) if key in layer), None)

        def problem_at(problem: ValidationProblem) -> str:
            if problem.kind == "unknown":
                return str(suite_error(suite, loc, f"unknown recipe key '{problem.key}'{problem.hint}", set_at(problem)))
            return str(suite_error(suite, [*loc, *problem.loc], problem.detail, set_at(problem)))
        raise ConfigError(explain_validation(exc, Recipe, line=problem_at)) from None


def _expand(suite: Suite) -> list[Job]:
    from ..data import DATASETS
    from ..method import METHODS, create_method, load_method_files
    from ..models import is_model

    file = suite.file
    for method_file in suite.method_files():
        load_method_files(method_file)
    for name in file.datasets:
        if name not in DATASETS:
            raise suite_error(suite, ["datasets", name], f"unknown dataset{did_you_mean(name, DATASETS.names()) or '; known: ' + ', '.join(DATASETS.names())}")
    for name, entry in file.datasets.items():
        if entry.val_fraction == 0:
            for key, value in (("selection", file.selection), ("teacher_weights", file.teacher_weights)):
                if value == "best_val":
                    raise suite_error(suite, ["datasets", name, "val_fraction"],
                                      f"is 0: no validation split to select an epoch on, but '{key}' is best_val; set "
                                      f"'{key}: last' (the whole training split and its last epoch, as the published "
                                      "protocols train) or hold out a validation split (val_fraction: 0.1)")
    method_of = {}
    for label, hparams in file.methods.items():
        method = hparams.get(METHOD, label)
        if method not in METHODS:
            raise suite_error(suite, ["methods", label],
                        f"unknown method '{method}'{did_you_mean(method, METHODS.names()) or '; known: ' + ', '.join(METHODS.names())}"
                        + ("" if METHOD in hparams else "; a label that is not a method needs 'method: <name>'"))
        if not isinstance(hparams.get(CONTROL, ""), str) or hparams.get(CONTROL) == "":
            raise suite_error(suite, ["methods", label, CONTROL], "say in words what this control isolates, e.g. control: \"class order\"")
        method_of[label] = method
    if "reference" in file.model_fields_set and file.reference not in file.methods:
        raise suite_error(suite, ["reference"], f"no method labelled '{file.reference}' in 'methods'{did_you_mean(file.reference, file.methods)}")
    jobs: dict[str, Job] = {}
    for i, pair in enumerate(file.pairs):
        for role in ("teacher", "student"):
            model = getattr(pair, role)
            if not is_model(model):
                from ..models import list_models

                raise suite_error(suite, ["pairs", i, role], f"unknown model '{model}'{did_you_mean(model, list_models())}")
        for label in pair.hparams:
            if label not in file.methods:
                raise suite_error(suite, ["pairs", i, "hparams", label], f"no method labelled '{label}' in 'methods'{did_you_mean(label, file.methods)}")
        pair_name = f"{pair.teacher}→{pair.student}"
        for dataset_name in pair.datasets:
            entry = file.datasets.get(dataset_name)
            if entry is None:
                raise suite_error(suite, ["pairs", i, "dataset"],
                            f"dataset '{dataset_name}' is not in 'datasets'{did_you_mean(dataset_name, file.datasets)}")
            try:
                data = DataSpec(name=dataset_name, val_fraction=entry.val_fraction, options=entry.options)
            except KDBenchError as exc:
                raise suite_error(suite, ["datasets", dataset_name, "options"], str(exc)) from None
            layers = ((["recipe"], file.recipe), (["datasets", dataset_name, RECIPE], entry.recipe),
                      (["pairs", i, RECIPE], pair.recipe))
            recipe = _recipe(suite, ["recipe"], *layers)
            base_layer = layers[0] if file.teacher_recipe is None else (["teacher_recipe"], file.teacher_recipe)
            teacher_recipe = _recipe(suite, ["teacher_recipe"], base_layer,
                                     (["datasets", dataset_name, "teacher_recipe"], entry.teacher_recipe))
            if pair.teacher_checkpoint:
                # $VARS let one suite serve machines that keep checkpoints in different places
                checkpoint = (suite.path.parent / os.path.expandvars(pair.teacher_checkpoint)).expanduser().resolve()
                teacher_ref = TeacherRef(model=pair.teacher, checkpoint=str(checkpoint))
                teacher_deps: tuple[str, ...] = ()
            else:
                teacher_spec = RunSpec(dataset=data, student=pair.teacher, method="none", recipe=teacher_recipe, seed=pair.teacher_seed)
                jobs.setdefault(teacher_spec.run_id, Job(teacher_spec, "teacher", pair_name))
                teacher_ref = TeacherRef(model=pair.teacher, run_id=teacher_spec.run_id, weights=file.teacher_weights)
                teacher_deps = (teacher_spec.run_id,)
            for label, base in file.methods.items():
                overrides = pair.hparams.get(label, {})
                hparams = {k: v for k, v in {**base, **overrides}.items() if k not in META}
                label_recipe = recipe
                if RECIPE in base or RECIPE in overrides:
                    own = (["methods", label, RECIPE], base.get(RECIPE, {}))
                    overridden = (["pairs", i, "hparams", label, RECIPE], overrides.get(RECIPE, {}))
                    loc = overridden[0] if RECIPE in overrides else own[0]
                    label_recipe = _recipe(suite, loc, *layers, own, overridden)
                try:
                    spec = RunSpec(dataset=data, student=pair.student, method=method_of[label], hparams=hparams,
                                   teacher=teacher_ref, recipe=label_recipe, seed=file.seeds[0])
                    needs_teacher = create_method(spec.method, **spec.hparams).needs.teacher
                except KDBenchError as exc:
                    loc = ["pairs", i, "hparams", label] if label in pair.hparams else ["methods", label]
                    raise suite_error(suite, loc, str(exc)) from None
                for seed in file.seeds:
                    run = spec.replace(seed=seed, teacher=teacher_ref if needs_teacher else None)
                    jobs.setdefault(run.run_id, Job(run, label, pair_name, teacher_deps if needs_teacher else ()))
    return sorted(jobs.values(), key=lambda j: not j.is_teacher)
