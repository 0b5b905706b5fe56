"""Evaluation of generated handwriting: per-model quality and the held-out-cell study.

Per model, `evaluate_model` compares the images a (digit, cluster) DCGAN generates with that
cluster's real images in the feature space of `engine.quality`.

The held-out study hides real cells X(i, j) and measures how close each method's images come to them:

1. cluster-GAN-cluster: the DCGAN of the cluster that the related-writer vote chooses;
2. the DCGAN of a random other cluster of digit j;
3. one DCGAN trained on every writer's images of digit j;
4. no generation: the real images of digit j of the writer most similar to i on i's other digits.

All sampled cells are removed from the dataset at once (`FemnistDataset.without_cells`). One
clustering per digit, one vote per cell and one model per (digit, cluster) are computed on that
reduced dataset, so the hidden images reach no clustering, vote, training set or nearest-writer
search, and the feature classifier is trained on the reduced dataset's train split too. Hiding
the cells together differs from hiding one at a time only in that the other hidden cells are also
missing. Each writer contributes at most one hidden cell.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from engine.clustering import DEFAULT_K, DigitClustering, validate_k
from engine.completion import choose_cluster
from engine.dataset import DIGITS, FemnistDataset, validate_digit
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
from engine.quality import (
    ClassifierConfig,
    FeatureClassifier,
    energy_distance,
    frechet_distance,
    load_or_train_classifier,
    mean_cross_distance,
    mean_distance,
    mean_within_distance,
)
from engine.studio import Studio

logger = logging.getLogger(__name__)

GENERATED_PER_MODEL = 500  # images generated per model for every metric
GENERATION_SEED = 1  # noise seed of those images; training uses DCGANConfig.seed
MIN_HIDDEN_IMAGES = 2  # a hidden cell needs two images for the within-set term of the energy distance
MIN_SHARED_DIGITS = 4  # digits other than j a candidate nearest writer must share with writer i
RESULT_FORMAT_VERSION = 1

OURS = "cluster-gan-cluster"
OTHER_CLUSTER = "other-cluster-gan"
ALL_WRITERS = "all-writers-gan"
NEAREST_WRITER = "nearest-writer-real"
METHODS = (OURS, OTHER_CLUSTER, ALL_WRITERS, NEAREST_WRITER)
METHOD_LABELS = {
    OURS: "cluster-GAN-cluster",
    OTHER_CLUSTER: "GAN of a random other cluster",
    ALL_WRITERS: "GAN of all writers",
    NEAREST_WRITER: "nearest writer's real images",
}
CELL_METRICS = ("energy_distance", "cross_distance", "mean_distance")  # energy_distance is the headline

EpochCallback = Callable[[str, EpochProgress], None]  # (model label, progress)


# Per-model quality ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelQuality:
    """Metrics of one (digit, cluster) DCGAN against that cluster's real images.

    Fréchet distances compare sets of equal size: the real images are split into random halves
    A and B, `frechet_real_halves` is FD(A, B), the sample-noise floor, and `frechet_generated` is
    FD(|A| generated images, B).
    """

    digit: int
    cluster: int
    k: int
    model_path: str
    epochs_done: int
    training_images: int
    generated_count: int
    real_count: int
    recognisability_generated: float
    recognisability_real: float
    frechet_generated: float
    frechet_real_halves: float
    half_size: int
    consistency_generated: float  # share of single images placed in the model's cluster
    consistency_real: float
    consistency_sets_generated: float  # share of random cell-sized sets placed there by their mean style
    consistency_sets_real: float
    consistency_set_size: int
    diversity_generated: float
    diversity_real: float

    def to_dict(self) -> dict:
        """Return the metrics in plain types, rounded to 4 decimals."""
        return {
            name: round(value, 4) if isinstance(value, float) else value
            for name, value in dataclasses.asdict(self).items()
        }


def evaluate_model(
    studio: Studio,
    classifier: FeatureClassifier,
    digit: int,
    cluster: int,
    k: int = DEFAULT_K,
    dataset: FemnistDataset | None = None,
    generated_count: int = GENERATED_PER_MODEL,
    seed: int = GENERATION_SEED,
) -> ModelQuality:
    """Measure the saved DCGAN of (digit, cluster); raise InputError when none is saved."""
    digit = validate_digit(digit)
    clustering = studio.clustering(digit, k, dataset)
    cluster = clustering.validate_cluster(cluster)
    checkpoint = studio.load_model(digit, cluster, k, dataset)
    if checkpoint is None:
        raise InputError(
            f"no model for digit {digit} cluster {cluster} (k={clustering.k}) yet; train it with "
            f"`python -m engine train --digit {digit} --cluster {cluster} --k {clustering.k}`"
        )
    generated = generate(checkpoint, max(generated_count, 2), seed=seed, device=studio.device)
    return measure_model(studio, classifier, clustering, cluster, checkpoint, generated, dataset, seed)


def measure_model(
    studio: Studio,
    classifier: FeatureClassifier,
    clustering: DigitClustering,
    cluster: int,
    checkpoint: DCGANCheckpoint,
    generated: np.ndarray,
    dataset: FemnistDataset | None = None,
    seed: int = GENERATION_SEED,
) -> ModelQuality:
    """Compare `generated` images of a (digit, cluster) model with the cluster's real images."""
    digit = clustering.digit
    real = studio.cluster_images(digit, cluster, clustering.k, dataset)
    if checkpoint.image_count != len(real):
        logger.warning(
            "the model of digit %d cluster %d was trained on %d images, but the cluster now has %d: "
            "the clustering changed after training, so train the model again before trusting these metrics",
            digit, cluster, checkpoint.image_count, len(real),
        )
    generated_features, generated_labels = classifier.features_and_labels(generated)
    real_features, real_labels = classifier.features_and_labels(real)

    order = np.random.default_rng(seed).permutation(len(real))
    half_size = len(real) // 2
    half_a, half_b = order[:half_size], order[half_size : 2 * half_size]
    frechet_floor = frechet_generated = float("nan")
    if half_size >= 2:
        # The generated set is cut to |A| images, so both distances carry the same small-sample bias.
        extra = generated_features
        if len(extra) < half_size:
            extra = classifier.features(generate(checkpoint, half_size, seed=seed, device=studio.device))
        frechet_floor = frechet_distance(real_features[half_a], real_features[half_b])
        frechet_generated = frechet_distance(extra[:half_size], real_features[half_b])

    consistency = studio.consistency(clustering, cluster, generated, dataset)
    return ModelQuality(
        digit=digit,
        cluster=cluster,
        k=clustering.k,
        model_path=str(studio.model_path(digit, cluster, clustering.k, dataset)),
        epochs_done=checkpoint.epochs_done,
        training_images=checkpoint.image_count,
        generated_count=int(len(generated)),
        real_count=int(len(real)),
        recognisability_generated=float(np.mean(generated_labels == digit)),
        recognisability_real=float(np.mean(real_labels == digit)) if len(real) else float("nan"),
        frechet_generated=frechet_generated,
        frechet_real_halves=frechet_floor,
        half_size=half_size,
        consistency_generated=consistency.generated_in_cluster,
        consistency_real=consistency.real_in_cluster,
        consistency_sets_generated=consistency.generated_sets_in_cluster,
        consistency_sets_real=consistency.real_sets_in_cluster,
        consistency_set_size=consistency.set_size,
        diversity_generated=mean_within_distance(generated_features),
        diversity_real=mean_within_distance(real_features),
    )


