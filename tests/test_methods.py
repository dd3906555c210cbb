"""Unit tests of the bundled distillation methods: METHODS.md identities, hand-computed golden
values, gradient flow, hyperparameter validation and FiGKD class orders.

Golden values are computed here with numpy/python arithmetic, never by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import wavelets
from kdbench.errors import ConfigError
from kdbench.method import METHODS, Batch, TrainContext, ViewOutputs, create_method, list_methods
from kdbench.methods.crd import draw_negatives, nce_loss
from kdbench.methods.dkd import dkd_loss
from kdbench.methods.figkd import figkd_loss
from kdbench.methods.freekd import freekd_loss
from kdbench.methods.kd import kd_loss
from kdbench.methods.pcd import pcd_loss, pcd_official_code_loss
from kdbench.methods.sdd import local_logits
from kdbench.models import ModelOutput, preact

# --- helpers -------------------------------------------------------------------------------


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl(p, q):
    """Σ p log(p/q) over the last axis."""
    return (p * (np.log(p) - np.log(q))).sum(-1)


def np_ce(z, y):
    return float(np.mean([-np.log(np_softmax(z[i])[y[i]]) for i in range(len(y))]))


def fake_output(fmap: torch.Tensor, head: nn.Module, stages: dict | None = None) -> ModelOutput:
    """A model output built from a feature-map leaf and a head, like Backbone.forward."""
    embedding = fmap.mean((2, 3))
    return ModelOutput(head(embedding), dict(stages or {}), fmap, embedding, head)


def make_pair(b=4, c=10, d_s=6, d_t=8, hw_s=4, hw_t=4, seed=0, teacher_grad=True):
    """Student and teacher outputs whose tensors are leaves (teacher's too, to catch leaks)."""
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(b, d_s, hw_s, hw_s, generator=g).requires_grad_()
    ft = torch.randn(b, d_t, hw_t, hw_t, generator=g).requires_grad_(teacher_grad)
    torch.manual_seed(seed)
    hs, ht = nn.Linear(d_s, c), nn.Linear(d_t, c)
    stage_s = {"stage2": torch.randn(b, d_s, 2 * hw_s, 2 * hw_s, generator=g).requires_grad_()}
    stage_t = {"stage2": torch.randn(b, d_t, 2 * hw_t, 2 * hw_t, generator=g).requires_grad_(teacher_grad)}
    stage_t[preact("stage2")] = torch.randn(b, d_t, 2 * hw_t, 2 * hw_t, generator=g).requires_grad_(teacher_grad)
    return fake_output(fs, hs, stage_s), fake_output(ft, ht, stage_t)


def context_for(student, teacher, labels, teacher_train_logits=None, seed=0):
    return TrainContext(
        num_classes=student.logits.shape[1], train_labels=labels, epochs=240, seed=seed,
        student=student, teacher=teacher, teacher_train_logits=teacher_train_logits,
    )


def batch_for(labels, index=None):
    labels = torch.as_tensor(labels)
    index = torch.arange(len(labels)) if index is None else torch.as_tensor(index)
    return Batch(images=torch.zeros(len(labels), 3, 2, 2), labels=labels, index=index)


def total(terms: dict) -> torch.Tensor:
    return sum(terms.values())


# --- DKD -------------------------------------------------------------------------------------


def test_dkd_decomposes_kd_per_sample():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(16, 7, generator=g) * 3, torch.randn(16, 7, generator=g) * 3
    y = torch.randint(0, 7, (16,), generator=g)
    t = 2.5
    tckd, nckd = dkd_loss(zs, zt, y, 1.0, 1.0, t, reduction="none")
    p_t = torch.softmax(zt / t, 1)
    kl = (p_t * (torch.log_softmax(zt / t, 1) - torch.log_softmax(zs / t, 1))).sum(1)
    p_ty = p_t.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(kl, tckd / t**2 + (1 - p_ty) * nckd / t**2, atol=1e-6, rtol=1e-5)


def test_dkd_golden_value():
    zs, zt, y, t, alpha, beta = np.array([1.0, 2.0, 0.5, -1.0]), np.array([3.0, 0.0, 1.0, 0.5]), 2, 2.0, 1.5, 8.0
    ps, pt = np_softmax(zs / t), np_softmax(zt / t)
    bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
    rest = [0, 1, 3]
    hs, ht = np_softmax(zs[rest] / t), np_softmax(zt[rest] / t)
    expect_tckd, expect_nckd = alpha * t**2 * np_kl(bt, bs), beta * t**2 * np_kl(ht, hs)
    tckd, nckd = dkd_loss(torch.tensor(zs[None]), torch.tensor(zt[None]), torch.tensor([y]), alpha, beta, t)
    assert tckd.item() == pytest.approx(expect_tckd, rel=1e-9)
    assert nckd.item() == pytest.approx(expect_nckd, rel=1e-9)
    method = create_method("dkd", alpha=alpha, beta=beta, temperature=t, warmup=20)
    s, te = ModelOutput(torch.tensor(zs[None])), ModelOutput(torch.tensor(zt[None]))
    terms = method.loss(s, te, batch_for([y]), epoch=5)  # warm-up 5/20
    assert terms["tckd"].item() == pytest.approx(0.25 * expect_tckd, rel=1e-9)
    assert terms["nckd"].item() == pytest.approx(0.25 * expect_nckd, rel=1e-9)
    assert terms["ce"].item() == pytest.approx(np_ce(zs[None], [y]), rel=1e-9)


def test_dkd_is_numerically_safe_for_saturated_logits():
    zs = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], requires_grad=True)
    zt = torch.tensor([[5e3, -5e3, 0.0], [-1e4, 1e4, 0.0]])
    tckd, nckd = dkd_loss(zs, zt, torch.tensor([0, 1]), 1.0, 8.0, 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(zs.grad).all()


# --- FiGKD ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wavelet,level,mode,c",
    [("haar", 1, "zero", 10), ("haar", 3, "zero", 7), ("db2", 2, "symmetric", 10),
     ("sym4", 1, "reflect", 100), ("bior2.2", 2, "periodic", 33), ("coif1", 1, "constant", 9)],
)
def test_figkd_band_all_reconstructed_is_kd(wavelet, level, mode, c):
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(5, c, generator=g) * 4, torch.randn(5, c, generator=g) * 4
    got = figkd_loss(zs, zt, wavelet=wavelet, level=level, mode=mode, band="all", temperature=3.0)
    torch.testing.assert_close(got, kd_loss(zs, zt, 3.0), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("c", [4, 8, 64])
def test_figkd_haar_full_level_high_band_is_kd(c):
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(6, c, generator=g) * 4, torch.randn(6, c, generator=g) * 4
    level = wavelets.max_level(c, "haar")
    assert 2**level == c
    got = figkd_loss(zs, zt, level=level, band="high", space="reconstructed", distance="kl")
    torch.testing.assert_close(got, kd_loss(zs, zt, 4.0), atol=2e-5, rtol=1e-4)


def test_figkd_method_band_all_equals_kd_method():
    student, teacher = make_pair(c=12)
    batch = batch_for([0, 3, 5, 11])
    figkd = create_method("figkd", band="all", w_ce=0.1, w_kd=0.9)
    kd = create_method("kd", w_ce=0.1, w_kd=0.9)
    torch.testing.assert_close(total(figkd.loss(student, teacher, batch, 1)), total(kd.loss(student, teacher, batch, 1)))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_haar_parseval(level):
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    dz = zs - zt
    low = figkd_loss(zs, zt, level=level, band="low", space="coefficients", distance="mse")
    high = figkd_loss(zs, zt, level=level, band="high", space="coefficients", distance="mse")
    torch.testing.assert_close(low + high, dz.pow(2).sum(1).mean())
    a, *details = wavelets.decompose(dz, "haar", level)
    energy = a.pow(2).sum(1) + sum(d.pow(2).sum(1) for d in details)
    torch.testing.assert_close(energy, dz.pow(2).sum(1))


def test_figkd_golden_haar_level1():
    zs, zt, t = np.array([1.0, 3.0, 0.0, -2.0]), np.array([2.0, 0.5, 1.0, 1.5]), 4.0
    d_s = np.array([zs[0] - zs[1], zs[2] - zs[3]]) / math.sqrt(2)
    d_t = np.array([zt[0] - zt[1], zt[2] - zt[3]]) / math.sqrt(2)
    s, te = torch.tensor(zs[None], dtype=torch.float32), torch.tensor(zt[None], dtype=torch.float32)
    coef_kl = t**2 * np_kl(np_softmax(d_t / t), np_softmax(d_s / t))
    assert figkd_loss(s, te, space="coefficients").item() == pytest.approx(coef_kl, rel=1e-5)
    assert figkd_loss(s, te, space="coefficients", distance="mse").item() == pytest.approx(
        ((d_s - d_t) ** 2).sum(), rel=1e-5
    )
    # Keeping only the details and inverting gives ±d/√2 on each class pair.
    r_s = np.array([d_s[0], -d_s[0], d_s[1], -d_s[1]]) / math.sqrt(2)
    r_t = np.array([d_t[0], -d_t[0], d_t[1], -d_t[1]]) / math.sqrt(2)
    rec_kl = t**2 * np_kl(np_softmax(r_t / t), np_softmax(r_s / t))
    method = create_method("figkd", w_kd=2.0)
    terms = method.loss(ModelOutput(s), ModelOutput(te), batch_for([1]), 1)
    assert terms["figkd"].item() == pytest.approx(2 * rec_kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(np_ce(zs[None], [1]), rel=1e-5)


def test_figkd_level_checked_in_setup_with_allowed_range():
    student, teacher = make_pair(c=4)
    context = context_for(student, teacher, torch.arange(4))
    create_method("figkd", level=2).setup(context)  # 4 classes: haar allows 1..2
    with pytest.raises(ConfigError, match=r"method 'figkd'.*'level'.*allowed range is 1\.\.2"):
        create_method("figkd", level=3).setup(context)
    with pytest.raises(ConfigError, match="too long for 4 classes"):
        create_method("figkd", wavelet="db4").setup(context)


def test_figkd_random_order_is_fixed_per_seed():
    student, teacher = make_pair(c=10)
    context = context_for(student, teacher, torch.arange(10))

    def order(seed):
        method = create_method("figkd", class_order="random", order_seed=seed)
        method.setup(context)
        assert "order" in method.state_dict()
        return method.order

    assert torch.equal(order(0), order(0))
    assert sorted(order(0).tolist()) == list(range(10))
    assert not torch.equal(order(0), order(1))
    assert not torch.equal(order(0), torch.arange(10))


def test_figkd_order_changes_high_band_but_not_all_band():
    g = torch.Generator().manual_seed(5)
    zs, zt = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    perm = torch.tensor([3, 1, 7, 0, 2, 6, 5, 4])
    assert not torch.isclose(figkd_loss(zs, zt, order=perm), figkd_loss(zs, zt))
    torch.testing.assert_close(figkd_loss(zs, zt, band="all", order=perm), figkd_loss(zs, zt, band="all"))
    # The order is applied to the class axis before the transform.
    torch.testing.assert_close(figkd_loss(zs, zt, order=perm), figkd_loss(zs[:, perm], zt[:, perm]))


def test_figkd_teacher_order_puts_confused_classes_together():
    # The teacher confuses 3↔0, 0↔4, 4↔1, 1↔5, 5↔2 (a chain); the order must follow it.
    chain = [3, 0, 4, 1, 5, 2]
    logits, labels = [], []
    for pos, c in enumerate(chain):
        z = torch.zeros(6)
        z[c] = 8.0
        for neighbour in (pos - 1, pos + 1):
            if 0 <= neighbour < 6:
                z[chain[neighbour]] = 5.0
        logits += [z + 0.1 * k for k in range(3)]
        labels += [c] * 3
    student, teacher = make_pair(c=6)
    method = create_method("figkd", class_order="teacher")
    assert method.needs.teacher_train_logits and not create_method("figkd").needs.teacher_train_logits
    method.setup(context_for(student, teacher, torch.tensor(labels), torch.stack(logits)))
    assert method.order.tolist() in (chain, chain[::-1])
    assert "order" in method.state_dict()
    with pytest.raises(ConfigError, match="train logits"):
        create_method("figkd", class_order="teacher").setup(context_for(student, teacher, torch.tensor(labels)))


def test_wavelet_helpers():
    assert wavelets.max_level(100, "haar") == 6 and wavelets.max_level(4, "db4") == 0
    z = torch.randn(2, 7)
    for band in ("low", "high"):
        assert wavelets.band_pass(z, "db2", 2, "zero", band).shape == (2, 7)
    torch.testing.assert_close(
        wavelets.band_pass(z, "db2", 2, "zero", "low") + wavelets.band_pass(z, "db2", 2, "zero", "high"), z
    )
    assert wavelets.band_coefficients(torch.randn(3, 8), "haar", 2, band="low").shape == (3, 2)
    with pytest.raises(ConfigError, match="did you mean 'haar'"):
        wavelets.check_wavelet("haa")


# --- SDD ---------------------------------------------------------------------------------


def linear_head(weight):
    head = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight, dtype=torch.float32))
    return head


