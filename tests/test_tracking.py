"""kdbench.engine.tracking: each epoch's metrics reach TensorBoard (read back with TensorBoard's own
reader) and W&B (offline), a resumed run continues its curves, a missing package fails
before training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kdbench import store
from kdbench.engine import tracking
from kdbench.store import RunRecord
from kdbench.errors import ConfigError
from kdbench.spec import DataSpec, Recipe, RunSpec
from kdbench.engine.tracking import Tracking
from kdbench.engine import EngineOptions, train_run

SPEC = RunSpec(dataset=DataSpec(name="digits", options={"image_size": 8}), student="resnet8", method="none",
               recipe=Recipe(epochs=3, batch_size=128, lr=0.05), seed=4)
NAME = "digits/resnet14-resnet8/plain/seed4"  # dataset/pair/label/seed: the suite's pair and label


def suite_folder(root: Path) -> Path:
    """A run folder inside a suite folder whose manifest lists the run (no teacher) as
    ``plain`` in the pair resnet14→resnet8."""
    store.write_json(root / "manifest.json", {"suite": "s", "jobs": [
        {"run_id": SPEC.run_id, "label": "plain", "pair": "resnet14→resnet8", "role": "student", "dataset": "digits", "seed": 4}]})
    return root / "runs" / SPEC.run_id


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events, as TensorBoard's own reader loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / tracking.TENSORBOARD_DIR / NAME
    assert folder.is_dir(), sorted(str(p) for p in (run_dir / tracking.TENSORBOARD_DIR).rglob("*"))
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def expected(record: RunRecord) -> dict[str, list[tuple[int, float]]]:
    rows = record.dump()["metrics"]
    keys = [k for k in rows[0] if k != "epoch" and isinstance(rows[0][k], float)]
    return {tracking.tag(k): [(r["epoch"], pytest.approx(r[k], rel=1e-6)) for r in rows] for k in keys}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_events_hold_every_epoch_and_a_resumed_run_continues(tmp_path, monkeypatch):
    options = EngineOptions(progress=False, tracking=Tracking(("tensorboard",), group="s"))
    whole_dir = suite_folder(tmp_path / "whole")
    whole = train_run(SPEC, whole_dir, options)
    events = scalars(whole_dir)
    assert {"loss/ce", "val/top1", "val/top5", "test/top1", "test/top5", "lr", "images_per_s"} <= set(events)
    assert events == expected(whole)
    assert json.loads((whole_dir / tracking.LOGGED).read_text()) == {"epoch": 3}

    # killed right after epoch 2's metrics reached the records, before its sinks saw them
    real_write = store.write_metrics

    def die_after_second_epoch(run_dir, rows):
        real_write(run_dir, rows)
        if len(rows) == 2:
            raise KeyboardInterrupt

    cut_dir = suite_folder(tmp_path / "cut")
    monkeypatch.setattr(store, "write_metrics", die_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(SPEC, cut_dir, options)
    monkeypatch.setattr(store, "write_metrics", real_write)
    tracking.close_all()  # the killed process's writers are gone
    assert [step for step, _ in scalars(cut_dir)["val/top1"]] == [1]
    resumed = train_run(SPEC, cut_dir, options)
    assert [step for step, _ in scalars(cut_dir)["val/top1"]] == [1, 2, 3]  # one curve, no gap, no repeat
    assert scalars(cut_dir) == expected(resumed)


def test_a_missing_package_fails_before_training_with_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"tracking with wandb needs the wandb package: pip install 'kdbench\[wandb\]'"):
        tracking.require(["wandb"])
    with pytest.raises(ConfigError, match="unknown tracking sink 'mlflow'; use one of tensorboard, wandb"):
        tracking.require(["mlflow"])


class Captured(Exception):
    """Stops ``kdbench run`` where it would start the runner."""


def test_the_suite_and_the_command_line_name_the_sinks(tmp_path, monkeypatch):
    import kdbench.runner
    from kdbench.cli import build_parser

    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nseeds: [0]\ndatasets: {digits: {}}\npairs: [{dataset: digits, teacher: resnet8, "
                     "student: resnet8}]\nmethods: {kd: {}}\ntrack: [wandb]\n")

    def capture(plan):
        raise Captured(plan.options.engine.tracking)

    monkeypatch.setattr(kdbench.runner, "run_plan", capture)
    monkeypatch.setattr(tracking, "require", lambda sinks: tuple(dict.fromkeys(sinks)))  # wandb need not be installed
    args = build_parser().parse_args(["run", str(suite), "--track", "tensorboard", "--out", str(tmp_path)])
    with pytest.raises(Captured) as captured:
        args.fn(args)
    assert captured.value.args[0] == Tracking(("wandb", "tensorboard"), group="tiny")
    args = build_parser().parse_args(["train", "--dataset", "digits", "--student", "resnet8", "--track", "wandb"])
    assert args.track == ["wandb"]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = suite_folder(tmp_path)
    train_run(SPEC, run_dir, EngineOptions(progress=False, tracking=Tracking(("wandb",), group="s")))
    (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{SPEC.run_id}")  # one run, named by the run id
    # W&B's binary log (no public reader in the package): it holds the history and the config
    log = (offline / f"run-{SPEC.run_id}.wandb").read_bytes()
    for text in ("val/top1", "test/top5", "loss/ce", "images_per_s", NAME, '"resnet8"', '"epochs":3'):
        assert text.encode() in log, text
    assert json.loads((run_dir / tracking.LOGGED).read_text()) == {"epoch": 3}
