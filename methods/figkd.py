"""FiGKD: Kim, "FiGKD: Fine-Grained Knowledge Distillation via High-Frequency Detail
Transfer", arXiv 2505.11897 (2025).

Each logit vector is a 1-D signal over the class axis. A discrete wavelet transform splits
it into approximation (low frequency, "content") and detail (high frequency); only the
kept band is distilled:

    c = DWT_L(z[order])                               [a_L, d_L, …, d_1]
    space reconstructed: r = IDWT(kept bands of c)    (C class scores, distilled like logits)
    space coefficients:  r = concat(kept bands of c)
    kl:  D = T²·KL(softmax(r_t/T) ‖ softmax(r_s/T)),  mse: D = Σ (r_t − r_s)²
    L = w_ce·CE + w_kd·D

Both distances sum over classes (coefficients) and average over the batch; mse needs no
temperature (T²·‖Δ/T‖² = ‖Δ‖²). The paper's wavelet, level, distance and weights are not
public, so every choice is a knob (defaults: haar, level 1, zero padding, band high,
reconstructed, kl, T 4, weights 1/1). Identities (tests): band all + reconstructed is KD;
haar at the full level of a power-of-two C with band high + reconstructed + kl is KD too
(the coarsest approximation only shifts every logit by the mean).

``class_order`` decides what "adjacent classes" means: ``index`` (dataset order),
``random`` (a fixed permutation from ``order_seed``: the control) or ``teacher`` (spectral
ordering of the teacher's mean class-probability matrix at temperature T on the train set,
so details become differences between look-alike classes). The permutation is a buffer,
saved in checkpoints.

``logit_stand`` (LSKD, see methods/kd.py) z-scores r_s and r_t, the vectors that enter the
softmax (or the mse), so T becomes the base temperature (LSKD uses 2 for KD, DKD, MLKD).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, field_validator
from torch import Tensor

from kdbench import wavelets
from kdbench.errors import ConfigError
from kdbench.method import Batch, HParams, Method, Needs, TrainContext, register_method
from kdbench.methods.kd import kd_loss, standardize_logits
from kdbench.models import ModelOutput


class FiGKDHParams(HParams):
    wavelet: str = "haar"
    level: PositiveInt = 1
    mode: wavelets.Mode = "zero"
    band: wavelets.Band = "high"
    space: Literal["reconstructed", "coefficients"] = "reconstructed"
    distance: Literal["kl", "mse"] = "kl"
    temperature: PositiveFloat = 4.0
    w_ce: NonNegativeFloat = 1.0
    w_kd: NonNegativeFloat = 1.0
    class_order: Literal["index", "random", "teacher"] = "index"
    order_seed: int = 0  # read only by class_order random (ignored otherwise, so sweeps can fix it)
    logit_stand: bool = False  # LSKD: z-score the distilled vectors; temperature is then the base temperature

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, name: str) -> str:
        return wavelets.check_wavelet(name)


def figkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    wavelet: str = "haar",
    level: int = 1,
    mode: wavelets.Mode = "zero",
    band: wavelets.Band = "high",
    space: Literal["reconstructed", "coefficients"] = "reconstructed",
    distance: Literal["kl", "mse"] = "kl",
    temperature: float = 4.0,
    order: Tensor | None = None,
    logit_stand: bool = False,
) -> Tensor:
    """The FiGKD distance D between the ``band`` of student and teacher logits (batch mean)."""
    # The DWT of near-equal logits is a difference of large numbers: keep it out of fp16.
    with torch.autocast(student_logits.device.type, enabled=False):
        dtype = torch.promote_types(student_logits.dtype, torch.float32)
        z = torch.stack([student_logits.to(dtype), teacher_logits.detach().to(dtype)])
        if order is not None:
            z = z[..., order]
        if space == "reconstructed":
            r = wavelets.band_pass(z, wavelet, level, mode, band)
        else:
            r = wavelets.band_coefficients(z, wavelet, level, mode, band)
        if logit_stand:
            r = standardize_logits(r)
        if distance == "kl":
            return kd_loss(r[0], r[1], temperature)
        return (r[0] - r[1]).pow(2).sum(1).mean()


@register_method
class FiGKD(Method):
    name = "figkd"
    display_name = "FiGKD"
    color = "#D55E00"
    HParams = FiGKDHParams
    release_differences = (
        "no released code: the wavelet, level, padding, band, space, distance and weights are knobs with kdbench's defaults",
    )

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)
        self.register_buffer("order", None)  # class permutation; None = dataset order

    @property
    def needs(self) -> Needs:
        return Needs(teacher_train_logits=self.hparams.class_order == "teacher")

    def check_classes(self, num_classes: int) -> None:
        try:
            wavelets.check_level(self.hparams.level, num_classes, self.hparams.wavelet)
        except ConfigError as exc:
            raise ConfigError(f"method '{self.name}': hyperparameter 'level': {exc}") from None

    def setup(self, context: TrainContext) -> None:
        hp, c = self.hparams, context.num_classes
        self.check_classes(c)
        device = context.student.logits.device
        if hp.class_order == "random":
            self.order = wavelets.random_class_order(c, hp.order_seed).to(device)
        elif hp.class_order == "teacher":
            if context.teacher_train_logits is None:
                raise ConfigError(f"method '{self.name}': class_order 'teacher' needs the teacher's train logits")
            order = wavelets.teacher_class_order(
                context.teacher_train_logits, context.train_labels, c, hp.temperature
            )
            self.order = order.to(device)

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        if hp.class_order != "index" and self.order is None:
            raise RuntimeError(f"method '{self.name}': class_order '{hp.class_order}' needs setup() first")
        distance = figkd_loss(
            student.logits, teacher.logits, wavelet=hp.wavelet, level=hp.level, mode=hp.mode,
            band=hp.band, space=hp.space, distance=hp.distance, temperature=hp.temperature,
            order=self.order, logit_stand=hp.logit_stand,
        )
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "figkd": hp.w_kd * distance,
        }
