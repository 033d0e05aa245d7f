"""One decode step for every input: the dashboard, the CLI and training all use it.

Files are identified by their content (magic bytes), never by their extension.
Every failure raises :class:`ImageDecodeError`, whose message names the file and
the reason in plain words. Nothing is ever written to disk.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest accepted upload or file, in bytes."""

MAX_PIXELS = 50_000_000
"""Largest accepted image, in pixels (checked from the header, before decoding)."""

MIN_SIDE = 64
"""Smallest accepted image side, in pixels."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


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


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, ready for preprocessing.

    Attributes:
        pixels: (H, W) uint8 grayscale pixels, upright, 0 = black.
        name: The file name the user knows the input by.
        kind: The detected format: ``"PNG"``, ``"JPEG"`` or ``"DICOM"``.
        is_color: Whether the source held real colour (not R = G = B).
        info: Safe, non-identifying fields to show (never patient data).
    """

    pixels: np.ndarray
    name: str
    kind: str
    is_color: bool = False
    info: dict[str, str] = field(default_factory=dict)


def sniff_format(data: bytes) -> str | None:
    """Identifies a file's format from its first bytes.

    Args:
        data: The file's content.

    Returns:
        ``"PNG"``, ``"JPEG"``, ``"DICOM"``, or None when unrecognised.
    """
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    return None


def decode_image(data: bytes, name: str) -> DecodedImage:
    """Decodes PNG, JPEG or DICOM bytes into an upright grayscale image.

    Args:
        data: The file's content.
        name: The file name, used only in messages.

    Returns:
        The decoded image, with (H, W) uint8 pixels.

    Raises:
        ImageDecodeError: The input is empty, too large, too small, of an
            unsupported format, or corrupt.
    """
    if not data:
        raise ImageDecodeError(name, "the file is empty.")
    if len(data) > MAX_FILE_BYTES:
        raise ImageDecodeError(
            name, f"the file is larger than the {MAX_FILE_BYTES // 2**20} MB limit."
        )
    kind = sniff_format(data)
    if kind is None:
        raise ImageDecodeError(
            name, "this is not a PNG, JPEG or DICOM image (its content is not recognised)."
        )
    if kind == "DICOM":
        from covid import dicom  # deferred: pydicom is only needed for DICOM files

        pixels, info = dicom.decode_dicom(data, name)
        _check_size(name, pixels.shape[1], pixels.shape[0])
        return DecodedImage(pixels=pixels, name=name, kind=kind, info=info)
    pixels, is_color = _decode_raster(data, name)
    return DecodedImage(pixels=pixels, name=name, kind=kind, is_color=is_color)


def read_image(path: str | Path) -> DecodedImage:
    """Reads and decodes one image file.

    Args:
        path: The file's path.

    Returns:
        The decoded image.

    Raises:
        ImageDecodeError: The file cannot be read or decoded.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(
                path.name, f"the file is larger than the {MAX_FILE_BYTES // 2**20} MB limit."
            )
        data = path.read_bytes()
    except OSError as err:
        raise ImageDecodeError(path.name, f"the file cannot be read ({err.strerror}).") from err
    return decode_image(data, path.name)


def _check_size(name: str, width: int, height: int) -> None:
    """Refuses images that are too large or too small, from their dimensions."""
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            name,
            f"the image is {width} x {height} pixels, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixel limit.",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(
            name,
            f"the image is {width} x {height} pixels, too small to read "
            f"(at least {MIN_SIDE} pixels a side).",
        )


def _decode_raster(data: bytes, name: str) -> tuple[np.ndarray, bool]:
    """Decodes PNG or JPEG bytes with Pillow, checking the size before decoding.

    Returns:
        (H, W) uint8 grayscale pixels and whether the source held real colour.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(name, *image.size)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(name, "the image is too large to decode safely.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            name, f"the image is corrupt or truncated and cannot be decoded ({err})."
        ) from err
    return _to_gray(image)


def _to_gray(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Converts any Pillow mode to (H, W) uint8 grayscale, noting real colour."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _rescale_to_uint8(np.asarray(image, dtype=np.float64)), False
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8).copy(), False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    spread = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()
    gray = np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8).copy()
    return gray, bool(spread > 4.0)


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretches a high-bit-depth image's full range onto 0-255."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
