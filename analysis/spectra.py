"""``kdbench spectra``: wavelet spectra of the teacher's and the students' test-set logits.

Each finished run's final test logits (``test_logits.pt``, N samples × C classes) are N
signals over the class axis, decomposed with ``kdbench.wavelets.decompose`` (the code
FiGKD distils with) into bands ``a<L>`` (approximation), ``d<L>`` … ``d1`` (details,
coarsest first). "Frequency over classes" depends on the order of the classes, so every
number is computed under each of FiGKD's class orders:

- ``index``: the dataset's class order;
- ``random``: ``kdbench.wavelets.random_class_order(C, order_seed)``, as FiGKD's ``class_order:
  random`` draws it;
- ``teacher``: ``kdbench.wavelets.teacher_class_order`` of the teacher's logits at
  ``temperature``, as FiGKD's ``class_order: teacher``, but from the teacher's *test*
  logits (the only ones a run keeps; FiGKD computes it on the training set). Needs a
  teacher run in the suite (a teacher loaded from a checkpoint has no saved logits).

Outputs, in ``out_dir`` (default ``<suite_dir>/report``):

- ``spectra.csv``: one row per (run, order, band): run_id, dataset, pair, label, role,
  seed, order, band, energy (mean over samples of the band's sum of squared coefficients),
  fraction (energy / sum of the bands' energies), signal_energy (mean squared norm of the
  logit vectors; equal to the sum of the band energies for an orthogonal wavelet such as
  haar), distance (students: mean over samples of the squared L2 distance between the
  student's and the teacher's coefficients of the band) and relative_distance (distance /
  the teacher's energy in the band).
- ``spectra_positions.csv``: one row per (run, order, band, position): mean_abs, the mean
  over samples of |coefficient| at that position of the band.
- ``figures/spectrum_energy_<dataset>_<pair>``: energy fraction per band, one panel per
  order, one line per method (mean over seeds, bars ± std);
  ``spectrum_distance_<dataset>_<pair>``: relative teacher–student distance per band,
  likewise; ``spectrum_coefficients_<dataset>_<pair>``: mean |coefficient| along the
  concatenated bands, one row per order. Each as PDF and PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from kdbench import wavelets
from kdbench.errors import KDBenchError

from . import style
from .runs import columns, labels, read_test_logits, suite_runs

KEYS = ["run_id", "dataset", "pair", "label", "role", "seed"]


def band_names(level: int) -> list[str]:
    """Names of the entries of a ``decompose`` list: ``a<L>``, ``d<L>``, …, ``d1``."""
    return [f"a{level}"] + [f"d{k}" for k in range(level, 0, -1)]


def class_orders(num_classes: int, teacher: tuple[Tensor, Tensor] | None, temperature: float, order_seed: int) -> dict[str, Tensor]:
    """The class permutations of FiGKD's ``class_order`` values; ``teacher`` only with teacher logits."""
    orders = {
        "index": torch.arange(num_classes),
        "random": wavelets.random_class_order(num_classes, order_seed),
    }
    if teacher is not None:
        orders["teacher"] = wavelets.teacher_class_order(teacher[0], teacher[1], num_classes, temperature)
    return orders


