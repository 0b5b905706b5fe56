"""Background jobs of the studio: what a worker runs, and how the app submits it.

A training job's params name the data fingerprint, so that jobs for different data never merge,
and every setting that shapes the model, so that the same request queued twice runs once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine import jobs
from engine.dcgan import DCGANConfig, EpochProgress
from engine.errors import InputError
from engine.studio import Studio

logger = logging.getLogger(__name__)

TRAIN = "train"


def training_params(studio: Studio, digit: int, cluster: int, k: int, config: DCGANConfig) -> dict:
    """Return the params of a training job for (digit, cluster), validated against the data."""
    clustering = studio.clustering(digit, k)
    cluster = clustering.validate_cluster(cluster)
    return {
        "digit": clustering.digit,
        "cluster": cluster,
        "k": clustering.k,
        "representation": studio.representation,
        "fingerprint": studio.dataset.fingerprint,
        "config": config.to_dict(),
    }


def submit_training(
    studio: Studio, digit: int, cluster: int, k: int, config: DCGANConfig, start_worker: bool = True
) -> jobs.Job:
    """Queue the training of (digit, cluster) and make sure a worker for the device runs it.

    An identical job that is already queued or running is returned instead of a new one.
    """
    params = training_params(studio, digit, cluster, k, config)
    store = jobs.open_job_store(studio.cache_dir)
    device = str(studio.device)
    job = store.submit(TRAIN, params, device=device)
    if start_worker:
        jobs.ensure_worker(studio.cache_dir, studio.data_dir, device)
    return job


def train_handler(studio: Studio):
    """Return the job handler that trains one (digit, cluster) model with `studio`."""

    def handle(params: dict, context: jobs.JobContext) -> dict:
        worker_studio = studio
        if params["representation"] != studio.representation:
            worker_studio = Studio(studio.data_dir, studio.cache_dir, studio.device_name, params["representation"])
        if params["fingerprint"] != worker_studio.dataset.fingerprint:
            raise InputError(
                f"the job was queued for data {params['fingerprint']}, but the worker reads "
                f"{worker_studio.dataset.fingerprint} from {worker_studio.data_dir}; restart the worker "
                "with the app's data folder"
            )
        digit, cluster, k = params["digit"], params["cluster"], params["k"]
        config = DCGANConfig.from_dict(params["config"])
        checkpoint_path = worker_studio.model_path(digit, cluster, k)
        generator_losses: list[float] = []
        discriminator_losses: list[float] = []

        def on_epoch(progress: EpochProgress) -> None:
            generator_losses.append(progress.generator_loss)
            discriminator_losses.append(progress.discriminator_loss)
            context.report(
                progress.epoch / progress.epochs,
                message=(
                    f"epoch {progress.epoch}/{progress.epochs}, "
                    f"{progress.images_per_second:.0f} images/s"
                ),
                losses={"generator": generator_losses, "discriminator": discriminator_losses},
                result={"checkpoint": str(checkpoint_path), "epochs_done": progress.epoch},
            )

        context.report(0.0, message="preparing cluster images")
        checkpoint = worker_studio.train_model(
            digit, cluster, k, config, on_epoch=on_epoch, should_stop=context.cancel_requested
        )
        if context.cancel_requested():
            raise jobs.JobCancelled(
                f"job {context.job_id} cancelled after epoch {checkpoint.epochs_done}; "
                f"the checkpoint of that epoch is kept at {checkpoint_path}"
            )
        return {
            "checkpoint": str(checkpoint_path),
            "epochs_done": checkpoint.epochs_done,
            "images": checkpoint.image_count,
            "training_seconds": round(checkpoint.training_seconds, 1),
        }

    return handle


def run_studio_worker(studio: Studio, poll_seconds: float = 1.0, idle_exit_seconds: float | None = None) -> int:
    """Run the job worker for the studio's device until stopped; return how many jobs ran."""
    studio.dataset  # parse or map the data once, before the first job
    store = jobs.open_job_store(studio.cache_dir)
    handlers = {TRAIN: train_handler(studio)}
    return jobs.run_worker(
        store, handlers, str(studio.device), poll_seconds=poll_seconds, idle_exit_seconds=idle_exit_seconds
    )


def checkpoint_of(job: jobs.Job) -> Path | None:
    """Return the checkpoint path a training job reported, if any."""
    path = job.result.get("checkpoint") if job.result else None
    return Path(path) if path else None
