"""Evaluate: how close generated handwriting comes to real handwriting, per model and on held-out cells.

The page reads the JSON results that `python -m engine evaluate` writes under <cache>/quality/ and
computes nothing heavy itself: the image grids come from saved models in well under a second, and
measuring one saved model on request takes seconds once the feature classifier is trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine import evaluation
from engine.dataset import FemnistDataset
from engine.dcgan import generate, load_checkpoint
from engine.quality import load_or_train_classifier
from engine.studio import Studio
from studio_app.feedback import show_input_errors
from studio_app.gallery import show_images
from studio_app.resources import StudioSettings, current_settings, current_studio, load_studio
from studio_app.selection import choose_digit, choose_k

PAGE = "evaluate"
GRID_IMAGES = 24  # images per grid
GRID_COLUMNS = 6
GRID_SEED = 1  # noise seed of the generated grids and the sample of real images, so reruns show the same images
METRIC_LABELS = {
    "energy_distance": "Energy distance",
    "cross_distance": "Mean cross distance",
    "mean_distance": "Distance between feature means",
}
METHOD_COLOURS = {
    evaluation.OURS: "#1f77b4",
    evaluation.OTHER_CLUSTER: "#ff7f0e",
    evaluation.ALL_WRITERS: "#2ca02c",
    evaluation.NEAREST_WRITER: "#7f7f7f",
}


def main() -> None:
    studio = current_studio()
    settings = current_settings()
    st.title("Evaluate")
    st.caption(
        "Generated and real handwriting are compared in the features of a small digit classifier "
        "trained on the train split. Results come from `python -m engine evaluate`; see docs/quality.md."
    )

    folder = evaluation.results_folder(studio)
    study_files = sorted(folder.glob("held-out-*.json"))
    model_files = sorted(folder.glob("models-k*.json"))

    held_out_tab, models_tab = st.tabs(["Held-out cells", "Per-model metrics"])
    with held_out_tab, show_input_errors():
        show_held_out(settings, study_files)
    with models_tab, show_input_errors():
        show_model_metrics(studio, settings, study_files, model_files)


# Held-out cells ---------------------------------------------------------------------------------


def show_held_out(settings: StudioSettings, study_files: list[Path]) -> None:
    """Show one held-out study: its summary, the method comparison chart, and one cell's images."""
    if not study_files:
        st.info(
            "No held-out study yet. Run `python -m engine evaluate --cells 50 --epochs 30` to hide 50 "
            "real cells and compare cluster-GAN-cluster with three baselines on them.",
            icon=":material/info:",
        )
        return
    path = st.selectbox("Study", study_files, format_func=lambda path: path.name, key=f"{PAGE}.study")
    result = read_result(str(path), path.stat().st_mtime_ns)
    summary = result["summary"]

    columns = st.columns(4)
    columns[0].metric("Hidden cells", f"{summary['paired_cells']} of {summary['cells']}", help="Cells with a value for every method, of those evaluated so far.")
    columns[1].metric(
        "Digits done",
        f"{len(result['digits_done'])} of {len(result['settings']['digits'])}",
        help=f"Digits evaluated so far: {', '.join(map(str, result['digits_done'])) or 'none'}.",
    )
    columns[2].metric("Classifier test accuracy", f"{result['classifier']['test_accuracy']:.1%}")
    training_seconds = sum(row["training_seconds"] for row in [*result["models"], *result["all_writers_models"]])
    columns[3].metric(
        "Model training time",
        f"{training_seconds / 60:.0f} min",
        help=f"Summed over the study's models, on device {result['machine']['device']}. This run of the study took {result.get('elapsed_seconds', 0) / 60:.1f} min, less when the models were already saved.",
    )
    if not result["complete"]:
        st.warning("This study is still running or was stopped: only the digits listed are in it.", icon=":material/hourglass_top:")
    if not summary["metrics"]:
        st.info("No cell has a value for every method yet.", icon=":material/info:")
        return

    metric = st.radio(
        "Distance",
        list(METRIC_LABELS),
        format_func=METRIC_LABELS.get,
        horizontal=True,
        key=f"{PAGE}.metric",
        help=(
            "Energy distance is the headline: unbiased for a cell's few images and not fooled by a "
            "generator that collapses onto the mean. Lower is closer to the hidden real images."
        ),
    )
    st.plotly_chart(method_bars(summary, metric), key=f"{PAGE}.methods")
    st.dataframe(method_table(summary), hide_index=True)
    settings_text = result["settings"]
    st.caption(
        f"Bars: mean over {summary['paired_cells']} cells; error bars: standard error of the mean. Models: "
        f"{settings_text['config']['epochs']} epochs, batch {settings_text['config']['batch_size']}, k={settings_text['k']}, "
        f"{settings_text['generated_per_model']} generated images each; all hidden cells were removed "
        "from the data before clustering, voting and training."
    )

    st.subheader("One hidden cell")
    cells = result["cells"]
    table = cell_table(cells)
    st.dataframe(table, hide_index=True)
    position = st.selectbox(
        "Cell",
        range(len(cells)),
        format_func=lambda index: f"{cells[index]['writer']} · digit {cells[index]['digit']}",
        key=f"{PAGE}.cell",
    )
    show_cell_images(settings, result, cells[position])


