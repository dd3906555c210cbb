"""Fidelity, calibration and confusable classes (``analysis.fidelity``), the ranking across
cells (``analysis.ranking``) and the teacher's logits the engine keeps for them. Expected
values come from scipy, scikit-learn or a hand count on cases built so their answer is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, log_loss

from kdbench import store
from kdbench.analysis import fidelity, ranking
from kdbench.store.checkpoints import safe_load
from kdbench.engine import EngineOptions, train_run

from conftest import TINY_RECIPE, student_spec


def random_logits(seed: int, n: int = 200, classes: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, classes, generator=generator, dtype=torch.float64) * 3
    student = teacher + torch.randn(n, classes, generator=generator, dtype=torch.float64) * 2
    labels = torch.randint(classes, (n,), generator=generator)
    return student, teacher, labels


def softmax(x: torch.Tensor) -> np.ndarray:
    z = x.numpy() - x.numpy().max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def test_agreement_kl_and_nll_match_sklearn_and_scipy():
    student, teacher, labels = random_logits(0)
    assert fidelity.agreement(student, teacher) == pytest.approx(
        100 * accuracy_score(teacher.argmax(1).numpy(), student.argmax(1).numpy()))
    p_t, p_s = softmax(teacher), softmax(student)
    assert fidelity.kl_divergence(teacher, student) == pytest.approx(
        np.mean([stats.entropy(p_t[i], p_s[i]) for i in range(len(p_t))]), rel=1e-9)
    assert fidelity.kl_divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-12)
    assert fidelity.nll(student, labels) == pytest.approx(log_loss(labels.numpy(), p_s, labels=range(7)), rel=1e-9)


def test_ece_matches_a_hand_count_over_15_bins():
    student, _, labels = random_logits(1, n=500)
    probs = softmax(student)
    confidence, correct = probs.max(1), probs.argmax(1) == labels.numpy()
    edges = np.linspace(0, 1, 16)
    expected = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert fidelity.ece(student, labels) == pytest.approx(100 * expected, abs=1e-4)


def one_hot_logits(predicted: list[int], classes: int, second: list[int] | None = None) -> torch.Tensor:
    """Logits whose top-1 is ``predicted[i]`` (5) and, where given, runner-up ``second[i]`` (1)."""
    logits = torch.zeros(len(predicted), classes, dtype=torch.float64)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 5.0
    if second is not None:
        logits[torch.arange(len(second)), torch.tensor(second)] = 1.0
    return logits


def test_confusable_classes_follow_the_confusion_counts_then_the_probabilities():
    # class 0: predicted 2 twice, 1 once, right once -> partners 2 then 1; class 1: never
    # confused, but its samples' runner-up is 3 -> the probability breaks the tie: 3 first.
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    predicted = [2, 2, 1, 0, 1, 1, 2, 3]
    second = [1, 1, 2, 1, 3, 3, 0, 0]
    partners = fidelity.confusable_classes(one_hot_logits(predicted, 4, second), labels, 4, k=2)
    assert partners[0].tolist() == [2, 1]
    assert partners[1].tolist()[0] == 3
    assert partners[2].tolist()[0] == 0 and partners[3].tolist()[0] == 0
    # k above the number of other classes keeps them all; a class without samples has none
    assert fidelity.confusable_classes(one_hot_logits(predicted, 5), labels, 5, k=9).shape == (5, 4)
    assert fidelity.confusable_classes(one_hot_logits(predicted, 5), labels, 5, k=2)[4].tolist() == [-1, -1]


def test_confusable_accuracy_on_a_case_built_so_its_answer_is_known():
    """Teacher (on val) confuses 0 with 1 and 2 with 3 (k = 1). Scored on test: 4 samples
    of class 0 (the student beats class 1 on 3 of them), 2 of class 2 (beats 3 on 1), and
    2 of class 1, whose partner is 0 (beaten on both): 6 of 8 decisions, 75%. The student's
    plain accuracy on the same samples differs (its top-1 is often a third class)."""
    val_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    teacher_val = one_hot_logits([1, 0, 0, 1, 3, 2, 2, 3], 4)
    labels = torch.tensor([0, 0, 0, 0, 2, 2, 1, 1])
    student = torch.tensor([
        [1.0, 0.0, 9.0, 0.0],  # 0 vs 1: right (top-1 wrong: 2)
        [1.0, 0.5, 0.0, 9.0],  # right (top-1 wrong: 3)
        [2.0, 1.0, 0.0, 0.0],  # right
        [0.0, 1.0, 0.0, 0.0],  # wrong
        [0.0, 0.0, 1.0, 0.0],  # 2 vs 3: right
        [0.0, 0.0, 0.0, 1.0],  # wrong
        [0.0, 1.0, 0.0, 5.0],  # 1 vs 0: right
        [0.5, 1.0, 0.0, 0.0],  # right
    ], dtype=torch.float64)
    confusable = fidelity.fit_confusable((student, labels), (teacher_val, val_labels), k=1)
    assert confusable.split == fidelity.VAL_SPLIT
    assert confusable.accuracy(student, labels) == pytest.approx(75.0)
    # a tie is no win: equal logits count as a wrong decision
    assert confusable.accuracy(torch.zeros_like(student), labels) == 0.0


def test_without_validation_logits_the_pairs_are_cross_fitted_on_test():
    """Even-indexed samples confuse 0 with 1, odd-indexed ones 0 with 2 (k = 1): the even
    samples are scored against 2 (from the odd ones) and the odd against 1."""
    labels = torch.zeros(4, dtype=torch.long)
    teacher = one_hot_logits([1, 2, 1, 2], 3)
    student = torch.tensor([[1.0, 0.0, 2.0],   # even, scored against 2: wrong
                            [1.0, 2.0, 0.0],   # odd, against 1: wrong
                            [1.0, 0.0, 0.5],   # even, against 2: right
                            [1.0, 0.5, 2.0]],  # odd, against 1: right
                           dtype=torch.float64)
    confusable = fidelity.fit_confusable((teacher, labels), None, k=1)
    assert confusable.split == fidelity.CROSS_FIT
    assert confusable.accuracy(student, labels) == pytest.approx(50.0)
    # fitted on all four samples instead, 1 and 2 tie in count and probability, the lower
    # index wins, and every sample is scored against 1: 3 of 4
    own = fidelity.fit_confusable((teacher, labels), (teacher, labels), k=1)
    assert own.accuracy(student, labels) == pytest.approx(75.0)


def summary_and_runs(cells: dict[tuple[str, str], dict[str, list[float]]], key: str = "value"
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame([{"dataset": d, "pair": p, "label": label, "role": "student", "status": "finished",
                          "seed": seed, key: v}
                         for (d, p), methods in cells.items() for label, values in methods.items()
                         for seed, v in enumerate(values)])
    summary = (runs.groupby(["dataset", "pair", "label"], sort=False)[key].agg(["mean", "count"]).reset_index()
               .rename(columns={"count": "n"}).assign(role="student", control=""))
    return summary, runs


CELLS = {  # method means per cell chosen so the ranks are: a 1,1,2,1; b 2,3,1,2.5; c 3,2,3,2.5
    ("d1", "t→s"): {"a": [90, 91, 92], "b": [85, 86, 87], "c": [80, 81, 82]},
    ("d2", "t→s"): {"a": [70, 71, 72], "b": [60, 61, 62], "c": [65, 66, 67]},
    ("d3", "t→s"): {"a": [50, 51, 52], "b": [55, 56, 57], "c": [40, 41, 42]},
    ("d4", "t→s"): {"a": [30, 31, 32], "b": [20, 21, 22], "c": [22, 21, 20]},
}


def test_ranking_average_ranks_friedman_and_critical_difference_by_hand():
    summary, runs = summary_and_runs(CELLS)
    result = ranking.rank_methods(summary, runs, reference="b")
    assert result.exists and result.cells == 4
    ranks = dict(zip(result.table["label"], result.table["average_rank"]))
    assert ranks == pytest.approx({"a": 5 / 4, "b": 8.5 / 4, "c": 10.5 / 4})
    assert list(result.table["label"]) == ["a", "b", "c"]
    # Friedman's statistic from the average ranks (Demšar 2006, eq. 2; N = 4 cells, k = 3)
    n, k = 4, 3
    chi2 = 12 * n / (k * (k + 1)) * (sum(r ** 2 for r in ranks.values()) - k * (k + 1) ** 2 / 4)
    # corrected for the one tie of two (d4): divided by 1 − Σ(t³ − t) / (N k (k² − 1))
    assert result.friedman[0] == pytest.approx(chi2 / (1 - (2 ** 3 - 2) / (n * k * (k ** 2 - 1))))
    assert result.friedman[1] == pytest.approx(stats.chi2.sf(result.friedman[0], k - 1))
    # Demšar's table: q_0.05 = 2.343 for 3 methods
    assert result.critical_difference == pytest.approx(2.343 * math.sqrt(k * (k + 1) / (6 * n)), abs=1e-3)
    assert result.nemenyi.shape == (3, 3) and result.nemenyi.loc["a", "a"] == 1.0


def test_pooled_difference_to_the_reference_is_the_paired_test_over_every_cell_and_seed():
    summary, runs = summary_and_runs(CELLS)
    result = ranking.rank_methods(summary, runs, reference="b")
    row = result.table.set_index("label").loc["a"]
    differences = [a - b for methods in CELLS.values() for a, b in zip(methods["a"], methods["b"])]
    assert row["pooled_n"] == 12
    assert row["pooled_diff_mean"] == pytest.approx(np.mean(differences))
    assert row["pooled_p_value"] == pytest.approx(stats.ttest_1samp(differences, 0).pvalue)
    half = stats.t.ppf(0.975, 11) * np.std(differences, ddof=1) / math.sqrt(12)
    assert row["pooled_ci_low"] == pytest.approx(np.mean(differences) - half)
    assert math.isnan(result.table.set_index("label").loc["b", "pooled_diff_mean"])  # the reference itself


def test_one_cell_has_no_ranking_and_methods_missing_a_cell_are_left_out():
    summary, runs = summary_and_runs({("d1", "t→s"): CELLS[("d1", "t→s")]})
    single = ranking.rank_methods(summary, runs, reference="b")
    assert not single.exists and "no ranking across cells exists" in single.reason
    assert "no ranking across cells exists" in ranking.markdown(single, "B")
    cells = {key: dict(methods) for key, methods in CELLS.items()}
    cells[("d1", "t→s")]["d"] = [99.0, 99.0, 99.0]  # d ran in one cell only
    summary, runs = summary_and_runs(cells)
    result = ranking.rank_methods(summary, runs, reference="b")
    assert result.left_out == ["d"] and "d" not in set(result.table["label"])


def test_summary_has_each_measures_paired_test_against_the_reference():
    agreement = {("d1", "t→s"): {"kd": [80.0, 82.0, 81.0], "figkd": [84.0, 83.5, 86.0]}}
    summary, runs = summary_and_runs(agreement, key="agreement")
    for column in fidelity.RUN_COLUMNS:
        if column not in runs:
            runs[column] = math.nan
    runs["confusable_split"] = "val"
    out = fidelity.summarise(runs, summary, reference="kd", k=3).set_index("label")
    expected = stats.ttest_rel([84.0, 83.5, 86.0], [80.0, 82.0, 81.0])
    assert out.loc["figkd", "agreement_mean"] == pytest.approx(np.mean([84.0, 83.5, 86.0]))
    assert out.loc["figkd", "agreement_p_value"] == pytest.approx(expected.pvalue)
    assert out.loc["figkd", "agreement_diff_mean"] == pytest.approx(np.mean([4.0, 1.5, 5.0]))
    assert pd.isna(out.loc["kd", "agreement_paired_n"])  # the reference is not tested against itself
    assert out.loc["figkd", "confusable_split"] == "val" and out.loc["figkd", "confusable_k"] == 3


def test_a_student_keeps_its_teachers_test_and_validation_logits(teacher_out, tmp_path):
    """``teacher_logits.pt``: the teacher's logits on the test samples the student was
    scored on (the teacher run's own test logits, first rows, as a smoke run keeps the
    first samples) and on the validation split; a student without a teacher has none."""
    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    options = EngineOptions(progress=False, subset=96)
    spec = student_spec(teacher, recipe=TINY_RECIPE.model_copy(update={"epochs": 1}))
    record = train_run(spec, tmp_path / "kd", options, weights)
    saved = safe_load(tmp_path / "kd" / store.TEACHER_LOGITS)
    own = safe_load(out / teacher.run_id / store.TEST_LOGITS)
    assert torch.equal(saved["test"]["labels"], own["labels"][:96])
    assert torch.allclose(saved["test"]["logits"].float(), own["logits"][:96].float(), atol=1e-2)
    student = safe_load(tmp_path / "kd" / store.TEST_LOGITS)
    assert torch.equal(saved["test"]["labels"], student["labels"])
    top1 = 100 * (saved["test"]["logits"].float().argmax(1) == saved["test"]["labels"]).double().mean().item()
    assert top1 == pytest.approx(record.summary.teacher_test_top1)
    assert saved["val"]["logits"].shape == (96, 10) and len(saved["val"]["labels"]) == 96
    alone = student_spec(teacher, method="none", recipe=spec.recipe).model_copy(update={"teacher": None})
    train_run(alone, tmp_path / "none", options)
    assert not (tmp_path / "none" / store.TEACHER_LOGITS).exists()


def test_a_suites_runs_get_their_measures_from_the_saved_logits(tmp_path):
    """On the report's fixture (teacher runs, no teacher_logits.pt: the teacher run's own
    test logits, pairs cross-fitted on test): each run's agreement is sklearn's between its
    saved logits and the teacher's, and the tables carry the summary's numbers."""
    from test_analysis import SAMPLES, make_results

    from kdbench.analysis.report import reference_label, run_table, summarise

    suite_dir = make_results(tmp_path)
    runs, manifest = run_table(suite_dir)
    runs = pd.concat([runs, fidelity.fidelity_columns(suite_dir, runs)], axis=1)
    finished = runs[(runs["status"] == "finished") & (runs["role"] != "teacher")]
    assert len(finished) == 16 and finished["agreement"].notna().all()
    teachers = runs[runs["role"] == "teacher"].set_index("dataset")["run_id"]
    for run in finished.itertuples():
        own = safe_load(suite_dir / "runs" / run.run_id / store.TEST_LOGITS)["logits"].double()
        teacher = safe_load(suite_dir / "runs" / teachers[run.dataset] / store.TEST_LOGITS)["logits"].double()
        assert run.agreement == pytest.approx(100 * accuracy_score(teacher.argmax(1), own.argmax(1)))
        assert run.confusable_split == fidelity.CROSS_FIT
    assert len(own) == SAMPLES
    summary = fidelity.summarise(runs, summarise(runs, manifest), reference_label(manifest), fidelity.DEFAULT_K)
    row = summary[(summary["dataset"] == "digits") & (summary["label"] == "figkd")].iloc[0]
    cell = finished[(finished["dataset"] == "digits") & (finished["label"] == "figkd")]
    assert row["agreement_mean"] == pytest.approx(cell["agreement"].mean())
    text = fidelity.markdown(summary, "KD", fidelity.DEFAULT_K)
    assert f"| FiGKD | {row['agreement_mean']:.2f} ± {row['agreement_std']:.2f}" in text
    assert "test, 2-fold cross-fit split" in text
    with pytest.raises(Exception, match="--confusable-k"):
        fidelity.fidelity_columns(suite_dir, runs, k=0)
