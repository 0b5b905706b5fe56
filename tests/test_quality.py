"""Tests of the quality metrics, the feature classifier, the held-out study and `evaluate`, on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import evaluation, quality
from engine.cli import EXIT_INPUT_ERROR, EXIT_OK, format_model_table, format_study_table, main
from engine.dataset import DIGITS
from engine.errors import InputError
from engine.evaluation import METHODS, StudySettings, evaluate_model, run_held_out_study, sample_cells
from engine.quality import (
    ClassifierConfig,
    energy_distance,
    frechet_distance,
    load_classifier,
    load_or_train_classifier,
    mean_cross_distance,
    mean_within_distance,
)
from engine.studio import Studio
from tests.conftest import FAST_CONFIG, REPO_ROOT

# Two epochs on a subset: features and a recorded accuracy in seconds, not a good classifier.
TINY_CLASSIFIER = ClassifierConfig(epochs=2, max_train_images=6000)
STUDY_DIGIT = 3
STUDY_SETTINGS = StudySettings(
    cells=3, seed=5, config=FAST_CONFIG, classifier=TINY_CLASSIFIER, generated_per_model=32, digits=(STUDY_DIGIT,)
)


@pytest.fixture(scope="module")
def classifier(studio: Studio) -> quality.FeatureClassifier:
    return load_or_train_classifier(studio.dataset, studio.cache_dir, TINY_CLASSIFIER)


@pytest.fixture(scope="module")
def features_of_test_split(studio: Studio, classifier) -> np.ndarray:
    indices = np.flatnonzero(studio.dataset.split == 1)[:400]
    return classifier.features(np.asarray(studio.dataset.images[indices]))


# Distances ----------------------------------------------------------------------------------------


def test_frechet_distance_self_near_zero(features_of_test_split) -> None:
    assert frechet_distance(features_of_test_split, features_of_test_split) == pytest.approx(0.0, abs=1e-3)


def test_frechet_distance_shift_adds_squared_norm(features_of_test_split) -> None:
    shift = np.full(features_of_test_split.shape[1], 0.5)
    expected = float(shift @ shift)
    assert frechet_distance(features_of_test_split, features_of_test_split + shift) == pytest.approx(expected, rel=1e-3)


def test_frechet_distance_grows_with_shift(features_of_test_split) -> None:
    distances = [frechet_distance(features_of_test_split, features_of_test_split + step) for step in (0.1, 0.5, 1.0)]
    assert distances[0] < distances[1] < distances[2]


def test_frechet_distance_singular_covariance_finite(features_of_test_split) -> None:
    # Five rows in 64 dimensions: both covariances are singular.
    value = frechet_distance(features_of_test_split[:5], features_of_test_split[5:10])
    assert np.isfinite(value)
    assert value >= 0.0


def test_frechet_distance_one_row_rejected(features_of_test_split) -> None:
    with pytest.raises(InputError, match="at least 2 feature rows"):
        frechet_distance(features_of_test_split[:1], features_of_test_split)


def test_frechet_distance_digits_farther_than_halves(studio: Studio, classifier) -> None:
    dataset = studio.dataset
    threes = classifier.features(np.asarray(dataset.images[dataset.digit_indices(3)[:600]]))
    sevens = classifier.features(np.asarray(dataset.images[dataset.digit_indices(7)[:300]]))
    assert frechet_distance(threes[:300], threes[300:]) < frechet_distance(threes[:300], sevens)


def test_energy_distance_halves_near_zero(features_of_test_split) -> None:
    first, second = features_of_test_split[:200], features_of_test_split[200:]
    spread = mean_within_distance(features_of_test_split)
    assert abs(energy_distance(first, second)) < 0.05 * spread


def test_energy_distance_grows_with_shift(features_of_test_split) -> None:
    near = energy_distance(features_of_test_split, features_of_test_split + 0.1)
    far = energy_distance(features_of_test_split, features_of_test_split + 1.0)
    assert near < far


def test_within_distance_zero_for_collapsed_set(features_of_test_split) -> None:
    collapsed = np.repeat(features_of_test_split[:1], 20, axis=0)
    assert mean_within_distance(collapsed) == 0.0
    assert mean_within_distance(features_of_test_split) > 0.0


def test_cross_distance_of_points_is_euclidean() -> None:
    assert mean_cross_distance(np.zeros((1, 2)), np.array([[3.0, 4.0]])) == pytest.approx(5.0)


# Classifier ---------------------------------------------------------------------------------------


def test_classifier_saved_under_fingerprint(studio: Studio, classifier) -> None:
    assert classifier.path.is_file()
    assert classifier.path.parent == studio.cache_dir / "quality" / studio.dataset.fingerprint


def test_classifier_reload_keeps_accuracy(classifier) -> None:
    loaded = load_classifier(classifier.path)
    assert loaded.test_accuracy == classifier.test_accuracy
    assert loaded.config == TINY_CLASSIFIER


def test_classifier_learns_digits(classifier) -> None:
    assert classifier.test_accuracy > 0.5


def test_recognisability_matches_test_accuracy(studio: Studio, classifier) -> None:
    dataset = studio.dataset
    test = dataset.split == 1
    correct = 0.0
    for digit in DIGITS:
        images = np.asarray(dataset.images[test & (dataset.digits == digit)])
        correct += classifier.recognisability(images, digit) * len(images)
    assert correct / np.count_nonzero(test) == pytest.approx(classifier.test_accuracy, abs=1e-9)


def test_classifier_corrupt_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_classifier(path)


def test_classifier_config_invalid_epochs_rejected() -> None:
    with pytest.raises(InputError, match="epochs=0"):
        ClassifierConfig(epochs=0)


# Per-model metrics --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_quality(studio: Studio, classifier):
    studio.train_model(4, 0, 7, FAST_CONFIG)
    return evaluate_model(studio, classifier, 4, 0, 7, generated_count=64)


def test_model_quality_shares_in_range(model_quality) -> None:
    for name in ("recognisability_generated", "recognisability_real", "consistency_generated", "consistency_real"):
        assert 0.0 <= getattr(model_quality, name) <= 1.0, name


def test_model_quality_halves_split_real_images(model_quality) -> None:
    assert model_quality.half_size == model_quality.real_count // 2
    assert model_quality.frechet_real_halves >= 0.0


def test_model_quality_counts_generated(model_quality) -> None:
    assert model_quality.generated_count == 64
    assert model_quality.training_images == model_quality.real_count


def test_model_quality_missing_model_rejected(studio: Studio, classifier) -> None:
    with pytest.raises(InputError, match="no model for digit 9 cluster 6"):
        evaluate_model(studio, classifier, 9, 6, 7)


def test_model_table_lists_every_row(model_quality, classifier) -> None:
    result = {"models": [model_quality.to_dict()], "classifier": classifier.summary(), "result_file": "x.json"}
    table = format_model_table(result)
    assert "recog gen" in table
    assert len(table.splitlines()) == 5


# Held-out study -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(studio: Studio, tmp_path_factory: pytest.TempPathFactory):
    """Run a three-cell study, recording every image set that DCGAN training receives."""
    received: list[np.ndarray] = []

    def recording(original):
        def train(images, *args, **kwargs):
            received.append(np.array(images))
            return original(images, *args, **kwargs)

        return train

    path = tmp_path_factory.mktemp("study") / "study.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("engine.studio.train_dcgan", recording(evaluation.train_dcgan))
        patch.setattr("engine.evaluation.train_dcgan", recording(evaluation.train_dcgan))
        result = run_held_out_study(studio, STUDY_SETTINGS, path)
    cells = [(writer, digit) for writer, digit in result["hidden_cells"]]
    return {"result": result, "path": path, "received": received, "reduced": studio.dataset.without_cells(cells)}


def test_sample_cells_one_per_writer(studio: Studio) -> None:
    cells = sample_cells(studio.dataset, 50, seed=0)
    assert len({writer for writer, _ in cells}) == 50


def test_sample_cells_balanced_digits(studio: Studio) -> None:
    cells = sample_cells(studio.dataset, 50, seed=0)
    assert np.bincount([digit for _, digit in cells], minlength=10).tolist() == [5] * 10


def test_sample_cells_have_two_images(studio: Studio) -> None:
    for writer, digit in sample_cells(studio.dataset, 50, seed=0):
        assert len(studio.dataset.cell_indices(writer, digit)) >= evaluation.MIN_HIDDEN_IMAGES


def test_sample_cells_repeatable(studio: Studio) -> None:
    assert sample_cells(studio.dataset, 20, seed=4) == sample_cells(studio.dataset, 20, seed=4)


def test_sample_cells_too_many_rejected(studio: Studio) -> None:
    with pytest.raises(InputError, match="writers have all ten digits"):
        sample_cells(studio.dataset, 10_000, seed=0)


def test_without_cells_matches_chained_without_cell(studio: Studio) -> None:
    cells = sample_cells(studio.dataset, 3, seed=1)
    chained = studio.dataset
    for writer, digit in cells:
        chained = chained.without_cell(writer, digit)
    together = studio.dataset.without_cells(cells)
    assert together.fingerprint == chained.fingerprint
    assert len(together.digits) == len(chained.digits)


def test_study_reduced_dataset_has_empty_hidden_cells(study) -> None:
    reduced = study["reduced"]
    assert study["result"]["reduced_fingerprint"] == reduced.fingerprint
    for writer, digit in study["result"]["hidden_cells"]:
        assert len(reduced.cell_indices(writer, digit)) == 0


def test_study_clustering_excludes_hidden_writers(studio: Studio, study) -> None:
    clustering = studio.clustering(STUDY_DIGIT, 7, study["reduced"])
    for writer, _ in study["result"]["hidden_cells"]:
        assert writer not in clustering.writers


def test_study_training_images_exclude_hidden(studio: Studio, study) -> None:
    dataset = studio.dataset
    hidden = {
        dataset.images[index].tobytes()
        for writer, digit in study["result"]["hidden_cells"]
        for index in dataset.cell_indices(writer, digit)
    }
    assert study["received"], "the study trained no model, so nothing was checked"
    for images in study["received"]:
        assert not hidden & {image.tobytes() for image in images}


def test_study_trains_cluster_and_all_writers_models(study) -> None:
    digit_image_count = len(study["reduced"].digit_indices(STUDY_DIGIT))
    assert any(len(images) == digit_image_count for images in study["received"])
    assert len(study["received"]) == len(study["result"]["models"]) + 1


def test_study_classifier_trained_without_hidden_cells(study) -> None:
    assert study["result"]["classifier"]["fingerprint"] == study["reduced"].fingerprint


def test_study_nearest_writer_is_another_writer(study) -> None:
    for cell in study["result"]["cells"]:
        assert cell["nearest_writer"] not in (None, cell["writer"])
        assert cell["nearest_writer_images"] >= evaluation.MIN_HIDDEN_IMAGES


def test_study_other_cluster_differs_from_chosen(study) -> None:
    for cell in study["result"]["cells"]:
        assert cell["other_cluster"] != cell["vote_cluster"]


def test_study_every_cell_has_all_methods(study) -> None:
    summary = study["result"]["summary"]
    assert summary["paired_cells"] == STUDY_SETTINGS.cells
    assert set(summary["metrics"]["energy_distance"]) == set(METHODS)


def test_study_result_file_complete(study) -> None:
    saved = json.loads(study["path"].read_text())
    assert saved["complete"] is True
    assert saved["digits_done"] == [STUDY_DIGIT]
    assert "_pooled" not in saved["cells"][0]


def test_study_table_names_methods(study) -> None:
    result = dict(study["result"], result_file=str(study["path"]))
    table = format_study_table(result)
    for label in evaluation.METHOD_LABELS.values():
        assert label in table


# evaluate command ---------------------------------------------------------------------------------


@pytest.fixture
def run(data_dir: Path, studio: Studio, capsys):
    """Run `evaluate` in-process with the tiny classifier's settings; return (status, stdout, stderr)."""
    tiny = ["--classifier-epochs", str(TINY_CLASSIFIER.epochs), "--classifier-images", str(TINY_CLASSIFIER.max_train_images)]

    def invoke(*args: str) -> tuple[int, str, str]:
        status = main(["evaluate", *tiny, *args, "--data", str(data_dir), "--cache", str(studio.cache_dir)])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return invoke


