"""Compare: one cell X(writer, digit), the cluster chosen to fill it and why, and generated
handwriting beside the writer's real images, with cluster-consistency checks and downloads.

Generation with a saved model runs here, because it takes well under a second. A missing model is
trained by a job in the worker process, whose progress is shown in place.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import jobs
from engine.completion import RULE_FALLBACK, TIE_BREAK, ClusterChoice
from engine.dataset import FemnistDataset
from engine.dcgan import DCGANConfig
from engine.images import grid_png_bytes, png_zip_bytes
from engine.studio import FillResult, Studio
from engine.style import DEFAULT_REPRESENTATION
from engine.tasks import submit_training
from studio_app import figures
from studio_app.feedback import show_error, show_input_errors
from studio_app.gallery import SCALE, count_images, show_images, show_writer_overview
from studio_app.jobs_view import job_in_place, training_jobs_matching
from studio_app.resources import (
    StudioSettings,
    cell_choice,
    checkpoint_summary,
    cluster_placement,
    cluster_sample,
    current_settings,
    current_studio,
    dataset_view,
    fill_cell,
    job_store,
    model_file,
)
from studio_app.selection import choose_digit, choose_k, choose_writer, writer_label

PAGE = "compare"
GENERATED_COUNTS = (16, 32, 64, 128)
DEFAULT_GENERATED_COUNT = 64
CLUSTER_IMAGES = 24  # real images of the chosen cluster shown
MAX_SEED = 2**31 - 1


def main() -> None:
    studio = current_studio()
    settings = current_settings()
    dataset = studio.dataset
    st.title("Compare")
    st.caption(
        "Choose a cell X(writer, digit). Related writers, who share the writer's cluster on other "
        "digits, vote for a cluster of this digit; that cluster's DCGAN generates the cell."
    )

    writer_column, k_column = st.columns([4, 1], vertical_alignment="bottom")
    with writer_column:
        writer = choose_writer(PAGE, dataset.writers, format_func=writer_label(dataset))
    with k_column:
        k = choose_k(PAGE)
    digit = choose_digit(PAGE)
    if writer is None:
        return

    real_count = len(dataset.cell_indices(writer, digit))
    hide = st.toggle(
        "Hide this cell from the method",
        key=f"{PAGE}.hide",
        disabled=real_count == 0,
        help=(
            "Leave the writer's own images of this digit out of the clustering, the vote and the "
            "training images, so the generated images can be compared with them honestly. "
            "The first time, every digit is clustered again without the cell, which takes a while."
        ),
    )
    hide = hide and real_count > 0

    st.subheader(f"Real digits of writer {writer}")
    show_writer_overview(dataset, writer, marked_digit=digit)

    with show_input_errors():
        show_cell(studio, settings, writer, digit, k, hide)


def show_cell(studio: Studio, settings: StudioSettings, writer: str, digit: int, k: int, hide: bool) -> None:
    """Explain the cluster choice of the cell, show the cluster's real images and the generated images."""
    spinner_text = f"Clustering every digit with k={k}..."
    if hide:
        spinner_text = f"Clustering every digit with k={k} without X({writer}, {digit})..."
    with st.spinner(spinner_text):
        choice = cell_choice(settings, writer, digit, k, hide)
    dataset = dataset_view(settings, writer, digit, hide)
    hidden_cell = (writer, digit) if hide else None

    st.subheader("Which cluster fills this cell")
    show_choice(studio, dataset, choice)

    st.subheader(f"Real images of cluster {choice.cluster}, digit {digit}")
    show_images(cluster_sample(settings, digit, choice.cluster, k, CLUSTER_IMAGES, hidden_cell), columns=12)

    st.subheader("Generated images")
    path = model_file(settings, writer, digit, choice.cluster, k, hide)
    if not hide:
        follow_training_job(studio, digit, choice.cluster, k)
    if path.is_file():
        show_generated(settings, writer, digit, k, hide, path)
    else:
        offer_training(studio, writer, digit, choice.cluster, k, hide)


