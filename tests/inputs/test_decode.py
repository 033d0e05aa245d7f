"""The decode step on an odd-input corpus generated at run time (no committed binaries)."""

import io
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import covid.inputs.decode as cio
import covid.inputs.errors
from covid.inputs.decode import ImageDecodeError, decode_image, read_image, sniff_format
from tests.films import pattern

H, W = 96, 128


def _pattern(h: int = H, w: int = W) -> np.ndarray:
    return pattern(h, w)


def _encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    return _encode(Image.fromarray(pixels))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int) -> bytes:
    """A hand-made PNG whose header claims ``width x height`` 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)  # a few rows only
    return (cio._PNG_MAGIC + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG with its start-of-frame size patched to ``width x height``."""
    data = bytearray(_encode(Image.fromarray(_pattern()), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_animated() -> bytes:
    frames = [Image.fromarray(_pattern()), Image.fromarray(255 - _pattern())]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


def _exif_jpeg(stored: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)


_PLAIN = _png(_pattern())

# name -> (content factory, exact reason substring)
REFUSED = {
    "empty.png": (lambda: b"", "the file is empty."),
    "random.png": (lambda: np.random.default_rng(0).bytes(4096),
                   "this is not a PNG, JPEG or DICOM image (its content is not recognised)."),
    "notes.png": (lambda: b"Patient notes: chest X-ray to follow.\nThanks!\n" * 20,
                  "this is not a PNG, JPEG or DICOM image (it is a text file)."),
    "scan.png": (_minimal_pdf, "this is not a PNG, JPEG or DICOM image (it is a PDF document)."),
    "anim.png": (_gif_animated, "this is not a PNG, JPEG or DICOM image (it is a GIF image)."),
    "cut.png": (lambda: _PLAIN[: len(_PLAIN) // 2], "the PNG image is corrupt or truncated"),
    "magic-only.png": (lambda: cio._PNG_MAGIC, "the PNG image is corrupt or truncated"),
    "cut.jpg": (lambda: _encode(Image.fromarray(_pattern()), "JPEG")[:450],
                "the JPEG image is corrupt or truncated"),
    "tiny.png": (lambda: _png(_pattern(10, 12)),
                 "the image is 12 x 10 pixels, too small to read (at least 64 pixels a side)."),
    "bomb.png": (lambda: _png_claiming(40_000, 40_000),
                 "the image is 40000 x 40000 pixels, more than the 50 megapixel limit."),
    "bomb.jpg": (lambda: _jpeg_claiming(60_000, 60_000),
                 "the image is 60000 x 60000 pixels, more than the 50 megapixel limit."),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_odd_input_is_refused_with_a_plain_reason(name):
    make, reason = REFUSED[name]
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(make(), name)
    err = caught.value
    assert err.name == name and reason in err.reason
    assert str(err) == f"{name}: {err.reason}"
    assert "Traceback" not in str(err)
    assert " at 0x" not in str(err)  # no memory address of Pillow's buffer: same text each run


def test_truncated_images_are_never_half_decoded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("make", [lambda: _png_claiming(40_000, 40_000),
                                  lambda: _jpeg_claiming(60_000, 60_000)])
def test_decompression_bomb_is_refused_from_the_header(make, monkeypatch):
    data = make()

    def no_pillow(*args, **kwargs):
        raise AssertionError("Pillow must not even open a bomb")

    monkeypatch.setattr(cio.Image, "open", no_pillow)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="megapixel limit"):
            decode_image(data, "bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_pixel_limit_is_inclusive(monkeypatch):
    monkeypatch.setattr(covid.inputs.errors, "MAX_PIXELS", 100 * 100)
    assert decode_image(_png(_pattern(100, 100)), "ok.png").pixels.shape == (100, 100)
    with pytest.raises(ImageDecodeError, match=r"101 x 100 pixels, more than the 0\.01 megapixel"):
        decode_image(_png(_pattern(100, 101)), "big.png")


def test_huge_but_valid_image_decodes():
    film = np.tile(_pattern(), (3000 // H + 1, 4000 // W + 1))[:3000, :4000]
    decoded = decode_image(_png(film), "large.png")
    assert decoded.pixels.shape == (3000, 4000)
    np.testing.assert_array_equal(decoded.pixels, film)


def test_file_size_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(cio, "MAX_FILE_BYTES", len(_PLAIN) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(_PLAIN)
    for call in (lambda: decode_image(_PLAIN, "big.png"), lambda: read_image(path)):
        with pytest.raises(ImageDecodeError, match=r"^big\.png: the file is larger than the"):
            call()


def test_unreadable_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"^gone\.png: the file cannot be read"):
        read_image(tmp_path / "gone.png")


def test_plain_png_and_read_image(tmp_path):
    path = tmp_path / "IMG_0001"  # no extension: content decides
    path.write_bytes(_PLAIN)
    decoded = read_image(path)
    assert (decoded.kind, decoded.name, decoded.is_color, decoded.info) == (
        "PNG", "IMG_0001", False, {})
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def _rgba() -> bytes:
    rgba = np.dstack([_pattern()] * 3 + [np.full((H, W), 255, np.uint8)])
    return _encode(Image.fromarray(rgba, "RGBA"))


def _palette() -> bytes:
    image = Image.fromarray(_pattern(), "P")
    image.putpalette([v for v in range(256) for _ in range(3)])
    return _encode(image)


def _png16() -> bytes:
    return _encode(Image.fromarray(_pattern().astype(np.uint16) * 257))


def _grey_as_rgb() -> bytes:
    return _encode(Image.fromarray(np.dstack([_pattern()] * 3)))


def _grey_alpha() -> bytes:
    return _encode(Image.fromarray(_pattern()).convert("LA"))


def _apng() -> bytes:
    frames = [Image.fromarray(_pattern()), Image.fromarray(255 - _pattern())]
    return _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("make", [_png16, _rgba, _palette, _grey_as_rgb, _grey_alpha, _apng],
                         ids=["16-bit", "RGBA", "palette", "grey-RGB", "grey-alpha", "APNG"])
def test_odd_png_encodings_give_the_plain_pixels(make):
    data = make()
    assert data.startswith(cio._PNG_MAGIC)
    decoded = decode_image(data, "odd.png")
    assert decoded.kind == "PNG" and not decoded.is_color
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def test_16_bit_png_uses_its_full_range():
    twelve_bit = (_pattern().astype(np.uint16) * 16)  # 0..4080 in a 16-bit file
    decoded = decode_image(_encode(Image.fromarray(twelve_bit)), "12bit.png")
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def test_cmyk_jpeg_matches_the_grey_jpeg():
    grey = decode_image(_encode(Image.fromarray(_pattern()), "JPEG", quality=95), "g.jpg")
    cmyk_data = _encode(Image.fromarray(_pattern()).convert("RGB").convert("CMYK"), "JPEG",
                        quality=95)
    assert Image.open(io.BytesIO(cmyk_data)).mode == "CMYK"
    cmyk = decode_image(cmyk_data, "cmyk.jpg")
    assert cmyk.kind == "JPEG" and not cmyk.is_color
    diff = np.abs(cmyk.pixels.astype(int) - grey.pixels.astype(int))
    assert diff.mean() < 2 and np.abs(cmyk.pixels.astype(int) - _pattern()).mean() < 3


@pytest.mark.parametrize(("orientation", "upright"), [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # stored rotated: display 90 degrees clockwise
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_is_applied(orientation, upright):
    stored = _pattern()
    decoded = decode_image(_exif_jpeg(stored, orientation), "phone.jpg")
    expected = upright(stored)
    assert decoded.pixels.shape == expected.shape
    assert np.abs(decoded.pixels.astype(int) - expected.astype(int)).mean() < 3


def test_colour_photo_is_decoded_and_marked_colour():
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        data = handle.read()
    decoded = decode_image(data, "grace_hopper.jpg")
    assert decoded.kind == "JPEG" and decoded.is_color
    assert decoded.pixels.shape == (600, 512) and decoded.pixels.dtype == np.uint8


@pytest.mark.parametrize(("head", "kind"), [
    (cio._PNG_MAGIC, "PNG"),
    (b"\xff\xd8\xff\xe0", "JPEG"),
    (bytes(128) + b"DICM", "DICOM"),
    (b"DICM\x02\x00\x00\x00UL", "DICOM"),
    (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", "DICOM"),
    (b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.7", "DICOM"),
    (b"GIF89a", None),
    (b"%PDF-1.7", None),
    (b"\x08\x00\x05\x00\xff\xff\xff\xff", None),
    (b"", None),
])
def test_sniff_format(head, kind):
    assert sniff_format(head + bytes(8)) == kind


def test_no_temporary_files_are_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    decode_image(_PLAIN, "a.png")
    for name, (make, _) in REFUSED.items():
        with pytest.raises(ImageDecodeError):
            decode_image(make(), name)
    assert os.listdir(tmp_path) == []
