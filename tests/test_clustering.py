"""Tests of per-digit clustering, style features and the Studio's clustering cache on real data."""

from __future__ import annotations

import numpy as np
import pytest

from engine.clustering import fit_digit_clustering, load_clustering, save_clustering
from engine.errors import InputError
from engine.studio import Studio
from engine.style import REPRESENTATIONS, geometry_features, image_features, normalised_shape


@pytest.fixture(scope="module")
def clustering(studio: Studio):
    return studio.clustering(3, 7)


def test_clustering_covers_writers_of_digit(studio: Studio, clustering) -> None:
    assert list(clustering.writers) == studio.dataset.writers_with_digit(3)
    assert len(clustering.labels) == len(clustering.writers)


def test_clustering_uses_every_cluster(clustering) -> None:
    assert min(clustering.cluster_sizes) > 0
    assert sum(clustering.cluster_image_counts) == int(clustering.image_counts.sum())


def test_clustering_reproducible(studio: Studio, clustering) -> None:
    again = fit_digit_clustering(studio.dataset, 3, 7, clustering.representation)
    assert np.array_equal(again.labels, clustering.labels)


def test_silhouette_in_range(clustering) -> None:
    assert -1.0 <= clustering.silhouette <= 1.0


@pytest.mark.parametrize("k", [1, 21, 0])
def test_k_out_of_range_rejected(studio: Studio, k: int) -> None:
    with pytest.raises(InputError, match="k must be 2-20"):
        studio.clustering(3, k)


def test_k_above_writer_count_rejected(data_dir) -> None:
    from engine.dataset import load_dataset

    leaf = load_dataset(data_dir / "leaf")
    with pytest.raises(InputError, match="fewer than k=7"):
        fit_digit_clustering(leaf, 0, 7)


def test_unknown_cluster_rejected(clustering) -> None:
    with pytest.raises(InputError, match="cluster must be 0-6"):
        clustering.members(7)


def test_real_images_placed_above_chance(studio: Studio, clustering) -> None:
    indices = studio.dataset.digit_indices(3)
    placed = clustering.place_images(np.asarray(studio.dataset.images[indices]))
    own = np.array([clustering.cluster_of(studio.dataset.writers[p]) for p in studio.dataset.writer_index[indices]])
    shares = np.bincount(own, minlength=clustering.k) / len(own)
    chance = float((shares**2).sum())
    assert float((placed == own).mean()) > 2 * chance


def test_writer_mean_placed_in_own_cluster(studio: Studio, clustering) -> None:
    writer = clustering.writers[0]
    features = image_features(np.asarray(studio.dataset.images[studio.dataset.cell_indices(writer, 3)]), clustering.representation)
    vector = clustering.transform(features.mean(axis=0, keepdims=True))
    assert np.allclose(vector[0], clustering.vectors[0], atol=1e-3)


def test_save_load_round_trip(clustering, tmp_path) -> None:
    path = tmp_path / "digit3.npz"
    save_clustering(clustering, path)
    loaded = load_clustering(path)
    assert loaded.writers == clustering.writers
    assert np.array_equal(loaded.labels, clustering.labels)
    assert np.allclose(loaded.centroids, clustering.centroids)


def test_studio_caches_clustering_on_disk(studio: Studio, clustering) -> None:
    path = studio.clustering_path(3, 7)
    fresh = Studio(studio.data_dir, studio.cache_dir, device="cpu")
    assert path.is_file()
    assert np.array_equal(fresh.clustering(3, 7).labels, clustering.labels)


def test_umap_one_point_per_writer(studio: Studio, clustering) -> None:
    coordinates = studio.umap(3, 7)
    assert coordinates.shape == (len(clustering.writers), 2)
    assert np.isfinite(coordinates).all()


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_features_finite_for_blank_image(representation: str) -> None:
    blank = np.zeros((2, 28, 28), dtype=np.uint8)
    assert np.isfinite(image_features(blank, representation)).all()


def test_geometry_sees_shift() -> None:
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 5:15, 5:8] = 255
    shifted = np.roll(image, 6, axis=2)
    columns = geometry_features(np.concatenate([image, shifted]) / 255.0)
    assert columns[1, 1] - columns[0, 1] == pytest.approx(6.0)


def test_normalised_shape_ignores_position() -> None:
    image = np.zeros((1, 28, 28), dtype=np.float32)
    image[0, 4:14, 4:10] = 1.0
    shifted = np.roll(np.roll(image, 9, axis=1), 11, axis=2)
    crops = normalised_shape(np.concatenate([image, shifted]))
    assert np.allclose(crops[0], crops[1], atol=1e-5)


def test_whole_cell_set_placed_in_writer_cluster(studio: Studio, clustering) -> None:
    for writer, label in list(zip(clustering.writers, clustering.labels))[:20]:
        images = np.asarray(studio.dataset.images[studio.dataset.cell_indices(writer, 3)])
        placed = clustering.place_image_sets(images, len(images), 1)
        assert placed.tolist() == [label], writer


def test_image_sets_larger_than_images_empty(clustering) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    assert clustering.place_image_sets(images, 5, 10).size == 0
