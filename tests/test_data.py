"""kdbench.data: the built-in sets, and every real loader on a miniature copy of its
official on-disk layout written here (3 classes × 3 train + 2 test images each)."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from pydantic import PositiveInt

from kdbench.data import (
    DATASETS,
    DatasetOptions,
    DataSplits,
    Splitter,
    TensorImageDataset,
    create_dataset,
    dataset_options,
    list_datasets,
    register_dataset,
    resolve_data_root,
)
from kdbench.data.transforms import HALF, padded_crop_transforms
from kdbench.errors import ConfigError, DataError, UnknownNameError

SIZE = 16  # the image_size option given to the 224-px sets
VAL = 1 / 3  # with 3 train images per class: exactly one per class goes to val


def write_image(path: Path, shade: int, size: tuple[int, int] = (14, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, 255 - shade, 80)).save(path)


def write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def cell_array(strings: list[str]) -> np.ndarray:
    cells = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cells[i, 0] = s
    return cells


@dataclass
class Layout:
    """A miniature set on disk and what the loader must find in it."""

    options: dict
    classes: list[str]
    train: dict[str, int]  # file name -> label, official train split
    test: dict[str, int]
    input_size: int
    folder: str  # the official folder the loader looks for, named by its missing-set error
    corrupt: Callable[[Path], None]  # breaks one split file
    error: str  # what that error must say (file, and line where there are lines)


# Three classes per set; class c has train images 0..2 and test images 3..4.
def per_class(make_name: Callable[[int, int], str]) -> tuple[dict[str, int], dict[str, int]]:
    train = {make_name(c, i): c for c in range(3) for i in range(3)}
    test = {make_name(c, i): c for c in range(3) for i in range(3, 5)}
    return train, test


def cifar100_layout(root: Path) -> Layout:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for split, n in (("train", 9), ("test", 6)):
        labels = [i % 3 for i in range(n)]
        data = np.stack([np.full(3072, 10 * i, dtype=np.uint8) for i in range(n)])
        batch = {
            "data": data,
            "fine_labels": labels,
            "coarse_labels": labels,
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": split,
        }
        (base / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        "fine_label_names": ["apple", "aquarium_fish", "baby"],
        "coarse_label_names": ["x", "y", "z"],
    }
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Layout(
        options={},
        classes=["apple", "aquarium_fish", "baby"],
        train={f"#{i}": i % 3 for i in range(9)},  # tensor sets have no files: item positions
        test={f"#{i}": i % 3 for i in range(6)},
        input_size=32,
        folder="cifar-100-python",
        corrupt=lambda root: (root / "cifar-100-python" / "test").write_bytes(b"not a pickle"),
        error="cifar-100-python/test",
    )


WNIDS = ["n02085620", "n01443537", "n01629819"]  # wnids.txt order; classes are sorted


def tiny_imagenet_layout(root: Path) -> Layout:
    base = root / "tiny-imagenet-200"
    write_text(base / "wnids.txt", WNIDS)
    write_text(
        base / "words.txt",
        [
            "n00001740\tentity",
            "n01443537\tgoldfish, Carassius auratus",
            "n01629819\tEuropean fire salamander, Salamandra salamandra",
            "n02085620\tChihuahua",
        ],
    )
    sorted_wnids = sorted(WNIDS)
    annotations = []
    for c, w in enumerate(sorted_wnids):
        for i in range(3):
            write_image(base / "train" / w / "images" / f"{w}_{i}.JPEG", 40 * c, (64, 64))
        write_text(
            base / "train" / w / f"{w}_boxes.txt", [f"{w}_{i}.JPEG\t0\t0\t63\t63" for i in range(3)]
        )
        for i in range(2):
            name = f"val_{2 * c + i}.JPEG"
            write_image(base / "val" / "images" / name, 40 * c, (64, 64))
            annotations.append(f"{name}\t{w}\t0\t3\t60\t62")
    write_text(base / "val" / "val_annotations.txt", annotations)
    return Layout(
        options={},
        classes=["goldfish", "European fire salamander", "Chihuahua"],
        train={f"{w}_{i}.JPEG": c for c, w in enumerate(sorted_wnids) for i in range(3)},
        test={f"val_{2 * c + i}.JPEG": c for c in range(3) for i in range(2)},
        input_size=64,
        folder="tiny-imagenet-200",
        corrupt=lambda root: append_line(
            root / "tiny-imagenet-200/val/val_annotations.txt", "val_6.JPEG\tn01443537"
        ),
        error="val_annotations.txt, line 7",
    )


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def cub200_layout(root: Path) -> Layout:
    base = root / "CUB_200_2011"
    train, test = per_class(lambda c, i: f"{CUB_CLASSES[c][4:]}_{i:04d}.jpg")
    images, labels, split = [], [], []
    for image_id, (name, c) in enumerate([*train.items(), *test.items()], 1):
        write_image(base / "images" / CUB_CLASSES[c] / name, 40 * c)
        images.append(f"{image_id} {CUB_CLASSES[c]}/{name}")
        labels.append(f"{image_id} {c + 1}")
        split.append(f"{image_id} {int(name in train)}")
    write_text(base / "classes.txt", [f"{i} {n}" for i, n in enumerate(CUB_CLASSES, 1)])
    write_text(base / "images.txt", images)
    write_text(base / "image_class_labels.txt", labels)
    write_text(base / "train_test_split.txt", split)
    return Layout(
        options={"image_size": SIZE},
        classes=["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"],
        train=train,
        test=test,
        input_size=SIZE,
        folder="CUB_200_2011",
        corrupt=lambda root: append_line(root / "CUB_200_2011/train_test_split.txt", "16 train"),
        error="train_test_split.txt, line 16",
    )


DOG_CLASSES = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def stanford_dogs_layout(root: Path) -> Layout:
    base = root / "StanfordDogs"
    train, test = per_class(lambda c, i: f"{DOG_CLASSES[c][:9]}_{i}.jpg")
    for split, files in (("train", train), ("test", test)):
        paths = [f"{DOG_CLASSES[c]}/{name}" for name, c in files.items()]
        for path, c in zip(paths, files.values()):
            write_image(base / "Images" / path, 40 * c)
        savemat(
            base / f"{split}_list.mat",
            {
                "file_list": cell_array(paths),
                "annotation_list": cell_array([p[:-4] for p in paths]),
                "labels": np.array([[c + 1] for c in files.values()], dtype=float),
            },
        )
    return Layout(
        options={"image_size": SIZE},
        classes=["Chihuahua", "Japanese_spaniel", "Maltese_dog"],
        train=train,
        test=test,
        input_size=SIZE,
        folder="StanfordDogs",
        corrupt=lambda root: (root / "StanfordDogs/test_list.mat").write_bytes(b"MATLAB? no"),
        error="StanfordDogs/test_list.mat",
    )


MIT_CLASSES = ["airport_inside", "bakery", "kitchen"]


def mit67_layout(root: Path) -> Layout:
    base = root / "Indoor67"
    train, test = per_class(lambda c, i: f"{MIT_CLASSES[c][:3]}{i}.jpg")
    for listing, files in (("TrainImages.txt", train), ("TestImages.txt", test)):
        for name, c in files.items():
            write_image(base / "Images" / MIT_CLASSES[c] / name, 40 * c)
        write_text(base / listing, [f"{MIT_CLASSES[c]}/{name}" for name, c in files.items()])
    return Layout(
        options={"image_size": SIZE},
        classes=MIT_CLASSES,
        train=train,
        test=test,
        input_size=SIZE,
        folder="Indoor67",
        corrupt=lambda root: append_line(
            root / "Indoor67/TrainImages.txt", "kitchen_without_slash.jpg"
        ),
        error="TrainImages.txt, line 10",
    )


ACTIONS = ["applauding", "blowing_bubbles", "brushing_teeth"]


def stanford40_layout(root: Path) -> Layout:
    base = root / "Stanford40"
    train, test = per_class(lambda c, i: f"{ACTIONS[c]}_{i + 1:03d}.jpg")
    for split, files in (("train", train), ("test", test)):
        for c, action in enumerate(ACTIONS):
            names = [name for name, label in files.items() if label == c]
            for name in names:
                write_image(base / "JPEGImages" / name, 40 * c)
            write_text(base / "ImageSplits" / f"{action}_{split}.txt", names)
        write_text(base / "ImageSplits" / f"{split}.txt", list(files))
    write_text(
        base / "ImageSplits" / "actions.txt",
        ["action_name\tnumber_of_images", *(f"{a}\t5" for a in ACTIONS)],
    )
    return Layout(
        options={"image_size": SIZE},
        classes=ACTIONS,
        train=train,
        test=test,
        input_size=SIZE,
        folder="Stanford40",
        corrupt=lambda root: append_line(
            root / "Stanford40/ImageSplits/blowing_bubbles_test.txt", "not an image.png"
        ),
        error="blowing_bubbles_test.txt, line 3",
    )


VARIANTS = ["707-320", "Boeing 717", "A300B4"]


def fgvc_aircraft_layout(root: Path) -> Layout:
    base = root / "fgvc-aircraft-2013b" / "data"
    train, test = per_class(lambda c, i: f"{1000000 + 10 * c + i:07d}.jpg")
    for split, files in (("trainval", train), ("test", test)):
        for name, c in files.items():
            write_image(base / "images" / name, 40 * c)
        write_text(
            base / f"images_variant_{split}.txt",
            [f"{name[:-4]} {VARIANTS[c]}" for name, c in files.items()],
        )
    write_text(base / "variants.txt", VARIANTS)
    return Layout(
        options={"image_size": SIZE},
        classes=VARIANTS,
        train=train,
        test=test,
        input_size=SIZE,
        folder="fgvc-aircraft-2013b/data",
        corrupt=lambda root: append_line(
            root / "fgvc-aircraft-2013b/data/images_variant_test.txt", "1234567 Concorde"
        ),
        error="images_variant_test.txt, line 7",
    )


def flowers102_layout(root: Path) -> Layout:
    base = root / "flowers-102"
    # Images 1..15: class (k-1) % 3; trnid 1..6, valid 7..9 (both train), tstid 10..15.
    labels = [(k - 1) % 3 + 1 for k in range(1, 16)]
    for k, label in enumerate(labels, 1):
        write_image(base / "jpg" / f"image_{k:05d}.jpg", 40 * label)
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    ids = {"trnid": range(1, 7), "valid": range(7, 10), "tstid": range(10, 16)}
    savemat(base / "setid.mat", {k: np.array([list(v)], dtype=np.uint16) for k, v in ids.items()})
    return Layout(
        options={"image_size": SIZE},
        classes=["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
        train={f"image_{k:05d}.jpg": labels[k - 1] - 1 for k in range(1, 10)},
        test={f"image_{k:05d}.jpg": labels[k - 1] - 1 for k in range(10, 16)},
        input_size=SIZE,
        folder="flowers-102",
        corrupt=lambda root: savemat(root / "flowers-102/setid.mat", {"trnid": np.array([[1]])}),
        error="setid.mat has no variable valid, tstid",
    )


def imagefolder_layout(root: Path) -> Layout:
    base = root / "myset"
    train, test = per_class(lambda c, i: f"{'abc'[c]}{i}.png")
    for split, files in (("train", train), ("val", test)):  # val/ stands in for test/
        for name, c in files.items():
            write_image(base / split / f"class_{'abc'[c]}" / name, 40 * c)
    return Layout(
        options={"path": "myset", "image_size": SIZE},
        classes=["class_a", "class_b", "class_c"],
        train=train,
        test=test,
        input_size=SIZE,
        folder="myset",
        corrupt=lambda root: write_image(root / "myset/val/class_d/d0.png", 0),
        error="myset/val has classes that",
    )


LAYOUTS = {
    "cifar100": cifar100_layout,
    "tiny-imagenet": tiny_imagenet_layout,
    "cub200": cub200_layout,
    "stanford-dogs": stanford_dogs_layout,
    "mit67": mit67_layout,
    "stanford40": stanford40_layout,
    "fgvc-aircraft": fgvc_aircraft_layout,
    "flowers102": flowers102_layout,
    "imagefolder": imagefolder_layout,
}


def labelled_items(split) -> dict[str, int]:
    """File name (or '#position' for in-memory sets) -> label of every item of a split."""
    positions = split.indices.tolist()
    names = (
        [p.name for p in split.paths] if hasattr(split, "paths") else [f"#{j}" for j in positions]
    )
    return dict(zip(names, split.labels.tolist()))


def test_every_registered_set_has_a_test() -> None:
    assert set(list_datasets()) == {*LAYOUTS, "digits", "synthetic-fg", "glyphs", "accents"}


@pytest.mark.parametrize("name", LAYOUTS)
def test_real_loader_reads_its_layout(name: str, tmp_path: Path) -> None:
    layout = LAYOUTS[name](tmp_path)
    splits = create_dataset(name, tmp_path, seed=0, val_fraction=VAL, **layout.options)

    assert splits.name == name
    assert splits.classes == layout.classes and splits.num_classes == 3
    assert splits.input_size == layout.input_size
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 6)
    # The val split is carved from the official train split: together they are all of it,
    # with no item in both, and one item per class (stratified).
    train_items, val_items = labelled_items(splits.train), labelled_items(splits.val)
    assert not train_items.keys() & val_items.keys()
    assert {**train_items, **val_items} == layout.train
    assert sorted(val_items.values()) == [0, 1, 2]
    assert labelled_items(splits.test) == layout.test
    assert torch.equal(splits.train_labels, torch.tensor([splits.train[i][1] for i in range(6)]))
    assert splits.train_labels.dtype == torch.int64
    for split in (splits.train, splits.val, splits.test):
        image, label = split[0]
        assert (
            image.shape == (3, layout.input_size, layout.input_size)
            and image.dtype == torch.float32
        )
        assert isinstance(label, int)


@pytest.mark.parametrize("name", LAYOUTS)
def test_missing_set_says_where_it_looked(name: str, tmp_path: Path) -> None:
    options = LAYOUTS[name](tmp_path / "elsewhere").options
    root = tmp_path / "empty"
    with pytest.raises(DataError) as error:
        create_dataset(name, root, **options)
    message = str(error.value)
    assert str(root / LAYOUTS[name](tmp_path / name).folder) in message
    assert "KDBENCH_DATA" in message


@pytest.mark.parametrize("name", LAYOUTS)
def test_malformed_split_file_is_named(name: str, tmp_path: Path) -> None:
    layout = LAYOUTS[name](tmp_path)
    layout.corrupt(tmp_path)
    with pytest.raises(DataError, match=layout.error.replace(".", r"\.")):
        create_dataset(name, tmp_path, **layout.options)


def test_cifar100_keeps_pixels_and_normalises(tmp_path: Path) -> None:
    cifar100_layout(tmp_path)
    splits = create_dataset("cifar100", tmp_path, augment=False)
    image, label = splits.test[5]  # written as all pixels 50, label 2
    mean = torch.tensor([0.5071, 0.4867, 0.4408])[:, None, None]
    std = torch.tensor([0.2675, 0.2565, 0.2761])[:, None, None]
    assert label == 2
    assert torch.allclose(image, (50 / 255 - mean) / std * torch.ones(3, 32, 32))


def test_corrupt_image_names_its_path(tmp_path: Path) -> None:
    cub200_layout(tmp_path)
    broken = tmp_path / "CUB_200_2011/images/002.Laysan_Albatross/Laysan_Albatross_0003.jpg"
    broken.write_bytes(b"\xff\xd8 garbage, not a JPEG")
    splits = create_dataset("cub200", tmp_path, image_size=SIZE)
    position = [p.name for p in splits.test.paths].index(broken.name)
    with pytest.raises(DataError, match="cannot read image") as error:
        splits.test[position]
    assert str(broken) in str(error.value)


def test_listed_image_missing_from_disk(tmp_path: Path) -> None:
    mit67_layout(tmp_path)
    (tmp_path / "Indoor67/Images/kitchen/kit4.jpg").unlink()
    with pytest.raises(
        DataError, match=r"1 image\(s\) listed in .*TestImages\.txt are missing.*kit4\.jpg"
    ):
        create_dataset("mit67", tmp_path)


def test_imagefolder_needs_a_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the option 'path'"):
        create_dataset("imagefolder", tmp_path)


def test_data_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("KDBENCH_DATA")
    assert resolve_data_root(None) == Path.home() / ".cache" / "kdbench" / "data"


def test_data_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mit67_layout(tmp_path)
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    assert len(create_dataset("mit67", image_size=SIZE).test) == 6


def test_unknown_option_is_named_with_a_suggestion() -> None:
    with pytest.raises(
        ConfigError,
        match=r"dataset 'digits' has no option 'image_sise' \(its options: image_size\); did you mean 'image_size'\?",
    ):
        create_dataset("digits", image_sise=16)


def test_option_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match="dataset 'synthetic-fg' option 'num_groups'"):
        create_dataset("synthetic-fg", num_groups=0)


def test_an_item_of_an_option_names_the_option_and_the_value_given() -> None:
    with pytest.raises(ConfigError) as info:
        dataset_options("cub200", {"crop_ratio": [1.0]})
    assert str(info.value) == "dataset 'cub200' option 'crop_ratio': Field required (got [1.0])"


def test_options_are_recorded_whole_in_their_model_order() -> None:
    # what a run spec records for the set, so the run ids of imagefolder runs: path first
    options = dataset_options("imagefolder", {"prepared": "yes", "path": Path("trees/birds")})
    assert list(options.items()) == [
        ("path", "trees/birds"),
        ("image_size", 224),
        ("train_crop", "resize_crop"),
        ("crop_scale", [0.08, 1.0]),
        ("crop_ratio", [0.75, 4 / 3]),
        ("prepared", True),
    ]


class CheckerOptions(DatasetOptions):
    side: PositiveInt = 4


def checker(root: Path, splitter: Splitter, options: CheckerOptions) -> DataSplits:
    """Two classes of options.side-px images, all black or all white, four of each split."""
    labels = torch.tensor([0, 1] * 4)
    images = (labels * 255).to(torch.uint8)[:, None, None, None].expand(-1, 3, options.side, options.side)
    data = TensorImageDataset(images.contiguous(), labels)
    transforms = padded_crop_transforms(options.side, 0, flip=False, mean=HALF, std=HALF)
    return splitter.make(data, data, ["black", "white"], options.side, transforms)


@pytest.fixture
def registry_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sets registered by a test are forgotten after it."""
    list_datasets()  # the built-in sets registered first
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))


