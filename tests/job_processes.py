"""Processes that tests/test_jobs.py starts with subprocess: a worker with test handlers, and
claim and submit loops that race against each other.

Usage:
    python tests/job_processes.py worker --cache DIR --device cpu [--idle-exit S] [--heartbeat S]
    python tests/job_processes.py claim --db FILE --device cpu --worker-id ID --start-at UNIX_S
    python tests/job_processes.py submit --db FILE --count N --start-at UNIX_S

claim and submit print the job ids they got as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# Run as a script, so the project root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import jobs  # noqa: E402


def sleep_job(params: dict, context: jobs.JobContext) -> dict:
    """Sleep `seconds` in `steps` steps, stopping on cancel.

    After each step it reports progress and losses, unless `quiet` is set, in which case the
    job's heartbeat comes only from the worker's heartbeat thread.
    """
    steps = params.get("steps", 10)
    generator_losses = []
    for step in range(steps):
        context.raise_if_cancelled()
        time.sleep(params["seconds"] / steps)
        generator_losses.append(1.0 / (step + 1))
        if not params.get("quiet"):
            context.report((step + 1) / steps, f"step {step + 1} of {steps}", losses={"generator": generator_losses})
    return {"steps": steps}


def echo_job(params: dict, context: jobs.JobContext) -> dict:
    """Return the params as the result."""
    return {"echo": params}


HANDLERS = {"sleep": sleep_job, "echo": echo_job}


def wait_until(start_at: float) -> None:
    """Sleep until the unix time `start_at`, so racing processes start their loops together."""
    time.sleep(max(0.0, start_at - time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a worker with the sleep and echo handlers")
    worker.add_argument("--cache", required=True, help="cache folder that holds the job database")
    worker.add_argument("--device", default="cpu", help="device whose jobs the worker runs")
    worker.add_argument("--idle-exit", type=float, default=30.0, help="seconds without a job before exiting")
    worker.add_argument("--heartbeat", type=float, default=0.1, help="seconds between heartbeats")
    worker.add_argument("--stale", type=float, default=1.0, help="heartbeat age in seconds that fails a job")

    claim = commands.add_parser("claim", help="claim queued jobs until none is left")
    claim.add_argument("--db", required=True, help="job database file")
    claim.add_argument("--device", default="cpu", help="device whose jobs to claim")
    claim.add_argument("--worker-id", required=True, help="worker id to claim the jobs under")
    claim.add_argument("--start-at", type=float, required=True, help="unix time in seconds to start claiming")

    submit = commands.add_parser("submit", help="submit the same echo job several times")
    submit.add_argument("--db", required=True, help="job database file")
    submit.add_argument("--count", type=int, default=20, help="number of submissions")
    submit.add_argument("--start-at", type=float, required=True, help="unix time in seconds to start submitting")

    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")

    if args.command == "worker":
        store = jobs.open_job_store(args.cache, stale_seconds=args.stale)
        jobs.run_worker(
            store,
            HANDLERS,
            args.device,
            poll_seconds=0.02,
            idle_exit_seconds=args.idle_exit,
            heartbeat_seconds=args.heartbeat,
        )
    elif args.command == "claim":
        store = jobs.JobStore(args.db)
        wait_until(args.start_at)
        claimed = []
        while (job := store.claim_next(args.worker_id, args.device)) is not None:
            claimed.append(job.id)
        print(json.dumps(claimed))
    else:
        store = jobs.JobStore(args.db)
        wait_until(args.start_at)
        job_ids = [store.submit("echo", {"value": 1}).id for _ in range(args.count)]
        print(json.dumps(job_ids))


if __name__ == "__main__":
    main()
