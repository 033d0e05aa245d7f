"""DICOM decoding: display pipeline, odd files, compression, limits and patient data."""

import io
import logging
import types
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

import covid.inputs.dicom as cdicom  # noqa: E402
from covid.inputs.decode import ImageDecodeError, decode_image  # noqa: E402
from tests.films import dicom_bytes as _bytes  # noqa: E402
from tests.films import dicom_dataset, pattern  # noqa: E402
from tests.films import png as _png  # noqa: E402

H, W = 80, 96
PHI = {"PatientName": "DOE^JANE", "PatientID": "PID-778899",
       "PatientBirthDate": "19700101", "InstitutionName": "Saint Nowhere Hospital"}
SECRETS = ("DOE", "JANE", "PID-778899", "19700101", "Saint Nowhere")
SAFE_KEYS = {"Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation",
             "Size", "Frames"}


def _pattern(h: int = H, w: int = W) -> np.ndarray:
    return pattern(h, w)


def _dataset(pixels: np.ndarray, **kwargs) -> Dataset:
    """A chest CR data set holding ``pixels``, with the patient data in :data:`PHI`."""
    return dicom_dataset(pixels, **PHI, **kwargs)


def _dicom(pixels: np.ndarray, **kwargs) -> bytes:
    return _bytes(_dataset(pixels, **kwargs))


def _assert_no_phi(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {text!r}"


# ------------------------------------------------------------------ pixels


def test_plain_monochrome2_matches_the_png():
    png = decode_image(_png(_pattern()), "film.png")
    decoded = decode_image(_dicom(_pattern()), "IM0001")  # no extension
    assert decoded.kind == "DICOM" and not decoded.is_color
    np.testing.assert_array_equal(decoded.pixels, png.pixels)
    assert decoded.info == {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA",
                            "PhotometricInterpretation": "MONOCHROME2", "Size": f"{W} x {H}"}


def test_12_bit_without_window_is_stretched_min_to_max():
    decoded = decode_image(_dicom(_pattern().astype(np.uint16) * 16, bits=12), "12bit.dcm")
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def test_monochrome1_is_inverted():
    decoded = decode_image(_dicom(255 - _pattern(), photometric="MONOCHROME1"), "m1.dcm")
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def test_window_center_and_width_are_applied():
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16)[:W], (H, 1))
    center, width = 1000.0, 801.0
    decoded = decode_image(_dicom(stored, bits=12, WindowCenter=center, WindowWidth=width),
                           "win.dcm")
    # DICOM PS3.3 C.11.2.1.2.1, linear: [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] -> [0, 255]
    expected = ((stored - (center - 0.5)) / (width - 1) + 0.5) * 255
    np.testing.assert_array_equal(decoded.pixels, np.clip(np.rint(expected), 0, 255))


def test_monochrome1_window_is_inverted_after_windowing():
    stored = _pattern().astype(np.uint16) * 16
    fields = {"bits": 12, "WindowCenter": 2048, "WindowWidth": 4096}
    m2 = decode_image(_dicom(stored, **fields), "m2.dcm").pixels
    m1 = decode_image(_dicom(stored, photometric="MONOCHROME1", **fields), "m1.dcm").pixels
    np.testing.assert_array_equal(m1, 255 - m2)


def test_rescale_then_window_in_rescaled_units():
    stored = (_pattern().astype(np.uint16) * 16)
    decoded = decode_image(_dicom(stored, bits=12, RescaleSlope=1, RescaleIntercept=-1024,
                                  WindowCenter=2040 - 1024, WindowWidth=4081), "ct-like.dcm")
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def test_voi_lut_sequence_is_applied():
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.LUTData = list(range(255, -1, -1))  # an inverting table
    lut["LUTData"].VR = "US"
    decoded = decode_image(_dicom(_pattern(), VOILUTSequence=[lut]), "lut.dcm")
    np.testing.assert_array_equal(decoded.pixels, 255 - _pattern())


def test_bad_window_falls_back_to_min_max():
    decoded = decode_image(_dicom(_pattern(), WindowCenter=128, WindowWidth=0), "w0.dcm")
    np.testing.assert_array_equal(decoded.pixels, _pattern())


def test_multi_frame_gives_only_the_first_frame(monkeypatch):
    frames = np.stack([_pattern(), 255 - _pattern(), np.zeros((H, W), np.uint8)])
    calls = []
    real = cdicom.pixel_array

    def spy(src, **kwargs):
        calls.append(kwargs.get("index"))
        return real(src, **kwargs)

    monkeypatch.setattr(cdicom, "pixel_array", spy)
    decoded = decode_image(_dicom(frames), "cine.dcm")
    np.testing.assert_array_equal(decoded.pixels, _pattern())
    assert calls == [0] and decoded.info["Frames"] == "3 (the first is shown)"


