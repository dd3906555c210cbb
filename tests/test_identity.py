"""A run's identity is its content: one id per resolved spec, a new id for anything that
changes what the run computes, and folders from before content ids are neither reused nor
mixed in."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from pydantic import PositiveFloat

from kdbench.errors import ConfigError
from kdbench.method import METHODS
from kdbench.store import legacy_runs, load_results
from kdbench.runner import RunnerOptions, run_suite
from kdbench.spec import DataSpec, RunSpec, SpecError, TeacherRef
from kdbench.suite import load_suite

DIGITS = DataSpec(name="digits", options={"image_size": 16})


def kd_spec(**changes) -> RunSpec:
    return RunSpec(**{"dataset": DIGITS, "student": "resnet8", "method": "kd", **changes})


def test_equivalent_spellings_are_one_run():
    ids = {kd_spec(hparams=h).run_id for h in ({}, {"temperature": 4}, {"temperature": 4.0}, {"w_kd": 0.9})}
    assert len(ids) == 1


def test_the_spec_holds_every_default():
    spec = kd_spec()
    assert {"temperature": 4.0, "w_ce": 0.1, "w_kd": 0.9}.items() <= spec.hparams.items()
    assert set(spec.hparams) == set(METHODS.get("kd").HParams.model_fields)
    assert spec.method_version == METHODS.get("kd").version
    assert DataSpec(name="digits").options == {"image_size": 32}  # digits' default, written out
    assert DataSpec(name="digits").model_dump() == DataSpec(name="digits", options={"image_size": 32}).model_dump()


def test_a_changed_default_is_a_new_run(monkeypatch):
    before = kd_spec().run_id
    kd = METHODS.get("kd")

    class Hotter(kd.HParams):
        temperature: PositiveFloat = 3.0

    monkeypatch.setattr(kd, "HParams", Hotter)
    assert kd_spec().run_id != before
    assert kd_spec(hparams={"temperature": 4.0}).run_id == before  # spelled out, the old run


def test_a_method_version_is_part_of_the_id(monkeypatch):
    before = kd_spec().run_id
    monkeypatch.setattr(METHODS.get("kd"), "version", METHODS.get("kd").version + 1)
    assert kd_spec().run_id != before
    # a spec read back from JSON takes the running code's version, not the stored one
    assert RunSpec.model_validate_json(kd_spec().model_dump_json()).method_version == METHODS.get("kd").version


def test_a_teacher_checkpoint_is_its_bytes_not_its_path(tmp_path):
    first, moved = tmp_path / "a" / "teacher.pth", tmp_path / "b" / "renamed.pth"
    first.parent.mkdir()
    moved.parent.mkdir()
    first.write_bytes(b"weights v1")
    moved.write_bytes(b"weights v1")
    one = kd_spec(teacher=TeacherRef(model="resnet20", checkpoint=str(first)))
    assert one.teacher.checkpoint_sha256 == hashlib.sha256(b"weights v1").hexdigest()
    assert kd_spec(teacher=TeacherRef(model="resnet20", checkpoint=str(moved))).run_id == one.run_id
    moved.write_bytes(b"weights v2")
    assert kd_spec(teacher=TeacherRef(model="resnet20", checkpoint=str(moved))).run_id != one.run_id


def test_bad_hyperparameters_and_options_are_spec_errors():
    with pytest.raises(SpecError, match="did you mean 'temperature'"):
        kd_spec(hparams={"temprature": 2})
    with pytest.raises(SpecError, match="image_size"):
        DataSpec(name="digits", options={"image_sise": 16})


def test_replace_resolves_again():
    spec = kd_spec()
    assert {"temperature": 2.0, "w_ce": 0.1, "w_kd": 0.9}.items() <= spec.replace(hparams={"temperature": 2}).hparams.items()
    assert spec.replace(seed=3).run_id == kd_spec(seed=3).run_id


SUITE = {
    "name": "ids", "seeds": [0],
    "recipe": {"epochs": 1, "batch_size": 32},
    "datasets": {"digits": {"options": {"image_size": 16}}},
    "pairs": [{"dataset": "digits", "teacher": "resnet14", "student": "resnet8"}],
}


def write_suite(tmp_path: Path, methods: dict, **extra) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "methods": methods, **extra}))
    return path


def test_a_suite_gives_equivalent_labels_one_run(tmp_path):
    suite = load_suite(write_suite(tmp_path, {"kd": {}, "kd_t4": {"method": "kd", "temperature": 4.0}}))
    assert len({j.run_id for j in suite.jobs if not j.is_teacher}) == 1


def test_controls_and_reference_reach_the_manifest(tmp_path):
    path = write_suite(tmp_path, {"kd": {}, "kd_weights": {"method": "kd", "w_ce": 1.0, "w_kd": 1.0, "control": "loss weights"}})
    suite = load_suite(path)
    assert suite.controls == {"kd_weights": "loss weights"} and suite.reference == "kd"
    spec = next(j.spec for j in suite.jobs if j.label == "kd_weights")
    assert "control" not in spec.hparams
    run_suite(suite, RunnerOptions(out=tmp_path / "out", dry_run=True, printer=lambda *a: None))
    from kdbench.runner.planning import write_manifest

    write_manifest(suite, suite.jobs, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["reference"] == "kd" and manifest["controls"] == {"kd_weights": "loss weights"}


@pytest.mark.parametrize("extra, methods, message", [
    ({"reference": "kdd"}, {"kd": {}}, "reference"),
    ({}, {"kd": {}, "c": {"method": "kd", "control": ""}}, "control"),
])
def test_bad_controls_are_refused_with_the_key(tmp_path, extra, methods, message):
    with pytest.raises(ConfigError, match=message):
        load_suite(write_suite(tmp_path, methods, **extra))


def test_a_folder_from_before_content_ids_is_neither_reused_nor_mixed(tmp_path):
    suite = load_suite(write_suite(tmp_path, {"kd": {}}))
    old = tmp_path / "out" / "ids" / "runs" / "0123456789abcdef"
    old.mkdir(parents=True)
    old_spec = {"dataset": {"name": "digits", "options": {}}, "student": "resnet8", "method": "kd", "hparams": {},
                "teacher": None, "recipe": {}, "seed": 0}
    (old / "record.json").write_text(json.dumps({"run_id": old.name, "status": "finished", "spec": old_spec,
                                                 "metrics": [], "summary": {}}))
    assert legacy_runs(tmp_path / "out" / "ids") == [old.name]
    with pytest.raises(ConfigError, match="older kdbench.*Move them aside"):
        run_suite(suite, RunnerOptions(out=tmp_path / "out", printer=lambda *a: None))
    assert list((tmp_path / "out" / "ids" / "runs").iterdir()) == [old]  # nothing trained or written
    assert load_results(tmp_path / "out" / "ids").empty


def test_a_label_recipe_applies_last_and_enters_the_id(tmp_path):
    suite = load_suite(write_suite(tmp_path, {"kd": {}, "kd_strong": {"method": "kd", "recipe": {"augment": "strong"}}}))
    by_label = {j.label: j.spec for j in suite.jobs}
    assert by_label["kd_strong"].recipe.augment == "strong" and by_label["kd"].recipe.augment == "standard"
    assert by_label["kd_strong"].recipe.batch_size == 32  # the suite's recipe below the label's
    assert by_label["kd_strong"].run_id != by_label["kd"].run_id


def test_precision_is_part_of_the_id_in_any_spelling():
    from kdbench.spec import Recipe

    by_precision = {p: {kd_spec(recipe=Recipe(precision=s)).run_id for s in spellings} for p, spellings in {
        "fp32": ("fp32", "float32", "32", "FP32"), "bf16": ("bf16", "bfloat16", "bf16-mixed"),
        "fp16": ("fp16", "float16", "16-mixed", 16)}.items()}
    assert all(len(ids) == 1 for ids in by_precision.values())  # equivalent spellings: one run
    assert len(set().union(*by_precision.values())) == 3  # two precisions: two runs
    assert kd_spec().recipe.precision == "fp32"  # the published references' arithmetic is the default
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*fp32, bf16 or fp16"):
        Recipe(precision="fp8")


def test_the_command_line_precision_reaches_every_recipe_teachers_included(tmp_path):
    path = write_suite(tmp_path, {"kd": {}, "kd_strong": {"method": "kd", "recipe": {"precision": "fp32"}}})
    plain, bf16 = load_suite(path), load_suite(path, {"precision": "bfloat16"})
    assert {j.spec.recipe.precision for j in plain.jobs} == {"fp32"}
    assert {j.spec.recipe.precision for j in bf16.jobs} == {"bf16"}  # applied after a label's own recipe
    assert not {j.run_id for j in plain.jobs} & {j.run_id for j in bf16.jobs}
