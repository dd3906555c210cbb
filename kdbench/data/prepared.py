"""Prepared stores: a 224-px set decoded once, so that training reads pixels instead of JPEGs.

A 224-px set's option ``prepared: true`` reads its images from the set's store, which is made
on first use (``kdbench data prepare NAME`` makes it ahead of time, with the same progress
bar; ``kdbench data verify NAME`` checks it against its source folder). Each image is decoded
with PIL and resized exactly as the folder loader's Resize step does (torchvision
``v2.Resize(short)`` on the PIL image: bilinear, antialiased), ``short`` being
``resized_short_side(image_size)`` (256 at the default 224 px). So the evaluation transform
(CenterCrop) gives the folder loader's pixels exactly, and RandomCrop ("resize_crop") crops
the same images; RandomResizedCrop ("random_resized") crops this resized image rather than
the original (a crop larger than 224 px is shrunk from the 256-px copy, a smaller one is
enlarged from it: the same boxes in relative terms, resampled from a smaller source).

Where: ``$KDBENCH_PREPARED`` when set, else ``kdbench-prepared/`` inside the data root, one
folder per set, short side and image list: ``<name>-<short>px-<key>/``, ``key`` being a hash
of the image list (paths, labels, splits), so a changed split file makes a new store. A
store folder holds two files:

- ``images.u8``: every image as uint8 H×W×3 rows (RGB), concatenated with no padding: the
  official train split first, then the test split, each in the loader's order. Memory-mapped
  when read.
- ``index.json``: ``format`` (1), ``dataset``, ``short_side``, ``key``, ``counts`` (images per
  split), ``bytes`` (the size of images.u8), ``sha256`` (of images.u8), and per image, in
  columns: ``paths`` (relative to the data root where under it), ``splits`` (0 train, 1
  test), ``labels``, ``heights``, ``widths``, ``offsets`` (where it starts in images.u8) and
  ``source_bytes`` / ``source_mtime_ns`` (the source file when it was decoded).

A store is written into ``<folder>.partial-<pid>`` and renamed into place only once complete,
under a lock file (``<folder>.lock``) so that parallel workers make it once; an interrupted
prepare leaves at most a partial folder, which no run reads and the next prepare deletes.
Opening a store checks its format, image list and file size; ``verify`` also recomputes the
checksum, compares every source file's size and modification time, and decodes a sample of
images again. Image counts per split are checked against the official ones where known.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2

from ..errors import DataError
from ..locking import exclusive_lock
from .batch_crops import RaggedImages, resized_short_side
from .datasets import DataSplits, ImageDataset, ImageFileDataset, load_rgb

FORMAT = 1
# Official (train, test) image counts, from each loader's docstring in kdbench.data.fine_grained
OFFICIAL_COUNTS: dict[str, tuple[int, int]] = {
    "cub200": (5994, 5794),
    "stanford-dogs": (12000, 8580),
    "mit67": (5360, 1340),
    "stanford40": (4000, 5532),
    "fgvc-aircraft": (6667, 3333),
    "flowers102": (2040, 6149),
}
SPLITS = ("train", "test")
PARALLEL_FROM = 256  # smaller sets are decoded in this process: starting workers costs more
IMAGES, INDEX = "images.u8", "index.json"


def store_root(data_root: Path) -> Path:
    """Where stores are kept: ``$KDBENCH_PREPARED``, else ``<data root>/kdbench-prepared``."""
    env = os.environ.get("KDBENCH_PREPARED")
    return Path(env).expanduser() if env else data_root / "kdbench-prepared"


@dataclass(frozen=True)
class Listing:
    """The images a store holds: the official train split's files, then the test split's."""

    name: str
    data_root: Path
    short_side: int
    paths: list[Path]
    labels: list[int]
    splits: list[int]  # 0 train, 1 test

    @classmethod
    def of(cls, name: str, data_root: Path, train: ImageFileDataset, test: ImageFileDataset,
           image_size: int) -> Listing:
        train, test = train.official(), test.official()
        return cls(name, data_root, resized_short_side(image_size), train.paths + test.paths,
                   train.labels.tolist() + test.labels.tolist(), [0] * len(train) + [1] * len(test))

    @classmethod
    def of_splits(cls, data: DataSplits, data_root: Path) -> Listing:
        """The listing of a set opened from its source folder (``prepared`` off)."""
        if not isinstance(data.train, ImageFileDataset) or not isinstance(data.test, ImageFileDataset):
            raise DataError(f"dataset '{data.name}' is not read from image files, so it has no prepared store")
        return cls.of(data.name, data_root, data.train, data.test, data.input_size)

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.data_root)) if path.is_relative_to(self.data_root) else str(path)

    @property
    def relative_paths(self) -> list[str]:
        return [self.relative(p) for p in self.paths]

    @property
    def key(self) -> str:
        content = {"format": FORMAT, "short_side": self.short_side, "paths": self.relative_paths,
                   "labels": self.labels, "splits": self.splits}
        return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:12]

    @property
    def counts(self) -> tuple[int, int]:
        return self.splits.count(0), self.splits.count(1)

    @property
    def directory(self) -> Path:
        return store_root(self.data_root) / f"{self.name}-{self.short_side}px-{self.key}"

    def check_counts(self) -> None:
        """A DataError when the split sizes differ from the official ones."""
        official = OFFICIAL_COUNTS.get(self.name)
        if official is not None and self.counts != official:
            raise DataError(
                f"{self.name}: the split files under {self.data_root} list {self.counts[0]} train / "
                f"{self.counts[1]} test images, but the official split has {official[0]} / {official[1]}; "
                "extract the official archives again (kdbench.data's docstring lists the files)"
            )


def decode(path: Path, short_side: int) -> np.ndarray:
    """The image at ``path`` as the folder loader resizes it: RGB, short side ``short_side``,
    uint8 H×W×3. An unreadable file is a DataError naming the path."""
    return np.array(v2.Resize(short_side)(load_rgb(path)), dtype=np.uint8)


def _decode_task(task: tuple[Path, int]) -> np.ndarray:
    return decode(*task)


def _decoded(listing: Listing, progress: bool) -> Iterator[np.ndarray]:
    """Every image of ``listing`` decoded, in order: by one process per core for large sets."""
    tasks = [(path, listing.short_side) for path in listing.paths]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=f"preparing {listing.name} ({listing.short_side} px)", unit="img",
                   dynamic_ncols=True)
    try:
        if len(tasks) < PARALLEL_FROM:
            images: Iterator[np.ndarray] = map(_decode_task, tasks)
            yield from _counted(images, bar)
        else:
            # forked, as DataLoader workers are: spawned ones would run the caller's script
            # again (which may be preparing this store), and decoding needs no CUDA
            processes = len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
            with multiprocessing.get_context("fork").Pool(processes, initializer=torch.set_num_threads,
                                                          initargs=(1,)) as pool:
                yield from _counted(pool.imap(_decode_task, tasks, chunksize=8), bar)
    finally:
        if bar is not None:
            bar.close()


def _counted(images: Iterator[np.ndarray], bar: object | None) -> Iterator[np.ndarray]:
    for image in images:
        yield image
        if bar is not None:
            bar.update()


def prepare(listing: Listing, progress: bool = True) -> Path:
    """Make the store of ``listing`` unless it exists; returns its folder. Parallel callers wait
    for the first one's store instead of making their own."""
    directory = listing.directory
    with contextlib.ExitStack() as held:
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_lock(directory.with_name(directory.name + ".lock"), on_wait=lambda: print(
                f"waiting for another process to prepare {directory}", file=sys.stderr, flush=True)))
        except OSError as e:
            raise DataError(f"{listing.name}: cannot write a prepared store in {directory.parent} ({e}); set "
                            "$KDBENCH_PREPARED to a writable folder") from e
        if (directory / INDEX).is_file():
            return directory
        for stale in directory.parent.glob(directory.name + ".partial-*"):  # interrupted prepares
            shutil.rmtree(stale, ignore_errors=True)
        listing.check_counts()
        partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
        try:
            _write(listing, partial, progress)
            partial.rename(directory)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return directory