def test_rgb_dicom_is_grey_and_marked_colour():
    grey_rgb = np.dstack([_pattern()] * 3)
    decoded = decode_image(_dicom(grey_rgb, photometric="RGB"), "rgb.dcm")
    assert not decoded.is_color
    np.testing.assert_array_equal(decoded.pixels, _pattern())
    colour = grey_rgb.copy()
    colour[..., 0] = 255
    assert decode_image(_dicom(colour, photometric="RGB"), "colour.dcm").is_color


def _palette_dicom(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> bytes:
    ds = _dataset(_pattern(), photometric="PALETTE COLOR")
    for colour, table in zip(("Red", "Green", "Blue"), (red, green, blue), strict=True):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.astype("<u2").tobytes())
    return _bytes(ds)


def test_palette_colour_dicom():
    ramp = np.arange(256, dtype=np.uint16) * 257
    grey = decode_image(_palette_dicom(ramp, ramp, ramp), "palette.dcm")
    assert not grey.is_color
    np.testing.assert_array_equal(grey.pixels, _pattern())
    assert decode_image(_palette_dicom(ramp, ramp[::-1], ramp), "hot.dcm").is_color
    with pytest.raises(ImageDecodeError, match="colour palette is missing or invalid"):
        ds = _dataset(_pattern(), photometric="PALETTE COLOR")
        decode_image(_bytes(ds), "nopalette.dcm")


