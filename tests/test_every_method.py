"""Registry-wide: every registered method trains on `digits` with finite, named terms.
A new method file is picked up here without editing this test."""

import math
import re
from pathlib import Path

import pytest

import kdbench
from kdbench import store
from kdbench.engine import EngineOptions, train_run

from conftest import TINY_RECIPE, student_spec

README = Path(__file__).resolve().parents[1] / "README.md"
FEW_STEPS = EngineOptions(progress=False, subset=192)


@pytest.mark.parametrize("name", kdbench.list_methods())
def test_method_trains_and_logs_its_terms(name, teacher_out, tmp_path):
    out, teacher = teacher_out
    method = kdbench.create_method(name)
    spec = student_spec(teacher, method=name, recipe=TINY_RECIPE.model_copy(update={"epochs": 1}))
    if not method.needs.teacher:
        spec = spec.model_copy(update={"teacher": None})
    record = train_run(spec, tmp_path, FEW_STEPS, out / teacher.run_id / store.WEIGHTS)
    terms = {f"loss_{term}": v for term, v in record.metrics[0].losses.items()}
    assert terms and all(math.isfinite(v) for v in terms.values()), terms


@pytest.mark.parametrize("name", kdbench.list_methods())
def test_extra_modules_are_counted_in_the_record(name, teacher_out, tmp_path, monkeypatch):
    """The parameters a method makes in its setup (CRD's heads, FreeKD's prompts, CTKD's
    temperature, ...) are the record's count of the method's parameters; none, for a method
    that makes none. The method set up is caught as the engine sets it up."""
    set_up = []
    method_class = kdbench.method.METHODS.get(name)
    setup = method_class.setup
    monkeypatch.setattr(method_class, "setup", lambda self, context: set_up.append(self) or setup(self, context))
    out, teacher = teacher_out
    spec = student_spec(teacher, method=name, recipe=TINY_RECIPE.model_copy(update={"epochs": 1}))
    if not kdbench.create_method(name).needs.teacher:
        spec = spec.model_copy(update={"teacher": None})
    record = train_run(spec, tmp_path, FEW_STEPS, out / teacher.run_id / store.WEIGHTS)
    (method,) = set_up
    own = sum(p.numel() for p in method.parameters())
    assert record.parameters.method == own


def test_readme_example_method_loads_from_a_folder_and_trains(teacher_out, tmp_path):
    text = README.read_text()
    section = text[text.index("## Adding a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "logit_mse.py").write_text(code)
    assert kdbench.load_method_files(tmp_path / "methods") == ["logit_mse"]
    assert kdbench.load_method_files(tmp_path / "methods") == []  # loading twice is harmless
    out, teacher = teacher_out
    spec = student_spec(teacher, method="logit_mse", hparams={"w_mse": 0.5},
                        recipe=TINY_RECIPE.model_copy(update={"epochs": 1}))
    record = train_run(spec, tmp_path / "run", FEW_STEPS, out / teacher.run_id / store.WEIGHTS)
    assert {"ce", "mse"} <= set(record.metrics[0].losses)
