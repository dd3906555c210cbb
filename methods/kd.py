"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015).

    L = w_ce·CE(z_s, y) + w_kd·T²·KL(p_t ‖ p_s),   p = softmax(z / T)

KL sums over classes and averages over the batch; T² keeps the gradient scale independent
of T. Defaults are the CIFAR-100 ones of mdistiller / RepDistiller (T=4, 0.1 / 0.9).
"""

import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import Tensor

from kdbench.method import Batch, HParams, Method, register_method
from kdbench.models import ModelOutput


class KDHParams(HParams):
    temperature: PositiveFloat = 4.0
    w_ce: NonNegativeFloat = 0.1
    w_kd: NonNegativeFloat = 0.9


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, mean over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1)
    return kl.mean() * temperature**2


@register_method
class KD(Method):
    name = "kd"
    HParams = KDHParams

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.labels),
            "kd": hp.w_kd * kd_loss(student.logits, teacher.logits, hp.temperature),
        }
