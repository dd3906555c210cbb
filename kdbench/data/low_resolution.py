"""CIFAR-100 and Tiny-ImageNet: the small-image real sets (32 and 64 px, the padded-crop
recipe), read from the data root in the layout of their official archives (listed in
``kdbench.data``'s docstring); nothing is downloaded. Neither has options."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from . import register_dataset
from .datasets import DataSplits, ImageFileDataset, TensorImageDataset
from .options import DatasetOptions
from .split_files import malformed, read_records, require, require_files
from .splitting import Splitter
from .transforms import IMAGENET_MEAN, IMAGENET_STD, padded_crop_transforms


@register_dataset("cifar100")
def cifar100(root: Path, splitter: Splitter, options: DatasetOptions) -> DataSplits:
    """CIFAR-100 from ``cifar-100-python/{train,test,meta}``, the python pickles of
    cifar-100-python.tar.gz (torchvision's layout). 100 fine classes, 32×32; augmentation
    RandomCrop(32, padding 4) + horizontal flip."""
    base = root / "cifar-100-python"
    how = f"Download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into {root}."
    for name in ("train", "test", "meta"):
        require(base / name, "cifar100", how)

    def split(name: str) -> TensorImageDataset:
        batch = _unpickle(base / name, ("data", "fine_labels"))
        images = torch.as_tensor(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        return TensorImageDataset(images, batch["fine_labels"])

    classes = _unpickle(base / "meta", ("fine_label_names",))["fine_label_names"]
    transforms = padded_crop_transforms(
        32, 4, flip=True, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761)
    )
    return splitter.make(split("train"), split("test"), classes, 32, transforms)


def _unpickle(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="latin1")
    except Exception as e:  # a truncated or foreign file fails in many ways
        raise DataError(f"cannot read the CIFAR pickle {path}: {e}") from e
    missing = [k for k in keys if not isinstance(content, dict) or k not in content]
    if missing:
        raise DataError(f"{path} is not a CIFAR-100 pickle: no {', '.join(missing)}")
    return content


@register_dataset("tiny-imagenet")
def tiny_imagenet(root: Path, splitter: Splitter, options: DatasetOptions) -> DataSplits:
    """Tiny-ImageNet from ``tiny-imagenet-200/``: ``wnids.txt`` (the 200 classes, taken in
    sorted order as ImageFolder does), ``words.txt`` (names), ``train/<wnid>/images/*.JPEG``,
    and the official val split as the test split: ``val/images/*.JPEG`` labelled by
    ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>x0 y0 x1 y1``). 64×64; augmentation
    RandomCrop(64, padding 8) + horizontal flip; ImageNet normalisation."""
    base = root / "tiny-imagenet-200"
    how = f"Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into {root}."
    for name in ("wnids.txt", "words.txt", "train", "val/val_annotations.txt"):
        require(base / name, "tiny-imagenet", how)
    wnid = r"(n\d{8})"
    wnids = sorted(
        w for _, (w,) in read_records(base / "wnids.txt", wnid, "a WordNet id like n01443537")
    )
    words = dict(
        fields
        for _, fields in read_records(base / "words.txt", wnid + r"\s+(.*)", "'<wnid><TAB><names>'")
    )
    classes = [words.get(w, w).split(",")[0] for w in wnids]
    index = {w: i for i, w in enumerate(wnids)}

    train_paths, train_labels = [], []
    for w in wnids:
        files = sorted(require(base / "train" / w / "images", "tiny-imagenet", how).glob("*.JPEG"))
        if not files:
            raise DataError(f"tiny-imagenet: no .JPEG images in {base / 'train' / w / 'images'}")
        train_paths += files
        train_labels += [index[w]] * len(files)

    annotations = base / "val" / "val_annotations.txt"
    test_paths, test_labels = [], []
    for line, (name, w) in read_records(
        annotations, r"(\S+)\s+" + wnid + r"(?:\s+-?\d+){4}", "'<file> <wnid> x0 y0 x1 y1'"
    ):
        if w not in index:
            raise malformed(annotations, line, f"{w} is not in wnids.txt")
        test_paths.append(base / "val" / "images" / name)
        test_labels.append(index[w])
    require_files(test_paths, annotations)

    transforms = padded_crop_transforms(64, 8, flip=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return splitter.make(
        ImageFileDataset(train_paths, train_labels),
        ImageFileDataset(test_paths, test_labels),
        classes,
        64,
        transforms,
    )
