"""DICOM decoding: the first frame of a DICOM file as upright 8-bit grayscale.

The pixels go through the standard display pipeline: Modality LUT (rescale
slope and intercept), then the first VOI LUT or window (a min-max stretch when the
file has none), then MONOCHROME1 inversion, so that 0 is black. Colour images
(RGB, YBR, palette) are converted to grey and reported as colour. Compressed
transfer syntaxes are decoded by pydicom's plugins (pylibjpeg, with its libjpeg
and openjpeg plugins, and pydicom's own RLE decoder).

Patient data never leaves this module: the returned fields are a fixed list of
non-identifying ones, nothing is logged, and error messages are built from plain
words (a decoder's own message is included only with patient fields redacted).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
    pixel_array,
)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from covid.inputs.errors import ImageDecodeError, check_dimensions, is_real_color

SAFE_FIELDS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation")
"""The only header fields returned: none identifies a patient."""

MAX_INFLATED_BYTES = 256 * 1024 * 1024
"""Largest size a deflate-compressed data set may expand to (refused beyond it)."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PREAMBLE = 128
# Header elements whose values may identify someone, besides group 0010 (patient).
_PHI_TAGS = (
    0x00080050,  # AccessionNumber
    0x00080080,  # InstitutionName
    0x00080081,  # InstitutionAddress
    0x00080090,  # ReferringPhysicianName
    0x00081010,  # StationName
    0x00081050,  # PerformingPhysicianName
    0x00081070,  # OperatorsName
    0x00200010,  # StudyID
)
# Everything pydicom may raise on malformed input while parsing or decoding.
_DICOM_ERRORS = (
    InvalidDicomError,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    struct.error,
    zlib.error,
)


class DicomPixels(NamedTuple):
    """A decoded DICOM image.

    Attributes:
        pixels: (H, W) uint8 grayscale, upright, 0 = black.
        is_color: Whether the file held a real colour image.
        info: Safe header fields (:data:`SAFE_FIELDS`, ``Size``, ``Frames``).
    """

    pixels: np.ndarray
    is_color: bool
    info: dict[str, str]


def decode_dicom(data: bytes, name: str) -> DicomPixels:
    """Decodes the first frame of a DICOM file to 8-bit grayscale.

    Args:
        data: The file's content (with or without the 128-byte preamble).
        name: The file name, used only in messages.

    Returns:
        The (H, W) uint8 pixels, whether the source was colour, and safe fields.

    Raises:
        ImageDecodeError: The file is not readable DICOM, holds no image, is too
            large or small, or its pixel data cannot be decoded.
    """
    ds = _read_dataset(data, name)
    _check_image_module(ds, name)
    pixels, is_color = _to_gray(_first_frame(ds, name), ds, name)
    return DicomPixels(np.ascontiguousarray(pixels), is_color, safe_info(ds))


def safe_info(ds: Dataset) -> dict[str, str]:
    """The non-identifying fields of a data set, as short printable strings.

    Args:
        ds: A DICOM data set.

    Returns:
        The present fields of :data:`SAFE_FIELDS`, plus ``Size`` ("W x H") and,
        for multi-frame files, ``Frames``.
    """
    info: dict[str, str] = {}
    for keyword in SAFE_FIELDS:
        value = _clean(ds.get(keyword))
        if value:
            info[keyword] = value
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows and columns:
        info["Size"] = f"{columns} x {rows}"
    frames = _int(ds, "NumberOfFrames")
    if frames > 1:
        info["Frames"] = f"{frames} (the first is shown)"
    return info


def _read_dataset(data: bytes, name: str) -> Dataset:
    """Parses the header and data set, with a transfer syntax for the pixels."""
    if data.startswith(b"DICM"):  # preamble stripped but prefix kept
        data = bytes(_PREAMBLE) + data
    has_header = data[_PREAMBLE : _PREAMBLE + 4] == b"DICM"
    _refuse_deflate_bomb(data, name, has_header)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_header)
    except _DICOM_ERRORS as err:
        raise ImageDecodeError(
            name, "the DICOM file is corrupt or incomplete and its header cannot be read."
        ) from err
    _ensure_transfer_syntax(ds, name)
    return ds


