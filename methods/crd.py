"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

Embedding heads e = normalize(Linear(d → 128)(embedding)) for student and teacher (both
trained with the student). Per sample i and anchor e (student or teacher), the positive is
the other model's memory row i and K negatives are memory rows of samples from other
classes; with s = ⟨e, m⟩/τ − log Z, P = exp(s), m = K, P_n = 1/N, Eq. 18 of the paper is

    NCE = −log P_pos/(P_pos + m·P_n + ε) − Σ_neg log m·P_n/(P_neg + m·P_n + ε)
        = softplus(log(m·P_n + ε) − s_pos) + Σ_neg softplus(log(P_neg + ε) − log(m·P_n))

with the released code's ε = 1e-7 in the denominators (mdistiller ``CRD.py``, RepDistiller's
NCECriterion), computed in the log form above: theirs, without its exp(s) overflow. ε moves
the loss by 4e-4 relative at initialisation on CIFAR-100 (N 50,000, K 16,384; 5e-5 on
CUB-200), since most P_neg are far below ε. Z = mean(exp(⟨e, m⟩/τ))·N is fixed from the
first batch, per anchor (buffer ``log_z``).

    L = w_ce·CE + 0.8·(NCE_student-anchored + NCE_teacher-anchored)

``mode: bank`` (RepDistiller): one N×128 memory per model, rows initialised uniform in
±1/√(128/3) and updated after the loss used them: m_i ← normalize(0.5·m_i + 0.5·e_i).
Negatives are drawn per sample from the samples of other classes, as mdistiller's loader
draws them (``dataset/cifar100.py``, ``np.random.choice(cls_negative[y], K, replace=K > pool)``):
K distinct ones when the pool holds K or more (CIFAR-100: 49,500 ≥ 16,384), else K drawn
uniformly with replacement (CUB-200's 5,964 < 16,384), with torch's global RNG (seeded and
checkpointed by the engine). m = K either way, as in the release.
``mode: queue`` (for large N): MoCo-style FIFO queues of the last K embeddings of each model
are the negatives (same-class entries masked out), the positive is the other model's
current embedding, detached (``memory_s``/``memory_t`` then hold the queues). Defaults: 128-d, K 16384, τ 0.07, momentum 0.5, weights 1/0.8.

``warmup`` (default 0, none: RepDistiller and mdistiller have none) ramps w_crd linearly,
min(epoch / warmup, 1), as DKD's and ReviewKD's losses are ramped. Short runs may want it:
at initialisation the positive term is saturated and its gradient is ⟨memory row⟩/τ with
τ = 0.07, so on the student backbone CRD's gradient is larger than CE's over the first
epoch, while every memory row is still its random initialisation until the sample's first
visit, i.e. for all of epoch 1. In a run of a few epochs that can hold the student on a
coarse plateau (synthetic-fg's: groups learnt, stripe counts not). The queue mode, whose
positives are the current embeddings rather than random rows, stays on the plateau too,
so it is the gradient's size at the start, not the stale memory, that costs the budget.
Over RepDistiller's 240 epochs the first epoch is 0.4% of training. What was measured, and
when: docs/methods.md ("CRD and FreeKD at the start of training").
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, confloat
from torch import Tensor, nn

from kdbench.errors import ConfigError
from kdbench.method import Batch, HParams, Method, TrainContext, register_method, warmup
from kdbench.models import ModelOutput


class CRDHParams(HParams):
    feat_dim: PositiveInt = 128
    num_negatives: PositiveInt = 16384
    temperature: PositiveFloat = 0.07
    momentum: confloat(ge=0.0, lt=1.0) = 0.5
    w_crd: NonNegativeFloat = 0.8
    w_ce: NonNegativeFloat = 1.0
    mode: Literal["bank", "queue"] = "bank"
    warmup: NonNegativeInt = 0  # epochs of linear ramp of w_crd; the released code has none


NCE_EPS = 1e-7  # mdistiller CRD.py's eps inside the NCE terms


def nce_loss(scores: Tensor, log_z: Tensor, num_data: int, num_negatives: int, negative_mask: Tensor | None = None,
             eps: float = NCE_EPS) -> Tensor:
    """CRD's NCE from B×(1+K) scores ⟨anchor, memory⟩/τ (positive first), mean over the batch,
    with the release's ``eps`` in the denominators (module docstring).

    ``negative_mask`` (B×K, optional) drops negatives; m·P_n stays K/N.
    """
    log_noise = math.log(num_negatives / num_data)
    s = scores - log_z
    log_eps = math.log(eps) if eps > 0 else -math.inf
    negatives = F.softplus(torch.logaddexp(s[:, 1:], s.new_tensor(log_eps)) - log_noise)
    if negative_mask is not None:
        negatives = negatives * negative_mask
    return (F.softplus(math.log(num_negatives / num_data + eps) - s[:, 0]) + negatives.sum(1)).mean()


def first_log_z(scores: Tensor, num_data: int) -> Tensor:
    """log(mean(exp(scores))·N), computed in log space."""
    return torch.logsumexp(scores.detach().flatten(), 0) - math.log(scores.numel()) + math.log(num_data)


class NegativePools:
    """Each class's negative pool (the training samples of every other class), laid out so
    that a uniform draw from it costs O(1): the training indices sorted by class, and each
    class's first position and size in that order."""

    def __init__(self, train_labels: Tensor) -> None:
        self.train_labels = train_labels
        self.order = torch.argsort(train_labels, stable=True)
        self.counts = torch.bincount(train_labels)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def sizes(self, labels: Tensor) -> Tensor:
        return len(self.train_labels) - self.counts[labels]

    def replace(self, labels: Tensor, k: int) -> Tensor | bool:
        """Whether each of ``labels``' pools is smaller than k (then drawn with replacement):
        one bool when they all agree, so the usual cases draw one way only."""
        small = self.sizes(labels) < k
        return small if bool(small.any()) and not bool(small.all()) else bool(small.all())

    def draw(self, labels: Tensor, k: int, replace: Tensor | bool) -> Tensor:
        """B×k training indices, each row from its label's pool: uniformly with replacement
        where ``replace`` (per row, or for all), else k distinct ones (k ≤ the row's pool)."""
        if replace is True:
            return self._with_replacement(labels, k)
        distinct = self._distinct(labels, k)
        if replace is False:
            return distinct
        return torch.where(replace[:, None], self._with_replacement(labels, k), distinct)

    def _with_replacement(self, labels: Tensor, k: int) -> Tensor:
        # r uniform in [0, pool); skipping the row's own class block maps it onto the pool.
        pool = self.sizes(labels)[:, None]
        r = (torch.rand(len(labels), k, dtype=torch.float64, device=labels.device) * pool).long().clamp_(max=pool - 1)
        start, count = self.starts[labels][:, None], self.counts[labels][:, None]
        return self.order[r + (r >= start) * count]

    def _distinct(self, labels: Tensor, k: int) -> Tensor:
        keys = torch.rand(len(labels), len(self.train_labels), device=labels.device)
        keys.masked_fill_(self.train_labels[None] == labels[:, None], -1.0)  # below every rand value
        return keys.topk(k, dim=1, sorted=False).indices


def draw_negatives(labels: Tensor, train_labels: Tensor, k: int) -> Tensor:
    """B×k training indices per row, all of another class than the row's label, as
    mdistiller's loader draws them: distinct when the row's pool holds k or more, else with
    replacement."""
    pools = NegativePools(train_labels)
    return pools.draw(labels, k, pools.replace(labels, k))


def _renormalised(memory: Tensor, rows: Tensor, values: Tensor, momentum: float) -> Tensor:
    # Out of place: the loss's backward still needs the memory it was computed with.
    mixed = F.normalize(momentum * memory[rows] + (1 - momentum) * values.detach(), dim=1)
    return memory.index_copy(0, rows, mixed)


@register_method
class CRD(Method):
    name = "crd"
    display_name = "CRD"
    color = "#882255"
    HParams = CRDHParams
    version = 2  # 2: negatives with replacement where a class's pool is smaller than K; the release's ε in the NCE
    release_differences = (
        "negatives are drawn with torch's generator on the device, not numpy's in loader workers: the same law, another stream",
    )

    def __init__(self, **hparams) -> None:
        super().__init__(**hparams)
        for name in ("memory_s", "memory_t", "log_z", "queue_labels", "queue_ptr"):
            self.register_buffer(name, None)
        self.register_buffer("train_labels", None, persistent=False)

    def setup(self, context: TrainContext) -> None:
        hp = self.hparams
        if context.student.embedding is None or context.teacher is None or context.teacher.embedding is None:
            raise ConfigError(f"method '{self.name}': needs the student's and teacher's embeddings")
        device = context.student.embedding.device
        self.embed_s = nn.Linear(context.student.embedding.shape[1], hp.feat_dim).to(device)
        self.embed_t = nn.Linear(context.teacher.embedding.shape[1], hp.feat_dim).to(device)
        labels = context.train_labels.long().to(device)
        self.num_data = len(labels)
        if hp.mode == "bank":
            self.k, rows = hp.num_negatives, self.num_data
            self.pools = NegativePools(labels)
            pool_sizes = self.pools.sizes(labels.unique())
            if int(pool_sizes.min()) < 1:
                raise ConfigError(f"method '{self.name}': no negatives: every training sample has the same class")
            self.replace_by_class = self.pools.replace(torch.arange(len(self.pools.counts), device=device), self.k)
        else:
            self.k = rows = hp.num_negatives
            self.queue_labels = torch.full((rows,), -1, dtype=torch.long, device=device)
            self.queue_ptr = torch.zeros((), dtype=torch.long, device=device)
        generator = torch.Generator().manual_seed(context.seed)
        bound = 1 / math.sqrt(hp.feat_dim / 3)
        self.memory_s, self.memory_t = (
            (torch.rand(rows, hp.feat_dim, generator=generator) * 2 * bound - bound).to(device) for _ in range(2)
        )
        self.log_z = torch.full((2,), math.nan, device=device)  # [student anchor, teacher anchor]
        self.train_labels = labels
        self.gather = context.gather

    def loss(self, student: ModelOutput, teacher: ModelOutput, batch: Batch, epoch: int) -> dict[str, Tensor]:
        hp = self.hparams
        e_s = F.normalize(self.embed_s(student.embedding), dim=1)
        e_t = F.normalize(self.embed_t(teacher.embedding.detach()), dim=1)
        y = self.train_labels[batch.index]
        if hp.mode == "bank":
            replace = self.replace_by_class if isinstance(self.replace_by_class, bool) else self.replace_by_class[y]
            rows = torch.cat([batch.index[:, None], self.pools.draw(y, self.k, replace)], dim=1)
            # B×N scores then gather: far less memory than gathering B×(K+1)×128 rows.
            scores_s = (e_s @ self.memory_t.T).gather(1, rows) / hp.temperature
            scores_t = (e_t @ self.memory_s.T).gather(1, rows) / hp.temperature
            mask = None
        else:
            scores_s = torch.cat([(e_s * e_t.detach()).sum(1, keepdim=True), e_s @ self.memory_t.T], 1) / hp.temperature
            scores_t = torch.cat([(e_t * e_s.detach()).sum(1, keepdim=True), e_t @ self.memory_s.T], 1) / hp.temperature
            mask = self.queue_labels[None] != y[:, None]
        new_log_z = torch.stack([first_log_z(scores_s, self.num_data), first_log_z(scores_t, self.num_data)])
        self.log_z = torch.where(torch.isnan(self.log_z), new_log_z, self.log_z)
        crd = nce_loss(scores_s, self.log_z[0], self.num_data, self.k, mask) + nce_loss(
            scores_t, self.log_z[1], self.num_data, self.k, mask
        )
        with torch.no_grad():  # under torchrun, from every rank's samples: one memory, as in one process
            self._update_memory(*(self.gather(t) for t in (e_s, e_t, y, batch.index)))
        return {
            "ce": hp.w_ce * F.cross_entropy(student.logits, batch.targets),
            "crd": hp.w_crd * warmup(epoch, hp.warmup) * crd,
        }

    def _update_memory(self, e_s: Tensor, e_t: Tensor, y: Tensor, index: Tensor) -> None:
        if self.hparams.mode == "bank":
            self.memory_s = _renormalised(self.memory_s, index, e_s, self.hparams.momentum)
            self.memory_t = _renormalised(self.memory_t, index, e_t, self.hparams.momentum)
            return
        e_s, e_t, y = e_s[-self.k :], e_t[-self.k :], y[-self.k :]
        slots = (self.queue_ptr + torch.arange(len(y), device=y.device)) % self.k
        self.memory_s = self.memory_s.index_copy(0, slots, e_s.detach())
        self.memory_t = self.memory_t.index_copy(0, slots, e_t.detach())
        self.queue_labels = self.queue_labels.index_copy(0, slots, y)
        self.queue_ptr = (self.queue_ptr + len(y)) % self.k