def test_a_registered_set_gets_its_options_validated(registry_copy: None) -> None:
    register_dataset("checker", CheckerOptions)(checker)
    splits = create_dataset("checker", side="6", val_fraction=0.25)
    assert splits.input_size == 6 and splits.test[1][0].shape == (3, 6, 6)
    assert splits.test[1][0].min().item() == 1.0  # white, normalised by HALF
    assert dataset_options("checker", {}) == {"side": 4}
    with pytest.raises(ConfigError, match=r"dataset 'checker' has no option 'size' \(its options: side\)"):
        create_dataset("checker", size=6)


def test_a_second_loader_under_a_taken_name_is_refused(registry_copy: None) -> None:
    with pytest.raises(ValueError, match=r"dataset 'digits' is registered twice: by kdbench\.data\.synthetic\.digits "
                                         r"and by test_data\.checker"):
        register_dataset("digits", CheckerOptions)(checker)


def test_a_set_without_options_takes_none() -> None:
    assert dataset_options("cifar100", {}) == {}


def test_val_fraction_out_of_range() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        create_dataset("digits", val_fraction=1.0)


def test_unknown_dataset_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="unknown dataset 'digit'; did you mean 'digits'"):
        create_dataset("digit")


def item_indices(splits: DataSplits) -> tuple[list[int], list[int], list[int]]:
    return splits.train.indices.tolist(), splits.val.indices.tolist(), splits.test.indices.tolist()