def _refuse_deflate_bomb(data: bytes, name: str, has_header: bool) -> None:
    """Refuses a deflated data set that would expand beyond :data:`MAX_INFLATED_BYTES`.

    pydicom inflates such a data set whole and unbounded; this trial inflation is
    bounded, so a small file expanding to gigabytes is refused cheaply.
    """
    if not has_header or DeflatedExplicitVRLittleEndian.encode() not in data[:4096]:
        return
    start = _meta_end(data)
    if start is None:
        return  # no group length: pydicom will report the malformed header
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[start:], MAX_INFLATED_BYTES)
    except zlib.error as err:
        raise ImageDecodeError(
            name, "the DICOM file is deflate-compressed and its compressed data is corrupt."
        ) from err
    if inflater.unconsumed_tail:
        raise ImageDecodeError(
            name,
            "the DICOM file is deflate-compressed and would expand to more than "
            f"{MAX_INFLATED_BYTES // 2**20} MB; it is refused as unsafe.",
        )


def _meta_end(data: bytes) -> int | None:
    """Offset of the data set after an explicit-VR file meta group, or None."""
    start = _PREAMBLE + 4
    if data[start : start + 4] != b"\x02\x00\x00\x00" or data[start + 4 : start + 6] != b"UL":
        return None
    (group_length,) = struct.unpack_from("<I", data, start + 8)
    return start + 12 + group_length


def _ensure_transfer_syntax(ds: Dataset, name: str) -> None:
    """Fills in a missing transfer syntax from how the data set was read.

    Bare data sets (no file meta) can only hold native pixel data; compressed
    (encapsulated) pixel data without a transfer syntax cannot be decoded.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    element = next((ds[k] for k in _PIXEL_KEYWORDS if k in ds), None)
    if element is not None and element.is_undefined_length:
        raise ImageDecodeError(
            name,
            "the DICOM file does not say how its image is compressed (it has no "
            "transfer syntax), so the image cannot be decoded.",
        )
    implicit, little = ds.original_encoding[:2]
    if implicit:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = syntax


def _check_image_module(ds: Dataset, name: str) -> None:
    """Refuses data sets without an image, or with one too large or too small.

    Runs before any pixel is decoded, from the header's Rows and Columns.
    """
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise ImageDecodeError(
            name,
            "the DICOM file holds no image (it has no pixel data); it may be a "
            "report, a structured document or a presentation state.",
        )
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows <= 0 or columns <= 0:
        raise ImageDecodeError(
            name, "the DICOM file does not give its image's size (Rows and Columns)."
        )
    check_dimensions(name, columns, rows)
    if _int(ds, "SamplesPerPixel", 1) not in (1, 3):
        raise ImageDecodeError(
            name, "the DICOM image has an unsupported number of samples per pixel."
        )


def _first_frame(ds: Dataset, name: str) -> np.ndarray:
    """Decodes only the first frame: (H, W) or (H, W, 3), colour as RGB."""
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise ImageDecodeError(
            name, f"{_compressed_with(syntax)}, which cannot be decoded: "
            "this project has no decoder for it.",
        ) from err
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "an image codec"
        raise ImageDecodeError(
            name, f"{_compressed_with(syntax)}, which cannot be decoded: "
            f"no decoder for it is installed (needs {needs}).",
        )
    try:
        return pixel_array(ds, index=0)
    except _DICOM_ERRORS as err:
        detail = _redact(_last_line(err), ds)
        if syntax.is_compressed:
            reason = (f"{_compressed_with(syntax)}, which cannot be decoded: the compressed "
                      f"data is corrupt or incomplete ({detail}).")
        else:
            reason = f"the DICOM pixel data is corrupt or incomplete ({detail})."
        raise ImageDecodeError(name, reason) from err


def _compressed_with(syntax: pydicom.uid.UID) -> str:
    label = syntax.name if syntax.is_transfer_syntax else f"an unknown transfer syntax ({syntax})"
    return f"the image is compressed with {label}"


def _to_gray(frame: np.ndarray, ds: Dataset, name: str) -> tuple[np.ndarray, bool]:
    """A decoded frame -> (H, W) uint8 display grey, and whether it was real colour."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR" and frame.ndim == 2:
        rgb = _palette_to_rgb(frame, ds, name)
        return _color_to_gray(rgb, float(np.iinfo(rgb.dtype).max))
    if frame.ndim == 3:
        return _color_to_gray(frame, float(2 ** _int(ds, "BitsStored", 8) - 1))
    return _monochrome_to_uint8(frame, ds, invert=photometric == "MONOCHROME1"), False