def test_sdd_golden_value():
    # 2-channel 2×2 maps, 3 classes, scales (1, 2): regions = global + 4 pixels.
    fs = np.array([[[1.0, 0.0], [2.0, -1.0]], [[0.0, 1.0], [1.0, 3.0]]])  # D×H×W
    ft = np.array([[[2.0, -1.0], [0.0, 1.0]], [[1.0, 2.0], [-2.0, 0.0]]])
    ws = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    wt = np.array([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.5]])
    y, t = 0, 4.0
    cells = lambda f: [f.mean((1, 2))] + [f[:, i, j] for i in range(2) for j in range(2)]
    zs = np.array([ws @ c for c in cells(fs)])
    zt = np.array([wt @ c for c in cells(ft)])
    correct = zt.argmax(1) == y
    assert correct.any() and not correct.all()  # some regions are complementary
    weights = np.where(correct == correct[0], 1.0, 2.0)
    per_region = t**2 * np_kl(np_softmax(zt / t), np_softmax(zs / t))
    expect_sdd = 0.9 * float((weights * per_region).mean())
    expect_ce = 0.1 * np_ce(zs[:1], [y])

    student = fake_output(torch.tensor(fs[None], dtype=torch.float32, requires_grad=True), linear_head(ws.tolist()))
    teacher = fake_output(torch.tensor(ft[None], dtype=torch.float32), linear_head(wt.tolist()))
    terms = create_method("sdd", scales=[2, 1]).loss(student, teacher, batch_for([y]), 1)
    assert terms["sdd"].item() == pytest.approx(expect_sdd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(expect_ce, rel=1e-5)


def test_sdd_local_logits_global_first_and_one_head_call():
    student, _ = make_pair(b=2, c=5, hw_s=4)
    calls = []
    head = student.head
    student.head = lambda x: calls.append(x.shape) or head(x)
    local = local_logits(student, (1, 2, 4))
    assert local.shape == (2, 21, 5) and calls == [(42, 6)]
    torch.testing.assert_close(local[:, 0], student.logits)
    quadrant = student.feature_map[:, :, 2:, :2].mean((2, 3))  # row 1, column 0 of the 2×2 grid
    torch.testing.assert_close(local[:, 1 + 2], head(quadrant))


def test_sdd_single_scale_equals_base_method():
    student, teacher = make_pair(c=7)
    batch = batch_for([0, 1, 2, 3])
    kd = create_method("kd")
    torch.testing.assert_close(
        total(create_method("sdd", scales=[1]).loss(student, teacher, batch, 3)), total(kd.loss(student, teacher, batch, 3))
    )
    dkd = create_method("dkd", beta=6.0)
    sdd_dkd = create_method("sdd", base="dkd", scales=[1], dkd_beta=6.0)
    torch.testing.assert_close(total(sdd_dkd.loss(student, teacher, batch, 7)), total(dkd.loss(student, teacher, batch, 7)))


# --- PCD ---------------------------------------------------------------------------------


def np_group_term(zs, zt, t):
    p, q = np_softmax(zt / t), np_softmax(zs / t)
    lam = 1 - p @ q / (np.linalg.norm(p) * np.linalg.norm(q))
    return lam * t**2 * np_kl(p, q)


def test_pcd_golden_value_c4_s2():
    zs, zt, t = np.array([1.0, 2.0, 0.0, 3.0]), np.array([2.5, 1.5, 0.2, -1.0]), 2.0
    rank = [3, 0, 1, 2]  # |z_t − z_s| = 1.5, 0.5, 0.2, 4.0
    # S = 2: F2C sizes ⌈4/2⌉=2, ⌈4/1⌉=4; C2F sizes 4, 2 → 2·(2 + 1) = 6 terms.
    pairs = np_group_term(zs[rank[:2]], zt[rank[:2]], t) + np_group_term(zs[rank[2:]], zt[rank[2:]], t)
    full = np_group_term(zs, zt, t)
    expect = 2 * (pairs + full) / 6
    got = pcd_loss(torch.tensor(zs[None]), torch.tensor(zt[None]), stages=2, temperature=t)
    assert got.item() == pytest.approx(expect, rel=1e-9)
    terms = create_method("pcd", stages=2, temperature=t, alpha=2.0).loss(
        ModelOutput(torch.tensor(zs[None])), ModelOutput(torch.tensor(zt[None])), batch_for([0]), epoch=10
    )
    assert terms["pcd"].item() == pytest.approx(0.5 * 2.0 * expect, rel=1e-9)


@pytest.mark.parametrize("c,stages", [(10, 3), (7, 5), (100, 5), (12, 1)])
def test_pcd_vectorised_matches_loops(c, stages):
    g = torch.Generator().manual_seed(6)
    zs, zt = torch.randn(3, c, generator=g, dtype=torch.float64) * 3, torch.randn(3, c, generator=g, dtype=torch.float64) * 3
    t = 4.0
    expect = []
    for s_row, t_row in zip(zs.numpy(), zt.numpy()):
        ranked = np.argsort(-np.abs(t_row - s_row), kind="stable")
        terms = []
        sizes = [math.ceil(c / (stages - i + 1)) for i in range(1, stages + 1)] + [math.ceil(c / i) for i in range(1, stages + 1)]
        for size in sizes:
            for start in range(0, c, size):
                group = ranked[start : start + size]
                terms.append(np_group_term(s_row[group], t_row[group], t))
        expect.append(np.mean(terms))
    assert pcd_loss(zs, zt, stages, t).item() == pytest.approx(float(np.mean(expect)), rel=1e-9)


def released_pcd_loop(zs, zt, t, steps):
    """The authors' released PCD_loss, re-expressed from its description (block size C)."""
    c = zs.shape[1]
    loss = 0.0
    for i in list(range(steps, 0, -1)) + list(range(1, steps + 1)):
        for j in range(i):
            mask = torch.zeros_like(zs, dtype=torch.bool)
            mask[:, j * c : (j + 1) * c if j != i - 1 else c] = True
            log_s = F.log_softmax((zs / t).masked_fill(~mask, -1e9), dim=1)
            p_t = F.softmax((zt / t).masked_fill(~mask, -1e9), dim=1)
            scale = 1 - F.cosine_similarity(p_t, log_s, dim=1)
            loss = loss + F.kl_div(log_s, p_t, reduction="batchmean") * t**2 * scale
    return loss.mean()  # mdistiller's trainer averages each loss over the batch


def test_pcd_official_code_is_weighted_full_class_kd():
    g = torch.Generator().manual_seed(7)
    zs, zt = torch.randn(5, 10, generator=g) * 3, torch.randn(5, 10, generator=g) * 3
    t, steps = 4.0, 3
    p_t, log_p_s = torch.softmax(zt / t, 1), torch.log_softmax(zs / t, 1)
    kl = (p_t * (torch.log_softmax(zt / t, 1) - log_p_s)).sum(1).mean()
    lam = 1 - (p_t * log_p_s).sum(1) / (p_t.norm(dim=1) * log_p_s.norm(dim=1))
    documented = 2 * steps * t**2 * kl * lam.mean()
    got = pcd_official_code_loss(zs, zt, steps, t)
    torch.testing.assert_close(got, documented)
    torch.testing.assert_close(got, released_pcd_loop(zs, zt, t, steps), atol=1e-4, rtol=1e-5)
    assert ((lam >= 1) & (lam <= 2)).all()


# --- FreeKD ------------------------------------------------------------------------------


def np_haar2(x):
    """One Haar level of an H×W array: LL and the three detail bands (signs irrelevant for L1)."""
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    return (a + b + c + d) / 2, [(a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]


def test_freekd_golden_2x2():
    s, t = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 2.0], [5.0, 1.0]])
    (ll_s, det_s), (ll_t, det_t) = np_haar2(s), np_haar2(t)
    expect_high = np.mean([abs(ds - dt).item() for ds, dt in zip(det_s, det_t)])  # mean over orientations
    expect_low = abs(ll_s - ll_t).item()
    st, tt = torch.tensor(s[None, None]), torch.tensor(t[None, None])
    assert freekd_loss(st, tt, levels=1).item() == pytest.approx(expect_high)
    assert freekd_loss(st, tt, levels=1, w_low=0.5).item() == pytest.approx(expect_high + 0.5 * expect_low)


