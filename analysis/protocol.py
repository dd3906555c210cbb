"""The protocol card: how a report's numbers were obtained, read off what ran.

A reader holding a table against a paper needs the protocol beside it. The card is derived
from the specs of the suite's runs (their records or ``spec.json``), not from what the suite
file says, so it cannot disagree with what trained; the suite adds what no spec holds: where
each published number comes from (``sources``, a number's own ``source``), its known
departures from the published protocol (``protocol_notes``), and each method's documented
differences from its authors' released code (``Method.release_differences``), all carried
by the manifest.

``protocol_card`` returns rows of (section, item, value). Where runs differ in a setting
(a per-student learning rate, one label's recipe), the value most runs have comes first,
then each other value with the pairs or labels that have it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pandas as pd

from kdbench.spec import SELECTED_EPOCH, DataSpec, Recipe
from kdbench.store import Manifest

from .style import display_name
from .tables import Grid, latex_escape, latex_table, markdown_table

SELECTED_ON_TEST = ("Beside the published numbers: the best test epoch of each run (test_top1_max), the rule of "
                    "mdistiller and RepDistiller; selected on test, so optimistic, and never mixed with the suite's "
                    "number")


def protocol_card(runs: pd.DataFrame, manifest: Manifest) -> list[tuple[str, str, str]]:
    """(section, item, value) rows; ``runs`` is ``analysis.runs.suite_runs``'s frame (its
    ``spec.*`` columns)."""
    specs = runs.dropna(subset=["spec.student"]) if "spec.student" in runs else runs.iloc[:0]
    students, teachers = specs[specs["role"] != "teacher"], specs[specs["role"] == "teacher"]
    rows: list[tuple[str, str, str]] = []
    for dataset, runs_of_set in students.groupby("dataset", sort=False):
        fractions = sorted({float(f) for f in runs_of_set["spec.dataset.val_fraction"]})
        rows.append(("Data", f"{dataset}: training images", "; ".join(
            DataSpec(name=dataset, val_fraction=f).training_split for f in fractions)))
    recipes = [(_recipe(row), _where(row)) for _, row in students.iterrows()]
    for item in RECIPE_ITEMS:
        rows.append(("Students", item, _spread_text([(RECIPE_ITEMS[item](r), where) for r, where in recipes])))
    rows += _teacher_rows(students, teachers, manifest)
    rows.append(("Numbers", "reported", f"test top-1 at {SELECTED_EPOCH[manifest.selection]} "
                                         f"(selection: {manifest.selection}), mean ± std over seeds"))
    if manifest.paper:
        rows.append(("Numbers", "selected on test", SELECTED_ON_TEST))
    for label, source in manifest.sources.items():
        rows.append(("Published numbers", display_name(label), source))
    for key, sourced in manifest.paper_sources.items():
        for label, source in sourced.items():
            rows.append(("Published numbers", f"{display_name(label)}, {key}", source))
    rows += [("Departures from the published protocol", "suite", note) for note in manifest.protocol_notes]
    rows += [("Departures from the released code", display_name(method), line)
             for method, lines in manifest.release_differences.items() for line in lines]
    return rows


def _recipe(row: pd.Series) -> Recipe:
    """A run's recipe from its flattened spec (fields an older record lacks take their defaults)."""
    fields = {name: row.get(f"spec.recipe.{name}") for name in Recipe.model_fields}
    return Recipe(**{k: _plain(v) for k, v in fields.items() if not _missing(v)})


def _plain(value: Any) -> Any:
    """A flattened spec value as the spec held it (``load_results`` keeps lists as JSON text)."""
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, (list, tuple)) and pd.isna(value))


def _where(row: pd.Series) -> tuple[str, str]:
    return row["pair"], row["label"]


def _optimizer(r: Recipe) -> str:
    momentum = f", momentum {r.momentum:g}" if r.optimizer == "sgd" else ""
    return f"{r.optimizer.upper() if r.optimizer == 'sgd' else 'AdamW'}{momentum}, weight decay {r.weight_decay:g}"


def _schedule(r: Recipe) -> str:
    text = {"step": f"×{r.gamma:g} after epochs {', '.join(map(str, r.decay_epochs))}",
            "cosine": "cosine to 0", "constant": "constant"}[r.schedule]
    return text + (f", linear warm-up over {r.warmup_epochs} epochs" if r.warmup_epochs else "")


