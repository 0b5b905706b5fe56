"""FEMNIST digits grouped by writer: loading, validation and the compact on-disk cache.

Two source formats are read:

* TensorFlow Federated's HDF5 layout, a folder holding ``*_train.h5`` and ``*_test.h5`` with
  ``examples/<writer id>/pixels`` (float32, (n, 28, 28), 1.0 = background) and
  ``examples/<writer id>/label`` (int32, (n,)).
* LEAF JSON shards, a folder of ``*.json`` files or ``train/`` and ``test/`` folders of them, with
  ``user_data[<writer id>] = {"x": [[784 floats]], "y": [labels]}``. Labels 10-61 are letters.

Both store 1.0 = background. At load the pixels become uint8 ink intensity (0 = background,
255 = full ink), the convention used everywhere in the engine. The sources are 8-bit images, so
the conversion loses nothing. Only digits (labels 0-9) are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from engine.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SIZE = 28
DIGITS = tuple(range(10))
MAX_LEAF_LABEL = 61
SPLITS = ("train", "test")

# Bump when the cached arrays change meaning, so old caches are not read.
CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SourceFile:
    """One input file and the split its images belong to."""

    path: Path
    kind: str  # "hdf5" or "leaf-json"
    split: str  # "train" or "test"


@dataclass(frozen=True, eq=False)
class FemnistDataset:
    """Digit images of FEMNIST writers, one row per image.

    ``images`` is uint8 (N, 28, 28) ink intensity. ``digits`` (N,) contains 0-9. ``writer_index`` (N,)
    indexes ``writers``. ``split`` (N,) is 0 for train and 1 for test. The cell X(i, j) of the
    writer x digit matrix is every image of writer i with digit j, from both splits.
    """

    writers: tuple[str, ...]
    images: np.ndarray
    digits: np.ndarray
    writer_index: np.ndarray
    split: np.ndarray
    fingerprint: str
    source: str
    hidden_cells: tuple[tuple[str, int], ...] = field(default=())

    @cached_property
    def _writer_positions(self) -> dict[str, int]:
        return {writer: position for position, writer in enumerate(self.writers)}

    @cached_property
    def counts(self) -> np.ndarray:
        """Images per cell, int64 (writers, 10)."""
        flat = self.writer_index.astype(np.int64) * len(DIGITS) + self.digits
        counts = np.bincount(flat, minlength=len(self.writers) * len(DIGITS))
        return counts.reshape(len(self.writers), len(DIGITS))

    def writer_position(self, writer: str) -> int:
        """Return the row of `writer`, or raise InputError naming it and a valid example."""
        position = self._writer_positions.get(writer)
        if position is None:
            raise InputError(
                f"writer {writer!r} not found; {len(self.writers)} writers, e.g. {self.writers[0]}"
            )
        return position

    def cell_indices(self, writer: str, digit: int) -> np.ndarray:
        """Return the image indices of cell X(writer, digit), possibly empty."""
        digit = validate_digit(digit)
        position = self.writer_position(writer)
        return np.flatnonzero((self.writer_index == position) & (self.digits == digit))

    def digit_indices(self, digit: int) -> np.ndarray:
        """Return the indices of all images of `digit`."""
        return np.flatnonzero(self.digits == validate_digit(digit))

    def digits_of(self, writer: str) -> list[int]:
        """Return the digits that `writer` has at least one image of."""
        return [int(digit) for digit in np.flatnonzero(self.counts[self.writer_position(writer)])]

    def writers_with_digit(self, digit: int) -> list[str]:
        """Return the writers that have at least one image of `digit`, in dataset order."""
        digit = validate_digit(digit)
        return [self.writers[position] for position in np.flatnonzero(self.counts[:, digit])]

    def without_cell(self, writer: str, digit: int) -> "FemnistDataset":
        """Return a copy without the images of X(writer, digit), with a fingerprint of its own.

        Everything computed from the copy (clusters, votes, models) is cached apart from the
        full dataset's, so a hidden cell never leaks into results for the full data.
        """
        return self.without_cells([(writer, digit)])

    def without_cells(self, cells: Iterable[tuple[str, int]]) -> "FemnistDataset":
        """Return a copy without the images of every cell (writer, digit) in `cells`.

        The fingerprint depends only on the set of hidden cells, so hiding them one by one with
        `without_cell` or all at once gives the same fingerprint and shares the same caches.
        Raises InputError for an empty list or a cell with no images.
        """
        cells = [(writer, validate_digit(digit)) for writer, digit in cells]
        if not cells:
            raise InputError("no cells to hide were given")
        keep = np.ones(len(self.digits), dtype=bool)
        for writer, digit in cells:
            hidden = self.cell_indices(writer, digit)
            if hidden.size == 0:
                raise InputError(
                    f"writer {writer} has no images of digit {digit} to hide; "
                    f"their digits are {self.digits_of(writer)}"
                )
            keep[hidden] = False
        hidden_cells = tuple(sorted(set(self.hidden_cells) | set(cells)))
        key = json.dumps([self.fingerprint.split("-hide-")[0], hidden_cells])
        fingerprint = self.fingerprint.split("-hide-")[0] + "-hide-" + _short_hash(key.encode())
        return FemnistDataset(
            writers=self.writers,
            images=self.images[keep],
            digits=self.digits[keep],
            writer_index=self.writer_index[keep],
            split=self.split[keep],
            fingerprint=fingerprint,
            source=self.source,
            hidden_cells=hidden_cells,
        )

    def summary(self) -> dict:
        """Count writers, images, images per digit and per split, and empty cells, from the data."""
        counts = self.counts
        present = counts > 0
        return {
            "source": self.source,
            "writers": len(self.writers),
            "images": int(len(self.digits)),
            "images_per_digit": {str(digit): int(counts[:, digit].sum()) for digit in DIGITS},
            "writers_per_digit": {str(digit): int(present[:, digit].sum()) for digit in DIGITS},
            "images_per_split": {
                name: int(np.count_nonzero(self.split == code)) for code, name in enumerate(SPLITS)
            },
            "writers_with_all_digits": int(np.count_nonzero(present.all(axis=1))),
            "cells": int(present.size),
            "empty_cells": int(np.count_nonzero(~present)),
            "hidden_cells": [list(cell) for cell in self.hidden_cells],
            "fingerprint": self.fingerprint,
        }


def validate_digit(digit: int) -> int:
    """Return `digit` as an int, or raise InputError unless it is 0-9."""
    try:
        value = int(digit)
    except (TypeError, ValueError):
        raise InputError(f"digit must be 0-9, got {digit!r}") from None
    if value != digit or value not in DIGITS:
        raise InputError(f"digit must be 0-9, got {digit}")
    return value


def find_sources(data_dir: Path) -> list[SourceFile]:
    """List the HDF5 and LEAF JSON files of a data folder, or raise InputError if there are none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"data folder {str(data_dir)!r} does not exist; check --data or FEMNIST_DATA")

    sources = []
    for path in sorted(data_dir.glob("*.h5")):
        sources.append(SourceFile(path, "hdf5", _split_from_name(path)))
    for path in sorted(data_dir.glob("*.json")):
        sources.append(SourceFile(path, "leaf-json", _split_from_name(path)))
    for split in SPLITS:
        for path in sorted((data_dir / split).glob("*.json")):
            sources.append(SourceFile(path, "leaf-json", split))

    if not sources:
        raise InputError(
            f"no FEMNIST files in {str(data_dir)!r}: expected *_train.h5/*_test.h5 (TensorFlow "
            "Federated layout) or LEAF *.json shards (in the folder or in train/ and test/); "
            "fetch the full release with `python -m engine download --dest PATH`"
        )
    return sources


