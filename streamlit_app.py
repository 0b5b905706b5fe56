"""Personalized Digit Studio: fill missing cells of the FEMNIST writer x digit matrix with
DCGAN-generated handwriting in a writer's style.

Run `FEMNIST_DATA=../shared/femnist streamlit run streamlit_app.py`. This script sets up the page,
the sidebar and the navigation; each file in `app_pages/` draws one screen. Without a loadable data
folder, a set-up screen takes the place of the pages.
"""

from __future__ import annotations

import streamlit as st

from engine.errors import InputError
from engine.studio import Studio
from engine.style import REPRESENTATIONS
from studio_app.data_setup import show_data_setup
from studio_app.feedback import show_input_errors
from studio_app.jobs_view import training_status
from studio_app.resources import REPRESENTATION_KEY, current_settings, load_studio

# The folder is not named `pages/`, because Streamlit 1.67 treats a `pages/` folder as a legacy
# multipage app until some session of the server process has called st.navigation. Until then, a
# direct link such as /compare runs that page alone, without this script's sidebar and error handling.
PAGES = [
    st.Page("app_pages/writers.py", title="Writers", icon=":material/grid_on:", default=True),
    st.Page("app_pages/clusters.py", title="Clusters", icon=":material/scatter_plot:"),
    st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
]


def main() -> None:
    st.set_page_config(page_title="Personalized Digit Studio", page_icon=":material/draw:", layout="wide")

    try:
        studio = load_studio(current_settings())
    except InputError as error:
        show_setup_screen(str(error))
        return

    page = st.navigation(PAGES)
    show_sidebar(studio)
    with show_input_errors():
        page.run()


def show_setup_screen(problem: str) -> None:
    """Run the data set-up screen as the only page."""

    def setup_page() -> None:
        show_data_setup(problem)

    st.navigation([st.Page(setup_page, title="Set up data", icon=":material/folder_open:", url_path="setup")]).run()


def show_sidebar(studio: Studio) -> None:
    """Show which dataset is loaded, the style representation, and whether a training job runs."""
    summary = studio.dataset.summary()
    with st.sidebar:
        st.markdown("**Dataset**")
        st.caption(
            f"{summary['writers']:,} writers · {summary['images']:,} images · "
            f"{summary['empty_cells']:,} of {summary['cells']:,} cells empty  \n"
            f"from {summary['source']}"
        )
        st.caption(f"Device {studio.device} · cache {studio.cache_dir}")
        st.selectbox(
            "Style representation",
            REPRESENTATIONS,
            key=REPRESENTATION_KEY,
            help="Features that describe a writer's style for clustering. Another choice clusters every digit again.",
        )
        st.markdown("**Training**")
        training_status(str(studio.cache_dir))


main()
