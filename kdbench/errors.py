"""Errors meant for people: each names what was wrong, where, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pydantic


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


# Tags pydantic puts in an error's location for the member of a union it tried
# (``methods: {kd: "..."}`` against ``dict[str, str | list[str]]``); they are not keys.
UNION_TAGS = ("str", "list[str]")


@dataclass(frozen=True)
class ValidationProblem:
    """One error of a pydantic.ValidationError, ready to be said to people."""

    loc: tuple[str | int, ...]  # the key path, union tags left out
    kind: Literal["unknown", "missing", "invalid"]  # a key not allowed, a key not given, a bad value
    message: str  # pydantic's own ("Input should be greater than 0")
    got: Any  # the value given (for a missing key, the mapping it is missing from)
    hint: str  # unknown key: "; did you mean 'x'?", else "; allowed: a, b"; otherwise ""

    @property
    def key(self) -> str:
        return ".".join(map(str, self.loc))

    @property
    def detail(self) -> str:
        """The problem without its key: "unknown key; allowed: a, b", "missing key", "… (got 3)"."""
        if self.kind == "unknown":
            return f"unknown key{self.hint}"
        if self.kind == "missing":
            return "missing key"
        return f"{self.message} (got {self.got!r})"

    def __str__(self) -> str:
        """The problem with its key: "unknown key 'seedz'; did you mean 'seeds'?", "missing key
        'datasets'; add it", "'seeds.0': Input should be greater than or equal to 0 (got -1)"."""
        if self.kind == "unknown":
            return f"unknown key '{self.key}'{self.hint}"
        if self.kind == "missing":
            return f"missing key '{self.key}'; add it"
        return f"'{self.key}': {self.detail}"


def explain_validation(
    exc: pydantic.ValidationError,
    model: type[pydantic.BaseModel] | None = None,
    *,
    line: Callable[[ValidationProblem], str] = str,
    separator: str = "\n",
) -> str:
    """The message for people of a pydantic.ValidationError: one ``line(problem)`` per error,
    repeated lines once, joined by ``separator``. ``model`` is the model validated (the root
    of nested ones); with it an unknown key's hint names the closest allowed key, else all of
    them. The default line is ``str(problem)``; pass another for your own wording."""
    lines = (line(_problem(err, model)) for err in exc.errors())
    return separator.join(dict.fromkeys(lines))


def _problem(err: Any, model: type[pydantic.BaseModel] | None) -> ValidationProblem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in UNION_TAGS))
    kind = {"extra_forbidden": "unknown", "missing": "missing"}.get(err["type"], "invalid")
    hint = ""
    if kind == "unknown" and model is not None:
        allowed = _allowed_keys(model, loc[:-1])
        hint = did_you_mean(str(loc[-1]), allowed) or f"; allowed: {', '.join(allowed) or 'none'}"
    return ValidationProblem(loc, kind, err["msg"], err.get("input"), hint)


def _allowed_keys(model: type[pydantic.BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The keys of the (nested) model found at ``loc`` under ``model``."""
    for part in loc:
        if isinstance(part, int):
            continue
        nested = _model_in(model.model_fields[part].annotation) if part in model.model_fields else None
        if nested is not None:
            model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The pydantic model in a field's annotation (``list[Pair]``, ``Executor | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
