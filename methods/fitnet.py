"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, in the one-stage
form of mdistiller (``distillers/FitNet.py``) and RepDistiller that the CIFAR-100 tables report.

A regressor r maps the student's hint stage F_s to the shape of the teacher's hint stage
F_t, trained with the student:

    L = w_ce·CE(z_s, y) + w_feat·mean((r(F_s) − F_t)²)

r is mdistiller's ``ConvReg``, chosen from the probe shapes (C channels, H rows):
H_s = 2·H_t: 3×3 conv, stride 2, padding 1; 2·H_s = H_t: 4×4 transposed conv, stride 2,
padding 1; H_s ≥ H_t: a (1+H_s−H_t)×(1+W_s−W_t) conv (1×1 for equal sizes); each followed
by BN and ReLU. A student map smaller than
half the teacher's has no regressor there, as in mdistiller: choose another stage.

The hint is the output of mdistiller's ``feats[HINT_LAYER]`` with HINT_LAYER 2, which is
``stage2`` of every kdbench CIFAR model except VGG, whose stage numbers count its stem
block (``stage3``), and ``stage3`` of a timm ResNet (its stage1 is the stem);
``teacher_hint_stage`` names the teacher's stage where it is not the student's
(suites/cifar100.yaml: VGG13 → MobileNetV2). Defaults: w_feat 100, w_ce 1 (mdistiller).

Differences from the paper: the paper trains in two stages (the student's lower half is
first fitted to the hint alone, then the whole student with KD); like mdistiller and
RepDistiller, this trains once, CE plus the hint loss, with no KD term. Differences from
mdistiller: none in the loss; the regressor's shape rule is checked on the probe batch
(an unmatched shape is a ConfigError rather than a broadcast). The hint is the teacher's
post-activation stage output, as mdistiller's ``feats`` (not its ``preact_feats``).

mdistiller's teacher is not the one kdbench distils from, by one forward: to size the
regressor, ``FitNet.__init__`` calls ``get_feat_shapes`` (``_common.py``), a forward of one
random image through the teacher under ``no_grad`` but in train mode (``.eval()`` comes
later, from ``Distiller.train``), which updates every BN layer's running statistics with
momentum 0.1 from that image: the teacher of every mdistiller FitNet run has moved
statistics for the whole run (how far, measured: docs/methods.md). kdbench keeps
its teacher as trained (its probe runs in eval mode): a reader comparing with mdistiller's
FitNet numbers should know.
"""

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import Tensor, nn

from kdbench.errors import ConfigError
from kdbench.method import Batch, HParams, Method, Needs, TrainContext, register_method
from kdbench.models import ModelOutput


class FitNetHParams(HParams):
    hint_stage: str = "stage2"  # the student's hint stage
    teacher_hint_stage: str | None = None  # None: the same name as hint_stage
    w_feat: NonNegativeFloat = 100.0
    w_ce: NonNegativeFloat = 1.0


def fitnet_loss(regressed: Tensor, teacher_map: Tensor) -> Tensor:
    """Mean squared error between the regressed student hint and the teacher's hint."""
    return F.mse_loss(regressed, teacher_map.detach())


def hint_regressor(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Sequential:
    """mdistiller's ConvReg from a B×C×H×W student hint to a B×C×H×W teacher hint."""
    _, c_s, h_s, w_s = student_shape
    _, c_t, h_t, w_t = teacher_shape
    if h_s == 2 * h_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    elif 2 * h_s == h_t:
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    elif h_s >= h_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
    else:
        raise ConfigError(
            f"method 'fitnet': the student's hint is {h_s}×{w_s} and the teacher's {h_t}×{w_t}; a regressor "
            "exists when the student's is at least half as large: set hint_stage / teacher_hint_stage to such stages"
        )
    return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU())


@register_method
class FitNet(Method):
    name = "fitnet"
    display_name = "FitNet"
    color = "#DDCC77"  # Tol's muted scheme, unused by the other methods
    HParams = FitNetHParams
    release_differences = (
        "no train-mode shape probe: mdistiller forwards a random image through the teacher in train mode, moving its BN statistics for the run",
        "a regressor whose output shape differs from the teacher's hint is refused; mdistiller's MSE would broadcast",
    )

    @property
    def teacher_hint(self) -> str:
        return self.hparams.teacher_hint_stage or self.hparams.hint_stage

    @property
    def needs(self) -> Needs:
        return Needs(stages=(self.hparams.hint_stage,), teacher_stages=(self.teacher_hint,))

    def setup(self, context: TrainContext) -> None:
        student = _hint(context.student, self.hparams.hint_stage, "student")
        teacher = _hint(context.teacher, self.teacher_hint, "teacher")
        self.regressor = hint_regressor(student.shape, teacher.shape).to(student.device)
        with torch.no_grad():
            regressed = self.regressor.eval()(student).shape
        self.regressor.train()
        if regressed[1:] != teacher.shape[1:]:
            raise ConfigError(
                f"method 'fitnet': the regressor maps the student's {tuple(student.shape[1:])} hint to "
                f"{tuple(regressed[1:])}, not the teacher's {tuple(teacher.shape[1:])}: choose other hint stages"
            )

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        regressed = self.regressor(student.features[hp.hint_stage])
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "fitnet": hp.w_feat * fitnet_loss(regressed, teacher.features[self.teacher_hint]),
        }


def _hint(output: ModelOutput | None, stage: str, role: str) -> Tensor:
    if output is None or stage not in output.features:
        raise ConfigError(f"method 'fitnet': the {role}'s probe outputs lack stage '{stage}'")
    hint = output.features[stage]
    if hint.dim() != 4:
        raise ConfigError(
            f"method 'fitnet': the {role}'s {stage} has shape {tuple(hint.shape)}, not B×C×H×W; "
            "FitNet's regressor needs a convolutional stage"
        )
    return hint
