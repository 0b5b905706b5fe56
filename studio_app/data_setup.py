"""The screen shown instead of the pages when no FEMNIST data folder can be loaded."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from engine.download import RELEASE_URL, download_release
from engine.errors import InputError
from engine.settings import DATA_ENV_VAR
from studio_app.feedback import show_error
from studio_app.resources import DATA_DIR_KEY, current_settings, load_studio

DEFAULT_DOWNLOAD_FOLDER = Path.home() / "femnist"


def show_data_setup(problem: str) -> None:
    """Say where the app looks for data and why it failed, and offer a folder choice or the download."""
    st.title("Personalized Digit Studio")
    show_error(f"No FEMNIST data loaded: {problem}", icon=":material/folder_off:")
    configured = os.environ.get(DATA_ENV_VAR)
    where = f"`{configured}`" if configured else "not set"
    st.markdown(
        f"The app reads the folder named by the environment variable `{DATA_ENV_VAR}` (now {where}). "
        "A folder holds `*_train.h5` and `*_test.h5` files in TensorFlow Federated's EMNIST layout, "
        "or LEAF `*.json` shards. Set it before `streamlit run`, or choose a folder below for this session."
    )

    existing_tab, download_tab = st.tabs(["Use a folder on this server", "Download the digits-only release"])
    with existing_tab:
        _choose_existing_folder()
    with download_tab:
        _download_release_form()


def _choose_existing_folder() -> None:
    with st.form("existing-folder"):
        folder = st.text_input("Data folder", placeholder="/data/femnist", help="An absolute path on the server.")
        submitted = st.form_submit_button("Use this folder", icon=":material/folder_open:")
    if submitted and folder.strip():
        _use_folder(folder.strip())


def _download_release_form() -> None:
    st.markdown(
        f"Downloads TensorFlow Federated's digits-only FEMNIST release from `{RELEASE_URL}` "
        "(3,383 writers), checks its sha256 and unpacks it into a folder `fed_emnist_digitsonly` "
        "inside the folder you choose. An interrupted download resumes."
    )
    with st.form("download-release"):
        destination = st.text_input("Download into", value=str(DEFAULT_DOWNLOAD_FOLDER))
        submitted = st.form_submit_button("Download", icon=":material/download:", type="primary")
    if not submitted:
        return

    progress_bar = st.progress(0.0, text="Connecting...")

    def report(done: int, total: int | None) -> None:
        if total and done >= total:
            progress_bar.progress(1.0, text=f"Downloaded {total / 1e6:.0f} MB; verifying and unpacking...")
        elif total:
            progress_bar.progress(done / total, text=f"Downloaded {done / 1e6:.0f} of {total / 1e6:.0f} MB")
        else:
            progress_bar.progress(0.0, text=f"Downloaded {done / 1e6:.0f} MB (size unknown)")

    try:
        release_folder = download_release(destination.strip(), progress=report)
    except InputError as error:
        show_error(str(error))
        return
    finally:
        progress_bar.empty()
    _use_folder(str(release_folder))


def _use_folder(folder: str) -> None:
    """Load `folder` as this session's data folder, and rerun into the pages when it loads."""
    st.session_state[DATA_DIR_KEY] = str(Path(folder).expanduser().absolute())
    try:
        load_studio(current_settings())
    except InputError as error:
        del st.session_state[DATA_DIR_KEY]
        show_error(str(error))
        return
    st.rerun()