def _write(listing: Listing, folder: Path, progress: bool) -> None:
    folder.mkdir()
    stats = [path.stat() if path.is_file() else None for path in listing.paths]
    missing = [p for p, s in zip(listing.paths, stats) if s is None]
    if missing:
        raise DataError(f"{listing.name}: {len(missing)} listed image(s) are missing, e.g. {missing[0]}")
    digest = hashlib.sha256()
    heights, widths, offsets = [], [], []
    offset = 0
    with open(folder / IMAGES, "wb") as f:
        for image in _decoded(listing, progress):
            data = memoryview(np.ascontiguousarray(image)).cast("B")
            f.write(data)
            digest.update(data)
            heights.append(image.shape[0])
            widths.append(image.shape[1])
            offsets.append(offset)
            offset += data.nbytes
    index = {
        "format": FORMAT,
        "dataset": listing.name,
        "short_side": listing.short_side,
        "key": listing.key,
        "counts": dict(zip(SPLITS, listing.counts)),
        "bytes": offset,
        "sha256": digest.hexdigest(),
        "paths": listing.relative_paths,
        "splits": listing.splits,
        "labels": listing.labels,
        "heights": heights,
        "widths": widths,
        "offsets": offsets,
        "source_bytes": [s.st_size for s in stats],
        "source_mtime_ns": [s.st_mtime_ns for s in stats],
    }
    (folder / INDEX).write_text(json.dumps(index, separators=(",", ":")))


