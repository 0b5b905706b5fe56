"""Tests of engine.dcgan on real FEMNIST digits: training, checkpoints and sampling.

Training runs are tiny (small networks, one or two epochs) so that the file runs in seconds
on a CPU. They check behaviour, not image quality.
"""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engine.dcgan import (
    MIN_TRAINING_IMAGES,
    DCGANConfig,
    Discriminator,
    EpochProgress,
    Generator,
    generate,
    init_dcgan_weights,
    load_checkpoint,
    train_dcgan,
)
from engine.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_FILE_NAME = "femnist_digits_train.h5"
TINY_CONFIG = DCGANConfig(
    latent_dim=16,
    generator_features=8,
    discriminator_features=8,
    batch_size=32,
    epochs=2,
    sample_count=16,
    seed=0,
)
CPU = torch.device("cpu")


def femnist_folder() -> Path:
    """Return the folder of the FEMNIST sample: $FEMNIST_DATA, else ../shared/femnist from the repository root."""
    configured = os.environ.get("FEMNIST_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "femnist"


@pytest.fixture(scope="module")
def femnist_images() -> np.ndarray:
    """Return about 300 real FEMNIST digits as uint8 (N, 28, 28), 0 = background, 255 = ink."""
    path = femnist_folder() / TRAIN_FILE_NAME
    if not path.is_file():
        pytest.fail(f"FEMNIST file {str(path)!r} not found; set FEMNIST_DATA to the folder holding {TRAIN_FILE_NAME}")

    batches = []
    with h5py.File(path, "r") as file:
        for writer_id in sorted(file["examples"])[:6]:
            batches.append(file["examples"][writer_id]["pixels"][()])
    pixels = np.concatenate(batches)  # float32 (N, 28, 28), 1.0 = background
    return np.rint((1.0 - np.clip(pixels, 0.0, 1.0)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(femnist_images, tmp_path_factory):
    """Train the tiny DCGAN once and return (checkpoint, path) for the tests that only read the result."""
    path = tmp_path_factory.mktemp("trained") / "dcgan.pt"
    checkpoint = train_dcgan(femnist_images, TINY_CONFIG, CPU, path, metadata={"cluster": 3, "writers": ["f0000_14"]})
    return checkpoint, path


def test_femnist_fixture_is_ink_convention(femnist_images):
    # Most pixels of a digit image are background, so the median must be 0 after conversion.
    assert femnist_images.dtype == np.uint8
    assert femnist_images.shape[0] >= 256
    assert np.median(femnist_images) == 0
    assert femnist_images.max() == 255


def test_train_dcgan_step_losses_finite(trained, femnist_images):
    checkpoint, _ = trained
    steps = (femnist_images.shape[0] // TINY_CONFIG.batch_size) * TINY_CONFIG.epochs
    assert len(checkpoint.history.generator_losses) == steps
    assert len(checkpoint.history.discriminator_losses) == steps
    assert all(math.isfinite(loss) for loss in checkpoint.history.generator_losses)
    assert all(math.isfinite(loss) for loss in checkpoint.history.discriminator_losses)


def test_train_dcgan_epoch_means(trained):
    checkpoint, _ = trained
    history = checkpoint.history
    steps_per_epoch = len(history.generator_losses) // TINY_CONFIG.epochs
    assert len(history.epoch_generator_losses) == TINY_CONFIG.epochs
    assert len(history.epoch_discriminator_losses) == TINY_CONFIG.epochs
    assert history.epoch_generator_losses[0] == pytest.approx(np.mean(history.generator_losses[:steps_per_epoch]))


def test_train_dcgan_sample_grid_per_epoch(trained):
    checkpoint, _ = trained
    assert checkpoint.sample_grids.shape == (TINY_CONFIG.epochs, TINY_CONFIG.sample_count, 28, 28)
    assert checkpoint.sample_grids.dtype == np.uint8
    assert not np.array_equal(checkpoint.sample_grids[0], checkpoint.sample_grids[1])


def test_train_dcgan_checkpoint_fields(trained, femnist_images):
    checkpoint, _ = trained
    assert checkpoint.epochs_done == TINY_CONFIG.epochs
    assert checkpoint.completed
    assert checkpoint.image_count == femnist_images.shape[0]
    assert checkpoint.batch_size == TINY_CONFIG.batch_size
    assert checkpoint.training_seconds > 0
    assert not checkpoint.generator.training


def test_train_dcgan_leaves_no_temporary_files(trained):
    _, path = trained
    assert sorted(path.parent.iterdir()) == [path]


def test_load_checkpoint_round_trip(trained):
    checkpoint, path = trained
    loaded = load_checkpoint(path, CPU)
    assert loaded.config == checkpoint.config
    assert loaded.metadata == {"cluster": 3, "writers": ["f0000_14"]}
    assert loaded.history == checkpoint.history
    assert np.array_equal(loaded.sample_grids, checkpoint.sample_grids)
    assert torch.equal(loaded.fixed_noise, checkpoint.fixed_noise)
    assert loaded.created_at == checkpoint.created_at
    assert not loaded.generator.training


def test_load_checkpoint_generates_same_images(trained):
    checkpoint, path = trained
    before = generate(checkpoint, 20, seed=5)
    after = generate(load_checkpoint(path, CPU), 20, seed=5)
    assert np.array_equal(before, after)


def test_generate_shape_and_dtype(trained):
    checkpoint, _ = trained
    images = generate(checkpoint, 10)
    assert images.shape == (10, 28, 28)
    assert images.dtype == np.uint8


def test_generate_more_than_one_batch(trained):
    checkpoint, _ = trained
    images = generate(checkpoint, 1100)
    assert images.shape == (1100, 28, 28)


def test_generate_zero_images(trained):
    checkpoint, _ = trained
    assert generate(checkpoint, 0).shape == (0, 28, 28)


def test_generate_negative_count_raises(trained):
    checkpoint, _ = trained
    with pytest.raises(InputError, match="n=-1"):
        generate(checkpoint, -1)


def test_generate_same_seed_identical(trained):
    checkpoint, _ = trained
    assert np.array_equal(generate(checkpoint, 16, seed=7), generate(checkpoint, 16, seed=7))


def test_generate_different_seed_differs(trained):
    checkpoint, _ = trained
    assert not np.array_equal(generate(checkpoint, 16, seed=7), generate(checkpoint, 16, seed=8))


def test_train_dcgan_same_seed_reproduces(trained, femnist_images, tmp_path):
    checkpoint, path = trained
    repeat = train_dcgan(femnist_images, TINY_CONFIG, CPU, tmp_path / "repeat.pt")
    first_weights = torch.load(path, weights_only=True)["generator"]
    repeat_weights = torch.load(tmp_path / "repeat.pt", weights_only=True)["generator"]
    assert repeat.history == checkpoint.history
    assert np.array_equal(repeat.sample_grids, checkpoint.sample_grids)
    for name, tensor in first_weights.items():
        assert torch.equal(repeat_weights[name], tensor), name


def test_train_dcgan_different_seed_differs(trained, femnist_images, tmp_path):
    checkpoint, _ = trained
    config = DCGANConfig.from_dict({**TINY_CONFIG.to_dict(), "seed": 1, "epochs": 1})
    other = train_dcgan(femnist_images, config, CPU, tmp_path / "other.pt")
    assert other.history.generator_losses[0] != checkpoint.history.generator_losses[0]


def test_train_dcgan_odd_count_drops_single_image(femnist_images, tmp_path):
    # 33 images in batches of 32 leave one image over, which must be dropped, not trained on as a batch of one.
    config = DCGANConfig.from_dict({**TINY_CONFIG.to_dict(), "batch_size": 32})
    checkpoint = train_dcgan(femnist_images[:33], config, CPU, tmp_path / "odd.pt")
    assert len(checkpoint.history.generator_losses) == config.epochs
    assert all(math.isfinite(loss) for loss in checkpoint.history.discriminator_losses)


def test_train_dcgan_batch_larger_than_images(femnist_images, tmp_path):
    config = DCGANConfig.from_dict({**TINY_CONFIG.to_dict(), "batch_size": 64, "epochs": 1})
    checkpoint = train_dcgan(femnist_images[:MIN_TRAINING_IMAGES + 1], config, CPU, tmp_path / "small.pt")
    assert checkpoint.batch_size == MIN_TRAINING_IMAGES + 1
    assert len(checkpoint.history.generator_losses) == 1


def test_train_dcgan_too_few_images_raises(femnist_images, tmp_path):
    too_few = MIN_TRAINING_IMAGES - 1
    with pytest.raises(InputError) as error:
        train_dcgan(femnist_images[:too_few], TINY_CONFIG, CPU, tmp_path / "few.pt")
    assert f"at least {MIN_TRAINING_IMAGES} images" in str(error.value)
    assert f"got {too_few}" in str(error.value)
    assert not (tmp_path / "few.pt").exists()


def test_train_dcgan_float_images_raise(femnist_images, tmp_path):
    with pytest.raises(InputError, match="uint8"):
        train_dcgan(femnist_images.astype(np.float32), TINY_CONFIG, CPU, tmp_path / "float.pt")


def test_train_dcgan_wrong_shape_raises(femnist_images, tmp_path):
    with pytest.raises(InputError, match=r"\(N, 28, 28\)"):
        train_dcgan(femnist_images[:, :, :27], TINY_CONFIG, CPU, tmp_path / "shape.pt")


def test_train_dcgan_unsupported_metadata_raises(femnist_images, tmp_path):
    with pytest.raises(InputError, match="'created'"):
        train_dcgan(femnist_images, TINY_CONFIG, CPU, tmp_path / "meta.pt", metadata={"created": object()})


def test_train_dcgan_numpy_metadata_stored_plain(femnist_images, tmp_path):
    config = DCGANConfig.from_dict({**TINY_CONFIG.to_dict(), "epochs": 1})
    metadata = {"cluster": np.int64(4), "digits": (np.int32(1), 7)}
    train_dcgan(femnist_images[:64], config, CPU, tmp_path / "meta.pt", metadata=metadata)
    loaded = load_checkpoint(tmp_path / "meta.pt", CPU)
    assert loaded.metadata == {"cluster": 4, "digits": [1, 7]}
    assert type(loaded.metadata["cluster"]) is int


def test_train_dcgan_should_stop_after_first_epoch(femnist_images, tmp_path):
    config = DCGANConfig.from_dict({**TINY_CONFIG.to_dict(), "epochs": 3})
    path = tmp_path / "stopped.pt"
    returned = train_dcgan(femnist_images, config, CPU, path, should_stop=lambda: True)
    loaded = load_checkpoint(path, CPU)
    assert returned.epochs_done == 1
    assert not returned.completed
    assert loaded.epochs_done == 1
    assert not loaded.completed
    assert loaded.sample_grids.shape[0] == 1
    assert len(loaded.history.epoch_generator_losses) == 1


def test_train_dcgan_on_epoch_after_each_save(femnist_images, tmp_path):
    # The callback reads the file back, which checks that every epoch left a loadable checkpoint.
    path = tmp_path / "progress.pt"
    progress_seen: list[EpochProgress] = []
    epochs_on_disk: list[int] = []

    def record(progress: EpochProgress) -> None:
        progress_seen.append(progress)
        epochs_on_disk.append(load_checkpoint(path, CPU).epochs_done)

    train_dcgan(femnist_images, TINY_CONFIG, CPU, path, on_epoch=record)
    steps_per_epoch = femnist_images.shape[0] // TINY_CONFIG.batch_size
    assert [progress.epoch for progress in progress_seen] == [1, 2]
    assert epochs_on_disk == [1, 2]
    assert progress_seen[-1].step == progress_seen[-1].total_steps
    assert progress_seen[-1].total_steps == steps_per_epoch * TINY_CONFIG.epochs
    assert progress_seen[-1].epochs == TINY_CONFIG.epochs
    assert progress_seen[-1].images_per_second > 0
    assert math.isfinite(progress_seen[-1].generator_loss)


def test_train_dcgan_logs_steps_and_epochs(femnist_images, tmp_path, caplog):
    config = DCGANConfig.from_dict({**TINY_CONFIG.to_dict(), "epochs": 1})
    with caplog.at_level("DEBUG", logger="engine.dcgan"):
        train_dcgan(femnist_images[:64], config, CPU, tmp_path / "logged.pt")
    debug_lines = [record for record in caplog.records if record.levelname == "DEBUG"]
    info_lines = [record for record in caplog.records if "epoch 1/1 done" in record.getMessage()]
    assert len(debug_lines) == 2
    assert len(info_lines) == 1


def test_load_checkpoint_missing_file_raises(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(InputError, match="not found") as error:
        load_checkpoint(path, CPU)
    assert str(path) in str(error.value)


def test_load_checkpoint_garbage_raises(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(InputError, match="train the model again") as error:
        load_checkpoint(path, CPU)
    assert str(path) in str(error.value)


def test_load_checkpoint_truncated_raises(trained, tmp_path):
    _, path = trained
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupt or truncated") as error:
        load_checkpoint(truncated, CPU)
    assert str(truncated) in str(error.value)


def test_load_checkpoint_other_format_version_raises(trained, tmp_path):
    _, path = trained
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(InputError, match="format version 99"):
        load_checkpoint(newer, CPU)


def test_load_checkpoint_missing_entry_raises(trained, tmp_path):
    _, path = trained
    payload = torch.load(path, weights_only=True)
    del payload["generator"]
    incomplete = tmp_path / "incomplete.pt"
    torch.save(payload, incomplete)
    with pytest.raises(InputError, match="incomplete"):
        load_checkpoint(incomplete, CPU)


def test_dcgan_config_dict_round_trip():
    config = DCGANConfig(epochs=5, learning_rate=1e-3)
    assert DCGANConfig.from_dict(config.to_dict()) == config


def test_dcgan_config_defaults_follow_paper():
    config = DCGANConfig()
    assert (config.learning_rate, config.beta1, config.beta2) == (2e-4, 0.5, 0.999)


def test_dcgan_config_unknown_key_raises():
    with pytest.raises(InputError, match="learning_rat"):
        DCGANConfig.from_dict({"learning_rat": 0.1})


def test_dcgan_config_batch_of_one_raises():
    with pytest.raises(InputError, match="batch_size=1"):
        DCGANConfig(batch_size=1)


def test_generator_output_shape_and_range():
    generator = Generator(latent_dim=100, features=64)
    output = generator(torch.randn(3, 100))
    assert output.shape == (3, 1, 28, 28)
    assert output.abs().max() <= 1.0


def test_discriminator_output_shape():
    discriminator = Discriminator(features=64)
    assert discriminator(torch.zeros(3, 1, 28, 28)).shape == (3,)


def test_init_dcgan_weights_statistics():
    rng = torch.Generator().manual_seed(0)
    generator = Generator(latent_dim=100, features=64)
    generator.apply(partial(init_dcgan_weights, generator=rng))
    convolutions = [module for module in generator.modules() if isinstance(module, torch.nn.ConvTranspose2d)]
    norms = [module for module in generator.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    first_weight = convolutions[0].weight  # 100 * 128 * 7 * 7 values, so its std is close to the true one
    batch_norm_weights = torch.cat([norm.weight for norm in norms])  # 192 values
    assert first_weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert first_weight.std().item() == pytest.approx(0.02, abs=5e-4)
    assert batch_norm_weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert batch_norm_weights.std().item() == pytest.approx(0.02, abs=0.005)
    assert all(torch.count_nonzero(norm.bias) == 0 for norm in norms)


def test_init_dcgan_weights_discriminator_statistics():
    discriminator = Discriminator(features=64)
    discriminator.apply(partial(init_dcgan_weights, generator=torch.Generator().manual_seed(0)))
    weights = torch.cat([
        module.weight.flatten() for module in discriminator.modules() if isinstance(module, torch.nn.Conv2d)
    ])
    assert weights.std().item() == pytest.approx(0.02, abs=5e-4)


def test_generate_truncation_reproducible(trained):
    checkpoint, _ = trained
    first = generate(checkpoint, 8, seed=2, truncation=1.0)
    assert np.array_equal(first, generate(checkpoint, 8, seed=2, truncation=1.0))
    assert not np.array_equal(first, generate(checkpoint, 8, seed=2))


@pytest.mark.parametrize("truncation", [0.0, -1.0, 5.0])
def test_generate_bad_truncation_raises(trained, truncation):
    checkpoint, _ = trained
    with pytest.raises(InputError, match="truncation must be in"):
        generate(checkpoint, 4, truncation=truncation)
