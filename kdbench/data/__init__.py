"""Datasets: ``create_dataset(name, root, seed=…, val_fraction=…, augment=…, **options)``.

Every set comes as ``DataSplits``: ``train`` (official train split minus the validation
split, augmented), ``val`` (a seeded split of the official train split, stratified by class,
``val_fraction`` of it, eval transform) and ``test`` (the official test split, eval
transform), with ``num_classes``, ``input_size``, ``classes`` and ``train_labels``. The same
``seed`` gives the same validation split; hyperparameter search scores on ``val`` and never
looks at ``test``. ``augment`` is the training images' augmentation: "standard" (the set's
transforms, below), "strong" (those, then MLKD's RandAugment + Cutout:
``strong_augment.StrongAugment``) or "none", which gives ``train`` with the eval transform in the same
order (for computing the teacher's logits on every training sample); True and False mean
"standard" and "none".

Built in, no files needed:

- ``digits``: scikit-learn's 8×8 handwritten digits (1797 images), upsampled to
  ``image_size`` (default 32) with 3 channels. Its test split is a fixed stratified 20%
  holdout (seed 0, whatever the training seed). Augmentation: padded random crop, no flip.
- ``synthetic-fg``: procedurally generated fine-grained classes; see
  ``kdbench.data.synthetic.SyntheticFGOptions`` for its options. The images depend only on
  ``data_seed`` (default 0), not on the training ``seed``.
- ``glyphs``: generated look-alike classes (a group's colours and glyph; its variants differ
  in a few cells), 12 px by default; see ``kdbench.data.glyphs.GlyphsOptions``. The same bytes on
  every machine, from ``data_seed`` alone.
- ``accents``: letters and their accented forms (a, à, á, …: a group's classes differ in a
  diacritic), drawn in the 16 text faces matplotlib ships, rotated, tinted, 16 px by
  default; see ``kdbench.data.accents.AccentsOptions``. The same bytes on every machine
  for one version of matplotlib's FreeType, from ``data_seed`` alone.

Real sets are read from the data root: the ``root`` argument (``--data-root``), else the
environment variable ``KDBENCH_DATA``, else ``~/.cache/kdbench/data``. Nothing is ever
downloaded; extract each official archive into the data root so that these paths exist:

==================  ==============================================================================
name                expected under the data root
==================  ==============================================================================
``cifar100``        ``cifar-100-python/{train,test,meta}`` (python pickles from cifar-100-python.tar.gz)
``tiny-imagenet``   ``tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/*.JPEG,``
                    ``val/images/*.JPEG,val/val_annotations.txt}``; the official val is the test split
``cub200``          ``CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}``
``stanford-dogs``   ``StanfordDogs/{Images/<wnid>-<breed>/*.jpg,train_list.mat,test_list.mat}``
                    (images.tar and lists.tar have no top folder: extract both into ``StanfordDogs/``)
``mit67``           ``Indoor67/{Images/<class>/*.jpg,TrainImages.txt,TestImages.txt}``
                    (indoorCVPR_09.tar plus the two split files, all into ``Indoor67/``)
``stanford40``      ``Stanford40/{JPEGImages/*.jpg,ImageSplits/{actions.txt,<action>_{train,test}.txt}}``
``fgvc-aircraft``   ``fgvc-aircraft-2013b/data/{images/*.jpg,variants.txt,``
                    ``images_variant_trainval.txt,images_variant_test.txt}``; classes are variants
``flowers102``      ``flowers-102/{jpg/image_00001.jpg,…,imagelabels.mat,setid.mat}``;
                    train = trnid + valid, test = tstid (torchvision's layout)
``imagefolder``     option ``path`` (absolute, or relative to the data root):
                    ``train/<class>/*`` and ``test/<class>/*`` (or ``val/<class>/*``)
==================  ==============================================================================

Transforms: ``cifar100`` RandomCrop(32, padding 4) + flip, its own mean/std;
``tiny-imagenet`` 64 px, RandomCrop(64, padding 8) + flip, ImageNet mean/std; the other
real sets (their options: ``options.LargeImageOptions``) Resize(256) + RandomCrop(224) +
flip for training and Resize(256) + CenterCrop(224) for evaluation, ImageNet mean/std,
scaled by their option ``image_size``
(default 224); their option ``train_crop: random_resized`` trains with
RandomResizedCrop(224, ``crop_scale``, ``crop_ratio``) + flip instead (torchvision's
defaults [0.08, 1] and [3/4, 4/3]). ``cub200``, ``stanford-dogs``, ``mit67`` and
``stanford40`` are also read from the ``{train,valid}`` / ``{train,test}`` ImageFolder
trees prepared for FRSKD, CS-KD or L2T-ww (``kdbench.data.folders.REPOSITORY_TREES``) where
their official split files are absent. Their option ``prepared: true`` reads the images
from the set's prepared store instead of decoding JPEGs every epoch: decoded and resized
once (short side 256 at 224 px), made on first use or by ``kdbench data prepare NAME``, and
on CUDA cropped, flipped and normalised a batch at a time on the GPU
(``kdbench.data.prepared`` documents the format and where stores live). A missing set raises ``DataError`` naming the missing file and where to put
it; a malformed split file names the file and line; an unreadable image names its path.
Register a new set with ``@register_dataset("name", Options)`` on a loader
``(root: Path, splitter: Splitter, options: Options) -> DataSplits``, ``Options`` being a
pydantic model derived from ``DatasetOptions`` (``options.py``; leave it out for a set
without options): it validates the options and its fields, with their defaults, are what a
run spec records.

Modules: ``datasets`` (the data-set classes), ``splitting`` (the validation split),
``transforms`` (the recipes), ``batch_crops`` (the same crops a batch at a time on the
device), ``strong_augment`` (MLKD's), ``split_files`` (reading split files), ``options``;
the loaders in ``synthetic``, ``glyphs``, ``low_resolution``, ``fine_grained`` and
``folders``; ``prepared`` (the prepared stores).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from ..errors import ConfigError, ValidationProblem, did_you_mean, explain_validation
from ..registry import Registry
from .datasets import DataSplits, ImageFileDataset, TensorImageDataset
from .options import DatasetOptions
from .splitting import Splitter
from .transforms import AUGMENTATIONS, Augment

Loader = Callable[[Path, Splitter, Any], DataSplits]


class RegisteredDataset:
    """A registered set: its loader ``(root, splitter, options) -> DataSplits`` and the
    pydantic model of its options. Wraps the loader (``functools.update_wrapper``), so the
    registry names the loader's module when a name is registered twice."""

    def __init__(self, load: Loader, options: type[DatasetOptions]) -> None:
        functools.update_wrapper(self, load)
        self.load = load
        self.options = options

    def __call__(self, root: Path, splitter: Splitter, options: DatasetOptions) -> DataSplits:
        return self.load(root, splitter, options)