def test_colour_jpeg_dicom_is_grey_and_marked_colour():
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = handle.read()
    rgb = np.asarray(Image.open(io.BytesIO(photo)))
    ds = _dataset(rgb, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([photo])
    ds["PixelData"].VR = "OB"
    decoded = decode_image(_bytes(ds), "photo.dcm")
    assert decoded.is_color and decoded.pixels.shape == rgb.shape[:2]
    plain = decode_image(photo, "photo.jpg").pixels
    assert np.abs(decoded.pixels.astype(int) - plain.astype(int)).mean() < 1


# ------------------------------------------------------------------ odd files


def test_without_preamble_and_without_file_meta():
    ds = _dataset(_pattern())
    with_header = _bytes(ds)
    no_preamble = with_header[128:]  # "DICM" + file meta + data set
    assert no_preamble.startswith(b"DICM")
    del ds.file_meta
    bare = _bytes(ds, enforce=False, implicit_vr=True, little_endian=True)
    assert bare[:2] == b"\x08\x00"  # first element: (0008,0016)
    for data in (no_preamble, with_header[132:], bare):
        np.testing.assert_array_equal(decode_image(data, "IM0002").pixels, _pattern())


def test_implicit_vr_file():
    data = _dicom(_pattern(), syntax=ImplicitVRLittleEndian)
    np.testing.assert_array_equal(decode_image(data, "impl.dcm").pixels, _pattern())


def test_no_pixel_data_is_refused():
    ds = _dataset(_pattern())
    del ds.PixelData
    with pytest.raises(ImageDecodeError, match=r"^sr\.dcm: the DICOM file holds no image"):
        decode_image(_bytes(ds), "sr.dcm")


def test_header_claiming_a_huge_image_is_refused_before_decoding(monkeypatch):
    ds = _dataset(_pattern())
    ds.Rows = ds.Columns = 60_000

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(cdicom, "pixel_array", no_decoding)
    with pytest.raises(ImageDecodeError,
                       match="60000 x 60000 pixels, more than the 50 megapixel limit"):
        decode_image(_bytes(ds), "bomb.dcm")


def test_tiny_dicom_is_refused():
    with pytest.raises(ImageDecodeError, match="too small to read"):
        decode_image(_dicom(_pattern(20, 30)), "tiny.dcm")


def test_truncated_dicom_is_refused():
    data = _dicom(_pattern())
    with pytest.raises(ImageDecodeError, match="corrupt or incomplete"):
        decode_image(data[: len(data) - 500], "cut.dcm")


def test_deflated_file_decodes_and_its_bomb_is_refused(monkeypatch):
    data = _dicom(_pattern(), syntax=DeflatedExplicitVRLittleEndian)
    np.testing.assert_array_equal(decode_image(data, "deflated.dcm").pixels, _pattern())
    monkeypatch.setattr(cdicom, "MAX_INFLATED_BYTES", 4096)
    with pytest.raises(ImageDecodeError, match="deflate-compressed and would expand to more"):
        decode_image(data, "deflated.dcm")


# ------------------------------------------------------------------ compression


def test_rle_lossless_decodes():
    ds = _dataset(_pattern())
    ds.compress(RLELossless, _pattern())
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(decode_image(_bytes(ds), "rle.dcm").pixels, _pattern())


def _jpeg_dicom(fragment: bytes) -> bytes:
    ds = _dataset(_pattern(), syntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    return _bytes(ds)


def test_jpeg_baseline_decodes_like_the_jpeg_file():
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, format="JPEG", quality=95)
    plain = decode_image(buffer.getvalue(), "film.jpg").pixels
    decoded = decode_image(_jpeg_dicom(buffer.getvalue()), "jpeg.dcm").pixels
    assert np.abs(decoded.astype(int) - plain.astype(int)).max() <= 2


@pytest.mark.parametrize(("syntax", "label"), [
    (JPEGBaseline8Bit, "JPEG Baseline (Process 1)"), (RLELossless, "RLE Lossless")])
def test_corrupt_compressed_data_is_a_clear_error(syntax, label):
    ds = _dataset(_pattern(), syntax=syntax)
    garbage = b"\xff\xd8" + np.random.default_rng(1).bytes(300) if syntax == JPEGBaseline8Bit \
        else np.random.default_rng(1).bytes(300)
    ds.PixelData = encapsulate([garbage])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(_bytes(ds), "bad.dcm")
    assert caught.value.reason.startswith(
        f"the image is compressed with {label}, which cannot be decoded: the compressed data "
        "is corrupt or incomplete (")


def test_unsupported_compression_is_a_clear_error():
    ds = _dataset(_pattern(), syntax=MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageDecodeError, match=(
            r"compressed with MPEG2 Main Profile / Main Level, which cannot be decoded: "
            r"this project has no decoder for it\.")):
        decode_image(_bytes(ds), "video.dcm")


def test_missing_decoder_plugin_is_a_clear_error(monkeypatch):
    unavailable = types.SimpleNamespace(
        is_available=False, missing_dependencies=["gdcm - requires gdcm>=3.0.10"])
    monkeypatch.setattr(cdicom, "get_decoder", lambda uid: unavailable)
    with pytest.raises(ImageDecodeError, match=(
            r"compressed with RLE Lossless, which cannot be decoded: no decoder for it is "
            r"installed \(needs gdcm - requires gdcm>=3\.0\.10\)\.")):
        ds = _dataset(_pattern())
        ds.compress(RLELossless, _pattern())
        decode_image(_bytes(ds), "rle.dcm")


# ------------------------------------------------------------------ patient data


def _phi_cases():
    ds_no_pixels = _dataset(_pattern())
    del ds_no_pixels.PixelData
    valid = _dicom(_pattern(), WindowCenter=128, WindowWidth=256)
    overlong = _dataset(_pattern())  # converting this value would warn, echoing it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        overlong.PatientID = "PID-778899" * 10
    return {
        "valid": valid,
        "invalid PHI value": _bytes(overlong),
        "multi-frame": _dicom(np.stack([_pattern()] * 2)),
        "no pixels": _bytes(ds_no_pixels),
        "corrupt jpeg": _jpeg_dicom(b"\xff\xd8\xff\xdb" + bytes(200)),
        "truncated": valid[:-700],
        "too small": _dicom(_pattern(16, 16)),
    }


@pytest.mark.parametrize("case", sorted(_phi_cases()))
def test_patient_data_never_leaves_the_decoder(case, caplog):
    data = _phi_cases()[case]
    assert all(s.encode() in data for s in SECRETS)  # planted
    caplog.set_level(logging.DEBUG)
    texts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decoded = decode_image(data, "study.dcm")
        except ImageDecodeError as err:
            texts += [str(err), repr(err), err.reason]
        else:
            assert set(decoded.info) <= SAFE_KEYS
            texts += [repr(decoded.info)]
    texts += [caplog.text] + [str(w.message) for w in caught]
    _assert_no_phi(*texts)


def test_decoder_messages_are_redacted(monkeypatch):
    def leaky(ds, **kwargs):
        raise ValueError(f"cannot decode frame of {ds.PatientName} born {ds.PatientBirthDate}")

    monkeypatch.setattr(cdicom, "pixel_array", leaky)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(_dicom(_pattern()), "study.dcm")
    _assert_no_phi(str(caught.value))
    assert "[redacted]" in str(caught.value)


def test_safe_info_keeps_only_the_listed_fields():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values set here
        ds = _dataset(_pattern(), ViewPosition="AP\x00", BodyPartExamined="CHEST" * 20)
    info = cdicom.safe_info(ds)
    assert set(info) <= SAFE_KEYS and info["ViewPosition"] == "AP"
    assert len(info["BodyPartExamined"]) == 64
    _assert_no_phi(repr(info))
