"""What a data set's options may be: a pydantic model per set, as a method has its HParams.

A set is registered with its model (``register_dataset(name, options=Model)``); its loader
gets the validated model. A run spec records ``model.model_dump(mode="json")``: every
field, in the model's order, defaults filled; so a field's name, type, default and place
are part of every run id of that set. Sets without options use ``DatasetOptions`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, PositiveFloat, PositiveInt


class DatasetOptions(pydantic.BaseModel):
    """Base of every set's options: unknown keys are rejected; none at all when used alone."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"expected (low, high) with low <= high, got {list(bounds)}")
    return bounds


# The training crop of the 224-px sets (their options ``train_crop``, ``crop_scale``,
# ``crop_ratio``): "resize_crop" is ``transforms.resize_crop_transforms``, "random_resized"
# is ``transforms.random_resized_crop_transforms`` with that scale and ratio range
# (torchvision's defaults).
TrainCrop = Literal["resize_crop", "random_resized"]
CropRange = Annotated[tuple[PositiveFloat, PositiveFloat], AfterValidator(_ordered)]
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


class LargeImageOptions(DatasetOptions):
    """The options every 224-px set shares: the crop size (the recipe scales with it), the
    training crop, and whether images come from the set's prepared store
    (``kdbench.data.prepared``) rather than from their JPEGs."""

    image_size: PositiveInt = 224
    train_crop: TrainCrop = "resize_crop"
    crop_scale: CropRange = CROP_SCALE  # read only with train_crop "random_resized"
    crop_ratio: CropRange = CROP_RATIO  # likewise
    prepared: bool = False


class _FolderPath(DatasetOptions):
    path: Path | None = None  # absolute, or relative to the data root


class ImageFolderOptions(LargeImageOptions, _FolderPath):
    """``imagefolder``'s options: the folder, then the 224-px ones. (Listing ``_FolderPath``
    last among the bases puts ``path`` first among the fields, where runs record it.)"""