def test_freekd_golden_4x4_teacher_energy_mask():
    g = np.random.default_rng(8)
    s, t = g.normal(size=(2, 4, 4)), g.normal(size=(2, 4, 4))  # 2 channels
    det_s = [np_haar2(ch)[1] for ch in s]
    det_t = [np_haar2(ch)[1] for ch in t]
    energy = np.mean([sum(d**2 for d in det_t[ch]) for ch in range(2)], axis=0)  # 2×2
    mask = energy / energy.mean()
    per_band = [np.mean([np.mean(mask * abs(det_s[ch][k] - det_t[ch][k])) for ch in range(2)]) for k in range(3)]
    st, tt = torch.tensor(s[None]), torch.tensor(t[None])
    got = freekd_loss(st, tt, levels=1, mask="teacher_energy")
    assert got.item() == pytest.approx(np.mean(per_band), rel=1e-9)
    plain = [np.mean([np.mean(abs(det_s[ch][k] - det_t[ch][k])) for ch in range(2)]) for k in range(3)]
    assert freekd_loss(st, tt, levels=1).item() == pytest.approx(np.mean(plain), rel=1e-9)


def test_freekd_setup_projects_and_resizes():
    student, teacher = make_pair(d_s=6, d_t=8, hw_s=4, hw_t=8)
    method = create_method("freekd")
    assert method.needs.stages == ()
    method.setup(context_for(student, teacher, torch.arange(4)))
    assert method.levels == {"feature_map": 2}
    conv = method.projectors["feature_map"]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (6, 8, (1, 1))
    staged = create_method("freekd", stages=["stage2"], levels=3)
    assert staged.needs.stages == ("stage2",)
    staged.setup(context_for(student, teacher, torch.arange(4)))  # teacher stage2 is 16×16
    assert torch.isfinite(total(staged.loss(student, teacher, batch_for([0, 1, 2, 3]), 1)))
    with pytest.raises(ConfigError, match=r"'levels'.*allows 1\.\.3"):
        create_method("freekd", levels=4).setup(context_for(student, teacher, torch.arange(4)))
    with pytest.raises(ConfigError, match="stage"):
        create_method("freekd", stages=["stage9"]).setup(context_for(student, teacher, torch.arange(4)))


