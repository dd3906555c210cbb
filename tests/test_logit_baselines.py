"""Golden values and paper identities of the logit baselines DIST, NKD, WTTM, CTKD and the
LSKD plug-in (``logit_stand`` on kd, dkd, figkd and ctkd).

References are written here from the papers' formulas with numpy and python loops, never
with the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.method import Batch, TrainContext, create_method
from kdbench.methods.dist import dist_loss
from kdbench.methods.kd import kd_loss, standardize_logits
from kdbench.methods.nkd import nkd_loss
from kdbench.methods.wttm import wttm_loss
from kdbench.models import ModelOutput


@pytest.fixture(autouse=True)
def _double_precision():
    """Golden values to 1e-10: tensors built inside methods (CTKD's θ) in float64 too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


Z_S = np.array([[1.0, -0.5, 2.0, 0.3, -1.2],
                [0.2, 0.9, -0.4, 1.5, 0.0],
                [-2.0, 0.5, 0.1, 0.7, 1.1]])
Z_T = np.array([[2.5, -1.0, 3.0, 0.0, -2.0],
                [-0.3, 1.8, -1.1, 2.6, 0.4],
                [-1.5, 0.2, 0.9, 0.3, 2.4]])
LABELS = np.array([2, 3, 4])


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def outputs(z_s=Z_S, z_t=Z_T):
    student = ModelOutput(t(z_s).requires_grad_())
    teacher = ModelOutput(t(z_t))
    return student, teacher


def batch(labels=LABELS) -> Batch:
    return Batch(images=torch.zeros(len(labels), 1), labels=torch.as_tensor(labels), index=torch.arange(len(labels)))


def context(student: ModelOutput, teacher: ModelOutput) -> TrainContext:
    return TrainContext(num_classes=student.logits.shape[1], train_labels=torch.as_tensor(LABELS), epochs=240,
                        seed=0, student=student, teacher=teacher)


# --- DIST ----------------------------------------------------------------------------------


def np_dist(z_s, z_t, temperature):
    y_s, y_t = np_softmax(z_s / temperature), np_softmax(z_t / temperature)
    inter = np.mean([1 - np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(len(y_s))])
    intra = np.mean([1 - np.corrcoef(y_s[:, j], y_t[:, j])[0, 1] for j in range(y_s.shape[1])])
    return temperature**2 * inter, temperature**2 * intra


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_matches_pearson_reference(temperature):
    inter, intra = dist_loss(t(Z_S), t(Z_T), temperature)
    ref_inter, ref_intra = np_dist(Z_S, Z_T, temperature)
    # the code's 1e-8 guard moves ρ by about 1e-8 / (‖a‖·‖b‖): 1e-5 for these small columns
    assert inter.item() == pytest.approx(ref_inter, rel=1e-5)
    assert intra.item() == pytest.approx(ref_intra, rel=1e-4)


def test_dist_method_weights_its_two_relations():
    student, teacher = outputs()
    terms = create_method("dist").loss(student, teacher, batch(), epoch=1)
    ref_inter, ref_intra = np_dist(Z_S, Z_T, 4.0)  # defaults: T 4, β = γ = 2, w_ce 1
    assert terms["inter"].item() == pytest.approx(2 * ref_inter, rel=1e-5)
    assert terms["intra"].item() == pytest.approx(2 * ref_intra, rel=1e-4)
    ce = np.mean([-math.log(np_softmax(Z_S[i])[LABELS[i]]) for i in range(3)])
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-9)


