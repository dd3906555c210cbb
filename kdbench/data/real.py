"""Real data sets read from the data root, in the on-disk layout of their official archives
(listed in ``kdbench.data``'s docstring). Each loader only parses its set's split files into
the official train and test splits; nothing is downloaded."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from pydantic import PositiveInt

from ..errors import ConfigError, DataError
from . import register_dataset
from .prepared import prepared_splits
from .base import (
    CROP_RATIO,
    CROP_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropRange,
    DataSplits,
    ImageFileDataset,
    Splitter,
    SplitTransforms,
    TensorImageDataset,
    TrainCrop,
    large_image_transforms,
    malformed,
    padded_crop_transforms,
    read_records,
    require,
    require_files,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@register_dataset("cifar100")
def cifar100(root: Path, splitter: Splitter) -> DataSplits:
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
def tiny_imagenet(root: Path, splitter: Splitter) -> DataSplits:
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


def _file_splits(
    splitter: Splitter,
    train: tuple[list[Path], list[int]],
    test: tuple[list[Path], list[int]],
    classes: Sequence[str],
    image_size: int,
    transforms: SplitTransforms,
    root: Path,
    prepared: bool,
) -> DataSplits:
    """Splits of a 224-px set given its (paths, labels) per official split; with ``prepared``,
    read from the set's prepared store (``kdbench.data.prepared``), made first if missing."""
    train_set, test_set = ImageFileDataset(*train), ImageFileDataset(*test)
    if prepared:
        train_set, test_set = prepared_splits(splitter.name, root, train_set, test_set, image_size)
    return splitter.make(train_set, test_set, classes, image_size, transforms)


# The four fine-grained sets may also be read from the ImageFolder trees that the
# fine-grained self-distillation repositories train from: <data root>/<folder>/train/<class>/
# and valid/<class>/ (FRSKD) or test/<class>/ (CS-KD, L2T-ww), the second being the official
# test split. Folder names are matched in any case:
# - FRSKD (MingiJi/FRSKD @ 98b87e5, classification/dataset.py, lines 53-60 and 71-72): the
#   folder is its --data argument, one of cub_200_2011, dogs, mit67, stanford40 in any case;
# - CS-KD (alinlab/cs-kd @ b447f25, datasets.py, lines 159 and 213-214): CUB200,
#   STANFORD120, MIT67;
# - L2T-ww (alinlab/L2T-ww @ f4dde04, README.md and cub200.py / dog.py): train/ and test/
#   written inside CUB_200_2011/ and dog/.
# An official layout (its split files present) is read first; a tree only where it is absent.
REPOSITORY_TREES = {
    "cub200": ("CUB_200_2011", "CUB200"),
    "stanford-dogs": ("dogs", "STANFORD120", "dog", "StanfordDogs"),
    "mit67": ("mit67", "Indoor67", "indoor"),
    "stanford40": ("stanford40",),
}
TREE_TEST_FOLDERS = ("valid", "test")


def _tree_note(dataset: str) -> str:
    """How the ``how`` of a missing fine-grained set names the repositories' trees it also reads."""
    names = "|".join(REPOSITORY_TREES[dataset])
    return f"Or give it as an ImageFolder tree <data root>/<{names}>/{{train,valid or test}}/<class>/."


def _repository_tree(root: Path, dataset: str) -> tuple[Path, Path] | None:
    """(train, test) folders of the first of ``REPOSITORY_TREES[dataset]`` under ``root`` (any
    case) that holds ``train/`` and ``valid/`` or ``test/``; None where there is none."""
    if not root.is_dir():
        return None
    wanted = [name.lower() for name in REPOSITORY_TREES[dataset]]
    folders = sorted(
        (d for d in root.iterdir() if d.is_dir() and d.name.lower() in wanted),
        key=lambda d: (wanted.index(d.name.lower()), d.name),
    )
    for folder in folders:
        tests = [folder / name for name in TREE_TEST_FOLDERS if (folder / name).is_dir()]
        if (folder / "train").is_dir() and tests:
            if len(tests) > 1:
                raise DataError(
                    f"{dataset}: {folder} has both {' and '.join(t.name + '/' for t in tests)}; "
                    "keep the one that holds the official test split"
                )
            return folder / "train", tests[0]
    return None