def spectra(suite_dir: str | Path, wavelet: str = "haar", level: int | None = None, mode: wavelets.Mode = "zero",
            temperature: float = 4.0, order_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of ``spectra.csv`` and ``spectra_positions.csv`` (see the module docstring).

    ``level`` defaults to the deepest level the number of classes allows.
    """
    wavelets.check_wavelet(wavelet)
    runs = suite_runs(suite_dir)
    runs = runs[runs["status"] == "finished"]
    band_rows: list[dict] = []
    position_rows: list[dict] = []
    for dataset, pair in columns(runs):
        here = runs[(runs["dataset"] == dataset) & (runs["pair"] == pair)]
        logits = {run.run_id: read_test_logits(suite_dir, run.run_id) for run in here.itertuples()}
        here = here[[logits[r] is not None for r in here["run_id"]]]
        if here.empty:
            continue
        teachers = here[here["role"] == "teacher"]["run_id"].tolist()
        teacher = logits[teachers[0]] if teachers else None
        num_classes = logits[here["run_id"].iloc[0]][0].shape[1]
        depth = wavelets.check_level(level or wavelets.max_level(num_classes, wavelet), num_classes, wavelet)
        for order_name, order in class_orders(num_classes, teacher, temperature, order_seed).items():
            reference = wavelets.decompose(teacher[0][:, order], wavelet, depth, mode) if teacher is not None else None
            for run in here.itertuples():
                z, samples = logits[run.run_id]
                if teacher is not None and not torch.equal(samples, teacher[1]):
                    raise KDBenchError(f"run {run.run_id} was tested on other samples than its teacher {teachers[0]}")
                keys = {k: getattr(run, k) for k in KEYS} | {"order": order_name}
                coeffs = wavelets.decompose(z[:, order], wavelet, depth, mode)
                band_rows += _band_rows(keys, z, coeffs, reference if run.role != "teacher" else None)
                position_rows += [keys | {"band": name, "position": i, "mean_abs": float(v)}
                                  for name, c in zip(band_names(depth), coeffs) for i, v in enumerate(c.abs().mean(0))]
    return pd.DataFrame(band_rows), pd.DataFrame(position_rows)


def _band_rows(keys: dict, z: Tensor, coeffs: list[Tensor], reference: list[Tensor] | None) -> list[dict]:
    """The ``spectra.csv`` rows of one run under one order; distances only with a ``reference`` (teacher)."""
    def energy(c: Tensor) -> float:
        return float((c ** 2).sum(-1).mean())

    energies = [energy(c) for c in coeffs]
    rows = []
    for k, (name, c) in enumerate(zip(band_names(len(coeffs) - 1), coeffs)):
        distance = energy(c - reference[k]) if reference is not None else np.nan
        teacher_energy = energy(reference[k]) if reference is not None else np.nan
        rows.append(keys | {
            "band": name, "energy": energies[k], "fraction": _ratio(energies[k], sum(energies)),
            "signal_energy": energy(z), "distance": distance, "relative_distance": _ratio(distance, teacher_energy),
        })
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else np.nan


def write_spectra(suite_dir: str | Path, out_dir: str | Path | None = None, wavelet: str = "haar",
                  level: int | None = None, mode: wavelets.Mode = "zero", temperature: float = 4.0,
                  order_seed: int = 0) -> list[Path]:
    """Write ``spectra.csv``, ``spectra_positions.csv`` and the spectrum figures; returns the files."""
    suite_dir = Path(suite_dir)
    bands, positions = spectra(suite_dir, wavelet, level, mode, temperature, order_seed)
    if bands.empty:
        raise KDBenchError(f"no finished run with test logits in '{suite_dir}'")
    out = Path(out_dir) if out_dir is not None else suite_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "spectra.csv", out / "spectra_positions.csv"]
    bands.to_csv(written[0], index=False)
    positions.to_csv(written[1], index=False)
    for dataset, pair in columns(bands):
        here = bands[(bands["dataset"] == dataset) & (bands["pair"] == pair)]
        name = style.slug(dataset, pair)
        written += _per_band(here, "fraction", "energy fraction", out / "figures" / f"spectrum_energy_{name}", log=True)
        students = here[here["role"] != "teacher"].dropna(subset=["relative_distance"])
        if not students.empty:
            written += _per_band(students, "relative_distance", "distance / teacher energy",
                                 out / "figures" / f"spectrum_distance_{name}", log=True)
        mine = positions[(positions["dataset"] == dataset) & (positions["pair"] == pair)]
        written += _coefficients(mine, out / "figures" / f"spectrum_coefficients_{name}")
    return written


def _per_band(rows: pd.DataFrame, value: str, ylabel: str, stem: Path, log: bool) -> list[Path]:
    """One panel per class order: ``value`` per band, a line per method (mean ± std over seeds)."""
    orders = list(dict.fromkeys(rows["order"]))
    names = list(dict.fromkeys(rows["band"]))
    fig, axes = style.figure(style.DOUBLE, aspect=0.34, ncols=len(orders), sharey=True)
    for ax, order in zip(axes[0], orders):
        for label in labels(rows):
            stats = (rows[(rows["order"] == order) & (rows["label"] == label)]
                     .groupby("band", sort=False)[value].agg(["mean", "std"]).reindex(names))
            ax.errorbar(range(len(names)), stats["mean"], yerr=stats["std"].fillna(0), color=style.color(label),
                        marker="o", capsize=2, label=style.display_name(label))
        ax.set_xticks(range(len(names)), names)
        ax.set_title(f"class order: {order}")
        ax.set_xlabel("band")
        if log:
            ax.set_yscale("log")
            style.plain_log_ticks(ax.yaxis)
    axes[0, 0].set_ylabel(ylabel)
    style.legend_above(fig, axes[0, 0])
    return style.save(fig, stem)


def _coefficients(rows: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean |coefficient| along the concatenated bands, one row per class order."""
    orders = list(dict.fromkeys(rows["order"]))
    fig, axes = style.figure(style.DOUBLE, aspect=0.22 * len(orders), nrows=len(orders), sharex=True)
    for ax, order in zip(axes[:, 0], orders):
        here = rows[rows["order"] == order]
        names = list(dict.fromkeys(here["band"]))
        sizes = here.groupby("band", sort=False)["position"].max().reindex(names) + 1
        starts = dict(zip(names, np.cumsum([0, *sizes[:-1]])))
        for label in labels(here):
            mean = here[here["label"] == label].groupby(["band", "position"], sort=False)["mean_abs"].mean()
            x = [starts[band] + position for band, position in mean.index]
            ax.plot(x, mean.values, color=style.color(label), marker=".", label=style.display_name(label))
        for name in names:
            ax.axvline(starts[name] - 0.5, color="grey", linewidth=0.5)
            ax.text(starts[name] - 0.4, 1.0, name, transform=ax.get_xaxis_transform(), va="top", fontsize=6)
        ax.set_ylabel(f"mean |coef.|\n({order})")
    axes[-1, 0].set_xlabel("coefficient (bands concatenated, coarsest first)")
    style.legend_above(fig, axes[0, 0])
    return style.save(fig, stem)