def method_bars(summary: dict, metric: str) -> go.Figure:
    """Draw the mean distance of each method with standard-error bars and the ratio to ours."""
    rows = summary["metrics"][metric]
    ratios = summary["ratios"][metric]
    methods = list(evaluation.METHODS)
    labels = []
    for method in methods:
        ratio = 1.0 if method == evaluation.OURS else ratios[method]
        labels.append("" if ratio is None else f"{ratio:.2f} × ours")
    figure = go.Figure(
        go.Bar(
            x=[evaluation.METHOD_LABELS[method] for method in methods],
            y=[rows[method]["mean"] for method in methods],
            error_y={"type": "data", "array": [rows[method]["sem"] or 0.0 for method in methods], "visible": True},
            marker_color=[METHOD_COLOURS[method] for method in methods],
            text=labels,
            textposition="outside",
            hovertemplate="%{x}<br>mean %{y:.3f}<extra></extra>",
        )
    )
    figure.update_layout(
        height=380,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"title": {"text": f"{METRIC_LABELS[metric]} (lower is closer)"}, "rangemode": "tozero"},
    )
    return figure


def method_table(summary: dict) -> pd.DataFrame:
    """Return one row per method: mean and spread of each distance, ratios to ours and the pooled FD."""
    pooled = summary.get("pooled_frechet_distance") or {}
    rows = []
    for method in evaluation.METHODS:
        row = {"method": evaluation.METHOD_LABELS[method]}
        for metric, label in METRIC_LABELS.items():
            values = summary["metrics"][metric][method]
            row[f"{label} mean"] = values["mean"]
            row[f"{label} std"] = values["std"]
            row[f"{label} ratio to ours"] = 1.0 if method == evaluation.OURS else summary["ratios"][metric][method]
        row["ours closer (energy)"] = None if method == evaluation.OURS else summary["ours_closer_share"]["energy_distance"][method]
        row["pooled Fréchet distance"] = pooled.get(method)
        rows.append(row)
    return pd.DataFrame(rows)


def cell_table(cells: list[dict]) -> pd.DataFrame:
    """Return one row per hidden cell with the energy distance of each method."""
    rows = []
    for cell in cells:
        row = {
            "writer": cell["writer"],
            "digit": cell["digit"],
            "hidden images": cell.get("hidden_images"),
            "chosen cluster": cell["vote_cluster"],
            "other cluster": cell["other_cluster"],
            "nearest writer": cell["nearest_writer"],
        }
        for method in evaluation.METHODS:
            distances = cell["methods"].get(method)
            row[evaluation.METHOD_LABELS[method]] = None if distances is None else distances["energy_distance"]
        rows.append(row)
    return pd.DataFrame(rows)