def _split_from_name(path: Path) -> str:
    stem = path.stem.lower()
    if "test" in stem:
        return "test"
    if "train" in stem:
        return "train"
    raise InputError(
        f"cannot tell the split of {str(path)!r}: its name must contain 'train' or 'test'"
    )


def fingerprint_sources(sources: list[SourceFile]) -> str:
    """Hash the names, sizes and modification times of the source files.

    A changed or replaced file changes the fingerprint, and so every cache key derived from it.
    """
    digest = hashlib.sha256(f"format-{CACHE_FORMAT_VERSION}".encode())
    for source in sources:
        stat = source.path.stat()
        digest.update(f"|{source.path.resolve()}|{source.kind}|{source.split}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_dataset(data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> FemnistDataset:
    """Load the digits of a FEMNIST folder, from the compact cache when it is current.

    The first load parses the sources and, when `cache_dir` is given, writes the arrays to
    ``<cache_dir>/datasets/<fingerprint>/``; later loads memory-map them instead of parsing.
    """
    data_dir = Path(data_dir)
    sources = find_sources(data_dir)
    fingerprint = fingerprint_sources(sources)
    description = f"{data_dir} ({len(sources)} files)"

    cache_folder = Path(cache_dir) / "datasets" / fingerprint if cache_dir is not None else None
    if cache_folder is not None and (cache_folder / "meta.json").is_file():
        try:
            return _read_cache(cache_folder, fingerprint, description)
        except (OSError, ValueError, KeyError) as error:
            logger.warning("dataset cache %s is unreadable (%s); parsing the sources again", cache_folder, error)

    dataset = _parse_sources(sources, fingerprint, description)
    if cache_folder is not None:
        _write_cache(dataset, cache_folder)
    return dataset


def _parse_sources(sources: list[SourceFile], fingerprint: str, description: str) -> FemnistDataset:
    writer_positions: dict[str, int] = {}
    parts: list[tuple[str, int, np.ndarray, np.ndarray]] = []

    for source in sources:
        logger.info("reading %s", source.path)
        reader = _read_hdf5 if source.kind == "hdf5" else _read_leaf_json
        for writer, pixels, labels in reader(source.path):
            keep = labels < len(DIGITS)
            if not keep.any():
                continue
            writer_positions.setdefault(writer, len(writer_positions))
            ink = _to_ink(pixels[keep])
            parts.append((writer, SPLITS.index(source.split), ink, labels[keep].astype(np.int8)))

    if not parts:
        raise InputError(
            f"no digit images (labels 0-9) in {description}; the files hold only letters or no images"
        )

    images = np.concatenate([part[2] for part in parts])
    digits = np.concatenate([part[3] for part in parts])
    writer_index = np.concatenate(
        [np.full(len(part[3]), writer_positions[part[0]], dtype=np.int32) for part in parts]
    )
    split = np.concatenate([np.full(len(part[3]), part[1], dtype=np.int8) for part in parts])
    logger.info("loaded %d digit images of %d writers", len(digits), len(writer_positions))
    return FemnistDataset(
        writers=tuple(writer_positions),
        images=images,
        digits=digits,
        writer_index=writer_index,
        split=split,
        fingerprint=fingerprint,
        source=description,
    )


def _to_ink(pixels: np.ndarray) -> np.ndarray:
    """Convert float pixels with 1.0 = background to uint8 ink (0 = background)."""
    return np.rint((1.0 - pixels) * 255.0).astype(np.uint8)


def _validate_writer_arrays(path: Path, writer: str, pixels: np.ndarray, labels: np.ndarray) -> None:
    where = f"{str(path)!r}, writer {writer!r}"
    if pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"wrong pixel shape {pixels.shape} in {where}; expected (n, 28, 28)")
    if labels.shape != (pixels.shape[0],):
        raise InputError(
            f"label shape {labels.shape} does not match {pixels.shape[0]} images in {where}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LEAF_LABEL):
        raise InputError(
            f"labels outside 0-{MAX_LEAF_LABEL} in {where} (found {labels.min()}..{labels.max()}); "
            "the file is not FEMNIST"
        )
    if not np.isfinite(pixels).all():
        raise InputError(f"NaN or infinite pixel values in {where}; the file is damaged, download it again")
    if pixels.size and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise InputError(
            f"pixel values outside [0, 1] in {where} (found {pixels.min():.3g}..{pixels.max():.3g}); "
            "expected FEMNIST floats with 1.0 = background"
        )


def _read_hdf5(path: Path):
    """Yield (writer, pixels float32 (n, 28, 28), labels int64 (n,)) from a TFF-layout HDF5 file."""
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(
            f"cannot read HDF5 file {str(path)!r} ({error}); it is truncated or not HDF5, download it again"
        ) from None
    with handle:
        examples = handle.get("examples")
        if not isinstance(examples, h5py.Group):
            raise InputError(
                f"HDF5 file {str(path)!r} has no 'examples' group; expected TensorFlow Federated's "
                "EMNIST layout examples/<writer>/pixels and examples/<writer>/label"
            )
        for writer in examples:
            group = examples[writer]
            if "pixels" not in group or "label" not in group:
                raise InputError(
                    f"writer {writer!r} in {str(path)!r} lacks 'pixels' or 'label'; the file is not in "
                    "TensorFlow Federated's EMNIST layout"
                )
            try:
                pixels = np.asarray(group["pixels"][()], dtype=np.float32)
                labels = np.asarray(group["label"][()], dtype=np.int64)
            except (OSError, ValueError, TypeError) as error:
                raise InputError(
                    f"cannot read writer {writer!r} from {str(path)!r} ({error}); the file is damaged, "
                    "download it again"
                ) from None
            _validate_writer_arrays(path, writer, pixels, labels)
            yield writer, pixels, labels


def _read_leaf_json(path: Path):
    """Yield (writer, pixels float32 (n, 28, 28), labels int64 (n,)) from a LEAF JSON shard."""
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"cannot read LEAF JSON file {str(path)!r} ({error}); it is truncated or not JSON"
        ) from None

    user_data = document.get("user_data") if isinstance(document, dict) else None
    if not isinstance(user_data, dict):
        raise InputError(
            f"LEAF JSON file {str(path)!r} has no 'user_data' object; expected LEAF's layout "
            '{"users": [...], "user_data": {writer: {"x": [...], "y": [...]}}}'
        )
    for writer, record in user_data.items():
        if not isinstance(record, dict) or "x" not in record or "y" not in record:
            raise InputError(f"writer {writer!r} in {str(path)!r} lacks 'x' or 'y'")
        try:
            flat = np.asarray(record["x"], dtype=np.float32)
            labels = np.asarray(record["y"], dtype=np.int64)
        except (TypeError, ValueError) as error:
            raise InputError(f"writer {writer!r} in {str(path)!r} has malformed x or y ({error})") from None
        if flat.ndim != 2 or flat.shape[1] != IMAGE_SIZE * IMAGE_SIZE:
            raise InputError(
                f"wrong pixel shape {flat.shape} for writer {writer!r} in {str(path)!r}; "
                "expected rows of 784 values"
            )
        pixels = flat.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        _validate_writer_arrays(path, writer, pixels, labels)
        yield writer, pixels, labels