def _monochrome_to_uint8(frame: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    """Modality LUT, VOI LUT or window (else min-max), inversion: (H, W) -> uint8."""
    values = apply_modality_lut(frame, ds)
    windowed = _apply_voi(values, ds)
    if windowed is None:
        values = values.astype(np.float64)
        low, high = float(values.min()), float(values.max())
    else:
        values, low, high = windowed
    gray = _scale(values, low, high)
    return 255 - gray if invert else gray


def _apply_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    """The first VOI LUT or window, with the values that mean black and white.

    Returns:
        ``(output, black, white)``, or None when the file has no usable VOI
        (absent or malformed: the caller then stretches min to max).
    """
    try:
        if _has_voi_lut(ds):
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            first = int(descriptor[1])
            table = apply_voi(np.arange(first, first + (int(descriptor[0]) or 2**16)), ds)
            output = apply_voi(np.rint(values).astype(np.int64), ds)
            return output, float(table.min()), float(table.max())
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            output = apply_windowing(values, ds)
            with np.errstate(over="ignore"):
                black, white = apply_windowing(np.array([-1e12, 1e12]), ds)
            return output, float(black), float(white)
    except _DICOM_ERRORS:
        return None
    return None


def _has_voi_lut(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and all(k in sequence[0] for k in ("LUTDescriptor", "LUTData"))


def _scale(values: np.ndarray, black: float, white: float) -> np.ndarray:
    """Maps ``black`` to 0 and ``white`` to 255, clipping outside (uint8)."""
    if white == black:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - black) * (255.0 / (white - black))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _color_to_gray(rgb: np.ndarray, white: float) -> tuple[np.ndarray, bool]:
    """(H, W, 3) RGB with ``white`` as full scale -> (H, W) uint8 luma (ITU-R 601), colour."""
    if rgb.dtype != np.uint8:
        rgb = _scale(rgb, 0.0, white)
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8), is_real_color(rgb)


def _palette_to_rgb(indices: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """(H, W) palette indices -> (H, W, 3) RGB through the file's colour tables."""
    try:
        return apply_color_lut(indices, ds)
    except _DICOM_ERRORS as err:
        raise ImageDecodeError(
            name, "the DICOM image's colour palette is missing or invalid "
            f"({_redact(_last_line(err), ds)}).",
        ) from err


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    """An integer header field, or ``default`` when absent or malformed."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except _DICOM_ERRORS:
        return default


def _clean(value: object) -> str:
    """A header value as a short, printable, single-line string."""
    if value is None:
        return ""
    text = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    return text[:64]


def _last_line(err: BaseException) -> str:
    """The last non-empty line of an exception's message, shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def _redact(text: str, ds: Dataset) -> str:
    """Removes every patient-identifying header value from a message.

    Reads the raw values (no conversion, so no validation warnings that could
    echo them) of group 0010 and of :data:`_PHI_TAGS`.
    """
    for secret in _identifying_values(ds):
        text = text.replace(secret, "[redacted]")
    return text


def _identifying_values(ds: Dataset) -> list[str]:
    """Raw identifying values and their name components, longest first."""
    found: set[str] = set()
    for tag in list(ds.keys()):
        if tag.group != 0x0010 and int(tag) not in _PHI_TAGS:
            continue
        value = ds.get_item(tag).value
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value or "")
        parts = [text.strip(" \x00"), *text.replace("=", "^").replace(" ", "^").split("^")]
        found.update(p.strip(" \x00") for p in parts if len(p.strip(" \x00")) >= 3)
    return sorted(found, key=len, reverse=True)
