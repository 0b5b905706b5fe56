"""Writers: what the data holds, which cells of the writer x digit matrix are empty, and one
writer's real handwriting per digit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from engine.dataset import DIGITS, FemnistDataset
from studio_app import figures
from studio_app.gallery import missing_digits, show_writer_digits
from studio_app.resources import current_studio
from studio_app.selection import choose_writer, writer_label

PAGE = "writers"
SORT_ORDERS = ("writer id", "most images", "most missing cells", "fewest images")


def main() -> None:
    dataset = current_studio().dataset
    st.title("Writers")
    st.caption(
        "Each writer has up to ten cells, one per digit. The studio fills the empty ones with "
        "generated handwriting in the writer's style."
    )

    show_dataset_summary(dataset.summary())

    st.subheader("Which cells hold images")
    shown_writers = show_availability(dataset)

    st.subheader("Handwriting of one writer")
    if not shown_writers:
        shown_writers = list(dataset.writers)
    writer = choose_writer(PAGE, shown_writers, format_func=writer_label(dataset))
    if writer is not None:
        show_writer(dataset, writer)


def show_dataset_summary(summary: dict) -> None:
    """Show writers, images, complete writers and empty cells, then images and writers per digit."""
    columns = st.columns(4)
    columns[0].metric("Writers", f"{summary['writers']:,}")
    columns[1].metric("Images", f"{summary['images']:,}")
    columns[2].metric("Writers with all ten digits", f"{summary['writers_with_all_digits']:,}")
    columns[3].metric("Empty cells", f"{summary['empty_cells']:,}", help=f"Cells without an image, out of {summary['cells']:,} writer x digit cells.")

    per_digit = pd.DataFrame(
        [summary["images_per_digit"], summary["writers_per_digit"]],
        index=["images", "writers"],
    )
    per_digit.columns = [f"digit {digit}" for digit in per_digit.columns]
    st.dataframe(per_digit)
    splits = summary["images_per_split"]
    st.caption(f"{splits['train']:,} training and {splits['test']:,} test images, from {summary['source']}.")


def show_availability(dataset: FemnistDataset) -> list[str]:
    """Draw the sort and filter controls and the availability heatmap; return the writers shown, in order."""
    sort_column, search_column, filter_column = st.columns([2, 2, 2], vertical_alignment="bottom")
    order = sort_column.selectbox("Sort writers by", SORT_ORDERS, key=f"{PAGE}.sort")
    search = search_column.text_input("Writer id contains", key=f"{PAGE}.search", placeholder="e.g. f0005")
    only_missing = filter_column.checkbox("Only writers with missing cells", key=f"{PAGE}.only_missing")

    writers = sorted_writers(dataset, order)
    counts = dataset.counts
    if only_missing:
        writers = [writer for writer in writers if (counts[dataset.writer_position(writer)] == 0).any()]
    if search.strip():
        needle = search.strip().lower()
        writers = [writer for writer in writers if needle in writer.lower()]

    if not writers:
        st.warning("No writer matches these filters; the dropdown below lists every writer.", icon=":material/filter_alt_off:")
        return []
    rows = counts[[dataset.writer_position(writer) for writer in writers]]  # (shown writers, 10)
    st.plotly_chart(figures.availability_heatmap(rows, writers, f"sorted by {order}"), key=f"{PAGE}.heatmap")
    st.caption(
        f"{len(writers):,} writers shown, {int((rows == 0).sum()):,} empty cells among them (orange). "
        "Hover over a cell for the writer and the image count."
    )
    return writers


def sorted_writers(dataset: FemnistDataset, order: str) -> list[str]:
    """Return all writers in the chosen order; ties fall back to the writer id."""
    counts = dataset.counts
    totals = counts.sum(axis=1)
    missing = (counts == 0).sum(axis=1)
    ids = np.array(dataset.writers)
    if order == "most images":
        keys = (ids, -totals)
    elif order == "fewest images":
        keys = (ids, totals)
    elif order == "most missing cells":
        keys = (ids, -totals, -missing)
    else:
        keys = (ids,)
    # np.lexsort sorts by the last key first.
    return ids[np.lexsort(keys)].tolist()


def show_writer(dataset: FemnistDataset, writer: str) -> None:
    """Show the writer's counts and their images per digit, with empty cells marked."""
    row = dataset.counts[dataset.writer_position(writer)]
    missing = missing_digits(dataset, writer)
    missing_text = ", ".join(str(digit) for digit in missing) if missing else "none"
    st.markdown(
        f"Writer **{writer}** has **{int(row.sum())} images** of {len(DIGITS) - len(missing)} digits. "
        f"Missing digits: **{missing_text}**."
    )
    if missing:
        st.caption("Open the Compare page to generate a missing cell in this writer's style.")
    show_writer_digits(dataset, writer)


main()
