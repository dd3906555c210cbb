"""MLKD against a reference written in numpy (float64) from the formulas of its docstring:
temperature softmax, KL, the B×B and C×C Gram matrices, numpy's percentile for the mask."""

import numpy as np
import pytest
import torch

from kdbench.method import Batch, ViewOutputs, create_method
from kdbench.methods.mlkd import mlkd_loss
from kdbench.models import ModelOutput

TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)


def softmax(z, t):
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl(zs, zt, t):
    p, q = softmax(zt, t), softmax(zs, t)
    return t * t * (p * (np.log(p) - np.log(q))).sum(1).mean()


def gram_batch(zs, zt, t):
    p, q = softmax(zt, t), softmax(zs, t)
    return ((p @ p.T - q @ q.T) ** 2).sum() / len(zs)


def gram_class(zs, zt, t):
    p, q = softmax(zt, t), softmax(zs, t)
    return ((p.T @ p - q.T @ q) ** 2).sum() / zs.shape[1]


def kept(scores, percentile):
    return np.mean(scores <= np.percentile(scores, percentile))


def reference(zs_w, zt_w, zs_s, zt_s, temperatures=TEMPERATURES, percentile=50.0, official_code=False):
    q = softmax(zt_w, 1.0)
    rho, rho_c = kept(q.max(1), percentile), kept(q.sum(0), percentile)
    instance = sum(rho * kl(zs_w, zt_w, t) + (kl(zs_w, zt_w, t) if official_code and t in (2, 6) else kl(zs_s, zt_s, t))
                   for t in temperatures)
    batch = sum(rho * gram_batch(zs_w, zt_w, t) for t in temperatures)
    classes = sum(rho_c * gram_class(zs_w, zt_w, t) for t in temperatures)
    return {"instance": instance, "batch": batch, "class": classes}


def logits(seed, b=7, c=10, scale=3.0):
    return np.random.default_rng(seed).normal(size=(b, c)) * scale


@pytest.mark.parametrize("official_code", [False, True])
@pytest.mark.parametrize("b,percentile", [(7, 50.0), (8, 50.0), (8, 30.0)])
def test_mlkd_terms_match_the_reference(official_code, b, percentile):
    zs_w, zt_w, zs_s, zt_s = (logits(seed, b) for seed in range(4))
    got = mlkd_loss(*(torch.tensor(z) for z in (zs_w, zt_w, zs_s, zt_s)), TEMPERATURES, percentile,
                    official_code=official_code)
    want = reference(zs_w, zt_w, zs_s, zt_s, percentile=percentile, official_code=official_code)
    for name in want:
        assert got[name].item() == pytest.approx(want[name], rel=1e-5), name


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("official_code", [False, True])
def test_float64_inputs_are_computed_in_float64(official_code, logit_stand):
    """Like every other method, MLKD promotes to at least float32 and no further: float64
    logits give the float64 reference to 1e-9 (a cast to float32 is off by ~1e-5)."""
    zs_w, zt_w, zs_s, zt_s = (logits(seed, b=7) for seed in range(4))

    def z(x):  # LSKD's z-score, population standard deviation, eps 1e-7
        c = x - x.mean(1, keepdims=True)
        return c / (np.sqrt((c ** 2).mean(1, keepdims=True)) + 1e-7)

    got = mlkd_loss(*(torch.tensor(x, dtype=torch.float64) for x in (zs_w, zt_w, zs_s, zt_s)), TEMPERATURES,
                    logit_stand=logit_stand, official_code=official_code)
    want = reference(zs_w, zt_w, zs_s, zt_s, official_code=official_code)
    if logit_stand:
        rho = kept(softmax(zt_w, 1.0).max(1), 50)
        want["instance"] = sum(rho * kl(z(zs_w), z(zt_w), t) + (kl(z(zs_w), z(zt_w), t) if official_code and t in (2, 6)
                                                                else kl(z(zs_s), z(zt_s), t)) for t in TEMPERATURES)
    for name in want:
        assert got[name].dtype == torch.float64
        assert got[name].item() == pytest.approx(want[name], rel=1e-9, abs=0), name


