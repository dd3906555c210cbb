"""What a run writes: its record (one JSON file) and per-epoch metrics (JSONL).

A run's folder holds ``spec.json`` (written first), ``metrics.jsonl`` (one line per epoch,
appended as training goes), ``checkpoint.pt`` (the last epoch, for resume),
``weights.pt`` (the final model as ``{"model": state_dict}``, the mdistiller format),
``test_logits.pt`` (final test-set logits in float16 with labels, for spectra) and
``record.json`` (written last and atomically: its presence means the run is finished).
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from .checkpoints import atomic_write_bytes

RECORD = "record.json"
SPEC = "spec.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
TEST_LOGITS = "test_logits.pt"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics; a line cut short by a kill is ignored."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "host": socket.gethostname(),
        "git_commit": _git_commit(),
    }
    from . import __version__

    env["kdbench"] = __version__
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
