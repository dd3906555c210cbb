"""Saving and loading checkpoints.

Files written by kdbench are replaced atomically (write to a temporary file, then rename),
so a run killed at any moment leaves either the old or the new file, never half of one.
Checkpoints from elsewhere are untrusted: they are read with ``weights_only=True`` and
must match the model's parameter names and shapes exactly.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' cannot be loaded safely: it is corrupt or needs arbitrary "
            f"code to unpickle ({str(exc).splitlines()[0]}). Re-save only the weights with "
            "torch.save({'model': model.state_dict()}, path)"
        ) from None
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
