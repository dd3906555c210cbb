"""Image folders: the ``imagefolder`` set (any ImageFolder tree), the ImageFolder trees the
fine-grained KD repositories train from (``REPOSITORY_TREES``, read by ``fine_grained``
where a set's official split files are absent), and the splits of a 224-px set given its
(paths, labels) per official split (``file_splits``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError, DataError
from . import register_dataset
from .datasets import DataSplits, ImageFileDataset
from .options import ImageFolderOptions, LargeImageOptions
from .prepared import prepared_splits
from .split_files import require
from .splitting import Splitter
from .transforms import large_image_transforms

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def file_splits(
    splitter: Splitter,
    train: tuple[list[Path], list[int]],
    test: tuple[list[Path], list[int]],
    classes: Sequence[str],
    options: LargeImageOptions,
    root: Path,
) -> DataSplits:
    """Splits of a 224-px set given its (paths, labels) per official split, under the
    transforms its options name; with ``prepared``, read from the set's prepared store
    (``kdbench.data.prepared``), made first if missing."""
    transforms = large_image_transforms(options)
    train_set, test_set = ImageFileDataset(*train), ImageFileDataset(*test)
    if options.prepared:
        train_set, test_set = prepared_splits(splitter.name, root, train_set, test_set, options.image_size)
    return splitter.make(train_set, test_set, classes, options.image_size, transforms)


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


def tree_note(dataset: str) -> str:
    """How the ``how`` of a missing fine-grained set names the repositories' trees it also reads."""
    names = "|".join(REPOSITORY_TREES[dataset])
    return f"Or give it as an ImageFolder tree <data root>/<{names}>/{{train,valid or test}}/<class>/."


def repository_tree(root: Path, dataset: str) -> tuple[Path, Path] | None:
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


def tree_splits(
    dataset: str,
    splitter: Splitter,
    folders: tuple[Path, Path],
    class_name: Callable[[str], str],
    options: LargeImageOptions,
    root: Path,
) -> DataSplits:
    """Splits of a set read from a prepared (train, test) tree; its classes are the sorted
    folder names (ImageFolder's order), shown as ``class_name`` of the folder name."""
    folder_names, train, test = _read_tree(dataset, *folders)
    classes = [class_name(name) for name in folder_names]
    return file_splits(splitter, train, test, classes, options, root)


@register_dataset("imagefolder", ImageFolderOptions)
def imagefolder(root: Path, splitter: Splitter, options: ImageFolderOptions) -> DataSplits:
    """Any ImageFolder tree at option ``path`` (absolute, or relative to the data root):
    ``train/<class>/**/<image>`` and ``test/<class>/**/<image>`` (or ``val/`` when there is
    no ``test/``), read by ``_read_tree``."""
    if options.path is None:
        raise ConfigError(
            "dataset 'imagefolder' needs the option 'path': the folder holding train/ and test/"
        )
    base = root / options.path.expanduser()  # an absolute path replaces root
    how = f"Put the images in {base}/train/<class>/ and {base}/test/<class>/ (or val/)."
    train_dir = require(base / "train", "imagefolder", how)
    test_dir = (
        base / "test" if (base / "test").is_dir() else require(base / "val", "imagefolder", how)
    )
    classes, train, test = _read_tree("imagefolder", train_dir, test_dir)
    return file_splits(splitter, train, test, classes, options, root)


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
