"""kdbench.locking: one exclusive lock per file, with or without waiting."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kdbench.locking import exclusive_lock


def test_a_free_lock_is_taken_and_its_file_made(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with exclusive_lock(path, block=False) as held:
        assert held
        assert path.is_file()


def test_a_held_lock_is_refused_without_waiting_and_free_again_after(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with exclusive_lock(path) as first:
        assert first
        with exclusive_lock(path, block=False) as second:  # another open of the file, as another process
            assert not second
    with exclusive_lock(path, block=False) as again:
        assert again


def test_a_blocking_lock_says_it_waits_then_gets_the_lock_once_released(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    waiting = threading.Event()
    order: list[str] = []

    def second_holder() -> None:
        with exclusive_lock(path, on_wait=waiting.set) as held:
            order.append(f"second held={held}")

    with exclusive_lock(path):
        thread = threading.Thread(target=second_holder)
        thread.start()
        assert waiting.wait(timeout=10)
        order.append("first releases")
    thread.join(timeout=10)
    assert order == ["first releases", "second held=True"]


def test_a_free_lock_does_not_call_on_wait(tmp_path: Path) -> None:
    calls: list[int] = []
    with exclusive_lock(tmp_path / "run.lock", on_wait=lambda: calls.append(1)):
        pass
    assert calls == []


def test_a_lock_in_a_missing_folder_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        with exclusive_lock(tmp_path / "absent" / "run.lock"):
            pass
