"""Real data and a prepared cache folder for the app tests (tests/test_app.py, tests/test_browser.py).

Clustering all ten digits, two UMAP maps and one DCGAN epoch take about a minute on two CPU cores.
`prepare_app_data` does that work once per test process, through the engine, and both test files
read the result. It is a plain function, not a conftest fixture, so that the engine tests' conftest
stays theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.clustering import DEFAULT_K
from engine.dataset import DIGITS
from engine.dcgan import MIN_TRAINING_IMAGES, DCGANConfig
from engine.settings import DATA_ENV_VAR
from engine.studio import Studio

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAP_DIGITS = (3, 5)  # digits whose UMAP map is computed ahead, so the Clusters page opens at once


@dataclass(frozen=True)
class AppData:
    """A data folder, a cache with clusterings, maps and one model, and writers chosen for the tests."""

    data_dir: Path
    cache_dir: Path
    studio: Studio
    complete_writer: str  # has all ten digits
    sparse_writer: str  # has at least four digits and misses others
    trained_digit: int  # a digit that sparse_writer misses; the model chosen to fill it is trained

    def environment(self) -> dict[str, str]:
        """Return the environment variables that point the app at this data and cache, on the CPU."""
        return {
            "FEMNIST_DATA": str(self.data_dir),
            "FEMNIST_CACHE": str(self.cache_dir),
            "FEMNIST_DEVICE": "cpu",
        }


_prepared: AppData | None = None


def femnist_data_dir() -> Path:
    """Return $FEMNIST_DATA, else ../shared/femnist next to the project root."""
    configured = os.environ.get(DATA_ENV_VAR)
    return Path(configured).expanduser().absolute() if configured else PROJECT_ROOT.parent / "shared" / "femnist"


def prepare_app_data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    """Return the prepared data, preparing it in a new temporary cache on the first call."""
    global _prepared
    if _prepared is not None:
        return _prepared

    data_dir = femnist_data_dir()
    if not data_dir.is_dir():
        pytest.skip(f"FEMNIST data folder {data_dir} not found; set {DATA_ENV_VAR}")
    cache_dir = tmp_path_factory.mktemp("app-cache")
    studio = Studio(data_dir, cache_dir, device="cpu")
    dataset = studio.dataset
    studio.all_clusterings(DEFAULT_K)
    for digit in MAP_DIGITS:
        studio.umap(digit, DEFAULT_K)

    complete_writer = next(writer for writer, row in zip(dataset.writers, dataset.counts) if (row > 0).all())
    sparse_writer, trained_digit = cheapest_missing_cell(studio)
    choice = studio.choose_cluster(sparse_writer, trained_digit, DEFAULT_K)
    studio.train_model(trained_digit, choice.cluster, DEFAULT_K, DCGANConfig(epochs=1))

    _prepared = AppData(data_dir, cache_dir, studio, complete_writer, sparse_writer, trained_digit)
    return _prepared


def cheapest_missing_cell(studio: Studio) -> tuple[str, int]:
    """Return an empty cell (writer, digit) of a writer with at least four digits whose chosen
    cluster has the fewest images, so that its one-epoch model trains fastest."""
    dataset = studio.dataset
    clusterings = studio.all_clusterings(DEFAULT_K)
    best = None
    for writer, row in zip(dataset.writers, dataset.counts):
        present = int((row > 0).sum())
        if present < 4 or present == len(DIGITS):
            continue
        for digit in DIGITS:
            if row[digit] > 0:
                continue
            cluster = studio.choose_cluster(writer, digit, DEFAULT_K).cluster
            images = clusterings[digit].cluster_image_counts[cluster]
            if images >= MIN_TRAINING_IMAGES and (best is None or images < best[0]):
                best = (images, writer, digit)
    assert best is not None, "the data has no writer with an empty cell and at least four digits"
    return best[1], best[2]
