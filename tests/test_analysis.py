"""Reports and spectra (kdbench.analysis); the ablation's outputs are in test_ablation.py.

The report and spectra tests read a results folder written here by hand (records,
failed.json, manifest, test logits; no training): 2 datasets × 3 methods × 3 seeds plus a
teacher per dataset, with one failed run, one job that never ran, one run the manifest
does not list, and published numbers for one dataset.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import statistics
import subprocess
import zlib
from pathlib import Path

import pandas as pd
import pytest
import torch
from kdbench.analysis.report import write_report
from kdbench.analysis.style import display_name
from kdbench.analysis.spectra import write_spectra

from kdbench import list_methods, store
from kdbench.errors import ConfigError
from kdbench.method import METHODS as REGISTERED_METHODS
from kdbench.spec import DataSpec, Recipe, RunSpec, TeacherRef
from kdbench.engine import summarise

CLASSES = {"digits": 10, "synthetic-fg": 12}
TEACHER, STUDENT = "resnet20", "resnet8"
PAIR = f"{TEACHER}→{STUDENT}"
METHODS = ["none", "kd", "figkd"]
SEEDS = [0, 1, 2]
# Mean level of each student's test accuracy, so that the ranking is known.
LEVEL = {"digits": {"none": 60.0, "kd": 66.0, "figkd": 70.0}, "synthetic-fg": {"none": 50.0, "kd": 57.0, "figkd": 54.0}}
FAILED = ("digits", "kd", 2)
NEVER_RAN = ("synthetic-fg", "figkd", 1)
PAPER = {f"digits/{TEACHER}/{STUDENT}": {"teacher": 97.5, "kd": 64.0, "figkd": 71.25}}
EPOCHS = 3
SAMPLES = 24


def _history(level: float, terms: list[str], generator: torch.Generator) -> list[dict]:
    noise = (torch.rand(EPOCHS, 2 + len(terms), generator=generator) * 4).tolist()
    return [{"epoch": e + 1, "lr": 0.05, **{f"loss_{t}": 2.0 / (e + 1) + n for t, n in zip(terms, row[2:])},
             "val_top1": level + 5 * e + row[0], "test_top1": level + 5 * e - 3 + row[1], "val_top5": 99.0,
             "test_top5": 99.0, "images_per_s": 100.0, "epoch_seconds": 1.0}
            for e, row in enumerate(noise)]


def _write_run(runs: Path, spec: RunSpec, history: list[dict], teacher_test: float | None, logits: torch.Tensor) -> None:
    run_dir = runs / spec.run_id
    run_dir.mkdir(parents=True)
    store.write_json(run_dir / store.RECORD, {
        "run_id": spec.run_id, "status": "finished", "spec": spec.model_dump(mode="json"),
        "summary": summarise(history, teacher_test), "timing": {"train_seconds": 3.0},
        "parameters": {"student": 1000}, "metrics": history})
    torch.save({"logits": logits.half(), "labels": torch.arange(SAMPLES) % logits.shape[1]}, run_dir / store.TEST_LOGITS)


def make_results(root: Path, selection: str = "best_val") -> Path:
    """A suite folder as ``kdbench run`` leaves it (see the module docstring)."""
    suite_dir = root / "fixture"
    runs = suite_dir / "runs"
    recipe = Recipe(epochs=EPOCHS)
    generator = torch.Generator().manual_seed(0)
    jobs = []
    for dataset, classes in CLASSES.items():
        data = DataSpec(name=dataset)
        teacher = RunSpec(dataset=data, student=TEACHER, method="none", recipe=recipe)
        teacher_logits = torch.randn(SAMPLES, classes, generator=generator) * 3
        history = _history(80.0, ["ce"], generator)
        _write_run(runs, teacher, history, None, teacher_logits)
        jobs.append({"run_id": teacher.run_id, "label": "teacher", "pair": PAIR, "role": "teacher",
                     "dataset": dataset, "seed": 0, "depends_on": []})
        for method in METHODS:
            for seed in SEEDS:
                spec = RunSpec(dataset=data, student=STUDENT, method=method, recipe=recipe, seed=seed,
                               teacher=None if method == "none" else TeacherRef(model=TEACHER, run_id=teacher.run_id))
                jobs.append({"run_id": spec.run_id, "label": method, "pair": PAIR, "role": "student",
                             "dataset": dataset, "seed": seed, "depends_on": [] if method == "none" else [teacher.run_id]})
                if (dataset, method, seed) == FAILED:
                    store.write_json(runs / spec.run_id / "failed.json", {
                        "run_id": spec.run_id, "status": "failed", "spec": spec.model_dump(mode="json"),
                        "error": "TrainingDiverged: loss is not finite in epoch 2\nTraceback: …"})
                elif (dataset, method, seed) != NEVER_RAN:
                    terms = ["ce"] if method == "none" else ["ce", method]
                    logits = teacher_logits + torch.randn(SAMPLES, classes, generator=generator) * (1 + METHODS.index(method))
                    _write_run(runs, spec, _history(LEVEL[dataset][method], terms, generator),
                               history[-1]["test_top1"], logits)
    # An ablation trial in the same folder: not one of the suite's runs.
    stray = RunSpec(dataset=DataSpec(name="digits"), student=STUDENT, method="kd", hparams={"temperature": 2},
                    recipe=recipe, teacher=TeacherRef(model=TEACHER, run_id=jobs[0]["run_id"]))
    _write_run(runs, stray, _history(99.0, ["ce", "kd"], generator), 90.0, torch.randn(SAMPLES, 10))
    store.write_json(suite_dir / "manifest.json", {"suite": "fixture", "source": "fixture.yaml", "selection": selection,
                                                     "paper": PAPER, "jobs": jobs})
    return suite_dir


def expected_cells(suite_dir: Path, selection: str) -> dict[tuple[str, str], list[float]]:
    """(dataset, label) → the selected test accuracies of its finished runs, read from the records."""
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    cells: dict[tuple[str, str], list[float]] = {}
    for job in manifest["jobs"]:
        path = suite_dir / "runs" / job["run_id"] / "record.json"
        if path.exists():
            record = json.loads(path.read_text())
            key = "test_top1_last" if job["role"] == "teacher" else f"test_top1_{selection}"
            cells.setdefault((record["spec"]["dataset"]["name"], job["label"]), []).append(record["summary"][key])
    return cells


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def report(results) -> tuple[Path, list[Path]]:
    return results / "report", write_report(results)


def test_report_summary_numbers(results, report):
    out, _ = report
    rows = {(r["dataset"], r["label"]): r for r in csv.DictReader((out / "summary.csv").open())}
    cells = expected_cells(results, "best_val")
    assert set(rows) == set(cells)
    for key, values in cells.items():
        row = rows[key]
        assert float(row["mean"]) == pytest.approx(statistics.mean(values))
        assert int(row["n"]) == len(values)
        if len(values) > 1:
            assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        else:
            assert row["std"] == ""
    assert rows["digits", "kd"]["failed"] == "1" and rows["digits", "kd"]["seeds"] == "0 1"
    assert rows["synthetic-fg", "figkd"]["n"] == "2"
    assert float(rows["digits", "kd"]["paper"]) == 64.0
    best_test = expected_cells(results, "max")  # the papers' rule: their number is set against ours on it
    assert float(rows["digits", "kd"]["delta_paper"]) == pytest.approx(statistics.mean(best_test["digits", "kd"]) - 64.0)
    assert rows["synthetic-fg", "kd"]["paper"] == ""


def expected_by_seed(suite_dir: Path, key: str) -> dict[tuple[str, str], dict[int, float]]:
    """(dataset, label) → seed → the summary value ``key`` of each finished student run."""
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    cells: dict[tuple[str, str], dict[int, float]] = {}
    for job in manifest["jobs"]:
        path = suite_dir / "runs" / job["run_id"] / "record.json"
        if path.exists() and job["role"] == "student":
            value = json.loads(path.read_text())["summary"][key]
            cells.setdefault((job["dataset"], job["label"]), {})[job["seed"]] = value
    return cells


def test_report_summary_has_both_selection_rules(results, report):
    out, _ = report
    rows = {(r["dataset"], r["label"]): r for r in csv.DictReader((out / "summary.csv").open())}
    for rule in ("best_val", "last"):
        for key, by_seed in expected_by_seed(results, f"test_top1_{rule}").items():
            assert float(rows[key][f"mean_{rule}"]) == pytest.approx(statistics.mean(by_seed.values()))
            assert float(rows[key][f"std_{rule}"]) == pytest.approx(statistics.stdev(by_seed.values()))


def test_report_paired_statistics(results, report):
    """Each student's difference to KD, paired by seed, equals scipy's ttest_rel on the
    records; cells with fewer than 3 pairs print no number; p < 0.05 gets a dagger."""
    from scipy import stats

    out, _ = report
    rows = {(r["dataset"], r["label"]): r for r in csv.DictReader((out / "summary.csv").open())}
    by_seed = expected_by_seed(results, "test_top1_best_val")
    markdown = (out / "table.md").read_text()
    main, paired = markdown.split("## Paired differences to KD")[0], markdown.split("## Paired differences to KD")[1]
    paired_lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                    for line in paired.split("## Runs not in the means")[0].splitlines() if line.startswith("| ")}
    main_lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
                  for line in main.splitlines() if line.startswith("| ")}
    names = {"none": "Student (no KD)", "figkd": "FiGKD"}
    tested = 0
    for column, dataset in enumerate(CLASSES):
        assert rows[dataset, "kd"]["paired_n"] == "" and rows[dataset, "teacher"]["paired_n"] == ""
        reference = by_seed[dataset, "kd"]
        for label, name in names.items():
            row, mine = rows[dataset, label], by_seed[dataset, label]
            seeds = sorted(mine.keys() & reference.keys())
            assert row["reference"] == "kd" and int(row["paired_n"]) == len(seeds)
            if len(seeds) < 3:
                assert row["diff_mean"] == row["p_value"] == row["significant"] == ""
                assert paired_lines[name][column] == "n<3: cannot be computed"
                assert "†" not in main_lines[name][column]
                continue
            tested += 1
            expected = stats.ttest_rel([mine[s] for s in seeds], [reference[s] for s in seeds])
            low, high = expected.confidence_interval(0.95)
            assert float(row["diff_mean"]) == pytest.approx(statistics.mean(mine[s] - reference[s] for s in seeds))
            assert float(row["p_value"]) == pytest.approx(expected.pvalue)
            assert float(row["diff_ci_low"]) == pytest.approx(low) and float(row["diff_ci_high"]) == pytest.approx(high)
            assert row["significant"] == str(expected.pvalue < 0.05)
            assert paired_lines[name][column].startswith(f"{float(row['diff_mean']):+.2f} [{low:+.2f}, {high:+.2f}]")
            assert paired_lines[name][column].endswith(f"(n={len(seeds)})")
            assert main_lines[name][column].split(" [")[0].endswith("†") == (expected.pvalue < 0.05)
    assert tested == 1  # synthetic-fg none vs kd; digits' KD lost a seed and synthetic-fg's FiGKD one
    assert "two-sided paired t-test" in main and "†: differs from KD at p < 0.05" in main
    tex = (out / "table.tex").read_text()
    assert "$^\\dagger$" in tex and "paired t-test" in tex
    paired_tex = (out / "paired.tex").read_text()
    assert "n$<$3: cannot be computed" in paired_tex and "95\\% confidence interval" in paired_tex
    _compile(out / "table.tex")
    _compile(out / "paired.tex")


def test_report_controls_block_and_reference(results, tmp_path):
    """Labels under the manifest's ``controls`` follow the methods as a block labelled by
    what they control, are not ranked, and are compared with the suite's ``reference``."""
    suite_dir = tmp_path / "fixture"
    shutil.copytree(results, suite_dir, ignore=shutil.ignore_patterns("report", "spectra"))
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    manifest |= {"reference": "none", "controls": {"kd": "the teacher's soft labels"}}
    (suite_dir / "manifest.json").write_text(json.dumps(manifest))
    write_report(suite_dir)
    out = suite_dir / "report"
    markdown = (out / "table.md").read_text()
    body = [line.split("|")[1].strip() for line in markdown.split("## Paired")[0].splitlines() if line.startswith("| ")]
    assert body[2:] == ["Teacher", "Student (no KD)", "FiGKD", "*Controls*", "KD (the teacher's soft labels)"]
    assert "Controls (not ranked), below the methods: KD: the teacher's soft labels." in markdown
    assert "## Paired differences to Student (no KD)" in markdown
    rows = {(r["dataset"], r["label"]): r for r in csv.DictReader((out / "summary.csv").open())}
    assert rows["digits", "kd"]["control"] == "the teacher's soft labels" and rows["digits", "kd"]["rank"] == ""
    assert rows["digits", "figkd"]["rank"] == "1" and rows["digits", "none"]["rank"] == "2"
    assert rows["digits", "kd"]["reference"] == "none" and rows["digits", "none"]["paired_n"] == ""
    tex = (out / "table.tex").read_text()
    lines = [line for line in tex.splitlines() if line.endswith("\\\\")]
    controls_at = lines.index("\\multicolumn{3}{l}{\\textit{Controls}} \\\\")
    assert lines[controls_at + 1].startswith("KD {\\scriptsize (the teacher's soft labels)} & ")
    assert tex.splitlines()[tex.splitlines().index(lines[controls_at]) - 1] == "\\midrule"
    _compile(out / "table.tex")
    _compile(out / "paired.tex")


