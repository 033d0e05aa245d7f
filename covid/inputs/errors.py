"""What every decoder shares: the error type, the size limits and their checks.

Both the dispatcher (:mod:`covid.inputs.decode`) and the DICOM decoder
(:mod:`covid.inputs.dicom`) import from here, so neither imports the other's
module at load time. This module imports nothing from :mod:`covid`.
"""

from __future__ import annotations

import numpy as np

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest accepted upload or file, in bytes."""

MAX_PIXELS = 50_000_000
"""Largest accepted image, in pixels (checked from the header, before decoding)."""

MIN_SIDE = 64
"""Smallest accepted image side, in pixels."""

COLOR_SPREAD = 4.0
"""Mean absolute deviation of the channels from their mean (0-255 scale) above
which an RGB image counts as real colour rather than grey stored as RGB."""


class ImageDecodeError(ValueError):
    """An input that cannot be turned into a chest X-ray image.

    Attributes:
        name: The file name the user knows the input by.
        reason: The reason, in plain words.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def check_dimensions(name: str, width: int, height: int) -> None:
    """Refuses images that are too large or too small, from their dimensions.

    Args:
        name: The file name, used only in messages.
        width: Image width, in pixels.
        height: Image height, in pixels.

    Raises:
        ImageDecodeError: More than :data:`MAX_PIXELS` pixels, or a side
            shorter than :data:`MIN_SIDE`.
    """
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            name,
            f"the image is {width} x {height} pixels, more than the "
            f"{MAX_PIXELS / 1_000_000:g} megapixel limit.",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(
            name,
            f"the image is {width} x {height} pixels, too small to read "
            f"(at least {MIN_SIDE} pixels a side).",
        )


def is_real_color(rgb: np.ndarray) -> bool:
    """Tells real colour from grey stored as RGB.

    Args:
        rgb: (H, W, 3) uint8 image.

    Returns:
        Whether the channels differ by more than :data:`COLOR_SPREAD` on average.
    """
    channels = rgb.astype(np.int16)
    spread = np.abs(channels - channels.mean(axis=2, keepdims=True)).mean()
    return bool(spread > COLOR_SPREAD)