# Held-out study ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySettings:
    """Everything that determines a held-out study's result; part of its file name."""

    cells: int = 50  # hidden cells, one per writer
    seed: int = 0  # seeds the choice of cells and of the random other clusters
    k: int = DEFAULT_K
    config: DCGANConfig = DCGANConfig()  # settings of every cluster model
    # Epochs of the all-writers model; None matches its optimiser steps to the median cluster model
    # of the digit, so that baseline gets the same training compute per model, not more.
    all_writers_epochs: int | None = None
    classifier: ClassifierConfig = ClassifierConfig()
    generated_per_model: int = GENERATED_PER_MODEL
    digits: tuple[int, ...] = DIGITS  # digits the hidden cells are drawn from

    def __post_init__(self) -> None:
        if isinstance(self.cells, bool) or not isinstance(self.cells, int) or self.cells < 1:
            raise InputError(f"the number of hidden cells must be an integer >= 1, got {self.cells!r}")
        validate_k(self.k)
        if self.all_writers_epochs is not None and self.all_writers_epochs < 1:
            raise InputError(f"all-writers epochs must be >= 1 or unset, got {self.all_writers_epochs}")
        if self.generated_per_model < 2:
            raise InputError(f"generated images per model must be >= 2, got {self.generated_per_model}")
        if not self.digits:
            raise InputError("the study needs at least one digit")
        for digit in self.digits:
            validate_digit(digit)

    def to_dict(self) -> dict:
        """Return the settings in plain types."""
        return {
            "cells": self.cells,
            "seed": self.seed,
            "k": self.k,
            "config": self.config.to_dict(),
            "all_writers_epochs": self.all_writers_epochs,
            "classifier": self.classifier.to_dict(),
            "generated_per_model": self.generated_per_model,
            "digits": list(self.digits),
        }

    def file_name(self, representation: str) -> str:
        """Return the result file's name, which names the settings a reader compares by."""
        digits = "" if tuple(self.digits) == DIGITS else "-digits" + "".join(str(d) for d in self.digits)
        all_writers = "" if self.all_writers_epochs is None else f"-all{self.all_writers_epochs}"
        return (
            f"held-out-{representation}-k{self.k}-cells{self.cells}-seed{self.seed}"
            f"-e{self.config.epochs}-b{self.config.batch_size}{all_writers}{digits}.json"
        )


