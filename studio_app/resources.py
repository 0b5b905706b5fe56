"""Engine objects held once per server process, and the data the pages derive from them.

A `Studio` parses the dataset and keeps every clustering it computes in memory, so it is a
`st.cache_resource` shared by all sessions and pages: switching pages reuses it instead of loading
the data or clustering again. Small derived results (UMAP tables, image samples, generated images)
are `st.cache_data`, so each rerun reads them from memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from engine import jobs
from engine.clustering import DEFAULT_K
from engine.completion import ClusterChoice, choose_cluster
from engine.dataset import FemnistDataset
from engine.dcgan import load_checkpoint
from engine.settings import CACHE_ENV_VAR, DATA_ENV_VAR, DEFAULT_CACHE_DIR, DEVICE_ENV_VAR
from engine.studio import FillResult, Studio
from engine.style import DEFAULT_REPRESENTATION

# Session-state keys that the sidebar and the data set-up screen write.
DATA_DIR_KEY = "data_dir"  # a folder chosen or downloaded in the app, used instead of $FEMNIST_DATA
REPRESENTATION_KEY = "representation"

SAMPLE_SEED = 0  # seed of the random image samples shown per cluster, so reruns show the same images


@dataclass(frozen=True)
class StudioSettings:
    """Everything that selects a Studio; the cache key of `load_studio`."""

    data_dir: str | None  # absolute path, or None when no folder is configured
    cache_dir: str  # absolute path
    device: str | None  # torch device name, or None for $FEMNIST_DEVICE's default (CUDA when present)
    representation: str  # style representation of the clusterings


def current_settings() -> StudioSettings:
    """Return the settings of this session: the chosen or downloaded data folder, else the environment."""
    data_dir = st.session_state.get(DATA_DIR_KEY) or os.environ.get(DATA_ENV_VAR) or None
    cache_dir = os.environ.get(CACHE_ENV_VAR) or str(DEFAULT_CACHE_DIR)
    return StudioSettings(
        data_dir=_absolute(data_dir) if data_dir else None,
        cache_dir=_absolute(cache_dir),
        device=os.environ.get(DEVICE_ENV_VAR) or None,
        representation=st.session_state.get(REPRESENTATION_KEY, DEFAULT_REPRESENTATION),
    )


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


@st.cache_resource(show_spinner="Loading the FEMNIST dataset...")
def load_studio(settings: StudioSettings) -> Studio:
    """Build the Studio of `settings` and load its dataset and device.

    Raises InputError for a missing or unreadable data folder or an unavailable device. Streamlit
    does not cache a raised error, so fixing the folder and rerunning loads it.
    """
    studio = Studio(settings.data_dir, settings.cache_dir, settings.device, settings.representation)
    studio.dataset  # parse or memory-map the data now, so a bad folder fails here and not on a page
    studio.device
    return studio


def current_studio() -> Studio:
    """Return the Studio of this session's settings, from the process-wide cache."""
    return load_studio(current_settings())


@st.cache_resource
def job_store(cache_dir: str) -> jobs.JobStore:
    """Return the job database of a cache folder; one per process, because opening it writes the schema."""
    return jobs.open_job_store(cache_dir)


def dataset_view(settings: StudioSettings, writer: str, digit: int, hide: bool) -> FemnistDataset:
    """Return the full dataset, or with `hide` the copy without X(writer, digit)."""
    if not hide:
        return load_studio(settings).dataset
    return _dataset_without_cell(settings, writer, digit)


@st.cache_resource(max_entries=4)
def _dataset_without_cell(settings: StudioSettings, writer: str, digit: int) -> FemnistDataset:
    # A resource, not data: the copy contains every image but one cell's, and the Studio keeps its
    # clusterings under the copy's fingerprint. `max_entries` bounds the copies kept in memory.
    return load_studio(settings).dataset_for(writer, digit, hide=True)


@st.cache_data(show_spinner=False, max_entries=64)
def umap_points(settings: StudioSettings, digit: int, k: int = DEFAULT_K) -> pd.DataFrame:
    """Return one row per writer of `digit`: writer, UMAP x and y, cluster, image count."""
    studio = load_studio(settings)
    clustering = studio.clustering(digit, k)
    coordinates = studio.umap(digit, k)  # (W, 2)
    return pd.DataFrame({
        "writer": list(clustering.writers),
        "x": coordinates[:, 0],
        "y": coordinates[:, 1],
        "cluster": clustering.labels.astype(int),
        "images": clustering.image_counts.astype(int),
    })