def show_cell_images(settings: StudioSettings, result: dict, cell: dict) -> None:
    """Show the hidden real images beside each method's images for the cell."""
    studio = load_studio(settings)
    reduced = reduced_dataset(settings, hidden_cells_key(result))
    writer, digit = cell["writer"], cell["digit"]
    k = result["settings"]["k"]
    panels = [("Hidden real images", np.asarray(studio.dataset.images[studio.dataset.cell_indices(writer, digit)]))]
    if cell["chosen_cluster"] is not None:
        path = studio.model_path(digit, cell["chosen_cluster"], k, reduced)
        panels.append((f"Cluster-GAN-cluster (cluster {cell['chosen_cluster']})", generated_grid(str(path), file_version(path))))
    if cell["other_cluster"] is not None:
        path = studio.model_path(digit, cell["other_cluster"], k, reduced)
        panels.append((f"Random other cluster ({cell['other_cluster']})", generated_grid(str(path), file_version(path))))
    all_writers = next(row for row in result["all_writers_models"] if row["digit"] == digit)
    path = Path(all_writers["model_path"])
    panels.append((f"GAN of all writers ({all_writers['epochs_done']} epochs)", generated_grid(str(path), file_version(path))))
    if cell["nearest_writer"] is not None:
        images = np.asarray(reduced.images[reduced.cell_indices(cell["nearest_writer"], digit)])
        panels.append((f"Nearest writer {cell['nearest_writer']}", images))

    for column, (title, images) in zip(st.columns(len(panels)), panels):
        with column:
            st.markdown(f"**{title}**")
            show_images(images[:GRID_IMAGES], columns=min(GRID_COLUMNS, max(len(images), 1)), scale=2)


# Per-model metrics ------------------------------------------------------------------------------


def show_model_metrics(studio: Studio, settings: StudioSettings, study_files: list[Path], model_files: list[Path]) -> None:
    """Show a sortable table of per-model metrics and one model's real and generated images."""
    sources = [*study_files, *model_files]
    if sources:
        path = st.selectbox("Results", sources, format_func=source_label, key=f"{PAGE}.source")
        result = read_result(str(path), path.stat().st_mtime_ns)
        rows = result.get("models", [])
        st.dataframe(model_table(rows), hide_index=True)
        st.caption(
            "Recognisability: share classified as the digit. FD: Fréchet distance between as many generated "
            "images as half the real ones and the other half; FD real halves is the same between the two "
            "halves, the floor that sample noise sets. Consistency: share placed in the model's cluster, "
            "as single images and as random cell-sized sets. Diversity: mean feature distance between images."
        )
        if rows:
            show_model_images(settings, result, rows)
    else:
        st.info("No per-model results yet. Measure a saved model below or run `python -m engine evaluate --digit 3`.", icon=":material/info:")

    with st.expander("Measure a saved model of the full dataset"):
        measure_model_form(studio)


def source_label(path: Path) -> str:
    """Return a result file's name with what it contains."""
    if path.name.startswith("held-out-"):
        return f"models trained by the study {path.name}"
    return f"models of the full dataset ({path.name})"


def model_table(rows: list[dict]) -> pd.DataFrame:
    """Return the per-model rows with readable column names."""
    columns = {
        "digit": "digit",
        "cluster": "cluster",
        "training_images": "training images",
        "epochs_done": "epochs",
        "recognisability_generated": "recognisability generated",
        "recognisability_real": "recognisability real",
        "frechet_generated": "FD generated",
        "frechet_real_halves": "FD real halves",
        "consistency_generated": "consistency generated",
        "consistency_real": "consistency real",
        "consistency_sets_generated": "set consistency generated",
        "consistency_sets_real": "set consistency real",
        "diversity_generated": "diversity generated",
        "diversity_real": "diversity real",
    }
    table = pd.DataFrame(rows)
    present = [column for column in columns if column in table.columns]
    return table[present].rename(columns=columns)