def _ranked(cells: dict, dataset: str) -> list[str]:
    means = {label: statistics.mean(v) for (d, label), v in cells.items() if d == dataset and label != "teacher"}
    return sorted(means, key=means.get, reverse=True)


def test_report_markdown_table(results, report):
    out, _ = report
    text = (out / "table.md").read_text()
    cells = expected_cells(results, "best_val")
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in text.split("## Paired")[0].splitlines() if line.startswith("| ") and "---" not in line}
    header = lines["Method"]
    assert header == [f"digits {PAIR}", f"synthetic-fg {PAIR}"]
    names = {"teacher": "Teacher", "none": "Student (no KD)", "kd": "KD", "figkd": "FiGKD"}
    for column, dataset in enumerate(CLASSES):
        best, second, _ = _ranked(cells, dataset)
        for label, name in names.items():
            values = cells[dataset, label]
            number = f"{statistics.mean(values):.2f}"
            expected = {best: f"**{number}**", second: f"<u>{number}</u>"}.get(label, number)
            if len(values) > 1:
                expected += f" ± {statistics.stdev(values):.2f}"
            assert lines[name][column].startswith(expected), (label, dataset, lines[name][column])
    assert lines["KD"][0].endswith("[n=2]")  # one seed failed; a published number is never beside ours
    assert "(97.50)" not in lines["Teacher"][0] and "[n=" not in lines["Teacher"][0]
    assert lines["FiGKD"][1].endswith("[n=2]")
    assert "mean ± std over 3 seeds" in text and "selection rule: best_val" in text
    assert "best validation accuracy" in text
    failed = text.split("## Runs not in the means")[1]
    assert "failed" in failed and "TrainingDiverged: loss is not finite in epoch 2" in failed
    assert "missing" in failed and "not started, or still running" in failed