def show_choice(studio: Studio, dataset: FemnistDataset, choice: ClusterChoice) -> None:
    """Show the writer's cluster per other digit, the votes per cluster, the chosen cluster and the reason."""
    if choice.rule == RULE_FALLBACK:
        st.warning(f"Fallback: {choice.reason}.", icon=":material/help:")
    else:
        st.success(f"Chosen cluster {choice.cluster}: {choice.reason}.", icon=":material/how_to_vote:")

    clustering = studio.clustering(choice.digit, choice.k, dataset)
    own_column, vote_column = st.columns(2)
    with own_column:
        st.markdown(f"**Clusters of writer {choice.writer} on the other digits**")
        if choice.writer_clusters:
            st.dataframe(
                pd.DataFrame([
                    {"digit": digit, "cluster": cluster, "related writers": len(choice.related_writers[digit])}
                    for digit, cluster in choice.writer_clusters.items()
                ]),
                hide_index=True,
            )
        else:
            st.caption(f"Writer {choice.writer} has no digit other than {choice.digit}.")
    with vote_column:
        st.markdown(f"**Votes of related writers for the clusters of digit {choice.digit}**")
        st.dataframe(
            pd.DataFrame([
                {
                    "cluster": cluster,
                    "votes": votes,
                    f"images of digit {choice.digit}": clustering.cluster_image_counts[cluster],
                    "chosen": "✔" if cluster == choice.cluster else "",
                }
                for cluster, votes in enumerate(choice.votes)
            ]),
            hide_index=True,
        )
    if len(choice.tied) > 1:
        st.caption(f"Clusters {choice.tied} tied on votes; the tie-break is: {TIE_BREAK}.")


def follow_training_job(studio: Studio, digit: int, cluster: int, k: int) -> None:
    """Show the progress of a queued or running training job of this model, if there is one."""
    store = job_store(str(studio.cache_dir))
    active = [job for job in training_jobs_matching(store, model_params(studio, digit, cluster, k)) if job.is_active]
    if active:
        st.markdown(f"The model of cluster {cluster} is being trained:")
        job_in_place(str(studio.cache_dir), active[0].id)


def model_params(studio: Studio, digit: int, cluster: int, k: int) -> dict:
    """Return the training-job params that identify the model of (digit, cluster, k) of this dataset."""
    return {
        "digit": digit,
        "cluster": cluster,
        "k": k,
        "representation": studio.representation,
        "fingerprint": studio.dataset.fingerprint,
    }


def show_generated(settings: StudioSettings, writer: str, digit: int, k: int, hide: bool, path: Path) -> None:
    """Generate with the saved model and show the images beside the writer's real ones, with checks and downloads."""
    modified_ns = path.stat().st_mtime_ns
    model = checkpoint_summary(str(path), modified_ns)
    if not model["completed"]:
        st.warning(
            f"This model has finished {model['epochs_done']} of {model['epochs']} epochs; the images come "
            "from its last saved epoch.",
            icon=":material/hourglass_top:",
        )

    count_column, seed_column = st.columns(2)
    count = count_column.selectbox(
        "Images to generate", GENERATED_COUNTS, index=GENERATED_COUNTS.index(DEFAULT_GENERATED_COUNT), key=f"{PAGE}.count"
    )
    seed = seed_column.number_input(
        "Noise seed", min_value=0, max_value=MAX_SEED, value=0, step=1, key=f"{PAGE}.seed",
        help="The same model and seed give the same images.",
    )
    with st.spinner("Generating..."):
        result = fill_cell(settings, writer, digit, k, hide, int(count), int(seed), modified_ns)

    real_column, generated_column = st.columns([1, 2])
    with real_column:
        show_real_cell(result)
    with generated_column:
        st.markdown(
            f"**Generated X({writer}, {digit})**: {len(result.images)} images from the DCGAN of cluster "
            f"{result.choice.cluster} ({model['epochs_done']} epoch{'s' if model['epochs_done'] != 1 else ''}, "
            f"{model['images']:,} training images)"
        )
        show_images(result.images, columns=8)
        show_downloads(result)

    st.subheader("Cluster consistency")
    show_consistency(settings, result, k)


def show_real_cell(result: FillResult) -> None:
    """Show the writer's real images of the cell, or mark the cell as missing."""
    st.markdown(f"**Real X({result.writer}, {result.digit})**: {count_images(len(result.real_images))}")
    if len(result.real_images) == 0:
        st.warning(f"Missing cell: writer {result.writer} has no image of digit {result.digit}.", icon=":material/block:")
        return
    show_images(result.real_images, columns=min(len(result.real_images), 4))
    if result.hidden:
        st.caption("Hidden from the method: these images took no part in choosing the cluster or training the model.")