def test_digits() -> None:
    splits = create_dataset("digits", seed=0)
    assert (splits.num_classes, splits.input_size, splits.classes[3]) == (10, 32, "3")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        1294,
        144,
        359,
    )  # 20% test, 10% val
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 10
    assert -1 <= image.min() and image.max() <= 1

    train, val, test = item_indices(splits)
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(test)
    assert torch.equal(
        splits.train_labels, torch.tensor([splits.train[i][1] for i in range(len(train))])
    )
    # Stratified: every class gives about 10% of its train images to val.
    val_counts = torch.bincount(splits.val.labels, minlength=10)
    pool_counts = val_counts + torch.bincount(splits.train_labels, minlength=10)
    assert ((val_counts - 0.1 * pool_counts).abs() <= 1).all()

    again, other = create_dataset("digits", seed=0), create_dataset("digits", seed=1)
    assert item_indices(again) == (train, val, test)
    assert item_indices(other)[1] != val and item_indices(other)[2] == test  # test split fixed

    small = create_dataset("digits", image_size=16)
    assert small.train[0][0].shape == (3, 16, 16) and small.input_size == 16


def test_augment_flag() -> None:
    plain = create_dataset("digits", augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    augmented = create_dataset("digits", augment=True)
    torch.manual_seed(0)
    draws = [augmented.train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(augmented.val[0][0], plain.val[0][0])  # val never augmented


FG = {"num_groups": 3, "classes_per_group": 4, "train_per_class": 10, "test_per_class": 5}


def test_synthetic_fg_shapes_and_splits() -> None:
    splits = create_dataset("synthetic-fg", seed=0, val_fraction=0.2, **FG)
    assert (splits.num_classes, splits.input_size) == (12, 32)
    assert splits.classes[:5] == [
        "group0-class0",
        "group0-class1",
        "group0-class2",
        "group0-class3",
        "group1-class0",
    ]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (96, 24, 60)
    assert torch.bincount(splits.val.labels).tolist() == [2] * 12
    train, val, _ = item_indices(splits)
    assert not set(train) & set(val)
    assert torch.equal(
        splits.train_labels, torch.tensor([splits.train[i][1] for i in range(len(train))])
    )
    assert splits.train[0][0].shape == (3, 32, 32)
    assert create_dataset("synthetic-fg", image_size=20, **FG).test[0][0].shape == (3, 20, 20)


def test_synthetic_fg_is_deterministic_from_data_seed() -> None:
    first = create_dataset("synthetic-fg", seed=0, **FG)
    same_data = create_dataset("synthetic-fg", seed=1, **FG)  # another training seed
    assert torch.equal(first.train.images, same_data.train.images)
    assert torch.equal(first.test.images, same_data.test.images)
    assert item_indices(first)[1] != item_indices(same_data)[1]  # only the val split moves
    assert item_indices(create_dataset("synthetic-fg", seed=0, **FG)) == item_indices(first)
    other = create_dataset("synthetic-fg", data_seed=1, **FG)
    assert not torch.equal(first.train.images, other.train.images)
    # More test images leave the train images unchanged (separate random streams).
    more_test = create_dataset("synthetic-fg", **{**FG, "test_per_class": 7})
    assert torch.equal(first.train.images, more_test.train.images)


def test_synthetic_fg_groups_look_alike() -> None:
    splits = create_dataset("synthetic-fg", **{**FG, "test_per_class": 20})
    images, labels = splits.test.images.float(), splits.test.labels
    means = torch.stack([images[labels == c].mean(0).flatten() for c in range(12)])
    distance = torch.cdist(means, means)
    group = torch.arange(12) // 4
    same_group = (group[:, None] == group[None, :]) & ~torch.eye(12, dtype=torch.bool)
    other_group = group[:, None] != group[None, :]
    assert distance[same_group].max() < distance[other_group].min()


def test_batch_crop_matches_the_per_image_transforms():
    from kdbench.data.transforms import padded_crop_transforms

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    transforms = padded_crop_transforms(8, 2, flip=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    plain = transforms.batch(images, augment=False)
    for i in range(len(images)):  # without augmentation: exactly the eval transform
        assert torch.allclose(plain[i], transforms.eval(images[i]), atol=1e-6)
    out = transforms.batch(images)
    mean, std = torch.tensor((0.5, 0.4, 0.3))[:, None, None], torch.tensor((0.2, 0.25, 0.3))[:, None, None]
    padded = torch.nn.functional.pad(images.float() / 255, [2] * 4)
    offsets = set()
    for i in range(len(images)):  # every image is some padded crop, possibly mirrored
        crops = {(t, l, f): padded[i, :, t:t + 8, l:l + 8].flip(-1) if f else padded[i, :, t:t + 8, l:l + 8]
                 for t in range(5) for l in range(5) for f in (False, True)}
        found = [key for key, crop in crops.items() if torch.allclose(out[i], (crop - mean) / std, atol=1e-5)]
        assert found, i
        offsets.add(found[0])
    assert len(offsets) > 4  # each image draws its own crop and flip


GLYPHS = {"num_groups": 3, "classes_per_group": 4, "glyph_size": 4, "detail_pixels": 2, "train_per_class": 10,
          "test_per_class": 5, "image_size": 8}


def test_glyphs_shapes_splits_and_determinism() -> None:
    splits = create_dataset("glyphs", seed=0, val_fraction=0.2, **GLYPHS)
    assert (splits.num_classes, splits.input_size) == (12, 8)
    assert splits.classes[:5] == ["group0-variant0", "group0-variant1", "group0-variant2", "group0-variant3",
                                  "group1-variant0"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (96, 24, 60)
    assert torch.bincount(splits.val.labels).tolist() == [2] * 12
    assert splits.train[0][0].shape == (3, 8, 8)
    same_data = create_dataset("glyphs", seed=1, **GLYPHS)  # another training seed: same images
    assert torch.equal(splits.train.images, same_data.train.images)
    assert torch.equal(splits.test.images, same_data.test.images)
    more_test = create_dataset("glyphs", **{**GLYPHS, "test_per_class": 7})
    assert torch.equal(splits.train.images, more_test.train.images)
    assert not torch.equal(splits.train.images, create_dataset("glyphs", data_seed=1, **GLYPHS).train.images)


def test_glyphs_bytes_are_pinned() -> None:
    """The images' bytes, as this file's hash: the rendering uses no transcendental function,
    so every machine (and a later torch) must make these very bytes."""
    splits = create_dataset("glyphs", **GLYPHS)
    pixels = splits.train.images.numpy().tobytes() + splits.test.images.numpy().tobytes()
    assert hashlib.sha256(pixels).hexdigest() == "570b61eb93e6b68f414fa40636993d9efbd0729e824b902e9fc2050d26732058"


def _ink(image: torch.Tensor) -> torch.Tensor:
    """Bool mask of the pixels that differ from the image's background (noise and clutter off)."""
    flat = image.flatten(1)
    values, counts = flat.unique(dim=1, return_counts=True)
    background = values[:, counts.argmax()]
    return (image != background[:, None, None]).any(0)


def _hamming_up_to_shift(a: torch.Tensor, b: torch.Tensor) -> int:
    """Fewest differing pixels between two ink masks over every translation of b."""
    size = a.shape[0]
    padded = torch.nn.functional.pad(b, [size] * 4)
    return min(int((a ^ padded[y:y + size, x:x + size]).sum()) for y in range(2 * size + 1) for x in range(2 * size + 1))


def test_glyphs_variants_of_a_group_differ_in_their_detail_cells_only() -> None:
    clean = {**GLYPHS, "noise": 0.0, "clutter_pixels": 0, "test_per_class": 2}
    test = create_dataset("glyphs", **clean).test
    ink = {c: [_ink(test.images[i]) for i in (test.labels == c).nonzero().flatten().tolist()] for c in range(12)}
    for c in range(12):  # the same glyph in every image of a class, wherever it lands
        assert _hamming_up_to_shift(ink[c][0], ink[c][1]) == 0
    for c in range(4):  # the four variants of group 0: 2 + 2 flipped cells apart
        for d in range(c + 1, 4):
            assert _hamming_up_to_shift(ink[c][0], ink[d][0]) == 4
    paper = {c: test.images[i, :, 0, 0] for c in range(12) for i in [int((test.labels == c).nonzero()[0])]}
    assert not torch.equal(paper[0], paper[4])  # groups differ in colour


def test_glyphs_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="glyph_size 4 has 16"):
        create_dataset("glyphs", **{**GLYPHS, "classes_per_group": 9})
    with pytest.raises(ConfigError, match="exceeds image_size"):
        create_dataset("glyphs", **{**GLYPHS, "glyph_size": 9})


ACCENTS = {"letters": "ae", "variants_per_letter": 4, "train_per_class": 10, "test_per_class": 5, "image_size": 8}


def test_accents_classes_are_a_letter_and_its_accented_forms() -> None:
    splits = create_dataset("accents", seed=0, val_fraction=0.2, **ACCENTS)
    assert splits.classes == ["a", "à", "á", "â", "e", "è", "é", "ê"]  # by code point, the letter first
    assert (splits.num_classes, splits.input_size) == (8, 8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (64, 16, 40)
    assert splits.train[0][0].shape == (3, 8, 8)
    every_e = create_dataset("accents", **{**ACCENTS, "letters": "e", "variants_per_letter": 99}).classes
    assert "".join(every_e) == "eèéêëēĕėęě"


def test_accents_are_deterministic_from_data_seed() -> None:
    splits = create_dataset("accents", seed=0, **ACCENTS)
    same_data = create_dataset("accents", seed=1, **ACCENTS)  # another training seed: same images
    assert torch.equal(splits.train.official().images, same_data.train.official().images)
    assert torch.equal(splits.test.images, same_data.test.images)
    more_test = create_dataset("accents", **{**ACCENTS, "test_per_class": 7})
    assert torch.equal(splits.train.official().images, more_test.train.official().images)
    assert not torch.equal(splits.test.images, create_dataset("accents", data_seed=1, **ACCENTS).test.images)


def test_accents_bytes_are_pinned() -> None:
    """The images' bytes, as this file's hash, for the FreeType that matplotlib bundles: the
    sampling is exact arithmetic and the rotation's cosines are rounded far below a pixel's
    step, so every machine must make these bytes."""
    from matplotlib import ft2font

    if ft2font.__freetype_version__ != "2.14.3":
        pytest.skip(f"the hash was taken with matplotlib's FreeType 2.14.3, not {ft2font.__freetype_version__}")
    splits = create_dataset("accents", **ACCENTS)
    pixels = splits.train.official().images.numpy().tobytes() + splits.test.images.numpy().tobytes()
    assert hashlib.sha256(pixels).hexdigest() == "39f7c99578b9c5c5e8d8a8084086b7d7dae514f88929c321892063524890832e"


def test_accents_sampling_is_bilinear_with_a_zero_border() -> None:
    """Against torch's grid_sample (align_corners False: pixel centres at half-integers)."""
    from kdbench.data.accents import _bilinear

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 10, 12, generator=generator, dtype=torch.float64)
    x = torch.rand(3, 7, 9, generator=generator, dtype=torch.float64) * 18 - 3  # some beyond every edge
    y = torch.rand(3, 7, 9, generator=generator, dtype=torch.float64) * 16 - 3
    grid = torch.stack([(x + 0.5) / 12 * 2 - 1, (y + 0.5) / 10 * 2 - 1], -1)
    expected = torch.nn.functional.grid_sample(images[:, None], grid, align_corners=False)[:, 0]
    torch.testing.assert_close(_bilinear(images, x, y), expected, rtol=0, atol=1e-12)


def test_accented_forms_look_like_their_letter() -> None:
    """Over the faces, a letter's accented forms are nearer its bare form than any other
    letter's forms are (the groups look alike, the diacritic is the detail)."""
    from kdbench.data.accents import _classes, _templates

    classes = _classes("aeo", 3)
    templates = torch.from_numpy(_templates(tuple(classes)))  # classes × faces × 48 × 48
    distance = (templates[:, None] - templates[None]).abs().sum((-1, -2)).mean(-1)  # mean L1 over the faces
    for c in range(len(classes)):
        own, others = distance[c, c // 3 * 3], [distance[c, g * 3] for g in range(3) if g != c // 3]
        assert own < min(others), classes[c]


def test_accents_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="option 'letters': 'b' is not a base letter with accented forms"):
        create_dataset("accents", **{**ACCENTS, "letters": "ab"})
    with pytest.raises(ConfigError, match="'a' .* or is repeated"):
        create_dataset("accents", **{**ACCENTS, "letters": "aa"})