def sample_cells(dataset: FemnistDataset, count: int, seed: int, digits=DIGITS) -> list[tuple[str, int]]:
    """Choose `count` cells (writer, digit) to hide, one per writer, from writers having all ten digits.

    Digits take turns in a shuffled order, so each digit of `digits` gets count / len(digits)
    cells, give or take one. A cell needs MIN_HIDDEN_IMAGES images.
    """
    digits = [validate_digit(digit) for digit in digits]
    counts = dataset.counts
    eligible = np.flatnonzero((counts > 0).all(axis=1))
    if count > len(eligible):
        raise InputError(
            f"cannot hide {count} cells: only {len(eligible)} writers have all ten digits; choose fewer cells"
        )
    rng = np.random.default_rng(seed)
    writer_order = list(rng.permutation(eligible))
    digit_order = [digits[position] for position in rng.permutation(len(digits))]

    cells = []
    for turn in range(count):
        digit = digit_order[turn % len(digit_order)]
        position = next((p for p in writer_order if counts[p, digit] >= MIN_HIDDEN_IMAGES), None)
        if position is None:
            raise InputError(
                f"no writer left with {MIN_HIDDEN_IMAGES}+ images of digit {digit} after {len(cells)} cells; "
                "choose fewer cells"
            )
        writer_order.remove(position)
        cells.append((dataset.writers[position], digit))
    return cells


