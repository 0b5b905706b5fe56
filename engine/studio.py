"""The engine's front door: one object that the CLI, the app, the job worker and the tests share.

A `Studio` ties a data folder to a cache folder. It loads the dataset once, and computes
clusterings, UMAP coordinates and DCGAN models on demand, caching each on disk under a key of the
data fingerprint and the settings that produced it:

    cache/datasets/<fingerprint>/                                   parsed arrays
    cache/clusters/<fingerprint>/<representation>/k<k>/digit<j>.npz clustering of digit j
    cache/clusters/<fingerprint>/<representation>/k<k>/digit<j>-umap.npy
    cache/models/<fingerprint>/<representation>/k<k>/digit<j>-cluster<c>.pt

Writer ids never reach a path: a dataset with a hidden cell has a fingerprint of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.clustering import (
    DEFAULT_K,
    DigitClustering,
    fit_digit_clustering,
    load_clustering,
    save_clustering,
    umap_embedding,
    validate_k,
)
from engine.completion import ClusterChoice, choose_cluster
from engine.dataset import DIGITS, FemnistDataset, load_dataset, validate_digit
from engine.dcgan import (
    DCGANCheckpoint,
    DCGANConfig,
    EpochProgress,
    MIN_TRAINING_IMAGES,
    generate,
    load_checkpoint,
    train_dcgan,
)
from engine.errors import InputError
from engine.settings import resolve_cache_dir, resolve_data_dir, select_device
from engine.style import DEFAULT_REPRESENTATION, validate_representation

logger = logging.getLogger(__name__)

# Noise truncation used when filling a cell; see `engine.dcgan.generate` and docs/quality.md.
DEFAULT_TRUNCATION: float | None = None


# Random image sets placed per consistency report, and their seed.
CONSISTENCY_SET_COUNT = 200
CONSISTENCY_SEED = 0


@dataclass(frozen=True)
class ConsistencyReport:
    """Share of images placed in the chosen cluster, for generated images and the cluster's real ones.

    The per-image figures place each image alone (nearest centroid to its style vector). The set
    figures place random sets of `set_size` images by the mean of their style vectors, the way a
    writer's cell is clustered. `set_size` is the median cell size of the digit's writers.
    """

    cluster: int
    generated_in_cluster: float
    generated_count: int
    real_in_cluster: float
    real_count: int
    generated_placement: list[int]  # images placed in each cluster, (k,)
    set_size: int
    generated_sets_in_cluster: float
    real_sets_in_cluster: float

    def to_dict(self) -> dict:
        """Return the report in plain types."""
        return {
            "cluster": self.cluster,
            "generated_in_cluster": round(self.generated_in_cluster, 4),
            "generated_count": self.generated_count,
            "real_in_cluster": round(self.real_in_cluster, 4),
            "real_count": self.real_count,
            "generated_placement": self.generated_placement,
            "set_size": self.set_size,
            "generated_sets_in_cluster": round(self.generated_sets_in_cluster, 4),
            "real_sets_in_cluster": round(self.real_sets_in_cluster, 4),
        }


@dataclass
class FillResult:
    """Generated images for one cell with the explanation and the checks behind them."""

    writer: str
    digit: int
    images: np.ndarray  # uint8 (n, 28, 28), ink convention
    choice: ClusterChoice
    consistency: ConsistencyReport
    model_path: Path
    trained_now: bool
    hidden: bool
    real_images: np.ndarray = field(repr=False)  # the writer's real X(i, j), even when hidden

    def to_dict(self) -> dict:
        """Return everything but the pixels in plain types."""
        return {
            "writer": self.writer,
            "digit": self.digit,
            "generated": int(len(self.images)),
            "hidden": self.hidden,
            "real_images_of_cell": int(len(self.real_images)),
            "choice": self.choice.to_dict(),
            "consistency": self.consistency.to_dict(),
            "model": str(self.model_path),
            "trained_now": self.trained_now,
        }


class Studio:
    """Data, caches and models of one FEMNIST folder."""

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: str | None = None,
        representation: str = DEFAULT_REPRESENTATION,
    ):
        self.data_dir = resolve_data_dir(data_dir)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.device_name = device
        self.representation = validate_representation(representation)
        self._clusterings: dict[tuple[str, int, int], DigitClustering] = {}
        self._lock = threading.Lock()

    @cached_property
    def dataset(self) -> FemnistDataset:
        """The full dataset, parsed once and then read from the cache."""
        return load_dataset(self.data_dir, self.cache_dir)

    @cached_property
    def device(self) -> torch.device:
        """The torch device for training and generation."""
        return select_device(self.device_name)

    def dataset_for(self, writer: str | None = None, digit: int | None = None, hide: bool = False) -> FemnistDataset:
        """Return the full dataset, or with `hide` a copy without X(writer, digit)."""
        if not hide:
            return self.dataset
        return self.dataset.without_cell(writer, digit)

    # Clusters -------------------------------------------------------------------------------

    def _cluster_folder(self, dataset: FemnistDataset, k: int) -> Path:
        return self.cache_dir / "clusters" / dataset.fingerprint / self.representation / f"k{k}"

    def clustering(self, digit: int, k: int = DEFAULT_K, dataset: FemnistDataset | None = None) -> DigitClustering:
        """Return the clustering of `digit`, from memory, the disk cache, or fitted now."""
        dataset = dataset or self.dataset
        digit = validate_digit(digit)
        k = validate_k(k)
        key = (dataset.fingerprint, digit, k)
        with self._lock:
            if key in self._clusterings:
                return self._clusterings[key]
        path = self._cluster_folder(dataset, k) / f"digit{digit}.npz"
        clustering = None
        if path.is_file():
            try:
                clustering = load_clustering(path)
            except (OSError, ValueError, KeyError) as error:
                logger.warning("cached clustering %s is unreadable (%s); fitting again", path, error)
        if clustering is None:
            clustering = fit_digit_clustering(dataset, digit, k, self.representation)
            save_clustering(clustering, path)
            logger.info("saved clustering of digit %d to %s", digit, path)
        with self._lock:
            self._clusterings[key] = clustering
        return clustering

    def clustering_path(self, digit: int, k: int = DEFAULT_K, dataset: FemnistDataset | None = None) -> Path:
        """Return where the clustering of `digit` is cached."""
        return self._cluster_folder(dataset or self.dataset, validate_k(k)) / f"digit{validate_digit(digit)}.npz"

    def all_clusterings(self, k: int = DEFAULT_K, dataset: FemnistDataset | None = None) -> dict[int, DigitClustering]:
        """Return the clusterings of all ten digits."""
        return {digit: self.clustering(digit, k, dataset) for digit in DIGITS}

    def umap(self, digit: int, k: int = DEFAULT_K) -> np.ndarray:
        """Return 2-D UMAP coordinates (W, 2) of the writers of `digit`, in the clustering's order."""
        clustering = self.clustering(digit, k)
        path = self._cluster_folder(self.dataset, clustering.k) / f"digit{digit}-umap.npy"
        if path.is_file():
            try:
                coordinates = np.load(path)
                if coordinates.shape == (len(clustering.writers), 2):
                    return coordinates
            except (OSError, ValueError) as error:
                logger.warning("cached UMAP %s is unreadable (%s); computing again", path, error)
        coordinates = umap_embedding(clustering)
        temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        np.save(temporary, coordinates)
        os.replace(temporary, path)
        return coordinates

    def cluster_images(self, digit: int, cluster: int, k: int = DEFAULT_K, dataset: FemnistDataset | None = None) -> np.ndarray:
        """Return every image of `digit` by writers in `cluster`, uint8 (n, 28, 28)."""
        dataset = dataset or self.dataset
        clustering = self.clustering(digit, k, dataset)
        cluster = clustering.validate_cluster(cluster)
        members = {dataset.writer_position(writer) for writer in clustering.members(cluster)}
        indices = dataset.digit_indices(digit)
        chosen = indices[np.isin(dataset.writer_index[indices], list(members))]
        return np.asarray(dataset.images[chosen])

    def choose_cluster(self, writer: str, digit: int, k: int = DEFAULT_K, hide: bool = False) -> ClusterChoice:
        """Explain which cluster of `digit` fills X(writer, digit); see `engine.completion`."""
        digit = validate_digit(digit)
        dataset = self.dataset_for(writer, digit, hide)
        dataset.writer_position(writer)
        return choose_cluster(self.all_clusterings(k, dataset), writer, digit)

    # Models ---------------------------------------------------------------------------------

    def model_path(self, digit: int, cluster: int, k: int = DEFAULT_K, dataset: FemnistDataset | None = None) -> Path:
        """Return where the DCGAN of (digit, cluster) is saved."""
        dataset = dataset or self.dataset
        folder = self.cache_dir / "models" / dataset.fingerprint / self.representation / f"k{validate_k(k)}"
        return folder / f"digit{validate_digit(digit)}-cluster{int(cluster)}.pt"

    def train_model(
        self,
        digit: int,
        cluster: int,
        k: int = DEFAULT_K,
        config: DCGANConfig | None = None,
        dataset: FemnistDataset | None = None,
        on_epoch: Callable[[EpochProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> DCGANCheckpoint:
        """Train the DCGAN of (digit, cluster) on that cluster's images and save its checkpoint."""
        dataset = dataset or self.dataset
        config = config or DCGANConfig()
        clustering = self.clustering(digit, k, dataset)
        cluster = clustering.validate_cluster(cluster)
        images = self.cluster_images(digit, cluster, k, dataset)
        if len(images) < MIN_TRAINING_IMAGES:
            raise InputError(
                f"cluster {cluster} of digit {digit} has {len(images)} images, fewer than the "
                f"{MIN_TRAINING_IMAGES} needed to train a DCGAN; choose a smaller k or another cluster"
            )
        metadata = {
            "digit": digit,
            "cluster": cluster,
            "k": clustering.k,
            "representation": clustering.representation,
            "fingerprint": dataset.fingerprint,
            "writers": len(clustering.members(cluster)),
            "hidden_cells": [f"{writer}:{hidden}" for writer, hidden in dataset.hidden_cells],
            "device": str(self.device),
        }
        path = self.model_path(digit, cluster, k, dataset)
        logger.info("training DCGAN for digit %d cluster %d on %d images (%s)", digit, cluster, len(images), self.device)
        return train_dcgan(images, config, self.device, path, metadata, on_epoch, should_stop)

    def load_model(self, digit: int, cluster: int, k: int = DEFAULT_K, dataset: FemnistDataset | None = None) -> DCGANCheckpoint | None:
        """Return the saved DCGAN of (digit, cluster), or None if none is saved."""
        path = self.model_path(digit, cluster, k, dataset)
        if not path.is_file():
            return None
        return load_checkpoint(path, self.device)

    def list_models(self, k: int | None = None) -> list[dict]:
        """List the saved models of the full dataset with their training settings."""
        root = self.cache_dir / "models" / self.dataset.fingerprint / self.representation
        rows = []
        for path in sorted(root.glob("k*/digit*-cluster*.pt")):
            try:
                checkpoint = load_checkpoint(path, "cpu")
            except InputError as error:
                rows.append({"path": str(path), "error": str(error)})
                continue
            if k is not None and checkpoint.metadata.get("k") != k:
                continue
            rows.append({
                "path": str(path),
                "digit": checkpoint.metadata.get("digit"),
                "cluster": checkpoint.metadata.get("cluster"),
                "k": checkpoint.metadata.get("k"),
                "epochs_done": checkpoint.epochs_done,
                "completed": checkpoint.completed,
                "images": checkpoint.image_count,
                "training_seconds": round(checkpoint.training_seconds, 1),
                "created_at": checkpoint.created_at,
                "config": checkpoint.config.to_dict(),
            })
        return rows

    # Checks and filling ---------------------------------------------------------------------

    def consistency(self, clustering: DigitClustering, cluster: int, generated: np.ndarray, dataset: FemnistDataset | None = None) -> ConsistencyReport:
        """Place generated images and the cluster's real images; report the share in `cluster`."""
        placed = clustering.place_images(generated)
        real = self.cluster_images(clustering.digit, cluster, clustering.k, dataset)
        real_placed = clustering.place_images(real)
        set_size = max(1, int(np.median(clustering.image_counts)))
        generated_sets = clustering.place_image_sets(generated, set_size, CONSISTENCY_SET_COUNT, CONSISTENCY_SEED)
        real_sets = clustering.place_image_sets(real, set_size, CONSISTENCY_SET_COUNT, CONSISTENCY_SEED)
        return ConsistencyReport(
            cluster=cluster,
            generated_in_cluster=_share(placed, cluster),
            generated_count=int(len(placed)),
            real_in_cluster=_share(real_placed, cluster),
            real_count=int(len(real_placed)),
            generated_placement=np.bincount(placed, minlength=clustering.k).astype(int).tolist(),
            set_size=set_size,
            generated_sets_in_cluster=_share(generated_sets, cluster),
            real_sets_in_cluster=_share(real_sets, cluster),
        )

    def fill(
        self,
        writer: str,
        digit: int,
        n: int = 64,
        k: int = DEFAULT_K,
        hide: bool = False,
        config: DCGANConfig | None = None,
        seed: int = 0,
        train_if_missing: bool = True,
        on_epoch: Callable[[EpochProgress], None] | None = None,
        truncation: float | None = DEFAULT_TRUNCATION,
    ) -> FillResult:
        """Fill X(writer, digit) with `n` generated images by cluster-GAN-cluster.

        With `hide`, the writer's own images of `digit` are left out of the clustering, the vote and
        the training images, so the result can be compared with them honestly. The model of the
        chosen cluster is trained first when it is missing and `train_if_missing` is set. A `config`
        that differs from the saved model's settings trains the model again with it.
        `truncation` is passed to `engine.dcgan.generate`.
        """
        digit = validate_digit(digit)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000:
            raise InputError(f"n must be 1-10000 images, got {n}")
        self.dataset.writer_position(writer)
        real_images = np.asarray(self.dataset.images[self.dataset.cell_indices(writer, digit)])
        dataset = self.dataset_for(writer, digit, hide)
        clusterings = self.all_clusterings(k, dataset)
        choice = choose_cluster(clusterings, writer, digit)

        path = self.model_path(digit, choice.cluster, k, dataset)
        checkpoint = self.load_model(digit, choice.cluster, k, dataset)
        if checkpoint is not None and config is not None and checkpoint.config != config:
            logger.info("saved model %s was trained with other settings; training again", path)
            checkpoint = None
        trained_now = False
        if checkpoint is None:
            if not train_if_missing:
                raise InputError(
                    f"no model for digit {digit} cluster {choice.cluster} yet; train it with "
                    f"`python -m engine train --digit {digit} --cluster {choice.cluster}`"
                )
            checkpoint = self.train_model(digit, choice.cluster, k, config, dataset, on_epoch)
            trained_now = True

        images = generate(checkpoint, n, seed=seed, device=self.device, truncation=truncation)
        report = self.consistency(clusterings[digit], choice.cluster, images, dataset)
        return FillResult(
            writer=writer,
            digit=digit,
            images=images,
            choice=choice,
            consistency=report,
            model_path=path,
            trained_now=trained_now,
            hidden=hide,
            real_images=real_images,
        )


def _share(placed: np.ndarray, cluster: int) -> float:
    """Return the share of `placed` equal to `cluster`, 0.0 for an empty array."""
    return float(np.mean(placed == cluster)) if len(placed) else 0.0
