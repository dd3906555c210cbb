"""FreeKD-style frequency feature distillation for classification, after Zhang et al.,
"FreeKD: Knowledge Distillation via Semantic Frequency Prompt", CVPR 2024.

FreeKD itself targets dense prediction; this is its classification form. At every stage in
``stages`` (default: the final feature map), the student map is projected to the
teacher's channels (a 1×1 convolution, bilinear resize if the spatial sizes differ), both
maps go through a J-level 2-D Haar DWT (J = ``levels``, default min(2, ⌊log2 H⌋)) and

    L_stage = Σ_levels mean_{LH,HL,HH} mean |M ⊙ (ξ(F_t) − ξ(φ(F_s)))| + w_low·mean |Δ LL|
    L = w_ce·CE + μ·ramp·Σ_stages L_stage,   ramp = min(epoch / warmup, 1)

As in the authors' code (Gumpest/FreeKD @ e0874f5, mmrazor/models/losses/freekd.py), each
level's three orientations are one N×C×3×h×w tensor reduced by ``F.l1_loss`` (a mean), and
the levels are summed; the loss weight is their config's 1 (``loss_weight=1``). The
projector is a plain 1×1 convolution: their configs name an ``align_module`` of type
``conv2d`` (student → teacher channels), whose definition the release does not include, so
"plain" is our reading; no normalisation. (Version 1 of this method summed the orientations and put a BatchNorm after
the convolution; the BatchNorm forced the projected student map to unit variance per
channel where the teacher's final post-ReLU map varies far less, so the loss at
initialisation was several times that of predicting zeros: docs/methods.md has the figures.)

``warmup`` ramps μ linearly over the first epochs, as mdistiller does for feature losses
(ReviewKD's WARMUP_EPOCHS 20, ``mdistiller/engine/cfg.py``) and DKD; FreeKD's detection
configs have no such ramp (only a 1000-iteration learning-rate warm-up, which is the
recipe's business). Why: at initialisation the L1 gradient on the student backbone is larger
than CE's, and it does not shrink with the residual (an L1 subgradient). Without the ramp
the quick suite's resnet8 students stay on the coarse plateau of synthetic-fg (CE at
ln 5 = 1.61: the 4 groups learnt, the 5 stripe counts within a group not) for the whole
4-epoch run, far below the student without KD; with a small μ from the start they train
normally (docs/methods.md, "CRD and FreeKD at the start of training"). 20 epochs is 8% of
the CIFAR-100 recipe; a run of a few epochs stays inside the ramp, which is how DKD and
ReviewKD behave there too.

``mask: none`` is M = 1 (FreeKD-lite); ``teacher_energy`` stands in for FreeKD's learned
frequency prompts with a pixel mask from the teacher's own high-frequency energy at that
level (squared details summed over orientations, averaged over channels), normalised to
mean 1 per map so the loss scale matches ``none``; the LL band is never masked. FreeKD's
channel-relation weights and prompt pre-training are left out. Defaults: μ 1, w_low 0,
warmup 20.
"""
import math
from typing import Literal

import ptwt
import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveInt
from torch import Tensor, nn

from kdbench.errors import ConfigError
from kdbench.method import Batch, HParams, Method, Needs, TrainContext, register_method, warmup
from kdbench.models import ModelOutput

FINAL = "feature_map"  # key of the final map when ``stages`` is None


class FreeKDHParams(HParams):
    stages: tuple[str, ...] | None = None  # e.g. ["stage3"]; None: the final feature map
    levels: PositiveInt | None = None  # None: min(2, ⌊log2 H⌋) per stage
    mu: NonNegativeFloat = 1.0
    w_low: NonNegativeFloat = 0.0
    mask: Literal["none", "teacher_energy"] = "none"
    w_ce: NonNegativeFloat = 1.0
    warmup: NonNegativeInt = 20  # epochs of linear ramp of μ, as mdistiller's ReviewKD and DKD


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
        loss = loss + diff.mean()  # the authors' F.l1_loss over N×C×3×h×w: a mean over orientations too
    return loss


@register_method
class FreeKD(Method):
    name = "freekd"
    version = 2  # 2: orientations averaged as in the authors' code, projector without BN, μ ramped
    display_name = "FreeKD"
    color = "#E69F00"
    HParams = FreeKDHParams
    release_differences = (
        "the release is for dense prediction: this classification form (stages, pooling of the loss, default weights) is kdbench's",
        "the learned frequency prompts, channel-relation weights and prompt pre-training are left out (mask: teacher_energy stands in)",
        "the projector is a plain 1×1 convolution: the release's configs name an align_module it does not define",
        "μ ramps linearly over warmup epochs (default 20); the release's detection configs have no ramp",
    )

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
            self.projectors[key] = nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False).to(s.device)

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
            "freekd": hp.mu * warmup(epoch, hp.warmup) * total,
        }
