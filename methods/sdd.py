"""SDD: Wei, Luo & Luo, "Scale Decoupled Distillation", CVPR 2024.

Local logits: the final feature map (before global pooling) is average-pooled to an m×m
grid for every m in ``scales`` and the model's own classifier scores every cell, giving
N = Σm² logit vectors per image, the global one (m=1) first. No extra parameters.

    w_{b,n} = 1 if the teacher's region-n and global predictions are both right or both
              wrong (consistent), else beta_complementary (complementary; the global region
              is always consistent)
    L = w_ce·CE + α·ramp·mean_{b,n} w_{b,n}·LD(z_s[b,n], z_t[b,n])

LD is the base method per region and sample: ``kd`` (T²·KL) or ``dkd`` (α_dkd·TCKD +
β_dkd·NCKD). Unset weights take the base method's own: kd w_ce 0.1, α 0.9; dkd w_ce 1,
α 1. ramp = min(epoch / warmup, 1) with base dkd (the authors' SD-DKD), 1 with kd (their
SD-KD has it commented out). Correctness is with respect to the label, as in the code.
Defaults: scales (1, 2, 4) (heterogeneous pairs; (1, 2) for similar ones), β_c 2, T 4.

Pooling (``pooling``). ``direct`` pools every m×m grid straight from the final map, as the
paper describes. ``official_code`` is what the authors ran (SDD-CVPR2024 @ e412036,
``mdistiller/models/{cifar,imagenet}/utils.py``, class SPP, lines 16-18): the map is first
average-pooled to a 4×4 grid and the 2×2 and 1×1 cells are pooled from that grid. The two
agree whenever the map's side is a multiple of 4 (CIFAR's 8×8, 16-px inputs' 4×4), but not
on 7×7 maps (every 224-px ResNet): adaptive pooling 7→4 uses the overlapping windows
rows/columns 0-1, 1-3, 3-5 and 5-6, so the code's 2×2 cells and its "global" 1×1 cell weight
the map unevenly (row 0 by 1/8, row 1 by 5/24, row 2 by 1/12, ...), and that global region
differs from the global average pool that gives the model's logits (which the code still
uses for CE, as kdbench does). The code knows only scales (1, 2, 4), (1, 2) and (1), so
``official_code`` accepts no other scale.

Warm-up of SD-DKD (``warmup``, read only with base dkd). The paper states a 30-epoch linear
warm-up for all experiments; the released code differs by script: ``train_origin.py`` (the
README's CIFAR-100 command) has ``--warmup`` default 20 (line 198), ``tools/train_origin.py``
has ``--warm_up`` default 30 (line 110) and ``train.py`` (the README's ImageNet command) sets
``cfg.warmup = 1.0`` (line 195). The default is 20: kdbench's defaults are the CIFAR-100
ones, 20 is what the authors' CIFAR-100 command ran, and it is DKD's own warm-up
(mdistiller's cfg), so SD-DKD and DKD differ only in the regions. For ImageNet-like runs set
``warmup: 1``.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import Tensor

from kdbench.method import Batch, HParams, Method, register_method, warmup
from kdbench.methods.dkd import dkd_loss
from kdbench.methods.kd import kd_loss
from kdbench.models import ModelOutput

BASE_WEIGHTS = {"kd": (0.1, 0.9), "dkd": (1.0, 1.0)}  # (w_ce, alpha) of SD-KD and SD-DKD
OFFICIAL_GRID = 4  # the authors' SPP pools to 4×4 first and every coarser grid from it
Pooling = Literal["direct", "official_code"]


class SDDHParams(HParams):
    base: Literal["kd", "dkd"] = "kd"
    scales: tuple[PositiveInt, ...] = (1, 2, 4)
    beta_complementary: NonNegativeFloat = 2.0
    temperature: PositiveFloat = 4.0
    w_ce: NonNegativeFloat | None = None  # None: the base method's (kd 0.1, dkd 1)
    alpha: NonNegativeFloat | None = None  # None: the base method's (kd 0.9, dkd 1)
    # Read only with base dkd (ignored with kd, so a sweep over base can fix them per pair).
    dkd_alpha: NonNegativeFloat = 1.0
    dkd_beta: NonNegativeFloat = 8.0
    warmup: NonNegativeInt = 20  # the authors' CIFAR-100 script; their ImageNet script uses 1
    pooling: Pooling = "direct"

    @field_validator("scales")
    @classmethod
    def _global_first(cls, scales: tuple[int, ...]) -> tuple[int, ...]:
        if 1 not in scales:
            raise ValueError("scales must include 1 (the global region)")
        return tuple(sorted(set(scales)))

    @model_validator(mode="after")
    def _official_scales(self) -> "SDDHParams":
        if self.pooling == "official_code" and not set(self.scales) <= {1, 2, OFFICIAL_GRID}:
            raise ValueError(
                f"pooling official_code builds its grids from a {OFFICIAL_GRID}×{OFFICIAL_GRID} pool, as the "
                f"authors' code, which takes scales (1, 2, 4), (1, 2) or (1) only (got {list(self.scales)}); "
                "use pooling: direct for other scales"
            )
        return self


def local_logits(output: ModelOutput, scales: tuple[int, ...], pooling: Pooling = "direct") -> Tensor:
    """B×N×C logits of every m×m cell of the final map, scales in order (one head call);
    ``official_code`` pools the cells from the map's 4×4 average pool (see the docstring)."""
    fmap = output.feature_map
    if pooling == "official_code":
        fmap = F.adaptive_avg_pool2d(fmap, OFFICIAL_GRID)
    cells = [F.adaptive_avg_pool2d(fmap, m).flatten(2) for m in scales]  # B×D×m²
    cells = torch.cat(cells, dim=2).transpose(1, 2)  # B×N×D
    b, n, d = cells.shape
    return output.head(cells.reshape(b * n, d)).view(b, n, -1)