# --- differences from the released code, for the reports' protocol card ---------------------


@pytest.mark.parametrize("name", list_methods())
def test_release_differences_are_declared_one_line_each(name):
    """Each bundled method states its known differences from its authors' released code on
    the class itself (an empty tuple when there are none), one short factual line each."""
    cls = METHODS.get(name)
    assert "release_differences" in vars(cls), f"{name} does not declare release_differences"
    lines = cls.release_differences
    assert isinstance(lines, tuple)
    for line in lines:
        assert isinstance(line, str) and line.strip() == line and line and "\n" not in line, repr(line)
        assert len(line) <= 160, line
    assert len(set(lines)) == len(lines)


# --- CRD ---------------------------------------------------------------------------------


def np_nce(scores, z, n_data, k, eps=1e-7):
    """RepDistiller's NCECriterion on exp(scores)/Z, positive in column 0."""
    p = np.exp(scores) / z
    m_pn = k / n_data
    pos = np.log(p[:, 0] / (p[:, 0] + m_pn + eps))
    neg = np.log(m_pn / (p[:, 1:] + m_pn + eps)).sum(1)
    return float(-(pos + neg).mean())


def identity_heads(method):
    for head in (method.embed_s, method.embed_t):
        with torch.no_grad():
            head.weight.copy_(torch.eye(head.weight.shape[0]))
            head.bias.zero_()