def test_the_mask_keeps_half_of_an_even_batch():
    """The released code's mask scales a weak-view term by the kept fraction: ½ on an even
    batch without ties, (B+1)/2B on an odd one."""
    zt = logits(1, b=8)
    q = softmax(zt, 1.0)
    assert kept(q.max(1), 50) == 0.5 and kept(logits(1, b=7).max(1), 50) == pytest.approx(4 / 7)
    one = mlkd_loss(*(torch.tensor(z) for z in (logits(0, 8), zt, logits(0, 8), zt)), (4.0,))
    assert one["instance"].item() == pytest.approx(0.5 * kl(logits(0, 8), zt, 4.0) + kl(logits(0, 8), zt, 4.0), rel=1e-5)


def test_official_code_changes_only_the_strong_instance_term_at_2_and_6():
    zs = [torch.tensor(logits(seed)) for seed in range(4)]
    ours, released = mlkd_loss(*zs, TEMPERATURES), mlkd_loss(*zs, TEMPERATURES, official_code=True)
    assert ours["batch"] == released["batch"] and ours["class"] == released["class"]
    assert ours["instance"] != released["instance"]
    assert mlkd_loss(*zs, (3.0, 4.0, 5.0))["instance"] == mlkd_loss(*zs, (3.0, 4.0, 5.0), official_code=True)["instance"]


def test_logit_stand_standardises_the_instance_level_only():
    zs_w, zt_w, zs_s, zt_s = (logits(seed) for seed in range(4))

    def z(x):  # population standard deviation, eps 1e-7 (LSKD)
        c = x - x.mean(1, keepdims=True)
        return c / (np.sqrt((c ** 2).mean(1, keepdims=True)) + 1e-7)

    got = mlkd_loss(*(torch.tensor(x) for x in (zs_w, zt_w, zs_s, zt_s)), TEMPERATURES, logit_stand=True)
    plain = reference(zs_w, zt_w, zs_s, zt_s)
    rho = kept(softmax(zt_w, 1.0).max(1), 50)
    instance = sum(rho * kl(z(zs_w), z(zt_w), t) + kl(z(zs_s), z(zt_s), t) for t in TEMPERATURES)
    assert got["instance"].item() == pytest.approx(instance, rel=1e-5)
    assert got["batch"].item() == pytest.approx(plain["batch"], rel=1e-5)
    assert got["class"].item() == pytest.approx(plain["class"], rel=1e-5)


def test_method_weights_its_terms_and_takes_cross_entropy_on_both_views():
    zs_w, zt_w, zs_s, zt_s = (torch.tensor(logits(seed), dtype=torch.float32) for seed in range(4))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    method = create_method("mlkd", w_ce=0.3, w_kd=2.0)
    assert method.needs.weak_view and method.needs.teacher
    batch = Batch(images=torch.zeros(7, 3, 2, 2), labels=labels, index=torch.arange(7),
                  weak=ViewOutputs(ModelOutput(zs_w), ModelOutput(zt_w)))
    terms = method.loss(ModelOutput(zs_s), ModelOutput(zt_s), batch, epoch=1)
    want = reference(*(z.double().numpy() for z in (zs_w, zt_w, zs_s, zt_s)))
    ce = sum(-np.log(softmax(z.double().numpy(), 1.0)[np.arange(7), labels.numpy()]).mean() for z in (zs_w, zs_s))
    assert terms["ce"].item() == pytest.approx(0.3 * ce, rel=1e-5)
    for name in want:
        assert terms[name].item() == pytest.approx(2.0 * want[name], rel=1e-4), name


def test_published_defaults():
    hp = create_method("mlkd").hparams
    assert hp.temperatures == TEMPERATURES and (hp.w_ce, hp.w_kd, hp.confidence_percentile) == (0.1, 0.9, 50.0)
    assert not hp.official_code and not hp.logit_stand
