"""Quality of generated handwriting, measured in the feature space of a small digit classifier.

Inception features, the usual basis of the Fréchet Inception Distance (Heusel et al. 2017,
arXiv:1706.08500), are learned on 299x299 photographs and do not describe 28x28 handwriting. Here a
two-convolution CNN is trained on the train split of the loaded FEMNIST digits, and its penultimate
layer (FEATURE_DIM values after ReLU) is the feature space of every metric:

* recognisability: share of images the classifier labels as the requested digit;
* Fréchet distance between Gaussians fitted to two feature sets;
* energy distance and mean cross distance, which stay unbiased for sets of a few images;
* diversity: mean pairwise feature distance within one set, which drops when a GAN collapses.

The classifier is cached per dataset fingerprint and config under
``<cache>/quality/<fingerprint>/classifier-<config hash>.pt``, with its test-split accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from engine.dataset import DIGITS, IMAGE_SIZE, FemnistDataset, validate_digit
from engine.errors import InputError

logger = logging.getLogger(__name__)

FEATURE_DIM = 64  # width of the penultimate layer, the feature space of every metric
CLASSIFIER_FORMAT_VERSION = 2
FEATURE_BATCH_SIZE = 1024  # images per forward pass when extracting features
# Added to both covariance diagonals when the square root of their product is not finite, the
# remedy that common FID implementations apply.
FRECHET_EPSILON = 1e-6


@dataclass(frozen=True)
class ClassifierConfig:
    """Training settings of the feature classifier."""

    epochs: int = 4  # passes over the train split
    batch_size: int = 128  # images per optimiser step
    learning_rate: float = 1e-3  # Adam step size
    max_train_images: int | None = None  # random subset of the train split, for fast tests; None = all
    seed: int = 0  # seeds weight init, the subset and shuffling

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"classifier setting {name}={value!r} is invalid; it must be an integer >= 1")
        if not self.learning_rate > 0:
            raise InputError(f"classifier setting learning_rate={self.learning_rate!r} should be > 0")
        if self.max_train_images is not None and (
            isinstance(self.max_train_images, bool) or not isinstance(self.max_train_images, int) or self.max_train_images < 10
        ):
            raise InputError(f"classifier setting max_train_images={self.max_train_images!r} should be None or an integer >= 10")

    def to_dict(self) -> dict:
        """Return the settings in plain types."""
        return dataclasses.asdict(self)

    def short_hash(self) -> str:
        """Return 8 hex digits identifying these settings, part of the cache file name."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


class DigitClassifier(nn.Module):
    """Two convolutions and two linear layers; the first linear layer's output is the feature vector."""

    def __init__(self) -> None:
        super().__init__()
        self.convolutions = nn.Sequential(
            # (B, 1, 28, 28)
            nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # (B, 16, 14, 14)
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # (B, 32, 7, 7)
            nn.Flatten(),
        )
        self.features = nn.Sequential(nn.Linear(32 * 7 * 7, FEATURE_DIM), nn.ReLU(inplace=True))  # (B, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, len(DIGITS))  # (B, 10) logits

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return the features (B, FEATURE_DIM) of float images (B, 1, 28, 28) in [0, 1]."""
        return self.features(self.convolutions(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return digit logits (B, 10)."""
        return self.head(self.embed(images))


