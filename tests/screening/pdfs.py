"""Reading a PDF report back in the report tests: its text, its bytes, its pictures."""

import contextlib
import io
import re
import zlib

import numpy as np
from pypdf import PdfReader


def pdf_text(pdf: bytes) -> str:
    """The text of every page, one page after another."""
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def flat(text: str) -> str:
    """The text with every run of white space made one space (lines wrap anywhere)."""
    return " ".join(text.split())


def all_bytes(pdf: bytes) -> bytes:
    """The raw file plus every stream inflated, to look for leaks anywhere."""
    inflated = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        with contextlib.suppress(zlib.error):
            inflated.append(zlib.decompress(match.group(1)))
    return pdf + b"".join(inflated)


def pdf_images(pdf: bytes) -> list[np.ndarray]:
    """Every picture on every page, as (H, W, 3) uint8 RGB."""
    return [np.asarray(image.image.convert("RGB"))
            for page in PdfReader(io.BytesIO(pdf)).pages for image in page.images]
