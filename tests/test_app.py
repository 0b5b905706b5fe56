"""Streamlit AppTest runs of every page on the real FEMNIST sample, with a cache prepared through the engine."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine import jobs
from engine.clustering import DEFAULT_K
from engine.dataset import DIGITS
from engine.dcgan import MIN_TRAINING_IMAGES
from tests.app_data import PROJECT_ROOT, AppData, prepare_app_data

APP = str(PROJECT_ROOT / "streamlit_app.py")
# Seconds per AppTest run. A digit clustered for the first time, or every digit clustered again
# without a hidden cell, takes up to about 30 s on two CPU cores.
RUN_TIMEOUT = 180
JOB_TIMEOUT = 240  # seconds for a one-epoch training job, including the worker's start


@pytest.fixture(scope="session")
def app_data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    return prepare_app_data(tmp_path_factory)


@pytest.fixture
def app(app_data: AppData, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """Return the app after its first run, reading the prepared data and cache."""
    for name, value in app_data.environment().items():
        monkeypatch.setenv(name, value)
    return AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()


def open_page(app: AppTest, name: str) -> AppTest:
    """Switch to app_pages/<name>.py, run it and return the app."""
    return app.switch_page(f"app_pages/{name}.py").run()


def values(elements) -> list[str]:
    return [element.value for element in elements]


def plain(markdown: str) -> str:
    """Return the text of a message with Markdown escapes removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def metric_values(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def stop_workers(cache_dir: Path) -> None:
    """Stop the worker processes that submit_training started for this cache folder."""
    jobs.stop_worker(cache_dir, "cpu")


# Set-up screen -----------------------------------------------------------------------------


def test_setup_screen_without_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEMNIST_DATA", raising=False)
    monkeypatch.setenv("FEMNIST_CACHE", str(tmp_path))
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    assert not app.exception
    assert "FEMNIST_DATA" in plain(app.error[0].value)
    assert any("(now not set)" in text for text in values(app.markdown))
    assert "Download into" in [text_input.label for text_input in app.text_input]
    assert [tab.label for tab in app.tabs] == ["Use a folder on this server", "Download the digits-only release"]


def test_setup_screen_names_missing_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv("FEMNIST_DATA", str(missing))
    monkeypatch.setenv("FEMNIST_CACHE", str(tmp_path / "cache"))
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    assert not app.exception
    assert str(missing) in plain(app.error[0].value)


def test_setup_screen_rejects_then_accepts_folder(
    app_data: AppData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FEMNIST_DATA", raising=False)
    monkeypatch.setenv("FEMNIST_CACHE", str(app_data.cache_dir))
    app = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    submit = "FormSubmitter:existing-folder-Use this folder"

    app.text_input[0].input(str(tmp_path))
    app.button(key=submit).click().run()
    assert not app.exception
    assert f"no FEMNIST files in {str(tmp_path)!r}" in plain(app.error[-1].value)

    app.text_input[0].input(str(app_data.data_dir))
    app.button(key=submit).click().run()
    assert not app.exception
    assert app.title[0].value == "Writers"


# Writers -----------------------------------------------------------------------------------


def test_writers_page_summary_from_data(app: AppTest, app_data: AppData) -> None:
    summary = app_data.studio.dataset.summary()
    assert not app.exception
    assert app.title[0].value == "Writers"
    metrics = metric_values(app)
    assert metrics["Writers"] == f"{summary['writers']:,}"
    assert metrics["Images"] == f"{summary['images']:,}"
    assert metrics["Empty cells"] == f"{summary['empty_cells']:,}"
    assert f"{summary['writers']:,} writers" in app.sidebar.caption[0].value


def test_writers_page_marks_missing_cells_of_chosen_writer(app: AppTest, app_data: AppData) -> None:
    dataset = app_data.studio.dataset
    writer = app_data.sparse_writer
    app.selectbox(key="writers.writer").set_value(writer).run()
    missing = [digit for digit in DIGITS if dataset.counts[dataset.writer_position(writer)][digit] == 0]
    assert not app.exception
    assert values(app.warning) == [
        f"Missing cell: writer {writer} has no image of digit {digit}." for digit in missing
    ]

    app.selectbox(key="writers.writer").set_value(app_data.complete_writer).run()
    assert not app.exception
    assert values(app.warning) == []
    assert any(f"Writer **{app_data.complete_writer}**" in text for text in values(app.markdown))


def test_writers_filter_keeps_writers_with_missing_cells(app: AppTest, app_data: AppData) -> None:
    counts = app_data.studio.dataset.counts
    app.checkbox(key="writers.only_missing").check().run()
    options = app.selectbox(key="writers.writer").options
    assert not app.exception
    assert len(options) == int((counts == 0).any(axis=1).sum())
    assert not any(option.endswith("all digits") for option in options)


def test_writers_search_narrows_dropdown(app: AppTest, app_data: AppData) -> None:
    app.text_input(key="writers.search").input(app_data.sparse_writer).run()
    options = app.selectbox(key="writers.writer").options
    assert not app.exception
    assert [option.split(" · ")[0] for option in options] == [app_data.sparse_writer]


# Clusters ----------------------------------------------------------------------------------


def test_clusters_page_digit_changes_map_and_gallery(app: AppTest, app_data: AppData) -> None:
    open_page(app, "clusters")
    for digit in (3, 5):
        app.segmented_control(key="clusters.digit").set_value(digit).run()
        clustering = app_data.studio.clustering(digit, DEFAULT_K)
        assert not app.exception
        assert metric_values(app)[f"Writers of digit {digit}"] == f"{len(clustering.writers):,}"
        headings = [text for text in values(app.markdown) if text.startswith("**Cluster ")]
        assert headings[0].startswith(f"**Cluster 0**: {clustering.cluster_sizes[0]} writers")
        assert len(headings) == DEFAULT_K


def test_clusters_page_shows_cluster_of_chosen_writer(app: AppTest, app_data: AppData) -> None:
    writer = app_data.complete_writer
    app.selectbox(key="writers.writer").set_value(writer).run()
    open_page(app, "clusters")
    app.segmented_control(key="clusters.digit").set_value(3).run()
    cluster = app_data.studio.clustering(3, DEFAULT_K).cluster_of(writer)
    assert not app.exception
    assert app.selectbox(key="clusters.writer").value == writer
    assert metric_values(app)[f"Cluster of {writer}"] == str(cluster)


# Shared choices ----------------------------------------------------------------------------


def test_writer_and_digit_survive_page_switch(app: AppTest, app_data: AppData) -> None:
    writer = app_data.complete_writer
    assert app.selectbox(key="writers.writer").value != writer
    app.selectbox(key="writers.writer").set_value(writer).run()
    open_page(app, "clusters")
    app.segmented_control(key="clusters.digit").set_value(5).run()
    open_page(app, "compare")
    assert not app.exception
    assert app.selectbox(key="compare.writer").value == writer
    assert app.segmented_control(key="compare.digit").value == 5
    open_page(app, "train")
    assert app.segmented_control(key="train.digit").value == 5


# Train -------------------------------------------------------------------------------------


def test_train_page_lists_clusters_and_models(app: AppTest, app_data: AppData) -> None:
    open_page(app, "train")
    assert not app.exception
    assert len(app.selectbox(key="train.cluster").options) == DEFAULT_K + 1
    models = app.dataframe[0].value
    trained = models[models["digit"] == app_data.trained_digit]
    assert list(trained["epochs done"]) == [1]


def test_train_page_job_runs_in_worker(app: AppTest, app_data: AppData) -> None:
    digit = 5
    clustering = app_data.studio.clustering(digit, DEFAULT_K)
    sizes = clustering.cluster_image_counts
    cluster = min((count, index) for index, count in enumerate(sizes) if count >= MIN_TRAINING_IMAGES)[1]
    open_page(app, "train")
    app.segmented_control(key="train.digit").set_value(digit).run()
    app.selectbox(key="train.cluster").select_index(cluster + 1)
    app.number_input[1].set_value(1)  # epochs, inside the launch form
    try:
        app.button(key="FormSubmitter:train.launch-Launch training").click().run()
        assert not app.exception
        assert app.success[0].value.startswith("Queued job ")
        job_id = int(app.success[0].value.removeprefix("Queued job ").rstrip("."))

        job = jobs.open_job_store(app_data.cache_dir).wait(job_id, timeout_seconds=JOB_TIMEOUT)
        assert job.status == jobs.DONE, job.error
        assert len(job.losses["generator"]) == 1
    finally:
        stop_workers(app_data.cache_dir)

    open_page(app, "train")
    assert not app.exception
    assert any(f"Job {job_id}: digit {digit}, cluster {cluster}" in expander.label for expander in app.expander)
    models = app.dataframe[0].value
    assert ((models["digit"] == digit) & (models["cluster"] == cluster)).sum() == 1


# Compare -----------------------------------------------------------------------------------


def choose_cell(app: AppTest, writer: str, digit: int) -> AppTest:
    open_page(app, "compare")
    app.selectbox(key="compare.writer").set_value(writer).run()
    return app.segmented_control(key="compare.digit").set_value(digit).run()


def test_compare_page_generates_missing_cell(app: AppTest, app_data: AppData) -> None:
    writer, digit = app_data.sparse_writer, app_data.trained_digit
    choice = app_data.studio.choose_cluster(writer, digit, DEFAULT_K)
    choose_cell(app, writer, digit)
    markdown = values(app.markdown)
    assert not app.exception
    assert app.success[0].value.startswith(f"Chosen cluster {choice.cluster}: ")
    assert f"**Real X({writer}, {digit})**: 0 images" in markdown
    assert any(text.startswith(f"**Generated X({writer}, {digit})**: 64 images") for text in markdown)
    assert [button.label for button in app.get("download_button")] == ["PNG grid", "ZIP of single PNGs"]
    set_size = app_data.studio.consistency(
        app_data.studio.clustering(digit, DEFAULT_K), choice.cluster, np.zeros((0, 28, 28), np.uint8)
    ).set_size
    metric_labels = [metric.label for metric in app.metric]
    assert f"Generated sets of {set_size} in cluster {choice.cluster}" in metric_labels

    app.selectbox(key="compare.count").set_value(16).run()
    assert any(text.startswith(f"**Generated X({writer}, {digit})**: 16 images") for text in values(app.markdown))


def test_compare_page_offers_training_without_model(app: AppTest, app_data: AppData) -> None:
    digit = next(digit for digit in DIGITS if digit != app_data.trained_digit)
    writer = app_data.complete_writer
    choice = app_data.studio.choose_cluster(writer, digit, DEFAULT_K)
    assert not app_data.studio.model_path(digit, choice.cluster, DEFAULT_K).is_file()
    choose_cell(app, writer, digit)
    assert not app.exception
    assert f"No model for digit {digit}, cluster {choice.cluster}" in values(app.warning)[0]
    assert app.button(key="FormSubmitter:compare.train-Train this model").label == "Train this model"


def test_compare_page_hides_cell_from_method(app: AppTest, app_data: AppData) -> None:
    writer, digit = app_data.complete_writer, 3
    choose_cell(app, writer, digit)
    app.toggle(key="compare.hide").set_value(True).run()
    hidden = app_data.studio.choose_cluster(writer, digit, DEFAULT_K, hide=True)
    assert not app.exception
    assert app.success[0].value.startswith(f"Chosen cluster {hidden.cluster}: ")
    assert "--hide" in app.info[-1].value
