"""Discrete wavelet transforms of logit vectors along the class axis.

A B×C logit matrix is B one-dimensional signals of length C. ``decompose`` returns the
pywt/ptwt coefficient list ``[approx_L, detail_L, …, detail_1]`` (coarsest first);
``reconstruct`` inverts it, optionally keeping only some bands, and crops back to C (odd
lengths are padded at every level with the boundary ``mode``, so ``zero`` zero-pads).
Every transform here is linear in the logits and differentiable (ptwt is conv1d).

"Frequency over classes" only means something for a given class order, so
``teacher_class_order`` gives a spectral ordering that puts classes the teacher confuses
next to each other. FiGKD and the spectra analysis both use this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Literal

import ptwt
import pywt
import torch
from torch import Tensor

from .errors import ConfigError, did_you_mean

Mode = Literal["zero", "constant", "symmetric", "reflect", "periodic"]  # what ptwt pads with
Band = Literal["high", "low", "all"]
EXAMPLE_WAVELETS = "haar, db2, db4, sym4, coif1, bior2.2"


@cache
def wavelet_names() -> tuple[str, ...]:
    return tuple(pywt.wavelist(kind="discrete"))


def check_wavelet(name: str) -> str:
    """``name`` if pywt knows it as a discrete wavelet, else a ConfigError with suggestions."""
    if name in wavelet_names():
        return name
    hint = did_you_mean(name, wavelet_names()) or f"; e.g. {EXAMPLE_WAVELETS}"
    raise ConfigError(
        f"unknown wavelet '{name}'{hint} (any of pywt.wavelist(kind='discrete'))"
    )


def max_level(length: int, wavelet: str) -> int:
    """Deepest useful level for a signal of ``length`` (pywt.dwt_max_level); 0 if none."""
    return pywt.dwt_max_level(length, pywt.Wavelet(wavelet).dec_len)


def check_level(level: int, length: int, wavelet: str) -> int:
    deepest = max_level(length, wavelet)
    if deepest < 1:
        raise ConfigError(
            f"wavelet '{wavelet}' (filter length {pywt.Wavelet(wavelet).dec_len}) is too long "
            f"for {length} classes: no decomposition level is possible; use a shorter wavelet such as haar"
        )
    if not 1 <= level <= deepest:
        raise ConfigError(
            f"level {level} is too deep for {length} classes with wavelet '{wavelet}'; "
            f"allowed range is 1..{deepest}"
        )
    return level


def decompose(logits: Tensor, wavelet: str = "haar", level: int = 1, mode: Mode = "zero") -> list[Tensor]:
    """``[approx_L, detail_L, …, detail_1]`` of ``logits`` (…×C) along the last axis."""
    return list(ptwt.wavedec(logits, wavelet, mode=mode, level=level, axis=-1))


def band_mask(level: int, band: Band) -> list[bool]:
    """Which entries of a ``decompose`` list belong to ``band`` (approx is "low")."""
    return [band != "high"] + [band != "low"] * level


def reconstruct(
    coeffs: Sequence[Tensor], wavelet: str, length: int, keep: Sequence[bool] | None = None
) -> Tensor:
    """Inverse transform back to ``length`` class scores; bands with ``keep`` False are zeroed."""
    if keep is not None:
        coeffs = [c if k else torch.zeros_like(c) for c, k in zip(coeffs, keep, strict=True)]
    return ptwt.waverec(list(coeffs), wavelet, axis=-1)[..., :length]


def band_pass(logits: Tensor, wavelet: str = "haar", level: int = 1, mode: Mode = "zero", band: Band = "high") -> Tensor:
    """The part of ``logits`` carried by ``band``, as C class scores (band "all" is identity)."""
    coeffs = decompose(logits, wavelet, level, mode)
    return reconstruct(coeffs, wavelet, logits.shape[-1], band_mask(level, band))


def band_coefficients(logits: Tensor, wavelet: str = "haar", level: int = 1, mode: Mode = "zero", band: Band = "high") -> Tensor:
    """The coefficients of ``band``, concatenated (coarsest first) along the last axis."""
    coeffs = decompose(logits, wavelet, level, mode)
    return torch.cat([c for c, k in zip(coeffs, band_mask(level, band)) if k], dim=-1)


def spectral_order(similarity: Tensor) -> Tensor:
    """Permutation sorting nodes by the Fiedler vector of the graph Laplacian D − W.

    ``similarity`` is symmetrised and its diagonal ignored. Nodes joined by heavy edges get
    close Fiedler values, so they end up adjacent. The eigenvector's sign is fixed so the
    order correlates positively with the index order (deterministic output).
    """
    w = similarity.detach().double()
    w = (w + w.T) / 2
    w = w - torch.diag(torch.diagonal(w))
    laplacian = torch.diag(w.sum(1)) - w
    fiedler = torch.linalg.eigh(laplacian).eigenvectors[:, 1]
    index = torch.arange(len(fiedler), dtype=fiedler.dtype, device=fiedler.device)
    if (fiedler * (index - index.mean())).sum() < 0:
        fiedler = -fiedler
    return torch.sort(fiedler, stable=True).indices


def random_class_order(num_classes: int, seed: int) -> Tensor:
    """A fixed permutation of the classes: the control for whether class order matters."""
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))


def teacher_class_order(
    teacher_logits: Tensor, labels: Tensor, num_classes: int, temperature: float = 1.0
) -> Tensor:
    """Spectral class order from the teacher's mean class-probability (confusion) matrix.

    Row c of the matrix is the teacher's mean softmax(z/T) over training samples of class c.
    """
    probs = torch.softmax(teacher_logits.detach().double() / temperature, dim=1)
    sums = torch.zeros(num_classes, num_classes, dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, labels.long(), probs)
    counts = torch.bincount(labels.long(), minlength=num_classes).clamp_min(1).to(probs)
    return spectral_order(sums / counts[:, None])
