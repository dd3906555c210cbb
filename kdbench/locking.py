"""Exclusive advisory locks between kdbench processes, on a lock file.

A lock is an ``flock`` on its own open of the file, so it is held by that open file (not by
the process): two opens in one process exclude each other as two processes do, and the
operating system releases it when the holder's file closes, a crash included. The lock file
stays behind, empty; it is never deleted, since deleting it while another process waits on it
would let a third lock a new file of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path, *, block: bool = True, on_wait: Callable[[], object] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    ``block=True`` waits until the lock is free, calling ``on_wait()`` first when another
    holder makes it wait (to say so), and yields True. ``block=False`` never waits: it yields
    whether it got the lock, and a block that got False runs without it. Opening the file
    raises OSError (a missing folder, no write permission) before anything is yielded.
    """
    with open(path, "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not block:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield True