def test_crd_golden_value_and_memory_update():
    # N = 3 samples of 3 classes and K = 2, so each sample's negatives are exactly the two others.
    tau, n = 0.5, 3
    emb_s = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]])
    emb_t = np.array([[2.0, 1.0], [0.0, 1.0], [1.0, -1.0]])
    mem_s = np.array([[0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]])
    mem_t = np.array([[1.0, 0.0], [0.8, 0.6], [-0.6, 0.8]])
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 1.0]])
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    e_s, e_t = norm(emb_s), norm(emb_t)
    order = [[0, 1, 2], [1, 0, 2], [2, 0, 1]]  # positive first
    scores_s = np.array([[e_s[i] @ mem_t[j] for j in order[i]] for i in range(3)]) / tau
    scores_t = np.array([[e_t[i] @ mem_s[j] for j in order[i]] for i in range(3)]) / tau
    z_s, z_t = np.exp(scores_s).mean() * n, np.exp(scores_t).mean() * n
    expect = 0.8 * (np_nce(scores_s, z_s, n, 2) + np_nce(scores_t, z_t, n, 2))

    method = create_method("crd", feat_dim=2, num_negatives=2, temperature=tau)
    student = ModelOutput(torch.tensor(logits, requires_grad=True), embedding=torch.tensor(emb_s, dtype=torch.float32))
    teacher = ModelOutput(torch.tensor(logits), embedding=torch.tensor(emb_t, dtype=torch.float32))
    method.setup(context_for(student, teacher, torch.tensor([0, 1, 2])))
    assert method.k == 2
    identity_heads(method)
    method.memory_s, method.memory_t = torch.tensor(mem_s, dtype=torch.float32), torch.tensor(mem_t, dtype=torch.float32)
    terms = method.loss(student, teacher, batch_for([0, 1, 2]), 1)
    assert terms["crd"].item() == pytest.approx(expect, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(np_ce(logits, [0, 1, 2]), rel=1e-6)
    np.testing.assert_allclose(method.log_z.numpy(), np.log([z_s, z_t]), rtol=1e-6)
    # Momentum 0.5 update with renormalisation, after the loss used the old rows.
    np.testing.assert_allclose(method.memory_s.numpy(), norm(0.5 * mem_s + 0.5 * e_s), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(method.memory_t.numpy(), norm(0.5 * mem_t + 0.5 * e_t), rtol=1e-6, atol=1e-7)
    # Z stays fixed after the first batch.
    method.loss(student, teacher, batch_for([0, 1, 2]), 2)
    np.testing.assert_allclose(method.log_z.numpy(), np.log([z_s, z_t]), rtol=1e-6)
    assert {"memory_s", "memory_t", "log_z"} <= set(method.state_dict()) and "train_labels" not in method.state_dict()


@pytest.mark.parametrize("n_data", [500, 10**6])
def test_crd_nce_matches_the_released_formula_with_its_eps(n_data):
    """mdistiller's ContrastLoss (ε = 1e-7 in both denominators) in float64; at N = 10⁶,
    m·P_n = 8e-6 and leaving ε out is off by 3e-4 relative."""
    g = np.random.default_rng(9)
    scores = g.normal(size=(4, 9)) * 3
    z = 1234.5
    got = nce_loss(torch.tensor(scores), torch.tensor(math.log(z), dtype=torch.float64), n_data, 8)
    assert got.item() == pytest.approx(np_nce(scores, z, n_data, 8), rel=1e-12)
    if n_data == 10**6:
        assert got.item() != pytest.approx(np_nce(scores, z, n_data, 8, eps=0.0), rel=1e-4)


def test_crd_negatives_are_distinct_and_from_other_classes_when_the_pool_holds_k():
    torch.manual_seed(0)
    train_labels = torch.arange(60) % 6
    labels = torch.tensor([0, 3, 5])
    negatives = draw_negatives(labels, train_labels, 50)  # pools of 50
    assert negatives.shape == (3, 50)
    assert (train_labels[negatives] != labels[:, None]).all()
    assert all(len(set(row.tolist())) == 50 for row in negatives)


def distinct_counts(rows, k):
    """Histogram of the number of distinct values per row, over 1..k."""
    return np.bincount([len(set(row)) for row in rows], minlength=k + 1)[1:]


def test_crd_draws_a_small_pool_with_replacement_like_mdistillers_loader():
    """Pools of 20 (3 classes × 10) and K = 30: each row is 30 uniform draws with replacement
    from its class's pool, as ``np.random.choice(pool, 30, replace=True)`` draws them. Checked
    on the frequency of each pool member (chi-square against uniform) and on the law of the
    number of distinct values per row (chi-square of the two samplers' histograms), which
    sampling without replacement would fail."""
    from scipy.stats import chi2_contingency, chisquare

    torch.manual_seed(0)
    train_labels = torch.arange(30) % 3
    labels = torch.tensor([0, 1] * 1000)
    ours = draw_negatives(labels, train_labels, 30)
    assert ours.shape == (2000, 30) and (train_labels[ours] != labels[:, None]).all()
    pool = np.flatnonzero(train_labels.numpy() != 0)
    rows0 = ours[labels == 0].numpy()
    assert chisquare(np.bincount(rows0.ravel(), minlength=30)[pool]).pvalue > 1e-3
    rng = np.random.default_rng(0)
    reference = [rng.choice(pool, 30, replace=True) for _ in range(1000)]
    table = np.stack([distinct_counts(rows0.tolist(), 30), distinct_counts(reference, 30)])
    table = table[:, table.sum(0) > 0]
    assert chi2_contingency(table).pvalue > 1e-3
    assert 13 < np.mean([len(set(r)) for r in rows0.tolist()]) < 16  # E = 20·(1 − 0.95³⁰) ≈ 15.7


def test_crd_mixes_both_draws_when_pools_straddle_k():
    """Imbalanced classes: a class with a pool ≥ K gets distinct negatives, one below K draws
    with replacement, in the same batch (the release decides per sample's class)."""
    torch.manual_seed(0)
    train_labels = torch.tensor([0] * 30 + [1] * 5 + [2] * 5)  # pools: 10, 35, 35
    labels = torch.tensor([0, 1, 2] * 50)
    negatives = draw_negatives(labels, train_labels, 20)
    assert (train_labels[negatives] != labels[:, None]).all()
    distinct = np.array([len(set(row.tolist())) for row in negatives])
    assert (distinct[labels.numpy() != 0] == 20).all()
    assert (distinct[labels.numpy() == 0] <= 10).all()


def test_crd_keeps_k_negatives_where_a_pool_is_smaller():
    student, teacher = make_pair(b=4, c=3)
    method = create_method("crd", feat_dim=8, num_negatives=64)
    method.setup(context_for(student, teacher, torch.arange(40) % 3))  # pools of 26 or 27
    assert method.k == 64 and method.replace_by_class is True
    assert torch.isfinite(method.loss(student, teacher, batch_for([0, 1, 2, 0], [0, 1, 2, 3]), 1)["crd"])


def test_crd_is_reproducible_and_queue_mode_runs():
    student, teacher = make_pair(b=4, c=3)
    train_labels = torch.arange(40) % 3
    batch = batch_for(train_labels[[5, 9, 20, 33]].tolist(), [5, 9, 20, 33])

    def run(mode):
        torch.manual_seed(0)
        method = create_method("crd", feat_dim=16, num_negatives=8, mode=mode)
        method.setup(context_for(student, teacher, train_labels))
        return method, method.loss(student, teacher, batch, 1)["crd"]

    assert run("bank")[1].item() == run("bank")[1].item()
    method, crd = run("queue")
    assert torch.isfinite(crd) and method.memory_s.shape == (8, 16)
    assert method.queue_ptr.item() == 4 and method.queue_labels[:4].tolist() == batch.labels.tolist()
    method.loss(student, teacher, batch, 1)
    assert method.queue_ptr.item() == 0


# --- every method: gradients and validation ------------------------------------------------


# The hyperparameters each registered method runs with on make_pair's tiny outputs ({}: its
# defaults). A registered method missing here fails the gradient test until it is added.
GRAD_CASES = {
    "crd": {"feat_dim": 8, "num_negatives": 4},
    "ctkd": {},
    "dist": {},
    "dkd": {},
    "figkd": {"wavelet": "db2", "class_order": "random", "space": "coefficients"},
    "fitnet": {},
    "freekd": {"stages": ["stage2"], "mask": "teacher_energy", "w_low": 0.1},
    "kd": {},
    "mlkd": {},
    "nkd": {},
    "none": {},
    "pcd": {},
    "reviewkd": {"stages": ["stage2"]},  # make_pair's only stage
    "sdd": {"base": "dkd"},
    "wttm": {},
}


@pytest.mark.parametrize("name", list_methods())
def test_gradients_reach_student_and_own_modules_never_teacher(name):
    assert name in GRAD_CASES, f"add '{name}' to GRAD_CASES: its hyperparameters on make_pair's outputs ({{}}: defaults)"
    student, teacher = make_pair(c=10, hw_t=2)
    method = create_method(name, **GRAD_CASES[name])
    train_labels = torch.arange(20) % 10
    method.setup(context_for(student, teacher, train_labels))
    batch = batch_for([1, 2, 3, 4], [1, 2, 3, 4])
    if method.needs.weak_view:  # both models' outputs on a second view (MLKD)
        batch.weak = ViewOutputs(*make_pair(c=10, hw_t=2, seed=1))
    loss = total(method.loss(student, teacher, batch, epoch=30))
    loss.backward()
    assert student.feature_map.grad is not None and torch.isfinite(student.feature_map.grad).all()
    assert student.feature_map.grad.abs().sum() > 0
    for tensor in [teacher.feature_map, *teacher.features.values()]:
        assert tensor.grad is None
    assert all(p.grad is None for p in teacher.head.parameters())
    if name == "sdd":
        assert student.head.weight.grad is not None
    for stage in method.needs.stages:
        assert student.features[stage].grad is not None
    for param in method.parameters():  # CRD heads, FreeKD projectors
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name,hparams,message",
    [
        ("dkd", {"beta": -1}, "'beta'"),
        ("dkd", {"betta": 2}, "did you mean 'beta'"),
        ("dkd", {"warmup": "soon"}, "'warmup'"),
        ("figkd", {"wavelet": "haa"}, "did you mean 'haar'"),
        ("figkd", {"wavelet": "fourier"}, "e.g. haar"),
        ("figkd", {"level": 0}, "'level'"),
        ("figkd", {"band": "mid"}, "'band'"),
        ("figkd", {"class_order": "alphabetical"}, "'class_order'"),
        ("figkd", {"mode": "periodization"}, "'mode'"),
        ("sdd", {"base": "nkd"}, "'base'"),
        ("sdd", {"scales": [2, 4]}, "include 1"),
        ("sdd", {"scales": [1, 0]}, "'scales.1'"),
        ("sdd", {"beta_complementary": -2}, "'beta_complementary'"),
        ("pcd", {"stages": 0}, "'stages'"),
        ("pcd", {"variant": "official"}, "'variant'"),
        ("freekd", {"mask": "prompt"}, "'mask'"),
        ("freekd", {"levels": 0}, "'levels'"),
        ("freekd", {"stage": ["stage3"]}, "did you mean 'stages'"),
        ("crd", {"momentum": 1.0}, "'momentum'"),
        ("crd", {"mode": "fifo"}, "'mode'"),
        ("crd", {"num_negatives": 0}, "'num_negatives'"),
    ],
)
def test_hyperparameter_validation(name, hparams, message):
    with pytest.raises(ConfigError, match=f"method '{name}'") as error:
        create_method(name, **hparams)
    assert message in str(error.value)


def test_defaults_follow_methods_md():
    assert create_method("dkd").hparams.model_dump() == dict(temperature=4.0, w_ce=1.0, alpha=1.0, beta=8.0, warmup=20,
                                                           logit_stand=False)
    figkd = create_method("figkd").hparams
    assert (figkd.wavelet, figkd.level, figkd.mode, figkd.band, figkd.space, figkd.distance) == (
        "haar", 1, "zero", "high", "reconstructed", "kl")
    assert (figkd.temperature, figkd.w_ce, figkd.w_kd, figkd.class_order) == (4.0, 1.0, 1.0, "index")
    sdd = create_method("sdd").hparams
    assert (sdd.base, sdd.scales, sdd.beta_complementary, sdd.temperature) == ("kd", (1, 2, 4), 2.0, 4.0)
    pcd = create_method("pcd").hparams
    assert (pcd.stages, pcd.temperature, pcd.alpha, pcd.w_ce, pcd.warmup, pcd.variant) == (3, 4.0, 1.0, 1.0, 20, "paper")
    freekd = create_method("freekd").hparams
    assert (freekd.stages, freekd.levels, freekd.mu, freekd.w_low, freekd.mask, freekd.warmup) == (
        None, None, 1.0, 0.0, "none", 20)
    crd = create_method("crd").hparams
    assert (crd.feat_dim, crd.num_negatives, crd.temperature, crd.momentum, crd.w_crd, crd.mode, crd.warmup) == (
        128, 16384, 0.07, 0.5, 0.8, "bank", 0)