def region_weights(teacher_local: Tensor, labels: Tensor, beta_complementary: float) -> Tensor:
    """B×N: 1 where the region's correctness matches the global one, else β_c."""
    correct = teacher_local.argmax(2) == labels[:, None]
    weights = torch.ones(correct.shape, device=correct.device)
    return weights.masked_fill(correct != correct[:, :1], beta_complementary)


def sdd_loss(
    student_local: Tensor,
    teacher_local: Tensor,
    labels: Tensor,
    *,
    base: Literal["kd", "dkd"] = "kd",
    beta_complementary: float = 2.0,
    temperature: float = 4.0,
    dkd_alpha: float = 1.0,
    dkd_beta: float = 8.0,
) -> Tensor:
    """mean over regions and samples of w·LD, from B×N×C local logits (unweighted by α)."""
    teacher_local = teacher_local.detach()
    b, n, c = student_local.shape
    weights = region_weights(teacher_local, labels, beta_complementary)
    zs, zt = student_local.reshape(b * n, c), teacher_local.reshape(b * n, c)
    if base == "kd":
        per_region = kd_loss(zs, zt, temperature, reduction="none")
    else:
        tckd, nckd = dkd_loss(zs, zt, labels.repeat_interleave(n), dkd_alpha, dkd_beta, temperature, "none")
        per_region = tckd + nckd
    return (weights.reshape(-1) * per_region).mean()


@register_method
class SDD(Method):
    name = "sdd"
    display_name = "SDD"
    color = "#009E73"
    HParams = SDDHParams
    release_differences = (
        "pooling: direct (the paper) pools every grid from the final map; the release pools from a 4×4 grid, unlike it on 7×7 maps (official_code)",
    )

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        w_ce, alpha = BASE_WEIGHTS[hp.base]
        w_ce = w_ce if hp.w_ce is None else hp.w_ce
        alpha = alpha if hp.alpha is None else hp.alpha
        with torch.no_grad():
            teacher_local = local_logits(teacher, hp.scales, hp.pooling)
        distance = sdd_loss(
            local_logits(student, hp.scales, hp.pooling), teacher_local, batch.labels, base=hp.base,
            beta_complementary=hp.beta_complementary, temperature=hp.temperature,
            dkd_alpha=hp.dkd_alpha, dkd_beta=hp.dkd_beta,
        )
        ramp = warmup(epoch, hp.warmup) if hp.base == "dkd" else 1.0
        return {
            "ce": w_ce * F.cross_entropy(student.logits, batch.targets),
            "sdd": alpha * ramp * distance,
        }
