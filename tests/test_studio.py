"""End-to-end tests of cluster-GAN-cluster through the Studio, with tiny DCGANs on real data."""

from __future__ import annotations

import numpy as np
import pytest

from engine.dcgan import load_checkpoint
from engine.errors import InputError
from engine.studio import Studio
from tests.conftest import FAST_CONFIG

WRITER, DIGIT = "f0424_27", 3


@pytest.fixture(scope="module")
def hidden_fill(studio: Studio):
    return studio.fill(WRITER, DIGIT, n=16, hide=True, config=FAST_CONFIG, seed=3)


def test_fill_returns_requested_images(hidden_fill) -> None:
    assert hidden_fill.images.shape == (16, 28, 28)
    assert hidden_fill.images.dtype == np.uint8


def test_fill_trains_missing_model(hidden_fill) -> None:
    assert hidden_fill.trained_now
    assert hidden_fill.model_path.is_file()


def test_fill_consistency_shares_in_range(hidden_fill) -> None:
    report = hidden_fill.consistency
    assert 0.0 <= report.generated_in_cluster <= 1.0
    assert 0.0 < report.real_in_cluster <= 1.0
    assert sum(report.generated_placement) == 16
    assert 0.0 <= report.generated_sets_in_cluster <= 1.0
    assert report.real_sets_in_cluster >= report.real_in_cluster
    assert report.set_size >= 1


def test_hidden_cell_never_reaches_training(studio: Studio, hidden_fill) -> None:
    checkpoint = load_checkpoint(hidden_fill.model_path, "cpu")
    hidden = studio.dataset_for(WRITER, DIGIT, hide=True)
    training_images = studio.cluster_images(DIGIT, hidden_fill.choice.cluster, 7, hidden)
    assert checkpoint.metadata["hidden_cells"] == [f"{WRITER}:{DIGIT}"]
    assert checkpoint.image_count == len(training_images)
    for real in hidden_fill.real_images:
        assert not (training_images == real).all(axis=(1, 2)).any()


def test_hidden_fill_keeps_real_cell_for_comparison(studio: Studio, hidden_fill) -> None:
    assert len(hidden_fill.real_images) == len(studio.dataset.cell_indices(WRITER, DIGIT))


def test_fill_reuses_saved_model(studio: Studio, hidden_fill) -> None:
    again = studio.fill(WRITER, DIGIT, n=16, hide=True, seed=3)
    assert not again.trained_now
    assert np.array_equal(again.images, hidden_fill.images)


def test_fill_without_model_and_training_rejected(studio: Studio) -> None:
    with pytest.raises(InputError, match="no model for digit 5"):
        studio.fill(WRITER, 5, n=4, train_if_missing=False)


def test_fill_unknown_writer_rejected(studio: Studio) -> None:
    with pytest.raises(InputError, match="f9999_99"):
        studio.fill("f9999_99", DIGIT)


@pytest.mark.parametrize("n", [0, -3, 10_001])
def test_fill_bad_count_rejected(studio: Studio, n: int) -> None:
    with pytest.raises(InputError, match="n must be 1-10000"):
        studio.fill(WRITER, DIGIT, n=n)


def test_train_model_lists_settings(studio: Studio) -> None:
    studio.train_model(DIGIT, 0, 7, FAST_CONFIG)
    rows = [row for row in studio.list_models(7) if row.get("digit") == DIGIT and row.get("cluster") == 0]
    assert rows[0]["config"]["epochs"] == FAST_CONFIG.epochs
    assert rows[0]["completed"]


def test_train_model_refuses_tiny_cluster(data_dir, tmp_path) -> None:
    leaf_studio = Studio(data_dir / "leaf", tmp_path, device="cpu")
    clustering = leaf_studio.clustering(0, 2)
    smallest = int(np.argmin(clustering.cluster_image_counts))
    assert clustering.cluster_image_counts[smallest] < 32
    with pytest.raises(InputError, match=r"has \d+ images, fewer than the 32"):
        leaf_studio.train_model(0, smallest, 2, FAST_CONFIG)


def test_fill_with_new_settings_retrains(studio: Studio, hidden_fill) -> None:
    changed = FAST_CONFIG.__class__.from_dict({**FAST_CONFIG.to_dict(), "seed": 5})
    again = studio.fill(WRITER, DIGIT, n=4, hide=True, config=changed)
    assert again.trained_now
    assert load_checkpoint(again.model_path, "cpu").config == changed
