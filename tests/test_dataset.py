"""Tests of engine.dataset on the real FEMNIST files and on broken copies built from them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.dataset import FemnistDataset, load_dataset, validate_digit
from engine.errors import InputError

TRAIN_FILE = "femnist_digits_train.h5"
TEST_FILE = "femnist_digits_test.h5"
LEAF_TRAIN = "leaf/all_data_1_niid_05_keep_0_train_9.json"
LEAF_TEST = "leaf/all_data_1_niid_05_keep_0_test_9.json"


def count_h5_images(path: Path) -> tuple[set[str], int]:
    with h5py.File(path, "r") as handle:
        writers = set(handle["examples"])
        images = sum(handle["examples"][writer]["label"].shape[0] for writer in writers)
    return writers, images


@pytest.fixture(scope="module")
def dataset(data_dir: Path) -> FemnistDataset:
    return load_dataset(data_dir)


def copy_writers(source: Path, target: Path, writers: int = 3, transform=None) -> None:
    """Write an HDF5 file with the first `writers` writers of `source`, optionally transformed."""
    with h5py.File(source, "r") as original, h5py.File(target, "w") as copy:
        for writer in list(original["examples"])[:writers]:
            pixels = original["examples"][writer]["pixels"][()]
            labels = original["examples"][writer]["label"][()]
            if transform is not None:
                pixels, labels = transform(pixels, labels)
            group = copy.create_group(f"examples/{writer}")
            group["pixels"] = pixels
            group["label"] = labels


def small_h5_folder(data_dir: Path, folder: Path, transform=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy_writers(data_dir / TRAIN_FILE, folder / "sample_train.h5", transform=transform)
    return folder


def test_summary_counts_match_files(dataset: FemnistDataset, data_dir: Path) -> None:
    train_writers, train_images = count_h5_images(data_dir / TRAIN_FILE)
    test_writers, test_images = count_h5_images(data_dir / TEST_FILE)
    summary = dataset.summary()
    assert summary["writers"] == len(train_writers | test_writers)
    assert summary["images"] == train_images + test_images
    assert summary["images_per_split"] == {"train": train_images, "test": test_images}


def test_summary_empty_cells_match_counts(dataset: FemnistDataset) -> None:
    summary = dataset.summary()
    present = dataset.counts > 0
    assert summary["empty_cells"] == int((~present).sum())
    assert summary["writers_with_all_digits"] == int(present.all(axis=1).sum())
    assert sum(summary["images_per_digit"].values()) == summary["images"]


def test_pixels_become_uint8_ink(dataset: FemnistDataset, data_dir: Path) -> None:
    with h5py.File(data_dir / TRAIN_FILE, "r") as handle:
        writer = next(iter(handle["examples"]))
        pixels = handle["examples"][writer]["pixels"][()]
        labels = handle["examples"][writer]["label"][()]
    indices = dataset.cell_indices(writer, int(labels[0]))
    expected = np.rint((1.0 - pixels[labels == labels[0]]) * 255).astype(np.uint8)
    assert dataset.images.dtype == np.uint8
    assert np.array_equal(np.asarray(dataset.images[indices])[: len(expected)], expected)


def test_cell_merges_train_and_test(dataset: FemnistDataset) -> None:
    both = np.flatnonzero(np.bincount(dataset.writer_index[dataset.split == 0], minlength=len(dataset.writers))
                          * np.bincount(dataset.writer_index[dataset.split == 1], minlength=len(dataset.writers)))
    writer = dataset.writers[both[0]]
    digit = int(dataset.digits[(dataset.writer_index == both[0]) & (dataset.split == 1)][0])
    splits = set(dataset.split[dataset.cell_indices(writer, digit)].tolist())
    assert splits == {0, 1}


def test_leaf_json_keeps_digits_only(data_dir: Path) -> None:
    leaf = load_dataset(data_dir / "leaf")
    expected = 0
    for name in (LEAF_TRAIN, LEAF_TEST):
        document = json.loads((data_dir / name).read_text())
        expected += sum(sum(1 for label in record["y"] if label < 10) for record in document["user_data"].values())
    assert len(leaf.digits) == expected
    assert int(leaf.digits.max()) <= 9


def test_leaf_train_test_folders(data_dir: Path, tmp_path: Path) -> None:
    for split, name in (("train", LEAF_TRAIN), ("test", LEAF_TEST)):
        (tmp_path / split).mkdir()
        shutil.copy(data_dir / name, tmp_path / split / "shard.json")
    flat = load_dataset(data_dir / "leaf")
    nested = load_dataset(tmp_path)
    assert nested.summary()["images_per_split"] == flat.summary()["images_per_split"]


def test_cache_second_load_is_memory_mapped(data_dir: Path, tmp_path: Path) -> None:
    first = load_dataset(data_dir, tmp_path)
    second = load_dataset(data_dir, tmp_path)
    assert isinstance(second.images, np.memmap)
    assert np.array_equal(first.images, second.images)
    assert second.writers == first.writers


def test_cache_keyed_by_file_change(data_dir: Path, tmp_path: Path) -> None:
    folder = small_h5_folder(data_dir, tmp_path / "data")
    before = load_dataset(folder, tmp_path / "cache").fingerprint
    path = folder / "sample_train.h5"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = load_dataset(folder, tmp_path / "cache").fingerprint
    assert before != after


def test_missing_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_folder_without_files_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no FEMNIST files"):
        load_dataset(tmp_path)


def test_truncated_hdf5_names_file(data_dir: Path, tmp_path: Path) -> None:
    data = (data_dir / TEST_FILE).read_bytes()
    (tmp_path / "cut_test.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut_test.h5"):
        load_dataset(tmp_path)


def test_non_hdf5_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "bogus_train.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="bogus_train.h5"):
        load_dataset(tmp_path)


def test_hdf5_without_examples_rejected(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other_train.h5", "w") as handle:
        handle["data"] = np.zeros(3)
    with pytest.raises(InputError, match="'examples'"):
        load_dataset(tmp_path)


def test_truncated_json_names_file(data_dir: Path, tmp_path: Path) -> None:
    text = (data_dir / LEAF_TEST).read_text()
    (tmp_path / "cut_test.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match="cut_test.json"):
        load_dataset(tmp_path)


def test_json_without_user_data_rejected(tmp_path: Path) -> None:
    (tmp_path / "shard_train.json").write_text(json.dumps({"users": []}))
    with pytest.raises(InputError, match="user_data"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda pixels, labels: (pixels.reshape(len(pixels), -1), labels), "wrong pixel shape"),
        (lambda pixels, labels: (pixels, labels[:-1]), "label shape"),
        (lambda pixels, labels: (pixels, labels + 70), "labels outside 0-61"),
        (lambda pixels, labels: (pixels * 2.0, labels), r"outside \[0, 1\]"),
        (lambda pixels, labels: (np.where(pixels < 0.5, np.nan, pixels), labels), "NaN"),
    ],
    ids=["flat-pixels", "short-labels", "label-70", "pixels-above-1", "nan"],
)
def test_bad_arrays_rejected(data_dir: Path, tmp_path: Path, transform, message: str) -> None:
    folder = small_h5_folder(data_dir, tmp_path, transform)
    with pytest.raises(InputError, match=message):
        load_dataset(folder)


def test_letters_only_rejected(data_dir: Path, tmp_path: Path) -> None:
    document = json.loads((data_dir / LEAF_TEST).read_text())
    for record in document["user_data"].values():
        keep = [i for i, label in enumerate(record["y"]) if label >= 10]
        record["x"] = [record["x"][i] for i in keep]
        record["y"] = [record["y"][i] for i in keep]
    (tmp_path / "letters_test.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match="no digit images"):
        load_dataset(tmp_path)


def test_unknown_writer_names_example(dataset: FemnistDataset) -> None:
    with pytest.raises(InputError, match=r"writer 'f9999_99' not found; \d+ writers, e.g. f"):
        dataset.cell_indices("f9999_99", 3)


@pytest.mark.parametrize("digit", [-1, 10, 11, 2.5, "3"])
def test_digit_out_of_range_rejected(digit) -> None:
    with pytest.raises(InputError, match="digit must be 0-9"):
        validate_digit(digit)


def test_without_cell_drops_only_that_cell(dataset: FemnistDataset) -> None:
    writer = dataset.writers[0]
    digit = dataset.digits_of(writer)[0]
    hidden = dataset.without_cell(writer, digit)
    assert hidden.cell_indices(writer, digit).size == 0
    assert len(hidden.digits) == len(dataset.digits) - dataset.counts[0, digit]
    assert hidden.fingerprint != dataset.fingerprint
    assert hidden.hidden_cells == ((writer, digit),)


def test_without_cell_rejects_empty_cell(dataset: FemnistDataset) -> None:
    position = int(np.flatnonzero((dataset.counts == 0).any(axis=1))[0])
    writer = dataset.writers[position]
    digit = int(np.flatnonzero(dataset.counts[position] == 0)[0])
    with pytest.raises(InputError, match="no images of digit"):
        dataset.without_cell(writer, digit)