def test_evaluate_one_model_json(run, model_quality) -> None:
    status, out, err = run("--digit", "4", "--cluster", "0", "--n", "64", "--json")
    result = json.loads(out)
    assert status == EXIT_OK, err
    assert [(row["digit"], row["cluster"]) for row in result["models"]] == [(4, 0)]
    assert Path(result["result_file"]).is_file()


def test_evaluate_digit_prints_table(run, model_quality) -> None:
    status, out, err = run("--digit", "4", "--n", "64")
    assert status == EXIT_OK, err
    assert out.splitlines()[0].split()[:2] == ["digit", "cluster"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "give --digit"),
        (("--digit", "11"), "digit must be 0-9, got 11"),
        (("--digit", "3", "--cluster", "9"), "cluster must be 0-6"),
        (("--cells", "0"), "hidden cells must be an integer >= 1"),
        (("--cells", "5", "--cluster", "1"), "--cluster does not apply"),
        (("--cells", "5000"), "writers have all ten digits"),
        (("--digit", "4", "--n", "1"), "--n must be at least 2"),
        (("--digit", "4", "--classifier-images", "5"), "max_train_images=5 should be None or an integer >= 10"),
    ],
)
def test_evaluate_bad_input_exit_2(run, arguments, message) -> None:
    status, _, err = run(*arguments)
    assert status == EXIT_INPUT_ERROR
    assert message in err


