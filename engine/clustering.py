"""Per-digit clustering of writers by style, and placement of single images into those clusters.

For digit j every writer who has j gets a style vector: the mean of the features (`engine.style`)
of their images of j. The vectors are standardised where the representation requires it, reduced
with PCA and clustered with k-means. A single image, real or generated, is placed by the same
transform followed by the nearest centroid; that is the rule behind cluster consistency.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from engine.dataset import FemnistDataset, validate_digit
from engine.errors import InputError
from engine.style import feature_spec, image_features, validate_representation

logger = logging.getLogger(__name__)

DEFAULT_K = 7
MIN_K, MAX_K = 2, 20
PCA_COMPONENTS = 16
RANDOM_STATE = 0
CLUSTERING_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class DigitClustering:
    """Writers of one digit clustered by style, with the transform that places new images.

    Arrays: ``labels`` (W,) is the cluster of each writer in ``writers``. ``image_counts`` (W,) counts
    the digit's images per writer. ``vectors`` (W, D) are the writers' reduced style vectors, and
    ``centroids`` (k, D) the cluster centres. ``feature_mean``/``feature_scale`` (F,) are the
    standardisation, and ``pca_mean`` (F,) with ``pca_components`` (D, F) the reduction.
    """

    digit: int
    k: int
    representation: str
    fingerprint: str
    writers: tuple[str, ...]
    labels: np.ndarray
    image_counts: np.ndarray
    vectors: np.ndarray
    centroids: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    silhouette: float

    def cluster_of(self, writer: str) -> int | None:
        """Return the cluster of `writer`, or None when they have no image of this digit."""
        try:
            position = self.writers.index(writer)
        except ValueError:
            return None
        return int(self.labels[position])

    def members(self, cluster: int) -> list[str]:
        """Return the writers in `cluster`."""
        self.validate_cluster(cluster)
        return [writer for writer, label in zip(self.writers, self.labels) if label == cluster]

    def validate_cluster(self, cluster: int) -> int:
        """Return `cluster` as an int, or raise InputError unless it is 0..k-1."""
        if not isinstance(cluster, (int, np.integer)) or not 0 <= cluster < self.k:
            raise InputError(f"cluster must be 0-{self.k - 1} for k={self.k}, got {cluster}")
        return int(cluster)

    @property
    def cluster_sizes(self) -> list[int]:
        """Writers per cluster."""
        return np.bincount(self.labels, minlength=self.k).astype(int).tolist()

    @property
    def cluster_image_counts(self) -> list[int]:
        """Images of the digit per cluster."""
        return np.bincount(self.labels, weights=self.image_counts, minlength=self.k).astype(int).tolist()

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Map raw features (N, F) into the reduced style space (N, D)."""
        scaled = (features - self.feature_mean) / self.feature_scale
        return (scaled - self.pca_mean) @ self.pca_components.T

    def place_images(self, images: np.ndarray) -> np.ndarray:
        """Return the nearest cluster (N,) of each uint8 ink image (N, 28, 28)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        vectors = self.transform(image_features(images, self.representation))
        distances = ((vectors[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)  # (N, k)
        return distances.argmin(axis=1)

    def place_image_sets(self, images: np.ndarray, set_size: int, set_count: int, seed: int = 0) -> np.ndarray:
        """Return the cluster (set_count,) of random `set_size`-image subsets of `images`.

        Each subset is placed the way a writer is clustered: by the nearest centroid to the mean
        of its images' style vectors. Subsets are drawn without replacement within a subset.
        """
        if len(images) < set_size:
            return np.zeros(0, dtype=np.int64)
        vectors = self.transform(image_features(images, self.representation))  # (N, D)
        rng = np.random.default_rng(seed)
        members = np.stack([rng.choice(len(images), size=set_size, replace=False) for _ in range(set_count)])
        means = vectors[members].mean(axis=1)  # (set_count, D)
        distances = ((means[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1)

    def summary(self) -> dict:
        """Describe the clustering in plain types for the CLI and the app."""
        return {
            "digit": self.digit,
            "k": self.k,
            "representation": self.representation,
            "writers": len(self.writers),
            "cluster_sizes": self.cluster_sizes,
            "cluster_images": self.cluster_image_counts,
            "silhouette": round(float(self.silhouette), 4),
        }


def validate_k(k: int) -> int:
    """Return `k` as an int, or raise InputError unless it is within MIN_K..MAX_K."""
    if not isinstance(k, (int, np.integer)) or not MIN_K <= k <= MAX_K:
        raise InputError(f"k must be {MIN_K}-{MAX_K}, got {k}")
    return int(k)


def writer_style_features(dataset: FemnistDataset, digit: int, representation: str):
    """Return (writers, image counts (W,), mean raw features (W, F)) of the writers having `digit`."""
    indices = dataset.digit_indices(digit)
    features = image_features(dataset.images[indices], representation)  # (n, F)
    positions = dataset.writer_index[indices]
    present, inverse, counts = np.unique(positions, return_inverse=True, return_counts=True)
    sums = np.zeros((len(present), features.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, features)
    means = (sums / counts[:, None]).astype(np.float32)
    writers = tuple(dataset.writers[position] for position in present)
    return writers, counts, means


def fit_digit_clustering(
    dataset: FemnistDataset, digit: int, k: int = DEFAULT_K, representation: str = "combined"
) -> DigitClustering:
    """Cluster the writers of `digit` into `k` style clusters (k-means, fixed random_state)."""
    digit = validate_digit(digit)
    k = validate_k(k)
    representation = validate_representation(representation)
    writers, counts, features = writer_style_features(dataset, digit, representation)
    if len(writers) < k:
        raise InputError(
            f"digit {digit} has {len(writers)} writers, fewer than k={k} clusters; choose k <= {len(writers)}"
        )

    feature_mean = features.mean(axis=0)
    feature_scale = features.std(axis=0)
    feature_scale[feature_scale < 1e-6] = 1.0
    if not feature_spec(representation).standardise:
        feature_mean = np.zeros_like(feature_mean)
        feature_scale = np.ones_like(feature_scale)
    scaled = (features - feature_mean) / feature_scale

    components = min(PCA_COMPONENTS, len(writers) - 1, scaled.shape[1])
    pca = PCA(n_components=components, random_state=RANDOM_STATE).fit(scaled)
    vectors = pca.transform(scaled).astype(np.float32)
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=RANDOM_STATE).fit(vectors)
    labels = kmeans.labels_.astype(np.int64)
    silhouette = float(silhouette_score(vectors, labels)) if len(set(labels)) > 1 else 0.0
    logger.info(
        "clustered %d writers of digit %d into k=%d (%s); silhouette %.3f",
        len(writers), digit, k, representation, silhouette,
    )
    return DigitClustering(
        digit=digit,
        k=k,
        representation=representation,
        fingerprint=dataset.fingerprint,
        writers=writers,
        labels=labels,
        image_counts=counts.astype(np.int64),
        vectors=vectors,
        centroids=kmeans.cluster_centers_.astype(np.float32),
        feature_mean=feature_mean.astype(np.float32),
        feature_scale=feature_scale.astype(np.float32),
        pca_mean=pca.mean_.astype(np.float32),
        pca_components=pca.components_.astype(np.float32),
        silhouette=silhouette,
    )


_ARRAY_FIELDS = (
    "labels", "image_counts", "vectors", "centroids",
    "feature_mean", "feature_scale", "pca_mean", "pca_components",
)


def save_clustering(clustering: DigitClustering, path: Path) -> None:
    """Write the clustering to an .npz file atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": CLUSTERING_FORMAT_VERSION,
        "digit": clustering.digit,
        "k": clustering.k,
        "representation": clustering.representation,
        "fingerprint": clustering.fingerprint,
        "writers": list(clustering.writers),
        "silhouette": clustering.silhouette,
    }
    arrays = {name: getattr(clustering, name) for name in _ARRAY_FIELDS}
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, header=np.array(json.dumps(header)), **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_clustering(path: Path) -> DigitClustering:
    """Read a clustering written by `save_clustering`; raise ValueError if it is unusable."""
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(str(archive["header"]))
        if header.get("format") != CLUSTERING_FORMAT_VERSION:
            raise ValueError(f"clustering format {header.get('format')} is not {CLUSTERING_FORMAT_VERSION}")
        arrays = {name: archive[name] for name in _ARRAY_FIELDS}
    return DigitClustering(
        digit=header["digit"],
        k=header["k"],
        representation=header["representation"],
        fingerprint=header["fingerprint"],
        writers=tuple(header["writers"]),
        silhouette=float(header["silhouette"]),
        **arrays,
    )


def umap_embedding(clustering: DigitClustering, random_state: int = RANDOM_STATE) -> np.ndarray:
    """Return 2-D UMAP coordinates (W, 2) of the writers' style vectors."""
    import umap  # imported here: loading umap-learn compiles numba code and takes seconds

    neighbours = max(2, min(15, len(clustering.writers) - 1))
    reducer = umap.UMAP(n_neighbors=neighbours, n_components=2, random_state=random_state)
    return reducer.fit_transform(clustering.vectors).astype(np.float32)
