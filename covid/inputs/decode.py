"""One decode step for every input: the dashboard, the CLI and training all use it.

Files are identified by their content (magic bytes), never by their extension.
Sizes are checked from the file's header before any pixel is decoded, so a
"decompression bomb" (a small file claiming a huge image) is refused without
allocating its pixels. Every failure raises :class:`ImageDecodeError`, whose
message names the file and the reason in plain words. Nothing is ever written to
disk. This module is the one dispatcher: it sniffs the format and hands the
bytes to Pillow (PNG, JPEG) or to :mod:`covid.inputs.dicom`; the error type and the
size limits both use live below them, in :mod:`covid.inputs.errors` (re-exported here).

Accepted: PNG (8 or 16 bits, grey, grey + alpha, RGB, RGBA, palette; an animated
PNG gives its first frame), JPEG (grey, RGB, CMYK; EXIF orientation applied) and
DICOM (see :mod:`covid.inputs.dicom`), with or without the 128-byte preamble. Anything
else (GIF, BMP, TIFF, WebP, PDF, text...) is refused as not a PNG, JPEG or DICOM.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from covid.inputs.errors import (
    COLOR_SPREAD,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MIN_SIDE,
    ImageDecodeError,
    check_dimensions,
    is_real_color,
)

__all__ = [
    "COLOR_SPREAD",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "DecodedImage",
    "ImageDecodeError",
    "check_dimensions",
    "decode_image",
    "is_real_color",
    "read_image",
    "sniff_format",
]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_PREFIX = b"DICM"
# Value representations that may follow a tag in an explicit-VR DICOM data set.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    b"UC UI UL UN UR US UT UV".split()
)
# JPEG start-of-frame markers (they hold the image size); C4, C8 and CC are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}
# Formats recognised only to be refused by name: (magic bytes, plain name).
_OTHER_FORMATS = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive or office document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
)


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

    DICOM is recognised by the ``DICM`` prefix at byte 128 (the standard file
    format), by ``DICM`` at byte 0 (preamble stripped), or by a first data
    element in group 0002 or 0008 (a bare data set, as some old systems write).

    Args:
        data: The file's content.

    Returns:
        ``"PNG"``, ``"JPEG"``, ``"DICOM"``, or None when unrecognised.
    """
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[128:132] == _DICOM_PREFIX or data.startswith(_DICOM_PREFIX):
        return "DICOM"
    if _looks_like_bare_dicom(data):
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
        raise ImageDecodeError(name, _too_big_file_reason())
    kind = sniff_format(data)
    if kind is None:
        raise ImageDecodeError(name, _unrecognised_reason(data))
    if kind == "DICOM":
        from covid.inputs import dicom  # deferred: pydicom is only needed for DICOM files

        pixels, is_color, info = dicom.decode_dicom(data, name)
        check_dimensions(name, pixels.shape[1], pixels.shape[0])
        return DecodedImage(pixels=pixels, name=name, kind=kind, is_color=is_color, info=info)
    pixels, is_color = _decode_raster(data, name, kind)
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
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageDecodeError(path.name, _too_big_file_reason())
        data = path.read_bytes()
    except OSError as err:
        raise ImageDecodeError(path.name, f"the file cannot be read ({err.strerror}).") from err
    return decode_image(data, path.name)


def _too_big_file_reason() -> str:
    return f"the file is larger than the {MAX_FILE_BYTES / 2**20:.3g} MB limit."


def _unrecognised_reason(data: bytes) -> str:
    """Plain words for content that is not PNG, JPEG or DICOM."""
    what = next((label for magic, label in _OTHER_FORMATS if data.startswith(magic)), None)
    if what is None and (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        what = "a WebP image"
    if what is None and _looks_like_text(data):
        what = "a text file"
    detail = f"it is {what}" if what else "its content is not recognised"
    return f"this is not a PNG, JPEG or DICOM image ({detail})."


def _looks_like_text(data: bytes) -> bool:
    """Whether the first bytes read as printable UTF-8 text."""
    text = data[:512].decode("utf-8", errors="replace")
    printable = sum(ch != "\ufffd" and (ch.isprintable() or ch in "\r\n\t\f") for ch in text)
    return printable >= 0.95 * len(text)


def _looks_like_bare_dicom(data: bytes) -> bool:
    """Whether ``data`` starts with a plausible group 0002 or 0008 DICOM element."""
    if len(data) < 8:
        return False
    group, _element = struct.unpack_from("<HH", data)
    if group not in (0x0002, 0x0008):
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    (length,) = struct.unpack_from("<I", data, 4)  # implicit VR: a 4-byte length
    return length < min(len(data), 1024)


def _header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """The (width, height) a PNG or JPEG header claims, without decoding pixels."""
    if kind == "PNG":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack_from(">II", data, 16)
        return width, height
    return _jpeg_size(data)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) in a JPEG's first start-of-frame segment, or None."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return (width, height) if height else None  # 0: height set later (DNL)
        pos += 2 + length
    return None


def _decode_raster(data: bytes, name: str, kind: str) -> tuple[np.ndarray, bool]:
    """Decodes PNG or JPEG bytes with Pillow, checking the size before decoding.

    Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False (its default), so a
    truncated file fails instead of decoding as a partly grey image.

    Returns:
        (H, W) uint8 grayscale pixels and whether the source held real colour.
    """
    claimed = _header_size(data, kind)
    if claimed is not None:
        check_dimensions(name, *claimed)  # before Pillow allocates anything
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
        check_dimensions(name, *image.size)
        image.load()
        image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(name, "the image is too large to decode safely.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as err:
        # Pillow names the in-memory buffer ("<_io.BytesIO object at 0x...>"): an address
        # that means nothing to a reader and differs between processes.
        detail = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip()
        raise ImageDecodeError(
            name,
            f"the {kind} image is corrupt or truncated and cannot be decoded ({detail}).",
        ) from err
    return _to_gray(image)


def _to_gray(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Converts any Pillow mode to (H, W) uint8 grayscale, noting real colour."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _rescale_to_uint8(np.asarray(image, dtype=np.float64)), False
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8).copy(), False
    rgb_image = image.convert("RGB")
    gray = np.asarray(rgb_image.convert("L"), dtype=np.uint8).copy()
    return gray, is_real_color(np.asarray(rgb_image))


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretches a high-bit-depth image's full range onto 0-255."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