def test_evaluate_digit_without_models_exit_2(data_dir: Path, tmp_path: Path, capsys) -> None:
    status = main(["evaluate", "--digit", "8", "--data", str(data_dir), "--cache", str(tmp_path)])
    assert status == EXIT_INPUT_ERROR
    assert "no saved model of digit 8" in capsys.readouterr().err


def test_evaluate_help_describes_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert "--cells" in capsys.readouterr().out


# Evaluate page ------------------------------------------------------------------------------------


@pytest.fixture
def evaluate_page(studio: Studio, data_dir: Path, study, monkeypatch):
    """Run app_pages/evaluate.py alone, on a cache holding the three-cell study's result."""
    from streamlit.testing.v1 import AppTest

    path = evaluation.results_folder(studio) / STUDY_SETTINGS.file_name(studio.representation)
    evaluation.write_json(study["result"], path)
    monkeypatch.setenv("FEMNIST_DATA", str(data_dir))
    monkeypatch.setenv("FEMNIST_CACHE", str(studio.cache_dir))
    monkeypatch.setenv("FEMNIST_DEVICE", "cpu")
    return AppTest.from_file(str(REPO_ROOT / "app_pages" / "evaluate.py"), default_timeout=180).run()


def test_evaluate_page_runs_without_error(evaluate_page) -> None:
    assert not evaluate_page.exception
    assert not evaluate_page.error


def test_evaluate_page_shows_method_chart(evaluate_page) -> None:
    assert len(evaluate_page.get("plotly_chart")) == 1


def test_evaluate_page_shows_cell_and_model_grids(evaluate_page) -> None:
    # Five panels for the chosen cell, two for the chosen model.
    assert len(evaluate_page.get("image")) == 7


def test_evaluate_page_lists_study_models(evaluate_page, study, studio: Studio) -> None:
    path = evaluation.results_folder(studio) / STUDY_SETTINGS.file_name(studio.representation)
    page = evaluate_page.selectbox(key="evaluate.source").set_value(path).run()
    assert not page.exception
    assert len(page.dataframe[-1].value) == len(study["result"]["models"])
