"""ReviewKD: Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021
(dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py``; mdistiller ``distillers/ReviewKD.py``).

Levels i = 1..n, shallow to deep: the student's maps F_i at ``stages`` and, as level n, its
pooled embedding as a 1×1 map; the teacher's pre-activation maps T_i at ``teacher_stages``
(as both releases: mdistiller's ``preact_feats``, the map before the stage's last ReLU; a
WRN's is the next BN's output; see ``kdbench.models.base``) and its pooled embedding.
``teacher_preact: false`` takes the teacher's stage outputs instead, for a teacher whose
stages do not end with an activation module (the default refuses such a teacher). Attention-based fusion (ABF) reviews the student's levels from deep to shallow,
with M = min(max_mid_channels, channels of the student's embedding):

    x_i = BN(Conv1×1(F_i))                                            (M channels)
    f_n = x_n;  for i < n: r = up(f_{i+1}, size of F_i),  [a, b] = σ(Conv1×1([x_i, r])),
                           f_i = a ⊙ x_i + b ⊙ r                      (a, b: one map each)
    f_i ← up(f_i, size of T_i);  o_i = BN(Conv3×3(f_i))              (channels of T_i)

(up: nearest-neighbour resizing; f_i, once resized, is what level i−1 fuses.) The
hierarchical context loss compares each o_i with T_i on a pyramid of average poolings,
for k in (4, 2, 1) with k < min(H_i, W_i), the j-th level used weighted 2^−j:

    HCL(o, T) = (MSE(o, T) + Σ_j 2^−j·MSE(pool_kj(o), pool_kj(T))) / (1 + Σ_j 2^−j)
    L = w_ce·CE + w_reviewkd·min(epoch / warmup_epochs, 1)·Σ_i HCL(o_i, T_i)

Channels and sizes come from the probe outputs; for the CIFAR zoo they equal the authors'
per-model tables (``build_review_kd``; tests/test_feature_baselines.py checks them).
Stages: the three stages of the CIFAR ResNets, WRNs and ShuffleNets (default); VGG's
stage2..5 (its stage1 is the stem block that the authors leave out); MobileNetV2's and
ResNet50's stage1..4; a timm ResNet's stage2..5 (its stage1 is the stem). Defaults:
w_reviewkd 5 (mdistiller's CIFAR-100 config; the authors' script for the WRN, resnet8x4
and ShuffleV1 pairs), warmup_epochs 20, max_mid_channels 512, w_ce 1; the script's other
weights (resnet56→20: 0.6, resnet110→32: 1, resnet32x4→ShuffleV2: 8) are per-pair
hyperparameters in suites/cifar100.yaml.

Differences from the released code:
- None in the maps: the teacher's are its pre-activation maps and the student's its
  post-activation stage outputs (mdistiller's STU_PREACT false), as released; a ShuffleV2
  teacher's pre-activation map comes in its shuffled channel order (mdistiller leaves it
  unshuffled; the learned output convolution absorbs any channel order). Version 1 took the
  teacher's post-activation maps, and its loss differed from mdistiller's (docs/methods.md).
- Warm-up counts epochs from 1, as mdistiller; the authors' script counts from 0, so its
  first epoch has no ReviewKD term.
- HCL skips k ≥ min(H, W) and resizing compares H×W; the releases look at H (skip) and W
  (resize) alone: the same for the square maps of both.
- No released weight for VGG13→VGG8, VGG13→MobileNetV2 and ResNet50→MobileNetV2: they
  keep the default 5. mdistiller has a MAX_MID_CHANNEL setting it does not read (it
  hard-codes 512); here ``max_mid_channels`` is the value used.
- Not the method but the recipe: the authors' script trains with batch 128, lr 0.1 (0.02
  for ShuffleNet/MobileNet students) and Nesterov momentum; the suites use mdistiller's
  batch 64 and lr 0.05 (0.01), the same ratio of lr to batch, without Nesterov.
"""

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator
from torch import Tensor, nn

from kdbench.errors import ConfigError
from kdbench.method import Batch, HParams, Method, Needs, TrainContext, register_method, warmup
from kdbench.models import ModelOutput, preact

PYRAMID = (4, 2, 1)  # HCL's pooled sizes


class ReviewKDHParams(HParams):
    stages: tuple[str, ...] = ("stage1", "stage2", "stage3")  # the student's, shallow to deep
    teacher_stages: tuple[str, ...] | None = None  # None: the same names as stages
    w_reviewkd: NonNegativeFloat = 5.0
    warmup_epochs: NonNegativeInt = 20
    max_mid_channels: PositiveInt = 512
    w_ce: NonNegativeFloat = 1.0
    teacher_preact: bool = True  # the teacher's pre-activation maps, as released; False: its stage outputs

    @model_validator(mode="after")
    def _levels_pair_up(self) -> "ReviewKDHParams":
        if self.teacher_stages is not None and len(self.teacher_stages) != len(self.stages):
            raise ValueError(
                f"teacher_stages {list(self.teacher_stages)} must name as many stages as stages {list(self.stages)}"
            )
        return self