def nearest_writer(clusterings: dict[int, DigitClustering], writer: str, digit: int) -> tuple[str | None, float]:
    """Return the writer with MIN_HIDDEN_IMAGES+ images of `digit` whose style is closest to `writer`'s.

    For each other digit d both have, the distance between their style vectors in d's clustering is
    divided by the median distance from `writer` to everyone with d, so every digit weighs the
    same. The score is the mean over the shared digits; candidates must share MIN_SHARED_DIGITS
    digits with `writer` (or all of them, if `writer` has fewer). Returns (None, nan) without one.
    """
    target = clusterings[digit]
    candidates = {
        candidate
        for candidate, count in zip(target.writers, target.image_counts)
        if candidate != writer and count >= MIN_HIDDEN_IMAGES
    }
    totals: dict[str, float] = {}
    shared: dict[str, int] = {}
    digits_of_writer = 0
    for other_digit, clustering in clusterings.items():
        if other_digit == digit or writer not in clustering.writers:
            continue
        digits_of_writer += 1
        vectors = clustering.vectors
        own = vectors[clustering.writers.index(writer)]
        distances = np.linalg.norm(vectors - own, axis=1)  # (W,)
        scale = float(np.median(distances[distances > 0])) if np.any(distances > 0) else 1.0
        for candidate, distance in zip(clustering.writers, distances):
            if candidate in candidates:
                totals[candidate] = totals.get(candidate, 0.0) + float(distance) / scale
                shared[candidate] = shared.get(candidate, 0) + 1

    required = min(MIN_SHARED_DIGITS, digits_of_writer)
    scores = {
        candidate: totals[candidate] / shared[candidate]
        for candidate in totals
        if shared[candidate] >= max(required, 1)
    }
    if not scores:
        return None, float("nan")
    best = min(sorted(scores), key=scores.get)
    return best, scores[best]


