"""The fine-grained protocol's pieces: the RandomResizedCrop training crop of the 224-px sets,
the ImageFolder trees of FRSKD / CS-KD / L2T-ww read as the four fine-grained sets, and SDD's
224-px CUB-200 models (CIFAR-zoo architectures with a 7×7 stride-2 stem)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from test_data import (
    ACTIONS,
    CUB_CLASSES,
    DOG_CLASSES,
    LAYOUTS,
    MIT_CLASSES,
    SIZE,
    VAL,
    Layout,
    labelled_items,
    write_image,
)
from torch import Tensor

import kdbench
from kdbench.data import create_dataset, dataset_options, list_datasets
from kdbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdbench.errors import ConfigError, DataError
from kdbench.models import create_model

LARGE_IMAGE_SETS = [n for n in list_datasets() if dataset_options(n, {}).get("image_size") == 224]


def test_the_224_px_sets_are_the_expected_ones() -> None:
    assert set(LARGE_IMAGE_SETS) == {
        "cub200", "stanford-dogs", "mit67", "stanford40", "fgvc-aircraft", "flowers102", "imagefolder"
    }


@pytest.mark.parametrize("name", LARGE_IMAGE_SETS)
def test_every_224_px_set_has_the_crop_options_at_their_defaults(name: str) -> None:
    options = dataset_options(name, {})
    assert options["train_crop"] == "resize_crop"
    assert options["crop_scale"] == [0.08, 1.0]
    assert options["crop_ratio"] == [0.75, 1.3333333333333333]


def test_crop_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="option 'train_crop'"):
        dataset_options("cub200", {"train_crop": "random"})
    with pytest.raises(ConfigError, match="option 'crop_scale'.*low <= high"):
        dataset_options("cub200", {"crop_scale": [0.9, 0.1]})
    with pytest.raises(ConfigError, match="option 'crop_ratio'"):
        dataset_options("cub200", {"crop_ratio": [0.0, 1.0]})


def noisy_cub(root: Path, size: tuple[int, int]) -> Layout:
    """The miniature CUB layout of test_data with every image replaced by RGB noise of
    ``size`` (width, height), so that different crops give different pixels."""
    layout = LAYOUTS["cub200"](root)
    generator = torch.Generator().manual_seed(0)
    for path in sorted((root / "CUB_200_2011" / "images").rglob("*.jpg")):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(path, quality=95)
    return layout


def normalised(image: Image.Image) -> Tensor:
    """An RGB PIL image as the recipes end: float in [0, 1], ImageNet mean/std, C×H×W."""
    x = torch.as_tensor(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    x = x.permute(2, 0, 1).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def test_random_resized_crop_of_the_whole_area_is_the_image_resized(tmp_path: Path) -> None:
    # scale (1, 1) and the image's own aspect ratio leave one crop: the whole image.
    noisy_cub(tmp_path, (40, 30))
    splits = create_dataset(
        "cub200", tmp_path, val_fraction=VAL, image_size=SIZE,
        train_crop="random_resized", crop_scale=(1.0, 1.0), crop_ratio=(40 / 30, 40 / 30),
    )
    for i in range(len(splits.train)):
        with Image.open(splits.train.paths[i]) as image:
            expected = normalised(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
        got = splits.train[i][0]
        assert got.shape == (3, SIZE, SIZE)
        assert torch.allclose(got, expected, atol=1e-5) or torch.allclose(got, expected.flip(-1), atol=1e-5)


def test_random_resized_crop_takes_the_scale_as_a_fraction_of_the_area(tmp_path: Path) -> None:
    # scale ¼ at ratio 1 of a 40×40 image: a 20×20 window anywhere, resized to SIZE².
    noisy_cub(tmp_path, (40, 40))
    splits = create_dataset(
        "cub200", tmp_path, val_fraction=VAL, image_size=SIZE,
        train_crop="random_resized", crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0),
    )
    with Image.open(splits.train.paths[0]) as image:
        rgb = image.convert("RGB")
        windows = [
            normalised(rgb.crop((left, top, left + 20, top + 20)).resize((SIZE, SIZE), Image.BILINEAR))
            for top in range(21)
            for left in range(21)
        ]
    torch.manual_seed(0)
    for _ in range(4):
        got = splits.train[0][0]
        assert any(torch.allclose(got, w, atol=1e-5) or torch.allclose(got, w.flip(-1), atol=1e-5) for w in windows)


def test_the_training_crop_leaves_evaluation_unchanged(tmp_path: Path) -> None:
    noisy_cub(tmp_path, (40, 30))
    default = create_dataset("cub200", tmp_path, val_fraction=VAL, image_size=SIZE)
    random_resized = create_dataset(
        "cub200", tmp_path, val_fraction=VAL, image_size=SIZE, train_crop="random_resized"
    )
    for a, b in ((default.val, random_resized.val), (default.test, random_resized.test)):
        assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))


# The trees the fine-grained self-distillation repositories train from (see
# kdbench.data.folders.REPOSITORY_TREES for where each name comes from).
CLASS_FOLDERS = {
    "cub200": CUB_CLASSES,
    "stanford-dogs": DOG_CLASSES,
    "mit67": MIT_CLASSES,
    "stanford40": ACTIONS,
}
FRSKD_FOLDERS = {"cub200": "CUB_200_2011", "stanford-dogs": "dogs", "mit67": "mit67", "stanford40": "stanford40"}
CSKD_FOLDERS = {"cub200": "CUB200", "stanford-dogs": "STANFORD120", "mit67": "MIT67"}


def write_tree(base: Path, name: str, layout: Layout, test_folder: str) -> None:
    """``layout``'s images as ``base/train/<class folder>/`` and ``base/<test_folder>/…``."""
    for split, files in (("train", layout.train), (test_folder, layout.test)):
        for file, label in files.items():
            write_image(base / split / CLASS_FOLDERS[name][label] / file, 40 * label)


