"""PCD: Li, Li, Zhang & Xu, "Progressive Class-level Distillation", arXiv 2505.24310 (2025).

``variant: paper`` (default). Per sample, classes are ranked by |z_t − z_s| (largest
first). Fine-to-coarse stage i = 1..S splits the ranked classes into consecutive groups of
⌈C/(S−i+1)⌉, coarse-to-fine stage i into groups of ⌈C/i⌉ (the last group may be smaller).
For every group G, with p_G, q_G the temperature softmax of teacher and student over G:

    term_G = λ_G·T²·KL(p_G ‖ q_G),   λ_G = 1 − cos(p_G, q_G)   (λ carries no gradient)
    L = w_ce·CE + min(epoch / warmup, 1)·α·(Σ_F2C term + Σ_C2F term) / (number of terms)

Within one step both directions visit the same group sizes, so each size is computed once
and counted twice. Groups are formed by sorting, padding to whole groups and masking:
no per-sample loops. Singleton groups contribute 0 but count as terms.

``variant: official_code`` reproduces the authors' released ``PCD.py``: it never ranks
and its blocks have size C, so each of its 2S steps is full-class KD weighted by a
per-sample λ_b = 1 − cos(p_t, log p_s) (cosine against *log*-probabilities, so λ ∈ [1, 2],
with gradient) times a batch-mean KL; the trainer then averages over the batch:

    L = w_ce·CE + ramp·α·2S·T²·KL_batchmean(p_t ‖ p_s)·mean_b λ_b

(the empty blocks it also visits are uniform against uniform and add exactly 0). Its
``logit_stand`` option is left out. Defaults: S 3 (5 for heterogeneous pairs), T 4, α 1,
w_ce 1, warm-up 20.
"""

import math
from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from kdbench.method import Batch, HParams, Method, register_method, warmup
from kdbench.methods.kd import kd_loss
from kdbench.models import ModelOutput


class PCDHParams(HParams):
    stages: PositiveInt = 3
    temperature: PositiveFloat = 4.0
    alpha: NonNegativeFloat = 1.0
    w_ce: NonNegativeFloat = 1.0
    warmup: NonNegativeInt = 20
    variant: Literal["paper", "official_code"] = "paper"


def group_sizes(num_classes: int, stages: int) -> Counter[int]:
    """Group size → number of stages using it, over both directions."""
    f2c = [math.ceil(num_classes / (stages - i + 1)) for i in range(1, stages + 1)]
    c2f = [math.ceil(num_classes / i) for i in range(1, stages + 1)]
    return Counter(f2c + c2f)


def _group_terms(zs: Tensor, zt: Tensor, size: int, temperature: float) -> Tensor:
    """Σ over the groups of ``size`` consecutive ranked classes of λ·T²·KL, per sample."""
    b, c = zs.shape
    groups = math.ceil(c / size)
    pad = groups * size - c
    valid = (torch.arange(groups * size, device=zs.device) < c).view(groups, size)
    zs = F.pad(zs, (0, pad), value=-math.inf).view(b, groups, size)
    zt = F.pad(zt, (0, pad), value=-math.inf).view(b, groups, size)
    # Padded classes have log-probability -inf; zero them so no inf - inf (nor its gradient) appears.
    log_q = F.log_softmax(zs, dim=2).masked_fill(~valid, 0.0)
    log_p = F.log_softmax(zt, dim=2).masked_fill(~valid, 0.0)
    p, q = log_p.exp() * valid, log_q.exp() * valid
    kl = (p * (log_p - log_q)).sum(2)
    weight = 1 - F.cosine_similarity(p, q.detach(), dim=2)
    return (weight * kl).sum(1) * temperature**2


def pcd_loss(student_logits: Tensor, teacher_logits: Tensor, stages: int, temperature: float) -> Tensor:
    """The paper's (Σ F2C + Σ C2F terms) / (number of terms), mean over the batch."""
    teacher_logits = teacher_logits.detach()
    rank = torch.sort((teacher_logits - student_logits).abs().detach(), dim=1, descending=True, stable=True).indices
    zs = student_logits.gather(1, rank) / temperature
    zt = teacher_logits.gather(1, rank) / temperature
    c = zs.shape[1]
    total, terms = 0.0, 0
    for size, count in group_sizes(c, stages).items():
        total = total + count * _group_terms(zs, zt, size, temperature)
        terms += count * math.ceil(c / size)
    return (total / terms).mean()


def pcd_official_code_loss(student_logits: Tensor, teacher_logits: Tensor, stages: int, temperature: float) -> Tensor:
    """The released code's loss: 2S·T²·KL_batchmean·mean_b(1 − cos(p_t, log p_s))."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    weight = 1 - F.cosine_similarity(p_t, log_p_s, dim=1)
    return 2 * stages * kd_loss(student_logits, teacher_logits.detach(), temperature) * weight.mean()


@register_method
class PCD(Method):
    name = "pcd"
    display_name = "PCD"
    color = "#CC79A7"
    HParams = PCDHParams
    release_differences = (
        "variant: paper ranks classes into groups; the released PCD.py never ranks: full-class KD weighted by λ (variant: official_code)",
        "the release's logit_stand option is not implemented",
    )

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        distance = (pcd_loss if hp.variant == "paper" else pcd_official_code_loss)(
            student.logits, teacher.logits, hp.stages, hp.temperature
        )
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "pcd": warmup(epoch, hp.warmup) * hp.alpha * distance,
        }
