"""The one preprocessing path from decoded pixels to model input.

Training and serving both call :func:`to_model_input`; intensity normalisation
(ResNet-50's mean subtraction) happens inside the saved model itself, so the two
cannot diverge.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_model_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resizes a grayscale image to the model's square input.

    The whole film is resized (not cropped), as the training database was.

    Args:
        pixels: (H, W) uint8 grayscale image.
        size: The model's input side, in pixels.

    Returns:
        (size, size, 1) uint8 array.

    Raises:
        ValueError: ``pixels`` is not a 2-D uint8 array.
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 image, got {pixels.shape} {pixels.dtype}")
    if pixels.shape != (size, size):
        image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, np.newaxis]


def fit_within(pixels: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Shrinks an image for display so that its longer side is at most ``max_side``.

    Args:
        pixels: (H, W) uint8 grayscale image.
        max_side: Longest side allowed.

    Returns:
        (h, w) uint8 image with the same aspect ratio (the input itself if small enough).
    """
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def to_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """Stacks grayscale images into one float32 model batch.

    Args:
        images: (H, W) uint8 grayscale images, any sizes.
        size: The model's input side, in pixels.

    Returns:
        (N, size, size, 1) float32 array of raw intensities in [0, 255].
    """
    if not images:
        return np.zeros((0, size, size, 1), dtype=np.float32)
    return np.stack([to_model_input(img, size) for img in images]).astype(np.float32)