@st.cache_data(show_spinner=False, max_entries=256)
def cluster_sample(
    settings: StudioSettings, digit: int, cluster: int, k: int, count: int, hidden_cell: tuple[str, int] | None = None
) -> np.ndarray:
    """Return up to `count` random real images (n, 28, 28) of `digit` from writers in `cluster`.

    `hidden_cell` (writer, digit) samples from the dataset without that cell.
    """
    studio = load_studio(settings)
    dataset = _dataset_without(settings, hidden_cell)
    images = studio.cluster_images(digit, cluster, k, dataset)
    if len(images) <= count:
        return images
    chosen = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(images), size=count, replace=False))
    return images[chosen]


@st.cache_data(show_spinner=False, max_entries=64)
def cluster_placement(
    settings: StudioSettings, digit: int, cluster: int, k: int, hidden_cell: tuple[str, int] | None = None
) -> list[int]:
    """Return how many real images of `cluster` the nearest-centroid rule places in each cluster (k,)."""
    studio = load_studio(settings)
    dataset = _dataset_without(settings, hidden_cell)
    clustering = studio.clustering(digit, k, dataset)
    placed = clustering.place_images(studio.cluster_images(digit, cluster, k, dataset))
    return np.bincount(placed, minlength=clustering.k).astype(int).tolist()


def _dataset_without(settings: StudioSettings, hidden_cell: tuple[str, int] | None) -> FemnistDataset:
    if hidden_cell is None:
        return load_studio(settings).dataset
    writer, digit = hidden_cell
    return _dataset_without_cell(settings, writer, digit)


def cell_choice(settings: StudioSettings, writer: str, digit: int, k: int, hide: bool) -> ClusterChoice:
    """Return the cluster-choice explanation of X(writer, digit).

    Not cached: the Studio keeps the clusterings in memory, and the vote itself takes milliseconds.
    """
    studio = load_studio(settings)
    dataset = dataset_view(settings, writer, digit, hide)
    dataset.writer_position(writer)
    return choose_cluster(studio.all_clusterings(k, dataset), writer, digit)


def model_file(settings: StudioSettings, writer: str, digit: int, cluster: int, k: int, hide: bool) -> Path:
    """Return where the model of (digit, cluster) for the full or hidden-cell dataset is saved."""
    dataset = dataset_view(settings, writer, digit, hide)
    return load_studio(settings).model_path(digit, cluster, k, dataset)


@st.cache_data(show_spinner=False, max_entries=32)
def fill_cell(
    settings: StudioSettings, writer: str, digit: int, k: int, hide: bool, n: int, seed: int, model_version: int
) -> FillResult:
    """Generate `n` images for X(writer, digit) with the saved model, and never train.

    `model_version` is the checkpoint's modification time in nanoseconds. It serves only as part
    of the cache key, so a checkpoint rewritten by a training job gives new images.
    """
    return load_studio(settings).fill(writer, digit, n=n, k=k, hide=hide, seed=seed, train_if_missing=False)


@st.cache_data(show_spinner=False, max_entries=128)
def latest_samples(checkpoint_path: str, modified_ns: int) -> np.ndarray:
    """Return the fixed-noise samples of the checkpoint's last epoch, uint8 (64, 28, 28).

    `modified_ns` keys the cache, so a checkpoint that training rewrites is read again.
    """
    checkpoint = load_checkpoint(checkpoint_path, "cpu")
    return checkpoint.sample_grids[-1]


def trained_models(settings: StudioSettings) -> list[dict]:
    """List the saved models of the dataset with their training settings (`Studio.list_models`)."""
    studio = load_studio(settings)
    root = studio.cache_dir / "models" / studio.dataset.fingerprint / studio.representation
    signature = tuple(sorted((str(path), path.stat().st_mtime_ns) for path in root.glob("k*/digit*-cluster*.pt")))
    return _list_models(settings, signature)


@st.cache_data(show_spinner=False, max_entries=16)
def _list_models(settings: StudioSettings, signature: tuple) -> list[dict]:
    # `signature` (path, mtime) of every model file keys the cache, because list_models loads each checkpoint.
    return load_studio(settings).list_models()


@st.cache_data(show_spinner=False, max_entries=128)
def checkpoint_summary(checkpoint_path: str, modified_ns: int) -> dict:
    """Return epochs done, epochs requested and completeness of a checkpoint, keyed by its mtime."""
    checkpoint = load_checkpoint(checkpoint_path, "cpu")
    return {
        "epochs_done": checkpoint.epochs_done,
        "epochs": checkpoint.config.epochs,
        "completed": checkpoint.completed,
        "images": checkpoint.image_count,
    }
