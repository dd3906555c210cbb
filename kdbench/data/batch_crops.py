"""The training and evaluation crops applied to a whole batch at once, on the batch's device:
the on-device data path for sets held as pixels (``ImageDataset.resident``), in memory
(``BatchCrop``, the padded-crop recipe) or in a prepared store (``BatchResizedCrop`` over
``RaggedImages``, the 224-px recipes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .options import TrainCrop


@dataclass(frozen=True)
class BatchCrop:
    """The padded-crop recipe applied to a whole uint8 batch B×C×H×W at once, on the batch's
    device: each image gets its own crop offset and flip, drawn from the global RNG of that
    device. Used by the on-device data path for sets held in memory (``augment=False``
    only normalises)."""

    padding: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Tensor, augment: bool = True) -> Tensor:
        x = images.float().div_(255)
        if augment:
            n, _, h, w = x.shape
            padded = torch.nn.functional.pad(x, [self.padding] * 4)
            top = torch.randint(2 * self.padding + 1, (n, 1, 1), device=x.device)
            left = torch.randint(2 * self.padding + 1, (n, 1, 1), device=x.device)
            rows = (top + torch.arange(h, device=x.device)[None, :, None]).expand(n, h, w)
            cols = (left + torch.arange(w, device=x.device)[None, None, :]).expand(n, h, w)
            if self.flip:
                mirrored = torch.rand(n, 1, 1, device=x.device) < 0.5
                cols = torch.where(mirrored, cols.flip(-1), cols)
            batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, device=x.device)[:, None, None]
        std = torch.tensor(self.std, device=x.device)[:, None, None]
        return ((x - mean) / std).contiguous()


def resized_short_side(image_size: int) -> int:
    """The Resize step of the 224-px recipes: the short side scaled to 256/224 of the crop."""
    return round(image_size * 256 / 224)


@dataclass(frozen=True)
class RaggedImages:
    """uint8 RGB images of different sizes in one flat buffer, each stored as its H×W×3 rows
    (the layout of a prepared store, ``kdbench.data.prepared``). ``flat`` may live on any
    device; where each image starts and its size are kept on the CPU, where the crops are
    cut."""

    flat: Tensor  # uint8, 1-D
    offsets: Tensor  # int64 (N,): the element of ``flat`` where each image starts
    heights: Tensor  # int64 (N,)
    widths: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: Tensor) -> RaggedImages:
        index = index.cpu()
        return RaggedImages(self.flat, self.offsets[index], self.heights[index], self.widths[index])

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def image(self, offset: int, height: int, width: int) -> Tensor:
        """The image stored at ``offset`` as a 3×H×W view (channels last in memory)."""
        return self.flat[offset : offset + height * width * 3].view(height, width, 3).permute(2, 0, 1)


@dataclass(frozen=True)
class BatchResizedCrop:
    """The 224-px recipe applied to a whole batch of a prepared store's images
    (``RaggedImages``, each already resized so its short side is ``resized_short_side(size)``)
    on the batch's device. Training: ``train_crop`` "random_resized" is
    RandomResizedCrop(size, ``scale``, ``ratio``), "resize_crop" a RandomCrop(size) of the
    resized image, each followed by a horizontal flip with probability ½; evaluation
    (``augment=False``) is CenterCrop(size), which with the stored resize is exactly the eval
    transform of the folder loader. Then ImageNet-style normalisation with ``mean``/``std``.

    Crop boxes and flips are drawn as torchvision draws them (``RandomResizedCrop.get_params``:
    ten tries of a uniform area fraction and a log-uniform aspect ratio, else the whole image
    clipped to the ratio range), all images at once, from the CPU's global random stream:
    each box is cut as a view with Python slice bounds, and drawing them on a GPU would stall
    every batch on a device-to-host copy. Each box is resized with bilinear interpolation,
    antialiased as torchvision's tensor path is (uint8 on a CPU, as torchvision does there;
    float32 on a GPU, which has no uint8 kernel). Returns float32 N×3×size×size."""

    size: int
    train_crop: TrainCrop
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def boxes(self, heights: Tensor, widths: Tensor) -> Tensor:
        """(top, left, height, width) of a random training crop of each image, int64 N×4."""
        if self.train_crop == "resize_crop":
            top = (torch.rand(len(heights)) * (heights - self.size + 1)).long()
            left = (torch.rand(len(widths)) * (widths - self.size + 1)).long()
            side = torch.full_like(heights, self.size)
            return torch.stack([top, left, side, side], 1)
        tries = 10
        n = len(heights)
        h_img, w_img = heights.double()[:, None], widths.double()[:, None]
        area = h_img * w_img * torch.empty(n, tries, dtype=torch.float64).uniform_(*self.scale)
        log_ratio = torch.tensor(self.ratio, dtype=torch.float64).log()
        aspect = torch.empty(n, tries, dtype=torch.float64).uniform_(*log_ratio.tolist()).exp()
        w = (area * aspect).sqrt().round()
        h = (area / aspect).sqrt().round()
        fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
        first = fits.double().argmax(1, keepdim=True)  # the first try that fits, as torchvision takes
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        # torchvision's fallback: the whole image, narrowed to the nearest allowed aspect ratio
        in_ratio = widths.double() / heights.double()
        low, high = self.ratio
        fallback_w = torch.where(in_ratio > high, (heights * high).round(), widths.double())
        fallback_h = torch.where(in_ratio < low, (widths / low).round(), heights.double())
        found = fits.any(1)
        h = torch.where(found, h, fallback_h)
        w = torch.where(found, w, fallback_w)
        top = torch.where(found, (torch.rand(n) * (heights - h + 1)).floor(), (heights - h) // 2)
        left = torch.where(found, (torch.rand(n) * (widths - w + 1)).floor(), (widths - w) // 2)
        return torch.stack([top, left, h, w], 1).long()

    def center_boxes(self, heights: Tensor, widths: Tensor) -> Tensor:
        """The CenterCrop(size) box of each image, placed as torchvision places it."""
        return torch.tensor(
            [
                [round((h - self.size) / 2.0), round((w - self.size) / 2.0), self.size, self.size]
                for h, w in zip(heights.tolist(), widths.tolist())
            ],
            dtype=torch.int64,
        ).view(-1, 4)

    def __call__(self, images: RaggedImages, augment: bool = True) -> Tensor:
        n, s = len(images), self.size
        if augment:
            boxes = self.boxes(images.heights, images.widths).tolist()
            flips = (torch.rand(n) < 0.5).tolist()
        else:
            boxes, flips = self.center_boxes(images.heights, images.widths).tolist(), [False] * n
        on_cpu = images.device.type == "cpu"
        out = torch.empty(n, 3, s, s, device=images.device)
        stored = zip(images.offsets.tolist(), images.heights.tolist(), images.widths.tolist())
        for i, ((offset, height, width), (top, left, h, w), flip) in enumerate(zip(stored, boxes, flips)):
            crop = images.image(offset, height, width)[:, top : top + h, left : left + w]
            if (h, w) != (s, s):
                crop = torch.nn.functional.interpolate(
                    (crop if on_cpu else crop.float())[None], size=(s, s), mode="bilinear",
                    antialias=True, align_corners=False,
                )[0]
            out[i] = crop.flip(-1) if flip else crop
        # (x/255 - mean)/std in place: a fresh batch-sized buffer per operation would cost
        # more than the arithmetic (page faults on a CPU)
        std = torch.tensor(self.std, device=out.device)[:, None, None]
        mean = torch.tensor(self.mean, device=out.device)[:, None, None]
        return out.mul_(1 / (255 * std)).sub_(mean / std)
