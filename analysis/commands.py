"""The analysis subcommands of ``kdbench``: ``report`` and ``spectra`` (``ablate``, which trains,
is ``kdbench.cli``'s; it writes its outputs with ``kdbench.analysis.ablation``).

``kdbench.cli.build_parser`` calls ``register_commands(sub)`` with its subparsers; each
subcommand sets ``fn``, which takes the parsed arguments and returns the exit code.
Errors are raised as ``KDBenchError`` for the CLI to print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from kdbench.store import legacy_message, legacy_runs

    from .report import write_report

    legacy = legacy_runs(args.results_dir)
    if legacy:
        print(f"warning: left out of the report: {legacy_message(args.results_dir, legacy)}", file=sys.stderr)

    print_written(write_report(args.results_dir, args.out, transpose=args.transpose, confusable_k=args.confusable_k))
    return 0


def cmd_spectra(args: argparse.Namespace) -> int:
    from .spectra import write_spectra

    print_written(write_spectra(args.results_dir, args.out, wavelet=args.wavelet, level=args.level,
                                mode=args.mode, temperature=args.temperature, order_seed=args.order_seed))
    return 0


def print_written(paths: list[Path]) -> None:
    folders = sorted({str(p.parent) for p in paths})
    print(f"wrote {len(paths)} files in {', '.join(folders)}")


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``spectra`` to the ``kdbench`` subcommands."""
    p = subparsers.add_parser(
        "report", help="tables (LaTeX, Markdown, CSV) and figures of a suite's results",
        description="Mean ± std over seeds of each method's test top-1 under the suite's selection rule, as "
                    "table.tex (booktabs), table.md, summary.csv and runs.csv, plus training curves and the "
                    "teacher–student gap under figures/. Failed and unfinished runs are listed, not dropped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a suite's results folder, e.g. results/quick")
    p.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    p.add_argument("--transpose", action="store_true", help="datasets as rows and methods as columns")
    p.add_argument("--confusable-k", type=int, default=3,
                   help="each class's most confused classes (in the teacher's validation confusion matrix) whose "
                        "pairs the confusable-pair accuracy scores")
    p.set_defaults(fn=cmd_report)

    p = subparsers.add_parser(
        "spectra", help="wavelet spectra of teacher and student test logits over the class axis",
        description="Energy per wavelet band, mean |coefficient| per position and teacher–student distance per "
                    "band, for every finished run, under FiGKD's index, random and teacher class orders; "
                    "spectra.csv, spectra_positions.csv and figures/spectrum_*.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="a suite's results folder, e.g. results/quick")
    p.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    p.add_argument("--wavelet", default="haar", help="any discrete pywt wavelet")
    p.add_argument("--level", type=int, help="decomposition level (default: the deepest the class count allows)")
    p.add_argument("--mode", default="zero", choices=["zero", "constant", "symmetric", "reflect", "periodic"],
                   help="boundary padding")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature of the teacher class order")
    p.add_argument("--order-seed", type=int, default=0, help="seed of the random class order")
    p.set_defaults(fn=cmd_spectra)