class ABF(nn.Module):
    """Attention-based fusion of one student level with the review of the deeper ones."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: Tensor, review: Tensor | None, out_size: torch.Size) -> tuple[Tensor, Tensor]:
        """(o_i, f_i): the level's output at ``out_size`` and the fused map passed to the next."""
        x = self.reduce(x)
        if self.attention is not None:
            review = F.interpolate(review, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, review], 1))
            x = x * weights[:, :1] + review * weights[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.output(x), x


def review(student_maps: list[Tensor], abfs: nn.ModuleList, out_sizes: list[torch.Size]) -> list[Tensor]:
    """The ABF outputs o_1..o_n, computed from the deepest level up (all lists shallow to deep)."""
    outputs, fused = [], None
    for x, abf, size in zip(reversed(student_maps), reversed(abfs), reversed(out_sizes)):
        out, fused = abf(x, fused, size)
        outputs.append(out)
    return outputs[::-1]


def hcl_loss(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """Σ over levels of the hierarchical context loss (module docstring)."""
    total = student_maps[0].new_zeros(())
    for s, t in zip(student_maps, teacher_maps):
        t = t.detach()
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for k in PYRAMID:
            if k >= min(s.shape[-2:]):
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, k), F.adaptive_avg_pool2d(t, k))
            weights += weight
        total = total + loss / weights
    return total


@register_method
class ReviewKD(Method):
    name = "reviewkd"
    display_name = "ReviewKD"
    color = "#AA4499"  # Tol's muted scheme, unused by the other methods
    HParams = ReviewKDHParams
    version = 2  # 2: the teacher's pre-activation maps, as released
    release_differences = (
        "a ShuffleV2 teacher's pre-activation maps come in shuffled channel order; mdistiller leaves them unshuffled",
        "warm-up counts epochs from 1, as mdistiller; the authors' ReviewKD script counts from 0",
        "HCL skips pyramid levels by min(H, W) and resizes to H×W; the releases use H and W alone (the same on square maps)",
        "max_mid_channels is read; mdistiller ignores its MAX_MID_CHANNEL and hard-codes 512 (the default)",
    )

    @property
    def teacher_stages(self) -> tuple[str, ...]:
        return self.hparams.teacher_stages or self.hparams.stages

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        """The teacher's maps read: its stages' pre-activation maps (``teacher_preact``) or outputs."""
        return tuple(preact(s) for s in self.teacher_stages) if self.hparams.teacher_preact else self.teacher_stages

    @property
    def needs(self) -> Needs:
        return Needs(stages=self.hparams.stages, teacher_stages=self.teacher_taps)

    def setup(self, context: TrainContext) -> None:
        student = _levels(context.student, self.hparams.stages, "student")
        teacher = _levels(context.teacher, self.teacher_taps, "teacher")
        mid = min(self.hparams.max_mid_channels, student[-1].shape[1])
        deepest = len(student) - 1
        self.abfs = nn.ModuleList(
            ABF(s.shape[1], mid, t.shape[1], fuse=i < deepest) for i, (s, t) in enumerate(zip(student, teacher))
        ).to(student[0].device)

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        teacher_maps = _levels(teacher, self.teacher_taps, "teacher")
        reviewed = review(_levels(student, hp.stages, "student"), self.abfs, [t.shape[-2:] for t in teacher_maps])
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "reviewkd": hp.w_reviewkd * warmup(epoch, hp.warmup_epochs) * hcl_loss(reviewed, teacher_maps),
        }


def _levels(output: ModelOutput | None, stages: tuple[str, ...], role: str) -> list[Tensor]:
    """The maps at ``stages`` and the pooled embedding as a 1×1 map, shallow to deep."""
    if output is None or output.embedding is None:
        raise ConfigError(f"method 'reviewkd': needs the {role}'s stages and pooled embedding")
    missing = [stage for stage in stages if stage not in output.features]
    if missing:
        raise ConfigError(f"method 'reviewkd': the {role}'s outputs lack {', '.join(missing)}")
    maps = [output.features[stage] for stage in stages]
    for stage, m in zip(stages, maps):
        if m.dim() != 4:
            raise ConfigError(
                f"method 'reviewkd': the {role}'s {stage} has shape {tuple(m.shape)}, not B×C×H×W; "
                "ABF needs convolutional stages"
            )
    return maps + [output.embedding[:, :, None, None]]
