"""Prepared stores (kdbench.data.prepared) and the batch RandomResizedCrop
(kdbench.data.batch_crops.BatchResizedCrop), on the miniature layouts of test_data with their images
redrawn as noise of assorted sizes, so that every resize and crop shows in the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_data import LAYOUTS, SIZE, VAL, cub200_layout
from torchvision.transforms.v2 import functional as TF

from kdbench import cli
from kdbench.data import create_dataset
from kdbench.data import prepared as prepared_module
from kdbench.data.batch_crops import BatchResizedCrop, RaggedImages
from kdbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from kdbench.data.prepared import INDEX, Listing, PreparedImageDataset, store_root, verify
from kdbench.errors import DataError
from kdbench.spec import DataSpec, Recipe, RunSpec
from kdbench.engine import EngineOptions, ResidentTrainSet, train_run

FILE_SETS = [name for name in LAYOUTS if name not in ("cifar100", "tiny-imagenet")]
SHORT = round(SIZE * 256 / 224)  # the short side stores of 16-px sets keep: 18


@pytest.fixture(autouse=True)
def miniature_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The miniature layouts have 9 train and 6 test images, not the official counts."""
    monkeypatch.setattr(prepared_module, "OFFICIAL_COUNTS", dict.fromkeys(prepared_module.OFFICIAL_COUNTS, (9, 6)))


def noisy_layout(name: str, root: Path) -> dict:
    """The layout of ``name`` under ``root``, every image redrawn as noise of its own size
    (18 to 44 px a side, portrait and landscape); returns the set's options."""
    layout = LAYOUTS[name](root)
    generator = np.random.default_rng(0)
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        height, width = generator.integers(18, 45, size=2)
        Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return layout.options


def both(name: str, root: Path, **options) -> tuple:
    """The set read from its folder and from its prepared store."""
    common = dict(seed=0, val_fraction=VAL, **options)
    return create_dataset(name, root, **common), create_dataset(name, root, prepared=True, **common)


@pytest.mark.parametrize("name", FILE_SETS)
def test_store_gives_the_folder_loaders_images(name: str, tmp_path: Path) -> None:
    options = noisy_layout(name, tmp_path)
    folder, store = both(name, tmp_path, augment="none", **options)
    assert isinstance(store.test, PreparedImageDataset)
    for split in ("train", "val", "test"):
        a, b = getattr(folder, split), getattr(store, split)
        assert len(a) == len(b) and torch.equal(a.labels, b.labels)
        for i in range(len(a)):  # the eval transform, item by item: the same pixels exactly
            assert torch.equal(a[i][0], b[i][0]), (split, i)
    # the batch form of the eval transform gives the same images
    images = store.train.resident(torch.device("cpu"))
    batch = store.transforms.batch(images[torch.arange(len(images))], augment=False)
    expected = torch.stack([folder.train[i][0] for i in range(len(folder.train))])
    assert torch.allclose(batch, expected, atol=1e-5)


