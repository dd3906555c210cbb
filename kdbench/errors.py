"""Errors meant for people: each names what was wrong, where, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KDBenchError(Exception):
    """Base of every error kdbench raises on purpose; the CLI prints these without a traceback."""


class UnknownNameError(KDBenchError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(KDBenchError, ValueError):
    """A hyperparameter, suite or recipe value that cannot be used."""


class DataError(KDBenchError):
    """A data set that is missing or malformed on disk."""


class CheckpointError(KDBenchError):
    """A checkpoint that cannot be trusted or does not fit the model."""


class RunStopped(KDBenchError):
    """A run stopped on purpose after an epoch, by the ``on_epoch`` callback of its engine
    options (an ablation pruning a trial): neither finished nor failed, it keeps its epoch
    checkpoint and resumes when it is run again."""


class MachineError(KDBenchError):
    """The machine failed, not the run: a full disk, an I/O error, a device it lacks. Such a
    run is not booked as failed; the suite stops, and a plain rerun retries it."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' did you mean 'x'?' for the closest of ``choices``, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
