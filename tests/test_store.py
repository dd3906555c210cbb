"""The results store: what its models write (the JSON kdbench has always written, key by
key), the one failure writer, a run's status, its lock, the manifest's merge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kdbench import store
from kdbench.spec import DataSpec, RunSpec
from kdbench.store import (CorruptResultsFile, Failure, Manifest, ManifestJob, MetricsRow, RunFolder, RunRecord,
                           RunStatus)

SPEC = RunSpec(dataset=DataSpec(name="digits"), student="resnet8", method="none")
ROW = {"epoch": 1, "lr": 0.05, "loss_ce": 2.25, "loss_kd": 0.5, "val_top1": math.nan, "val_top5": math.nan,
       "test_top1": 40.0, "test_top5": 90.5, "images_per_s": None, "epoch_seconds": 1.5}


def test_a_metrics_row_is_written_as_the_engine_gave_it(tmp_path: Path) -> None:
    row = MetricsRow.model_validate(ROW)
    assert row.losses == {"ce": 2.25, "kd": 0.5} and math.isnan(row.val_top1)
    store.write_metrics(tmp_path, [ROW, {**ROW, "epoch": 2}])
    lines = RunFolder(tmp_path).metrics.read_text().splitlines()
    assert lines[0] == json.dumps(ROW)  # same keys, same order, NaN and null as json writes them
    assert [row["epoch"] for row in store.read_metrics(tmp_path)] == [1, 2]


def test_a_record_holds_world_size_only_when_set_and_none_as_null(tmp_path: Path) -> None:
    record = RunRecord(run_id=SPEC.run_id, status=RunStatus.FINISHED, spec=SPEC.model_dump(mode="json"),
                       summary=store.Summary(test_top1_last=40.0, teacher_test_top1=None),
                       environment=store.Environment(python="3.11", cuda=None), metrics=[MetricsRow(**ROW)])
    (tmp_path / "x").mkdir()
    RunFolder(tmp_path / "x").checkpoint.write_bytes(b"")
    store.write_record(tmp_path / "x", record)
    read = store.read_run_file(RunFolder(tmp_path / "x").record)
    assert read.model_dump_json() == record.model_dump_json()  # as JSON: the val accuracies are NaN, never equal
    written = store.read_json(RunFolder(tmp_path / "x").record)  # the file itself: keys in order, nulls as set
    assert list(written) == ["run_id", "status", "spec", "summary", "environment", "metrics"]
    assert written["summary"] == {"test_top1_last": 40.0, "teacher_test_top1": None}
    assert written["environment"] == {"python": "3.11", "cuda": None}
    assert list(written["metrics"][0]) == list(ROW)
    assert not RunFolder(tmp_path / "x").checkpoint.exists()  # the record holds everything now
    under_torchrun = record.model_copy(update={"environment": store.Environment(python="3.11", world_size=2)})
    assert under_torchrun.dump()["environment"] == {"python": "3.11", "world_size": 2}


def test_one_failure_writer_for_an_exception_and_for_a_reason(tmp_path: Path) -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        store.write_failure(tmp_path / "a", SPEC, exc)
    store.write_failure(tmp_path / "b", SPEC, "teacher run 0123 failed")
    for name in "ab":
        assert list(store.read_json(RunFolder(tmp_path / name).failure)) == [
            "run_id", "status", "spec", "error", "traceback", "time"]
    raised, blocked = (store.read_run_file(RunFolder(tmp_path / name).failure) for name in "ab")
    assert isinstance(raised, Failure) and raised.status == blocked.status == RunStatus.FAILED
    assert raised.error == "ValueError: bad value" and "raise ValueError" in raised.traceback
    assert blocked.error == "teacher run 0123 failed" and blocked.traceback is None


def test_status_follows_the_files_of_the_run_folder(tmp_path: Path) -> None:
    folder = RunFolder.of(tmp_path, SPEC.run_id)
    assert store.status_of(tmp_path, SPEC.run_id) == RunStatus.NOT_STARTED
    folder.path.mkdir()
    folder.checkpoint.write_bytes(b"")
    assert store.status_of(tmp_path, SPEC.run_id) == RunStatus.PARTIAL
    store.write_failure(folder.path, SPEC, "worker died")
    assert store.status_of(tmp_path, SPEC.run_id) == RunStatus.FAILED
    folder.record.write_text('{"run_id": ')
    assert store.status_of(tmp_path, SPEC.run_id) == RunStatus.CORRUPT == "corrupt"
    with pytest.raises(CorruptResultsFile, match="record.json: not valid JSON"):
        store.read_run_file(folder.record)


def test_a_run_lock_is_held_by_one_holder_at_a_time(tmp_path: Path) -> None:
    with store.run_lock(tmp_path, "abc") as first:
        with store.run_lock(tmp_path, "abc") as second:
            assert first and not second
    with store.run_lock(tmp_path, "abc") as again:
        assert again


def test_the_manifest_keeps_runs_it_listed_before(tmp_path: Path) -> None:
    def job(run_id: str) -> ManifestJob:
        return ManifestJob(run_id=run_id, label="kd", pair="a→b", role="student", dataset="digits", seed=0,
                           depends_on=[])

    header = {"suite": "s", "source": "s.yaml", "selection": "last", "paper": {}, "reference": "kd", "controls": {}}
    store.write_manifest(tmp_path, Manifest(**header, jobs=[job("old"), job("both")]))
    store.write_manifest(tmp_path, Manifest(**header, jobs=[job("both"), job("new")]))
    assert list(store.read_json(tmp_path / store.MANIFEST)) == [*header, "jobs"]
    manifest = store.load_manifest(tmp_path)
    assert [j.run_id for j in manifest.jobs] == ["old", "both", "new"]
    assert manifest.jobs[0] == job("old")
    (tmp_path / store.MANIFEST).write_text(json.dumps({"jobs": [{"run_id": "x", "role": "coach"}]}))
    with pytest.raises(CorruptResultsFile, match=r"not a suite manifest: 'jobs.0.role'"):
        store.load_manifest(tmp_path)