@pytest.mark.parametrize(
    ("name", "folder", "test_folder"),
    [
        *((name, folder, "valid") for name, folder in FRSKD_FOLDERS.items()),
        *((name, folder, "test") for name, folder in CSKD_FOLDERS.items()),
    ],
)
def test_a_prepared_tree_reads_as_the_official_layout(
    name: str, folder: str, test_folder: str, tmp_path: Path
) -> None:
    layout = LAYOUTS[name](tmp_path / "official")
    official = create_dataset(name, tmp_path / "official", val_fraction=VAL, **layout.options)
    write_tree(tmp_path / "prepared" / folder, name, layout, test_folder)
    tree = create_dataset(name, tmp_path / "prepared", val_fraction=VAL, **layout.options)

    assert tree.classes == official.classes == layout.classes
    assert (len(tree.train), len(tree.val), len(tree.test)) == (6, 3, 6)
    assert {**labelled_items(tree.train), **labelled_items(tree.val)} == layout.train
    assert labelled_items(tree.test) == layout.test  # valid/ (or test/) is the official test split
    assert sorted(labelled_items(tree.val).values()) == [0, 1, 2]
    # the same image under the same eval transform, wherever it was read from
    official_test = dict(zip([p.name for p in official.test.paths], range(len(official.test))))
    for i, path in enumerate(tree.test.paths):
        assert torch.equal(tree.test[i][0], official.test[official_test[path.name]][0])


def test_the_official_layout_wins_over_a_tree_beside_it(tmp_path: Path) -> None:
    # L2T-ww's cub200.py writes train/ and test/ inside CUB_200_2011/: the split files rule.
    layout = LAYOUTS["cub200"](tmp_path)
    write_image(tmp_path / "CUB_200_2011" / "train" / "only_class" / "x.jpg", 0)
    write_image(tmp_path / "CUB_200_2011" / "test" / "only_class" / "y.jpg", 0)
    splits = create_dataset("cub200", tmp_path, val_fraction=VAL, **layout.options)
    assert splits.classes == layout.classes


def test_a_tree_with_both_valid_and_test_is_refused(tmp_path: Path) -> None:
    layout = LAYOUTS["mit67"](tmp_path / "official")
    write_tree(tmp_path / "mit67", "mit67", layout, "valid")
    write_tree(tmp_path / "mit67", "mit67", layout, "test")
    with pytest.raises(DataError, match="has both valid/ and test/"):
        create_dataset("mit67", tmp_path, **layout.options)


@pytest.mark.parametrize("name", FRSKD_FOLDERS)
def test_a_missing_set_names_the_trees_it_also_reads(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ImageFolder tree .*\{train,valid or test\}"):
        create_dataset(name, tmp_path)


# SDD's CUB-200 models: (final feature map side at 224 px, plain model of the same layers).
# The sides follow from the strides: resnet x4 (stem 2, stages 1/2/2) 224/8 = 28;
# ResNet50 and ShuffleV1 (stem 2, three more stride-2 stages) 224/16 = 14; MobileNetV2
# (stem 2, max-pool 2, block groups 2/2/2) 224/32 = 7.
IMAGENET_STEM_MODELS = {
    "resnet8x4_imagenet_stem": (28, "resnet8x4"),
    "resnet32x4_imagenet_stem": (28, "resnet32x4"),
    "ResNet50_imagenet_stem": (14, "ResNet50"),
    "ShuffleV1_imagenet_stem": (14, "ShuffleV1"),
    "MobileNetV2_imagenet_stem": (7, "MobileNetV2"),
}


def test_the_imagenet_stem_models_are_registered() -> None:
    assert set(kdbench.list_models("*imagenet_stem")) == set(IMAGENET_STEM_MODELS)


@pytest.mark.parametrize("name", IMAGENET_STEM_MODELS)
def test_imagenet_stem_model_at_224_px(name: str) -> None:
    side, plain = IMAGENET_STEM_MODELS[name]
    model = create_model(name, num_classes=200).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.logits.shape == (1, 200)
    assert out.feature_map.shape[2:] == (side, side)
    # The same parameters as the plain model but for the 7×7 stride-2 stem convolution.
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in create_model(plain, num_classes=200).state_dict().items()}
    assert ours.keys() == theirs.keys()
    stem = "conv1.0.weight" if name.startswith("MobileNetV2") else "conv1.weight"
    assert {k for k in ours if ours[k] != theirs[k]} == {stem}
    assert ours[stem][2:] == (7, 7)
    stride = model.get_submodule(stem.removesuffix(".weight")).stride
    assert stride == (2, 2)


def test_the_fine_grained_suite_follows_frskds_protocol() -> None:
    # MingiJi/FRSKD @ 98b87e5, classification/main.py lines 22-29 and dataset.py lines 66-70.
    from kdbench.suite import load_suite

    suite = load_suite(Path(__file__).parents[1] / "suites" / "fine_grained.yaml")
    for job in suite.jobs:
        recipe = job.spec.recipe
        assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.momentum, recipe.weight_decay) == (
            200, 128, 0.1, 0.9, 1e-4
        )
        assert (recipe.schedule, recipe.decay_epochs, recipe.gamma) == ("step", (100, 150), 0.1)
        options = job.spec.dataset.options
        assert (options["image_size"], options["train_crop"]) == (224, "random_resized")
        assert (options["crop_scale"], options["crop_ratio"]) == ([0.08, 1.0], [0.75, 4 / 3])
    assert {job.spec.student for job in suite.jobs} == {"timm:resnet18", "timm:resnet34"}
