import pickle

import pytest
import torch
from torch import nn

from kdbench.store.checkpoints import load_weights, read_state_dict
from kdbench.errors import CheckpointError


class Evil:
    def __reduce__(self):
        return (print, ("this ran arbitrary code",))


def small():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("wrap", [lambda sd: {"model": sd}, lambda sd: {"state_dict": sd}, lambda sd: sd])
def test_loads_mdistiller_and_plain_layouts(tmp_path, wrap):
    source = small()
    torch.save(wrap(source.state_dict()), tmp_path / "w.pt")
    target = small()
    load_weights(target, tmp_path / "w.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_refuses_pickled_code(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    torch.save({"model": small().state_dict(), "extra": Evil()}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CheckpointError, match=rf"{name}' cannot be loaded safely"):
            read_state_dict(tmp_path / name)


def test_names_file_and_first_mismatches(tmp_path):
    state = small().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["0.bias"]
    state["2.weight"] = torch.zeros(5, 4)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(small(), tmp_path / "bad.pt", what="teacher")
    message = str(info.value)
    assert "bad.pt" in message and "missing (1): 0.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "2.weight: checkpoint (5, 4) vs teacher (2, 4)" in message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "list.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="trunc.pt"):
        read_state_dict(tmp_path / "trunc.pt")
