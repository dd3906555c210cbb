"""Name registries in the style of timm's ``register_model`` / ``create_model``.

Names resolve here, at the edge: the engine receives built objects and never switches on a
name. One ``Registry`` instance exists per kind (methods, models, datasets).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, discover: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        # Imports the modules that register entries, on first lookup rather than at import.
        self._discover = discover

    def _discovered(self) -> dict[str, T]:
        if self._discover is not None:
            discover, self._discover = self._discover, None
            discover()
        return self._entries

    def register(self, name: str, entry: T) -> T:
        existing = self._entries.get(name)
        if existing is not None and existing is not entry and _origin(existing) != _origin(entry):
            raise ValueError(
                f"{self.kind} '{name}' is registered twice: by {_origin(existing)} and by {_origin(entry)}"
            )
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._discovered()[name]
        except KeyError:
            hint = did_you_mean(name, self._entries) or f"; known: {', '.join(self.names())}"
            raise UnknownNameError(f"unknown {self.kind} '{name}'{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._discovered()

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._discovered() if fnmatch.fnmatchcase(n, pattern))


def _origin(entry: object) -> str:
    module = getattr(entry, "__module__", "?")
    return f"{module}.{getattr(entry, '__qualname__', type(entry).__name__)}"

