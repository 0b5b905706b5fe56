"""Download, verify and unpack TensorFlow Federated's digits-only FEMNIST release.

The release is one tar.bz2 archive with the files `fed_emnist_digitsonly_train.h5` and
`fed_emnist_digitsonly_test.h5` at its top level, in the HDF5 layout that the engine reads.
`download_release` streams it over HTTP with resume, checks its sha256 and unpacks it into
a folder that can be passed as the data folder. Only the standard library does the network work,
so the CLI and the app share this code and each show progress through a callback.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import urllib.response
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath

from engine.errors import InputError

logger = logging.getLogger(__name__)

RELEASE_URL = "https://storage.googleapis.com/tff-datasets-public/fed_emnist_digitsonly.tar.bz2"
RELEASE_SHA256 = "55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b"
ARCHIVE_NAME = "fed_emnist_digitsonly.tar.bz2"
RELEASE_DIR_NAME = "fed_emnist_digitsonly"  # folder inside dest that receives the unpacked files
RELEASE_FILES = ("fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5")

URL_ENV_VAR = "FEMNIST_DOWNLOAD_URL"
SHA256_ENV_VAR = "FEMNIST_DOWNLOAD_SHA256"

CHUNK_SIZE = 1 << 20  # maximum bytes read from the response and written to the .part file per step

ProgressCallback = Callable[[int, int | None], None]

# urlopen returns an HTTPResponse for http(s) URLs and an addinfourl for file URLs.
_Response = http.client.HTTPResponse | urllib.response.addinfourl

_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_PATTERN = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def download_release(
    dest: str | os.PathLike,
    url: str | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
) -> Path:
    """Download, verify and unpack the release into `dest`, and return the folder with the h5 files.

    The archive is stored as `dest/fed_emnist_digitsonly.tar.bz2` and unpacked into
    `dest/fed_emnist_digitsonly/`, which is the returned folder. Each step is skipped when its
    result is already there: a folder that contains both h5 files is returned as it is, without
    checking their content, and an archive whose sha256 matches is not downloaded again.

    `url` and `sha256` default to $FEMNIST_DOWNLOAD_URL and $FEMNIST_DOWNLOAD_SHA256, then to the
    public release. `progress(bytes_done, total_bytes)` is called after each chunk written.
    `bytes_done` includes bytes kept from an earlier attempt, and `total_bytes` is None when the
    server does not send the size. `timeout` is in seconds and applies to connecting and to each read.

    Raises InputError on a network error (the partial `.part` file is kept, so the next call
    resumes), a checksum mismatch, or an archive that is unsafe or lacks one of the h5 files.
    """
    url = url or os.environ.get(URL_ENV_VAR) or RELEASE_URL
    expected_sha256 = _validate_sha256(sha256 or os.environ.get(SHA256_ENV_VAR) or RELEASE_SHA256)
    if timeout <= 0:
        raise InputError(f"timeout={timeout!r} is invalid. Pass a number of seconds greater than 0")

    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise InputError(f"cannot create download folder {str(dest)!r}: {reason}. Pass another --dest") from error
    archive_path = dest / ARCHIVE_NAME
    release_dir = dest / RELEASE_DIR_NAME

    if _contains_release_files(release_dir):
        logger.info("release already unpacked in %s, skipping the download", release_dir)
        return release_dir
    if release_dir.exists():
        missing = [name for name in RELEASE_FILES if not (release_dir / name).is_file()]
        raise InputError(
            f"folder {str(release_dir)!r} exists but is missing {', '.join(missing)}. "
            "Remove it, or move it elsewhere, and download again"
        )

    if archive_path.is_file() and _archive_matches(archive_path, expected_sha256):
        logger.info("verified archive %s already present, skipping the download", archive_path)
    else:
        _download_archive(url, expected_sha256, archive_path, progress, timeout)

    _unpack_archive(archive_path, release_dir)
    return release_dir


def _validate_sha256(sha256: str) -> str:
    """Return the digest in lower case, or raise InputError unless it is 64 hex digits."""
    digest = sha256.strip().lower()
    if not _SHA256_PATTERN.fullmatch(digest):
        raise InputError(
            f"sha256 {sha256!r} is invalid. Pass 64 hexadecimal digits, or unset {SHA256_ENV_VAR} "
            "to use the checksum of the public release"
        )
    return digest


def _contains_release_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in RELEASE_FILES)


def _archive_matches(archive_path: Path, expected_sha256: str) -> bool:
    """Return whether an archive from an earlier run matches the checksum, deleting it if not."""
    actual_sha256 = _sha256_of(archive_path)
    if actual_sha256 == expected_sha256:
        return True
    logger.warning(
        "existing archive %s has sha256 %s but expected %s, so deleting it and downloading again",
        archive_path, actual_sha256, expected_sha256,
    )
    archive_path.unlink()
    return False


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# Downloading


def _download_archive(
    url: str,
    expected_sha256: str,
    archive_path: Path,
    progress: ProgressCallback | None,
    timeout: float,
) -> None:
    """Download `url` into `<archive>.part`, resuming it if present, verify it and rename it to `archive_path`."""
    part_path = archive_path.with_name(archive_path.name + ".part")

    # A second attempt starts from byte 0 after the server rejected the resume, either with a 416
    # for a .part that does not verify or with a 206 that starts at another offset than requested.
    for _ in range(2):
        offset = part_path.stat().st_size if part_path.exists() else 0
        if offset:
            logger.info("resuming download of %s at byte %d", url, offset)
        else:
            logger.info("downloading %s to %s", url, part_path)

        try:
            response = _open_url(url, offset, timeout)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code != 416 or offset == 0:
                raise _network_error(url, part_path, f"the server returned HTTP {error.code} {error.reason}") from error
            # A 416 Range Not Satisfiable means the .part may already contain the whole file.
            logger.info("server has no bytes after byte %d, so %s may be complete", offset, part_path)
            if _sha256_of(part_path) == expected_sha256:
                logger.info("sha256 of %s verified", part_path)
                break
            logger.warning("%s does not verify, so downloading again from byte 0", part_path)
            part_path.unlink()
            continue

        with response:
            write_from = _resume_offset(response, offset, url)
            if write_from is None:
                part_path.unlink()
                continue
            _stream_to_file(response, part_path, write_from, url, progress)
        _verify_archive(part_path, expected_sha256, url)
        break
    else:
        raise InputError(
            f"download of {url} failed: the server rejected the resume twice. "
            f"Set {URL_ENV_VAR} to another mirror of the release"
        )

    os.replace(part_path, archive_path)


def _open_url(url: str, offset: int, timeout: float) -> _Response:
    """Send the GET request, with a Range header when `offset` > 0, and return the open response.

    Raises urllib.error.HTTPError for 4xx and 5xx responses, and InputError for any other failure.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        request = urllib.request.Request(url, headers=headers)
    except ValueError as error:
        raise InputError(
            f"download URL {url!r} is invalid: {error}. Set {URL_ENV_VAR} to an http(s) or file URL of the release"
        ) from error

    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except (OSError, http.client.HTTPException) as error:
        # URLError and TimeoutError are both OSError subclasses.
        reason = getattr(error, "reason", error)
        raise _network_error(url, None, str(reason)) from error


