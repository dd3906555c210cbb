"""The command line as a person uses it."""

import json
import subprocess
import sys

import pytest

from kdbench.cli import main, parse_overrides
from kdbench.errors import ConfigError


def kdbench(*args):
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["list", "train", "run", "bench", "report", "spectra", "ablate"])
def test_every_subcommand_has_help(command):
    result = kdbench(command, "--help")
    assert result.returncode == 0 and "usage: kdbench" in result.stdout


def test_list(capsys):
    assert main(["list", "methods"]) == 0
    assert {"none", "kd", "dkd", "figkd", "sdd", "pcd", "freekd", "crd"} <= set(capsys.readouterr().out.split())


def test_train_teacher_then_student_prints_accuracy_and_writes_record(tmp_path):
    result = kdbench("train", "--dataset", "digits", "--teacher", "resnet14", "--student", "resnet8", "--method",
                     "figkd", "temperature=2", "--epochs", "1", "--data-option", "image_size=8",
                     "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "teacher test top-1" in result.stdout and "student test top-1" in result.stdout
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*/record.json")]
    assert sorted(r["spec"]["method"] for r in records) == ["figkd", "none"]
    assert next(r for r in records if r["spec"]["method"] == "figkd")["spec"]["hparams"]["temperature"] == 2.0


def test_errors_are_one_line_for_people(tmp_path):
    result = kdbench("train", "--dataset", "digits", "--student", "resnet8", "--method", "kdd", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("kdbench: error: unknown method 'kdd'; did you mean 'kd'")
    assert len(result.stderr.strip().splitlines()) == 1
    result = kdbench("train", "--dataset", "cub200", "--student", "resnet8", "--method", "none",
                     "--data-root", str(tmp_path), "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(tmp_path) in result.stderr


def test_overrides_are_typed():
    assert parse_overrides(["T=4", "wavelet=db2", "scales=[1, 2]", "on=true"]) == {
        "T": 4, "wavelet": "db2", "scales": [1, 2], "on": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["oops"])


def test_bench_runs_on_tiny_models():
    from kdbench.tools.bench import run_bench

    lines = []
    result = run_bench("resnet14", "resnet8", batch_size=8, image_size=8, num_classes=10, steps=1, rounds=1,
                       printer=lines.append, large_images=0)  # (c) at 224 px: test_prepared_data
    text = "\n".join(lines)
    for method in ("kd", "figkd", "crd"):
        assert f"    {method} " in text
    assert "cohort speed-up" in text and result["cohort_bound"] > 1
    assert "students stacked (one vmapped resnet8)" in text and result["stacked_speedup"] > 0
    assert abs(result["step_ratio_kd"] - 1) < 1e-9
