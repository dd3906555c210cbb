"""What ran, said exactly: selection without a validation split, the teacher's epoch its
students learn from, and the report's protocol card and published comparison."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from kdbench import store
from kdbench.analysis.report import write_report
from kdbench.engine import EngineOptions, summarise
from kdbench.engine.epoch import keep_best_weights
from kdbench.errors import ConfigError
from kdbench.runner.runs import ensure_run, teacher_weights
from kdbench.spec import DataSpec, Recipe, RunSpec, TeacherRef
from kdbench.suite import load_suite

from test_analysis import PAPER, SEEDS, make_results, parse_html, table_rows

NO_VAL = DataSpec(name="digits", val_fraction=0.0, options={"image_size": 8})
SUITE = {"name": "protocol", "seeds": [0], "recipe": {"epochs": 1},
         "datasets": {"digits": {"val_fraction": 0, "options": {"image_size": 8}}},
         "pairs": [{"dataset": "digits", "teacher": "resnet8", "student": "resnet8"}], "methods": {"kd": {}}}


@pytest.mark.parametrize("key", ["selection", "teacher_weights"])
def test_best_val_without_a_validation_split_is_refused_with_file_key_and_line(tmp_path, key):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, "selection": "last", key: "best_val"}, sort_keys=False))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "val_fraction" in text)
    with pytest.raises(ConfigError) as error:
        load_suite(path)
    message = str(error.value)
    assert str(path) in message and f"(line {line})" in message and "'datasets.digits.val_fraction'" in message
    assert f"'{key}' is best_val" in message and f"'{key}: last'" in message
    path.write_text(yaml.safe_dump({**SUITE, "selection": "last"}))
    assert load_suite(path).jobs  # the published protocols' form loads


def test_a_run_without_validation_reports_its_last_and_best_test_epochs():
    history = [{"epoch": e, "val_top1": math.nan, "val_top5": math.nan, "test_top1": t, "test_top5": t + 10}
               for e, t in enumerate([40.0, 61.0, 61.0, 55.0], 1)]
    summary = summarise(history, teacher_test=70.0)
    assert summary["best_val_epoch"] is None and summary["test_top1_best_val"] is None  # not epoch 1
    assert summary["val_top1_best"] is None and summary["test_top5_best_val"] is None
    assert (summary["test_top1_last"], summary["test_top5_last"]) == (55.0, 65.0)
    assert (summary["test_top1_max"], summary["best_test_epoch"]) == (61.0, 2)  # the first of two equal bests
    assert store.Summary(**summary).test_top1_best_val is None


def test_the_best_epochs_weights_are_kept_as_they_were_then():
    model = torch.nn.Linear(2, 1)
    trainee = SimpleNamespace(model=model, history=[], best_weights={})
    for epoch, (val, test) in enumerate([(50.0, 30.0), (40.0, 70.0), (50.0, 60.0)], 1):
        torch.nn.init.constant_(model.weight, float(epoch))
        trainee.history.append({"epoch": epoch, "val_top1": val, "test_top1": test})
        keep_best_weights(trainee)
    assert trainee.best_weights["best_val"]["weight"].unique().tolist() == [1.0]  # epoch 3 only ties it
    assert trainee.best_weights["best_test"]["weight"].unique().tolist() == [2.0]
    trainee = SimpleNamespace(model=model, history=[{"epoch": 1, "val_top1": math.nan, "test_top1": 1.0}],
                              best_weights={})
    keep_best_weights(trainee)
    assert set(trainee.best_weights) == {"best_test"}  # no validation split: nothing to keep for it


def test_students_learn_from_the_teacher_epoch_the_suite_names(tmp_path):
    options = EngineOptions(progress=False, device="cpu")
    recipe = Recipe(epochs=3, batch_size=64, lr=0.5, schedule="constant")
    teacher = RunSpec(dataset=NO_VAL, student="resnet8", method="none", recipe=recipe)
    teacher_record = ensure_run(teacher, tmp_path, options)
    folder = store.RunFolder.of(tmp_path, teacher.run_id)
    assert folder.weights_at("best_test").is_file() and not folder.weights_at("best_val").exists()
    assert teacher_record.summary.best_val_epoch is None
    for weights, expected in (("last", teacher_record.summary.test_top1_last),
                              ("best_test", teacher_record.summary.test_top1_max)):
        student = RunSpec(dataset=NO_VAL, student="resnet8", method="kd", recipe=Recipe(epochs=1, batch_size=64),
                          teacher=TeacherRef(model="resnet8", run_id=teacher.run_id, weights=weights))
        assert teacher_weights(student, tmp_path) == folder.weights_at(weights)
        # the student's engine evaluates the weights it loaded: the teacher at that epoch
        assert ensure_run(student, tmp_path, options).summary.teacher_test_top1 == pytest.approx(expected)
    ids = {RunSpec(dataset=NO_VAL, student="resnet8", method="kd",
                   teacher=TeacherRef(model="resnet8", run_id=teacher.run_id, weights=w)).run_id
           for w in ("last", "best_test")}
    assert len(ids) == 2  # what the student learned from is part of its identity


def test_the_report_prints_the_protocol_card_and_the_published_comparison(tmp_path):
    suite_dir = make_results(tmp_path)
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    manifest |= {"sources": {"kd": "Hinton et al. (2015), Table 1"},
                 "paper_sources": {f"digits/resnet20/resnet8": {"figkd": "the author's leaderboard"}},
                 "protocol_notes": ["crops from a 256-px copy"],
                 "release_differences": {"kd": ["σ without Bessel's correction"]}}
    (suite_dir / "manifest.json").write_text(json.dumps(manifest))
    written = write_report(suite_dir)
    table = (suite_dir / "report" / "table.md").read_text()
    protocol = table[table.index("## Protocol"):]
    for text in ("90% of the official training split (10% held out", "| fp32 |", "| 3 |",
                 "trained here (the students' recipe); students learn from the last epoch",
                 "Hinton et al. (2015), Table 1", "the author's leaderboard", "crops from a 256-px copy",
                 "σ without Bessel's correction", "the epoch with the best validation accuracy (selection: best_val)"):
        assert text in protocol, text
    # ours on the papers' rule, from the records, beside each published number
    published = table[table.index("## Against the published numbers"):table.index("## Protocol")]
    page = table_rows(parse_html((suite_dir / "report" / "report.html").read_text()).find("table", id="published-table"))
    for label, name in (("kd", "KD"), ("figkd", "FiGKD")):
        best = [json.loads(p.read_text())["summary"]["test_top1_max"] for p in (suite_dir / "runs").glob("*/record.json")
                if _is(json.loads(p.read_text()), label)]
        paper = PAPER["digits/resnet20/resnet8"][label]
        mean, low, high = sum(best) / len(best), min(best), max(best)
        ours, delta = f"{mean:.2f} ± {torch.tensor(best).std().item():.2f}", f"{paper:.2f} ({mean - paper:+.2f})"
        outside = not low <= paper <= high
        assert f"{ours} vs {delta}" + ("‡" if outside else "") in published, (label, ours)
        assert page[name][0] == f"{ours}published {delta}" + (" ‡" if outside else "")  # the page: one cell, two lines
    assert suite_dir / "report" / "published.tex" in written and suite_dir / "report" / "protocol.tex" in written


def _is(record: dict, label: str) -> bool:
    spec = record["spec"]
    return (spec["dataset"]["name"] == "digits" and spec["method"] == label and spec["student"] == "resnet8"
            and spec["hparams"].get("temperature", 4.0) == 4.0 and spec["seed"] in SEEDS)


@pytest.mark.parametrize("suite, splits", [("cifar100", {"cifar100"}), ("sdd_cub200", {"cub200"}),
                                           ("tiny_imagenet", {"tiny-imagenet"}),
                                           ("fine_grained", {"cub200", "stanford-dogs", "mit67", "stanford40"})])
def test_a_protocol_suites_dry_run_says_it_trains_on_the_whole_split_in_fp32(tmp_path, suite, splits):
    from kdbench.runner import RunnerOptions, run_suite

    said = []
    loaded = load_suite(Path(__file__).parents[1] / "suites" / f"{suite}.yaml")
    run_suite(loaded, RunnerOptions(out=tmp_path, dry_run=True, printer=said.append))
    teacher = ("the epoch with the best test accuracy (selected on test)" if suite == "sdd_cub200"
               else "the last epoch")
    for name in splits:
        assert (f"{name}: trains on the whole official training split (no validation split); precision fp32; "
                f"reports the last epoch; a teacher trained here hands over {teacher}") in said
    assert {j.spec.dataset.val_fraction for j in loaded.jobs} == {0.0}


def test_the_progress_line_shows_test_accuracy_where_there_is_no_validation_split():
    from kdbench.runner.progress import _accuracy

    assert _accuracy({"val_top1": math.nan, "test_top1": 85.14}) == "test 85.1"
    assert _accuracy({"val_top1": 80.0, "test_top1": 85.14}) == "val 80.0"
