"""Writing tables: a ``Grid`` of already formatted cells, as booktabs LaTeX or as Markdown.

A table's cells are written once against a ``Markup`` (``MARKDOWN`` or ``LATEX``: the
same marks, bold, underline, ±, †, small type, in either language), so a report builds
one grid per language from one cell formatter instead of branching on the language in
every helper. pandas' ``Styler`` writes the LaTeX float (caption, label, booktabs rules,
header rows); what booktabs tables need beyond it, a ``\\midrule`` between blocks of rows,
a heading row opening a block and notes under the table, is added to its output here.

The LaTeX needs only the ``booktabs`` package (``\\toprule``, ``\\midrule``,
``\\bottomrule``); everything else is in the LaTeX kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "±": r"$\pm$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "‖": r"$\|$",
    "χ": r"$\chi$",
    "²": r"$^2$",
    "α": r"$\alpha$",
    "<": r"$<$",  # the default T1/OT1 text fonts print < and > as other glyphs
    ">": r"$>$",
}


def latex_escape(text: object) -> str:
    """``text`` as LaTeX source that prints it literally."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


class Markup:
    """The marks a table cell may carry, written in Markdown; ``LATEX`` writes the same ones
    in LaTeX. A cell formatter takes one and never asks which language it writes."""

    empty = "–"  # a cell without a value
    dagger = "†"
    ddagger = "‡"

    def escape(self, text: object) -> str:
        return str(text)

    def bold(self, text: str) -> str:
        return f"**{text}**"

    def underline(self, text: str) -> str:
        return f"<u>{text}</u>"

    def italic(self, text: str) -> str:
        return f"*{text}*"

    def spread(self, std: str) -> str:
        """``± std`` after a mean."""
        return f" ± {std}"

    def small(self, text: str) -> str:
        """A note after a cell's value (small type in LaTeX)."""
        return f" {text}"

    def signed(self, value: float, decimals: int = 2) -> str:
        return f"{value:+.{decimals}f}"


class _LatexMarkup(Markup):
    empty = "--"
    dagger = "$^\\dagger$"
    ddagger = "$^\\ddagger$"

    def escape(self, text: object) -> str:
        return latex_escape(text)

    def bold(self, text: str) -> str:
        return f"\\textbf{{{text}}}"

    def underline(self, text: str) -> str:
        return f"\\underline{{{text}}}"

    def italic(self, text: str) -> str:
        return f"\\textit{{{text}}}"

    def spread(self, std: str) -> str:
        return f"{{\\scriptsize$\\pm${std}}}"

    def small(self, text: str) -> str:
        return f" {{\\scriptsize {text}}}"

    def signed(self, value: float, decimals: int = 2) -> str:
        return super().signed(value, decimals).replace("-", "$-$").replace("+", "$+$")


MARKDOWN, LATEX = Markup(), _LatexMarkup()


@dataclass(frozen=True)
class Grid:
    """A table as text in one markup: header rows (the Markdown header joins them), body
    rows, the body rows a LaTeX rule follows, and a heading row opening a block of rows
    (``(first row of the block, heading)``, as the controls under the methods)."""

    header: Sequence[Sequence[str]]
    body: Sequence[Sequence[str]]
    rules_after: Sequence[int] = ()
    block: tuple[int, str] | None = None


def latex_table(grid: Grid, caption: str, label: str, align: str, notes: Sequence[str] = ()) -> str:
    """A ``table`` float holding a booktabs ``tabular`` of ``grid`` (LaTeX cell source);
    ``notes`` are set in small type under the table. Meant to be ``\\input`` into a
    document that loads booktabs."""
    header = pd.MultiIndex.from_arrays(grid.header) if len(grid.header) > 1 else pd.Index(grid.header[0])
    styled = pd.DataFrame(list(grid.body), columns=header).style.hide(axis="index")
    text = styled.to_latex(environment="table", position="t", position_float="centering", hrules=True,
                           caption=caption, label=label, column_format=align, sparse_columns=False)
    head, rest = text.split("\\midrule\n", 1)
    rows, tail = rest.split("\\bottomrule\n", 1)
    lines = []
    for i, row in enumerate(rows.split(" \\\\\n")[:-1]):
        if grid.block is not None and i == grid.block[0]:
            lines.append(f"\\multicolumn{{{len(grid.header[0])}}}{{l}}{{{grid.block[1]}}} \\\\")
        lines.append(row + " \\\\")
        if i in grid.rules_after and i != len(grid.body) - 1:
            lines.append("\\midrule")
    if notes:
        tail = tail.replace("\\end{tabular}\n", "\\end{tabular}\n\\par\\smallskip{\\footnotesize "
                            + "\\\\\n".join(notes) + "\\par}\n")
    return ("% Needs \\usepackage{booktabs}; include with \\input{this file}.\n" + head + "\\midrule\n"
            + "".join(line + "\n" for line in lines) + "\\bottomrule\n" + tail)


def markdown_table(grid: Grid) -> str:
    """A GitHub-flavoured Markdown table (first column left-aligned, the rest right)."""
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = [" ".join(part for part in parts if part) for parts in zip(*grid.header)]
    body = list(grid.body)
    if grid.block is not None:
        body.insert(grid.block[0], [grid.block[1]] + [""] * (len(header) - 1))
    rule = "| " + " | ".join([":---"] + ["---:"] * (len(header) - 1)) + " |"
    return "\n".join([row(header), rule, *(row(r) for r in body)]) + "\n"
