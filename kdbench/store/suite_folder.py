"""A suite's results folder, ``<out>/<suite>/``: its ``manifest.json`` (the suite's runs by
label and pair), its ``runs/`` (one folder per run, ``run_folder``), the finished runs it
takes from the other suites under ``<out>``, and every run record in it as one pandas
DataFrame.

Records are the source of truth; the frame only reads them, and checks what it reads: a
corrupt record is left out with a warning naming it, a corrupt manifest is an error. Each
row is one run: its status (finished / failed), the method label and pair from the
suite's manifest, the spec flattened to columns (``spec.recipe.lr``,
``spec.hparams.temperature``, …), the summary metrics, timing and parameter counts.
Failed runs are rows too, with their ``error``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from .checkpoints import set_aside
from .run_folder import CorruptResultsFile, RunFolder, read_run_file, status_of, write_json
from .schema import Failure, Manifest, ManifestJob, RunRecord, RunStatus

RUNS = "runs"
MANIFEST = "manifest.json"


def runs_dir(suite_dir: str | Path) -> Path:
    """Where a suite folder keeps its runs (``runs/``), or the folder itself for loose runs."""
    suite_dir = Path(suite_dir)
    return suite_dir / RUNS if (suite_dir / RUNS).is_dir() else suite_dir


def load_manifest(suite_dir: str | Path) -> Manifest:
    """The suite folder's manifest (an empty one when there is none); ``CorruptResultsFile``
    names it and what is wrong with it."""
    path = Path(suite_dir) / MANIFEST
    if not path.exists():
        return Manifest()
    fix = "run the suite again (kdbench run <suite file>) to write it anew"
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CorruptResultsFile(path, f"not valid JSON{where} (cut short or overwritten); {fix}") from None
    jobs = manifest.get("jobs") if isinstance(manifest, dict) else None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) and isinstance(j.get("run_id"), str) for j in jobs):
        raise CorruptResultsFile(path, f"not a suite manifest: 'jobs' must be a list of runs, each with a run_id; {fix}")
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise CorruptResultsFile(path, f"not a suite manifest: '{where}': {error['msg']}; {fix}") from None


def write_manifest(suite_dir: Path, manifest: Manifest) -> None:
    """The suite folder's manifest: ``manifest``, whose jobs are merged into those the
    manifest already there lists (a changed suite, a smaller selection), so that a report
    never loses runs it saw before. A corrupt manifest is set aside."""
    try:
        listed = {job.run_id: job for job in load_manifest(suite_dir).jobs}
    except CorruptResultsFile as exc:
        set_aside(exc.path, str(exc))
        listed = {}
    listed.update({job.run_id: job for job in manifest.jobs})
    merged = manifest.model_copy(update={"jobs": list(listed.values())})
    write_json(Path(suite_dir) / MANIFEST, merged)


def is_legacy(spec: dict[str, Any]) -> bool:
    """A spec written before run ids were content hashes (kdbench 0.1: hyperparameters as
    the suite spelled them, no method version, checkpoints by path)."""
    return "method_version" not in spec


def legacy_runs(suite_dir: str | Path) -> list[str]:
    """Run folders under ``suite_dir`` written before run ids were content hashes: they
    cannot be matched to today's runs, so they are neither reused nor reported."""
    runs = runs_dir(suite_dir)
    if not runs.is_dir():
        return []
    found = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):  # not staging
        folder = RunFolder(run_dir)
        for path in (folder.spec, folder.record, folder.failure):
            try:
                spec = json.loads(path.read_text())["spec"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(spec, dict) and is_legacy(spec):
                found.append(run_dir.name)
            break
    return found


def legacy_message(suite_dir: str | Path, names: list[str]) -> str:
    return (f"{runs_dir(suite_dir)} holds {len(names)} run(s) written by an older kdbench, before run ids "
            f"were the hash of the resolved spec (e.g. {names[0]}); they cannot be matched to today's runs. "
            f"Move them aside (mv {Path(suite_dir)} {Path(suite_dir)}.old) or give --out a new folder; "
            "report them with the kdbench commit named in their records")


def finished_in_other_suites(suite_dir: Path, run_ids: Iterable[str]) -> dict[str, Path]:
    """The runs among ``run_ids`` that ``suite_dir`` has not started and another suite under
    the same results root has finished: run id → that run's folder. A run id is the hash of
    everything that ran (data, models, method, recipe, seed, teacher), so the other suite's
    run is this suite's, e.g. every run of the quick suite is one of the offline suite's."""
    suite_dir = Path(suite_dir)
    others = sorted(p / RUNS for p in suite_dir.parent.glob("*") if p != suite_dir and (p / RUNS).is_dir())
    found = {}
    for run_id in run_ids:
        if RunFolder.of(suite_dir / RUNS, run_id).path.exists():
            continue
        source = next((other for other in others if status_of(other, run_id) == RunStatus.FINISHED), None)
        if source is not None:
            found[run_id] = RunFolder.of(source, run_id).path
    return found


def take_finished_runs(suite_dir: Path, found: dict[str, Path]) -> None:
    """The runs ``finished_in_other_suites`` found, in ``suite_dir``'s runs/ as hard links
    to their files (copies across file systems): a finished run's files are only ever
    replaced, never written in place, so the two folders cannot drift apart."""
    runs = Path(suite_dir) / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    for run_id, source in found.items():
        staging = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=runs))  # whole or not at all
        try:
            shutil.copytree(source, staging, copy_function=_link_or_copy, dirs_exist_ok=True)
            staging.rename(RunFolder.of(runs, run_id).path)
        except OSError:
            if not RunFolder.of(runs, run_id).path.exists():
                raise
        finally:  # another runner that took the same run first
            shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def load_results(suite_dir: str | Path) -> pd.DataFrame:
    """One row per run under ``suite_dir/runs`` (or ``suite_dir`` itself for loose runs).
    Runs written before content ids (``legacy_runs``) are left out, never mixed in."""
    suite_dir = Path(suite_dir)
    runs = runs_dir(suite_dir)
    jobs = {job.run_id: job for job in load_manifest(suite_dir).jobs}
    rows = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):  # not staging
        record = _read_run(run_dir)
        if record is None or is_legacy(record.spec):
            continue
        spec = record.spec
        job = jobs.get(record.run_id, ManifestJob(run_id=record.run_id))
        row: dict[str, Any] = {
            "run_id": record.run_id,
            "status": str(record.status),
            "label": job.label or ("teacher" if spec["teacher"] is None and spec["method"] == "none" else spec["method"]),
            "role": job.role or "student",
            "pair": job.pair or _pair(spec),
            "dataset": spec["dataset"]["name"],
            "method": spec["method"],
            "student": spec["student"],
            "teacher": (spec["teacher"] or {}).get("model"),
            "seed": spec["seed"],
            "error": record.error if isinstance(record, Failure) else None,
        }
        row.update(_flatten("spec", spec))
        if isinstance(record, RunRecord):
            row.update(record.summary.dump())
            for section in ("timing", "parameters"):
                row.update({f"{section}.{key}": value for key, value in getattr(record, section).dump().items()})
        row["epochs_done"] = len(record.metrics) if isinstance(record, RunRecord) else 0
        rows.append(row)
    return pd.DataFrame(rows)


def _read_run(run_dir: Path) -> RunRecord | Failure | None:
    """The run's record, else its failure, else None; a corrupt file is warned about and skipped."""
    folder = RunFolder(run_dir)
    for path in (folder.record, folder.failure):
        if path.exists():
            try:
                return read_run_file(path)
            except CorruptResultsFile as exc:
                warnings.warn(f"{exc}; it is left out of the results (kdbench run sets it aside and does the run "
                              "again)", stacklevel=3)
    return None


def _pair(spec: dict[str, Any]) -> str:
    return f"{spec['teacher']['model']}→{spec['student']}" if spec.get("teacher") else spec["student"]


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: value if not isinstance(value, list) else json.dumps(value)}
