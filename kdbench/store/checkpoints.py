"""Saving and loading checkpoints.

Files written by kdbench are replaced atomically (write to a temporary file, then rename),
so a run killed at any moment leaves either the old or the new file, never half of one.
Files are created with the permissions a plain ``open()`` would give (the umask), so a
group's shared results folder stays readable to the group. Checkpoints from elsewhere are
untrusted: they are read with ``weights_only=True`` and must match the model's parameter
names and shapes exactly (up to the ``module.`` prefix that ``nn.DataParallel`` adds). A
file of kdbench's own that turns out corrupt is set aside (renamed, never deleted).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600, whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(mask)
    return mask


def set_aside(path: Path, why: str) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<UTC time>`` beside it (kept for a
    post-mortem, out of kdbench's way) and say so on stderr; ``why`` names the file and
    what is wrong with it. Returns the new path."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    print(f"kdbench: {why}; it is kept as {aside.name} and its run is done again from what is sound",
          file=sys.stderr, flush=True)
    return aside


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` without running pickled code, its refusals as a one-line CheckpointError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        message = str(exc)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if unsafe:
            raise CheckpointError(
                f"checkpoint '{path}' cannot be loaded safely: it holds a pickled Python object "
                f"({unsafe.group(1)}), not only tensors, and unpickling it could run arbitrary code; if you "
                "trust its source, re-save only the weights with torch.save({'model': model.state_dict()}, path)"
            ) from None
        if isinstance(exc, pickle.UnpicklingError):
            raise CheckpointError(
                f"checkpoint '{path}' cannot be loaded safely: it is corrupt, or a plain pickle rather than "
                f"a torch checkpoint ({_first_reason(message)}); re-save only the weights with "
                "torch.save({'model': model.state_dict()}, path)"
            ) from None
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read: it is truncated or corrupt ({_first_reason(message)}); "
            "copy it again or re-save it with torch.save"
        ) from None


def _first_reason(message: str) -> str:
    """The gist of torch's error: what follows 'WeightsUnpickler error:', else its first sentence."""
    after = message.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in message else message
    return after.splitlines()[0].split(". ")[0].strip().rstrip(".") if after.strip() else type(message).__name__


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict in ``path``: ``{"model": sd}`` (mdistiller/RepDistiller),
    ``{"state_dict": sd}`` or a bare state dict, loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    payload = safe_load(path)
    for key in ("model", "state_dict"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(
            f"checkpoint '{path}' holds no state dict: expected {{'model': state_dict}}, "
            "{'state_dict': state_dict} or a state dict of tensors"
        )
    return dict(payload)


def load_weights(model: nn.Module, path: str | Path, what: str = "model") -> None:
    """Load ``path`` into ``model`` strictly, refusing any name or shape mismatch."""
    state = read_state_dict(path)
    expected = model.state_dict()
    prefix = "module."  # what nn.DataParallel / DistributedDataParallel put before every name
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        state = {k[len(prefix):]: v for k, v in state.items()}
        print(f"kdbench: note: checkpoint '{path}' was saved from nn.DataParallel; its '{prefix}' prefix is "
              "stripped from every name", file=sys.stderr, flush=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs {what} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = [
            f"{label} ({len(items)}): {', '.join(items[:5])}{', …' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if items
        ]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {what} {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