def run_held_out_study(
    studio: Studio,
    settings: StudySettings,
    result_path: Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> dict:
    """Run the held-out study and return its result; with `result_path`, also write it after every digit.

    Models and the classifier come from the cache when they were trained with the same settings.
    """
    started = time.perf_counter()
    full = studio.dataset
    cells = sample_cells(full, settings.cells, settings.seed, settings.digits)
    reduced = full.without_cells(cells)
    logger.info(
        "held-out study: %d cells hidden (%d images); reduced dataset %s",
        len(cells), len(full.digits) - len(reduced.digits), reduced.fingerprint,
    )

    classifier = load_or_train_classifier(reduced, studio.cache_dir, settings.classifier)
    clusterings = studio.all_clusterings(settings.k, reduced)
    result = {
        "kind": "held-out-study",
        "format": RESULT_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "representation": studio.representation,
        "fingerprint": full.fingerprint,
        "reduced_fingerprint": reduced.fingerprint,
        "hidden_cells": [[writer, digit] for writer, digit in cells],
        "classifier": classifier.summary(),
        "machine": machine_description(studio),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "digits_done": [],
        "cells": [],
        "models": [],
        "all_writers_models": [],
    }

    for digit in sorted({digit for _, digit in cells}):
        digit_cells = [cell for cell in cells if cell[1] == digit]
        study = _DigitStudy(studio, settings, reduced, clusterings, classifier, digit, on_epoch)
        result["cells"].extend(study.run(full, digit_cells, [cells.index(cell) for cell in digit_cells]))
        result["models"].extend(study.model_rows)
        result["all_writers_models"].append(study.all_writers_row)
        result["digits_done"].append(digit)
        result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        result["summary"] = summarise_cells(result["cells"])
        if result_path is not None:
            write_json(result, result_path)
        logger.info("held-out study: digit %d done after %.0f s", digit, result["elapsed_seconds"])

    result["complete"] = True
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if result_path is not None:
        write_json(result, result_path)
    return result


class _DigitStudy:
    """The models, generated images and cell distances of one digit of the held-out study."""

    def __init__(
        self,
        studio: Studio,
        settings: StudySettings,
        reduced: FemnistDataset,
        clusterings: dict[int, DigitClustering],
        classifier: FeatureClassifier,
        digit: int,
        on_epoch: EpochCallback | None,
    ):
        self.studio = studio
        self.settings = settings
        self.reduced = reduced
        self.clusterings = clusterings
        self.clustering = clusterings[digit]
        self.classifier = classifier
        self.digit = digit
        self.on_epoch = on_epoch
        self.features: dict[int, np.ndarray] = {}  # cluster -> features of its generated images
        self.model_rows: list[dict] = []
        self.all_writers_row: dict = {}
        image_counts = self.clustering.cluster_image_counts
        self.trainable = [c for c in range(self.clustering.k) if image_counts[c] >= MIN_TRAINING_IMAGES]

    def run(self, full: FemnistDataset, cells: list[tuple[str, int]], positions: list[int]) -> list[dict]:
        """Evaluate the four methods on each hidden cell of this digit."""
        plans = [self._plan(writer, position) for (writer, _), position in zip(cells, positions)]
        needed = {plan["chosen_cluster"] for plan in plans} | {plan["other_cluster"] for plan in plans}
        for cluster in sorted(needed - {None}):
            self._cluster_features(cluster)
        all_writers_features = self._all_writers_features()

        rows = []
        for (writer, digit), plan in zip(cells, plans):
            hidden = np.asarray(full.images[full.cell_indices(writer, digit)])
            hidden_features = self.classifier.features(hidden)
            compared = {
                OURS: self.features.get(plan["chosen_cluster"]),
                OTHER_CLUSTER: self.features.get(plan["other_cluster"]),
                ALL_WRITERS: all_writers_features,
                NEAREST_WRITER: None,
            }
            if plan["nearest_writer"] is not None:
                neighbour = self.reduced.images[self.reduced.cell_indices(plan["nearest_writer"], digit)]
                compared[NEAREST_WRITER] = self.classifier.features(np.asarray(neighbour))
            plan["hidden_images"] = int(len(hidden))
            plan["recognisability_hidden"] = round(self.classifier.recognisability(hidden, digit), 4)
            plan["methods"] = {
                method: None if features is None else cell_distances(features, hidden_features)
                for method, features in compared.items()
            }
            plan["pooled_sizes"] = _pooled_size(plan, compared)
            rows.append(plan)
            self._store_pooled_features(plan, compared, hidden_features)
        return rows

    def _plan(self, writer: str, position: int) -> dict:
        """Choose the cluster, the random other cluster and the nearest writer for one cell."""
        choice = choose_cluster(self.clusterings, writer, self.digit)
        chosen = choice.cluster if choice.cluster in self.trainable else None
        others = [cluster for cluster in self.trainable if cluster != choice.cluster]
        rng = np.random.default_rng([self.settings.seed, position])
        other = int(rng.choice(others)) if others else None
        neighbour, score = nearest_writer(self.clusterings, writer, self.digit)
        return {
            "writer": writer,
            "digit": self.digit,
            "chosen_cluster": chosen,
            "vote_cluster": choice.cluster,
            "rule": choice.rule,
            "votes": choice.votes,
            "other_cluster": other,
            "nearest_writer": neighbour,
            "nearest_writer_score": None if neighbour is None else round(score, 4),
            "nearest_writer_images": 0 if neighbour is None else int(len(self.reduced.cell_indices(neighbour, self.digit))),
        }

    def _cluster_features(self, cluster: int) -> None:
        """Train or load the model of `cluster`, generate its images and record its quality."""
        started = time.perf_counter()
        checkpoint = self.studio.load_model(self.digit, cluster, self.settings.k, self.reduced)
        trained_now = checkpoint is None or checkpoint.config != self.settings.config or not checkpoint.completed
        if trained_now:
            label = f"digit {self.digit} cluster {cluster}"
            callback = None if self.on_epoch is None else (lambda progress: self.on_epoch(label, progress))
            checkpoint = self.studio.train_model(
                self.digit, cluster, self.settings.k, self.settings.config, self.reduced, on_epoch=callback
            )
        generated = generate(checkpoint, self.settings.generated_per_model, seed=GENERATION_SEED, device=self.studio.device)
        self.features[cluster] = self.classifier.features(generated)
        quality = measure_model(self.studio, self.classifier, self.clustering, cluster, checkpoint, generated, self.reduced)
        row = quality.to_dict()
        row["training_seconds"] = round(checkpoint.training_seconds, 1)
        row["trained_now"] = trained_now
        row["seconds"] = round(time.perf_counter() - started, 1)
        self.model_rows.append(row)

    def _all_writers_features(self) -> np.ndarray:
        """Train or load the DCGAN of every writer's images of the digit and return its features."""
        indices = self.reduced.digit_indices(self.digit)
        images = np.asarray(self.reduced.images[indices])
        epochs = self.settings.all_writers_epochs
        if epochs is None:
            cluster_images = [self.clustering.cluster_image_counts[c] for c in self.trainable]
            epochs = max(1, round(self.settings.config.epochs * float(np.median(cluster_images)) / len(images)))
        config = dataclasses.replace(self.settings.config, epochs=epochs)

        path = self.studio.cache_dir / "models" / self.reduced.fingerprint / "all-writers" / f"digit{self.digit}-e{epochs}.pt"
        checkpoint = None
        if path.is_file():
            try:
                checkpoint = load_checkpoint(path, self.studio.device)
            except InputError as error:
                logger.warning("%s; training again", error)
        if checkpoint is None or checkpoint.config != config or not checkpoint.completed:
            label = f"digit {self.digit} all writers"
            callback = None if self.on_epoch is None else (lambda progress: self.on_epoch(label, progress))
            metadata = {"digit": self.digit, "cluster": None, "fingerprint": self.reduced.fingerprint, "all_writers": True}
            logger.info("training the all-writers DCGAN of digit %d on %d images for %d epochs", self.digit, len(images), epochs)
            checkpoint = train_dcgan(images, config, self.studio.device, path, metadata, on_epoch=callback)

        generated = generate(checkpoint, self.settings.generated_per_model, seed=GENERATION_SEED, device=self.studio.device)
        generated_features, labels = self.classifier.features_and_labels(generated)
        self.all_writers_row = {
            "digit": self.digit,
            "model_path": str(path),
            "training_images": int(len(images)),
            "epochs_done": checkpoint.epochs_done,
            "training_seconds": round(checkpoint.training_seconds, 1),
            "recognisability_generated": round(float(np.mean(labels == self.digit)), 4),
            "diversity_generated": round(mean_within_distance(generated_features), 4),
        }
        return generated_features

    def _store_pooled_features(self, plan: dict, compared: dict, hidden_features: np.ndarray) -> None:
        """Keep the first `pooled_sizes` feature rows of each method, for the pooled Fréchet distance."""
        size = plan["pooled_sizes"]
        plan["_pooled"] = {
            method: None if features is None else features[:size]
            for method, features in compared.items()
        }
        plan["_pooled_hidden"] = hidden_features


def cell_distances(features: np.ndarray, hidden_features: np.ndarray) -> dict:
    """Return the distances between one method's feature set and the hidden cell's."""
    return {
        "energy_distance": round(energy_distance(features, hidden_features), 4),
        "cross_distance": round(mean_cross_distance(features, hidden_features), 4),
        "mean_distance": round(mean_distance(features, hidden_features), 4),
        "compared_images": int(len(features)),
    }


def _pooled_size(plan: dict, compared: dict) -> int:
    """Return how many images of each method a cell adds to the pooled sets: the smallest set's size."""
    sizes = [len(features) for features in compared.values() if features is not None]
    return int(min(sizes)) if sizes else 0


def summarise_cells(cells: list[dict]) -> dict:
    """Summarise the cell distances: mean, spread and ratios to cluster-GAN-cluster.

    Only cells where all four methods have a value count ("paired" cells), so every method is
    averaged over the same cells. Ratios are ratios of the means, because a per-cell ratio of an
    energy distance near 0 is unstable. The pooled Fréchet distance compares all paired cells'
    hidden images with as many images of each method per cell (the size of the smallest set).
    """
    paired = [cell for cell in cells if all(cell["methods"].get(method) is not None for method in METHODS)]
    summary: dict = {"cells": len(cells), "paired_cells": len(paired), "metrics": {}, "ratios": {}, "ours_closer_share": {}}
    if not paired:
        return summary

    for metric in CELL_METRICS:
        values = {method: np.array([cell["methods"][method][metric] for cell in paired]) for method in METHODS}
        summary["metrics"][metric] = {
            method: {
                "mean": round(float(array.mean()), 4),
                "std": round(float(array.std(ddof=1)), 4) if len(array) > 1 else None,
                "sem": round(float(array.std(ddof=1) / np.sqrt(len(array))), 4) if len(array) > 1 else None,
                "median": round(float(np.median(array)), 4),
            }
            for method, array in values.items()
        }
        ours = values[OURS]
        summary["ratios"][metric] = {
            method: round(float(values[method].mean() / ours.mean()), 4) if ours.mean() != 0 else None
            for method in METHODS if method != OURS
        }
        summary["ours_closer_share"][metric] = {
            method: round(float(np.mean(ours < values[method])), 4) for method in METHODS if method != OURS
        }

    summary["pooled_frechet_distance"] = _pooled_frechet(paired)
    summary["per_digit"] = _per_digit_means(paired)
    return summary


def _pooled_frechet(paired: list[dict]) -> dict | None:
    if not all("_pooled" in cell for cell in paired):
        return None
    hidden = np.concatenate([cell["_pooled_hidden"] for cell in paired])
    pooled = {}
    for method in METHODS:
        features = np.concatenate([cell["_pooled"][method] for cell in paired])
        pooled[method] = round(frechet_distance(features, hidden), 4)
    pooled["images_per_method"] = int(sum(cell["pooled_sizes"] for cell in paired))
    pooled["hidden_images"] = int(len(hidden))
    return pooled


def _per_digit_means(paired: list[dict]) -> dict:
    rows = {}
    for digit in sorted({cell["digit"] for cell in paired}):
        chosen = [cell for cell in paired if cell["digit"] == digit]
        rows[str(digit)] = {
            "cells": len(chosen),
            **{method: round(float(np.mean([c["methods"][method]["energy_distance"] for c in chosen])), 4) for method in METHODS},
        }
    return rows


# Results on disk --------------------------------------------------------------------------------


def results_folder(studio: Studio) -> Path:
    """Return the folder of the evaluation results of the studio's full dataset and representation."""
    return studio.cache_dir / "quality" / studio.dataset.fingerprint / studio.representation


def model_results_path(studio: Studio, k: int) -> Path:
    """Return the file that collects per-model metrics of the full dataset's models at `k`."""
    return results_folder(studio) / f"models-k{validate_k(k)}.json"


def record_model_results(path: Path, rows: list[dict], classifier: FeatureClassifier) -> dict:
    """Merge per-model rows into the file at `path`, replacing rows of the same (digit, cluster)."""
    document = read_json(path) if path.is_file() else {"kind": "model-metrics", "format": RESULT_FORMAT_VERSION, "models": []}
    merged = {(row["digit"], row["cluster"]): row for row in document.get("models", [])}
    for row in rows:
        merged[(row["digit"], row["cluster"])] = row
    document["models"] = [merged[key] for key in sorted(merged)]
    document["classifier"] = classifier.summary()
    document["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(document, path)
    return document


def write_json(document: dict, path: Path) -> None:
    """Write `document` as JSON to a temporary file beside `path`, then rename it into place.

    Keys starting with an underscore hold in-memory arrays and are left out.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create folder {str(path.parent)!r}: {error.strerror}; pass another --cache") from error
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(without_private_keys(document), stream, indent=1, allow_nan=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    """Read a result file; raise InputError when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"result file {str(path)!r} not found; run `python -m engine evaluate` first") from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"result file {str(path)!r} is unreadable ({error}); run the evaluation again") from None


def without_private_keys(value):
    """Return a copy of nested dicts and lists without keys that start with an underscore."""
    if isinstance(value, dict):
        return {key: without_private_keys(item) for key, item in value.items() if not str(key).startswith("_")}
    if isinstance(value, list):
        return [without_private_keys(item) for item in value]
    return value


def machine_description(studio: Studio) -> dict:
    """Describe where the numbers were measured: processor, CPU count, torch threads and device."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(studio.device),
        "torch": torch.__version__,
    }
