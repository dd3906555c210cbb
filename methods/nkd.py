"""NKD: Yang, Zeng, Li, Zhang, Yuan & Li, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023
(code: yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``).

KD's loss splits into a target term and a non-target term whose two distributions have
different sums (1 − p_t,y and 1 − p_s,y), so they can never match; NKD normalises the
non-target probabilities of both models to sum to one. With p = softmax(z) (T = 1) and
p̂ = softmax over the C − 1 non-target classes of z/T,

    target     = −(1/B)·Σ_b p_t,y · log p_s,y
    non-target = −γ·T²·(1/B)·Σ_b Σ_{i≠y} p̂_t,i · log p̂_s,i
    L = w_ce·CE + target + non-target

Both terms are cross-entropies against the (detached) teacher, as in the paper and the
code: they differ from the KL form by the teacher's entropy, a constant, so gradients are
the same. Defaults are the authors' released CIFAR-100 config
(``configs/distillers/cifar100/res34_distill_res18_cifar.py``: T 3, γ 3.5, CE weight 1);
their ImageNet configs use T 1, γ 1.5. Differences from the released code: none in the
loss; non-target logits are gathered here (``dkd.non_target``) instead of masked. Its first
release built the mask with ``scatter_(1, label, 1)``, which keeps every class, so the
"non-target" term was a full-softmax cross-entropy; fixed upstream in 9466b3f (Oct 2023).
The SDD repository's NKD (``mdistiller/distillers/nkd.py``: T 1, γ 1.5) still has that
mask, so the NKD numbers of the SDD paper's tables are not NKD's and the suite does not
quote them.
"""

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat
from torch import Tensor

from kdbench.method import Batch, HParams, Method, register_method
from kdbench.methods.dkd import non_target
from kdbench.models import ModelOutput


class NKDHParams(HParams):
    temperature: PositiveFloat = 3.0  # of the non-target term only; the target term uses T = 1
    gamma: NonNegativeFloat = 3.5
    w_ce: NonNegativeFloat = 1.0


def nkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, gamma: float
) -> tuple[Tensor, Tensor]:
    """(target, γ·non-target) terms of NKD, batch means, in at least float32."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student_logits, teacher_logits = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    log_p_s_target = F.log_softmax(student_logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    p_t_target = F.softmax(teacher_logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    target = -(p_t_target * log_p_s_target).mean()
    log_hat_s = F.log_softmax(non_target(student_logits, labels) / temperature, dim=1)
    hat_t = F.softmax(non_target(teacher_logits, labels) / temperature, dim=1)
    rest = -(hat_t * log_hat_s).sum(1).mean()
    return target, gamma * temperature**2 * rest


@register_method
class NKD(Method):
    name = "nkd"
    display_name = "NKD"
    color = "#117733"  # Tol's muted scheme, unused by the other methods
    HParams = NKDHParams
    release_differences = (
        "non-target softmax without the target class, as cls_KD since 9466b3f; its first release and SDD's copy keep every class",
    )

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        target, rest = nkd_loss(student.logits, teacher.logits, batch.labels, hp.temperature, hp.gamma)
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "nkd_target": target,
            "nkd_non_target": rest,
        }
