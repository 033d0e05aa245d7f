"""Synthetic films and DICOM files for the tests, built at run time (nothing committed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(h: int, w: int) -> np.ndarray:
    """An asymmetric (H, W) uint8 test film spanning 0..255: a gradient and a corner block."""
    x = np.linspace(0, 255, w)[None, :] * 0.6 + np.linspace(0, 255, h)[:, None] * 0.4
    image = np.rint(x).astype(np.uint8)
    image[: h // 4, : w // 5] = 255
    image[-2:, -2:] = 0
    return image


def png(pixels: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None,
                  syntax: str | None = None, **fields):
    """A chest CR data set holding ``pixels`` ((H, W), (F, H, W) or (H, W, 3)).

    Args:
        pixels: The stored values (uint8 or uint16).
        photometric: PhotometricInterpretation.
        bits: BitsStored (default: the dtype's size).
        syntax: Transfer syntax UID (default: explicit VR little endian).
        **fields: Further (or overriding) data elements, e.g. ``PatientName``.

    Returns:
        The ``pydicom.Dataset``, Modality CR, BodyPartExamined CHEST, ViewPosition PA.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    color = pixels.ndim == 3 and pixels.shape[-1] == 3
    frames = pixels.shape[0] if pixels.ndim == 3 and not color else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if color else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = bits or pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = pixels.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def dicom_bytes(ds, enforce: bool = True, **kwargs) -> bytes:
    """A data set as DICOM file bytes (``enforce=False``: no file preamble or meta header)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=enforce, **kwargs)
    return buffer.getvalue()


def three_class_split(root: Path, per_source: int = 4) -> Path:
    """Random films for every source and side under ``root/data``, and their split record.

    Half of each source's films are children's. The record (``root/m/split.json``) has the
    three-class trainer's layout, as :func:`covid.evaluation.evaluate.evaluate` reads it.
    """
    from covid.training.catalogue import CLASS_NAMES, SOURCES

    rng = np.random.default_rng(0)
    record = {"root": str(root / "data"), "class_names": list(CLASS_NAMES), "files": {},
              "labels": {}, "sources": {}, "ages": {}}
    for side in ("train", "val", "test"):
        for key in ("files", "labels", "sources", "ages"):
            record[key][side] = []
        for source in SOURCES:
            (root / "data" / source.folder).mkdir(parents=True, exist_ok=True)
            for i in range(per_source):
                name = f"{source.folder}/{side}-{i}.png"
                Image.fromarray(rng.integers(0, 255, (70, 70), dtype=np.uint8)).save(
                    root / "data" / name)
                record["files"][side].append(name)
                record["labels"][side].append(source.label)
                record["sources"][side].append(source.name)
                record["ages"][side].append("adult" if i % 2 else "child")
    path = root / "m" / "split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path
