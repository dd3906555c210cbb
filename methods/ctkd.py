"""CTKD: Li, Li, Yang, Zhao, Song, Luo, Li & Yang, "Curriculum Temperature for Knowledge
Distillation", AAAI 2023 (code: zhengli97/CTKD, ``models/temp_global.py``,
``train_student.py``, ``helper/loops.py``), on KD.

The KD temperature is learned, adversarially: a scalar θ gives

    T = T_init + T_range·sigmoid(θ)
    L = w_ce·CE + w_kd·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))            (KD, methods/kd.py)

and θ reaches the loss through a gradient-reversal layer (identity forward, gradient × −λ
backward), so the student descends L while T *ascends* it, making distillation harder.
λ follows an easy-to-hard cosine curriculum over the first E epochs (epochs count from 1):

    λ(e) = λ_min + (λ_max − λ_min)·(1 − cos(π·min(e, E)/E)) / 2

θ (initialised to 1, so T starts at 1 + 20·sigmoid(1) ≈ 15.6) is a parameter of this
method, built in ``setup()``: it trains in the student's optimizer, with its learning rate,
schedule and weight decay, as in the code (``trainable_list``). Defaults are the paper's
and the released CIFAR-100 script's: T_init 1, T_range 20, λ 0 → 1 over E 10 epochs,
KD weights 0.1 / 0.9. ``logit_stand`` (LSKD, see methods/kd.py) z-scores both logit vectors
first. LSKD's CTKD+LS numbers (its paper's Tables 1-2, mean of 4 runs) do not come from its
released script (``CTKD/scripts/run_cifar_distill.sh``: w_kd 9 and ``train_student.py``'s
t_start 1, t_end 20, so T in (1, 21)): in all 14 of its logs (``logs/CTKD/*.txt`` @ f6e5aa5,
17 runs) T never falls below 2.00 and ends epoch 1 at 22.3-30.4. T falls every epoch until
it settles at its floor, so those runs had a floor of 2 (t_init 2, the base temperature in
the logs' names) and started above 30.4; scaling the epoch-2 fall back by the curriculum's λ
(0.0245 vs 0.0955) puts the start at 31.0-31.6 in the eight runs still above the floor at
epoch 2, which fits t_range 40 (2 + 40·sigmoid(1) = 31.24): inferred, not published.
cifar100.yaml's ``ctkd_ls`` runs t_init 2, t_range 40, w_kd 9.

Differences from the released code: its reversal layer multiplies the gradient by λ and
its curriculum runs λ from 0 down to −1 (``--decay_max 0 --decay_min -1``); that is the
same as the paper's −λ with λ from 0 up to 1, written here as the paper does. Only the
global temperature is implemented: the paper's instance-wise temperature (an MLP per
sample, released outside the repository) and the code's ``LinearDecay`` curriculum
(an ablation) are not. LSKD's copy of this code swaps its ``--logit_stand`` switch (the
flag selects the plain KL); its published CTKD+LS runs are the standardised ones.
"""

import math

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, confloat
from torch import Tensor, nn

from kdbench.method import Batch, HParams, Method, TrainContext, register_method
from kdbench.methods.kd import kd_loss, standardize_logits
from kdbench.models import ModelOutput


class CTKDHParams(HParams):
    w_ce: NonNegativeFloat = 0.1
    w_kd: NonNegativeFloat = 0.9
    t_init: PositiveFloat = 1.0  # lowest temperature
    t_range: PositiveFloat = 20.0  # T = t_init + t_range·sigmoid(θ)
    theta_init: float = 1.0
    lambda_max: confloat(ge=0.0) = 1.0
    lambda_min: confloat(ge=0.0) = 0.0
    curriculum_epochs: NonNegativeInt = 10  # E; 0 starts at lambda_max
    logit_stand: bool = False  # LSKD: z-score logits before the learned-temperature softmax


class ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by −strength."""

    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    return ReverseGradient.apply(x, strength)


def curriculum_strength(epoch: int, epochs: int, lambda_min: float, lambda_max: float) -> float:
    """The cosine easy-to-hard λ of epoch ``epoch`` (from 1): λ_min at 0, λ_max from ``epochs`` on."""
    progress = 1.0 if epochs <= 0 else min(epoch, epochs) / epochs
    return lambda_min + (lambda_max - lambda_min) * (1 - math.cos(math.pi * progress)) / 2


@register_method
class CTKD(Method):
    name = "ctkd"
    display_name = "CTKD"
    color = "#44AA99"  # Tol's muted scheme, unused by the other methods
    HParams = CTKDHParams
    release_differences = (
        "only the global learnable temperature: the paper's instance-wise one and the code's LinearDecay curriculum are not implemented",
        "logit_stand divides by the population σ (LSKD's paper); LSKD's code uses torch.std (Bessel): see methods/kd.py",
    )

    def setup(self, context: TrainContext) -> None:
        device = context.student.logits.device
        self.theta = nn.Parameter(torch.tensor(self.hparams.theta_init, device=device))

    def temperature(self, strength: float) -> Tensor:
        """T from θ, with θ's gradient reversed and scaled by ``strength``."""
        hp = self.hparams
        return hp.t_init + hp.t_range * torch.sigmoid(reverse_gradient(self.theta, strength))

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        if not hasattr(self, "theta"):
            raise RuntimeError(f"method '{self.name}': its temperature is built by setup(); call it first")
        strength = curriculum_strength(epoch, hp.curriculum_epochs, hp.lambda_min, hp.lambda_max)
        z_s, z_t = student.logits, teacher.logits.detach()
        if hp.logit_stand:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        temperature = self.temperature(strength)
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "kd": hp.w_kd * kd_loss(z_s, z_t, temperature),
        }
