"""DCGAN for 28x28 handwritten digits: models, training loop, checkpoints and sampling.

The architecture and optimiser settings follow Radford, Metz and Chintala, "Unsupervised
Representation Learning with Deep Convolutional Generative Adversarial Networks" (2015,
arXiv:1511.06434). The generator uses transposed convolutions with BatchNorm and ReLU, and the
discriminator uses strided convolutions with LeakyReLU(0.2). Neither has BatchNorm on the image
side. Weights start from N(0, 0.02), and both networks use Adam with lr 2e-4 and beta1 0.5.

Images enter and leave as numpy uint8 arrays of shape (N, 28, 28) holding ink intensity
(0 = background, 255 = full ink). Inside, the models work on float tensors in [-1, 1],
where -1 is background, because the generator ends in tanh.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import InputError
from engine.settings import select_device

logger = logging.getLogger(__name__)

IMAGE_SIZE = 28
# NOTE: a judgment call, not a measured limit. Below this, a DCGAN mostly memorises its few images.
MIN_TRAINING_IMAGES = 32
CHECKPOINT_FORMAT_VERSION = 1
GENERATE_BATCH_SIZE = 512  # images per generator forward pass in generate()


@dataclass(frozen=True)
class DCGANConfig:
    """Hyperparameters of one DCGAN training run."""

    latent_dim: int = 100  # length of the noise vector z
    generator_features: int = 64  # channels of the generator's 14x14 layer, and twice as many at 7x7
    discriminator_features: int = 64  # channels of the discriminator's 14x14 layer, and twice as many at 7x7
    # A cluster of the shared sample contains about 400-1,000 images. With 32 per step and 100 passes
    # that is about 1,500-3,000 optimiser steps. 30 passes of 64 left the samples unrecognisable.
    batch_size: int = 32  # images per step, lowered to the image count when fewer images are given
    epochs: int = 100  # passes over the training images
    learning_rate: float = 2e-4  # Adam step size for both networks
    beta1: float = 0.5  # Adam first-moment decay
    beta2: float = 0.999  # Adam second-moment decay
    seed: int = 0  # seeds weight init, shuffling and noise, so a CPU run can be repeated exactly
    sample_count: int = 64  # images in the fixed-noise sample grid rendered after each epoch

    def __post_init__(self) -> None:
        minimums = {
            "latent_dim": 1,
            "generator_features": 1,
            "discriminator_features": 1,
            "batch_size": 2,  # BatchNorm batch statistics of a single image are meaningless
            "epochs": 1,
            "sample_count": 1,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"DCGAN setting {name}={value!r} is invalid; it must be an integer >= {minimum}")
            if value < minimum:
                raise InputError(f"DCGAN setting {name}={value} should be >= {minimum}")

        if not self.learning_rate > 0:
            raise InputError(f"DCGAN setting learning_rate={self.learning_rate!r} should be > 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise InputError(f"DCGAN setting {name}={value!r} should be in [0, 1)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InputError(f"DCGAN setting seed={self.seed!r} is invalid; it must be an integer")

    def to_dict(self) -> dict[str, int | float]:
        """Return the settings as a dict of plain ints and floats."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DCGANConfig:
        """Build a config from `to_dict()` output; missing keys take their defaults."""
        known = {config_field.name for config_field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown DCGAN settings {unknown}; valid settings are {sorted(known)}")
        return cls(**values)


@dataclass
class TrainingHistory:
    """Losses recorded while training, one entry per optimiser step and per epoch."""

    generator_losses: list[float] = field(default_factory=list)
    discriminator_losses: list[float] = field(default_factory=list)
    epoch_generator_losses: list[float] = field(default_factory=list)  # mean over the epoch's steps
    epoch_discriminator_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[float]]:
        """Return the history as a dict of float lists."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainingHistory:
        """Build a history from `to_dict()` output."""
        return cls(**{name: [float(loss) for loss in losses] for name, losses in values.items()})


@dataclass(frozen=True)
class EpochProgress:
    """Training state passed to the `on_epoch` callback after each epoch."""

    epoch: int  # epochs finished so far, from 1
    epochs: int  # epochs requested
    step: int  # optimiser steps finished so far
    total_steps: int  # optimiser steps in the whole run
    generator_loss: float  # mean over this epoch's steps
    discriminator_loss: float  # mean over this epoch's steps
    elapsed_seconds: float  # wall time since training started, including sampling and saving
    images_per_second: float  # real images trained on per second of elapsed time


@dataclass
class DCGANCheckpoint:
    """A trained or partly trained DCGAN as `train_dcgan` returns it and `load_checkpoint` reads it."""

    generator: Generator  # in eval mode
    config: DCGANConfig
    metadata: dict[str, Any]
    history: TrainingHistory
    sample_grids: np.ndarray  # uint8 (epochs_done, sample_count, 28, 28), ink convention
    fixed_noise: torch.Tensor  # (sample_count, latent_dim), on the CPU
    epochs_done: int
    completed: bool  # False when training stopped early or the checkpoint is from an unfinished run
    training_seconds: float
    image_count: int  # images given to train_dcgan
    batch_size: int  # images per step actually used
    created_at: str  # ISO 8601 UTC time at which the checkpoint was written


class Generator(nn.Module):
    """Map noise vectors to 28x28 images in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, features: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.network = nn.Sequential(
            # z as a (B, latent_dim, 1, 1) tensor
            nn.ConvTranspose2d(latent_dim, features * 2, kernel_size=7, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(features * 2),
            nn.ReLU(inplace=True),
            # (B, 2F, 7, 7)
            nn.ConvTranspose2d(features * 2, features, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
            # (B, F, 14, 14)
            nn.ConvTranspose2d(features, 1, kernel_size=4, stride=2, padding=1, bias=False),
            nn.Tanh(),
            # (B, 1, 28, 28)
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Generate one (1, 28, 28) image per row of `noise` (B, latent_dim)."""
        return self.network(noise.view(noise.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """Score 28x28 images in [-1, 1] as real or generated; returns logits, not probabilities."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.network = nn.Sequential(
            # (B, 1, 28, 28), with no BatchNorm after the input layer as in the DCGAN paper
            nn.Conv2d(1, features, kernel_size=4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # (B, F, 14, 14)
            nn.Conv2d(features, features * 2, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(features * 2),
            nn.LeakyReLU(0.2, inplace=True),
            # (B, 2F, 7, 7)
            nn.Conv2d(features * 2, 1, kernel_size=7, stride=1, padding=0, bias=False),
            # (B, 1, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Score a (B, 1, 28, 28) batch and return logits of shape (B,)."""
        return self.network(images).flatten()


def init_dcgan_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Initialise the weights of one layer for DCGAN training. Pass it to `nn.Module.apply`.

    Convolution weights are drawn from N(0, 0.02) as in the DCGAN paper. BatchNorm weights are
    drawn from N(1, 0.02) as in pytorch/examples' dcgan/main.py, and all biases are set to 0.
    `generator` is the random number generator to draw from, or None for torch's global one.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02, generator=generator)
        nn.init.zeros_(module.bias)


def train_dcgan(
    images: np.ndarray,
    config: DCGANConfig,
    device: torch.device | str,
    checkpoint_path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DCGANCheckpoint:
    """Train a DCGAN on `images` and save a checkpoint to `checkpoint_path` after every epoch.

    `images` is uint8 (N, 28, 28) in the ink convention, with N >= MIN_TRAINING_IMAGES.
    Each save replaces the file atomically, so a process killed mid-run leaves the last
    finished epoch loadable. `on_epoch` runs after each save. When `should_stop()` returns
    True after an epoch, training ends there and the checkpoint keeps completed=False.
    `metadata` values may be str, int, float, bool, None, lists or dicts. They are stored with
    numpy scalars turned into Python numbers and tuples into lists.

    With the same images, config and CPU device, two runs produce identical weights and losses,
    because every random draw comes from one torch.Generator seeded with `config.seed`.
    NOTE: on CUDA, cuDNN may pick non-deterministic kernels, so runs can differ slightly.

    Raises InputError for invalid images, unsupported metadata or an unwritable checkpoint folder.
    """
    _validate_images(images)
    plain_metadata = _plain_metadata(metadata or {})
    device = torch.device(device)
    checkpoint_path = Path(checkpoint_path)
    _create_parent_folder(checkpoint_path)

    image_count = images.shape[0]
    batch_size = min(config.batch_size, image_count)
    steps_per_epoch = image_count // batch_size  # the incomplete last batch is dropped, so no batch has one image
    total_steps = steps_per_epoch * config.epochs

    # Every random draw comes from this generator, so a run never depends on torch's global RNG.
    rng = torch.Generator().manual_seed(config.seed)
    generator = Generator(config.latent_dim, config.generator_features)
    discriminator = Discriminator(config.discriminator_features)
    generator.apply(partial(init_dcgan_weights, generator=rng))
    discriminator.apply(partial(init_dcgan_weights, generator=rng))
    generator.to(device)
    discriminator.to(device)
    fixed_noise = torch.randn(config.sample_count, config.latent_dim, generator=rng)  # (S, latent_dim)

    # uint8 takes a quarter of float32's memory; batches become floats on the device.
    device_images = torch.from_numpy(images).to(device).unsqueeze(1)  # (N, 1, 28, 28)

    betas = (config.beta1, config.beta2)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=config.learning_rate, betas=betas)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.learning_rate, betas=betas)
    loss_function = nn.BCEWithLogitsLoss()
    real_labels = torch.ones(batch_size, device=device)
    fake_labels = torch.zeros(batch_size, device=device)

    logger.info(
        "training DCGAN on %d images for %d epochs (%d steps of %d images each) on %s; checkpoint %s",
        image_count, config.epochs, total_steps, batch_size, device, checkpoint_path,
    )
    history = TrainingHistory()
    sample_grids: list[np.ndarray] = []
    start_time = time.perf_counter()
    step = 0
    epoch = 0

    for epoch in range(1, config.epochs + 1):
        generator.train()
        discriminator.train()
        order = torch.randperm(image_count, generator=rng).to(device)
        epoch_generator_losses = []
        epoch_discriminator_losses = []

        for batch_index in range(steps_per_epoch):
            batch_ids = order[batch_index * batch_size : (batch_index + 1) * batch_size]
            real = _ink_to_tensor(device_images[batch_ids])  # (B, 1, 28, 28)
            noise = torch.randn(batch_size, config.latent_dim, generator=rng).to(device)  # (B, latent_dim)
            fake = generator(noise)  # (B, 1, 28, 28)

            discriminator_optimizer.zero_grad(set_to_none=True)
            real_loss = loss_function(discriminator(real), real_labels)
            fake_loss = loss_function(discriminator(fake.detach()), fake_labels)
            discriminator_loss = real_loss + fake_loss
            discriminator_loss.backward()
            discriminator_optimizer.step()

            # Non-saturating generator loss: raise the discriminator's score of fakes as real.
            generator_optimizer.zero_grad(set_to_none=True)
            generator_loss = loss_function(discriminator(fake), real_labels)
            generator_loss.backward()
            generator_optimizer.step()

            step += 1
            epoch_generator_losses.append(generator_loss.item())
            epoch_discriminator_losses.append(discriminator_loss.item())
            logger.debug(
                "epoch %d/%d step %d/%d: generator loss %.4f, discriminator loss %.4f",
                epoch, config.epochs, step, total_steps, epoch_generator_losses[-1], epoch_discriminator_losses[-1],
            )

        history.generator_losses.extend(epoch_generator_losses)
        history.discriminator_losses.extend(epoch_discriminator_losses)
        history.epoch_generator_losses.append(float(np.mean(epoch_generator_losses)))
        history.epoch_discriminator_losses.append(float(np.mean(epoch_discriminator_losses)))
        sample_grids.append(_render_samples(generator, fixed_noise))
        elapsed_seconds = time.perf_counter() - start_time

        payload = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "generator": _cpu_state_dict(generator),
            "discriminator": _cpu_state_dict(discriminator),
            "config": config.to_dict(),
            "metadata": plain_metadata,
            "history": history.to_dict(),
            "sample_grids": torch.from_numpy(np.stack(sample_grids)),  # uint8 (E, S, 28, 28)
            "fixed_noise": fixed_noise,
            "epochs_done": epoch,
            "completed": epoch == config.epochs,
            "training_seconds": elapsed_seconds,
            "image_count": image_count,
            "batch_size": batch_size,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _save_atomically(payload, checkpoint_path)

        progress = EpochProgress(
            epoch=epoch,
            epochs=config.epochs,
            step=step,
            total_steps=total_steps,
            generator_loss=history.epoch_generator_losses[-1],
            discriminator_loss=history.epoch_discriminator_losses[-1],
            elapsed_seconds=elapsed_seconds,
            images_per_second=step * batch_size / elapsed_seconds if elapsed_seconds > 0 else math.inf,
        )
        logger.info(
            "epoch %d/%d done in %.1f s total: mean generator loss %.4f, mean discriminator loss %.4f, %.0f images/s",
            epoch, config.epochs, elapsed_seconds, progress.generator_loss, progress.discriminator_loss,
            progress.images_per_second,
        )
        if on_epoch is not None:
            on_epoch(progress)
        if should_stop is not None and epoch < config.epochs and should_stop():
            logger.info("training stopped on request after epoch %d/%d; checkpoint %s", epoch, config.epochs, checkpoint_path)
            break

    generator.eval()
    return _checkpoint_from_payload(payload, generator)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None) -> DCGANCheckpoint:
    """Load a checkpoint written by `train_dcgan`, with its generator on `device` in eval mode.

    `device` None picks one with `engine.settings.select_device`. Raises InputError when the
    file is missing, truncated, corrupt or of another format version.
    """
    path = Path(path)
    device = select_device(None) if device is None else torch.device(device)
    retrain_hint = "train the model again to rewrite it"
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} not found; {retrain_hint}")

    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        raise InputError(f"checkpoint {str(path)!r} is corrupt or truncated ({error}); {retrain_hint}") from error

    if not isinstance(payload, dict) or "format_version" not in payload:
        raise InputError(f"{str(path)!r} is not a DCGAN checkpoint; {retrain_hint}")
    if payload["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise InputError(
            f"checkpoint {str(path)!r} has format version {payload['format_version']!r}, "
            f"but this version reads only {CHECKPOINT_FORMAT_VERSION}; {retrain_hint}"
        )

    try:
        config = DCGANConfig.from_dict(payload["config"])
        generator = Generator(config.latent_dim, config.generator_features)
        generator.load_state_dict(payload["generator"])
        return _checkpoint_from_payload(payload, generator.to(device).eval())
    except InputError as error:
        raise InputError(f"checkpoint {str(path)!r} has invalid settings: {error}; {retrain_hint}") from error
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"checkpoint {str(path)!r} is incomplete or inconsistent ({error!r}); {retrain_hint}") from error


@torch.no_grad()
def generate(
    checkpoint: DCGANCheckpoint,
    n: int,
    seed: int = 0,
    device: torch.device | str | None = None,
    truncation: float | None = None,
) -> np.ndarray:
    """Generate `n` images from a checkpoint as uint8 (n, 28, 28) in the ink convention.

    The same checkpoint and seed give the same images. With `device` None the generator stays
    where it is. Any other device moves the checkpoint's generator there in place.
    `truncation` t draws each noise value from a normal truncated to [-t, t] (the truncation
    trick of BigGAN, Brock et al. 2019): a smaller t gives more typical, less varied images.
    None draws from the plain normal the generator was trained on.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"image count n={n!r} is invalid; it must be an integer >= 0")
    if truncation is not None and not 0.0 < truncation <= 4.0:
        raise InputError(f"truncation must be in (0, 4] or None, got {truncation}")

    generator = checkpoint.generator
    if device is not None:
        generator.to(torch.device(device))
    target_device = next(generator.parameters()).device
    generator.eval()

    # Noise is drawn on the CPU so that a seed gives the same noise on every device.
    rng = torch.Generator().manual_seed(seed)
    batches = [np.empty((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)]
    for start in range(0, n, GENERATE_BATCH_SIZE):
        count = min(GENERATE_BATCH_SIZE, n - start)
        noise = torch.empty(count, generator.latent_dim)  # (B, latent_dim)
        if truncation is None:
            noise.normal_(generator=rng)
        else:
            nn.init.trunc_normal_(noise, a=-truncation, b=truncation, generator=rng)
        batches.append(_tensor_to_ink(generator(noise.to(target_device))))
    return np.concatenate(batches)


def _validate_images(images: Any) -> None:
    """Raise InputError unless `images` is uint8 (N, 28, 28) with N >= MIN_TRAINING_IMAGES."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"training images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"training images must have shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), got {images.shape}")
    if images.dtype != np.uint8:
        raise InputError(
            f"training images must be uint8 ink intensities (0 = background, 255 = ink), got dtype {images.dtype}"
        )
    if images.shape[0] < MIN_TRAINING_IMAGES:
        raise InputError(
            f"DCGAN training needs at least {MIN_TRAINING_IMAGES} images, got {images.shape[0]}; "
            "choose a larger cluster or more writers"
        )


