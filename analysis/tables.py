"""Writing tables: booktabs LaTeX and Markdown from rows of already formatted cells.

The LaTeX needs only the ``booktabs`` package (``\\toprule``, ``\\midrule``,
``\\bottomrule``, ``\\cmidrule``); everything else is in the LaTeX kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def latex_table(
    header: Sequence[Sequence[str]],
    body: Sequence[Sequence[str]],
    caption: str,
    label: str,
    align: str,
    rules_after: Sequence[int] = (),
    notes: Sequence[str] = (),
) -> str:
    """A ``table`` float holding a booktabs ``tabular``.

    ``header`` and ``body`` hold LaTeX cell source; a ``\\midrule`` follows each body row
    whose index is in ``rules_after``; ``notes`` are set in small type under the table.
    Meant to be ``\\input`` into a document that loads booktabs.
    """
    lines = [
        "% Needs \\usepackage{booktabs}; include with \\input{this file}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
    ]
    lines += [" & ".join(row) + " \\\\" for row in header]
    lines.append("\\midrule")
    for i, row in enumerate(body):
        lines.append(" & ".join(row) + " \\\\")
        if i in rules_after and i != len(body) - 1:
            lines.append("\\midrule")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if notes:
        lines.append("\\par\\smallskip{\\footnotesize " + "\\\\\n".join(notes) + "\\par}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (first column left-aligned, the rest right)."""
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "| " + " | ".join([":---"] + ["---:"] * (len(header) - 1)) + " |"
    return "\n".join([row(header), rule, *(row(r) for r in body)]) + "\n"
