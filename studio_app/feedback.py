"""Error messages for problems that a user can fix, shown without a traceback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from engine.errors import InputError

# Characters that Markdown would turn into emphasis, code, links or maths in an error message,
# such as the `*` of a file pattern like *_train.h5.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]$~<>|])")


def escape_markdown(text: str) -> str:
    """Return `text` with Markdown characters escaped, so Streamlit shows it as typed."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def show_error(message: str, icon: str = ":material/error:") -> None:
    """Show a plain-text error message with `st.error`."""
    st.error(escape_markdown(message), icon=icon)


@contextmanager
def show_input_errors() -> Iterator[None]:
    """Show an InputError raised in the block with `st.error` and carry on after the block.

    The engine's message names the value and the fix, so it is shown as it is, without a traceback.
    Other exceptions pass through, and so do Streamlit's rerun and stop signals.
    """
    try:
        yield
    except InputError as error:
        show_error(str(error))