def show_downloads(result: FillResult) -> None:
    """Offer the generated images as one PNG grid and as a ZIP of single PNGs."""
    name = f"{result.writer}-digit{result.digit}-generated"
    grid_column, zip_column = st.columns(2)
    grid_column.download_button(
        "PNG grid",
        grid_png_bytes(result.images, columns=8, scale=SCALE),
        file_name=f"{name}.png",
        mime="image/png",
        icon=":material/image:",
        on_click="ignore",
    )
    zip_column.download_button(
        "ZIP of single PNGs",
        png_zip_bytes(result.images, prefix=name),
        file_name=f"{name}.zip",
        mime="application/zip",
        icon=":material/folder_zip:",
        on_click="ignore",
    )


def show_consistency(settings: StudioSettings, result: FillResult, k: int) -> None:
    """Show where the nearest-centroid rule places generated images, and the cluster's own real images."""
    report = result.consistency
    hidden_cell = (result.writer, result.digit) if result.hidden else None
    real_placement = cluster_placement(settings, result.digit, report.cluster, k, hidden_cell)
    generated_column, real_column = st.columns(2)
    with generated_column:
        st.plotly_chart(
            figures.placement_bars(
                report.generated_placement,
                report.cluster,
                f"Generated: {report.generated_in_cluster:.0%} of {report.generated_count} placed in cluster {report.cluster}",
            ),
            key=f"{PAGE}.consistency-generated",
        )
    with real_column:
        st.plotly_chart(
            figures.placement_bars(
                real_placement,
                report.cluster,
                f"Real images of cluster {report.cluster}: {report.real_in_cluster:.0%} of {report.real_count} placed back in it",
            ),
            key=f"{PAGE}.consistency-real",
        )
    st.caption(
        "Each image is placed in the cluster with the nearest centroid in style space. The real images "
        "of a cluster set the level to expect: generated images that match their cluster's style land "
        "in it about as often."
    )
    set_generated, set_real = st.columns(2)
    set_generated.metric(
        f"Generated sets of {report.set_size} in cluster {report.cluster}",
        f"{report.generated_sets_in_cluster:.0%}",
    )
    set_real.metric(
        f"Real sets of {report.set_size} in cluster {report.cluster}",
        f"{report.real_sets_in_cluster:.0%}",
    )
    st.caption(
        f"Sets: random groups of {report.set_size} images (a typical cell's size) placed by the mean of "
        "their style vectors, the way a writer is clustered. A single image is a noisy sample of a style; "
        "a set shows whether the images as a whole sit in the cluster."
    )


def offer_training(studio: Studio, writer: str, digit: int, cluster: int, k: int, hide: bool) -> None:
    """Say that the model is missing, and queue its training in the worker on request."""
    st.warning(f"No model for digit {digit}, cluster {cluster} (k={k}) is saved yet.", icon=":material/model_training:")
    if hide:
        # NOTE: engine.tasks.submit_training queues models of the full dataset only, so a model
        # trained without a hidden cell cannot run in the worker yet.
        command = f"python -m engine fill --data {studio.data_dir} --cache {studio.cache_dir} --writer {writer} --digit {digit} --k {k} --hide"
        if studio.representation != DEFAULT_REPRESENTATION:
            command += f" --representation {studio.representation}"
        st.info(
            "The worker trains models of the full dataset only. Train the model without this cell from "
            f"the command line, then reload this page:\n\n`{command}`",
            icon=":material/terminal:",
        )
        return

    store = job_store(str(studio.cache_dir))
    recent = training_jobs_matching(store, model_params(studio, digit, cluster, k))
    if recent and recent[0].is_active:
        return  # follow_training_job already shows it
    if recent and recent[0].status in (jobs.FAILED, jobs.CANCELLED):
        last = recent[0]
        reason = f": {last.error}" if last.error else "."
        show_error(f"The last training of this model, job {last.id}, was {last.status}{reason}")

    with st.form(f"{PAGE}.train"):
        epochs_column, batch_column = st.columns(2)
        epochs = epochs_column.number_input("Epochs", min_value=1, max_value=1000, value=DCGANConfig.epochs, step=1)
        batch_size = batch_column.number_input("Batch size", min_value=2, max_value=1024, value=DCGANConfig.batch_size, step=1)
        submitted = st.form_submit_button("Train this model", icon=":material/play_arrow:", type="primary")
    if submitted:
        config = DCGANConfig(epochs=int(epochs), batch_size=int(batch_size))
        submit_training(studio, digit, cluster, k, config)
        st.rerun()


main()
