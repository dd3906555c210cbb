import pytest

import kdbench
from kdbench.errors import ConfigError, UnknownNameError
from kdbench.registry import Registry


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown method 'kdd'; did you mean 'kd'"):
        kdbench.create_method("kdd")
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet8x5'; did you mean 'resnet8x4'"):
        kdbench.create_model("resnet8x5", num_classes=10)


def test_unknown_name_without_close_match_lists_known_names():
    registry = Registry("widget")
    registry.register("alpha", object())
    with pytest.raises(UnknownNameError, match=r"unknown widget 'zzz'; known: alpha"):
        registry.get("zzz")


def test_listing_is_sorted_and_filterable():
    registry = Registry("widget")
    for name in ("b1", "a2", "a1"):
        registry.register(name, name)
    assert registry.names() == ["a1", "a2", "b1"]
    assert registry.names("a*") == ["a1", "a2"]


def test_two_different_entries_under_one_name_are_refused():
    registry = Registry("widget")

    class A: ...

    class B: ...

    registry.register("x", A)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("x", B)


def test_discovery_runs_once_on_first_lookup():
    calls = []
    registry = Registry("widget", discover=lambda: (calls.append(1), registry.register("found", 1)))
    assert calls == []
    assert "found" in registry and registry.names() == ["found"]
    assert calls == [1]


def test_top_level_api_lists_builtins():
    assert {"none", "kd"} <= set(kdbench.list_methods())
    assert "resnet8x4" in kdbench.list_models()
    assert {"digits", "synthetic-fg", "cifar100", "cub200"} <= set(kdbench.list_datasets())
    assert kdbench.create_dataset("digits", image_size=8).num_classes == 10


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"tmperature": 2}, r"method 'kd': unknown hyperparameter 'tmperature'; did you mean 'temperature'"),
        ({"temperature": "hot"}, r"method 'kd': hyperparameter 'temperature'"),
        ({"temperature": -1}, r"method 'kd': hyperparameter 'temperature': .*greater than 0"),
        ({"w_kd": -0.5}, r"hyperparameter 'w_kd'"),
    ],
)
def test_bad_hyperparameters_name_the_method_and_key(hparams, message):
    with pytest.raises(ConfigError, match=message):
        kdbench.create_method("kd", **hparams)


def test_hyperparameters_are_typed_with_defaults():
    method = kdbench.create_method("kd", temperature="2")
    assert method.hparams.temperature == 2.0 and method.hparams.w_ce == 0.1 and method.hparams.w_kd == 0.9
