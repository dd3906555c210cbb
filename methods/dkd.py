"""DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    b = [p_y, 1 − p_y],  p̂ = softmax of z/T over the non-target classes only
    TCKD = T²·KL(b_t ‖ b_s),  NCKD = T²·KL(p̂_t ‖ p̂_s)
    L = w_ce·CE + min(epoch / warmup, 1)·(α·TCKD + β·NCKD)

Per sample, KL(p_t ‖ p_s) = TCKD/T² + (1 − p_{t,y})·NCKD/T²: KD couples NCKD to the
teacher's confidence, DKD frees it with β. Defaults (mdistiller): w_ce 1, α 1, β 8, T 4,
warm-up 20 epochs. The suites set β per CIFAR-100 pair:

    β = 2  resnet56→resnet20, resnet110→resnet32
    β = 6  vgg13→vgg8, vgg13→MobileNetV2, wrn_40_2→wrn_16_2, wrn_40_2→wrn_40_1
    β = 8  every other pair (resnet32x4→resnet8x4/ShuffleV1/ShuffleV2, ResNet50→MobileNetV2,
           wrn_40_2→ShuffleV1, …)

Unlike mdistiller (which subtracts 1000 from the target logit and takes log of b), every
log-probability here is a difference of logsumexps over gathered classes: no log 0, exact
for any logit scale.

``logit_stand`` (LSKD, see methods/kd.py) z-scores both logit vectors before everything
above; LSKD's CIFAR-100 DKD runs use base T 2 (3 on two pairs) and multiply α and β by its
KD weight (9 to 18 by pair; e.g. α 9, β 72 for resnet32x4→resnet8x4; suites/cifar100.yaml).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat
from torch import Tensor

from kdbench.method import Batch, HParams, Method, register_method, warmup
from kdbench.methods.kd import standardize_logits
from kdbench.models import ModelOutput


class DKDHParams(HParams):
    temperature: PositiveFloat = 4.0
    w_ce: NonNegativeFloat = 1.0
    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 8.0
    warmup: NonNegativeInt = 20  # epochs; 0 disables the warm-up
    logit_stand: bool = False  # LSKD: z-score logits first; temperature is then the base temperature


def non_target(logits: Tensor, labels: Tensor) -> Tensor:
    """B×(C−1) logits of every class but the label, in class order (gather: no host sync)."""
    b, c = logits.shape
    index = torch.arange(c - 1, device=logits.device).expand(b, -1)
    index = index + (index >= labels[:, None]).long()
    return logits.gather(1, index)


def _log_binary_and_rest(logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    z = logits / temperature
    rest = non_target(z, labels)
    log_all = torch.logsumexp(z, dim=1)
    log_rest = torch.logsumexp(rest, dim=1)
    log_target = z.gather(1, labels[:, None]).squeeze(1)
    log_b = torch.stack([log_target - log_all, log_rest - log_all], dim=1)  # log [p_y, 1 − p_y]
    return log_b, F.log_softmax(rest, dim=1)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
    reduction: Literal["mean", "none"] = "mean",
) -> tuple[Tensor, Tensor]:
    """(α·TCKD, β·NCKD), both T²-scaled; batch means, or per-sample with ``reduction="none"``."""
    log_b_s, log_hat_s = _log_binary_and_rest(student_logits, labels, temperature)
    log_b_t, log_hat_t = _log_binary_and_rest(teacher_logits.detach(), labels, temperature)
    tckd = F.kl_div(log_b_s, log_b_t, reduction="none", log_target=True).sum(1)
    nckd = F.kl_div(log_hat_s, log_hat_t, reduction="none", log_target=True).sum(1)
    scale = temperature**2
    if reduction == "mean":
        tckd, nckd = tckd.mean(), nckd.mean()
    return alpha * scale * tckd, beta * scale * nckd


@register_method
class DKD(Method):
    name = "dkd"
    display_name = "DKD"
    color = "#0072B2"
    HParams = DKDHParams
    release_differences = (
        "log-probabilities are logsumexp differences over gathered classes; mdistiller masks the target with −1000 and takes log(b)",
        "logit_stand divides by the population σ (LSKD's paper); LSKD's code uses torch.std (Bessel): see methods/kd.py",
    )

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        z_s, z_t = student.logits, teacher.logits
        if hp.logit_stand:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        tckd, nckd = dkd_loss(z_s, z_t, batch.labels, hp.alpha, hp.beta, hp.temperature)
        ramp = warmup(epoch, hp.warmup)
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "tckd": ramp * tckd,
            "nckd": ramp * nckd,
        }