def _plain_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `metadata` that `torch.load(weights_only=True)` can read back.

    numpy scalars become Python numbers and tuples become lists. Raises InputError on other types.
    """
    def convert(value: Any, key: str) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, (list, tuple)):
            return [convert(item, key) for item in value]
        if isinstance(value, Mapping):
            return {str(inner_key): convert(inner_value, key) for inner_key, inner_value in value.items()}
        raise InputError(
            f"checkpoint metadata {key!r} has unsupported type {type(value).__name__}; "
            "use str, int, float, bool, None, lists or dicts of them"
        )

    return {str(key): convert(value, str(key)) for key, value in metadata.items()}


def _create_parent_folder(path: Path) -> None:
    """Create the checkpoint's folder before training, so a bad path fails before any work is done."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create checkpoint folder {str(path.parent)!r}: {error.strerror}") from error


def _ink_to_tensor(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 ink intensities to floats in [-1, 1], background -1."""
    return images.float() / 127.5 - 1.0


def _tensor_to_ink(images: torch.Tensor) -> np.ndarray:
    """Map generator output (B, 1, 28, 28) in [-1, 1] to uint8 (B, 28, 28) ink intensities."""
    ink = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return ink.squeeze(1).cpu().numpy()


@torch.no_grad()
def _render_samples(generator: Generator, fixed_noise: torch.Tensor) -> np.ndarray:
    """Render the fixed-noise samples in eval mode as uint8 (S, 28, 28)."""
    generator.eval()
    device = next(generator.parameters()).device
    samples = _tensor_to_ink(generator(fixed_noise.to(device)))
    generator.train()
    return samples


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Return a copy of the module's state dict on the CPU, so any device can load it."""
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` to a temporary file next to `path`, then rename it over `path`.

    On POSIX, a rename within one file system is atomic, so a reader or a run killed mid-save
    leaves the old or the new checkpoint in place, never a partial one.
    """
    handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def _checkpoint_from_payload(payload: Mapping[str, Any], generator: Generator) -> DCGANCheckpoint:
    """Build a DCGANCheckpoint from a saved payload and a generator that contains its weights."""
    return DCGANCheckpoint(
        generator=generator,
        config=DCGANConfig.from_dict(payload["config"]),
        metadata=dict(payload["metadata"]),
        history=TrainingHistory.from_dict(payload["history"]),
        sample_grids=payload["sample_grids"].cpu().numpy(),
        fixed_noise=payload["fixed_noise"].cpu(),
        epochs_done=int(payload["epochs_done"]),
        completed=bool(payload["completed"]),
        training_seconds=float(payload["training_seconds"]),
        image_count=int(payload["image_count"]),
        batch_size=int(payload["batch_size"]),
        created_at=str(payload["created_at"]),
    )
