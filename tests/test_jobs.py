"""Tests of engine.jobs against a real SQLite file and real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import jobs
from engine.errors import InputError

HELPER = Path(__file__).resolve().parent / "job_processes.py"
PROJECT_ROOT = HELPER.parent.parent
# Heartbeat age that fails a job in these tests. Worker processes send a heartbeat every 0.1 s.
STALE_SECONDS = 1.0


@pytest.fixture
def store(tmp_path: Path) -> jobs.JobStore:
    return jobs.open_job_store(tmp_path, stale_seconds=STALE_SECONDS)


def run_until_idle(store: jobs.JobStore, handlers: dict) -> int:
    """Run an in-process worker until no job is left, and return how many jobs it ran."""
    return jobs.run_worker(
        store,
        handlers,
        "cpu",
        worker_id="test-worker",
        poll_seconds=0.01,
        idle_exit_seconds=0.05,
        heartbeat_seconds=0.05,
    )


def wait_for(condition, timeout_seconds: float = 10.0, description: str = "condition"):
    """Poll `condition` until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{description} not reached within {timeout_seconds} s")


def start_worker_process(cache_dir: Path, *extra: str) -> subprocess.Popen:
    """Start tests/job_processes.py as a worker on the job database in `cache_dir`."""
    return subprocess.Popen(
        [sys.executable, str(HELPER), "worker", "--cache", str(cache_dir), "--device", "cpu", *extra],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    if process.stderr is not None:
        process.stderr.close()


def stop_pid(pid: int) -> None:
    """Kill a worker that ensure_worker started, and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process = jobs._spawned_workers.pop(pid, None)
    if process is not None:
        process.wait(timeout=10)


# Store and submit.


def test_store_uses_wal(store):
    assert store.journal_mode() == "wal"


def test_submit_twice_returns_same_job(store):
    first = store.submit("train", {"cluster": 3, "epochs": 5})
    second = store.submit("train", {"epochs": 5, "cluster": 3})

    assert second.id == first.id
    assert len(store.list_jobs()) == 1


def test_submit_other_params_queues_new_job(store):
    first = store.submit("train", {"cluster": 3})
    second = store.submit("train", {"cluster": 4})

    assert second.id != first.id


def test_submit_after_finish_queues_new_job(store):
    first = store.submit("train", {"cluster": 3})
    store.request_cancel(first.id)
    second = store.submit("train", {"cluster": 3})

    assert second.id != first.id
    assert second.status == jobs.QUEUED


def test_submit_stores_canonical_params(store):
    job = store.submit("train", {"b": 1, "a": [1, 2]}, device="cuda:0")

    assert job.params == {"a": [1, 2], "b": 1}
    assert job.params_key == 'train {"a":[1,2],"b":1}'
    assert job.device == "cuda:0"
    assert job.status == jobs.QUEUED


def test_submit_nan_param_raises(store):
    with pytest.raises(ValueError, match="job params"):
        store.submit("train", {"learning_rate": float("nan")})


def test_submit_two_processes_one_job(store):
    # Both claimers wait for this moment, so a slow interpreter start on a busy machine does not
    # let one process claim every job before the other has started.
    start_at = time.time() + 5.0
    command = [
        sys.executable, str(HELPER), "submit", "--db", str(store.db_path), "--count", "20", "--start-at", str(start_at)
    ]
    processes = [
        subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    job_ids = set()
    for process in processes:
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0
        job_ids.update(json.loads(output))

    assert len(job_ids) == 1
    assert len(store.list_jobs()) == 1


def test_store_shared_between_threads(store):
    job_ids = []

    def submit_many(thread_index):
        for index in range(20):
            job_ids.append(store.submit("echo", {"thread": thread_index, "index": index}).id)

    threads = [threading.Thread(target=submit_many, args=(thread_index,)) for thread_index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(job_ids)) == 80
    assert len(store.list_jobs(limit=100)) == 80


def test_list_jobs_filters_statuses(store):
    queued = store.submit("train", {"cluster": 1})
    cancelled = store.submit("train", {"cluster": 2})
    store.request_cancel(cancelled.id)

    assert [job.id for job in store.list_jobs(statuses=[jobs.QUEUED])] == [queued.id]
    assert [job.id for job in store.list_jobs()] == [cancelled.id, queued.id]


def test_list_jobs_unknown_status_raises(store):
    with pytest.raises(ValueError, match="unknown job statuses"):
        store.list_jobs(statuses=["paused"])


def test_get_missing_job_returns_none(store):
    assert store.get(12345) is None


# Claiming.


def test_claim_next_takes_oldest_for_device(store):
    first = store.submit("train", {"cluster": 1})
    store.submit("train", {"cluster": 2})
    store.submit("train", {"cluster": 3}, device="cuda:0")

    claimed = store.claim_next("worker-a", "cpu")

    assert claimed.id == first.id
    assert claimed.status == jobs.RUNNING
    assert claimed.worker_id == "worker-a"
    assert claimed.started_at is not None


def test_claim_next_other_device_returns_none(store):
    store.submit("train", {"cluster": 1}, device="cuda:0")

    assert store.claim_next("worker-a", "cpu") is None


def test_claim_next_two_processes_disjoint(store):
    job_ids = {store.submit("echo", {"index": index}).id for index in range(200)}
    # Both claimers wait for this moment, so a slow interpreter start on a busy machine does not
    # let one process claim every job before the other has started.
    start_at = time.time() + 5.0
    processes = {
        worker_id: subprocess.Popen(
            [
                sys.executable, str(HELPER), "claim", "--db", str(store.db_path),
                "--worker-id", worker_id, "--start-at", str(start_at),
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for worker_id in ("claimer-a", "claimer-b")
    }
    claimed = {}
    for worker_id, process in processes.items():
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        claimed[worker_id] = set(json.loads(output))

    assert claimed["claimer-a"], "claimer-a got no job, so the processes did not overlap"
    assert claimed["claimer-b"], "claimer-b got no job, so the processes did not overlap"
    assert claimed["claimer-a"].isdisjoint(claimed["claimer-b"])
    assert claimed["claimer-a"] | claimed["claimer-b"] == job_ids
    owners = {job.id: job.worker_id for job in store.list_jobs(limit=len(job_ids))}
    for worker_id, ids in claimed.items():
        assert all(owners[job_id] == worker_id for job_id in ids)


# Running jobs in an in-process worker.


def test_worker_job_done_persists_progress(store):
    job = store.submit("train", {"epochs": 2})
    observed = []

    def train(params, context):
        observed.append(store.get(context.job_id).status)
        losses = {"generator": [1.5], "discriminator": [0.7]}
        context.report(0.5, "epoch 1 of 2", losses=losses, result={"epoch_1": "a.pt"})
        observed.append(store.get(context.job_id).progress)
        return {"model": "b.pt"}

    assert job.status == jobs.QUEUED
    assert run_until_idle(store, {"train": train}) == 1

    finished = store.get(job.id)
    assert observed == [jobs.RUNNING, 0.5]
    assert finished.status == jobs.DONE
    assert finished.progress == 1.0
    assert finished.message == "epoch 1 of 2"
    assert finished.losses == {"discriminator": [0.7], "generator": [1.5]}
    assert finished.result == {"epoch_1": "a.pt", "model": "b.pt"}
    assert finished.error is None
    assert finished.finished_at >= finished.started_at >= finished.created_at


def test_worker_failing_handler_continues(store):
    failing = store.submit("broken", {})
    following = store.submit("echo", {"value": 1})

    def broken(params, context):
        raise KeyError("missing_column\nsecond line")

    ran = run_until_idle(store, {"broken": broken, "echo": lambda params, context: {"echo": params}})

    assert ran == 2
    assert store.get(failing.id).status == jobs.FAILED
    assert store.get(failing.id).error == "KeyError: 'missing_column\\nsecond line'"
    assert store.get(following.id).status == jobs.DONE
    assert store.get(following.id).result == {"echo": {"value": 1}}


def test_worker_input_error_message(store):
    job = store.submit("train", {})

    def train(params, context):
        raise InputError("writer 'f0000_14' not found; pick one from the writer list")

    run_until_idle(store, {"train": train})

    assert store.get(job.id).error == "writer 'f0000_14' not found; pick one from the writer list"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
)
def test_worker_out_of_memory_message(store, error):
    job = store.submit("train", {})

    def train(params, context):
        raise error

    run_until_idle(store, {"train": train})

    message = store.get(job.id).error
    assert message.startswith("out of memory on device cpu")
    assert "smaller batch size" in message


def test_worker_unknown_kind_fails(store):
    job = store.submit("mystery", {})

    run_until_idle(store, {"echo": lambda params, context: {}})

    assert store.get(job.id).status == jobs.FAILED
    assert store.get(job.id).error == "no handler for job kind 'mystery'. Kinds this worker runs: echo."


def test_worker_non_json_result_fails(store):
    job = store.submit("train", {})

    run_until_idle(store, {"train": lambda params, context: {"model": object()}})

    assert store.get(job.id).status == jobs.FAILED
    assert "JSON" in store.get(job.id).error


def test_worker_row_removed_after_exit(store):
    run_until_idle(store, {})

    assert store.live_worker("cpu") is None


# Cancelling.


def test_cancel_queued_job(store):
    job = store.submit("train", {})

    cancelled = store.request_cancel(job.id)

    assert cancelled.status == jobs.CANCELLED
    assert cancelled.cancel_requested
    assert cancelled.finished_at is not None
    assert run_until_idle(store, {"train": lambda params, context: {}}) == 0


def test_cancel_running_job(store):
    job = store.submit("train", {})
    observed = []

    def train(params, context):
        observed.append(context.cancel_requested())
        store.request_cancel(context.job_id)  # as another app session would
        observed.append(store.get(context.job_id).status)
        time.sleep(jobs.CANCEL_CHECK_SECONDS)
        observed.append(context.cancel_requested())
        if context.cancel_requested():
            raise jobs.JobCancelled("stopped after epoch 3, checkpoint kept")
        return {}

    run_until_idle(store, {"train": train})

    assert observed == [False, jobs.RUNNING, True]
    assert store.get(job.id).status == jobs.CANCELLED
    assert store.get(job.id).message == "stopped after epoch 3, checkpoint kept"


def test_submit_during_cancel_queues_new_job(store):
    job = store.submit("train", {"cluster": 3})
    store.claim_next("worker-a", "cpu")
    store.request_cancel(job.id)

    again = store.submit("train", {"cluster": 3})

    assert again.id != job.id
    assert again.status == jobs.QUEUED
    assert store.get(job.id).status == jobs.RUNNING


def test_cancel_finished_job_unchanged(store):
    job = store.submit("echo", {})
    run_until_idle(store, {"echo": lambda params, context: {}})

    assert store.request_cancel(job.id).status == jobs.DONE


def test_cancel_missing_job_returns_none(store):
    assert store.request_cancel(12345) is None


# Stale jobs.


def test_get_fails_stale_job(store):
    job = store.submit("train", {})
    store.claim_next("gone-worker", "cpu")  # a worker that never sends a heartbeat
    time.sleep(STALE_SECONDS + 0.2)

    failed = store.get(job.id)

    assert failed.status == jobs.FAILED
    assert "gone-worker sent no heartbeat" in failed.error


def test_fail_stale_jobs_keeps_fresh_job(store):
    job = store.submit("train", {})
    store.claim_next("busy-worker", "cpu")

    assert store.fail_stale_jobs(60.0) == []
    assert store.get(job.id).status == jobs.RUNNING


def test_finish_after_stale_keeps_failed(store):
    job = store.submit("train", {})
    store.claim_next("slow-worker", "cpu")
    time.sleep(STALE_SECONDS + 0.2)
    store.fail_stale_jobs(STALE_SECONDS)

    assert not store.finish(job.id, "slow-worker", jobs.DONE, result={"model": "a.pt"})
    assert store.get(job.id).status == jobs.FAILED
    assert store.is_cancel_requested(job.id, "slow-worker")


# Worker processes.


def test_worker_process_completes_job(tmp_path, store):
    job = store.submit("sleep", {"seconds": 0.3, "steps": 3})
    process = start_worker_process(tmp_path)
    try:
        finished = store.wait(job.id, timeout_seconds=15)
    finally:
        stop_process(process)

    assert finished.status == jobs.DONE
    assert finished.losses == {"generator": [1.0, 0.5, 1.0 / 3]}
    assert finished.result == {"steps": 3}


def test_worker_process_cancels_running_job(tmp_path, store):
    job = store.submit("sleep", {"seconds": 20, "steps": 200})
    process = start_worker_process(tmp_path)
    try:
        wait_for(lambda: store.get(job.id).progress > 0, description="first progress report")
        store.request_cancel(job.id)
        finished = store.wait(job.id, timeout_seconds=5)
    finally:
        stop_process(process)

    assert finished.status == jobs.CANCELLED


def test_worker_killed_job_fails_stale(tmp_path, store):
    job = store.submit("sleep", {"seconds": 30, "steps": 300, "quiet": True})
    process = start_worker_process(tmp_path)
    try:
        wait_for(lambda: store.get(job.id).status == jobs.RUNNING, description="job running")
        time.sleep(STALE_SECONDS + 0.3)  # the handler reports nothing, so only the heartbeat thread keeps it fresh
        assert store.fail_stale_jobs(STALE_SECONDS) == []

        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert store.get(job.id).status == jobs.RUNNING

        time.sleep(STALE_SECONDS + 0.3)
        assert store.fail_stale_jobs(STALE_SECONDS) == [job.id]
    finally:
        stop_process(process)

    failed = store.get(job.id)
    assert failed.status == jobs.FAILED
    assert "no heartbeat" in failed.error


def test_worker_sigterm_fails_running_job(tmp_path, store):
    job = store.submit("sleep", {"seconds": 30, "steps": 300})
    process = start_worker_process(tmp_path)
    try:
        wait_for(lambda: store.get(job.id).progress > 0, description="first progress report")
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=10)
    finally:
        stop_process(process)

    assert returncode == 128 + signal.SIGTERM
    assert store.get(job.id).status == jobs.FAILED
    assert "stopped (WorkerStopped)" in store.get(job.id).error
    assert store.live_worker("cpu") is None


# ensure_worker.


def helper_command(cache_dir: Path) -> list[str]:
    return [sys.executable, str(HELPER), "worker", "--cache", str(cache_dir), "--device", "cpu"]


def test_ensure_worker_skips_live_worker(tmp_path, store):
    pid = jobs.ensure_worker(tmp_path, tmp_path, "cpu", command=helper_command(tmp_path))
    try:
        assert pid is not None
        assert jobs.ensure_worker(tmp_path, tmp_path, "cpu", command=helper_command(tmp_path)) is None

        job = store.submit("echo", {"value": 2})
        assert store.wait(job.id, timeout_seconds=15).status == jobs.DONE
        assert store.live_worker("cpu").pid == pid
        assert jobs.ensure_worker(tmp_path, tmp_path, "cpu", command=helper_command(tmp_path)) is None
    finally:
        stop_pid(pid)

    assert f"worker {jobs.default_worker_id(pid)} started" in jobs.worker_log_path(tmp_path, "cpu").read_text()


def test_ensure_worker_concurrent_calls_start_one(tmp_path):
    pids = []

    def start():
        pids.append(jobs.ensure_worker(tmp_path, tmp_path, "cpu", command=helper_command(tmp_path)))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [pid for pid in pids if pid is not None]
    for pid in started:
        stop_pid(pid)

    assert len(started) == 1


def test_ensure_worker_replaces_dead_worker(tmp_path, store):
    job = store.submit("sleep", {"seconds": 30, "steps": 300})
    first = jobs.ensure_worker(tmp_path, tmp_path, "cpu", command=helper_command(tmp_path))
    wait_for(lambda: store.get(job.id).status == jobs.RUNNING, description="job running")
    stop_pid(first)

    second = jobs.ensure_worker(tmp_path, tmp_path, "cpu", command=helper_command(tmp_path))
    stop_pid(second)

    assert second is not None
    assert second != first
    assert store.get(job.id).status == jobs.FAILED
    expected = f"worker {jobs.default_worker_id(first)} exited while running the job. Submit the job again."
    assert store.get(job.id).error == expected


def test_worker_command_runs_engine_cli(tmp_path):
    command = jobs.worker_command(tmp_path / "cache", tmp_path / "data", "cuda:0")

    assert command[1:4] == ["-m", "engine", "worker"]
    assert command[4:] == ["--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"), "--device", "cuda:0"]