def _resume_offset(response: _Response, offset: int, url: str) -> int | None:
    """Return the byte offset at which the response body starts in the file.

    Returns None when a 206 response starts at another offset than requested. The caller then
    discards the .part and downloads again from byte 0.
    """
    if response.status != 206:
        # A status of 200 for HTTP, or None for file:// URLs, means the body is the whole file.
        if offset:
            logger.info("server ignored the Range request for %s, so restarting from byte 0", url)
        return 0

    content_range = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE_PATTERN.fullmatch(content_range.strip())
    if match is None or int(match[1]) != offset:
        logger.warning(
            "server responded to the Range request for byte %d with Content-Range %r, so downloading again from byte 0",
            offset, content_range,
        )
        return None
    return offset


def _total_size(response: _Response, write_from: int) -> int | None:
    """Return the size of the whole file from the response headers, or None when they do not give it."""
    match = _CONTENT_RANGE_PATTERN.fullmatch(response.headers.get("Content-Range", "").strip())
    if response.status == 206 and match is not None and match[3] != "*":
        return int(match[3])

    content_length = response.headers.get("Content-Length")
    if content_length is None or not content_length.strip().isdigit():
        return None
    return write_from + int(content_length)


def _stream_to_file(
    response: _Response,
    part_path: Path,
    write_from: int,
    url: str,
    progress: ProgressCallback | None,
) -> None:
    """Write the response body into `part_path` from byte `write_from` on, in chunks of at most CHUNK_SIZE bytes."""
    total = _total_size(response, write_from)
    bytes_done = write_from
    mode = "ab" if write_from else "wb"

    # read1 returns the bytes already received instead of waiting for a full chunk, so a read
    # that times out loses nothing that arrived before it.
    read_chunk = getattr(response, "read1", response.read)
    with open(part_path, mode) as file:
        while True:
            try:
                chunk = read_chunk(CHUNK_SIZE)
            except (OSError, http.client.HTTPException) as error:
                raise _network_error(url, part_path, f"reading the response failed: {error}") from error
            if not chunk:
                break
            file.write(chunk)
            bytes_done += len(chunk)
            if progress is not None:
                progress(bytes_done, total)

    # http.client returns an empty chunk, not an error, when the server closes the connection early.
    if total is not None and bytes_done < total:
        raise _network_error(url, part_path, f"the connection closed after {bytes_done} of {total} bytes")
    logger.info("downloaded %d bytes of %s", bytes_done, url)


