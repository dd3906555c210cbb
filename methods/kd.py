"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).

    L = w_ce·CE(z_s, y) + w_kd·T²·KL(p_t ‖ p_s),   p = softmax(z / T)

KL sums over classes and averages over the batch; T² keeps the gradient scale independent
of T. Defaults are the CIFAR-100 ones of mdistiller / RepDistiller (T=4, 0.1 / 0.9).

``logit_stand`` is LSKD (Sun et al., "Logit Standardization in Knowledge Distillation",
CVPR 2024), a plug-in for any method with a temperature softmax: every logit vector is
replaced by its z-score before the softmax, so the student matches the teacher's logit
*relations*, not their range,

    Z(z) = (z − mean(z)) / (σ(z) + ε),   σ(z) = sqrt(mean((z − mean(z))²)),   ε = 1e-7
    L = w_ce·CE + w_kd·T²·KL(softmax(Z(z_t)/T) ‖ softmax(Z(z_s)/T))

where T is now the *base* temperature. LSKD's CIFAR-100 setting for KD is T 2, w_kd 9
(w_ce 0.1); a few pairs use T 3 (the suite sets them per pair, from the names of the
authors' logs). Other methods reuse ``standardize_logits`` (dkd, figkd, ctkd). σ is the
paper's population standard deviation (its Algorithm 1, 1/C); the released code divides by
``1e-7 + torch.std``, which has Bessel's correction: its loss at (T, w) equals this one at
(T·√(C/(C−1)), w·(C−1)/C), e.g. (2.0101, 8.91) for T 2, w 9 on 100 classes. ε is the code's
guard (the paper has none), kept so that a constant logit vector gives zeros, not 0/0.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import Tensor

from kdbench.method import Batch, HParams, Method, register_method
from kdbench.models import ModelOutput


class KDHParams(HParams):
    temperature: PositiveFloat = 4.0
    w_ce: NonNegativeFloat = 0.1
    w_kd: NonNegativeFloat = 0.9
    logit_stand: bool = False  # LSKD: z-score logits first; temperature is then the base temperature


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """LSKD's z-score of each row: (z − mean) / (population std + eps), in at least float32."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    centred = z - z.mean(dim=-1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor, reduction: Literal["mean", "none"] = "mean"
) -> Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, mean over the batch
    (``reduction="none"``: one value per sample).

    ``temperature`` may be a tensor (CTKD's learnable one): the gradient then reaches it.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1)
    return kl.mean() * temperature**2 if reduction == "mean" else kl * temperature**2


@register_method
class KD(Method):
    name = "kd"
    display_name = "KD"
    color = "#56B4E9"
    HParams = KDHParams
    release_differences = (
        "logit_stand divides by the population σ (LSKD's paper); LSKD's code uses torch.std (Bessel): see methods/kd.py",
    )

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        z_s, z_t = student.logits, teacher.logits.detach()
        if hp.logit_stand:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "kd": hp.w_kd * kd_loss(z_s, z_t, hp.temperature),
        }