@dataclass
class FeatureClassifier:
    """A trained digit classifier and what it was trained on."""

    network: DigitClassifier  # in eval mode, on the CPU
    config: ClassifierConfig
    fingerprint: str  # of the dataset whose train split it was trained on
    test_accuracy: float  # share of the test split classified correctly
    test_count: int  # test images behind `test_accuracy`
    train_count: int
    training_seconds: float
    path: Path

    @torch.no_grad()
    def features_and_labels(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return features float64 (N, FEATURE_DIM) and predicted digits (N,) of uint8 ink images (N, 28, 28)."""
        images = _validate_images(images)
        features = [np.zeros((0, FEATURE_DIM))]
        labels = [np.zeros(0, dtype=np.int64)]
        for start in range(0, len(images), FEATURE_BATCH_SIZE):
            batch = _to_tensor(images[start : start + FEATURE_BATCH_SIZE])  # (B, 1, 28, 28)
            embedded = self.network.embed(batch)
            features.append(embedded.double().numpy())
            labels.append(self.network.head(embedded).argmax(dim=1).numpy())
        return np.concatenate(features), np.concatenate(labels)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Return the features float64 (N, FEATURE_DIM) of uint8 ink images (N, 28, 28)."""
        return self.features_and_labels(images)[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return the predicted digit (N,) of each uint8 ink image (N, 28, 28)."""
        return self.features_and_labels(images)[1]

    def recognisability(self, images: np.ndarray, digit: int) -> float:
        """Return the share of `images` classified as `digit`, NaN for no images."""
        digit = validate_digit(digit)
        if len(images) == 0:
            return float("nan")
        return float(np.mean(self.predict(images) == digit))

    def summary(self) -> dict:
        """Describe the classifier in plain types."""
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "test_accuracy": round(self.test_accuracy, 4),
            "test_images": self.test_count,
            "train_images": self.train_count,
            "training_seconds": round(self.training_seconds, 1),
            "config": self.config.to_dict(),
        }


def classifier_path(cache_dir: Path, dataset: FemnistDataset, config: ClassifierConfig) -> Path:
    """Return where the classifier of `dataset` and `config` is cached."""
    return Path(cache_dir) / "quality" / dataset.fingerprint / f"classifier-{config.short_hash()}.pt"


def load_or_train_classifier(
    dataset: FemnistDataset, cache_dir: Path, config: ClassifierConfig | None = None
) -> FeatureClassifier:
    """Return the cached classifier of `dataset`, training and saving it first when it is missing."""
    config = config or ClassifierConfig()
    path = classifier_path(cache_dir, dataset, config)
    if path.is_file():
        try:
            return load_classifier(path)
        except InputError as error:
            logger.warning("%s; training the classifier again", error)
    return train_classifier(dataset, config, path)


def train_classifier(dataset: FemnistDataset, config: ClassifierConfig, path: Path) -> FeatureClassifier:
    """Train the classifier on the train split (split 0) of `dataset`, measure it on the test split, save it."""
    train_indices = np.flatnonzero(dataset.split == 0)
    test_indices = np.flatnonzero(dataset.split == 1)
    if len(train_indices) < 10 or len(test_indices) == 0:
        raise InputError(
            f"the classifier needs train and test images; the data has {len(train_indices)} train "
            f"and {len(test_indices)} test images"
        )
    rng = torch.Generator().manual_seed(config.seed)
    if config.max_train_images is not None and config.max_train_images < len(train_indices):
        chosen = torch.randperm(len(train_indices), generator=rng)[: config.max_train_images].numpy()
        train_indices = np.sort(train_indices[chosen])

    images = torch.from_numpy(np.asarray(dataset.images[train_indices])).unsqueeze(1)  # uint8 (N, 1, 28, 28)
    labels = torch.from_numpy(np.asarray(dataset.digits[train_indices], dtype=np.int64))  # (N,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # nn.Linear and nn.Conv2d draw their initial weights from the global generator
        network = DigitClassifier()
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    loss_function = nn.CrossEntropyLoss()

    logger.info("training the feature classifier on %d train images for %d epochs", len(labels), config.epochs)
    started = time.perf_counter()
    network.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(labels), generator=rng)
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(images[batch].float() / 255.0), labels[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        logger.info("classifier epoch %d/%d: mean loss %.4f", epoch, config.epochs, float(np.mean(losses)))
    network.eval()
    training_seconds = time.perf_counter() - started

    classifier = FeatureClassifier(
        network=network,
        config=config,
        fingerprint=dataset.fingerprint,
        test_accuracy=0.0,
        test_count=int(len(test_indices)),
        train_count=int(len(labels)),
        training_seconds=training_seconds,
        path=path,
    )
    predicted = classifier.predict(np.asarray(dataset.images[test_indices]))
    classifier.test_accuracy = float(np.mean(predicted == dataset.digits[test_indices]))
    logger.info(
        "feature classifier: test accuracy %.4f on %d images after %.1f s of training",
        classifier.test_accuracy, len(test_indices), training_seconds,
    )
    _save_classifier(classifier)
    return classifier


def load_classifier(path: Path) -> FeatureClassifier:
    """Read a classifier saved by `train_classifier`; raise InputError when it is unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        raise InputError(f"classifier {str(path)!r} is corrupt or truncated ({error})") from error
    if not isinstance(payload, dict) or payload.get("format_version") != CLASSIFIER_FORMAT_VERSION:
        raise InputError(f"classifier {str(path)!r} is not of format version {CLASSIFIER_FORMAT_VERSION}")
    try:
        network = DigitClassifier()
        network.load_state_dict(payload["network"])
        return FeatureClassifier(
            network=network.eval(),
            config=ClassifierConfig(**payload["config"]),
            fingerprint=str(payload["fingerprint"]),
            test_accuracy=float(payload["test_accuracy"]),
            test_count=int(payload["test_count"]),
            train_count=int(payload["train_count"]),
            training_seconds=float(payload["training_seconds"]),
            path=Path(path),
        )
    except (KeyError, TypeError, RuntimeError) as error:
        raise InputError(f"classifier {str(path)!r} is incomplete or inconsistent ({error!r})") from error


def _save_classifier(classifier: FeatureClassifier) -> None:
    """Write the classifier to a temporary file beside its path, then rename it into place."""
    path = classifier.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create folder {str(path.parent)!r}: {error.strerror}; pass another --cache") from error
    payload = {
        "format_version": CLASSIFIER_FORMAT_VERSION,
        "network": {name: tensor.detach().cpu().clone() for name, tensor in classifier.network.state_dict().items()},
        "config": classifier.config.to_dict(),
        "fingerprint": classifier.fingerprint,
        "test_accuracy": classifier.test_accuracy,
        "test_count": classifier.test_count,
        "train_count": classifier.train_count,
        "training_seconds": classifier.training_seconds,
    }
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _validate_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise InputError(
            f"images must be uint8 ink intensities of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
            f"got {images.dtype} {images.shape}"
        )
    return images


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().unsqueeze(1) / 255.0


# Distances between feature sets ----------------------------------------------------------------


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, epsilon: float = FRECHET_EPSILON) -> float:
    """Return the Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). Each set needs at least two rows.
    With fewer rows than dimensions a covariance is singular; `epsilon` is then added to both
    diagonals before the matrix square root. The estimate is biased upwards for small sets, so
    compare values only between sets of the same sizes.
    """
    mean_a, covariance_a = _mean_and_covariance(features_a)
    mean_b, covariance_b = _mean_and_covariance(features_b)
    difference = mean_a - mean_b

    with warnings.catch_warnings():
        # A singular product is expected (dead ReLU units, fewer rows than dimensions) and is
        # handled below, so scipy's LinAlgWarning about it is not shown.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        product_root = scipy.linalg.sqrtm(covariance_a @ covariance_b)
    if not np.isfinite(product_root).all():
        offset = np.eye(len(mean_a)) * epsilon
        product_root = scipy.linalg.sqrtm((covariance_a + offset) @ (covariance_b + offset))
    # Rounding gives the square root small imaginary parts; large ones mean a failed computation.
    if np.iscomplexobj(product_root):
        if not np.allclose(np.diagonal(product_root).imag, 0, atol=1e-3):
            largest = float(np.max(np.abs(product_root.imag)))
            raise ArithmeticError(f"matrix square root has an imaginary component of {largest:.3g}")
        product_root = product_root.real

    value = difference @ difference + np.trace(covariance_a) + np.trace(covariance_b) - 2.0 * np.trace(product_root)
    return float(max(value, 0.0))


def _mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise InputError(f"a Fréchet distance needs at least 2 feature rows per set, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def mean_cross_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Return the mean Euclidean distance over all pairs (a, b) of rows of two feature sets.

    Its expectation does not depend on the set sizes, so sets of a few images compare fairly with
    large ones. It also grows with the spread of either set, so it favours a collapsed set near
    the other set's mean; `energy_distance` corrects for that.
    """
    return float(_pairwise_distances(features_a, features_b).mean())


def mean_within_distance(features: np.ndarray) -> float:
    """Return the mean Euclidean distance between distinct rows of one feature set (diversity)."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return float("nan")
    distances = _pairwise_distances(features, features)
    count = len(features)
    return float(distances.sum() / (count * (count - 1)))


def energy_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Return the energy distance 2 E|a-b| - E|a-a'| - E|b-b'| (Székely and Rizzo) of two feature sets.

    The within-set means leave out the zero self-distances, so the estimate is unbiased for any
    set sizes >= 2 and may fall slightly below 0 when the sets come from one distribution.
    """
    return 2.0 * mean_cross_distance(features_a, features_b) - mean_within_distance(features_a) - mean_within_distance(features_b)


def mean_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Return the Euclidean distance between the means of two feature sets."""
    return float(np.linalg.norm(np.mean(features_a, axis=0) - np.mean(features_b, axis=0)))


def _pairwise_distances(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    if len(features_a) == 0 or len(features_b) == 0:
        raise InputError("a feature distance needs at least one row in each set")
    squared = (
        (features_a**2).sum(axis=1)[:, None] + (features_b**2).sum(axis=1)[None, :] - 2.0 * features_a @ features_b.T
    )  # (N, M)
    return np.sqrt(np.maximum(squared, 0.0))
