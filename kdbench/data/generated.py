"""What the generated sets (``synthetic-fg``, ``glyphs``, ``accents``) share: the random
streams of one data seed, and pixel noise that every CPU draws alike."""

from __future__ import annotations

import torch
from torch import Tensor


def stream_generator(data_seed: int, stream: int) -> torch.Generator:
    """Independent random streams of one data seed: 0 for a set's fixed look (its groups'
    styles), 1 for the training images, 2 for the test images, so changing the number of
    test images leaves the training images as they were."""
    return torch.Generator().manual_seed(data_seed * 3 + stream)


def portable_noise(shape: tuple[int, ...], std: float, generator: torch.Generator,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Zero-mean noise of standard deviation ``std`` from three uniforms (their sum has
    variance 1/4): torch.randn's transcendental functions may round differently on other
    CPUs, sums of uniforms do not."""
    return 2 * std * (torch.rand(3, *shape, generator=generator, dtype=dtype).sum(0) - 1.5)
