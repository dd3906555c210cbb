"""Hostile and careless use (issue 16): corrupt files in a results folder, a preemption
signal, a typo. Each test pins what kdbench does instead of a traceback or a silent loss."""

from __future__ import annotations

import os
import pickle
import stat
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from kdbench.checkpoints import atomic_write_bytes, load_weights, read_state_dict
from kdbench.data import create_dataset
from kdbench.errors import CheckpointError


def write_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (shade, 255 - shade, 80)).save(path)


# --- data and checkpoints -------------------------------------------------------------

def test_imagefolder_skips_hidden_entries_and_warns_about_empty_test_classes(tmp_path: Path) -> None:
    base = tmp_path / "set"
    for split, count in (("train", 3), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(count if (split, name) != ("test", "dog") else 0):
                write_image(base / split / name / f"{i}.png", 40 * c)
    write_image(base / "train" / ".ipynb_checkpoints" / "0-checkpoint.png", 9)  # a notebook's folder
    write_image(base / "test" / ".ipynb_checkpoints" / "0-checkpoint.png", 9)
    write_image(base / "train" / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png", 9)
    write_image(base / "train" / "cat" / "._0.png", 9)  # macOS resource fork
    (base / "test" / "dog").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"set/test has no images of 1 class\(es\): dog"):
        data = create_dataset("imagefolder", tmp_path, path="set", image_size=16, val_fraction=0.0)
    assert data.classes == ["cat", "dog"]
    assert len(data.train) == 6 and len(data.test) == 2


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_dataparallel_checkpoint_is_loaded_with_its_prefix_stripped(tmp_path: Path, capfd) -> None:
    source = nn.DataParallel(small())
    torch.save({"state_dict": source.state_dict()}, tmp_path / "dp.pt")
    target = small()
    load_weights(target, tmp_path / "dp.pt", what="teacher")
    for key, value in source.module.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    assert "saved from nn.DataParallel; its 'module.' prefix is stripped" in capfd.readouterr().err


class Evil:
    def __reduce__(self):
        return (print, ("this ran arbitrary code",))


def test_refused_checkpoints_say_why_and_what_to_do_in_one_line(tmp_path: Path) -> None:
    torch.save({"model": small().state_dict(), "extra": Evil()}, tmp_path / "evil.pt")
    torch.save({"model": small()}, tmp_path / "module.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "module.pt").read_bytes()[:200])
    expected = {
        "evil.pt": "cannot be loaded safely: it holds a pickled Python object (print)",
        "module.pt": "it holds a pickled Python object (torch.nn.modules.container.Sequential)",
        "cut.pt": "cannot be read: it is truncated or corrupt",
    }
    for name, gist in expected.items():
        with pytest.raises(CheckpointError) as info:
            read_state_dict(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and "\x1b" not in message and gist in message and name in message
        assert "re-save" in message and len(message) < 400


# --- files honour the umask -----------------------------------------------------------

def test_written_files_have_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "record.json", b"{}")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640
