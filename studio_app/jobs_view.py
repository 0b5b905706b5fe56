"""Training jobs on screen: a card per job with live progress, losses and the latest samples.

Jobs run in the worker process (`python -m engine worker`); the app only reads the job database.
The views that follow a job are fragments with `run_every`, so they refresh on their own without
rerunning, or blocking, the rest of the page.
"""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st

from engine import jobs
from engine.errors import InputError
from engine.tasks import TRAIN, checkpoint_of
from studio_app import figures
from studio_app.feedback import escape_markdown, show_error
from studio_app.gallery import show_images
from studio_app.resources import job_store, latest_samples

REFRESH_SECONDS = 2  # how often an open page reads the progress of its jobs
STATUS_REFRESH_SECONDS = 5  # how often the sidebar reads whether a job runs
JOB_LIST_LIMIT = 50  # newest jobs shown on the Train page

STATUS_COLOURS = {
    jobs.QUEUED: "gray",
    jobs.RUNNING: "blue",
    jobs.DONE: "green",
    jobs.FAILED: "red",
    jobs.CANCELLED: "orange",
}


def describe_job(job: jobs.Job) -> str:
    """Return a one-line title: job id, digit, cluster, k and training settings."""
    params = job.params
    config = params.get("config", {})
    return (
        f"Job {job.id}: digit {params.get('digit')}, cluster {params.get('cluster')} (k={params.get('k')}), "
        f"{config.get('epochs')} epochs, batch size {config.get('batch_size')}"
    )


def status_badge(job: jobs.Job) -> str:
    """Return the job's status as a coloured Markdown badge."""
    label = job.status
    if job.status == jobs.RUNNING and job.cancel_requested:
        label = "cancelling"
    return f":{STATUS_COLOURS.get(job.status, 'gray')}-badge[{label}]"


def training_jobs_matching(store: jobs.JobStore, match: dict, limit: int = 200) -> list[jobs.Job]:
    """Return the newest training jobs whose params contain every item of `match`, newest first."""
    return [
        job
        for job in store.list_jobs(limit=limit)
        if job.kind == TRAIN and all(job.params.get(name) == value for name, value in match.items())
    ]


def show_job(store: jobs.JobStore, job: jobs.Job, key_prefix: str) -> None:
    """Draw one job: status, progress bar, cancel button, loss curves and the latest fixed-noise samples."""
    with st.container(border=True):
        title_column, button_column = st.columns([6, 1], vertical_alignment="center")
        title_column.markdown(f"**{describe_job(job)}** {status_badge(job)}")
        if job.is_active:
            button_column.button(
                "Cancel",
                key=f"{key_prefix}-cancel-{job.id}",
                icon=":material/cancel:",
                disabled=job.cancel_requested,
                on_click=store.request_cancel,
                args=(job.id,),
                help="Stop after the current epoch; the checkpoint of the last finished epoch is kept.",
            )

        st.progress(min(max(job.progress, 0.0), 1.0), text=_progress_text(job))
        if job.error:
            show_error(job.error)

        loss_column, sample_column = st.columns([3, 2])
        with loss_column:
            if job.losses.get("generator"):
                st.plotly_chart(figures.loss_curves(job.losses), key=f"{key_prefix}-losses-{job.id}")
            elif job.is_active:
                st.caption("Loss curves appear after the first epoch.")
        with sample_column:
            _show_latest_samples(job)


def _progress_text(job: jobs.Job) -> str:
    if job.status == jobs.QUEUED:
        return "queued, waiting for the worker"
    if job.message:
        return f"{job.status}: {job.message}"
    return job.status


def _show_latest_samples(job: jobs.Job) -> None:
    path = checkpoint_of(job)
    if path is None or not path.is_file():
        return
    try:
        samples = latest_samples(str(path), path.stat().st_mtime_ns)
    except (InputError, OSError) as error:
        # The worker replaces the file atomically, so this is a damaged or deleted checkpoint.
        st.caption(escape_markdown(f"Samples unavailable: {error}"))
        return
    # NOTE: every job of the same (digit, cluster, k) writes one checkpoint file, so an older
    # finished job shows the samples of the newest run of that model.
    epochs_done = job.result.get("epochs_done", "?")
    show_images(samples, columns=8, caption=f"Fixed-noise samples after epoch {epochs_done}", scale=2)


def _rerun_app_when_finished(watcher: str, current: Iterable[jobs.Job]) -> None:
    """Rerun the whole page when a job this watcher saw active has finished, so results appear."""
    state_key = f"jobs_view.{watcher}.active"
    seen_active = st.session_state.get(state_key, set())
    active_now = {job.id for job in current if job.is_active}
    finished = {job.id for job in current if job.is_finished} & seen_active
    st.session_state[state_key] = active_now
    if finished:
        st.rerun(scope="app")


@st.fragment(run_every=REFRESH_SECONDS)
def job_board(cache_dir: str) -> None:
    """Show the newest jobs of the cache folder, active ones first, refreshing every few seconds."""
    store = job_store(cache_dir)
    current = store.list_jobs(limit=JOB_LIST_LIMIT)
    _rerun_app_when_finished("board", current)
    if not current:
        st.info("No training jobs yet. Launch one above.", icon=":material/info:")
        return

    active = [job for job in current if job.is_active]
    finished = [job for job in current if job.is_finished]
    for job in active:
        show_job(store, job, "board")
    if finished:
        st.markdown(f"**Finished jobs** ({len(finished)})")
    for job in finished:
        with st.expander(f"{describe_job(job)}: {job.status}"):
            show_job(store, job, "board")


@st.fragment(run_every=REFRESH_SECONDS)
def job_in_place(cache_dir: str, job_id: int) -> None:
    """Follow one job where its result is needed; rerun the page once it has finished."""
    store = job_store(cache_dir)
    job = store.get(job_id)
    if job is None:
        st.warning(f"Job {job_id} is no longer in the job database.", icon=":material/warning:")
        return
    _rerun_app_when_finished(f"job-{job_id}", [job])
    show_job(store, job, "in-place")


@st.fragment(run_every=STATUS_REFRESH_SECONDS)
def training_status(cache_dir: str) -> None:
    """Show in the sidebar whether a training job runs or waits, refreshing every few seconds."""
    store = job_store(cache_dir)
    active = store.list_jobs(limit=JOB_LIST_LIMIT, statuses=jobs.ACTIVE_STATUSES)
    running = [job for job in active if job.status == jobs.RUNNING]
    queued = len(active) - len(running)
    if not active:
        st.caption("No training job running.")
        return
    for job in running:
        params = job.params
        st.progress(
            min(max(job.progress, 0.0), 1.0),
            text=f"Training job {job.id}: digit {params.get('digit')}, cluster {params.get('cluster')}",
        )
    if queued:
        st.caption(f"{queued} job{'s' if queued != 1 else ''} queued.")
