"""Tests of engine.download against a Range-aware HTTP server on 127.0.0.1.

The served archive is built at test time in the layout of TensorFlow Federated's release, from a
few writers of the real FEMNIST sample. No test contacts the public release URL.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine import download
from engine.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_FILES = ("femnist_digits_train.h5", "femnist_digits_test.h5")
WRITERS_PER_FILE = 4
SMALL_CHUNK_SIZE = 16 * 1024  # bytes, so the small test archive arrives in several chunks
STALL_TIMEOUT_S = 0.5


# Test data


def find_source_dir() -> Path:
    """Return $FEMNIST_DATA, or else the shared/femnist folder beside the repository."""
    configured = os.environ.get("FEMNIST_DATA")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "femnist"


def copy_writers(source: Path, target: Path, writer_count: int) -> None:
    """Write the first `writer_count` writers of `source` into `target` in TFF's HDF5 layout."""
    with h5py.File(source, "r") as source_file, h5py.File(target, "w") as target_file:
        examples = source_file["examples"]
        for writer in sorted(examples)[:writer_count]:
            group = target_file.create_group(f"examples/{writer}")
            group.create_dataset("pixels", data=examples[writer]["pixels"][()].astype(np.float32))  # (n, 28, 28)
            group.create_dataset("label", data=examples[writer]["label"][()].astype(np.int32))  # (n,)


def build_archive(release_dir: Path, extra_members: Sequence[tuple[tarfile.TarInfo, bytes]] = ()) -> bytes:
    """Return a tar.bz2 archive of the two release files, followed by `extra_members`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as archive:
        for name in download.RELEASE_FILES:
            archive.add(release_dir / name, arcname=name)
        for info, data in extra_members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder with small fed_emnist_digitsonly_{train,test}.h5 files cut from the real sample."""
    source_dir = find_source_dir()
    if not all((source_dir / name).is_file() for name in SOURCE_FILES):
        pytest.skip(f"FEMNIST sample not found in {source_dir}. Set FEMNIST_DATA to its folder")

    folder = tmp_path_factory.mktemp("release")
    for source_name, release_name in zip(SOURCE_FILES, download.RELEASE_FILES):
        copy_writers(source_dir / source_name, folder / release_name, WRITERS_PER_FILE)
    return folder


@pytest.fixture(scope="session")
def archive_bytes(release_dir: Path) -> bytes:
    return build_archive(release_dir)


# HTTP server


@dataclass
class RecordedRequest:
    path: str
    range_header: str | None


