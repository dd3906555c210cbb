"""Ablations: the ``ablation:`` block (kdbench.suite.ablation), the study run through the suite
runner's worker (kdbench.runner.tuning) and its outputs (kdbench.analysis.ablation). The tests
train tiny runs on ``digits`` at 8 px."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from kdbench.analysis.ablation import write_ablation
from test_analysis import _compile

from kdbench.suite.ablation import load_ablation
from kdbench.cli import build_parser
from kdbench.engine import EngineOptions
from kdbench.errors import ConfigError
from kdbench.store import RunFolder, run_lock
from kdbench.runner.tuning import objective, run_ablation, thread_shares, train

TINY_ABLATION = {
    "name": "tiny_ablation",
    "seeds": [0, 1],
    "recipe": {"epochs": 2, "batch_size": 128},
    "datasets": {"digits": {"options": {"image_size": 8}}},
    "pairs": [{"dataset": "digits", "teacher": "resnet8", "student": "resnet8"}],
    "methods": {"kd": {}, "figkd": {"band": "all"}},
    "ablation": {
        "method": "figkd",
        "trials": 2,
        "startup_trials": 10,  # no pruning here: every trial completes (pruning has its own test)
        "space": {"wavelet": ["haar", "db1"], "level": [1, 2], "temperature": {"low": 1, "high": 8, "log": True}},
        "heatmap": ["wavelet", "level"],
    },
}


def write_suite(directory: Path, suite: dict) -> Path:
    path = directory / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def ablate(path: Path, out: Path, **options) -> list[Path]:
    """``kdbench ablate``: the study's trials (kdbench.runner.tuning), then its outputs (kdbench.analysis)."""
    ablation = run_ablation(path, out=out, printer=lambda _: None, **options)
    return write_ablation(ablation, out=out, printer=lambda _: None)


def test_ablation_runs_resumes_and_reports(tmp_path):
    path, out = write_suite(tmp_path, TINY_ABLATION), tmp_path / "results"
    ablate(path, out)
    storage = f"sqlite:///{out / 'tiny_ablation' / 'ablation' / 'study.db'}"
    assert (out / "tiny_ablation" / "ablation" / "study.db").is_file()
    assert len(optuna.load_study(study_name="tiny_ablation-figkd", storage=storage).trials) == 2
    written = ablate(path, out, trials=2, workers=2)  # two processes, same study
    study = optuna.load_study(study_name="tiny_ablation-figkd", storage=storage)
    assert len(study.trials) == 4 and [t.number for t in study.trials] == [0, 1, 2, 3]

    runs = out / "tiny_ablation" / "runs"
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        record = json.loads((runs / trial.user_attrs["run_id"] / "record.json").read_text())
        # the suite's hparams and the sampled ones, over every default
        assert {"band": "all", **trial.params}.items() <= record["spec"]["hparams"].items()
        assert trial.value == record["summary"]["val_top1_best"]  # scored on validation, never test
        assert list(trial.intermediate_values) == [1, 2]  # val top-1 reported every epoch

    folder = out / "tiny_ablation" / "ablation"
    best = json.loads((folder / "best.json").read_text())
    assert best["trial"] == study.best_trial.number and best["params"] == study.best_trial.params
    tests = [json.loads((runs / run_id / "record.json").read_text())["summary"]["test_top1_best_val"]
             for run_id in best["run_ids"].values()]
    assert len(tests) == 2 and best["test_top1"]["n"] == 2
    assert best["test_top1"]["mean"] == pytest.approx(statistics.mean(tests))
    assert best["test_top1"]["std"] == pytest.approx(statistics.stdev(tests))

    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert set(rows[0]) >= {"state", "val_top1", "epochs", "wavelet", "level", "temperature", "run_id"}
    markdown = (folder / "trials.md").read_text()
    assert f"Best: trial {best['trial']}" in markdown and "test top-1" in markdown
    assert markdown.count("| COMPLETE |") == 4 and markdown.count("**") == 2
    tex = (folder / "trials.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex
    stems = {p.stem for p in written if p.suffix in (".pdf", ".png")}
    assert stems == {"history", "importances", "slices", "wavelet_level"}
    for file in written:
        assert file.exists() and file.stat().st_size > 0
    _compile(folder / "trials.tex")


def test_ablation_prunes_and_a_pruned_run_resumes(tmp_path):
    """A pruned trial keeps its run's checkpoint; the same configuration sampled again resumes it."""
    ablation = load_ablation(write_suite(tmp_path, TINY_ABLATION | {"ablation": {
        "method": "figkd", "space": {"wavelet": ["haar"], "level": [1]}}}))
    runs, engine = tmp_path / "runs", EngineOptions(progress=False)
    assert train(ablation, ablation.teachers[0].spec, runs, engine).status == "finished"

    def optimize(pruner: optuna.pruners.BasePruner) -> optuna.trial.FrozenTrial:
        study = optuna.create_study(direction="maximize", pruner=pruner)
        study.optimize(lambda trial: objective(trial, ablation, runs, engine), n_trials=1)
        return study.trials[0]

    pruned = optimize(optuna.pruners.ThresholdPruner(lower=101.0))  # val top-1 never reaches it
    assert pruned.state == optuna.trial.TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    run_dir = runs / pruned.user_attrs["run_id"]
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "record.json").exists()
    resumed = optimize(optuna.pruners.NopPruner())
    assert resumed.state == optuna.trial.TrialState.COMPLETE and resumed.user_attrs["run_id"] == run_dir.name
    metrics = json.loads((run_dir / "record.json").read_text())["metrics"]
    assert list(resumed.intermediate_values.values()) == [m["val_top1"] for m in metrics]


