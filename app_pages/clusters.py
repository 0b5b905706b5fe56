"""Clusters: the writers of one digit grouped by style, on a UMAP map, with real images of each cluster."""

from __future__ import annotations

import streamlit as st

from engine.clustering import DigitClustering
from engine.studio import Studio
from studio_app import figures
from studio_app.feedback import show_input_errors
from studio_app.gallery import show_images
from studio_app.resources import StudioSettings, cluster_sample, current_settings, current_studio, umap_points
from studio_app.selection import WRITER, choose_digit, choose_k, choose_writer, set_choice, writer_label

PAGE = "clusters"
CHART_KEY = f"{PAGE}.map"
GALLERY_COLUMNS = 12  # images per gallery row
GALLERY_IMAGES = 24  # real images shown per cluster


def main() -> None:
    studio = current_studio()
    settings = current_settings()
    st.title("Clusters")
    st.caption(
        "For each digit, writers are grouped by k-means on their style vectors (the mean features of "
        "their images of that digit). The map places similar writers close together."
    )

    digit_column, k_column = st.columns([4, 1], vertical_alignment="bottom")
    with digit_column:
        digit = choose_digit(PAGE)
    with k_column:
        k = choose_k(PAGE)

    with show_input_errors():
        show_clusters(studio, settings, digit, k)


def show_clusters(studio: Studio, settings: StudioSettings, digit: int, k: int) -> None:
    """Draw the writer choice, the cluster statistics, the UMAP map and the gallery of one clustering."""
    with st.spinner(f"Clustering the writers of digit {digit} into {k} clusters and placing them on a map..."):
        clustering = studio.clustering(digit, k)
        points = umap_points(settings, digit, k)

    writer = choose_writer(
        PAGE,
        clustering.writers,
        format_func=writer_label(studio.dataset),
        help=f"Only writers with images of digit {digit} are on the map. Click a point to choose its writer.",
    )
    shared_writer = st.session_state.get(WRITER)
    if writer is None and shared_writer is not None:
        st.info(f"Writer {shared_writer} has no image of digit {digit}, so they are not on this map.", icon=":material/info:")
    writer_cluster = clustering.cluster_of(writer) if writer is not None else None

    show_statistics(clustering, writer, writer_cluster)

    map_column, sizes_column = st.columns([3, 1])
    with map_column:
        st.plotly_chart(
            figures.umap_scatter(points, k, digit, writer),
            key=CHART_KEY,
            on_select=select_clicked_writer,
            selection_mode="points",
        )
        st.caption("Hover for writer, cluster and image count; click a point to choose that writer.")
    with sizes_column:
        st.markdown("**Writers per cluster**")
        st.plotly_chart(
            figures.cluster_size_bars(clustering.cluster_sizes, clustering.cluster_image_counts, writer_cluster),
            key=f"{PAGE}.sizes",
        )

    st.subheader(f"Real images of digit {digit} per cluster")
    show_gallery(settings, clustering, writer, writer_cluster)


def show_statistics(clustering: DigitClustering, writer: str | None, writer_cluster: int | None) -> None:
    """Show writer count, silhouette and the chosen writer's cluster as metrics."""
    columns = st.columns(3)
    columns[0].metric(f"Writers of digit {clustering.digit}", f"{len(clustering.writers):,}")
    columns[1].metric(
        "Silhouette",
        f"{clustering.silhouette:.3f}",
        help="Mean silhouette of the writers' style vectors: near 1 for well separated clusters, near 0 for overlapping ones.",
    )
    if writer is not None:
        columns[2].metric(f"Cluster of {writer}", str(writer_cluster))


def select_clicked_writer() -> None:
    """Make the writer of a clicked map point the chosen writer; runs before the next rerun."""
    event = st.session_state.get(CHART_KEY)
    points = event["selection"]["points"] if event else []
    if not points:
        return
    customdata = points[0].get("customdata")
    if customdata:
        set_choice(WRITER, customdata[0])


def show_gallery(settings: StudioSettings, clustering: DigitClustering, writer: str | None, writer_cluster: int | None) -> None:
    """Show a random sample of each cluster's real images."""
    sizes = clustering.cluster_sizes
    image_counts = clustering.cluster_image_counts
    for cluster in range(clustering.k):
        heading = f"**Cluster {cluster}**: {sizes[cluster]} writers, {image_counts[cluster]:,} images"
        if cluster == writer_cluster:
            heading += f" · :blue-background[contains writer {writer}]"
        st.markdown(heading)
        sample = cluster_sample(settings, clustering.digit, cluster, clustering.k, GALLERY_IMAGES)
        show_images(sample, columns=GALLERY_COLUMNS)


main()
