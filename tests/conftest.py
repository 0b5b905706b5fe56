"""Fixtures shared by the engine tests: the real FEMNIST sample and one Studio with a session cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.dcgan import DCGANConfig
from engine.studio import Studio

REPO_ROOT = Path(__file__).resolve().parents[1]

# Small networks and two epochs: enough to run training, checkpoints and generation end to end
# in seconds on a CPU, not to produce readable digits.
FAST_CONFIG = DCGANConfig(
    latent_dim=16,
    generator_features=8,
    discriminator_features=8,
    batch_size=64,
    epochs=2,
    sample_count=16,
    seed=0,
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Return the FEMNIST sample folder: $FEMNIST_DATA, else ../shared/femnist from the repository root."""
    configured = os.environ.get("FEMNIST_DATA")
    path = Path(configured).expanduser().absolute() if configured else REPO_ROOT.parent / "shared" / "femnist"
    if not path.is_dir():
        pytest.fail(f"FEMNIST data folder {str(path)!r} not found; set FEMNIST_DATA to the folder of the sample")
    return path


@pytest.fixture(scope="session")
def studio(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    """Return a Studio on the sample with a cache folder shared by the whole test session."""
    return Studio(data_dir, tmp_path_factory.mktemp("studio-cache"), device="cpu")
