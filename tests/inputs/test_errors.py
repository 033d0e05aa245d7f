"""The shared error type and limits, below both decoders."""

import numpy as np
import pytest

import covid.inputs.decode as decode
import covid.inputs.dicom as dicom
import covid.inputs.errors as errors


def test_decode_re_exports_the_shared_names():
    from covid.inputs.decode import MAX_FILE_BYTES, ImageDecodeError

    assert ImageDecodeError is errors.ImageDecodeError is dicom.ImageDecodeError
    assert MAX_FILE_BYTES == errors.MAX_FILE_BYTES
    for name in ("MAX_PIXELS", "MIN_SIDE", "COLOR_SPREAD", "check_dimensions", "is_real_color"):
        assert getattr(decode, name) is getattr(errors, name)


def test_error_names_the_file_and_the_reason():
    err = errors.ImageDecodeError("a.png", "the file is empty.")
    assert isinstance(err, ValueError)
    assert str(err) == "a.png: the file is empty."
    assert (err.name, err.reason) == ("a.png", "the file is empty.")


@pytest.mark.parametrize(("width", "height", "words"), [
    (errors.MIN_SIDE - 1, 500, "too small to read"),
    (10_000, 10_000, "megapixel limit"),
])
def test_check_dimensions_refuses(width, height, words):
    with pytest.raises(errors.ImageDecodeError, match=words):
        errors.check_dimensions("x.png", width, height)


def test_check_dimensions_accepts_the_limits():
    errors.check_dimensions("x.png", errors.MIN_SIDE, errors.MIN_SIDE)
    errors.check_dimensions("x.png", errors.MAX_PIXELS // 1000, 1000)


def test_real_colour_is_told_from_grey_stored_as_rgb():
    grey = np.repeat(np.arange(64, dtype=np.uint8)[:, None, None], 3, axis=2)
    assert not errors.is_real_color(np.broadcast_to(grey, (64, 64, 3)))
    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[..., 0] = 200
    assert errors.is_real_color(red)
