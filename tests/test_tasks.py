"""Training jobs through a real `python -m engine worker` process on the real data."""

from __future__ import annotations

import os
import signal
import time

import pytest

from engine import jobs
from engine.dcgan import DCGANConfig, load_checkpoint
from engine.studio import Studio
from engine.tasks import checkpoint_of, submit_training
from tests.conftest import FAST_CONFIG

DIGIT, CLUSTER, K = 3, 1, 7


@pytest.fixture
def job_studio(data_dir, tmp_path) -> Studio:
    """A Studio with a cache of its own, so each test starts its own worker."""
    studio = Studio(data_dir, tmp_path / "cache", device="cpu")
    studio.clustering(DIGIT, K)
    return studio


def stop_worker(studio: Studio) -> None:
    jobs.stop_worker(studio.cache_dir, "cpu")


def test_training_job_completes_in_worker(job_studio: Studio) -> None:
    job = submit_training(job_studio, DIGIT, CLUSTER, K, FAST_CONFIG)
    try:
        finished = jobs.open_job_store(job_studio.cache_dir).wait(job.id, timeout_seconds=120)
    finally:
        stop_worker(job_studio)
    assert finished.status == jobs.DONE, finished.error
    assert finished.progress == pytest.approx(1.0)
    assert len(finished.losses["generator"]) == FAST_CONFIG.epochs
    assert load_checkpoint(checkpoint_of(finished), "cpu").metadata["cluster"] == CLUSTER


def test_identical_submission_runs_once(job_studio: Studio) -> None:
    first = submit_training(job_studio, DIGIT, CLUSTER, K, FAST_CONFIG, start_worker=False)
    second = submit_training(job_studio, DIGIT, CLUSTER, K, FAST_CONFIG, start_worker=False)
    other = submit_training(job_studio, DIGIT, CLUSTER + 1, K, FAST_CONFIG, start_worker=False)
    assert second.id == first.id
    assert other.id != first.id


def test_killed_worker_fails_job(job_studio: Studio) -> None:
    slow = DCGANConfig(epochs=200, batch_size=32)
    job = submit_training(job_studio, DIGIT, CLUSTER, K, slow)
    store = jobs.open_job_store(job_studio.cache_dir, stale_seconds=3.0)
    deadline = time.monotonic() + 90
    while store.get(job.id).progress == 0.0 or store.get(job.id).status != jobs.RUNNING:
        assert time.monotonic() < deadline, "the job never started an epoch"
        time.sleep(0.2)
    worker = store.live_worker("cpu")
    os.kill(worker.pid, signal.SIGKILL)
    stop_worker(job_studio)
    time.sleep(4.0)
    failed = store.get(job.id)
    assert failed.status == jobs.FAILED
    assert load_checkpoint(job_studio.model_path(DIGIT, CLUSTER, K), "cpu").epochs_done >= 1