def _import_loaders() -> None:
    from . import accents, fine_grained, folders, glyphs, low_resolution, synthetic  # noqa: F401  (their decorators register the sets)


DATASETS: Registry[RegisteredDataset] = Registry("dataset", discover=_import_loaders)


def register_dataset(name: str, options: type[DatasetOptions] = DatasetOptions) -> Callable[[Loader], Loader]:
    """Register a loader ``(root, splitter, options) -> DataSplits`` whose options are the
    pydantic model ``options`` (a ``DatasetOptions``; the base itself for a set without any)."""

    def decorate(load: Loader) -> Loader:
        DATASETS.register(name, RegisteredDataset(load, options))
        return load

    return decorate


def resolve_data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root`` when given, else ``$KDBENCH_DATA``, else
    ``~/.cache/kdbench/data``. Not created; loaders say what is missing under it."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get("KDBENCH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kdbench" / "data"


def create_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: Augment | bool = "standard",
    **options: Any,
) -> DataSplits:
    """Train / val / test splits of the registered set ``name`` (see the module docstring).

    Unknown option keys and values of the wrong type are a ``ConfigError``."""
    dataset = DATASETS.get(name)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"dataset '{name}': val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(augment, bool):
        augment = "standard" if augment else "none"
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"dataset '{name}': augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    checked = parse_options(name, options)
    return dataset(resolve_data_root(root), Splitter(name, seed, val_fraction, augment), checked)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def dataset_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of the set ``name``: ``options`` validated, the others at their defaults,
    as JSON values in the model's field order (what a run spec records and hashes)."""
    return parse_options(name, options).model_dump(mode="json")


def parse_options(name: str, options: dict[str, Any]) -> DatasetOptions:
    """``options`` validated against the registered model of the set ``name``; a ConfigError
    names the set, each key at fault and what is wrong with it."""
    model = DATASETS.get(name).options
    try:
        return model.model_validate(options)
    except pydantic.ValidationError as e:
        raise ConfigError(explain_validation(
            e, line=lambda problem: _option_problem(name, model, options, problem), separator="; "
        )) from None


def _option_problem(name: str, model: type[DatasetOptions], options: dict[str, Any], problem: ValidationProblem) -> str:
    key = str(problem.loc[0]) if problem.loc else ""
    allowed = list(model.model_fields)
    whole_option = len(problem.loc) == 1  # not an item of one (a crop range's bound)
    if problem.kind == "unknown" and whole_option:
        known = ", ".join(allowed) or "none"
        return f"dataset '{name}' has no option '{key}' (its options: {known}){did_you_mean(key, allowed)}"
    if problem.kind == "missing" and whole_option:
        return f"dataset '{name}' needs option '{key}'"
    return f"dataset '{name}' option '{key}': {problem.message} (got {options.get(key)!r})"


__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetOptions",
    "ImageFileDataset",
    "RegisteredDataset",
    "Splitter",
    "TensorImageDataset",
    "create_dataset",
    "dataset_options",
    "list_datasets",
    "parse_options",
    "register_dataset",
    "resolve_data_root",
]
