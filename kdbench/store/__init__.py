"""The results store: the one owner of a results folder's files.

``run_folder``: one run's folder (file names, record, metrics, failure, status, lock);
``suite_folder``: a suite's folder (manifest, legacy runs, the finished runs it takes from
other suites, every record as a DataFrame);
``schema``: the typed models of what those files hold, and ``RunStatus``.
"""

from .run_folder import (CHECKPOINT, FAILED, METRICS, RECORD, SPEC, TEACHER_LOGITS, TEST_LOGITS, WEIGHTS,
                         CorruptResultsFile, RunFolder, corrupt_run_files, environment, finished_record, read_json,
                         read_metrics, read_run_file, run_lock, set_aside_unsound_weights, status_of, write_failure,
                         write_json, write_metrics, write_record, write_spec)
from .schema import (Environment, Failure, Manifest, ManifestJob, MetricsRow, Parameters, RunRecord, RunStatus,
                     Summary, Timing)
from .suite_folder import (MANIFEST, RUNS, finished_in_other_suites, is_legacy, legacy_message, legacy_runs,
                           load_manifest, load_results, runs_dir, take_finished_runs, write_manifest)

__all__ = [
    "CHECKPOINT", "FAILED", "MANIFEST", "METRICS", "RECORD", "RUNS", "SPEC", "TEACHER_LOGITS", "TEST_LOGITS",
    "WEIGHTS", "CorruptResultsFile", "Environment", "Failure", "Manifest", "ManifestJob", "MetricsRow", "Parameters",
    "RunFolder", "RunRecord", "RunStatus", "Summary", "Timing", "corrupt_run_files", "environment",
    "finished_in_other_suites", "finished_record", "is_legacy", "legacy_message", "legacy_runs", "load_manifest",
    "load_results", "read_json", "read_metrics", "read_run_file", "run_lock", "runs_dir", "set_aside_unsound_weights",
    "status_of", "take_finished_runs", "write_failure", "write_json", "write_manifest", "write_metrics",
    "write_record", "write_spec",
]