_CACHE_ARRAYS = ("images", "digits", "writer_index", "split")


def _write_cache(dataset: FemnistDataset, folder: Path) -> None:
    """Write the arrays into a temporary folder, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        for name in _CACHE_ARRAYS:
            np.save(staging / f"{name}.npy", getattr(dataset, name))
        meta = {"format": CACHE_FORMAT_VERSION, "writers": list(dataset.writers), "count": len(dataset.digits)}
        (staging / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process wrote the same cache first; its copy is equivalent.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("cached dataset arrays in %s", folder)


def _read_cache(folder: Path, fingerprint: str, description: str) -> FemnistDataset:
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != CACHE_FORMAT_VERSION:
        raise ValueError(f"cache format {meta.get('format')} is not {CACHE_FORMAT_VERSION}")
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _CACHE_ARRAYS}
    if any(len(array) != meta["count"] for array in arrays.values()):
        raise ValueError("cached arrays have inconsistent lengths")
    # The small per-image arrays are read into memory; the images stay memory-mapped.
    return FemnistDataset(
        writers=tuple(meta["writers"]),
        images=arrays["images"],
        digits=np.array(arrays["digits"]),
        writer_index=np.array(arrays["writer_index"]),
        split=np.array(arrays["split"]),
        fingerprint=fingerprint,
        source=description,
    )


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
