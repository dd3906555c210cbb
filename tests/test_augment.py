"""The augmentation axis: the strong transform against PIL versions of MLKD's operations,
mixup / CutMix targets, the recipe field in run ids and old suites, and two-view runs that
keep a cohort's data stream."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdbench import store
from kdbench.data import create_dataset
from kdbench.data.strong_augment import CUTOUT_FILL, STRONG_OPS, StrongAugment, cutout
from kdbench.data.transforms import padded_crop_transforms
from kdbench.errors import ConfigError
from kdbench.spec import Recipe, RunSpec
from kdbench.engine import EngineOptions, ResidentTrainSet, RngStream, batches, open_data, train_cohort, train_run

from conftest import TINY_RECIPE, student_spec

# MLKD's operations in PIL, written from the released code (mdistiller/dataset/cifar100.py)
PIL_OPS = {
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "identity": lambda im, v: im,
    "posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
    "rotate": lambda im, v: im.rotate(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
}
RANGES = {"autocontrast": (0, 1), "brightness": (0.05, 0.95), "color": (0.05, 0.95), "contrast": (0.05, 0.95),
          "equalize": (0, 1), "identity": (0, 1), "posterize": (4, 8), "rotate": (-30, 30), "sharpness": (0.05, 0.95),
          "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0, 256), "translate_x": (-0.3, 0.3),
          "translate_y": (-0.3, 0.3)}
FEW_STEPS = EngineOptions(progress=False, subset=128)


def random_image(seed=0, size=16):
    return (torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def as_pil(image):
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def as_array(image):
    return np.asarray(image, dtype=int) if isinstance(image, Image.Image) else image.permute(1, 2, 0).numpy().astype(int)


def test_strong_ops_are_mlkds_fourteen_with_its_ranges():
    assert {name: (low, high) for name, low, high, _ in STRONG_OPS} == RANGES


@pytest.mark.parametrize("name,low,high,operation", STRONG_OPS, ids=[op[0] for op in STRONG_OPS])
@pytest.mark.parametrize("at", [0.2, 0.7, 0.9])
def test_each_strong_op_matches_pil(name, low, high, operation, at):
    image = random_image()
    v = low + at * (high - low)
    got = as_array(operation(tv_tensors.Image(image), v))
    want = as_array(PIL_OPS[name](as_pil(image), v))
    close = np.abs(got - want) <= 1  # torchvision rounds some blends one grey level apart
    # nearest-neighbour sampling of a negative shear picks the neighbouring pixel on a few rows
    assert close.mean() >= (0.95 if name.startswith("shear") else 1.0), name


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.3, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_cutout_matches_the_released_codes_pil_rectangle(fraction, seed):
    image = random_image(seed)
    torch.manual_seed(seed)
    got = cutout(image, fraction)
    torch.manual_seed(seed)
    cx, cy = float(torch.rand(())) * 16, float(torch.rand(())) * 16  # the same draws, in the same order
    want = as_pil(image)
    if fraction > 0:
        side = fraction * 16
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        ImageDraw.Draw(want).rectangle((x0, y0, min(16, x0 + side), min(16, y0 + side)), CUTOUT_FILL)
    assert np.array_equal(as_array(got), as_array(want))


def test_strong_augment_applies_two_drawn_ops_then_cutout(monkeypatch):
    calls = []

    def recorder(name):
        def record(image, v):
            calls.append((name, v))
            return image
        return record

    fake = tuple((name, low, high, recorder(name)) for name, low, high, _ in STRONG_OPS)
    monkeypatch.setattr("kdbench.data.strong_augment.STRONG_OPS", fake)
    monkeypatch.setattr("kdbench.data.strong_augment.cutout", lambda image, f: calls.append(("cutout", f)) or image)
    for seed in range(20):
        torch.manual_seed(seed)
        StrongAugment()(random_image())
    assert len(calls) == 60 and all(c[0] == "cutout" for c in calls[2::3])
    for name, v in calls:
        low, high = RANGES.get(name, (0.0, 0.5))
        assert low <= v <= high
    assert len({name for name, _ in calls}) > 8  # drawn from all of them, with replacement


def test_strong_goes_after_crop_and_flip_before_the_float_conversion():
    transforms = padded_crop_transforms(32, 4, flip=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    steps = [type(step) for step in transforms.transform("strong").transforms]
    assert steps == [v2.ToImage, v2.RandomCrop, v2.RandomHorizontalFlip, StrongAugment, v2.ToDtype, v2.Normalize,
                     v2.ToPureTensor]
    assert transforms.transform("standard") is transforms.train and transforms.transform("none") is transforms.eval


def test_augment_levels_of_a_dataset():
    none, standard, strong = (create_dataset("digits", augment=a, image_size=16) for a in ("none", "standard", "strong"))
    torch.manual_seed(0)
    a = standard.train[0][0]
    torch.manual_seed(0)
    b = strong.train[0][0]
    assert not torch.equal(a, b) and a.shape == b.shape
    assert torch.equal(create_dataset("digits", augment=False, image_size=16).train[0][0], none.train[0][0])
    with pytest.raises(ConfigError, match="augment must be one of"):
        create_dataset("digits", augment="weak")


def test_augment_enters_the_run_id_and_old_booleans_still_load():
    spec = RunSpec(dataset={"name": "digits"}, student="resnet8")
    ids = {spec.replace(recipe=Recipe(**r)).run_id
           for r in ({}, {"augment": "none"}, {"augment": "strong"}, {"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0})}
    assert len(ids) == 5
    assert Recipe(augment=True) == Recipe() and Recipe(augment=False).augment == "none"
    old = RunSpec.model_validate({"dataset": {"name": "digits"}, "student": "resnet8", "recipe": {"augment": False}})
    assert old.run_id == spec.replace(recipe=Recipe(augment="none")).run_id


def test_a_suite_written_with_the_old_boolean_still_loads(tmp_path):
    from kdbench.suite import load_suite

    path = tmp_path / "old.yaml"
    path.write_text("name: old\nrecipe: {epochs: 1, augment: false}\ndatasets: {digits: {}}\n"
                    "pairs: [{dataset: digits, teacher: resnet14, student: resnet8}]\nmethods: {kd: {}}\n")
    assert {job.spec.recipe.augment for job in load_suite(path).jobs} == {"none"}


def stream_batches(images, labels):
    yield images, labels, torch.arange(len(labels))


@pytest.mark.parametrize("size", [8, 7])
def test_mixup_mixes_a_batch_with_its_reverse_and_softens_its_targets(size):
    images, labels = torch.randn(size, 3, 8, 8), torch.arange(size)
    original = images.clone()
    numpy_state = np.random.get_state()
    (mixed, hard, _, targets), = batches.mixed(stream_batches(images, labels),
                                               batches.make_mixer(Recipe(mixup_alpha=0.4), 8),
                                               RngStream(3, torch.device("cpu")))
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])  # numpy's generator is put back
    assert torch.equal(hard, labels) and targets.shape == (size, 8)
    even = size - size % 2
    lam = targets[0, 0].item()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed[:even], lam * original[:even] + (1 - lam) * original[:even].flip(0))
    one_hot = torch.nn.functional.one_hot(labels, 8).float()
    torch.testing.assert_close(targets[:even], lam * one_hot[:even] + (1 - lam) * one_hot[:even].flip(0))
    if size % 2:  # the odd last sample keeps its image and its label
        assert torch.equal(mixed[-1], original[-1]) and torch.equal(targets[-1], one_hot[-1])
    again = batches.mixed(stream_batches(original.clone(), labels), batches.make_mixer(Recipe(mixup_alpha=0.4), 8),
                          RngStream(3, torch.device("cpu")))
    assert torch.equal(next(again)[0], mixed)  # drawn from the data stream: reproducible


def test_cutmix_pastes_the_reversed_batch_and_weighs_targets_by_area():
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    original = images.clone()
    (mixed, _, _, targets), = batches.mixed(stream_batches(images, labels),
                                            batches.make_mixer(Recipe(cutmix_alpha=1.0), 5),
                                            RngStream(0, torch.device("cpu")))
    pasted = (mixed != original).any(1)  # pixels taken from the reversed batch
    assert torch.equal(mixed[pasted.unsqueeze(1).expand_as(mixed)], original.flip(0)[pasted.unsqueeze(1).expand_as(mixed)])
    kept_area = 1 - pasted[1].float().mean().item()
    assert targets[1, 1].item() == pytest.approx(kept_area) and targets.sum(1).allclose(torch.ones(6))


def test_no_mixing_keeps_hard_targets():
    (_, _, _, targets), = batches.mixed(stream_batches(torch.randn(4, 3, 8, 8), torch.arange(4)),
                                        batches.make_mixer(Recipe(), 4), RngStream(0, torch.device("cpu")))
    assert targets is None


def test_strong_augmentation_takes_the_loader_path(teacher_out):
    out, teacher = teacher_out
    data = open_data(student_spec(teacher), EngineOptions(progress=False), augment="strong")
    assert ResidentTrainSet.of(data, "strong", torch.device("cpu")) is None
    assert ResidentTrainSet.of(data, "standard", torch.device("cpu")) is not None


def comparable(record):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")}
            for row in record.dump()["metrics"]]


@pytest.mark.parametrize("augment,device_data", [("strong", False), ("standard", True)])
def test_a_run_sees_the_same_data_beside_a_two_view_method(teacher_out, tmp_path, augment, device_data):
    """KD's record alone equals its record in a cohort with MLKD, whose second view comes
    from the same data stream (loader path with strong views; device-resident path)."""
    out, teacher = teacher_out
    weights = out / teacher.run_id / store.WEIGHTS
    recipe = TINY_RECIPE.model_copy(update={"epochs": 1, "augment": augment})
    options = EngineOptions(progress=False, subset=128, device_data=device_data)
    kd, mlkd = (student_spec(teacher, method=m, recipe=recipe) for m in ("kd", "mlkd"))
    alone = train_run(kd, tmp_path / "alone", options, weights)
    cohort = train_cohort([kd, mlkd], [tmp_path / "kd", tmp_path / "mlkd"], options, weights)
    assert comparable(alone) == comparable(cohort[0])
    assert cohort[1].spec["recipe"]["augment"] == augment
    assert {"ce", "instance", "batch", "class"} <= set(cohort[1].metrics[0].losses)


def test_two_view_methods_refuse_mixing(teacher_out, tmp_path):
    out, teacher = teacher_out
    spec = student_spec(teacher, method="mlkd", recipe=TINY_RECIPE.model_copy(update={"epochs": 1, "mixup_alpha": 0.2}))
    with pytest.raises(ConfigError, match="mixup_alpha and cutmix_alpha"):
        train_run(spec, tmp_path, FEW_STEPS, out / teacher.run_id / store.WEIGHTS)


def test_the_engine_gives_methods_soft_targets_under_mixup(teacher_out, tmp_path, monkeypatch):
    from kdbench.methods.kd import KD

    out, teacher = teacher_out
    seen = []
    loss = KD.loss

    def recording(self, student, teacher_output, batch, epoch):
        seen.append((batch.targets.shape, batch.labels.shape, float(batch.targets.sum())))
        return loss(self, student, teacher_output, batch, epoch)

    monkeypatch.setattr(KD, "loss", recording)
    spec = student_spec(teacher, recipe=TINY_RECIPE.model_copy(update={"epochs": 1, "mixup_alpha": 0.2}))
    record = train_run(spec, tmp_path, FEW_STEPS, out / teacher.run_id / store.WEIGHTS)
    assert record.spec["recipe"]["mixup_alpha"] == 0.2
    assert seen and all(t == (64, 10) and y == (64,) and total == pytest.approx(64) for t, y, total in seen)