def test_report_latex_table(results, report):
    out, _ = report
    tex = (out / "table.tex").read_text()
    cells = expected_cells(results, "best_val")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\begin{tabular}{lcc}" in tex
    rows = [line for line in tex.splitlines() if line.endswith("\\\\") and "&" in line]
    body = {row.split(" & ")[0]: row.split(" & ")[1:] for row in rows}
    for column, dataset in enumerate(CLASSES):
        best, second, _ = _ranked(cells, dataset)
        label_of = {"kd": "KD", "figkd": "FiGKD", "none": "Student (no KD)"}
        assert body[label_of[best]][column].startswith(f"\\textbf{{{statistics.mean(cells[dataset, best]):.2f}}}")
        assert body[label_of[second]][column].startswith(f"\\underline{{{statistics.mean(cells[dataset, second]):.2f}}}")
        std = statistics.stdev(cells[dataset, "none"])
        assert f"{{\\scriptsize$\\pm${std:.2f}}}" in body["Student (no KD)"][column]
    assert "\\textbf" not in body["Teacher"][0] and "\\underline" not in " ".join(body["Teacher"])
    assert "resnet20$\\rightarrow$resnet8" in tex
    caption = re.search(r"\\caption\{(.*)\}", tex).group(1)
    assert "over 3 seeds" in caption and "best\\_val" in caption and "\\%" in caption
    assert "Not in the means: kd, digits" in tex and "TrainingDiverged" in tex
    assert f"seed {NEVER_RAN[2]}, run" in tex  # the job that never ran, described by the manifest
    _compile(out / "table.tex")