@dataclass
class ServerBehavior:
    """Files the test server serves, the faults it injects and the requests it received.

    The handler reads it on each request, so a test can change it between downloads.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    cut_after: int | None = None  # body bytes sent in the next response before the connection closes
    stall_after: int | None = None  # body bytes sent in the next response before the server stops sending
    error_status: int | None = None  # status returned instead of the file
    requests: list[RecordedRequest] = field(default_factory=list)
    release_stall: threading.Event = field(default_factory=threading.Event)


class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serve `ServerBehavior.files` with support for `Range: bytes=N-` requests."""

    server: "ReleaseServer"

    def do_GET(self) -> None:
        behavior = self.server.behavior
        range_header = self.headers.get("Range")
        behavior.requests.append(RecordedRequest(self.path, range_header))

        if behavior.error_status is not None:
            self.send_error(behavior.error_status)
            return
        body = behavior.files.get(self.path)
        if body is None:
            self.send_error(404)
            return

        start = 0
        if range_header is not None and not behavior.ignore_range:
            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/x-bzip2")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()

        if behavior.cut_after is not None:
            # The HTTP/1.0 server closes the connection when the handler returns, so the client
            # receives fewer bytes than Content-Length announced.
            self.wfile.write(payload[: behavior.cut_after])
            behavior.cut_after = None
            return
        if behavior.stall_after is not None:
            self.wfile.write(payload[: behavior.stall_after])
            self.wfile.flush()
            behavior.stall_after = None
            behavior.release_stall.wait(timeout=10)
            return
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ReleaseServer(http.server.ThreadingHTTPServer):
    behavior: ServerBehavior

    def url_for(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def serve(self, data: bytes, path: str = "/" + download.ARCHIVE_NAME) -> str:
        """Serve `data` at `path` and return its URL."""
        self.behavior.files[path] = data
        return self.url_for(path)


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep requests on loopback and ignore download settings from the caller's shell."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv(download.URL_ENV_VAR, raising=False)
    monkeypatch.delenv(download.SHA256_ENV_VAR, raising=False)


@pytest.fixture
def server():
    release_server = ReleaseServer(("127.0.0.1", 0), RangeRequestHandler)
    release_server.behavior = ServerBehavior()
    thread = threading.Thread(target=release_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield release_server
    release_server.behavior.release_stall.set()
    release_server.shutdown()
    release_server.server_close()
    thread.join()


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if not path.is_dir()}


def assert_release_unpacked(result: Path, release_dir: Path) -> None:
    for name in download.RELEASE_FILES:
        assert (result / name).read_bytes() == (release_dir / name).read_bytes(), name


# Downloading


def test_download_release_full(tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert result == dest / download.RELEASE_DIR_NAME
    assert_release_unpacked(result, release_dir)
    with h5py.File(result / download.RELEASE_FILES[0], "r") as train_file:
        assert len(train_file["examples"]) == WRITERS_PER_FILE
        first_writer = next(iter(train_file["examples"].values()))
        assert first_writer["pixels"].shape[1:] == (28, 28)
        assert first_writer["pixels"].dtype == np.float32
        assert first_writer["label"].dtype == np.int32
    assert (dest / download.ARCHIVE_NAME).read_bytes() == archive_bytes
    assert not (dest / (download.ARCHIVE_NAME + ".part")).exists()
    assert files_under(dest) == {dest / download.ARCHIVE_NAME} | {result / name for name in download.RELEASE_FILES}


def test_download_release_resumes_after_cut(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    part_path = dest / (download.ARCHIVE_NAME + ".part")
    cut = len(archive_bytes) // 2
    server.behavior.cut_after = cut

    with pytest.raises(InputError) as first_error:
        download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))
    assert "resumes" in str(first_error.value)
    assert part_path.stat().st_size == cut

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert [request.range_header for request in server.behavior.requests] == [None, f"bytes={cut}-"]
    assert (dest / download.ARCHIVE_NAME).read_bytes() == archive_bytes
    assert_release_unpacked(result, release_dir)


def test_download_release_server_ignores_range(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    server.behavior.cut_after = len(archive_bytes) // 3
    with pytest.raises(InputError):
        download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))
    server.behavior.ignore_range = True

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert server.behavior.requests[1].range_header == f"bytes={len(archive_bytes) // 3}-"
    assert (dest / download.ARCHIVE_NAME).read_bytes() == archive_bytes
    assert_release_unpacked(result, release_dir)


def test_download_release_complete_part_gets_416(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / (download.ARCHIVE_NAME + ".part")).write_bytes(archive_bytes)

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert [request.range_header for request in server.behavior.requests] == [f"bytes={len(archive_bytes)}-"]
    assert_release_unpacked(result, release_dir)


def test_download_release_corrupt_part_gets_416(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / (download.ARCHIVE_NAME + ".part")).write_bytes(b"\0" * len(archive_bytes))

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert [request.range_header for request in server.behavior.requests] == [f"bytes={len(archive_bytes)}-", None]
    assert_release_unpacked(result, release_dir)


def test_download_release_checksum_mismatch(tmp_path: Path, server: ReleaseServer, archive_bytes: bytes) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    wrong_sha256 = "0" * 64

    with pytest.raises(InputError) as error:
        download.download_release(dest, url=url, sha256=wrong_sha256)

    message = str(error.value)
    assert wrong_sha256 in message
    assert sha256_of(archive_bytes) in message
    assert not (dest / download.ARCHIVE_NAME).exists()
    assert not (dest / (download.ARCHIVE_NAME + ".part")).exists()
    assert not (dest / download.RELEASE_DIR_NAME).exists()


