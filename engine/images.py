"""Rendering of uint8 ink images for people: PNG grids and ZIP files of single PNGs."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
from PIL import Image


def to_display(images: np.ndarray) -> np.ndarray:
    """Return uint8 images with dark ink on white, the way handwriting is read."""
    return 255 - np.asarray(images, dtype=np.uint8)


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2, scale: int = 1) -> Image.Image:
    """Tile uint8 ink images (N, 28, 28) into one grayscale PIL image, dark ink on white.

    Cells are separated by `padding` pixels of light grey; `scale` enlarges the result by pixel
    repetition so that small digits stay sharp in a browser.
    """
    images = np.asarray(images, dtype=np.uint8)
    count = len(images)
    if count == 0:
        return Image.new("L", (28 * scale, 28 * scale), 255)
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    height, width = images.shape[1:]
    canvas = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding), 200, dtype=np.uint8
    )
    display = to_display(images)
    for position, image in enumerate(display):
        row, column = divmod(position, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        canvas[top : top + height, left : left + width] = image
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(canvas, mode="L")


def grid_png_bytes(images: np.ndarray, columns: int | None = None, scale: int = 1) -> bytes:
    """Return the PNG bytes of `make_grid(images, columns)`."""
    buffer = io.BytesIO()
    make_grid(images, columns, scale=scale).save(buffer, format="PNG")
    return buffer.getvalue()


def png_zip_bytes(images: np.ndarray, prefix: str = "image") -> bytes:
    """Return a ZIP archive holding each image as `<prefix>-NNN.png`, dark ink on white."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for position, image in enumerate(to_display(images)):
            single = io.BytesIO()
            Image.fromarray(image, mode="L").save(single, format="PNG")
            archive.writestr(f"{prefix}-{position:03d}.png", single.getvalue())
    return buffer.getvalue()