def _compile(table: Path) -> None:
    """Typeset a LaTeX table in a minimal document when pdflatex is installed."""
    if shutil.which("pdflatex") is None:
        return
    (table.parent / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                          f"\\input{{{table.name}}}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=table.parent,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (table.parent / "doc.pdf").stat().st_size > 0


def test_report_figures(report):
    out, written = report
    figures = sorted(p.name for p in (out / "figures").iterdir())
    stems = [f"curves_digits_{TEACHER}-{STUDENT}", f"curves_synthetic-fg_{TEACHER}-{STUDENT}", "teacher_gap",
             "critical_difference"]  # two cells, three methods: a ranking across cells
    stems += [f"fidelity_{d}_{TEACHER}-{STUDENT}" for d in CLASSES]
    stems += [f"spectrum_{kind}_{d}_{TEACHER}-{STUDENT}" for kind in ("energy", "distance", "coefficients")
              for d in CLASSES]
    assert figures == sorted(f"{s}.{ext}" for s in stems for ext in ("pdf", "png"))
    for path in written:
        assert path.exists() and path.stat().st_size > 0
    assert {p.name for p in written} >= {"table.tex", "table.md", "summary.csv", "runs.csv", "spectra.csv"}


def test_training_curves_fit_each_panel_to_its_own_epochs(monkeypatch, tmp_path):
    """A 15-epoch teacher beside 4-epoch students: each method's panels span its own epochs."""
    from kdbench.analysis import curves

    epochs = {"teacher": 15, "none": 4, "kd": 4, "figkd": 2, "dkd": 3}  # dkd's panels sit under the teacher's
    runs = pd.DataFrame([{"run_id": label, "dataset": "digits", "pair": PAIR, "label": label, "seed": 0,
                          "status": "finished"} for label in epochs])
    row = _history(50.0, ["ce"], torch.Generator().manual_seed(0))[0]
    histories = {label: [row | {"epoch": epoch} for epoch in range(1, n + 1)] for label, n in epochs.items()}
    monkeypatch.setattr(curves, "read_run_metrics", lambda suite_dir, run_id: histories[run_id])
    figures = []
    monkeypatch.setattr(curves.style, "save", lambda fig, stem: figures.append(fig) or [])
    curves.plot_training_curves(tmp_path, runs, tmp_path)
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2 * len(epochs)
    for ax in panels:
        title = ax.get_title() or next(a.get_title() for a in panels if a.get_shared_x_axes().joined(a, ax) and a.get_title())
        label = {curves.style.display_name(label): label for label in epochs}[title]
        low, high = ax.get_xlim()
        assert 0 < low < 1 and epochs[label] < high < epochs[label] + 1, (label, ax.get_xlim())


def test_report_runs_csv_lists_every_run(report):
    out, _ = report
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 2 * (1 + len(METHODS) * len(SEEDS))
    assert sorted(r["status"] for r in rows if r["status"] != "finished") == ["failed", "missing"]
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert {r["run_id"] for r in rows} == {j["run_id"] for j in manifest["jobs"]}  # not the stray ablation trial


def test_report_last_epoch_rule_and_transpose_from_the_command_line(tmp_path):
    suite_dir = make_results(tmp_path, selection="last")
    parser = analysis_parser()
    args = parser.parse_args(["report", str(suite_dir), "--out", str(tmp_path / "out"), "--transpose"])
    assert args.fn(args) == 0
    cells = expected_cells(suite_dir, "last")
    rows = {(r["dataset"], r["label"]): r for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    for key, values in cells.items():
        assert float(rows[key]["mean"]) == pytest.approx(statistics.mean(values))
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert "selection rule: last" in tex and "the last epoch" in tex
    assert "\\begin{tabular}{llcccc}" in tex
    assert re.search(r"^Dataset & Pair & Teacher & Student \(no KD\) & KD & FiGKD \\\\$", tex, re.MULTILINE)
    _compile(tmp_path / "out" / "table.tex")


def test_report_without_its_reference_says_so(results, tmp_path):
    suite_dir = tmp_path / "fixture"
    shutil.copytree(results, suite_dir, ignore=shutil.ignore_patterns("report", "spectra"))
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    (suite_dir / "manifest.json").write_text(json.dumps(manifest | {"reference": "dkd"}))
    write_report(suite_dir)
    out = suite_dir / "report"
    assert "No paired comparison: the reference DKD has no finished run in this suite." in (out / "table.md").read_text()
    assert "## Paired differences" not in (out / "table.md").read_text()
    assert (out / "paired.tex").read_text().startswith("% No paired comparison")
    assert all(r["paired_n"] == "" for r in csv.DictReader((out / "summary.csv").open()))
    assert "the reference DKD has no finished run" in (out / "report.html").read_text()


# --- report.html ----------------------------------------------------------------------------


class Element:
    """A parsed HTML element: tag, attributes, children and text, for tests to query."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "rect", "polyline"}

    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    @property
    def text(self) -> str:
        return " ".join("".join(p if isinstance(p, str) else p.text for p in self.parts).split())

    def find_all(self, tag: str, **attrs: str) -> list["Element"]:
        found = []
        for child in self.children:
            if child.tag == tag and all(child.attrs.get(k.rstrip("_")) == v for k, v in attrs.items()):
                found.append(child)
            found += child.find_all(tag, **attrs)
        return found

    def find(self, tag: str, **attrs: str) -> "Element":
        (found,) = self.find_all(tag, **attrs)
        return found


def parse_html(text: str) -> Element:
    from html.parser import HTMLParser

    root = Element("document", {})
    stack = [root]

    class Builder(HTMLParser):
        def handle_starttag(self, tag, attrs):
            element = Element(tag, dict(attrs))
            stack[-1].children.append(element)
            stack[-1].parts.append(element)
            if tag not in Element.VOID:
                stack.append(element)

        def handle_endtag(self, tag):
            if tag in Element.VOID:
                return
            assert stack[-1].tag == tag, f"</{tag}> closes <{stack[-1].tag}>"
            stack.pop()

        def handle_data(self, data):
            stack[-1].parts.append(data)

    Builder(convert_charrefs=True).feed(text)
    assert stack == [root], "unclosed elements"
    return root


def table_rows(table: Element) -> dict[str, list[str]]:
    """A report table's body rows: first cell's text (the row name) → the other cells' texts."""
    rows = {}
    for body in table.find_all("tbody", class_="rows") + table.find_all("tbody", class_="rows controls"):
        for row in body.find_all("tr"):
            cells = [c for c in row.children if c.tag in ("th", "td")]
            rows[cells[0].text] = [c.text for c in cells[1:]]
    return rows


def test_report_html_is_self_contained_and_holds_every_figure(report):
    out, written = report
    assert out / "report.html" in written
    page = parse_html((out / "report.html").read_text())
    for element in page.find_all("script") + page.find_all("img") + page.find_all("link") + page.find_all("a"):
        for attribute in ("src", "href"):
            value = element.attrs.get(attribute) or ""
            assert value == "" or value.startswith(("data:", "#")), (element.tag, value)  # nothing to fetch
    images = page.find_all("img")
    pngs = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert sorted(img.attrs["alt"] for img in images) == pngs
    for img in images:
        data = base64.b64decode(img.attrs["src"].removeprefix("data:image/png;base64,"))
        assert data == (out / "figures" / f"{img.attrs['alt']}.png").read_bytes()
    assert "addEventListener" in page.find("script").text  # the sorting


def test_report_html_tables_match_the_summary(results, report):
    out, _ = report
    page = parse_html((out / "report.html").read_text())
    summary = {(r["dataset"], r["label"]): r for r in csv.DictReader((out / "summary.csv").open())}
    names = {"Teacher": "teacher", "Student (no KD)": "none", "KD": "kd", "FiGKD": "figkd"}
    rows = table_rows(page.find("table", id="results-table"))
    assert list(rows) == list(names)
    for column, dataset in enumerate(CLASSES):
        for name, label in names.items():
            row = summary[dataset, label]
            cell = rows[name][column]
            assert cell.startswith(f"{float(row['mean']):.2f}"), (name, dataset, cell)
            assert ("†" in cell) == (row["significant"] == "True")
    paired = table_rows(page.find("table", id="paired-table"))
    assert list(paired) == ["Student (no KD)", "FiGKD"]
    none_fg = summary["synthetic-fg", "none"]
    assert paired["Student (no KD)"][1].startswith(
        f"{float(none_fg['diff_mean']):+.2f} [{float(none_fg['diff_ci_low']):+.2f}, {float(none_fg['diff_ci_high']):+.2f}]")
    assert paired["Student (no KD)"][0] == paired["FiGKD"][1] == "n<3: cannot be computed"
    assert "two-sided paired t-test" in page.find_all("p", class_="caption")[0].text


def test_report_html_runs_open_to_spec_curves_and_failure(report):
    out, _ = report
    page = parse_html((out / "report.html").read_text())
    runs = {r["run_id"]: r for r in csv.DictReader((out / "runs.csv").open())}
    entries = {d.attrs["data-run"]: d for d in page.find_all("details", class_="run")}
    assert set(entries) == set(runs)
    for run_id, run in runs.items():
        detail = entries[run_id]
        summary_cells = [c.text for c in detail.find("summary").children]
        assert summary_cells[0] == run_id and summary_cells[5] == run["status"]
        specs = detail.find_all("pre", class_="spec")
        if run["status"] == "missing":
            assert not specs and "has not started" in detail.text
            continue
        assert json.loads(specs[0].text)["seed"] == int(run["seed"])
        if run["status"] == "failed":
            assert "TrainingDiverged: loss is not finite in epoch 2" in detail.find("pre", class_="error").text
        else:
            record = json.loads((out.parent / "runs" / run_id / "record.json").read_text())
            assert len(detail.find_all("svg")) == 2  # accuracy and loss curves
            epochs = detail.find("table", class_="metrics").find("tbody").find_all("tr")
            assert [int(r.children[0].text) for r in epochs] == [m["epoch"] for m in record["metrics"]]


def test_report_html_controls_block(results, tmp_path):
    suite_dir = tmp_path / "fixture"
    shutil.copytree(results, suite_dir, ignore=shutil.ignore_patterns("report", "spectra"))
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    (suite_dir / "manifest.json").write_text(json.dumps(manifest | {"controls": {"figkd": "the wavelet & <order>"}}))
    write_report(suite_dir)
    page = parse_html((suite_dir / "report" / "report.html").read_text())
    table = page.find("table", id="results-table")
    assert [b.text for b in table.find_all("tbody", class_="heading")] == ["Controls"]
    (controls,) = table.find_all("tbody", class_="rows controls")
    assert [r.attrs["data-label"] for r in controls.find_all("tr")] == ["figkd"]
    assert "controls: the wavelet & <order>" in controls.text  # escaped in the page, read back as written


# --- cells and the table writers --------------------------------------------------------------

def _summary_row(**changes) -> pd.Series:
    """A row of ``summary.csv`` with every mark set: best, ± std, †, one seed short, a paired
    test, a published number outside our range."""
    row = {"role": "student", "n": 2, "mean": 97.404, "std": 0.8512, "rank": 1, "significant": True,
           "augment_note": "", "paired_n": 3, "diff_mean": -1.234, "diff_ci_low": -4.5678, "diff_ci_high": 2.1,
           "p_value": 0.0004, "paper": 97.0, "mean_best_test": 97.68, "std_best_test": 0.58, "delta_paper": 0.68,
           "paper_outside_spread": True}
    return pd.Series(row | changes)


def test_a_cell_is_written_alike_in_markdown_and_latex():
    """One cell formatter, two markups: the same marks in each language."""
    from kdbench.analysis.cells import accuracy_cell, paired_cell, published_cell
    from kdbench.analysis.tables import LATEX, MARKDOWN, latex_escape

    best = accuracy_cell(_summary_row())
    assert best.written(MARKDOWN, 3) == "**97.40** ± 0.85† [n=2]"
    assert best.written(LATEX, 3) == "\\textbf{97.40}{\\scriptsize$\\pm$0.85}$^\\dagger$ {\\scriptsize [n=2]}"
    assert best.written(MARKDOWN, 2) == "**97.40** ± 0.85†"  # every seed finished
    second = accuracy_cell(_summary_row(rank=2, significant=False, std=math.nan, role="teacher"))
    assert second.written(MARKDOWN, 3) == "<u>97.40</u>" and second.written(LATEX, 3) == "\\underline{97.40}"
    unfinished = accuracy_cell(_summary_row(n=0, augment_note="[aug: strong]"))
    assert unfinished.written(MARKDOWN, 3) == "– [aug: strong] [n=0]"
    mixed = accuracy_cell(_summary_row(n=0, augment_note="[aug: strong_mixup α=0.2]"))
    assert mixed.written(LATEX, 3) == "-- {\\scriptsize [aug: strong\\_mixup $\\alpha$=0.2] [n=0]}"  # escaped: it compiles
    assert latex_escape("outside our seeds' range ‡") == "outside our seeds' range $^\\ddagger$"
    assert accuracy_cell(None).written(LATEX, 3) == "--"

    paired = paired_cell(_summary_row())
    assert paired.written(MARKDOWN) == "-1.23 [-4.57, +2.10], p<0.001 (n=3)"
    assert paired.written(LATEX) == "$-$1.23 [$-$4.57, $+$2.10], p$<$0.001 (n=3)"
    assert paired_cell(_summary_row(diff_mean=math.nan)).written(LATEX) == "n$<$3: cannot be computed"
    assert paired_cell(_summary_row(paired_n=math.nan)).written(MARKDOWN) == "–"
    assert paired_cell(_summary_row(kl_paired_n=3, kl_diff_mean=0.01234, kl_diff_ci_low=0.001, kl_diff_ci_high=0.02,
                                    kl_p_value=0.04, kl_significant=True), "kl_", 3).written(MARKDOWN) \
        == "+0.012 [+0.001, +0.020], p=0.040 (n=3)"

    published = published_cell(_summary_row())
    assert published.written(MARKDOWN) == "97.68 ± 0.58 vs 97.00 (+0.68)‡"
    assert published.written(LATEX) == "97.68{\\scriptsize$\\pm$0.58} vs 97.00 ($+$0.68)$^\\ddagger$"
    assert published_cell(_summary_row(paper=math.nan)).written(MARKDOWN) == "–"


def test_a_grid_as_booktabs_latex_and_as_markdown():
    from kdbench.analysis.tables import Grid, latex_table, markdown_table

    grid = Grid([["Method", "digits", "digits"], ["", "a", "b"]],
                [["Teacher", "1", "2"], ["KD", "3", "4"], ["Ctl", "5", "6"]], [0, 1], (2, "\\textit{Controls}"))
    assert latex_table(grid, "Cap \\%", "tab:x", "lcc", ["note 1", "note 2"]) == (
        "% Needs \\usepackage{booktabs}; include with \\input{this file}.\n"
        "\\begin{table}[t]\n\\centering\n\\caption{Cap \\%}\n\\label{tab:x}\n\\begin{tabular}{lcc}\n\\toprule\n"
        "Method & digits & digits \\\\\n & a & b \\\\\n\\midrule\n"
        "Teacher & 1 & 2 \\\\\n\\midrule\nKD & 3 & 4 \\\\\n\\midrule\n\\multicolumn{3}{l}{\\textit{Controls}} \\\\\n"
        "Ctl & 5 & 6 \\\\\n\\bottomrule\n\\end{tabular}\n\\par\\smallskip{\\footnotesize note 1\\\\\nnote 2\\par}\n"
        "\\end{table}\n")
    assert markdown_table(Grid(grid.header, grid.body, block=(2, "*Controls*"))) == (
        "| Method | digits a | digits b |\n| :--- | ---: | ---: |\n| Teacher | 1 | 2 |\n| KD | 3 | 4 |\n"
        "| *Controls* |  |  |\n| Ctl | 5 | 6 |\n")


# --- style --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_methods())
def test_style_reads_names_and_colours_from_the_method(name):
    from kdbench.analysis import style

    cls = REGISTERED_METHODS.get(name)
    assert style.display_name(name) == (cls.display_name or name)
    if cls.color is not None:
        assert style.color(name) == cls.color
    else:
        assert style.color(name) in style.OTHER_COLORS


def test_style_colours_follow_the_class_and_fall_back_to_the_name(monkeypatch):
    from kdbench.analysis import style

    declared = ["teacher", *(n for n in list_methods() if REGISTERED_METHODS.get(n).color is not None)]
    colours = [style.color(n) for n in declared]
    assert len(set(colours)) == len(colours)  # each method that declares a colour has its own
    assert not set(colours) & set(style.OTHER_COLORS)  # a control never wears a method's colour
    kd = REGISTERED_METHODS.get("kd")
    monkeypatch.setattr(kd, "color", "#123456")
    monkeypatch.setattr(kd, "display_name", "Hinton KD")
    assert (style.color("kd"), style.display_name("kd")) == ("#123456", "Hinton KD")
    monkeypatch.setattr(kd, "color", None)
    monkeypatch.setattr(kd, "display_name", None)
    assert style.color("kd") == style.OTHER_COLORS[zlib.crc32(b"kd") % len(style.OTHER_COLORS)]
    assert style.display_name("kd") == "kd"
    assert style.display_name("figkd_random") == "figkd_random"  # a label, not a method
    assert (style.color("teacher"), style.display_name("teacher")) == ("#000000", "Teacher")


# --- spectra ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spectra_out(results) -> tuple[Path, list[Path]]:
    out = results / "spectra"
    return out, write_spectra(results, out)


def test_spectra_parseval_and_rows(results, spectra_out):
    out, written = spectra_out
    rows = list(csv.DictReader((out / "spectra.csv").open()))
    manifest_ids = {j["run_id"] for j in json.loads((results / "manifest.json").read_text())["jobs"]}
    finished = [p.parent.name for p in (results / "runs").glob("*/test_logits.pt") if p.parent.name in manifest_ids]
    assert len(finished) == 2 * (1 + len(METHODS) * len(SEEDS) - 1)
    assert len(rows) == len(finished) * 3 * 4  # haar, deepest level (3 for 10 and 12 classes): a3 d3 d2 d1
    assert {r["order"] for r in rows} == {"index", "random", "teacher"}
    by_run: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_run.setdefault((row["run_id"], row["order"]), []).append(row)
    for (run_id, _), bands_of in by_run.items():
        assert [r["band"] for r in bands_of] == ["a3", "d3", "d2", "d1"]
        logits = torch.load(results / "runs" / run_id / "test_logits.pt")["logits"].double()
        total = float((logits ** 2).sum(1).mean())  # haar is orthogonal: the band energies add up to it
        assert sum(float(r["energy"]) for r in bands_of) == pytest.approx(total, rel=1e-9)
        assert sum(float(r["fraction"]) for r in bands_of) == pytest.approx(1.0)
        student = bands_of[0]["role"] == "student"
        assert all((r["distance"] != "") == student for r in bands_of)
    positions = list(csv.DictReader((out / "spectra_positions.csv").open()))
    # zero-padded haar: 10 classes give 2 + 2 + 3 + 5 coefficients, 12 classes 2 + 2 + 3 + 6
    assert len(positions) == len(finished) // 2 * 3 * (12 + 13)
    for path in written:
        assert path.exists() and path.stat().st_size > 0
    stems = {p.stem for p in written if p.suffix == ".pdf"}
    assert stems == {f"spectrum_{kind}_{d}_{TEACHER}-{STUDENT}" for kind in ("energy", "distance", "coefficients")
                     for d in CLASSES}


def test_spectra_orders_are_figkds(results):
    """The index, random and teacher orders are the permutations FiGKD itself distils under."""
    from kdbench.analysis.spectra import class_orders

    from kdbench.method import TrainContext, create_method
    from kdbench.models import ModelOutput

    logits, labels = torch.randn(40, 10), torch.arange(40) % 10
    orders = class_orders(10, (logits, labels), temperature=3.0, order_seed=5)
    for kind in ("random", "teacher"):
        method = create_method("figkd", class_order=kind, order_seed=5, temperature=3.0)
        method.setup(TrainContext(10, labels, 1, 0, ModelOutput(torch.zeros(2, 10)), ModelOutput(torch.zeros(2, 10)),
                                  teacher_train_logits=logits))
        assert torch.equal(method.order, orders[kind])
    assert torch.equal(orders["index"], torch.arange(10))


# --- command line -------------------------------------------------------------------------


def analysis_parser():
    import argparse

    from kdbench.analysis.commands import register_commands

    parser = argparse.ArgumentParser(prog="kdbench")
    register_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_commands_parse(tmp_path):
    parser = analysis_parser()
    args = parser.parse_args(["spectra", "results/quick", "--wavelet", "db2", "--level", "1"])
    assert (args.wavelet, args.level, args.mode, args.temperature, args.order_seed) == ("db2", 1, "zero", 4.0, 0)
    args = parser.parse_args(["spectra", str(tmp_path / "nowhere")])
    with pytest.raises(ConfigError, match="does not exist"):
        args.fn(args)


def test_a_cell_trained_with_other_augmentation_is_marked(tmp_path):
    suite_dir = make_results(tmp_path)
    marked = METHODS[-1]
    manifest = json.loads((suite_dir / "manifest.json").read_text())
    for job in manifest["jobs"]:
        path = suite_dir / "runs" / job["run_id"] / "record.json"
        if job["label"] == marked and path.exists():
            record = json.loads(path.read_text())
            record["spec"]["recipe"].update(augment="strong", mixup_alpha=0.2)
            path.write_text(json.dumps(record))
    write_report(suite_dir, tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    main_table = table.split("## Paired")[0]
    rows = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("|")}
    assert all("[aug: strong + mixup α=0.2]" in line for name, line in rows.items() if name == display_name(marked))
    assert sum("[aug:" in line for line in rows.values()) == 1
    assert "Training augmentation: standard, except where a cell says [aug: …]." in table
    summary = {(r["dataset"], r["label"]): r for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    assert {r["augment"] for (_, label), r in summary.items() if label == marked} == {"strong + mixup α=0.2"}