def _augmentation(r: Recipe) -> str:
    mixing = [f"{name} α={alpha:g}" for name, alpha in (("mixup", r.mixup_alpha), ("CutMix", r.cutmix_alpha)) if alpha]
    return " + ".join([r.augment, *mixing])


RECIPE_ITEMS = {
    "epochs": lambda r: str(r.epochs),
    "batch": lambda r: str(r.batch_size),
    "optimiser": _optimizer,
    "learning rate": lambda r: f"{r.lr:g}",
    "schedule": _schedule,
    "augmentation": _augmentation,
    "precision": lambda r: r.precision,
}


def _spread_text(values: list[tuple[str, tuple[str, str]]]) -> str:
    """The most common value, then each other one with the pairs or labels that have it."""
    if not values:
        return "–"
    counts = Counter(value for value, _ in values)
    usual = counts.most_common(1)[0][0]
    parts = [usual]
    for value in counts:
        if value == usual:
            continue
        places = [where for v, where in values if v == value]
        parts.append(f"{value} for {_places(places, [where for _, where in values])}")
    return "; ".join(parts)


def _places(places: list[tuple[str, str]], every: list[tuple[str, str]]) -> str:
    """Where a value applies, in the fewest words: whole pairs, else whole labels, else both."""
    pairs = sorted({p for p, _ in places}, key=str)
    labels = sorted({label for _, label in places}, key=str)
    if all(where in places for where in every if where[0] in pairs):
        return "pairs " + ", ".join(pairs)
    if all(where in places for where in every if where[1] in labels):
        return ", ".join(display_name(label) for label in labels)
    return ", ".join(f"{display_name(label)} on {pair}" for pair, label in sorted(set(places), key=str))


def _teacher_rows(students: pd.DataFrame, teachers: pd.DataFrame, manifest: Manifest) -> list[tuple[str, str, str]]:
    rows = []
    with_teacher = students.dropna(subset=["spec.teacher.model"]) if "spec.teacher.model" in students else students.iloc[:0]
    for (dataset, pair), runs in with_teacher.groupby(["dataset", "pair"], sort=False):
        first = runs.iloc[0]
        checkpoint = first.get("spec.teacher.checkpoint")
        if not _missing(checkpoint):
            sha = first.get("spec.teacher.checkpoint_sha256")
            value = f"published checkpoint {'/'.join(str(checkpoint).split('/')[-3:])}" + (
                f" (sha256 {str(sha)[:12]}…)" if not _missing(sha) else "")
        else:
            weights = first.get("spec.teacher.weights")
            value = (f"trained here ({_teacher_recipe(teachers, dataset, pair, _recipe(first))}); students learn from "
                     f"{SELECTED_EPOCH[weights if not _missing(weights) else manifest.teacher_weights]}")
        rows.append(("Teacher", f"{dataset} {pair}", value))
    return rows


def _teacher_recipe(teachers: pd.DataFrame, dataset: str, pair: str, students: Recipe) -> str:
    """How the pair's teacher was trained, in words: as its students, or its own recipe."""
    trained = teachers[(teachers["dataset"] == dataset) & (teachers["pair"] == pair)]
    if trained.empty:
        return "its run has no record yet"
    recipe = _recipe(trained.iloc[0])
    if all(describe(recipe) == describe(students) for describe in RECIPE_ITEMS.values()):
        return "the students' recipe"
    return ", ".join(f"{item} {RECIPE_ITEMS[item](recipe)}" for item in ("epochs", "learning rate", "schedule"))


def card_markdown(rows: list[tuple[str, str, str]]) -> str:
    """The card as a Markdown section."""
    if not rows:
        return ""
    return "\n## Protocol\n\n" + markdown_table(Grid([["", "Setting", "Value"]], _grouped(rows))) + "\n"


def card_latex(rows: list[tuple[str, str, str]], name: str) -> str:
    """The card as a booktabs table (``protocol.tex``) to print beside the results table."""
    body = [[latex_escape(c) for c in row] for row in _grouped(rows)]
    width = "p{0.55\\linewidth}"
    return latex_table(Grid([["", "Setting", "Value"]], body), latex_escape(f"Protocol of suite {name}: how each "
                                                                             "number of its tables was obtained."),
                       f"tab:{name}-protocol", "ll" + width)


def _grouped(rows: list[tuple[str, str, str]]) -> list[list[str]]:
    """Rows with each section named once."""
    out, previous = [], None
    for section, item, value in rows:
        out.append([section if section != previous else "", item, value])
        previous = section
    return out