BAD_ABLATIONS = [
    ({"ablation": None}, r"no 'ablation:' block"),
    ({"method": "figkdd"}, r"'ablation.method': no method labelled 'figkdd' in 'methods'; did you mean 'figkd'"),
    ({"trails": 3}, r"'ablation.trails': unknown key; did you mean 'trials'"),
    ({"trials": 0}, r"'ablation.trials': Input should be greater than 0"),
    ({"space": {}}, r"'ablation.space': .*at least 1 item"),
    ({"pair": 2}, r"'ablation.pair': the suite has 1 pair\(s\); use 0 to 0"),
    ({"dataset": "cifar100"}, r"'ablation.dataset': pair 0 runs on digits, not 'cifar100'"),
    ({"space": {"wavelett": ["haar"]}}, r"'ablation.space.wavelett': method 'figkd' has no hyperparameter 'wavelett'; did you mean 'wavelet'"),
    ({"space": {"wavelet": []}}, r"'ablation.space.wavelet': the list of choices is empty"),
    ({"space": {"wavelet": ["haar", "db99"]}}, r"'ablation.space.wavelet': 'db99' is not a valid value: .*unknown wavelet 'db99'"),
    ({"space": {"band": ["high", "middle"]}}, r"'ablation.space.band': 'middle' is not a valid value"),
    ({"space": {"level": {"low": 3, "high": 1}}}, r"'ablation.space.level': low \(3\) must be below high \(1\)"),
    ({"space": {"level": {"low": 1.5, "high": 3}}}, r"'level' is an integer: low, high and step must be whole numbers"),
    ({"space": {"temperature": {"low": 0, "high": 4, "log": True}}}, r"a log range needs low > 0 and no step"),
    ({"space": {"temperature": {"low": -1, "high": 4}}}, r"-1.0 is not a valid value: .*temperature"),
    ({"space": {"band": {"low": 0, "high": 1}}}, r"'ablation.space.band': a range needs a numeric hyperparameter"),
    ({"space": {"temperature": {"low": 1, "hi": 4}}}, r"'ablation.space.temperature.hi': unknown key; did you mean 'high'"),
    ({"space": {"temperature": "4"}}, r"'ablation.space.temperature': give a list of choices or a range"),
    ({"space": {"wavelet": [["haar"]]}}, r"a choice must be a single value"),
    ({"heatmap": ["wavelet", "band"]}, r"'ablation.heatmap': 'band' is not searched: a heat-map axis must be a key of 'space'"),
    ({"heatmap": ["wavelet"]}, r"'ablation.heatmap.1': missing key"),
]


