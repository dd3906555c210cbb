"""kdbench.errors.explain_validation: a pydantic.ValidationError said for people."""

from __future__ import annotations

import pydantic
import pytest

from kdbench.errors import ValidationProblem, explain_validation


class Inner(pydantic.BaseModel, extra="forbid"):
    width: pydantic.PositiveInt = 1
    depth: int = 2


class Outer(pydantic.BaseModel, extra="forbid"):
    name: str
    inner: Inner | None = None
    tags: dict[str, str | list[str]] = {}
    seeds: list[pydantic.NonNegativeInt] = [0]


def error(**values) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as caught:
        Outer(**values)
    return caught.value


def test_an_unknown_key_names_the_closest_allowed_key() -> None:
    assert explain_validation(error(name="a", seedz=[1]), Outer) == "unknown key 'seedz'; did you mean 'seeds'?"


def test_an_unknown_key_with_no_close_one_lists_the_allowed_keys_of_its_nested_model() -> None:
    assert (explain_validation(error(name="a", inner={"zzz": 1}), Outer)
            == "unknown key 'inner.zzz'; allowed: width, depth")


def test_without_the_model_an_unknown_key_has_no_hint() -> None:
    assert explain_validation(error(name="a", seedz=[1])) == "unknown key 'seedz'"


def test_a_missing_key_and_a_bad_value_each_get_a_line() -> None:
    assert explain_validation(error(seeds=[-1]), Outer) == (
        "missing key 'name'; add it\n"
        "'seeds.0': Input should be greater than or equal to 0 (got -1)"
    )


def test_union_tags_are_not_keys_and_repeated_lines_are_said_once() -> None:
    exc = error(name="a", tags={"x": 3})  # fails as str and as list[str]: two errors, one key
    assert [e["loc"] for e in exc.errors()] == [("tags", "x", "str"), ("tags", "x", "list[str]")]
    problems: list[ValidationProblem] = []
    explain_validation(exc, Outer, line=lambda p: problems.append(p) or p.key)
    assert [(p.loc, p.kind, p.got) for p in problems] == [(("tags", "x"), "invalid", 3)] * 2
    assert explain_validation(exc, Outer, line=lambda p: p.key) == "tags.x"


def test_a_caller_words_its_own_lines() -> None:
    exc = error(name="a", seedz=[1], inner={"width": 0})
    text = explain_validation(exc, Outer, line=lambda p: f"[{p.kind}] {p.key}: {p.detail}", separator="; ")
    assert text == ("[invalid] inner.width: Input should be greater than 0 (got 0); "
                    "[unknown] seedz: unknown key; did you mean 'seeds'?")