def test_store_layout_and_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepared_module, "PARALLEL_FROM", 0)  # by worker processes: the same store
    options = noisy_layout("mit67", tmp_path)
    store = create_dataset("mit67", tmp_path, prepared=True, **options).train.store
    assert store.directory.parent == tmp_path / "kdbench-prepared"
    assert store.directory.name.startswith(f"mit67-{SHORT}px-")
    index = json.loads((store.directory / INDEX).read_text())
    assert index["counts"] == {"train": 9, "test": 6} and index["splits"] == [0] * 9 + [1] * 6
    assert index["paths"][0] == "Indoor67/Images/airport_inside/air0.jpg"  # relative to the data root
    assert min(min(h, w) for h, w in zip(index["heights"], index["widths"])) == SHORT
    sizes = [h * w * 3 for h, w in zip(index["heights"], index["widths"])]
    assert index["offsets"] == np.cumsum([0, *sizes[:-1]]).tolist() and index["bytes"] == sum(sizes)
    monkeypatch.setenv("KDBENCH_PREPARED", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(prepared_module, "PARALLEL_FROM", 256)  # in this process
    assert store_root(tmp_path) == tmp_path / "elsewhere"
    moved = create_dataset("mit67", tmp_path, prepared=True, **options).train.store
    assert moved.directory.parent == tmp_path / "elsewhere"
    assert moved.index["sha256"] == index["sha256"]


def stored_images(tmp_path: Path) -> RaggedImages:
    options = noisy_layout("cub200", tmp_path)
    data = create_dataset("cub200", tmp_path, prepared=True, val_fraction=0.0, **options)
    images = data.train.resident(torch.device("cpu"))
    return images[torch.arange(len(images))]


@pytest.mark.parametrize("train_crop", ["random_resized", "resize_crop"])
def test_batch_crop_is_torchvisions_crop_of_each_image(train_crop: str, tmp_path: Path) -> None:
    images = stored_images(tmp_path)
    transform = BatchResizedCrop(SIZE, train_crop, (0.08, 1.0), (3 / 4, 4 / 3), IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(3)
    out = transform(images)
    torch.manual_seed(3)  # the same draws: boxes first, then flips
    boxes = transform.boxes(images.heights, images.widths)
    flips = torch.rand(len(images)) < 0.5
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    stored = zip(images.offsets.tolist(), images.heights.tolist(), images.widths.tolist())
    for i, ((offset, height, width), (top, left, h, w)) in enumerate(zip(stored, boxes.tolist())):
        assert 0 <= top <= height - h and 0 <= left <= width - w
        image = images.flat[offset:offset + height * width * 3].view(height, width, 3).permute(2, 0, 1)
        crop = TF.resized_crop(image.contiguous(), top, left, h, w, [SIZE, SIZE], antialias=True)
        crop = TF.horizontal_flip(crop) if flips[i] else crop
        assert torch.allclose(out[i], (crop.float() / 255 - mean) / std, atol=1e-5), i
    assert flips.any() and not flips.all()
    if train_crop == "resize_crop":
        assert (boxes[:, 2:] == SIZE).all()


@pytest.mark.parametrize("shape", [(256, 341), (341, 256), (18, 200)])  # the last mostly falls back
def test_boxes_are_drawn_as_torchvision_draws_them(shape: tuple[int, int]) -> None:
    n, scale, ratio = 4000, (0.08, 1.0), (3 / 4, 4 / 3)
    transform = BatchResizedCrop(224, "random_resized", scale, ratio, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    ours = transform.boxes(torch.full((n,), shape[0]), torch.full((n,), shape[1])).double()
    image = torch.empty(3, *shape)
    theirs = torch.tensor(
        [torchvision.transforms.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)],
        dtype=torch.float64,
    )
    # every statistic of (top, left, height, width) within 4 standard errors of torchvision's
    error = ((ours.var(0) + theirs.var(0)) / n).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() <= 4 * error + 1e-9).all()
    assert ((ours.std(0) - theirs.std(0)).abs() <= 0.05 * theirs.std(0) + 0.5).all()


def tiny_run(options: dict, device_data: bool, tmp_path: Path, tag: str) -> list[dict]:
    spec = RunSpec(dataset=DataSpec(name="cub200", val_fraction=VAL, options=options), student="resnet8",
                   method="none", recipe=Recipe(epochs=2, batch_size=4, lr=0.05, augment="none"))
    engine = EngineOptions(device="cpu", data_root=str(tmp_path), progress=False, device_data=device_data)
    return train_run(spec, tmp_path / "runs" / tag, engine).dump()["metrics"]


def test_training_from_the_store_is_training_from_the_folder(tmp_path: Path) -> None:
    """Without augmentation the store's batches are the folder's: the same record exactly item
    by item, and to float rounding through the batch path."""
    options = noisy_layout("cub200", tmp_path)
    store_options = {**options, "prepared": True}
    data = create_dataset("cub200", tmp_path, val_fraction=VAL, augment="none", **store_options)
    assert ResidentTrainSet.of(data, "none", torch.device("cpu")) is not None
    folder = tiny_run(options, False, tmp_path, "folder")
    item_by_item = tiny_run(store_options, False, tmp_path, "store")
    batched = tiny_run(store_options, True, tmp_path, "batched")
    for a, b, c in zip(folder, item_by_item, batched, strict=True):
        for key in ("loss_ce", "val_top1", "test_top1"):
            assert a[key] == b[key], key
            assert a[key] == pytest.approx(c[key], abs=1e-4), key


def test_interrupted_prepare_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = noisy_layout("stanford40", tmp_path)
    decode = prepared_module.decode
    calls = []

    def interrupted(path: Path, short_side: int) -> np.ndarray:
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return decode(path, short_side)

    monkeypatch.setattr(prepared_module, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create_dataset("stanford40", tmp_path, prepared=True, **options)
    assert list((tmp_path / "kdbench-prepared").glob("stanford40-*/")) == []  # nothing left to trust
    monkeypatch.setattr(prepared_module, "decode", decode)
    # a prepare killed outright leaves its partial folder: never read, deleted by the next one
    data = create_dataset("stanford40", tmp_path, **options)
    directory = Listing.of_splits(data, tmp_path).directory
    partial = directory.with_name(directory.name + ".partial-12345")
    (partial / "images.u8").parent.mkdir(parents=True)
    (partial / "images.u8").write_bytes(b"half")
    store = create_dataset("stanford40", tmp_path, prepared=True, **options).test
    assert not partial.exists() and store.store.directory == directory
    assert torch.equal(store[0][0], data.test[0][0])
    # a store damaged afterwards is refused, with the fix
    with open(directory / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=f"prepared store {directory} is damaged .*kdbench data prepare"):
        create_dataset("stanford40", tmp_path, prepared=True, **options)


@pytest.mark.parametrize("processes", [False, True])
def test_corrupt_source_image_names_its_path(processes: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    if processes:  # decoded by worker processes, as sets of PARALLEL_FROM images and more are
        monkeypatch.setattr(prepared_module, "PARALLEL_FROM", 0)
    options = noisy_layout("cub200", tmp_path)
    broken = tmp_path / "CUB_200_2011/images/002.Laysan_Albatross/Laysan_Albatross_0003.jpg"
    broken.write_bytes(b"\xff\xd8 garbage, not a JPEG")
    with pytest.raises(DataError, match="cannot read image") as error:
        create_dataset("cub200", tmp_path, prepared=True, **options)
    assert str(broken) in str(error.value)
    assert list((tmp_path / "kdbench-prepared").glob("cub200-*/")) == []


def test_a_read_only_store_root_says_how_to_move_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = noisy_layout("mit67", tmp_path)
    monkeypatch.setenv("KDBENCH_PREPARED", "/proc/kdbench-prepared")  # cannot be created, even by root
    with pytest.raises(DataError, match="cannot write a prepared store in /proc/kdbench-prepared .*KDBENCH_PREPARED"):
        create_dataset("mit67", tmp_path, prepared=True, **options)


def test_official_counts_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real table
    cub200_layout(tmp_path)
    with pytest.raises(DataError, match="list 9 train / 6 test images, but the official split has 5994 / 5794"):
        create_dataset("cub200", tmp_path, prepared=True, image_size=SIZE)


def test_verify_catches_a_changed_source(tmp_path: Path) -> None:
    options = noisy_layout("flowers102", tmp_path)
    data = create_dataset("flowers102", tmp_path, **options)
    listing = Listing.of_splits(data, tmp_path)
    assert "no store" in verify(listing).problems[0]
    create_dataset("flowers102", tmp_path, prepared=True, **options)
    assert verify(listing).ok and verify(listing).decoded == 15
    changed = tmp_path / "flowers-102/jpg/image_00004.jpg"
    Image.fromarray(np.zeros((30, 20, 3), dtype=np.uint8)).save(changed)
    problems = verify(listing).problems
    assert len(problems) == 2 and all(str(changed) in p for p in problems)  # its stat and its pixels
    images = listing.directory / "images.u8"
    content = bytearray(images.read_bytes())
    content[5] ^= 1
    images.write_bytes(bytes(content))
    assert any("sha256" in p for p in verify(listing, sample=0).problems)


def test_cli_prepare_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    noisy_layout("mit67", tmp_path)
    args = ["mit67", "--data-root", str(tmp_path), "--data-option", f"image_size={SIZE}"]
    assert cli.main(["data", "prepare", *args]) == 0
    out = capsys.readouterr().out
    assert "kdbench-prepared/mit67-18px-" in out and "9 train / 6 test" in out
    assert cli.main(["data", "verify", *args]) == 0
    (tmp_path / "Indoor67/Images/kitchen/kit4.jpg").write_bytes(b"not a JPEG")
    assert cli.main(["data", "verify", *args]) == 1
    assert "kit4.jpg" in capsys.readouterr().out


def test_bench_times_the_folder_loader_against_the_store() -> None:
    from kdbench.tools.bench import large_image_data

    lines: list[str] = []
    engine = EngineOptions(device="cpu", progress=False)
    result = large_image_data(8, 24, torch.device("cpu"), engine, 1, 1, lines.append, "resnet14", "resnet8", SIZE)
    assert min(result.values()) > 0
    text = "\n".join(lines)
    assert "folder loader (PIL, 0 workers)" in text and "prepared store, batch crop on cpu" in text
