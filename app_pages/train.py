"""Train: queue DCGAN training of one cluster or of every cluster of a digit, follow the jobs live,
and list the trained models.

Training runs in a worker process (`python -m engine worker`) that `submit_training` starts when
none is alive; this page only writes jobs and reads their progress.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from engine import jobs
from engine.clustering import DigitClustering
from engine.dcgan import MIN_TRAINING_IMAGES, DCGANConfig
from engine.studio import Studio
from engine.tasks import submit_training
from studio_app.feedback import show_input_errors
from studio_app.jobs_view import job_board
from studio_app.resources import StudioSettings, current_settings, current_studio, job_store, trained_models
from studio_app.selection import choose_digit, choose_k

PAGE = "train"
ALL_CLUSTERS = "all"
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 1024


def main() -> None:
    studio = current_studio()
    settings = current_settings()
    st.title("Train")
    st.caption(
        f"Each cluster of a digit gets its own DCGAN, trained on that cluster's real images. Training "
        f"runs in a separate worker process on device {studio.device}, so this page stays responsive "
        "and jobs keep running when the browser closes."
    )

    digit_column, k_column = st.columns([4, 1], vertical_alignment="bottom")
    with digit_column:
        digit = choose_digit(PAGE)
    with k_column:
        k = choose_k(PAGE)
    with show_input_errors():
        show_launch_form(studio, digit, k)

    st.subheader("Jobs")
    show_worker_state(studio)
    job_board(str(studio.cache_dir))

    st.subheader("Trained models")
    with show_input_errors():
        show_models(settings)


def show_launch_form(studio: Studio, digit: int, k: int) -> None:
    """Draw the cluster, epochs and batch size choice, and queue the jobs on submit."""
    with st.spinner(f"Clustering the writers of digit {digit}..."):
        clustering = studio.clustering(digit, k)

    with st.form(f"{PAGE}.launch"):
        cluster = st.selectbox(
            "Cluster",
            [ALL_CLUSTERS, *range(k)],
            format_func=cluster_label(clustering),
            key=f"{PAGE}.cluster",
        )
        epochs_column, batch_column = st.columns(2)
        epochs = epochs_column.number_input(
            "Epochs", min_value=1, max_value=MAX_EPOCHS, value=DCGANConfig.epochs, step=1,
            help="Passes over the cluster's images.",
        )
        batch_size = batch_column.number_input(
            "Batch size", min_value=2, max_value=MAX_BATCH_SIZE, value=DCGANConfig.batch_size, step=1,
            help="Images per optimiser step; lowered to the image count of a smaller cluster.",
        )
        submitted = st.form_submit_button("Launch training", icon=":material/play_arrow:", type="primary")

    saved = [cluster for cluster in range(k) if studio.model_path(digit, cluster, k).is_file()]
    if saved:
        st.caption(f"Saved models of digit {digit} (k={k}): cluster {', '.join(map(str, saved))}. Training again replaces them.")
    if submitted:
        config = DCGANConfig(epochs=int(epochs), batch_size=int(batch_size))
        clusters = list(range(k)) if cluster == ALL_CLUSTERS else [cluster]
        launch(studio, clustering, clusters, config)


def cluster_label(clustering: DigitClustering):
    """Return the dropdown label function for clusters: writers and images.

    The label must not change while the page is open (a model being saved, say), because
    Streamlit matches the chosen option by its label and would reset the choice.
    """
    sizes = clustering.cluster_sizes
    image_counts = clustering.cluster_image_counts

    def label(cluster) -> str:
        if cluster == ALL_CLUSTERS:
            return f"All {clustering.k} clusters of digit {clustering.digit}"
        text = f"Cluster {cluster}: {sizes[cluster]} writers, {image_counts[cluster]:,} images"
        if image_counts[cluster] < MIN_TRAINING_IMAGES:
            text += f" (too few to train, {MIN_TRAINING_IMAGES} needed)"
        return text

    return label


def launch(studio: Studio, clustering: DigitClustering, clusters: list[int], config: DCGANConfig) -> None:
    """Queue one training job per cluster and report which jobs were queued, reused or skipped."""
    image_counts = clustering.cluster_image_counts
    started_at = time.time()
    queued, reused, skipped = [], [], []
    for cluster in clusters:
        if image_counts[cluster] < MIN_TRAINING_IMAGES:
            skipped.append(cluster)
            continue
        job = submit_training(studio, clustering.digit, cluster, clustering.k, config)
        (queued if job.created_at >= started_at else reused).append(job)

    if queued:
        st.success(f"Queued {', '.join(f'job {job.id}' for job in queued)}.", icon=":material/check_circle:")
    if reused:
        st.info(
            f"The same training is already {', '.join(f'{job.status} as job {job.id}' for job in reused)}.",
            icon=":material/info:",
        )
    if skipped:
        st.warning(
            f"Skipped cluster {', '.join(map(str, skipped))}: fewer than {MIN_TRAINING_IMAGES} images to train "
            "on. Choose a smaller k to get larger clusters.",
            icon=":material/warning:",
        )


def show_worker_state(studio: Studio) -> None:
    """Say whether a worker serves this device, and offer to start one when jobs wait without it."""
    device = str(studio.device)
    store = job_store(str(studio.cache_dir))
    worker = store.live_worker(device)
    if worker is not None:
        st.caption(f"Worker {worker.id} (pid {worker.pid}) serves device {device}.")
        return
    waiting = [job for job in store.list_jobs(statuses=[jobs.QUEUED]) if job.device == device]
    if not waiting:
        st.caption(f"No worker runs for device {device}; launching a job starts one.")
        return
    st.warning(
        f"{len(waiting)} job(s) wait for device {device}, but no worker runs for it. "
        f"Its log is {jobs.worker_log_path(studio.cache_dir, device)}.",
        icon=":material/warning:",
    )
    if st.button("Start a worker", icon=":material/play_circle:"):
        jobs.ensure_worker(studio.cache_dir, studio.data_dir, device)
        st.rerun()


def show_models(settings: StudioSettings) -> None:
    """List the saved models of the dataset with the settings they were trained with."""
    rows = trained_models(settings)
    if not rows:
        st.info("No trained models yet.", icon=":material/info:")
        return
    table = pd.DataFrame([flatten_model_row(row) for row in rows])
    st.dataframe(table, hide_index=True)


def flatten_model_row(row: dict) -> dict:
    """Return a model row of `Studio.list_models` with its training settings as columns of their own."""
    if "error" in row:
        return {"path": row["path"], "error": row["error"]}
    config = row.get("config", {})
    return {
        "digit": row["digit"],
        "cluster": row["cluster"],
        "k": row["k"],
        "epochs done": row["epochs_done"],
        "epochs": config.get("epochs"),
        "completed": row["completed"],
        "batch size": config.get("batch_size"),
        "learning rate": config.get("learning_rate"),
        "latent size": config.get("latent_dim"),
        "seed": config.get("seed"),
        "training images": row["images"],
        "training seconds": row["training_seconds"],
        "created (UTC)": row["created_at"],
        "path": row["path"],
    }


main()