def _verify_archive(part_path: Path, expected_sha256: str, url: str) -> None:
    """Raise InputError, after deleting the file, unless its sha256 is `expected_sha256`."""
    logger.info("verifying sha256 of %s", part_path)
    actual_sha256 = _sha256_of(part_path)
    if actual_sha256 == expected_sha256:
        logger.info("sha256 of %s verified", part_path)
        return

    part_path.unlink()
    # NOTE: when the server sends no Content-Length, a connection closed early cannot be distinguished
    # from a complete download, so the truncated file fails here and is deleted instead of resumed.
    raise InputError(
        f"checksum mismatch for {url}: expected sha256 {expected_sha256}, got {actual_sha256}. "
        "The corrupt download was deleted. Run the download again, and if the mismatch repeats, "
        f"check that {URL_ENV_VAR} and {SHA256_ENV_VAR} name the same release"
    )


def _network_error(url: str, part_path: Path | None, reason: str) -> InputError:
    resume_hint = ""
    if part_path is not None and part_path.exists():
        resume_hint = f" The partial file {str(part_path)!r} is kept, so the next run resumes it."
    return InputError(
        f"download of {url} failed: {reason}. Check the network connection, or set {URL_ENV_VAR} "
        f"to a local mirror of the release.{resume_hint}"
    )


# Unpacking


def _unpack_archive(archive_path: Path, release_dir: Path) -> None:
    """Unpack the archive into `release_dir` through a temporary folder beside it.

    Every member is checked before anything is written, so an unsafe archive writes nothing. The
    temporary folder is renamed to `release_dir` only after extraction succeeds, so a failed
    unpack leaves no partial folder.
    """
    logger.info("unpacking %s into %s", archive_path, release_dir)
    staging_dir = Path(tempfile.mkdtemp(prefix=".unpack-", dir=release_dir.parent))
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = archive.getmembers()
            for member in members:
                _check_member(member, staging_dir, archive_path)
            _check_release_files(members, archive_path)
            if hasattr(tarfile, "data_filter"):
                # The "data" filter (Python 3.12, backported to 3.11.4) is a second guard. It rejects
                # device files and paths or links that lead outside the folder, and clears setuid,
                # setgid and sticky bits and group and other write bits.
                archive.extractall(staging_dir, members=members, filter="data")
            else:
                archive.extractall(staging_dir, members=members)
        os.rename(staging_dir, release_dir)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise InputError(
            f"cannot unpack {str(archive_path)!r}: {error}. Check the free space in its folder, "
            "or delete the archive and download it again"
        ) from error
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    logger.info("unpacked %s", ", ".join(RELEASE_FILES))


def _check_member(member: tarfile.TarInfo, staging_dir: Path, archive_path: Path) -> None:
    """Raise InputError unless the member is a regular file or folder whose path stays inside `staging_dir`."""
    name = member.name
    reason = None
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        reason = "has an absolute path"
    elif ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        reason = "contains a '..' component"
    elif member.issym() or member.islnk():
        reason = f"is a link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        reason = "is a device, FIFO or other special file"
    else:
        root = os.path.realpath(staging_dir)
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            reason = "would be written outside the destination folder"

    if reason is not None:
        raise InputError(
            f"archive {str(archive_path)!r} is unsafe: member {name!r} {reason}. Nothing was unpacked. "
            "Delete the archive and download it from a trusted source"
        )


def _check_release_files(members: list[tarfile.TarInfo], archive_path: Path) -> None:
    """Raise InputError unless both h5 files are regular files at the top level of the archive."""
    top_level_files = {os.path.normpath(member.name) for member in members if member.isfile()}
    missing = [name for name in RELEASE_FILES if name not in top_level_files]
    if missing:
        raise InputError(
            f"archive {str(archive_path)!r} does not contain {', '.join(missing)} at its top level, so it is not "
            f"the digits-only FEMNIST release. Delete it and check {URL_ENV_VAR}"
        )
