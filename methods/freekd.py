"""FreeKD-style frequency feature distillation for classification, after Zhang et al.,
"FreeKD: Knowledge Distillation via Semantic Frequency Prompt", CVPR 2024.

FreeKD itself targets dense prediction; this is its classification form. At every stage in
``stages`` (default: the final feature map), the student map is projected to the
teacher's channels (1×1 conv + BN, bilinear resize if the spatial sizes differ), both maps
go through a J-level 2-D Haar DWT (J = ``levels``, default min(2, ⌊log2 H⌋)) and

    L_stage = Σ_levels Σ_{LH,HL,HH} mean |M ⊙ (ξ(F_t) − ξ(φ(F_s)))| + w_low·mean |Δ LL|
    L = w_ce·CE + μ·Σ_stages L_stage

``mask: none`` is M = 1 (FreeKD-lite); ``teacher_energy`` stands in for FreeKD's learned
frequency prompts with a pixel mask from the teacher's own high-frequency energy at that
level (squared details summed over orientations, averaged over channels), normalised to
mean 1 per map so the loss scale matches ``none``; the LL band is never masked. FreeKD's
channel-relation weights and prompt pre-training are left out. Defaults: μ 1, w_low 0.
"""

import math
from typing import Literal

import ptwt
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt
from torch import Tensor, nn

from kdbench.errors import ConfigError
from kdbench.method import Batch, HParams, Method, Needs, TrainContext, register_method
from kdbench.models import ModelOutput

FINAL = "feature_map"  # key of the final map when ``stages`` is None


class FreeKDHParams(HParams):
    stages: tuple[str, ...] | None = None  # e.g. ["stage3"]; None: the final feature map
    levels: PositiveInt | None = None  # None: min(2, ⌊log2 H⌋) per stage
    mu: NonNegativeFloat = 1.0
    w_low: NonNegativeFloat = 0.0
    mask: Literal["none", "teacher_energy"] = "none"
    w_ce: NonNegativeFloat = 1.0


def max_levels(height: int, width: int) -> int:
    return int(math.floor(math.log2(min(height, width))))


def energy_mask(details: Tensor, eps: float = 1e-12) -> Tensor:
    """1×B×1×h×w mask from 3×B×C×h×w teacher details, mean 1 over each map."""
    energy = details.pow(2).sum(0).mean(1)  # B×h×w
    return (energy / (energy.mean((1, 2), keepdim=True) + eps))[None, :, None]


def freekd_loss(
    student_map: Tensor,
    teacher_map: Tensor,
    levels: int,
    w_low: float = 0.0,
    mask: Literal["none", "teacher_energy"] = "none",
) -> Tensor:
    """Frequency L1 between an (already projected) student map and the teacher map."""
    teacher_map = teacher_map.detach()
    coeffs_s = ptwt.wavedec2(student_map, "haar", level=levels, mode="zero")
    coeffs_t = ptwt.wavedec2(teacher_map, "haar", level=levels, mode="zero")
    loss = w_low * (coeffs_s[0] - coeffs_t[0]).abs().mean() if w_low else student_map.new_zeros(())
    for level_s, level_t in zip(coeffs_s[1:], coeffs_t[1:]):
        ds, dt = torch.stack(tuple(level_s)), torch.stack(tuple(level_t))  # 3×B×C×h×w
        diff = (ds - dt).abs()
        if mask == "teacher_energy":
            diff = diff * energy_mask(dt)
        loss = loss + 3 * diff.mean()  # Σ over the three orientations of each band's mean
    return loss


@register_method
class FreeKD(Method):
    name = "freekd"
    display_name = "FreeKD"
    color = "#E69F00"
    HParams = FreeKDHParams

    @property
    def needs(self) -> Needs:
        return Needs(stages=self.hparams.stages or ())

    def _maps(self, output: ModelOutput) -> dict[str, Tensor]:
        if self.hparams.stages is None:
            return {FINAL: output.feature_map}
        return {stage: output.features[stage] for stage in self.hparams.stages}

    def setup(self, context: TrainContext) -> None:
        hp = self.hparams
        try:
            student, teacher = self._maps(context.student), self._maps(context.teacher)
        except KeyError as exc:
            raise ConfigError(f"method '{self.name}': the probe outputs lack stage {exc}") from None
        self.projectors = nn.ModuleDict()
        self.levels: dict[str, int] = {}
        for key, t in teacher.items():
            s = student[key]
            deepest = max_levels(*t.shape[-2:])
            levels = min(2, deepest) if hp.levels is None else hp.levels
            if not 1 <= levels <= deepest:
                raise ConfigError(
                    f"method '{self.name}': hyperparameter 'levels': {key} of the teacher is "
                    f"{t.shape[-2]}×{t.shape[-1]}, which allows 1..{deepest} Haar levels (got {levels})"
                )
            self.levels[key] = levels
            self.projectors[key] = nn.Sequential(
                nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False), nn.BatchNorm2d(t.shape[1])
            ).to(s.device)

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        teacher_maps = self._maps(teacher)
        total = 0.0
        for key, s in self._maps(student).items():
            t = teacher_maps[key]
            s = self.projectors[key](s)
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            total = total + freekd_loss(s, t, self.levels[key], hp.w_low, hp.mask)
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "freekd": hp.mu * total,
        }
