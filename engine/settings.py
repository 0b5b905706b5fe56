"""Resolution of the data folder, the cache folder and the torch device from options and environment."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.errors import InputError

DATA_ENV_VAR = "FEMNIST_DATA"
CACHE_ENV_VAR = "FEMNIST_CACHE"
DEVICE_ENV_VAR = "FEMNIST_DEVICE"
DEFAULT_CACHE_DIR = Path("cache")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Return the data folder: the argument if given, else $FEMNIST_DATA."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV_VAR)
    if not data_dir:
        raise InputError(
            f"no data folder given; pass --data PATH or set {DATA_ENV_VAR} to a folder "
            "holding FEMNIST *_train.h5/*_test.h5 files or LEAF *.json shards"
        )
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise InputError(
            f"data folder {str(path)!r} does not exist; check --data or {DATA_ENV_VAR}, "
            "or fetch the full release with `python -m engine download --dest PATH`"
        )
    return path


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Return the cache folder (argument, else $FEMNIST_CACHE, else ./cache), created if missing."""
    if cache_dir is None or str(cache_dir) == "":
        cache_dir = os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create cache folder {str(path)!r}: {error.strerror}; pass --cache PATH") from error
    return path


def select_device(name: str | None = None) -> torch.device:
    """Return the torch device to use: `name` or $FEMNIST_DEVICE if set, else CUDA when present, else CPU.

    `name` is "auto", "cpu", "cuda" or "cuda:N".
    """
    if not name:
        name = os.environ.get(DEVICE_ENV_VAR) or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device
