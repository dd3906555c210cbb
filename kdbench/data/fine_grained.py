"""The 224-px fine-grained sets, read from the data root in the layout of their official
archives (listed in ``kdbench.data``'s docstring); nothing is downloaded. Each loader only
parses its set's split files into the official train and test splits; their options are
``LargeImageOptions``. ``cub200``, ``stanford-dogs``, ``mit67`` and ``stanford40`` are also
read from the repositories' ImageFolder trees (``folders.REPOSITORY_TREES``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torchvision

from ..errors import DataError
from . import register_dataset
from .datasets import DataSplits
from .folders import file_splits, repository_tree, tree_note, tree_splits
from .options import LargeImageOptions
from .split_files import malformed, read_records, require, require_files
from .splitting import Splitter


@register_dataset("cub200", LargeImageOptions)
def cub200(root: Path, splitter: Splitter, options: LargeImageOptions) -> DataSplits:
    """CUB-200-2011 from ``CUB_200_2011/``: ``classes.txt`` (``<class id> <name>``),
    ``images.txt`` (``<image id> <path under images/>``), ``image_class_labels.txt``
    (``<image id> <class id>``) and ``train_test_split.txt`` (``<image id> <1 train | 0
    test>``); ids are 1-based. 200 classes, 5994 train / 5794 test images. Without
    ``images.txt``, a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``) of folders ``001.Black_footed_Albatross``…"""
    base = root / "CUB_200_2011"
    if not (base / "images.txt").is_file() and (tree := repository_tree(root, "cub200")):
        return tree_splits("cub200", splitter, tree, lambda name: name.split(".", 1)[-1], options, root)
    how = (
        "Download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ "
        f"and extract it into {root}. {tree_note('cub200')}"
    )
    files = (
        "classes.txt",
        "images.txt",
        "image_class_labels.txt",
        "train_test_split.txt",
        "images",
    )
    for name in files:
        require(base / name, "cub200", how)
    class_records = read_records(base / "classes.txt", r"(\d+)\s+(.+)", "'<class id> <name>'")
    class_ids = {int(i): n for _, (i, n) in class_records}
    if sorted(class_ids) != list(range(1, len(class_ids) + 1)):
        raise DataError(f"{base / 'classes.txt'}: class ids are not 1..{len(class_ids)}")
    classes = [class_ids[i].split(".", 1)[-1] for i in range(1, len(class_ids) + 1)]

    label_file = base / "image_class_labels.txt"
    labels = {}
    for line, (image_id, class_id) in read_records(
        label_file, r"(\d+)\s+(\d+)", "'<image id> <class id>'"
    ):
        if int(class_id) not in class_ids:
            raise malformed(label_file, line, f"class id {class_id} is not in classes.txt")
        labels[image_id] = int(class_id) - 1
    split_file = base / "train_test_split.txt"
    is_train = dict(
        fields for _, fields in read_records(split_file, r"(\d+)\s+([01])", "'<image id> <1 or 0>'")
    )
    splits: dict[str, tuple[list[Path], list[int]]] = {"1": ([], []), "0": ([], [])}  # train, test
    for line, (image_id, path) in read_records(
        base / "images.txt", r"(\d+)\s+(.+)", "'<image id> <path>'"
    ):
        for table, file in ((labels, label_file), (is_train, split_file)):
            if image_id not in table:
                raise malformed(
                    base / "images.txt", line, f"image id {image_id} has no line in {file.name}"
                )
        paths, split_labels = splits[is_train[image_id]]
        paths.append(base / "images" / path)
        split_labels.append(labels[image_id])
    require_files(splits["1"][0] + splits["0"][0], base / "images.txt")
    return file_splits(splitter, splits["1"], splits["0"], classes, options, root)


@register_dataset("stanford-dogs", LargeImageOptions)
def stanford_dogs(root: Path, splitter: Splitter, options: LargeImageOptions) -> DataSplits:
    """Stanford Dogs from ``StanfordDogs/``: ``Images/<wnid>-<breed>/*.jpg`` (images.tar) and
    the official ``train_list.mat`` / ``test_list.mat`` (lists.tar): a ``file_list`` cell
    array of paths under ``Images/`` and 1-based ``labels``. 120 breeds, 12000 train /
    8580 test images; class names are the breeds from the folder names. Without
    ``train_list.mat``, a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``) of ``<wnid>-<breed>`` folders."""
    base = root / "StanfordDogs"
    if not (base / "train_list.mat").is_file() and (tree := repository_tree(root, "stanford-dogs")):
        return tree_splits("stanford-dogs", splitter, tree, _breed, options, root)
    how = (
        "Download images.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/ "
        f"and extract both into {base}. {tree_note('stanford-dogs')}"
    )
    for name in ("Images", "train_list.mat", "test_list.mat"):
        require(base / name, "stanford-dogs", how)
    names: dict[int, str] = {}
    splits = []
    for mat in ("train_list.mat", "test_list.mat"):
        content = _loadmat(base / mat, ("file_list", "labels"))
        files = [str(np.ravel(cell)[0]) for cell in content["file_list"].ravel()]
        labels = [int(label) - 1 for label in content["labels"].ravel()]
        if len(files) != len(labels):
            raise DataError(f"{base / mat}: {len(files)} files but {len(labels)} labels")
        for file, label in zip(files, labels, strict=True):
            names.setdefault(label, _breed(file.split("/")[0]))
        paths = [base / "Images" / f for f in files]
        require_files(paths, base / mat)
        splits.append((paths, labels))
    if sorted(names) != list(range(len(names))):
        raise DataError(f"stanford-dogs: the labels in {base}/*_list.mat are not 1..{len(names)}")
    classes = [names[i] for i in range(len(names))]
    return file_splits(splitter, splits[0], splits[1], classes, options, root)


def _breed(folder: str) -> str:
    """The breed of a Stanford Dogs image folder ``<wnid>-<breed>``."""
    return folder.split("-", 1)[-1]


def _loadmat(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        content = loadmat(path)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... on bad files
        raise DataError(f"cannot read the MATLAB file {path}: {e}") from e
    missing = [k for k in keys if k not in content]
    if missing:
        raise DataError(f"{path} has no variable {', '.join(missing)}")
    return content


@register_dataset("mit67", LargeImageOptions)
def mit67(root: Path, splitter: Splitter, options: LargeImageOptions) -> DataSplits:
    """MIT Indoor-67 from ``Indoor67/``: ``Images/<class>/*.jpg`` (indoorCVPR_09.tar) and the
    official ``TrainImages.txt`` / ``TestImages.txt``, one ``<class>/<file>`` per line.
    67 classes in sorted order, 5360 train / 1340 test images. Without ``TrainImages.txt``,
    a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``)."""
    base = root / "Indoor67"
    if not (base / "TrainImages.txt").is_file() and (tree := repository_tree(root, "mit67")):
        return tree_splits("mit67", splitter, tree, str, options, root)
    how = (
        "Download indoorCVPR_09.tar, TrainImages.txt and TestImages.txt from "
        f"https://web.mit.edu/torralba/www/indoor.html and put them (the tar extracted) in {base}. "
        f"{tree_note('mit67')}"
    )
    for name in ("Images", "TrainImages.txt", "TestImages.txt"):
        require(base / name, "mit67", how)
    lists = {
        name: read_records(base / name, r"([^/\s]+)/(.+)", "'<class>/<file>'")
        for name in ("TrainImages.txt", "TestImages.txt")
    }
    classes = sorted({c for records in lists.values() for _, (c, _) in records})
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for name, records in lists.items():
        paths = [base / "Images" / c / f for _, (c, f) in records]
        require_files(paths, base / name)
        splits.append((paths, [index[c] for _, (c, _) in records]))
    return file_splits(splitter, splits[0], splits[1], classes, options, root)


@register_dataset("stanford40", LargeImageOptions)
def stanford40(root: Path, splitter: Splitter, options: LargeImageOptions) -> DataSplits:
    """Stanford 40 Actions from ``Stanford40/``: ``JPEGImages/*.jpg`` and ``ImageSplits/``
    with ``actions.txt`` (a header line, then ``<action> <number of images>``) and
    ``<action>_train.txt`` / ``<action>_test.txt`` listing that action's file names.
    40 classes in the order of actions.txt, 4000 train / 5532 test images. Without
    ``ImageSplits/actions.txt``, a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``)."""
    base = root / "Stanford40"
    if not (base / "ImageSplits" / "actions.txt").is_file() and (
        tree := repository_tree(root, "stanford40")
    ):
        return tree_splits("stanford40", splitter, tree, str, options, root)
    how = (
        "Download Stanford40_JPEGImages.zip and Stanford40_ImageSplits.zip from "
        f"http://vision.stanford.edu/Datasets/40actions.html and unzip both into {base}. "
        f"{tree_note('stanford40')}"
    )
    for name in ("JPEGImages", "ImageSplits/actions.txt"):
        require(base / name, "stanford40", how)
    records = read_records(
        base / "ImageSplits" / "actions.txt", r"(\w+)\s+\d+", "'<action> <count>'", skip=1
    )
    classes = [action for _, (action,) in records]
    splits = []
    for split in ("train", "test"):
        paths, labels = [], []
        for label, action in enumerate(classes):
            listing = require(base / "ImageSplits" / f"{action}_{split}.txt", "stanford40", how)
            files = [
                base / "JPEGImages" / f
                for _, (f,) in read_records(listing, r"(\S+\.jpg)", "'<file>.jpg'")
            ]
            require_files(files, listing)
            paths += files
            labels += [label] * len(files)
        splits.append((paths, labels))
    return file_splits(splitter, splits[0], splits[1], classes, options, root)


@register_dataset("fgvc-aircraft", LargeImageOptions)
def fgvc_aircraft(root: Path, splitter: Splitter, options: LargeImageOptions) -> DataSplits:
    """FGVC-Aircraft 2013b from ``fgvc-aircraft-2013b/data/``: ``images/<id>.jpg``,
    ``variants.txt`` (one variant per line: the 100 classes, in that order) and
    ``images_variant_{trainval,test}.txt`` (``<id> <variant>``; variants may contain spaces).
    Train = the official trainval (6667 images), test = test (3333). Images keep their
    copyright banner, as torchvision's loader does."""
    base = root / "fgvc-aircraft-2013b" / "data"
    how = (
        "Download fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
        f"and extract it into {root}."
    )
    files = ("images", "variants.txt", "images_variant_trainval.txt", "images_variant_test.txt")
    for name in files:
        require(base / name, "fgvc-aircraft", how)
    classes = [v for _, (v,) in read_records(base / "variants.txt", r"(.+)", "a variant name")]
    index = {v: i for i, v in enumerate(classes)}
    splits = []
    for name in ("images_variant_trainval.txt", "images_variant_test.txt"):
        paths, labels = [], []
        for line, (image_id, variant) in read_records(
            base / name, r"(\S+)\s+(.+)", "'<image id> <variant>'"
        ):
            if variant not in index:
                raise malformed(base / name, line, f"variant {variant!r} is not in variants.txt")
            paths.append(base / "images" / f"{image_id}.jpg")
            labels.append(index[variant])
        require_files(paths, base / name)
        splits.append((paths, labels))
    return file_splits(splitter, splits[0], splits[1], classes, options, root)


@register_dataset("flowers102", LargeImageOptions)
def flowers102(root: Path, splitter: Splitter, options: LargeImageOptions) -> DataSplits:
    """Oxford Flowers-102 from ``flowers-102/`` (torchvision's layout): ``jpg/image_00001.jpg …``,
    ``imagelabels.mat`` (``labels``: 1-based class of image k at position k-1) and
    ``setid.mat`` (1-based image ids ``trnid``, ``valid``, ``tstid``). Train = trnid + valid
    (2040 images), test = tstid (6149); the val split is carved from train like every set's."""
    base = root / "flowers-102"
    how = (
        "Download 102flowers.tgz, imagelabels.mat and setid.mat from "
        f"https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and put them (the tgz extracted) in {base}."
    )
    for name in ("jpg", "imagelabels.mat", "setid.mat"):
        require(base / name, "flowers102", how)
    labels = _loadmat(base / "imagelabels.mat", ("labels",))["labels"].ravel().astype(np.int64) - 1
    setid = _loadmat(base / "setid.mat", ("trnid", "valid", "tstid"))

    def split(*keys: str) -> tuple[list[Path], list[int]]:
        ids = np.concatenate([setid[k].ravel() for k in keys]).astype(np.int64)
        if ids.min(initial=1) < 1 or ids.max(initial=1) > len(labels):
            raise DataError(
                f"{base / 'setid.mat'}: image ids outside 1..{len(labels)} (imagelabels.mat)"
            )
        paths = [base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        require_files(paths, base / "setid.mat")
        return paths, labels[ids - 1].tolist()

    names = getattr(torchvision.datasets.Flowers102, "classes", [])
    num_classes = int(labels.max()) + 1
    classes = [names[i] if i < len(names) else str(i + 1) for i in range(num_classes)]
    return file_splits(splitter, split("trnid", "valid"), split("tstid"), classes, options, root)
