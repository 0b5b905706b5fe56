"""Style vectors: per-image features whose mean over a writer's images describes that writer.

LEAF shrinks each NIST box to 28x28 without cropping or centring, so the ink of a digit is often
about 10x8 pixels and off-centre. Where the ink sits, how big it is, how it slants and how heavy the
strokes are belong to a writer's style as much as the shape of the strokes does. The
representations below weigh those aspects differently; `benchmarks/style_representations.py`
compares them and docs/style.md records why the default was chosen.

Every representation maps single images to feature vectors, so the same transform places a writer
(the mean of their images' features) and a single real or generated image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REPRESENTATIONS = ("combined", "geometry", "shape", "pixels")
DEFAULT_REPRESENTATION = "combined"

SHAPE_SIZE = 12  # side of the size- and position-normalised crop, in pixels
GEOMETRY_FEATURES = (
    "ink_mass",
    "centre_x",
    "centre_y",
    "box_left",
    "box_top",
    "box_width",
    "box_height",
    "spread_x",
    "spread_y",
    "slant",
    "ink_density",
    "stroke_intensity",
)
_INK_THRESHOLD = 0.25  # ink fraction above which a pixel counts as part of a stroke


@dataclass(frozen=True)
class FeatureSpec:
    """Post-processing rule of a representation: whether its columns are standardised before PCA."""

    name: str
    standardise: bool


def validate_representation(name: str) -> str:
    """Return `name` if it is a known representation, else raise InputError listing them."""
    from engine.errors import InputError

    if name not in REPRESENTATIONS:
        raise InputError(f"unknown style representation {name!r}; choose one of {', '.join(REPRESENTATIONS)}")
    return name


def image_features(images: np.ndarray, representation: str) -> np.ndarray:
    """Return float32 features (N, F) of uint8 ink images (N, 28, 28) for a representation."""
    representation = validate_representation(representation)
    ink = np.asarray(images, dtype=np.float32) / 255.0  # (N, 28, 28)
    if representation == "pixels":
        return _pooled_pixels(ink)
    if representation == "geometry":
        return geometry_features(ink)
    if representation == "shape":
        return normalised_shape(ink).reshape(len(ink), -1)
    # combined: geometry (12 columns) beside the normalised shape (144 columns). The geometry
    # columns are repeated so that, after standardisation, where and how big the ink is weighs
    # about as much as the stroke shape in the Euclidean distance k-means uses.
    geometry = geometry_features(ink)
    shape = normalised_shape(ink).reshape(len(ink), -1)
    repeats = max(1, shape.shape[1] // geometry.shape[1])
    return np.concatenate([np.repeat(geometry, repeats, axis=1), shape], axis=1)


def feature_spec(representation: str) -> FeatureSpec:
    """Return how `representation` is post-processed before PCA."""
    # Pixel and shape columns share one unit (ink fraction); standardising them would inflate
    # near-empty border pixels to the weight of the stroke pixels.
    return FeatureSpec(representation, standardise=representation in ("geometry", "combined"))


def _pooled_pixels(ink: np.ndarray) -> np.ndarray:
    pooled = F.avg_pool2d(torch.from_numpy(ink)[:, None], kernel_size=2)  # (N, 1, 14, 14)
    return pooled.reshape(len(ink), -1).numpy()


def geometry_features(ink: np.ndarray) -> np.ndarray:
    """Return the GEOMETRY_FEATURES columns, float32 (N, 12), of float ink images in [0, 1]."""
    count, height, width = ink.shape
    ys = np.arange(height, dtype=np.float32)[None, :, None]
    xs = np.arange(width, dtype=np.float32)[None, None, :]

    stroke = ink > _INK_THRESHOLD
    # Moments use stroke pixels only: faint background noise far from the digit (common in
    # generated images, absent from the scans) would otherwise inflate the spread.
    ink = ink * stroke
    mass = ink.sum(axis=(1, 2))
    safe_mass = np.maximum(mass, 1e-6)
    centre_x = (ink * xs).sum(axis=(1, 2)) / safe_mass
    centre_y = (ink * ys).sum(axis=(1, 2)) / safe_mass
    dx = xs - centre_x[:, None, None]
    dy = ys - centre_y[:, None, None]
    var_x = (ink * dx * dx).sum(axis=(1, 2)) / safe_mass
    var_y = (ink * dy * dy).sum(axis=(1, 2)) / safe_mass
    cov_xy = (ink * dx * dy).sum(axis=(1, 2)) / safe_mass
    # Positive slant: the top of the digit leans right (y grows downwards in image rows).
    slant = -cov_xy / np.maximum(var_y, 1e-6)

    has_ink = stroke.any(axis=(1, 2))
    rows = stroke.any(axis=2)  # (N, 28)
    columns = stroke.any(axis=1)  # (N, 28)
    top = np.where(has_ink, rows.argmax(axis=1), 0)
    bottom = np.where(has_ink, height - 1 - rows[:, ::-1].argmax(axis=1), 0)
    left = np.where(has_ink, columns.argmax(axis=1), 0)
    right = np.where(has_ink, width - 1 - columns[:, ::-1].argmax(axis=1), 0)
    box_width = (right - left + 1) * has_ink
    box_height = (bottom - top + 1) * has_ink
    stroke_pixels = stroke.sum(axis=(1, 2))
    ink_density = stroke_pixels / np.maximum(box_width * box_height, 1)
    stroke_intensity = (ink * stroke).sum(axis=(1, 2)) / np.maximum(stroke_pixels, 1)

    columns_out = [
        mass, centre_x, centre_y, left, top, box_width, box_height,
        np.sqrt(var_x), np.sqrt(var_y), slant, ink_density, stroke_intensity,
    ]
    return np.stack(columns_out, axis=1).astype(np.float32)


def normalised_shape(ink: np.ndarray, size: int = SHAPE_SIZE) -> np.ndarray:
    """Crop each image to its ink's bounding square and resize it to (size, size).

    The crop keeps the aspect ratio (the square is centred on the box), so the result shows stroke
    shape independent of where the digit sits and how big it is. Returns float32 (N, size, size).
    """
    count, height, width = ink.shape
    stroke = ink > _INK_THRESHOLD
    rows = stroke.any(axis=2)
    columns = stroke.any(axis=1)
    has_ink = rows.any(axis=1)
    top = np.where(has_ink, rows.argmax(axis=1), 0)
    bottom = np.where(has_ink, height - 1 - rows[:, ::-1].argmax(axis=1), height - 1)
    left = np.where(has_ink, columns.argmax(axis=1), 0)
    right = np.where(has_ink, width - 1 - columns[:, ::-1].argmax(axis=1), width - 1)

    side = np.maximum(bottom - top, right - left) + 1  # (N,)
    centre_y = (top + bottom) / 2.0
    centre_x = (left + right) / 2.0
    # An affine grid per image maps the output square onto the bounding square, in the
    # [-1, 1] coordinates of grid_sample (align_corners=False: pixel centres at (2i+1)/n - 1).
    scale_x = side / width
    scale_y = side / height
    shift_x = (2 * centre_x + 1) / width - 1
    shift_y = (2 * centre_y + 1) / height - 1
    theta = np.zeros((count, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = shift_x
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = shift_y
    theta_tensor = torch.from_numpy(theta)
    grid = F.affine_grid(theta_tensor, [count, 1, size, size], align_corners=False)  # (N, s, s, 2)
    crops = F.grid_sample(torch.from_numpy(ink)[:, None], grid, mode="bilinear", align_corners=False)
    return crops[:, 0].numpy()  # (N, size, size)