def test_dist_with_one_sample_has_a_constant_intra_term():
    z_s = t(Z_S[:1]).requires_grad_()
    inter, intra = dist_loss(z_s, t(Z_T[:1]), 4.0)
    assert intra.item() == 16.0  # every class column is constant: ρ = 0, d = 1, times T²
    (grad,) = torch.autograd.grad(intra, z_s, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(grad) == 0
    y_s, y_t = np_softmax(Z_S[0] / 4), np_softmax(Z_T[0] / 4)
    assert inter.item() == pytest.approx(16 * (1 - np.corrcoef(y_s, y_t)[0, 1]), rel=1e-5)


def test_dist_of_a_copy_is_zero_up_to_the_guard():
    inter, intra = dist_loss(t(Z_T), t(Z_T), 4.0)
    assert 0 <= inter.item() < 1e-4 and 0 <= intra.item() < 1e-4


# --- NKD -----------------------------------------------------------------------------------


def np_nkd(z_s, z_t, labels, temperature, gamma):
    target = rest = 0.0
    for zs, zt, y in zip(z_s, z_t, labels):
        target += -np_softmax(zt)[y] * math.log(np_softmax(zs)[y])
        others = [i for i in range(len(zs)) if i != y]
        hat_t = np_softmax(zt[others] / temperature)
        hat_s = np_softmax(zs[others] / temperature)
        rest += -sum(hat_t[k] * math.log(hat_s[k]) for k in range(len(others)))
    n = len(labels)
    return target / n, gamma * temperature**2 * rest / n


@pytest.mark.parametrize("temperature, gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_reference(temperature, gamma):
    target, rest = nkd_loss(t(Z_S), t(Z_T), torch.as_tensor(LABELS), temperature, gamma)
    ref_target, ref_rest = np_nkd(Z_S, Z_T, LABELS, temperature, gamma)
    assert target.item() == pytest.approx(ref_target, rel=1e-10)
    assert rest.item() == pytest.approx(ref_rest, rel=1e-10)


def test_nkd_non_target_term_ignores_the_target_logits():
    """The normalisation removes the target class: its logit cannot move the non-target term."""
    shifted_s, shifted_t = Z_S.copy(), Z_T.copy()
    shifted_s[np.arange(3), LABELS] += 5.0
    shifted_t[np.arange(3), LABELS] -= 3.0
    _, rest = nkd_loss(t(Z_S), t(Z_T), torch.as_tensor(LABELS), 3.0, 3.5)
    _, rest_shifted = nkd_loss(t(shifted_s), t(shifted_t), torch.as_tensor(LABELS), 3.0, 3.5)
    assert rest_shifted.item() == pytest.approx(rest.item(), rel=1e-12)


def test_nkd_method_terms_and_defaults():
    student, teacher = outputs()
    method = create_method("nkd")
    assert (method.hparams.temperature, method.hparams.gamma, method.hparams.w_ce) == (3.0, 3.5, 1.0)
    terms = method.loss(student, teacher, batch(), epoch=1)
    ref_target, ref_rest = np_nkd(Z_S, Z_T, LABELS, 3.0, 3.5)
    assert terms["nkd_target"].item() == pytest.approx(ref_target, rel=1e-10)
    assert terms["nkd_non_target"].item() == pytest.approx(ref_rest, rel=1e-10)
    sum(terms.values()).backward()
    assert student.logits.grad is not None and torch.isfinite(student.logits.grad).all()


# --- WTTM ----------------------------------------------------------------------------------


def np_wttm(z_s, z_t, gamma):
    total = 0.0
    for zs, zt in zip(z_s, z_t):
        powered = np_softmax(zt) ** gamma
        u = powered.sum()
        total += u * np_kl(powered / u, np_softmax(zs))
    return total / len(z_s)


@pytest.mark.parametrize("gamma", [0.2, 0.5, 1.0])
def test_wttm_matches_power_transform_reference(gamma):
    assert wttm_loss(t(Z_S), t(Z_T), gamma).item() == pytest.approx(np_wttm(Z_S, Z_T, gamma), rel=1e-10)


def test_wttm_power_transform_is_teacher_temperature_and_gamma_one_is_kd_at_t1():
    # p_t^γ / U = softmax(z_t·γ): the transform is a temperature 1/γ on the teacher alone.
    gamma = 0.25
    powered = np_softmax(Z_T[0]) ** gamma
    assert np.allclose(powered / powered.sum(), np_softmax(Z_T[0] * gamma))
    # γ = 1: U = 1 for every sample, so WTTM is KD at T = 1.
    assert wttm_loss(t(Z_S), t(Z_T), 1.0).item() == pytest.approx(kd_loss(t(Z_S), t(Z_T), 1.0).item(), rel=1e-12)


def test_wttm_is_exact_where_the_power_underflows():
    z_t = t([[0.0, -800.0, -900.0]])  # p_t of the last classes underflows float64 to 0
    z_s = t([[0.5, -1.0, 0.0]])
    loss = wttm_loss(z_s, z_t, 0.01)
    log_p = np.array([0.0, -800.0, -900.0]) * 0.01  # γ·log p_t (log p_t ≈ z_t here)
    target = np_softmax(log_p)
    expected = np.exp(log_p).sum() * np_kl(target, np_softmax(np.array([0.5, -1.0, 0.0])))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_wttm_method_weights():
    student, teacher = outputs()
    terms = create_method("wttm", gamma=0.5, beta=3.0).loss(student, teacher, batch(), epoch=1)
    assert terms["wttm"].item() == pytest.approx(3.0 * np_wttm(Z_S, Z_T, 0.5), rel=1e-10)


# --- CTKD ----------------------------------------------------------------------------------


def code_lambda(epoch: int, loops: int = 10) -> float:
    """The released code's CosineDecay(max 0, min −1, loops 10), negated (its GRL multiplies by it)."""
    i = min(max(epoch, 0), loops)
    return -(((math.cos(i * math.pi / loops) + 1.0) * 0.5) * (0 - (-1)) + (-1))


def np_kd(z_s, z_t, temperature):
    return temperature**2 * np.mean([np_kl(np_softmax(zt / temperature), np_softmax(zs / temperature))
                                     for zs, zt in zip(z_s, z_t)])


def built_ctkd(**hparams):
    student, teacher = outputs()
    method = create_method("ctkd", **hparams)
    method.setup(context(student, teacher))
    return method, student, teacher


@pytest.mark.parametrize("epoch", [1, 2, 5, 9, 10, 11, 240])
def test_ctkd_curriculum_is_the_released_cosine_schedule(epoch):
    from kdbench.methods.ctkd import curriculum_strength

    assert curriculum_strength(epoch, 10, 0.0, 1.0) == pytest.approx(code_lambda(epoch), abs=1e-15)


def test_ctkd_temperature_is_a_parameter_the_optimizer_sees():
    method, _, _ = built_ctkd()
    params = dict(method.named_parameters())
    assert list(params) == ["theta"] and params["theta"].item() == 1.0
    assert method.temperature(0.0).item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-12)


@pytest.mark.parametrize("epoch", [1, 5, 30])
def test_ctkd_reverses_and_scales_the_temperature_gradient(epoch):
    method, student, teacher = built_ctkd(theta_init=0.3)
    terms = method.loss(student, teacher, batch(), epoch=epoch)
    terms["kd"].backward()

    def distillation(theta: float) -> float:
        temperature = 1 + 20 / (1 + math.exp(-theta))
        return 0.9 * np_kd(Z_S, Z_T, temperature)

    h = 1e-6
    ascent = (distillation(0.3 + h) - distillation(0.3 - h)) / (2 * h)
    assert method.theta.grad.item() == pytest.approx(-code_lambda(epoch) * ascent, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(distillation(0.3), rel=1e-10)
    # the student's gradient is KD's at the current temperature: not reversed
    temperature = method.temperature(0.0).detach()
    z_s = t(Z_S).requires_grad_()
    (0.9 * kd_loss(z_s, t(Z_T), temperature)).backward()
    assert torch.allclose(student.logits.grad, z_s.grad)


def test_ctkd_temperature_trains_with_the_student(teacher_out, tmp_path):
    from conftest import TINY_RECIPE, student_spec

    from kdbench import store
    from kdbench.engine import EngineOptions, train_run

    torch.set_default_dtype(torch.float32)  # a real run; the fixture restores float64 after
    out, teacher = teacher_out
    spec = student_spec(teacher, method="ctkd", recipe=TINY_RECIPE.model_copy(update={"epochs": 1}))
    record = train_run(spec, tmp_path, EngineOptions(progress=False, subset=128), out / teacher.run_id / store.WEIGHTS)
    assert record.parameters.method == 1  # θ, in the student's optimizer
    assert {"ce", "kd"} <= set(record.metrics[0].losses)


def test_ctkd_needs_setup():
    student, teacher = outputs()
    with pytest.raises(RuntimeError, match="setup"):
        create_method("ctkd").loss(student, teacher, batch(), epoch=1)


# --- LSKD (logit_stand) --------------------------------------------------------------------


def np_zscore(z):
    return np.array([(row - row.mean()) / math.sqrt(sum((v - row.mean()) ** 2 for v in row) / len(row)) for row in z])


def test_standardize_logits_is_the_population_z_score():
    assert np.allclose(standardize_logits(t(Z_S)).numpy(), np_zscore(Z_S), atol=1e-6)


def test_kd_with_logit_stand_matches_reference_and_default_is_unchanged():
    student, teacher = outputs()
    stand = create_method("kd", logit_stand=True, temperature=2.0, w_kd=9.0).loss(student, teacher, batch(), 1)
    assert stand["kd"].item() == pytest.approx(9 * np_kd(np_zscore(Z_S), np_zscore(Z_T), 2.0), rel=1e-6)
    plain = create_method("kd").loss(student, teacher, batch(), 1)
    assert plain["kd"].item() == pytest.approx(0.9 * np_kd(Z_S, Z_T, 4.0), rel=1e-10)


def test_released_code_std_is_a_rescaled_temperature_and_weight():
    """The code's Bessel-corrected std at (T, w) equals the population z-score at
    (T·√(C/(C−1)), w·(C−1)/C), as the kd docstring says."""
    c = Z_S.shape[1]
    unbiased = lambda z: np.array([(r - r.mean()) / r.std(ddof=1) for r in z])  # noqa: E731
    code = 9 * np_kd(unbiased(Z_S), unbiased(Z_T), 2.0)
    ours = 9 * (c - 1) / c * kd_loss(standardize_logits(t(Z_S)), standardize_logits(t(Z_T)), 2.0 * math.sqrt(c / (c - 1)))
    assert ours.item() == pytest.approx(code, rel=1e-6)


AFFINE = [(3.0, 5.0, 0.5, -2.0), (0.25, -1.0, 7.0, 0.3)]


@pytest.mark.parametrize("name, hparams", [
    ("kd", {}),
    ("dkd", {"warmup": 0}),
    ("ctkd", {}),
    ("figkd", {}),  # 8 classes, haar level 1: the high band of a constant is 0
])
@pytest.mark.parametrize("a_s, b_s, a_t, b_t", AFFINE)
def test_logit_stand_makes_losses_blind_to_each_models_logit_shift_and_scale(name, hparams, a_s, b_s, a_t, b_t):
    rng = np.random.default_rng(0)
    z_s, z_t = rng.normal(size=(4, 8)) * 2, rng.normal(size=(4, 8)) * 3
    labels = np.array([0, 3, 5, 7])

    def distillation(zs, zt):
        student, teacher = outputs(zs, zt)
        method = create_method(name, logit_stand=True, **hparams)
        if name == "ctkd":
            method.setup(context(student, teacher))
        terms = method.loss(student, teacher, batch(labels), epoch=1)
        return sum(v.item() for k, v in terms.items() if k != "ce")

    assert distillation(a_s * z_s + b_s, a_t * z_t + b_t) == pytest.approx(distillation(z_s, z_t), rel=1e-6)
    if name != "figkd":  # without logit_stand the scale matters
        student, teacher = outputs(a_s * z_s + b_s, a_t * z_t + b_t)
        method = create_method(name, **hparams)
        if name == "ctkd":
            method.setup(context(student, teacher))
        plain = method.loss(student, teacher, batch(labels), epoch=1)
        assert sum(v.item() for k, v in plain.items() if k != "ce") != pytest.approx(distillation(z_s, z_t), rel=1e-3)


def test_dkd_logit_stand_matches_reference():
    student, teacher = outputs()
    terms = create_method("dkd", logit_stand=True, temperature=2.0, alpha=9.0, beta=72.0, warmup=0).loss(
        student, teacher, batch(), epoch=1)
    zs, zt = np_zscore(Z_S), np_zscore(Z_T)
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(zs, zt, LABELS):
        p_s, p_t = np_softmax(s_row / 2), np_softmax(t_row / 2)
        tckd += np_kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        others = [i for i in range(5) if i != y]
        nckd += np_kl(np_softmax(t_row[others] / 2), np_softmax(s_row[others] / 2))
    assert terms["tckd"].item() == pytest.approx(9 * 4 * tckd / 3, rel=1e-6)
    assert terms["nckd"].item() == pytest.approx(72 * 4 * nckd / 3, rel=1e-6)


# --- precision -----------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [
    lambda zs, zt: dist_loss(zs, zt, 4.0)[1],
    lambda zs, zt: nkd_loss(zs, zt, torch.as_tensor(LABELS), 3.0, 3.5)[1],
    lambda zs, zt: wttm_loss(zs, zt, 0.1),
], ids=["dist", "nkd", "wttm"])
def test_half_precision_logits_are_distilled_in_float32(loss):
    exact = loss(t(Z_S), t(Z_T)).item()
    half = loss(t(Z_S).to(torch.bfloat16), t(Z_T).to(torch.bfloat16))
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(exact, rel=2e-2)  # only the inputs' rounding remains
