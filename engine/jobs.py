"""Job queue for long work (training) that runs in a worker process, not in the Streamlit script.

The queue is one SQLite database in the cache folder, opened in WAL mode so that several app
sessions and workers can read and write it at once. The app submits jobs and reads their state.
A worker (`python -m engine worker`, which calls `run_worker`) claims queued jobs for its device
and runs them one at a time. A background thread in the worker writes a heartbeat, so a job whose
worker died (kill -9, out-of-memory killer, reboot) is marked failed once its heartbeat is older
than the stale timeout, instead of staying running forever.

Each thread opens its own connection, so a `JobStore` may be shared between threads.
The database must be on a local disk, because WAL mode does not work over a network file system
(https://www.sqlite.org/wal.html).
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import json
import logging
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import InputError

logger = logging.getLogger(__name__)

JOBS_DB_NAME = "jobs.sqlite3"
WORKER_LOG_FOLDER = "logs"

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE_STATUSES = (QUEUED, RUNNING)

BUSY_TIMEOUT_SECONDS = 10.0  # how long a write waits for another process's write lock
DEFAULT_STALE_SECONDS = 30.0  # a running job whose heartbeat is older than this is failed
DEFAULT_HEARTBEAT_SECONDS = 2.0
CANCEL_CHECK_SECONDS = 0.2  # minimum time between two database reads of a job's cancel flag
MAX_ERROR_CHARS = 1000

# Substrings of the RuntimeError messages that torch raises when memory runs out: "CUDA out of
# memory" (torch.cuda.OutOfMemoryError), "MPS backend out of memory", cuBLAS handle allocation,
# and "DefaultCPUAllocator: can't allocate memory" (checked with torch 2.13 on CPU).
OUT_OF_MEMORY_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    params_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES!r}),
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    losses TEXT NOT NULL DEFAULT '{{}}',
    result TEXT NOT NULL DEFAULT '{{}}',
    error TEXT,
    device TEXT NOT NULL,
    worker_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, device, id);
-- Backs up the check in submit(): at most one queued or running job per kind and params,
-- not counting a running job that is being cancelled.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active_params_key ON jobs (params_key)
    WHERE status IN ('queued', 'running') AND cancel_requested = 0;
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    device TEXT NOT NULL,
    hostname TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""

Handler = Callable[[dict, "JobContext"], "dict | None"]


class JobCancelled(Exception):
    """Raised by a handler to stop its job after `JobContext.cancel_requested()` returned True."""


def now() -> float:
    """Return the current time in unix seconds, the unit of every timestamp in the jobs database."""
    return time.time()


@dataclasses.dataclass(frozen=True)
class Job:
    """One row of the jobs table, with params, losses and result decoded from JSON."""

    id: int
    kind: str
    params: dict
    params_key: str
    status: str
    progress: float  # 0..1
    message: str  # last progress message from the handler
    losses: dict  # e.g. {"generator": [...], "discriminator": [...]}
    result: dict  # e.g. artifact paths
    error: str | None  # one-line reason when status is failed
    device: str
    worker_id: str | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None

    @property
    def is_active(self) -> bool:
        """Whether the job is queued or running."""
        return self.status in ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        """Whether the job is done, failed or cancelled."""
        return self.status not in ACTIVE_STATUSES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Build a Job from a `SELECT * FROM jobs` row."""
        return cls(
            id=row["id"],
            kind=row["kind"],
            params=json.loads(row["params"]),
            params_key=row["params_key"],
            status=row["status"],
            progress=row["progress"],
            message=row["message"],
            losses=json.loads(row["losses"]),
            result=json.loads(row["result"]),
            error=row["error"],
            device=row["device"],
            worker_id=row["worker_id"],
            cancel_requested=bool(row["cancel_requested"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            heartbeat_at=row["heartbeat_at"],
        )


@dataclasses.dataclass(frozen=True)
class Worker:
    """One row of the workers table: a worker process and its last heartbeat."""

    id: str
    pid: int
    device: str
    hostname: str
    started_at: float
    heartbeat_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Worker:
        """Build a Worker from a `SELECT * FROM workers` row."""
        return cls(**{field.name: row[field.name] for field in dataclasses.fields(cls)})


def canonical_json(value: Any, name: str) -> str:
    """Encode `value` as JSON with sorted keys and no spaces, so equal values give equal text.

    Raises TypeError or ValueError, with `name` in the message, when the value cannot be stored
    as JSON (a set, an object, NaN).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name} must be JSON-serialisable without NaN or infinity: {error}") from error


def make_params_key(kind: str, params: Mapping) -> str:
    """Return the de-duplication key of a job: its kind and its canonical params."""
    return f"{kind} {canonical_json(dict(params), 'job params')}"


def default_worker_id(pid: int | None = None) -> str:
    """Return the id a worker process uses unless given one: `hostname:pid`."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


class JobStore:
    """The jobs and workers tables in one SQLite file, shared by app sessions and workers.

    `stale_seconds` is the heartbeat age after which `get` and `list_jobs` mark a running job failed.
    Each thread gets its own connection, so one store may be shared between threads.
    """

    def __init__(self, db_path: str | os.PathLike, stale_seconds: float = DEFAULT_STALE_SECONDS):
        if stale_seconds <= 0:
            raise ValueError(f"stale_seconds={stale_seconds} should be > 0")
        self.db_path = Path(db_path)
        self.stale_seconds = stale_seconds
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

        with self._connection() as connection:
            # The journal mode is stored in the file, so setting it once here covers every later connection.
            mode = _fetch_one(connection, "PRAGMA journal_mode=WAL")[0]
            if mode.lower() != "wal":
                raise InputError(
                    f"cannot open job database {str(self.db_path)!r} in WAL mode (got {mode!r}). "
                    "Put the cache folder on a local disk."
                )
            connection.executescript(SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection, opened on first use in the thread or after a fork.

        Connections stay open because SQLite checkpoints and deletes the WAL file whenever the last
        connection to a database closes (https://www.sqlite.org/wal.html). With a connection per
        call, every write in a process without other open connections would pay that checkpoint.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            # isolation_level=None turns off the sqlite3 module's implicit transactions, so each
            # write method opens its own with BEGIN IMMEDIATE and takes the write lock up front.
            connection = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            self._local.pid = os.getpid()
        yield connection

    def close(self) -> None:
        """Close the calling thread's connection. A later call in the thread opens a new one."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local.connection = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Open a write transaction that holds the database write lock from its first statement."""
        with self._connection() as connection:
            if connection.in_transaction:
                raise RuntimeError("JobStore transactions cannot be nested on one thread")
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def journal_mode(self) -> str:
        """Return the journal mode of the database file ("wal" once the store has opened it)."""
        with self._connection() as connection:
            return _fetch_one(connection, "PRAGMA journal_mode")[0]

    # Job methods that the app calls.

    def submit(self, kind: str, params: Mapping, device: str = "cpu") -> Job:
        """Queue a job and return it, or return the queued or running job with the same kind and params.

        A running job with a pending cancel does not count, so a job cancelled by mistake can be
        submitted again at once. De-duplication ignores `device`, so the returned job may run on
        another device than requested.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"job kind {kind!r} should be a non-empty string")
        if not isinstance(device, str) or not device:
            raise ValueError(f"job device {device!r} should be a non-empty string")
        params_text = canonical_json(dict(params), "job params")
        params_key = make_params_key(kind, params)

        with self._transaction() as connection:
            row = _fetch_one(
                connection,
                "SELECT * FROM jobs WHERE params_key = ? AND status IN (?, ?) AND cancel_requested = 0",
                (params_key, *ACTIVE_STATUSES),
            )
            if row is not None:
                job = Job.from_row(row)
                logger.info("job %d (%s) is already %s, so it was not queued again", job.id, kind, job.status)
                return job

            cursor = connection.execute(
                "INSERT INTO jobs (kind, params, params_key, status, device, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, params_text, params_key, QUEUED, device, now()),
            )
            row = _fetch_one(connection, "SELECT * FROM jobs WHERE id = ?", (cursor.lastrowid,))

        job = Job.from_row(row)
        logger.info("job %d (%s) queued for device %s", job.id, kind, device)
        return job

    def get(self, job_id: int) -> Job | None:
        """Return the job with this id, or None if there is none, after failing stale running jobs."""
        self.fail_stale_jobs(self.stale_seconds)
        return self._read_job(job_id)

    def _read_job(self, job_id: int) -> Job | None:
        with self._connection() as connection:
            row = _fetch_one(connection, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else Job.from_row(row)

    def list_jobs(self, limit: int = 50, statuses: Sequence[str] | None = None) -> list[Job]:
        """Return up to `limit` jobs, newest first, optionally only those in `statuses`.

        Stale running jobs are failed first, so the list never shows a dead worker's job as running.
        """
        if limit < 1:
            raise ValueError(f"limit={limit} should be >= 1")
        self.fail_stale_jobs(self.stale_seconds)

        query = "SELECT * FROM jobs"
        arguments: list[Any] = []
        if statuses is not None:
            unknown = sorted(set(statuses) - set(STATUSES))
            if unknown:
                raise ValueError(f"unknown job statuses {unknown}, expected some of {list(STATUSES)}")
            query += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            arguments.extend(statuses)
        query += " ORDER BY id DESC LIMIT ?"
        arguments.append(limit)

        with self._connection() as connection:
            rows = _fetch_all(connection, query, arguments)
        return [Job.from_row(row) for row in rows]

    def wait(self, job_id: int, timeout_seconds: float, poll_seconds: float = 0.2) -> Job:
        """Block until the job is done, failed or cancelled, and return it.

        Raises KeyError if the job does not exist and TimeoutError if it is still active after
        `timeout_seconds`.
        """
        deadline = now() + timeout_seconds
        while True:
            job = self.get(job_id)
            if job is None:
                raise KeyError(f"job {job_id} not found in {str(self.db_path)!r}")
            if job.is_finished:
                return job
            if now() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout_seconds:g} s")
            time.sleep(poll_seconds)

    def request_cancel(self, job_id: int) -> Job | None:
        """Cancel a job and return its new state, or None if it does not exist.

        A queued job becomes cancelled at once. A running job gets `cancel_requested`, and its
        worker marks it cancelled when the handler stops. A finished job is returned unchanged.
        """
        with self._transaction() as connection:
            row = _fetch_one(connection, "SELECT status FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                return None
            if row["status"] == QUEUED:
                connection.execute(
                    "UPDATE jobs SET status = ?, cancel_requested = 1, finished_at = ? WHERE id = ?",
                    (CANCELLED, now(), job_id),
                )
                logger.info("job %d cancelled before it started", job_id)
            elif row["status"] == RUNNING:
                connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                logger.info("cancel requested for running job %d", job_id)
            row = _fetch_one(connection, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row)

    def fail_stale_jobs(self, timeout_seconds: float) -> list[int]:
        """Mark running jobs whose heartbeat is older than `timeout_seconds` failed, and return their ids.

        Also deletes worker rows with a heartbeat that old. When nothing is stale, this costs two
        read queries and takes no write lock, so the app can call it on every rerun.
        """
        cutoff = now() - timeout_seconds
        stale_query = "SELECT id, worker_id, heartbeat_at FROM jobs WHERE status = ? AND heartbeat_at < ?"
        with self._connection() as connection:
            has_stale_job = _fetch_one(connection, stale_query + " LIMIT 1", (RUNNING, cutoff))
            has_stale_worker = _fetch_one(connection, "SELECT 1 FROM workers WHERE heartbeat_at < ? LIMIT 1", (cutoff,))
        if has_stale_job is None and has_stale_worker is None:
            return []

        failed_ids = []
        with self._transaction() as connection:
            # Read again under the write lock, because a heartbeat may have arrived since the check above.
            current_time = now()
            for row in _fetch_all(connection, stale_query, (RUNNING, cutoff)):
                silence = current_time - row["heartbeat_at"]
                error = (
                    f"worker {row['worker_id']} sent no heartbeat for {silence:.0f} s, so it has probably "
                    "stopped. Submit the job again."
                )
                connection.execute(
                    "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                    (FAILED, error, current_time, row["id"]),
                )
                failed_ids.append(row["id"])
                logger.warning("job %d failed: %s", row["id"], error)
            connection.execute("DELETE FROM workers WHERE heartbeat_at < ?", (cutoff,))
        return failed_ids

    # Job methods that a worker calls.

    def claim_next(self, worker_id: str, device: str) -> Job | None:
        """Move the oldest queued job for `device` to running under `worker_id` and return it.

        `device` must equal the job's device string exactly, so "cuda" does not match "cuda:0".
        Returns None when no job is queued for that device. The select and the update share one
        write transaction, so two workers never claim the same job.
        """
        with self._transaction() as connection:
            row = _fetch_one(
                connection,
                "SELECT id FROM jobs WHERE status = ? AND device = ? ORDER BY created_at, id LIMIT 1",
                (QUEUED, device),
            )
            if row is None:
                return None
            current_time = now()
            connection.execute(
                "UPDATE jobs SET status = ?, worker_id = ?, started_at = ?, heartbeat_at = ? WHERE id = ?",
                (RUNNING, worker_id, current_time, current_time, row["id"]),
            )
            row = _fetch_one(connection, "SELECT * FROM jobs WHERE id = ?", (row["id"],))
        return Job.from_row(row)

    def report(
        self,
        job_id: int,
        worker_id: str,
        progress: float,
        message: str | None = None,
        losses: Mapping | None = None,
        result: Mapping | None = None,
    ) -> bool:
        """Store the progress of a running job and return whether it is still running under `worker_id`.

        `losses` and `result`, when given, replace the stored ones. `progress` is clipped to 0..1.
        """
        if not math.isfinite(progress):
            raise ValueError(f"progress={progress} should be a finite number in 0..1")
        progress = min(max(float(progress), 0.0), 1.0)
        losses_text = None if losses is None else canonical_json(dict(losses), "losses")
        result_text = None if result is None else canonical_json(dict(result), "result")

        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET progress = ?, message = COALESCE(?, message), losses = COALESCE(?, losses), "
                "result = COALESCE(?, result), heartbeat_at = ? WHERE id = ? AND worker_id = ? AND status = ?",
                (progress, message, losses_text, result_text, now(), job_id, worker_id, RUNNING),
            )
        return cursor.rowcount == 1

    def is_cancel_requested(self, job_id: int, worker_id: str) -> bool:
        """Return whether the job should stop, because a cancel was requested or it no longer runs under `worker_id`.

        A job stops running under its worker when `fail_stale_jobs` failed it while the worker was frozen.
        """
        with self._connection() as connection:
            row = _fetch_one(connection, "SELECT status, worker_id, cancel_requested FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            return True
        return bool(row["cancel_requested"]) or row["status"] != RUNNING or row["worker_id"] != worker_id

    def finish(
        self,
        job_id: int,
        worker_id: str,
        status: str,
        result: Mapping | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> bool:
        """Record the outcome of a running job and return whether it was stored.

        `result` is merged over the result the handler reported so far, and `message`, when given,
        replaces the last progress message. Nothing is stored when the job no longer runs under
        `worker_id`, for example after `fail_stale_jobs` failed it.
        """
        if status not in (DONE, FAILED, CANCELLED):
            raise ValueError(f"status={status!r} should be one of done, failed, cancelled")
        with self._transaction() as connection:
            row = _fetch_one(connection, "SELECT status, worker_id, result FROM jobs WHERE id = ?", (job_id,))
            if row is None or row["status"] != RUNNING or row["worker_id"] != worker_id:
                found = "missing" if row is None else f"{row['status']} under worker {row['worker_id']}"
                logger.warning(
                    "job %d is %s, not running under worker %s, so its outcome (%s) was not stored",
                    job_id, found, worker_id, status,
                )
                return False

            merged_result = {**json.loads(row["result"]), **dict(result or {})}
            progress_update = ", progress = 1" if status == DONE else ""
            connection.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, message = COALESCE(?, message), "
                f"finished_at = ?{progress_update} WHERE id = ?",
                (status, canonical_json(merged_result, "result"), error, message, now(), job_id),
            )
        return True

    def fail_jobs_of_worker(self, worker_id: str, error: str) -> list[int]:
        """Mark the running jobs of a worker whose process has exited failed, and return their ids."""
        with self._transaction() as connection:
            rows = _fetch_all(
                connection, "SELECT id FROM jobs WHERE status = ? AND worker_id = ?", (RUNNING, worker_id)
            )
            connection.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE status = ? AND worker_id = ?",
                (FAILED, error, now(), RUNNING, worker_id),
            )
        job_ids = [row["id"] for row in rows]
        for job_id in job_ids:
            logger.warning("job %d failed: %s", job_id, error)
        return job_ids

    # Workers.

    def register_worker(self, worker_id: str, device: str, pid: int | None = None) -> Worker:
        """Insert or replace the row of a worker with a fresh heartbeat, and return it."""
        current_time = now()
        worker = Worker(
            id=worker_id,
            pid=os.getpid() if pid is None else pid,
            device=device,
            hostname=socket.gethostname(),
            started_at=current_time,
            heartbeat_at=current_time,
        )
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO workers (id, pid, device, hostname, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(worker),
            )
        return worker

    def heartbeat(self, worker: Worker, job_id: int | None = None) -> None:
        """Refresh the heartbeat of a worker and of the job it runs.

        Inserts the worker row again if `fail_stale_jobs` deleted it while the worker was frozen.
        """
        current_time = now()
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE id = ?", (current_time, worker.id)
            )
            if cursor.rowcount == 0:
                connection.execute(
                    "INSERT INTO workers (id, pid, device, hostname, started_at, heartbeat_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    dataclasses.astuple(dataclasses.replace(worker, heartbeat_at=current_time)),
                )
            if job_id is not None:
                connection.execute(
                    "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker_id = ? AND status = ?",
                    (current_time, job_id, worker.id, RUNNING),
                )

    def remove_worker(self, worker_id: str) -> None:
        """Delete the row of a worker that stopped."""
        with self._transaction() as connection:
            connection.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def live_worker(self, device: str, timeout_seconds: float | None = None) -> Worker | None:
        """Return the worker for `device` with the newest heartbeat within `timeout_seconds`, or None.

        `timeout_seconds` defaults to the store's `stale_seconds`.
        """
        timeout_seconds = self.stale_seconds if timeout_seconds is None else timeout_seconds
        with self._connection() as connection:
            row = _fetch_one(
                connection,
                "SELECT * FROM workers WHERE device = ? AND heartbeat_at >= ? ORDER BY heartbeat_at DESC LIMIT 1",
                (device, now() - timeout_seconds),
            )
        return None if row is None else Worker.from_row(row)


def _fetch_one(connection: sqlite3.Connection, query: str, arguments: Sequence = ()) -> sqlite3.Row | None:
    # Closing the cursor ends its read snapshot. Connections stay open, so an unfinished cursor
    # would otherwise keep later reads on the same connection on old data.
    cursor = connection.execute(query, arguments)
    try:
        return cursor.fetchone()
    finally:
        cursor.close()


def _fetch_all(connection: sqlite3.Connection, query: str, arguments: Sequence = ()) -> list[sqlite3.Row]:
    cursor = connection.execute(query, arguments)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def open_job_store(cache_dir: str | os.PathLike, stale_seconds: float = DEFAULT_STALE_SECONDS) -> JobStore:
    """Open the job database of a cache folder, creating it if missing."""
    return JobStore(Path(cache_dir) / JOBS_DB_NAME, stale_seconds=stale_seconds)


class JobContext:
    """Progress reporting and cancel flag of one running job, passed to its handler with the params."""

    def __init__(self, store: JobStore, job: Job, worker_id: str):
        self.store = store
        self.job = job
        self.worker_id = worker_id
        self._cancelled = False
        self._last_cancel_check = -math.inf

    @property
    def job_id(self) -> int:
        """Id of the running job."""
        return self.job.id

    @property
    def device(self) -> str:
        """Device the job was submitted for, e.g. "cpu" or "cuda:0"."""
        return self.job.device

    def report(
        self,
        progress: float,
        message: str | None = None,
        losses: Mapping | None = None,
        result: Mapping | None = None,
    ) -> None:
        """Store progress (0..1), and optionally a message, the losses so far and a partial result.

        Each call is one database write, so call it per epoch or a few times a second, not per batch.
        """
        still_running = self.store.report(self.job.id, self.worker_id, progress, message, losses, result)
        if not still_running:
            self._cancelled = True

    def cancel_requested(self) -> bool:
        """Return whether the handler should stop and raise JobCancelled.

        Reads the database at most every CANCEL_CHECK_SECONDS, so it is cheap to call per batch.
        """
        if self._cancelled:
            return True
        current_time = time.monotonic()
        if current_time - self._last_cancel_check >= CANCEL_CHECK_SECONDS:
            self._last_cancel_check = current_time
            self._cancelled = self.store.is_cancel_requested(self.job.id, self.worker_id)
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise JobCancelled if `cancel_requested()` returns True."""
        if self.cancel_requested():
            raise JobCancelled(f"job {self.job.id} cancelled")


class _Heartbeat(threading.Thread):
    """Daemon thread that refreshes the heartbeat of a worker and of its current job."""

    def __init__(self, store: JobStore, worker: Worker, interval_seconds: float):
        super().__init__(name=f"heartbeat {worker.id}", daemon=True)
        self.store = store
        self.worker = worker
        self.interval_seconds = interval_seconds
        # Set by the worker loop. A plain attribute write is atomic in CPython, so no lock guards it.
        self.job_id: int | None = None
        self._stop_event = threading.Event()
        self._failures = 0

    def run(self) -> None:
        while True:
            try:
                self.store.heartbeat(self.worker, self.job_id)
                self._failures = 0
            except sqlite3.Error as error:
                self._failures += 1
                # Log the first failure and then every tenth, so a locked database does not flood the log.
                if self._failures % 10 == 1:
                    logger.warning(
                        "heartbeat of worker %s failed (%d in a row): %s", self.worker.id, self._failures, error
                    )
            if self._stop_event.wait(self.interval_seconds):
                return

    def stop(self) -> None:
        """Stop the thread and wait for it to finish its current heartbeat."""
        self._stop_event.set()
        self.join()


class WorkerStopped(SystemExit):
    """Raised in the worker's main thread when it receives SIGTERM, so the running job is marked failed."""


def _raise_worker_stopped(signal_number: int, frame: Any) -> None:
    raise WorkerStopped(128 + signal_number)


def run_worker(
    store: JobStore,
    handlers: Mapping[str, Handler],
    device: str,
    worker_id: str | None = None,
    poll_seconds: float = 1.0,
    idle_exit_seconds: float | None = None,
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
) -> int:
    """Run queued jobs for `device` one at a time, and return how many ran.

    `handlers` maps a job kind to `handler(params, context) -> result dict`. The worker polls
    for a job every `poll_seconds` and returns after `idle_exit_seconds` without one, or never when None.
    A failing job does not stop the worker. SIGTERM, when the worker runs in the main thread, and
    KeyboardInterrupt fail the running job and stop the worker.
    """
    worker = store.register_worker(worker_id or default_worker_id(), device)
    logger.info("worker %s started (pid %d, device %s, kinds %s)", worker.id, worker.pid, device, sorted(handlers))

    heartbeat = _Heartbeat(store, worker, heartbeat_seconds)
    heartbeat.start()
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_sigterm_handler = signal.signal(signal.SIGTERM, _raise_worker_stopped)
        if previous_sigterm_handler is None:
            previous_sigterm_handler = signal.SIG_DFL  # the previous handler was not installed from Python

    jobs_run = 0
    idle_since = now()
    try:
        _fail_stale_jobs_or_log(store, worker.id)
        while True:
            job = _claim_next_or_none(store, worker.id, device)
            if job is None:
                if idle_exit_seconds is not None and now() - idle_since >= idle_exit_seconds:
                    break
                time.sleep(poll_seconds)
                _fail_stale_jobs_or_log(store, worker.id)
                continue

            heartbeat.job_id = job.id
            try:
                run_job(store, handlers, job, worker.id)
            finally:
                heartbeat.job_id = None
            jobs_run += 1
            idle_since = now()
    finally:
        heartbeat.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm_handler)
        try:
            store.remove_worker(worker.id)
        except sqlite3.Error as error:
            logger.warning("could not remove the row of worker %s: %s", worker.id, error)
        logger.info("worker %s stopped after %d jobs", worker.id, jobs_run)
    return jobs_run


def _claim_next_or_none(store: JobStore, worker_id: str, device: str) -> Job | None:
    try:
        return store.claim_next(worker_id, device)
    except sqlite3.OperationalError as error:
        # A busy or briefly unavailable database should delay the worker, not stop it.
        logger.warning("worker %s could not claim a job, retrying: %s", worker_id, error)
        return None


def _fail_stale_jobs_or_log(store: JobStore, worker_id: str) -> None:
    # Fails the jobs of dead workers even when no app session is open to do it.
    try:
        store.fail_stale_jobs(store.stale_seconds)
    except sqlite3.OperationalError as error:
        logger.warning("worker %s could not check for stale jobs, retrying: %s", worker_id, error)


def run_job(store: JobStore, handlers: Mapping[str, Handler], job: Job, worker_id: str) -> None:
    """Run one claimed job with its handler and store the outcome (done, failed or cancelled).

    Exceptions from the handler are caught and logged with their traceback, except BaseExceptions
    such as KeyboardInterrupt, which fail the job and are raised again.
    """
    handler = handlers.get(job.kind)
    if handler is None:
        known_kinds = ", ".join(sorted(handlers)) or "none"
        error = f"no handler for job kind {job.kind!r}. Kinds this worker runs: {known_kinds}."
        logger.error("job %d failed: %s", job.id, error)
        store.finish(job.id, worker_id, FAILED, error=error)
        return

    logger.info("job %d (%s) started on worker %s, device %s", job.id, job.kind, worker_id, job.device)
    started = time.monotonic()
    context = JobContext(store, job, worker_id)
    out_of_memory = False
    try:
        result = handler(dict(job.params), context)
        if result is not None and not isinstance(result, Mapping):
            raise TypeError(f"handler for {job.kind!r} returned {type(result).__name__}, expected a dict or None")
        store.finish(job.id, worker_id, DONE, result=result)
        logger.info("job %d done in %.1f s", job.id, time.monotonic() - started)
    except JobCancelled as cancelled:
        # The handler's reason, such as which checkpoint it kept, becomes the job's message.
        store.finish(job.id, worker_id, CANCELLED, message=_one_line(str(cancelled)) or None)
        logger.info("job %d cancelled after %.1f s: %s", job.id, time.monotonic() - started, cancelled)
    except Exception as error:
        out_of_memory = is_out_of_memory(error)
        message = describe_failure(error, job)
        logger.exception("job %d (%s) failed: %s", job.id, job.kind, message)
        store.finish(job.id, worker_id, FAILED, error=message)
    except BaseException as error:
        message = f"worker {worker_id} stopped ({type(error).__name__}) while running the job. Submit the job again."
        logger.error("job %d failed: %s", job.id, message)
        store.finish(job.id, worker_id, FAILED, error=message)
        raise

    if out_of_memory:
        # Outside the except block, so the traceback and the tensors its frames held are released.
        release_device_memory()


def is_out_of_memory(error: BaseException) -> bool:
    """Return whether `error` is a host MemoryError or a torch device out-of-memory RuntimeError."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(marker in text for marker in OUT_OF_MEMORY_MARKERS)


def describe_failure(error: Exception, job: Job) -> str:
    """Return a one-line reason for a job failure and, for known errors, what to try."""
    if isinstance(error, InputError):
        return _one_line(str(error))

    text = str(error)
    error_text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if is_out_of_memory(error):
        return _one_line(
            f"out of memory on device {job.device} ({error_text}). Try a smaller batch size or fewer "
            "images, or wait until other jobs on this device finish."
        )
    return _one_line(error_text)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def release_device_memory() -> None:
    """Return cached CUDA memory to the driver after an out-of-memory error, if torch is loaded.

    Other users share the GPU, so memory that the failed job's tensors held should not stay
    reserved by this process. jobs.py imports only the standard library, so torch is looked up
    in sys.modules instead of imported.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# Starting a worker from the app.

_spawned_workers: dict[int, subprocess.Popen] = {}


def worker_command(cache_dir: str | os.PathLike, data_dir: str | os.PathLike, device: str) -> list[str]:
    """Return the command line that starts a worker through the engine CLI."""
    return [
        sys.executable, "-m", "engine", "worker", "--data", str(data_dir), "--cache", str(cache_dir), "--device", device
    ]


def worker_log_path(cache_dir: str | os.PathLike, device: str) -> Path:
    """Return the log file of the worker that `ensure_worker` starts for `device`."""
    safe_device = re.sub(r"[^A-Za-z0-9._-]", "-", device)
    return Path(cache_dir) / WORKER_LOG_FOLDER / f"worker-{safe_device}.log"


def ensure_worker(
    cache_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    device: str,
    log_path: str | os.PathLike | None = None,
    command: Sequence[str] | None = None,
    timeout_seconds: float = DEFAULT_STALE_SECONDS,
) -> int | None:
    """Start a worker process for `device` unless a live one exists, and return its pid or None.

    The worker runs in its own session with stdin closed and its output appended to `log_path`
    (default: logs/worker-DEVICE.log in the cache folder), so it outlives the Streamlit server.
    `command` replaces the default `python -m engine worker ...` command line. An exclusive lock
    file per device keeps two app sessions from starting two workers at once.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    data_dir = Path(data_dir).expanduser().resolve()
    log_path = Path(log_path) if log_path is not None else worker_log_path(cache_dir, device)
    lock_path = worker_log_path(cache_dir, device).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    argv = list(command) if command is not None else worker_command(cache_dir, data_dir, device)
    store = open_job_store(cache_dir, stale_seconds=timeout_seconds)

    # flock is released when the file closes, also when this process dies while holding it.
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            worker = store.live_worker(device, timeout_seconds)
            if worker is not None and _is_process_alive(worker):
                return None
            if worker is not None:
                logger.warning("worker %s (pid %d) has exited, starting a new one", worker.id, worker.pid)
                error = f"worker {worker.id} exited while running the job. Submit the job again."
                store.fail_jobs_of_worker(worker.id, error)
                store.remove_worker(worker.id)

            # NOTE: a worker that exits during startup (an invalid --data folder, an import error) is
            # started again on every call, because its exit makes its row dead. The reason is in log_path.
            process = _spawn_detached(argv, log_path)
            _spawned_workers[process.pid] = process

            # Register the worker under the id it gives itself (hostname:pid) until it starts and
            # replaces this row. Until then, for up to timeout_seconds, live_worker returns this row,
            # so no second session spawns another worker.
            store.register_worker(default_worker_id(process.pid), device, pid=process.pid)
        finally:
            store.close()

    logger.info("started worker pid %d for device %s, log %s", process.pid, device, log_path)
    return process.pid


def _spawn_detached(argv: list[str], log_path: Path) -> subprocess.Popen:
    project_root = Path(__file__).resolve().parent.parent
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n{time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log_file.flush()
        return subprocess.Popen(
            argv,
            cwd=project_root,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _is_process_alive(worker: Worker) -> bool:
    """Return whether the worker's process still runs.

    A worker on another host counts as running, because its pid cannot be checked from here.
    """
    if worker.hostname != socket.gethostname():
        return True
    process = _spawned_workers.get(worker.pid)
    if process is not None:
        # poll() also reaps the exited child, so it does not linger as a zombie.
        return process.poll() is None
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the pid exists but belongs to another user
    return True


def stop_worker(cache_dir: str | os.PathLike, device: str, timeout_seconds: float = 30.0) -> None:
    """Send SIGTERM to the live worker of `device`, then reap the workers this process started.

    A spawned worker that has not exited after `timeout_seconds` is killed.
    """
    worker = open_job_store(cache_dir).live_worker(device)
    if worker is not None:
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            logger.info("worker %s (pid %d) had already exited", worker.id, worker.pid)
    for pid, process in list(_spawned_workers.items()):
        try:
            process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d did not stop within %.0f s; killing it", pid, timeout_seconds)
            process.kill()
            process.wait()
        _spawned_workers.pop(pid, None)
