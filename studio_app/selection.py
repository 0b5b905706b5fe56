"""Writer, digit and k choices that follow the user from page to page.

Each choice lives in `st.session_state` under a shared key (`writer`, `digit`, `k`). Every page
draws its own widget with a page-specific key, because Streamlit drops the state of a widget that a
run does not draw, and preselects it from the shared key. A widget's `on_change` callback copies
the new value back to the shared key before the next run starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from engine.clustering import DEFAULT_K, MAX_K, MIN_K
from engine.dataset import DIGITS, FemnistDataset

WRITER = "writer"
DIGIT = "digit"
K = "k"


def widget_key(page: str, shared_key: str) -> str:
    """Return the session-state key of the widget for `shared_key` on `page`."""
    return f"{page}.{shared_key}"


def set_choice(shared_key: str, value: Any) -> None:
    """Store a choice made outside its widget (a chart click), so every page's widget shows it."""
    st.session_state[shared_key] = value


def _copy_to_shared(key: str, shared_key: str) -> None:
    value = st.session_state.get(key)
    if value is not None:
        st.session_state[shared_key] = value


def _preselect(page: str, shared_key: str, options: Sequence, default: Any) -> str:
    """Put the shared value, or `default` when it is not an option, into the page's widget state."""
    key = widget_key(page, shared_key)
    shared = st.session_state.get(shared_key)
    st.session_state[key] = shared if shared in options else default
    return key


def choose_writer(
    page: str,
    writers: Sequence[str],
    format_func: Callable[[str], str] = str,
    label: str = "Writer",
    help: str | None = None,
) -> str | None:
    """Draw a searchable writer dropdown and return the writer, or None when none is chosen.

    When the shared writer is not among `writers` (a page showing only writers of one digit), the
    dropdown starts empty and the shared writer is kept for the other pages.
    """
    writers = list(writers)
    default = None
    if st.session_state.get(WRITER) is None and writers:
        default = writers[0]
    key = _preselect(page, WRITER, writers, default)
    value = st.selectbox(
        label,
        writers,
        key=key,
        format_func=format_func,
        placeholder="Type a writer id",
        help=help or "Type part of a writer id to search.",
        on_change=_copy_to_shared,
        args=(key, WRITER),
    )
    if value is not None:
        st.session_state[WRITER] = value
    return value


def choose_digit(page: str, label: str = "Digit", help: str | None = None) -> int:
    """Draw the digit choice (0-9) and return it."""
    key = _preselect(page, DIGIT, DIGITS, DIGITS[0])
    value = st.segmented_control(
        label,
        DIGITS,
        key=key,
        required=True,
        help=help,
        on_change=_copy_to_shared,
        args=(key, DIGIT),
    )
    st.session_state[DIGIT] = value
    return value


def choose_k(page: str, help: str | None = None) -> int:
    """Draw the choice of k, the clusters per digit, and return it."""
    key = _preselect(page, K, range(MIN_K, MAX_K + 1), DEFAULT_K)
    value = st.number_input(
        "Clusters per digit (k)",
        min_value=MIN_K,
        max_value=MAX_K,
        step=1,
        key=key,
        help=help or f"k-means clusters of writers per digit, {MIN_K}-{MAX_K}. A new k clusters that digit again.",
        on_change=_copy_to_shared,
        args=(key, K),
    )
    st.session_state[K] = int(value)
    return int(value)


def writer_label(dataset: FemnistDataset) -> Callable[[str], str]:
    """Return a dropdown label function: writer id, image count and missing digits."""
    counts = dataset.counts

    def label(writer: str) -> str:
        row = counts[dataset.writer_position(writer)]
        missing = [str(digit) for digit in DIGITS if row[digit] == 0]
        missing_text = f"missing {' '.join(missing)}" if missing else "all digits"
        return f"{writer} · {int(row.sum())} images · {missing_text}"

    return label
