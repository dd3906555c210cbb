"""FitNet and ReviewKD: golden values from hand-written references (numpy loops, never the
code under test), the authors' per-model channel tables, and one training step on every
CIFAR-zoo pair of suites/cifar100.yaml and on the timm pair of suites/fine_grained.yaml,
each with the suite's own per-pair hyperparameters."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import store
from kdbench.errors import ConfigError
from kdbench.method import Batch, TrainContext, create_method
from kdbench.methods.fitnet import fitnet_loss, hint_regressor
from kdbench.methods.reviewkd import ABF, hcl_loss, review
from kdbench.models import ModelOutput, create_model, preact
from kdbench.suite import load_suite
from kdbench.engine import EngineOptions, train_run

from conftest import TINY_RECIPE, student_spec

SUITES = Path(__file__).resolve().parents[1] / "suites"
METHODS = ("fitnet", "reviewkd")


def suite_pairs(suite: str) -> list[tuple[str, str, str, dict]]:
    """(method, teacher, student, hyperparameters) of each FitNet/ReviewKD run of a suite."""
    runs = {}
    for job in load_suite(SUITES / suite).jobs:
        if job.label in METHODS:
            spec = job.spec
            runs[(job.label, spec.teacher.model, spec.student)] = dict(spec.hparams)
    return [(*key, hparams) for key, hparams in runs.items()]


CIFAR_RUNS = suite_pairs("cifar100.yaml")
TIMM_RUNS = suite_pairs("fine_grained.yaml")


@functools.cache
def frozen_teacher(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=100).eval().requires_grad_(False)


def probe(method_name: str, hparams: dict, teacher_name: str, student_name: str, size: int):
    """Set up the method as the engine does: taps from ``needs``, probe outputs, setup."""
    method = create_method(method_name, **hparams)
    teacher = frozen_teacher(teacher_name)
    torch.manual_seed(1)
    student = create_model(student_name, num_classes=100)
    teacher.tap(method.needs.teacher_stages)
    student.tap(method.needs.stages)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        student_probe, teacher_out = student.eval()(images).detach(), teacher(images)
    student.train()
    method.setup(TrainContext(100, torch.arange(100), 240, 0, student_probe, teacher_out))
    return method, student, teacher_out, images, student_probe


# --- FitNet ----------------------------------------------------------------------------------


def test_fitnet_loss_is_the_mean_squared_error():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    expected = sum((s[idx] - t[idx]) ** 2 for idx in np.ndindex(s.shape)) / s.size
    assert fitnet_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "student_shape,teacher_shape,layer,kernel",
    [
        ((2, 8, 16, 16), (2, 4, 8, 8), nn.Conv2d, (3, 3)),  # twice as large: stride 2
        ((2, 8, 8, 8), (2, 4, 16, 16), nn.ConvTranspose2d, (4, 4)),  # half as large
        ((2, 8, 8, 8), (2, 4, 8, 8), nn.Conv2d, (1, 1)),
        ((2, 8, 8, 8), (2, 4, 5, 5), nn.Conv2d, (4, 4)),  # 1 + 8 − 5
    ],
)
def test_hint_regressor_is_mdistillers_convreg(student_shape, teacher_shape, layer, kernel):
    regressor = hint_regressor(torch.Size(student_shape), torch.Size(teacher_shape))
    assert type(regressor[0]) is layer and regressor[0].kernel_size == kernel
    assert [type(m) for m in regressor[1:]] == [nn.BatchNorm2d, nn.ReLU]
    assert regressor(torch.randn(student_shape)).shape == teacher_shape


def test_hint_regressor_refuses_a_student_map_under_half_the_teachers():
    with pytest.raises(ConfigError, match="hint_stage"):
        hint_regressor(torch.Size((2, 8, 4, 4)), torch.Size((2, 4, 16, 16)))


def test_fitnet_term_is_w_feat_times_the_regressed_mse_and_spares_the_teacher():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(2, 6, 8, 8, generator=g, requires_grad=True)
    ft = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    head = nn.Linear(6, 5)
    student = ModelOutput(head(fs.mean((2, 3))), {"stage2": fs}, fs, fs.mean((2, 3)), head)
    teacher = ModelOutput(torch.zeros(2, 5), {"stage3": ft}, ft, ft.mean((2, 3)), None)
    method = create_method("fitnet", teacher_hint_stage="stage3", w_feat=3.0)
    assert (method.needs.stages, method.needs.teacher_stages) == (("stage2",), ("stage3",))
    method.setup(TrainContext(5, torch.arange(5), 240, 0, student, teacher))
    terms = method.loss(student, teacher, Batch(torch.zeros(2), torch.tensor([0, 1]), torch.arange(2)), 1)
    regressed = method.regressor(fs).detach().numpy()
    expected = 3.0 * ((regressed - ft.detach().numpy()) ** 2).mean()
    assert terms["fitnet"].item() == pytest.approx(float(expected), rel=1e-5)
    sum(terms.values()).backward()
    assert ft.grad is None and fs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.regressor.parameters())


# --- ReviewKD: HCL ---------------------------------------------------------------------------


def np_adaptive_avg_pool(x: np.ndarray, k: int) -> np.ndarray:
    """PyTorch's adaptive average pooling: bin i covers rows ⌊iH/k⌋ … ⌈(i+1)H/k⌉−1."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, k, k))
    for i in range(k):
        for j in range(k):
            rows = slice(i * h // k, -(-(i + 1) * h // k))
            cols = slice(j * w // k, -(-(j + 1) * w // k))
            out[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return out


# Pyramid weights per map size, written out: 4, 2 and 1 pooled where smaller than the map,
# the first used weighted 1/2, then 1/4, 1/8; normalised by the sum with the full map's 1.
HCL_WEIGHTS = {8: {4: 1 / 2, 2: 1 / 4, 1: 1 / 8}, 6: {4: 1 / 2, 2: 1 / 4, 1: 1 / 8},
               4: {2: 1 / 2, 1: 1 / 4}, 2: {1: 1 / 2}, 1: {}}


def np_hcl(s: np.ndarray, t: np.ndarray) -> float:
    weights = HCL_WEIGHTS[s.shape[2]]
    loss = ((s - t) ** 2).mean()
    for k, w in weights.items():
        loss += w * ((np_adaptive_avg_pool(s, k) - np_adaptive_avg_pool(t, k)) ** 2).mean()
    return loss / (1 + sum(weights.values()))


def test_hcl_on_a_2x2_map_by_hand():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # full MSE (1+4+9+16)/4 = 7.5; 1×1 pool 2.5² = 6.25 weighted 1/2; over 1 + 1/2
    assert hcl_loss([s], [torch.zeros_like(s)]).item() == pytest.approx((7.5 + 6.25 / 2) / 1.5)


def test_hcl_matches_hand_written_pyramid_pooling():
    rng = np.random.default_rng(1)
    sizes = [8, 6, 4, 2, 1]  # 6: overlapping 4×4 bins
    pairs = [(rng.normal(size=(2, 3, n, n)), rng.normal(size=(2, 3, n, n))) for n in sizes]
    got = hcl_loss([torch.tensor(s) for s, _ in pairs], [torch.tensor(t) for _, t in pairs])
    assert got.item() == pytest.approx(sum(np_hcl(s, t) for s, t in pairs), rel=1e-10)


# --- ReviewKD: ABF ---------------------------------------------------------------------------


def np_batch_norm(x: np.ndarray) -> np.ndarray:
    """Training-mode BN with unit scale and zero shift: batch statistics, biased variance."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5)


def np_conv3x3(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((b, weight.shape[0], h, w))
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = np.einsum("bcuv,ocuv->bo", padded[:, :, i:i + 3, j:j + 3], weight)
    return out


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_abf_fuses_with_attention_then_resizes_to_the_teacher():
    torch.manual_seed(0)
    abf = ABF(in_channels=3, mid_channels=2, out_channels=4, fuse=True).double()
    rng = np.random.default_rng(2)
    x, deeper = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 2, 1, 1))
    output, fused = abf(torch.tensor(x), torch.tensor(deeper), torch.Size((4, 4)))

    w_reduce = abf.reduce[0].weight.detach().numpy()[:, :, 0, 0]
    w_att, b_att = abf.attention[0].weight.detach().numpy()[:, :, 0, 0], abf.attention[0].bias.detach().numpy()
    reduced = np_batch_norm(np.einsum("oc,bchw->bohw", w_reduce, x))
    up = np.broadcast_to(deeper, reduced.shape)  # nearest from 1×1 to 2×2
    att = np_sigmoid(np.einsum("oc,bchw->bohw", w_att, np.concatenate([reduced, up], 1)) + b_att[None, :, None, None])
    mixed = att[:, :1] * reduced + att[:, 1:] * up
    resized = mixed.repeat(2, axis=2).repeat(2, axis=3)  # nearest from 2×2 to 4×4
    expected = np_batch_norm(np_conv3x3(resized, abf.output[0].weight.detach().numpy()))
    np.testing.assert_allclose(fused.detach().numpy(), resized, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(output.detach().numpy(), expected, rtol=1e-8, atol=1e-10)


def test_review_runs_from_the_deepest_level_and_hands_each_fused_map_up():
    torch.manual_seed(0)
    abfs = nn.ModuleList([ABF(3, 2, 5, fuse=True), ABF(4, 2, 6, fuse=False)])
    shallow, deep = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 1, 1)
    sizes = [torch.Size((8, 8)), torch.Size((1, 1))]
    outputs = review([shallow, deep], abfs, sizes)
    deep_out, deep_fused = abfs[1](deep, None, sizes[1])
    shallow_out, _ = abfs[0](shallow, deep_fused, sizes[0])
    torch.testing.assert_close(outputs, [shallow_out, deep_out])
    assert [o.shape[1:] for o in outputs] == [(5, 8, 8), (6, 1, 1)]
    assert abfs[1].attention is None  # the deepest level has nothing to fuse


def test_reviewkd_term_warms_up_linearly_then_holds():
    method, student, teacher_out, images, _ = probe("reviewkd", {"w_reviewkd": 2.0}, "resnet20", "resnet8", 16)
    batch = Batch(images, torch.tensor([0, 1]), torch.arange(2))
    out = student(images)
    values = {e: method.loss(out, teacher_out, batch, e)["reviewkd"].item() for e in (1, 10, 20, 60)}
    assert values[1] == pytest.approx(values[20] / 20, rel=1e-5)
    assert values[10] == pytest.approx(values[20] / 2, rel=1e-5)
    assert values[60] == pytest.approx(values[20], rel=1e-5)


def test_reviewkd_distils_to_the_teachers_preact_maps_as_released():
    """mdistiller's ReviewKD compares the ABF outputs with the teacher's ``preact_feats``
    (its stages before their last ReLU), then the pooled embedding; ``teacher_preact: false``
    takes the stage outputs."""
    method, student, teacher_out, images, _ = probe("reviewkd", {}, "resnet20", "resnet8", 16)
    stages = ("stage1", "stage2", "stage3")
    assert method.needs.teacher_stages == tuple(preact(s) for s in stages) and method.needs.stages == stages
    batch = Batch(images, torch.tensor([0, 1]), torch.arange(2))
    out = student(images)
    pooled = teacher_out.embedding[:, :, None, None]

    def term(teacher_maps):
        reviewed = review([out.features[s] for s in stages] + [out.embedding[:, :, None, None]], method.abfs,
                          [t.shape[-2:] for t in teacher_maps])
        return 5.0 * hcl_loss(reviewed, teacher_maps).item()

    preacts = [teacher_out.features[preact(s)] for s in stages]
    assert all((m < 0).any() for m in preacts)
    got = method.loss(out, teacher_out, batch, 20)["reviewkd"].item()
    assert got == pytest.approx(term(preacts + [pooled]), rel=1e-6)
    assert got != pytest.approx(term([F.relu(m) for m in preacts] + [pooled]), rel=1e-2)
    assert create_method("reviewkd", teacher_preact=False).needs.teacher_stages == stages


def test_reviewkd_refuses_unpaired_stages():
    with pytest.raises(ConfigError, match="as many stages"):
        create_method("reviewkd", stages=["stage2", "stage3"], teacher_stages=["stage3"])


# --- the authors' per-model settings, derived from the probe ------------------------------------

# dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py (build_review_kd), shallow to deep:
# student → (in_channels, student map sizes); teacher → (out_channels, teacher map sizes).
# The release lists sizes deep to shallow and pads some lists with an unused entry.
RELEASED_STUDENTS = {
    "resnet20": ([16, 32, 64, 64], [32, 16, 8, 1]),
    "resnet32": ([16, 32, 64, 64], [32, 16, 8, 1]),
    "resnet8x4": ([64, 128, 256, 256], [32, 16, 8, 1]),
    "wrn_16_2": ([32, 64, 128, 128], [32, 16, 8, 1]),
    "wrn_40_1": ([16, 32, 64, 64], [32, 16, 8, 1]),
    "vgg8": ([128, 256, 512, 512, 512], [16, 8, 4, 4, 1]),
    "MobileNetV2": ([12, 16, 48, 160, 1280], [16, 8, 4, 2, 1]),
    "ShuffleV1": ([240, 480, 960, 960], [16, 8, 4, 1]),
    "ShuffleV2": ([116, 232, 464, 1024], [16, 8, 4, 1]),
}
RELEASED_TEACHERS = {
    "resnet56": ([16, 32, 64, 64], [32, 16, 8, 1]),
    "resnet110": ([16, 32, 64, 64], [32, 16, 8, 1]),
    "resnet32x4": ([64, 128, 256, 256], [32, 16, 8, 1]),
    "wrn_40_2": ([32, 64, 128, 128], [32, 16, 8, 1]),
    "vgg13": ([128, 256, 512, 512, 512], [16, 8, 4, 4, 1]),
    "ResNet50": ([256, 512, 1024, 2048, 2048], [32, 16, 8, 4, 1]),
}
# mdistiller's FitNet hint, feats[HINT_LAYER=2] of its CIFAR models at 32 px: (channels, size).
MDISTILLER_HINTS = {
    "resnet20": (32, 16), "resnet32": (32, 16), "resnet56": (32, 16), "resnet110": (32, 16),
    "resnet8x4": (128, 16), "resnet32x4": (128, 16), "wrn_16_2": (64, 16), "wrn_40_1": (32, 16),
    "wrn_40_2": (64, 16), "vgg8": (256, 8), "vgg13": (256, 8), "MobileNetV2": (16, 8),
    "ShuffleV1": (480, 8), "ShuffleV2": (232, 8), "ResNet50": (512, 16),
}


def test_every_cifar100_pair_runs_both_methods():
    pairs = {(pair.teacher, pair.student) for pair in load_suite(SUITES / "cifar100.yaml").file.pairs}
    assert {(m, t, s) for m, t, s, _ in CIFAR_RUNS} == {(m, t, s) for m in METHODS for t, s in pairs}


@pytest.mark.parametrize("teacher,student,hparams", [r[1:] for r in CIFAR_RUNS if r[0] == "reviewkd"],
                         ids=[f"{r[1]}-{r[2]}" for r in CIFAR_RUNS if r[0] == "reviewkd"])
def test_reviewkd_derives_the_released_channels_and_sizes(teacher, student, hparams):
    method, _, teacher_out, _, student_probe = probe("reviewkd", hparams, teacher, student, 32)
    in_channels, student_sizes = RELEASED_STUDENTS[student]
    out_channels, teacher_sizes = RELEASED_TEACHERS[teacher]
    assert [abf.reduce[0].in_channels for abf in method.abfs] == in_channels
    assert [abf.output[0].out_channels for abf in method.abfs] == out_channels
    assert {abf.reduce[0].out_channels for abf in method.abfs} == {min(512, in_channels[-1])}
    levels_s = [student_probe.features[s] for s in method.hparams.stages]
    levels_t = [teacher_out.features[s] for s in method.teacher_taps]
    assert [m.shape[-1] for m in levels_s] + [1] == student_sizes
    assert [m.shape[-1] for m in levels_t] + [1] == teacher_sizes


@pytest.mark.parametrize("teacher,student,hparams", [r[1:] for r in CIFAR_RUNS if r[0] == "fitnet"],
                         ids=[f"{r[1]}-{r[2]}" for r in CIFAR_RUNS if r[0] == "fitnet"])
def test_fitnet_hints_are_mdistillers(teacher, student, hparams):
    method, _, teacher_out, _, student_probe = probe("fitnet", hparams, teacher, student, 32)
    hint_s = student_probe.features[method.hparams.hint_stage]
    hint_t = teacher_out.features[method.teacher_hint]
    assert (hint_s.shape[1], hint_s.shape[-1]) == MDISTILLER_HINTS[student]
    assert (hint_t.shape[1], hint_t.shape[-1]) == MDISTILLER_HINTS[teacher]


# --- one training step per pair ----------------------------------------------------------------


def one_step(method_name: str, hparams: dict, teacher: str, student_name: str, size: int) -> None:
    method, student, teacher_out, images, _ = probe(method_name, hparams, teacher, student_name, size)
    params = list(student.parameters()) + list(method.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in method.parameters()]
    terms = method.loss(student(images), teacher_out, Batch(images, torch.tensor([3, 7]), torch.arange(2)), 30)
    assert set(terms) == {"ce", method_name}
    assert all(torch.isfinite(v) for v in terms.values()), terms
    sum(terms.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())
    assert any(p.grad.abs().sum() > 0 for p in student.parameters() if p.grad is not None)
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, method.parameters()))


@pytest.mark.parametrize("method,teacher,student,hparams", CIFAR_RUNS,
                         ids=[f"{m}-{t}-{s}" for m, t, s, _ in CIFAR_RUNS])
def test_one_step_on_every_cifar100_pair(method, teacher, student, hparams):
    one_step(method, hparams, teacher, student, 16)


@pytest.mark.parametrize("method,teacher,student,hparams", TIMM_RUNS, ids=[f"{m}-{t}-{s}" for m, t, s, _ in TIMM_RUNS])
def test_one_step_on_the_timm_pair_at_224_px(method, teacher, student, hparams):
    one_step(method, hparams, teacher, student, 224)


def test_the_engine_taps_the_teacher_at_its_own_stages(teacher_out, tmp_path):
    """FitNet from resnet14's stage3 to resnet8's stage2 through train_run: the teacher is
    tapped with Needs.teacher_stages, the student with Needs.stages."""
    out, teacher = teacher_out
    spec = student_spec(teacher, method="fitnet", hparams={"teacher_hint_stage": "stage3"},
                        recipe=TINY_RECIPE.model_copy(update={"epochs": 1}))
    weights = out / teacher.run_id / store.WEIGHTS
    record = train_run(spec, tmp_path, EngineOptions(progress=False, subset=128), weights)
    assert np.isfinite(record.metrics[0].losses["fitnet"])
    assert record.parameters.method > 0
