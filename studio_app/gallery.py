"""Handwriting on screen: enlarged image grids, and one writer's real images per digit."""

from __future__ import annotations

import numpy as np
import streamlit as st

from engine.dataset import DIGITS, FemnistDataset
from engine.images import make_grid

SCALE = 3  # pixel repetition of every grid, so that 28x28 digits stay sharp and readable
SMALL_SCALE = 2  # for the compact per-digit overview


def show_images(images: np.ndarray, columns: int | None = None, caption: str | None = None, scale: int = SCALE) -> None:
    """Show uint8 ink images (n, 28, 28) as one enlarged grid, dark ink on white."""
    st.image(make_grid(images, columns, scale=scale), caption=caption)


def count_images(count: int) -> str:
    """Return "1 image" or "N images"."""
    return "1 image" if count == 1 else f"{count:,} images"


def missing_digits(dataset: FemnistDataset, writer: str) -> list[int]:
    """Return the digits of which `writer` has no image."""
    row = dataset.counts[dataset.writer_position(writer)]
    return [digit for digit in DIGITS if row[digit] == 0]


def show_writer_digits(dataset: FemnistDataset, writer: str, per_digit: int = 16) -> None:
    """Show one row per digit with up to `per_digit` of the writer's images; empty cells are marked."""
    for digit in DIGITS:
        indices = dataset.cell_indices(writer, digit)
        label_column, image_column = st.columns([1, 9], vertical_alignment="center")
        label_column.markdown(f"**Digit {digit}**  \n{count_images(len(indices))}")
        with image_column:
            if len(indices) == 0:
                st.warning(f"Missing cell: writer {writer} has no image of digit {digit}.", icon=":material/block:")
            else:
                sample = dataset.images[indices[:per_digit]]
                show_images(sample, columns=len(sample))


def show_writer_overview(dataset: FemnistDataset, writer: str, marked_digit: int | None = None, per_digit: int = 4) -> None:
    """Show the writer's digits side by side, up to `per_digit` images each; `marked_digit` is labelled."""
    columns = st.columns(len(DIGITS))
    for digit, column in zip(DIGITS, columns):
        indices = dataset.cell_indices(writer, digit)
        with column:
            title = f"**{digit}**"
            if digit == marked_digit:
                title = f"**:blue-background[{digit} (this cell)]**"
            st.markdown(f"{title}  \n{count_images(len(indices))}")
            if len(indices) == 0:
                st.markdown(":red-background[missing]")
            else:
                sample = dataset.images[indices[:per_digit]]
                show_images(sample, columns=2 if len(sample) > 1 else 1, scale=SMALL_SCALE)
