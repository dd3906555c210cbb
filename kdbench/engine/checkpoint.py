"""A trainee's epoch checkpoint (student, method, optimizer, gradient scaler, the metrics so
far), written after every epoch, and resuming from it."""

from __future__ import annotations

import torch

from . import distributed
from .. import store
from ..store.checkpoints import atomic_torch_save, safe_load, set_aside
from ..errors import CheckpointError
from .trainee import Trainee


def save_checkpoint(trainee: Trainee, epoch: int) -> None:
    atomic_torch_save({
        "epoch": epoch,
        "student": trainee.model.state_dict(),
        "method": trainee.method.state_dict(),
        "optimizer": trainee.optimizer.state_dict(),
        "scaler": trainee.scaler.state_dict() if trainee.scaler is not None else None,
        "history": trainee.history,
        "best_weights": trainee.best_weights,
    }, store.RunFolder(trainee.run_dir).checkpoint)


def resume(trainee: Trainee, device: torch.device) -> None:
    """Go on from the last epoch's checkpoint; a checkpoint that cannot be read is set
    aside (kept, renamed) and the run starts from its first epoch."""
    path = store.RunFolder(trainee.run_dir).checkpoint
    if not path.exists():
        return
    try:
        state = safe_load(path, map_location=device)
        lacking = {"student", "method", "optimizer", "history"} - set(state if isinstance(state, dict) else ())
        if lacking:
            raise CheckpointError(f"checkpoint '{path}' is not a kdbench checkpoint: it lacks {sorted(lacking)}")
    except CheckpointError as exc:
        if distributed.is_main():
            set_aside(path, str(exc))
        return
    trainee.model.load_state_dict(state["student"])
    trainee.method.load_state_dict(state["method"])
    trainee.optimizer.load_state_dict(state["optimizer"])
    if trainee.scaler is not None and state.get("scaler"):
        trainee.scaler.load_state_dict(state["scaler"])
    trainee.history = state["history"]
    trainee.best_weights = state.get("best_weights", {})
    if distributed.is_main():
        store.write_metrics(trainee.run_dir, trainee.history)  # drop lines logged after the checkpoint