def show_model_images(settings: StudioSettings, result: dict, rows: list[dict]) -> None:
    """Show a chosen model's real training images beside images it generates."""
    position = st.selectbox(
        "Model",
        range(len(rows)),
        format_func=lambda index: f"digit {rows[index]['digit']} · cluster {rows[index]['cluster']}",
        key=f"{PAGE}.model",
    )
    row = rows[position]
    studio = load_studio(settings)
    dataset = reduced_dataset(settings, hidden_cells_key(result)) if result.get("kind") == "held-out-study" else studio.dataset
    real = studio.cluster_images(row["digit"], row["cluster"], row["k"], dataset)
    shown = real[np.sort(np.random.default_rng(GRID_SEED).permutation(len(real))[:GRID_IMAGES])]
    path = Path(row["model_path"])

    if row["training_images"] != len(real):
        st.warning(
            f"This model was trained on {row['training_images']:,} images, but cluster {row['cluster']} now has "
            f"{len(real):,}: the clustering changed after training. Train the model again before trusting its metrics.",
            icon=":material/warning:",
        )
    real_column, generated_column = st.columns(2)
    with real_column:
        st.markdown(f"**Real images of cluster {row['cluster']}** ({len(real):,} in all)")
        show_images(shown, columns=GRID_COLUMNS)
    with generated_column:
        st.markdown(f"**Generated by its DCGAN** ({row['epochs_done']} epochs)")
        show_images(generated_grid(str(path), file_version(path)), columns=GRID_COLUMNS)


def measure_model_form(studio: Studio) -> None:
    """Measure one saved model of the full dataset and add it to the per-model results."""
    digit = choose_digit(PAGE)
    k = choose_k(PAGE)
    saved = [cluster for cluster in range(k) if studio.model_path(digit, cluster, k).is_file()]
    if not saved:
        st.caption(f"No saved model of digit {digit} at k={k}. Train one on the Train page.")
        return
    cluster = st.selectbox("Cluster", saved, key=f"{PAGE}.measure_cluster")
    if st.button("Measure", icon=":material/straighten:"):
        with st.status(f"Measuring digit {digit} cluster {cluster}...") as status:
            status.write("Loading the feature classifier (training it takes a few minutes the first time)...")
            classifier = load_or_train_classifier(studio.dataset, studio.cache_dir)
            status.write("Generating images and computing the metrics...")
            row = evaluation.evaluate_model(studio, classifier, digit, cluster, k).to_dict()
            evaluation.record_model_results(evaluation.model_results_path(studio, k), [row], classifier)
            status.update(label=f"Measured digit {digit} cluster {cluster}", state="complete")
        st.rerun()


# Cached data ------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=32)
def read_result(path: str, modified_ns: int) -> dict:
    """Read a result file; `modified_ns` keys the cache, so a file the CLI rewrites is read again."""
    return evaluation.read_json(Path(path))


@st.cache_data(show_spinner=False, max_entries=64)
def generated_grid(checkpoint_path: str, modified_ns: int) -> np.ndarray:
    """Generate GRID_IMAGES images (n, 28, 28) with a saved model; `modified_ns` keys the cache."""
    checkpoint = load_checkpoint(checkpoint_path, "cpu")
    return generate(checkpoint, GRID_IMAGES, seed=GRID_SEED, device="cpu")


@st.cache_resource(max_entries=2)
def reduced_dataset(settings: StudioSettings, hidden_cells: tuple[tuple[str, int], ...]) -> FemnistDataset:
    """Return the dataset without a study's hidden cells; a resource, because it copies the images."""
    return load_studio(settings).dataset.without_cells(hidden_cells)


def hidden_cells_key(result: dict) -> tuple[tuple[str, int], ...]:
    """Return a study's hidden cells as a hashable cache key."""
    return tuple((writer, int(digit)) for writer, digit in result["hidden_cells"])


def file_version(path: Path) -> int:
    """Return the file's modification time in nanoseconds, or 0 when it is missing (load_checkpoint then raises)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


main()