def _tree_splits(
    dataset: str,
    splitter: Splitter,
    folders: tuple[Path, Path],
    class_name: Callable[[str], str],
    image_size: int,
    transforms: SplitTransforms,
    root: Path,
    prepared: bool,
) -> DataSplits:
    """Splits of a set read from a prepared (train, test) tree; its classes are the sorted
    folder names (ImageFolder's order), shown as ``class_name`` of the folder name."""
    folder_names, train, test = _read_tree(dataset, *folders)
    classes = [class_name(name) for name in folder_names]
    return _file_splits(splitter, train, test, classes, image_size, transforms, root, prepared)


@register_dataset("cub200")
def cub200(
    root: Path,
    splitter: Splitter,
    *,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
    """CUB-200-2011 from ``CUB_200_2011/``: ``classes.txt`` (``<class id> <name>``),
    ``images.txt`` (``<image id> <path under images/>``), ``image_class_labels.txt``
    (``<image id> <class id>``) and ``train_test_split.txt`` (``<image id> <1 train | 0
    test>``); ids are 1-based. 200 classes, 5994 train / 5794 test images. Without
    ``images.txt``, a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``) of folders ``001.Black_footed_Albatross``…"""
    base = root / "CUB_200_2011"
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    if not (base / "images.txt").is_file() and (tree := _repository_tree(root, "cub200")):
        return _tree_splits(
            "cub200", splitter, tree, lambda name: name.split(".", 1)[-1], image_size, transforms, root, prepared
        )
    how = (
        "Download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ "
        f"and extract it into {root}. {_tree_note('cub200')}"
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
    return _file_splits(splitter, splits["1"], splits["0"], classes, image_size, transforms, root, prepared)


@register_dataset("stanford-dogs")
def stanford_dogs(
    root: Path,
    splitter: Splitter,
    *,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
    """Stanford Dogs from ``StanfordDogs/``: ``Images/<wnid>-<breed>/*.jpg`` (images.tar) and
    the official ``train_list.mat`` / ``test_list.mat`` (lists.tar): a ``file_list`` cell
    array of paths under ``Images/`` and 1-based ``labels``. 120 breeds, 12000 train /
    8580 test images; class names are the breeds from the folder names. Without
    ``train_list.mat``, a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``) of ``<wnid>-<breed>`` folders."""
    base = root / "StanfordDogs"
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    if not (base / "train_list.mat").is_file() and (tree := _repository_tree(root, "stanford-dogs")):
        return _tree_splits(
            "stanford-dogs", splitter, tree, _breed, image_size, transforms, root, prepared
        )
    how = (
        "Download images.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/ "
        f"and extract both into {base}. {_tree_note('stanford-dogs')}"
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
    return _file_splits(splitter, splits[0], splits[1], classes, image_size, transforms, root, prepared)


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


@register_dataset("mit67")
def mit67(
    root: Path,
    splitter: Splitter,
    *,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
    """MIT Indoor-67 from ``Indoor67/``: ``Images/<class>/*.jpg`` (indoorCVPR_09.tar) and the
    official ``TrainImages.txt`` / ``TestImages.txt``, one ``<class>/<file>`` per line.
    67 classes in sorted order, 5360 train / 1340 test images. Without ``TrainImages.txt``,
    a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``)."""
    base = root / "Indoor67"
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    if not (base / "TrainImages.txt").is_file() and (tree := _repository_tree(root, "mit67")):
        return _tree_splits("mit67", splitter, tree, str, image_size, transforms, root, prepared)
    how = (
        "Download indoorCVPR_09.tar, TrainImages.txt and TestImages.txt from "
        f"https://web.mit.edu/torralba/www/indoor.html and put them (the tar extracted) in {base}. "
        f"{_tree_note('mit67')}"
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
    return _file_splits(splitter, splits[0], splits[1], classes, image_size, transforms, root, prepared)


@register_dataset("stanford40")
def stanford40(
    root: Path,
    splitter: Splitter,
    *,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
    """Stanford 40 Actions from ``Stanford40/``: ``JPEGImages/*.jpg`` and ``ImageSplits/``
    with ``actions.txt`` (a header line, then ``<action> <number of images>``) and
    ``<action>_train.txt`` / ``<action>_test.txt`` listing that action's file names.
    40 classes in the order of actions.txt, 4000 train / 5532 test images. Without
    ``ImageSplits/actions.txt``, a tree laid out for FRSKD, CS-KD or L2T-ww (``REPOSITORY_TREES``)."""
    base = root / "Stanford40"
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    if not (base / "ImageSplits" / "actions.txt").is_file() and (
        tree := _repository_tree(root, "stanford40")
    ):
        return _tree_splits("stanford40", splitter, tree, str, image_size, transforms, root, prepared)
    how = (
        "Download Stanford40_JPEGImages.zip and Stanford40_ImageSplits.zip from "
        f"http://vision.stanford.edu/Datasets/40actions.html and unzip both into {base}. "
        f"{_tree_note('stanford40')}"
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
    return _file_splits(splitter, splits[0], splits[1], classes, image_size, transforms, root, prepared)


@register_dataset("fgvc-aircraft")
def fgvc_aircraft(
    root: Path,
    splitter: Splitter,
    *,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
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
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    return _file_splits(splitter, splits[0], splits[1], classes, image_size, transforms, root, prepared)


@register_dataset("flowers102")
def flowers102(
    root: Path,
    splitter: Splitter,
    *,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
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
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    return _file_splits(
        splitter, split("trnid", "valid"), split("tstid"), classes, image_size, transforms, root, prepared
    )


@register_dataset("imagefolder")
def imagefolder(
    root: Path,
    splitter: Splitter,
    *,
    path: Path | None = None,
    image_size: PositiveInt = 224,
    train_crop: TrainCrop = "resize_crop",
    crop_scale: CropRange = CROP_SCALE,
    crop_ratio: CropRange = CROP_RATIO,
    prepared: bool = False,
) -> DataSplits:
    """Any ImageFolder tree at option ``path`` (absolute, or relative to the data root):
    ``train/<class>/**/<image>`` and ``test/<class>/**/<image>`` (or ``val/`` when there is
    no ``test/``), read by ``_read_tree``."""
    if path is None:
        raise ConfigError(
            "dataset 'imagefolder' needs the option 'path': the folder holding train/ and test/"
        )
    base = root / path.expanduser()  # an absolute path replaces root
    how = f"Put the images in {base}/train/<class>/ and {base}/test/<class>/ (or val/)."
    train_dir = require(base / "train", "imagefolder", how)
    test_dir = (
        base / "test" if (base / "test").is_dir() else require(base / "val", "imagefolder", how)
    )
    classes, train, test = _read_tree("imagefolder", train_dir, test_dir)
    transforms = large_image_transforms(image_size, train_crop, crop_scale, crop_ratio)
    return _file_splits(splitter, train, test, classes, image_size, transforms, root, prepared)


def _read_tree(
    dataset: str, train_dir: Path, test_dir: Path
) -> tuple[list[str], tuple[list[Path], list[int]], tuple[list[Path], list[int]]]:
    """Classes and (paths, labels) of the train and test splits of an ImageFolder tree.
    Classes are the sorted folder names under ``train_dir``; images are files with a common
    image extension. Hidden entries (names starting with '.', such as
    ``.ipynb_checkpoints`` or macOS's ``._*`` files) are skipped, as file browsers do; a
    class without test images is warned about (its test accuracy cannot be measured)."""
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not _hidden(d.name))
    unknown = sorted({d.name for d in test_dir.iterdir() if d.is_dir() and not _hidden(d.name)} - set(classes))
    if unknown:
        raise DataError(
            f"{dataset}: {test_dir} has classes that {train_dir} lacks: {', '.join(unknown)}"
        )

    def split(folder: Path) -> tuple[list[Path], list[int]]:
        paths, labels, empty = [], [], []
        for label, name in enumerate(classes):
            files = sorted(
                f
                for f in (folder / name).rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(_hidden(part) for part in f.relative_to(folder / name).parts)
                and f.is_file()
            )
            if folder == train_dir and not files:
                raise DataError(f"{dataset}: no images in {folder / name}")
            if not files:
                empty.append(name)
            paths += files
            labels += [label] * len(files)
        if empty:
            warnings.warn(
                f"{dataset}: {folder} has no images of {len(empty)} class(es): {', '.join(empty)}; "
                "their test accuracy cannot be measured",
                stacklevel=3,
            )
        return paths, labels

    return classes, split(train_dir), split(test_dir)


def _hidden(name: str) -> bool:
    """A hidden file or folder (``.ipynb_checkpoints``, ``.DS_Store``, ``._image.jpg``)."""
    return name.startswith(".")