def test_download_release_progress_reaches_total(
    tmp_path: Path, server: ReleaseServer, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "CHUNK_SIZE", SMALL_CHUNK_SIZE)
    url = server.serve(archive_bytes)
    calls: list[tuple[int, int | None]] = []

    download.download_release(
        tmp_path / "dest",
        url=url,
        sha256=sha256_of(archive_bytes),
        progress=lambda done, total: calls.append((done, total)),
    )

    done_values = [done for done, _ in calls]
    assert len(calls) > 1
    assert all(later > earlier for earlier, later in zip(done_values, done_values[1:]))
    assert done_values[-1] == len(archive_bytes)
    assert {total for _, total in calls} == {len(archive_bytes)}


def test_download_release_progress_after_resume(
    tmp_path: Path, server: ReleaseServer, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "CHUNK_SIZE", SMALL_CHUNK_SIZE)
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    cut = len(archive_bytes) // 2
    server.behavior.cut_after = cut
    with pytest.raises(InputError):
        download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))
    calls: list[tuple[int, int | None]] = []

    download.download_release(dest, url=url, sha256=sha256_of(archive_bytes), progress=lambda *call: calls.append(call))

    assert calls[0][0] > cut
    assert calls[-1] == (len(archive_bytes), len(archive_bytes))


# Skipping work already done


def test_download_release_skips_verified_archive(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / download.ARCHIVE_NAME).write_bytes(archive_bytes)

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert server.behavior.requests == []
    assert_release_unpacked(result, release_dir)


def test_download_release_skips_unpacked_folder(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert len(server.behavior.requests) == 1
    assert_release_unpacked(result, release_dir)


def test_download_release_replaces_corrupt_archive(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes
) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / download.ARCHIVE_NAME).write_bytes(archive_bytes[:-10])

    result = download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert [request.range_header for request in server.behavior.requests] == [None]
    assert (dest / download.ARCHIVE_NAME).read_bytes() == archive_bytes
    assert_release_unpacked(result, release_dir)


def test_download_release_incomplete_folder(tmp_path: Path, server: ReleaseServer, archive_bytes: bytes) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    (dest / download.RELEASE_DIR_NAME).mkdir(parents=True)
    (dest / download.RELEASE_DIR_NAME / download.RELEASE_FILES[0]).write_bytes(b"kept")

    with pytest.raises(InputError) as error:
        download.download_release(dest, url=url, sha256=sha256_of(archive_bytes))

    assert download.RELEASE_FILES[1] in str(error.value)
    assert (dest / download.RELEASE_DIR_NAME / download.RELEASE_FILES[0]).read_bytes() == b"kept"
    assert server.behavior.requests == []


# Settings


