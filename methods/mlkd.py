"""MLKD: Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023
(code: Jin-Ying/Multi-Level-Logit-Distillation, ``mdistiller/distillers/KD_ours.py``).

The student matches the teacher's predictions at three levels, each at every temperature
T of a set ("prediction augmentation"), on two views of every image: a weak view w
(the standard crop + flip) and a strong view s (crop + flip + RandAugment + Cutout). With
p = softmax(z / T) row by row over a batch of B samples and C classes:

    instance  I_T(v) = T²·KL(p_t ‖ p_s), summed over classes, mean over the batch
    batch     B_T(v) = ‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B      (B×B: how samples relate)
    class     K_T(v) = ‖P_tᵀ P_t − P_sᵀ P_s‖²_F / C      (C×C: how classes co-occur)

    L = w_ce·[CE(z_s(w), y) + CE(z_s(s), y)]
        + w_kd·Σ_T [ρ·I_T(w) + I_T(s) + ρ·B_T(w) + ρ_C·K_T(w)]

The confidence mask: with the teacher's plain softmax q on the weak view, a sample is kept
when its confidence max_k q_k is at or below the ``confidence_percentile``-th percentile of
the batch's, and a class when its summed probability Σ_b q_bk is at or below that
percentile of the classes' (linear interpolation, numpy's). ρ and ρ_C are the kept
fractions. Defaults are the code's CIFAR-100 setting: T ∈ {2, 3, 4, 5, 6}, w_ce 0.1,
w_kd 0.9 (mdistiller's KD weights, which KD_ours reads), percentile 50. Its recipe
differs from the suite's: lr 0.025 for same-architecture pairs (0.01 otherwise), and
480 or 960 epochs for some heterogeneous pairs; the views come from the engine
(``needs.weak_view``) with ``augment: strong`` in the recipe, so the first view,
``batch.images``, is the strong one.

Differences from the released code, and what kdbench does:

- The mask. The code multiplies each weak-view term, already averaged over the batch
  (its ``kd_loss`` etc. are called with ``reduce=True``; ``reduce=False`` is commented
  out), by the boolean mask and averages: the mask only scales the term by the kept
  fraction ρ (½ for an even batch without ties). kdbench computes that fraction, so the
  loss is the code's; it masks no sample.
- The strong view's instance terms. The code's strong-view sum takes T = 3, 4, 5 on the
  strong logits but T = 2 and 6 on the *weak* logits, unmasked (a copy slip). kdbench
  takes every T on the strong view; ``official_code: true`` reproduces the slip.
- The strong view's batch and class terms are computed by the code but never added to
  its loss; kdbench leaves them out too (the formula above).
- The paper's own text could not be read for this implementation: the formula is the
  released code's, with the one slip above corrected.
- The code's RandAugment draws from Python's and numpy's generators in loader processes;
  kdbench's (``kdbench.data.strong_augment.StrongAugment``) draws from torch's, in the data stream.
- Mixed precision: the Gram matrices are computed in at least float32 (float64 inputs stay
  float64, as in the other methods).

``logit_stand`` is LSKD's plug-in (``kdbench.methods.kd.standardize_logits``) on the
instance level only, as LSKD's MLKD applies it (its batch and class terms and the mask use
the raw logits).
"""

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch import Tensor

from kdbench.method import Batch, HParams, Method, Needs, register_method
from kdbench.methods.kd import kd_loss, standardize_logits
from kdbench.models import ModelOutput


class MLKDHParams(HParams):
    temperatures: tuple[PositiveFloat, ...] = Field((2.0, 3.0, 4.0, 5.0, 6.0), min_length=1)
    w_ce: NonNegativeFloat = 0.1  # on each view's cross-entropy
    w_kd: NonNegativeFloat = 0.9  # on every level's term at every temperature
    confidence_percentile: float = Field(50.0, ge=0.0, le=100.0)
    logit_stand: bool = False  # LSKD on the instance level
    official_code: bool = False  # strong-view instance terms at T 2 and 6 on the weak logits, as released


def kept_fraction(scores: Tensor, percentile: float) -> Tensor:
    """The fraction of ``scores`` at or below their ``percentile``-th percentile."""
    return (scores <= torch.quantile(scores, percentile / 100)).to(scores.dtype).mean()


def batch_gram_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B: how the batch's samples relate (B×B)."""
    p_s, p_t = F.softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1)
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]


def class_gram_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """‖P_tᵀ P_t − P_sᵀ P_s‖²_F / C: how the classes co-occur in the batch (C×C)."""
    p_s, p_t = F.softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1)
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]


def mlkd_loss(student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor, teacher_strong: Tensor,
              temperatures: tuple[float, ...], percentile: float = 50.0, logit_stand: bool = False,
              official_code: bool = False) -> dict[str, Tensor]:
    """MLKD's unweighted distillation terms over all temperatures: "instance" (both views),
    "batch" and "class" (weak view), each weak-view term scaled by its kept fraction."""
    dtype = torch.promote_types(student_weak.dtype, torch.float32)
    with torch.autocast(student_weak.device.type, enabled=False):  # Gram matrices in at least float32
        zs_w, zt_w, zs_s, zt_s = (z.to(dtype) for z in (student_weak, teacher_weak.detach(), student_strong,
                                                         teacher_strong.detach()))
        confidence = F.softmax(zt_w, 1)
        rho = kept_fraction(confidence.max(1).values, percentile)
        rho_class = kept_fraction(confidence.sum(0), percentile)
        stand = standardize_logits if logit_stand else (lambda z: z)
        is_w, it_w, is_s, it_s = stand(zs_w), stand(zt_w), stand(zs_s), stand(zt_s)
        instance = batch = classes = zs_w.new_zeros(())
        for t in temperatures:
            slip = official_code and t in (2.0, 6.0)
            instance = instance + rho * kd_loss(is_w, it_w, t) + (kd_loss(is_w, it_w, t) if slip else
                                                                   kd_loss(is_s, it_s, t))
            batch = batch + rho * batch_gram_loss(zs_w, zt_w, t)
            classes = classes + rho_class * class_gram_loss(zs_w, zt_w, t)
    return {"instance": instance, "batch": batch, "class": classes}


@register_method
class MLKD(Method):
    name = "mlkd"
    display_name = "MLKD"
    color = "#CC6677"  # Tol's muted scheme, unused by the other methods
    HParams = MLKDHParams
    release_differences = (
        "the strong view's instance terms use the strong logits at every T; the release uses the weak ones at T 2 and 6 (official_code: true)",
        "RandAugment draws from torch's generator in the data stream; the release's from Python's and numpy's in loader workers",
        "logit_stand divides by the population σ (LSKD's paper); LSKD's code uses torch.std (Bessel): see methods/kd.py",
    )

    @property
    def needs(self) -> Needs:
        return Needs(weak_view=True)

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        weak = batch.weak
        terms = mlkd_loss(weak.student.logits, weak.teacher.logits, student.logits, teacher.logits,
                          hp.temperatures, hp.confidence_percentile, hp.logit_stand, hp.official_code)
        return {
            "ce": hp.w_ce * (F.cross_entropy(weak.student.logits, batch.targets)
                             + F.cross_entropy(student.logits, batch.targets)),
            **{name: hp.w_kd * value for name, value in terms.items()},
        }