@pytest.mark.parametrize("change, message", BAD_ABLATIONS)
def test_ablation_schema_errors(tmp_path, change, message):
    suite = json.loads(json.dumps(TINY_ABLATION))
    if "ablation" in change:
        suite["ablation"] = change["ablation"]
    else:
        suite["ablation"].update(change)
    path = write_suite(tmp_path, suite)
    with pytest.raises(ConfigError, match=message) as error:
        load_ablation(path)
    assert str(error.value).startswith(str(path))


def test_ablation_error_names_the_line(tmp_path):
    path = write_suite(tmp_path, TINY_ABLATION | {"ablation": {"method": "figkd", "space": {"level": {"low": 0, "high": 2}}}})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("level:"))
    with pytest.raises(ConfigError, match=rf"\(line {line}\): 'ablation.space.level': 0 is not a valid value"):
        load_ablation(path)


def test_shipped_ablation_suite_is_valid():
    ablation = load_ablation(Path(__file__).resolve().parents[1] / "suites" / "ablation_figkd.yaml")
    assert ablation.template.spec.method == "figkd" and ablation.template.spec.dataset.name == "synthetic-fg"
    assert {p.name for p in ablation.space} >= {"wavelet", "level", "temperature", "w_kd"}


def test_ablate_command_parses():
    args = build_parser().parse_args(["ablate", "suites/ablation_figkd.yaml", "--trials", "3", "--workers", "2"])
    assert (args.trials, args.workers, args.out, args.storage, args.device) == (3, 2, "results", None, "auto")


def test_a_trial_is_trained_by_the_runners_worker_under_its_lock(tmp_path):
    """While another runner holds a trial's run lock (``store.run_lock``, as ``kdbench run``'s
    worker does while it trains that run), the trial waits and trains nothing; once it is
    released, the trial trains the run into the suite's runs folder."""
    ablation = load_ablation(write_suite(tmp_path, TINY_ABLATION | {"ablation": {
        "method": "figkd", "space": {"wavelet": ["haar"], "level": [1]}}}))
    runs, engine = tmp_path / "runs", EngineOptions(progress=False)
    assert train(ablation, ablation.teachers[0].spec, runs, engine).status == "finished"
    run_id = ablation.spec({"wavelet": "haar", "level": 1}).run_id
    study = optuna.create_study(direction="maximize")
    with run_lock(runs, run_id) as held:
        assert held
        trial = threading.Thread(target=study.optimize, args=(lambda t: objective(t, ablation, runs, engine),),
                                 kwargs={"n_trials": 1})
        trial.start()
        time.sleep(3)
        assert trial.is_alive() and not RunFolder.of(runs, run_id).path.exists()  # waiting, nothing written
    trial.join(120)
    assert not trial.is_alive()
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE and study.trials[0].user_attrs["run_id"] == run_id
    assert json.loads(RunFolder.of(runs, run_id).record.read_text())["run_id"] == run_id


def test_threads_follow_the_runners_core_plan(monkeypatch, tmp_path):
    """On the CPU the teacher trains alone on every core; two workers' trials share them."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    ablation = load_ablation(write_suite(tmp_path, TINY_ABLATION))
    for workers, trial_threads in [(1, 8), (2, 4), (3, 2)]:
        shares = thread_shares(ablation, workers, EngineOptions(device="cpu"))
        assert shares == {ablation.teachers[0].run_id: 8, ablation.template.run_id: trial_threads}


def test_analysis_imports_nothing_that_trains():
    """Every module of kdbench.analysis (which reads results) loads without the engine, the runner or the tuner."""
    code = ("import pkgutil, importlib, sys, kdbench.analysis as a\n"
            "for m in pkgutil.iter_modules(a.__path__): importlib.import_module(f'kdbench.analysis.{m.name}')\n"
            "print([m for m in sys.modules if m.startswith('kdbench.') and m.split('.')[1] in "
            "('engine', 'runner', 'tuning')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_ablation_without_a_validation_split_is_refused(tmp_path):
    suite = TINY_ABLATION | {"selection": "last", "datasets": {"digits": {"val_fraction": 0, "options": {"image_size": 8}}}}
    path = write_suite(tmp_path, suite)
    with pytest.raises(ConfigError, match=r"'datasets.digits.val_fraction': is 0, but an ablation scores its trials "
                                          r"on the validation split and never on test"):
        load_ablation(path)
