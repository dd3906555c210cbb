"""The one figure style of every kdbench figure.

- Sizes: ``SINGLE`` (3.5 in, one column of a two-column paper) and ``DOUBLE`` (7.16 in,
  the full page width), 8 pt text, TrueType fonts embedded in PDFs (no Type 3).
- Names and colours: a label that is a registered method's name is shown as the class's
  ``display_name`` in its ``color`` (``Method`` ClassVars; the bundled methods use
  colour-blind-safe Okabe & Ito colours); the teacher is "Teacher" in black. Any other
  label (``figkd_random``, a method that sets no colour) keeps its name and gets a colour of
  Paul Tol's "muted" scheme from its name's CRC32, so it is the same in every figure and
  every run of the tools.
- ``save`` writes each figure as PDF (for the paper) and PNG (300 dpi, for a quick look).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from kdbench.method import METHODS, Method

SINGLE = 3.5  # inches
DOUBLE = 7.16

RC: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "figure.constrained_layout.use": True,
}

TEACHER_COLOR = "#000000"  # the teacher is no method: its look is fixed here
TEACHER_NAME = "Teacher"
# For every label whose method declares no colour (a control, a method without one), none
# of them a method's (methods take theirs from Okabe-Ito and Tol's "muted"): Paul Tol's
# "light" scheme less his pale grey, olive and mint (too close to no-KD's, WTTM's and
# CTKD's), the one "muted" colour no method declares, a brown and a magenta. A label takes
# one by the CRC-32 of its name; the quick suite's three controls land on brown, salmon
# and pink.
OTHER_COLORS = ["#77AADD", "#EEDD88", "#BBCC33", "#88CCEE", "#8C564B", "#E7298A", "#EE8866", "#FFAABB"]

LINESTYLES = ["-", "--", ":", "-."]


def apply() -> None:
    """Make the kdbench style matplotlib's current style."""
    plt.rcParams.update(RC)


def _method(label: str) -> type[Method] | None:
    """The registered method named ``label``, if any (a suite label may name none)."""
    return METHODS.get(label) if label in METHODS else None


def color(label: str) -> str:
    """The colour of a method label, the same in every figure."""
    if label == "teacher":
        return TEACHER_COLOR
    method = _method(label)
    if method is not None and method.color is not None:
        return method.color
    return OTHER_COLORS[zlib.crc32(label.encode()) % len(OTHER_COLORS)]


def display_name(label: str) -> str:
    """How a method label is written in tables and legends (``kd`` → ``KD``)."""
    if label == "teacher":
        return TEACHER_NAME
    method = _method(label)
    return method.display_name if method is not None and method.display_name is not None else label


def figure(width: float = SINGLE, aspect: float = 0.75, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A new figure ``width`` inches wide and ``aspect`` × ``width`` high, in the kdbench style."""
    apply()
    return plt.subplots(nrows, ncols, figsize=(width, width * aspect), squeeze=False, **kwargs)


def restyle(fig: Figure) -> None:
    """Bring a figure drawn under another style (Optuna's plots use ggplot) to this one."""
    fig.set_facecolor("white")
    if fig.get_suptitle():
        fig.suptitle(fig.get_suptitle(), fontsize=RC["axes.titlesize"])
    for ax in fig.axes:
        ax.tick_params(labelsize=RC["xtick.labelsize"], colors="black")
        for label in (ax.xaxis.label, ax.yaxis.label):
            label.set_fontsize(RC["axes.labelsize"])
            label.set_color("black")
        if ax.get_label() == "<colorbar>":
            continue
        ax.set_facecolor("white")
        ax.grid(True, color="#b0b0b0", alpha=RC["grid.alpha"], linewidth=RC["grid.linewidth"])
        for side, spine in ax.spines.items():
            spine.set_visible(side in ("left", "bottom"))
            spine.set_color("black")
        for loc in ("center", "left", "right"):
            if ax.get_title(loc):
                ax.set_title(ax.get_title(loc), loc=loc, fontsize=RC["axes.titlesize"], color="black")
        for text in ax.texts:
            text.set_fontsize(RC["legend.fontsize"])
        if ax.get_legend() is not None:
            for text in ax.get_legend().get_texts():
                text.set_fontsize(RC["legend.fontsize"])
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                plain_log_ticks(axis)


def plain_log_ticks(axis: Any) -> None:
    """Label a log axis with plain numbers at 1, 2 and 5 × 10^k instead of crowded powers of ten."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def legend_above(fig: Figure, ax: Any) -> None:
    """One legend for the whole figure, above its panels, with the entries of ``ax``."""
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncols=min(len(names), 5))


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` and close the figure; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def slug(*parts: str) -> str:
    """A file-name-safe name from ``parts`` (``digits``, ``resnet20→resnet8`` → ``digits_resnet20-resnet8``)."""
    text = "_".join(parts).replace("→", "-")
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