def test_download_release_reads_environment(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(download.URL_ENV_VAR, server.serve(archive_bytes))
    monkeypatch.setenv(download.SHA256_ENV_VAR, sha256_of(archive_bytes).upper())

    result = download.download_release(tmp_path / "dest")

    assert len(server.behavior.requests) == 1
    assert_release_unpacked(result, release_dir)


def test_download_release_arguments_override_environment(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, archive_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(download.URL_ENV_VAR, server.url_for("/missing.tar.bz2"))
    monkeypatch.setenv(download.SHA256_ENV_VAR, "0" * 64)
    url = server.serve(archive_bytes)

    result = download.download_release(tmp_path / "dest", url=url, sha256=sha256_of(archive_bytes))

    assert [request.path for request in server.behavior.requests] == ["/" + download.ARCHIVE_NAME]
    assert_release_unpacked(result, release_dir)


def test_download_release_file_url(tmp_path: Path, release_dir: Path, archive_bytes: bytes) -> None:
    mirror = tmp_path / "mirror.tar.bz2"
    mirror.write_bytes(archive_bytes)

    result = download.download_release(tmp_path / "dest", url=mirror.as_uri(), sha256=sha256_of(archive_bytes))

    assert_release_unpacked(result, release_dir)


@pytest.mark.parametrize("sha256", ["abc", "g" * 64, "0" * 63])
def test_download_release_invalid_sha256(tmp_path: Path, server: ReleaseServer, sha256: str) -> None:
    with pytest.raises(InputError, match="invalid"):
        download.download_release(tmp_path / "dest", url=server.url_for("/any"), sha256=sha256)
    assert server.behavior.requests == []


def test_download_release_invalid_timeout(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="timeout"):
        download.download_release(tmp_path / "dest", url="http://127.0.0.1:9/", timeout=0)


# Network errors


def test_download_release_http_error(tmp_path: Path, server: ReleaseServer, archive_bytes: bytes) -> None:
    url = server.serve(archive_bytes)
    server.behavior.error_status = 503

    with pytest.raises(InputError) as error:
        download.download_release(tmp_path / "dest", url=url, sha256=sha256_of(archive_bytes))

    message = str(error.value)
    assert url in message
    assert "503" in message
    assert download.URL_ENV_VAR in message


def test_download_release_not_found(tmp_path: Path, server: ReleaseServer, archive_bytes: bytes) -> None:
    url = server.url_for("/missing.tar.bz2")

    with pytest.raises(InputError, match="404"):
        download.download_release(tmp_path / "dest", url=url, sha256=sha256_of(archive_bytes))
    assert not (tmp_path / "dest" / (download.ARCHIVE_NAME + ".part")).exists()


def test_download_release_connection_refused(tmp_path: Path, archive_bytes: bytes) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/{download.ARCHIVE_NAME}"

    with pytest.raises(InputError) as error:
        download.download_release(tmp_path / "dest", url=url, sha256=sha256_of(archive_bytes))

    assert url in str(error.value)
    assert download.URL_ENV_VAR in str(error.value)


def test_download_release_read_timeout_keeps_part(tmp_path: Path, server: ReleaseServer, archive_bytes: bytes) -> None:
    url = server.serve(archive_bytes)
    dest = tmp_path / "dest"
    server.behavior.stall_after = 1000

    with pytest.raises(InputError, match="timed out"):
        download.download_release(dest, url=url, sha256=sha256_of(archive_bytes), timeout=STALL_TIMEOUT_S)

    assert (dest / (download.ARCHIVE_NAME + ".part")).stat().st_size == 1000


# Unpacking


def regular_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"evil"


def link_member(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def device_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, b""


UNSAFE_ARCHIVES = {
    "parent_path": lambda outside: [regular_member("../../outside/evil.txt")],
    "absolute_path": lambda outside: [regular_member(str(outside / "evil.txt"))],
    "symlink_out": lambda outside: [
        link_member("shortcut", str(outside), tarfile.SYMTYPE),
        regular_member("shortcut/evil.txt"),
    ],
    "symlink_relative": lambda outside: [link_member("shortcut", "../../outside", tarfile.SYMTYPE)],
    "hardlink": lambda outside: [link_member("hard", download.RELEASE_FILES[0], tarfile.LNKTYPE)],
    "device": lambda outside: [device_member("null")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_ARCHIVES))
def test_download_release_rejects_unsafe_archive(
    tmp_path: Path, server: ReleaseServer, release_dir: Path, case: str
) -> None:
    outside = tmp_path / "outside"
    unsafe_bytes = build_archive(release_dir, UNSAFE_ARCHIVES[case](outside))
    url = server.serve(unsafe_bytes)
    dest = tmp_path / "dest"

    with pytest.raises(InputError, match="unsafe"):
        download.download_release(dest, url=url, sha256=sha256_of(unsafe_bytes))

    assert not outside.exists()
    assert files_under(tmp_path) == {dest / download.ARCHIVE_NAME}
    assert list(dest.iterdir()) == [dest / download.ARCHIVE_NAME]


def test_download_release_archive_missing_test_file(tmp_path: Path, server: ReleaseServer, release_dir: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as archive:
        archive.add(release_dir / download.RELEASE_FILES[0], arcname=download.RELEASE_FILES[0])
    train_only = buffer.getvalue()
    dest = tmp_path / "dest"

    with pytest.raises(InputError, match=download.RELEASE_FILES[1]):
        download.download_release(dest, url=server.serve(train_only), sha256=sha256_of(train_only))

    assert list(dest.iterdir()) == [dest / download.ARCHIVE_NAME]


def test_download_release_archive_not_tar(tmp_path: Path, server: ReleaseServer) -> None:
    not_tar = b"this is not a tar archive" * 100
    dest = tmp_path / "dest"

    with pytest.raises(InputError, match="cannot unpack"):
        download.download_release(dest, url=server.serve(not_tar), sha256=sha256_of(not_tar))

    assert list(dest.iterdir()) == [dest / download.ARCHIVE_NAME]