class PreparedStore:
    """An opened store: its index, and its images memory-mapped on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self.index = json.loads((directory / INDEX).read_text())
            size = (directory / IMAGES).stat().st_size
        except (OSError, ValueError) as e:
            raise self._damaged(f"cannot read it: {e}") from e
        if self.index.get("format") != FORMAT:
            raise self._damaged(f"format {self.index.get('format')}, this kdbench reads {FORMAT}")
        if size != self.index["bytes"]:
            raise self._damaged(f"{IMAGES} has {size} bytes, its index says {self.index['bytes']}")
        self.offsets = torch.tensor(self.index["offsets"], dtype=torch.int64)
        self.heights = torch.tensor(self.index["heights"], dtype=torch.int64)
        self.widths = torch.tensor(self.index["widths"], dtype=torch.int64)
        self._flat: Tensor | None = None

    def _damaged(self, problem: str) -> DataError:
        return DataError(f"prepared store {self.directory} is damaged ({problem}); delete the folder and run "
                         "`kdbench data prepare` again")

    def __getstate__(self) -> dict:  # loader processes map the file again instead of copying it
        return {**self.__dict__, "_flat": None}

    @property
    def flat(self) -> Tensor:
        """images.u8 as a 1-D uint8 tensor over a memory map (copy-on-write, never written)."""
        if self._flat is None:
            self._flat = torch.from_numpy(np.memmap(self.directory / IMAGES, dtype=np.uint8, mode="c"))
        return self._flat

    def image(self, position: int) -> Tensor:
        """The image at ``position`` as a uint8 3×H×W view."""
        offset, height, width = (int(t[position]) for t in (self.offsets, self.heights, self.widths))
        return self.flat[offset:offset + height * width * 3].view(height, width, 3).permute(2, 0, 1)

    def ragged(self, positions: Tensor, device: torch.device) -> RaggedImages:
        """The images at ``positions`` on ``device``: on a CPU the memory map itself, elsewhere
        a copy of the stretch of the file that holds them."""
        start = int(self.offsets[positions].min())
        ends = self.offsets[positions] + self.heights[positions] * self.widths[positions] * 3
        flat = self.flat[start:int(ends.max())]
        return RaggedImages(flat.to(device), self.offsets[positions] - start, self.heights[positions],
                            self.widths[positions])


class PreparedImageDataset(ImageDataset):
    """The images of one official split read from a prepared store (uint8 3×H×W tensors)."""

    def __init__(self, store: PreparedStore, positions: Sequence[int], labels: Sequence[int]) -> None:
        super().__init__(labels)
        self.store = store
        self.positions = torch.as_tensor(positions, dtype=torch.int64)

    def load(self, j: int) -> Tensor:
        return self.store.image(int(self.positions[j]))

    def resident(self, device: torch.device) -> RaggedImages:
        return self.store.ragged(self.positions[self.indices], device)


def prepared_splits(name: str, data_root: Path, train: ImageFileDataset, test: ImageFileDataset,
                    image_size: int, progress: bool = True) -> tuple[PreparedImageDataset, PreparedImageDataset]:
    """The official splits read from their store, made first if there is none."""
    listing = Listing.of(name, data_root, train, test, image_size)
    store = PreparedStore(prepare(listing, progress))
    if store.index["key"] != listing.key:
        raise store._damaged(f"its index is of image list {store.index['key']}, its folder name says {listing.key}")
    n_train = listing.counts[0]
    labels = store.index["labels"]
    return (PreparedImageDataset(store, range(n_train), labels[:n_train]),
            PreparedImageDataset(store, range(n_train, len(labels)), labels[n_train:]))


@dataclass
class Verification:
    """What ``verify`` found: the store it checked and every problem, in words."""

    directory: Path
    problems: list[str]
    decoded: int  # images decoded again and compared

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(listing: Listing, sample: int = 64, seed: int = 0) -> Verification:
    """Check the store of ``listing`` against its source: official counts, the checksum of
    images.u8, every source file's size and modification time, and ``sample`` images
    (all when ``sample`` ≥ their number) decoded again and compared pixel for pixel."""
    directory = listing.directory
    if not (directory / INDEX).is_file():
        others = sorted(p.name for p in directory.parent.glob(f"{listing.name}-*") if (p / INDEX).is_file())
        found = f"; stores of other image lists there: {', '.join(others)}" if others else ""
        return Verification(directory, [f"no store of this image list at {directory}{found}"], 0)
    try:
        store = PreparedStore(directory)
    except DataError as e:
        return Verification(directory, [str(e)], 0)
    index = store.index
    problems = []
    try:
        listing.check_counts()
    except DataError as e:
        problems.append(str(e))
    if index["paths"] != listing.relative_paths or index["labels"] != listing.labels:
        problems.append(f"{INDEX} lists other images or labels than the source's split files")
    digest = hashlib.sha256()
    with open(directory / IMAGES, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != index["sha256"]:
        problems.append(f"{IMAGES} has sha256 {digest.hexdigest()}, its index recorded {index['sha256']}")
    for path, size, mtime in zip(listing.paths, index["source_bytes"], index["source_mtime_ns"]):
        if not path.is_file():
            problems.append(f"source image {path} is missing")
        elif (path.stat().st_size, path.stat().st_mtime_ns) != (size, mtime):
            problems.append(f"source image {path} changed since the store was made (size or modification time)")
    n = len(listing.paths)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:sample].sort().values.tolist()
    for position in chosen:
        path = listing.paths[position]
        if not path.is_file():
            continue
        try:
            fresh = torch.from_numpy(decode(path, listing.short_side)).permute(2, 0, 1)
        except DataError as e:
            problems.append(str(e))
            continue
        if not torch.equal(fresh, store.image(position)):
            problems.append(f"source image {path} decodes to other pixels than the store holds")
    return Verification(directory, problems, len(chosen))
