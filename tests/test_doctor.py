"""kdbench doctor, the cost estimate and the GPU acceptance script's CPU form."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.cli import main
from kdbench.tools.smoke import fast_path_checks, probe_of
from kdbench.tools.doctor import suite_checks
from kdbench.engine import EngineOptions
from kdbench.models import create_model
from kdbench.runner import cost
from kdbench.runner.cost import Rates, data_shape, describe, estimate
from kdbench.spec import DataSpec
from kdbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = {
    "name": "tiny_cost", "seeds": [0, 1],
    "recipe": {"epochs": 3, "batch_size": 100},
    "teacher_recipe": {"epochs": 5, "batch_size": 100},
    "datasets": {"digits": {"options": {"image_size": 8}}},
    "pairs": [{"dataset": "digits", "teacher": "resnet8", "student": "resnet8"}],
    "methods": {"none": {}, "kd": {}, "fitnet": {}},
}


def write_suite(folder: Path, suite: dict) -> Path:
    path = folder / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_the_estimate_adds_up_steps_evaluation_and_the_cohorts_shared_teacher_forward(tmp_path, monkeypatch):
    """With the timed calls replaced by known seconds per image, every figure follows by hand."""
    suite = load_suite(write_suite(tmp_path, SUITE))
    per_image = {"forward": 1.0, ("step", "no teacher"): 3.0, ("step", "logits"): 4.0, ("step", "features"): 5.0,
                 "eval": 0.5}

    def measured(groups, device, options, say):
        rates = Rates()
        for group in groups:
            rates.batch[group.key] = 10
            rates.seconds.update({(group.key, "forward", t): per_image["forward"] for t in group.teachers})
            rates.seconds.update({(group.key, "step", *k): per_image[("step", k[2])] for k in group.steps})
            rates.seconds.update({(group.key, "eval", s): per_image["eval"] for s in group.students})
        return rates

    monkeypatch.setattr(cost, "measure", measured)
    result = estimate(suite.jobs, 8, None, EngineOptions(device="cpu"))
    # digits at val_fraction 0.1: 1294 train, 144 val, 359 test; batch 100 steps 13 × 100 images per epoch
    stepped, evaluated = 1300, 144 + 359
    teacher = 5 * (stepped * 3.0 + evaluated * 0.5)
    none = 3 * (stepped * 3.0 + evaluated * 0.5)
    kd, fitnet = (3 * (stepped * s + evaluated * 0.5) for s in (4.0, 5.0))
    shared = 3 * stepped * 1.0 + 359 * 1.0  # per seed: the teacher forward each step, its test evaluation
    assert math.isclose(result.seconds, teacher + 2 * (none + kd + fitnet + shared))
    assert math.isclose(result.alone, teacher + 2 * (none + kd + fitnet + 2 * shared))  # kd and fitnet, each its own
    assert result.families == {"no teacher": "none", "logits": "kd", "features": "fitnet"}
    [line] = result.lines
    assert (line.dataset, line.pair, line.runs) == ("digits", "resnet8→resnet8", 7)
    text = "\n".join(describe(result))
    assert f"{result.seconds / 3600:,.2f}" in text and "cohorts save" in text


def test_a_set_that_is_not_here_is_costed_at_its_official_sizes(tmp_path):
    shape = data_shape(DataSpec(name="cub200", val_fraction=0.1, options={"prepared": True}), str(tmp_path))
    assert shape == cost.DataShape(224, 200, 5994 - 599, 599, 5794, found=False)
    assert data_shape(DataSpec(name="imagefolder", options={"path": "absent"}), str(tmp_path)) is None


def test_a_dry_run_prints_the_suites_cost(tmp_path, capsys):
    suite = {**SUITE, "methods": {"kd": {}}, "seeds": [0], "recipe": {"epochs": 1, "batch_size": 64}}
    path = write_suite(tmp_path, suite)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cost estimate: device-hours on this machine's cpu" in out
    assert "digits" in out and "total" in out and "families timed with: logits (kd), no teacher (none)" in out


def test_the_doctor_finds_a_checkpoint_hashes_and_loads_it_and_names_a_missing_one(tmp_path):
    checkpoint = tmp_path / "teacher.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, checkpoint)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    pairs = [{"dataset": "digits", "teacher": "resnet8", "student": "resnet8", "teacher_checkpoint": str(checkpoint)}]
    suite = load_suite(write_suite(tmp_path, {**SUITE, "pairs": pairs, "track": ["tensorboard"]}))
    checks = {c.name: c for c in suite_checks(suite, tmp_path / "out", None)}
    assert checks["data digits"].status == "PASS" and "1294 train / 144 val / 359 test, 10 classes" in checks[
        "data digits"].detail
    assert checks["teacher resnet8 (digits)"].status == "PASS"
    assert digest[:16] in checks["teacher resnet8 (digits)"].detail
    assert checks["results folder"].status == "PASS" and checks["tracking tensorboard"].status == "PASS"
    checkpoint.unlink()
    checks = {c.name: c for c in suite_checks(suite, tmp_path / "out", None)}
    assert checks["teacher resnet8 (digits)"].status == "FAIL"
    assert f"checkpoint {checkpoint} does not exist" in checks["teacher resnet8 (digits)"].detail


def test_a_set_that_is_not_here_fails_with_the_loaders_fix(tmp_path):
    suite = load_suite(write_suite(tmp_path, {**SUITE, "datasets": {"cub200": {}}, "data_root": str(tmp_path),
                                              "pairs": [{**SUITE["pairs"][0], "dataset": "cub200"}]}))
    [data] = [c for c in suite_checks(suite, tmp_path / "out", None) if c.name == "data cub200"]
    assert data.status == "FAIL" and "CUB_200_2011" in data.detail


def test_without_a_gpu_the_gpu_paths_are_skipped_with_their_reason(monkeypatch):
    """Channels-last, the default on every device, runs on the CPU too."""
    checks = fast_path_checks(probe_of(None, torch.device("cpu")), torch.device("cpu"), skip=("two-process step",))
    assert [(c.name, c.status) for c in checks] == [
        ("channels-last", "PASS"), ("autocast", "SKIP"), ("device-held set", "SKIP"), ("prepared-store crop", "SKIP"),
        ("torch.compile", "SKIP"), ("stacked students", "SKIP"), ("two-process step", "SKIP")]
    assert all(c.detail.startswith("no CUDA device (") for c in checks[1:-1])


@pytest.mark.timeout(900)
def test_the_acceptance_scripts_cpu_form_passes(tmp_path):
    """Every step of benchmarks/gpu_acceptance.sh on the CPU with tiny settings; about a
    minute on a quiet two-core machine."""
    env = {**os.environ, "PYTHON": sys.executable, "KDBENCH_WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_acceptance.sh"), str(tmp_path / "acceptance"), "--cpu",
                           "--budget", "850"], env=env, capture_output=True, text=True, timeout=880)
    summary = json.loads((tmp_path / "acceptance" / "summary.json").read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s["status"] for s in summary["steps"]] == ["PASS"] * 4
    doctor = {c["name"]: c["status"] for c in summary["doctor"]["checks"]}
    for path in ("autocast bf16", "channels-last", "device-held set", "prepared-store crop",
                 "torch.compile aot_eager", "stacked students"):
        assert doctor[path] == "PASS", path
    assert summary["bench"]["step_ratio_kd"] == 1.0 and "harness_overhead" in summary["bench"]
