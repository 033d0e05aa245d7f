"""The lung-focused input: box, crop, attenuation, and its golden image."""

import hashlib

import numpy as np
import pytest

from covid.inputs.preprocess import (
    LungBox,
    crop_to_box,
    equalise,
    lung_box,
    lung_focus,
    standardise,
    window,
)


def synthetic_film() -> tuple[np.ndarray, np.ndarray]:
    """A 300 x 260 film: a gradient background and two darker lung ellipses, and their mask."""
    rows, cols = np.mgrid[:300, :260]
    film = (80 + 0.4 * rows + 0.2 * cols).astype(np.float32)
    left = ((rows - 140) / 80) ** 2 + ((cols - 85) / 40) ** 2 <= 1
    right = ((rows - 140) / 80) ** 2 + ((cols - 175) / 40) ** 2 <= 1
    mask = left | right
    film[mask] -= 50
    return np.clip(film, 0, 255).astype(np.uint8), mask


def test_lung_box_is_square_centred_with_margin():
    _, mask = synthetic_film()
    box = lung_box(mask, margin=0.1)
    # lungs span rows 60..220 (161) and columns 45..215 (171): side 171 * 1.2
    assert box.side == round(171 * 1.2)
    assert box.top + box.side / 2 == pytest.approx(140.5, abs=1)
    assert box.left + box.side / 2 == pytest.approx(130.5, abs=1)
    assert lung_box(np.zeros((5, 5), bool)) is None


def test_crop_pads_with_zeros_past_the_film():
    film = np.arange(16, dtype=np.uint8).reshape(4, 4) + 1
    out = crop_to_box(film, LungBox(-1, 2, 3))
    assert out.tolist() == [[0, 0, 0], [3, 4, 0], [7, 8, 0]]


def test_full_mode_is_the_whole_film_resized():
    film, _ = synthetic_film()
    x, box = lung_focus(film, None, 64, "full")
    assert x.shape == (64, 64, 1) and x.dtype == np.uint8
    assert box == LungBox.whole(film.shape)


def test_attenuation_keeps_the_lungs_and_darkens_far_outside():
    from PIL import Image
    from scipy import ndimage

    film, mask = synthetic_film()
    plain, _ = lung_focus(film, mask, 128, "crop")
    both, box = lung_focus(film, mask, 128, "crop+attenuate", outside=0.3)
    cropped = Image.fromarray(crop_to_box(mask, box).astype(np.uint8) * 255)
    small = np.asarray(cropped.resize((128, 128), Image.Resampling.NEAREST)) > 127
    inside = ndimage.binary_erosion(small, iterations=2)
    assert np.abs(both[..., 0][inside].astype(int) - plain[..., 0][inside]).max() <= 2
    corner_ratio = both[2, 2, 0] / max(plain[2, 2, 0], 1)
    assert corner_ratio == pytest.approx(0.3, abs=0.05)


def test_masking_blacks_out_far_outside_and_keeps_the_lungs():
    film, mask = synthetic_film()
    plain, _ = lung_focus(film, mask, 128, "crop")
    masked, _ = lung_focus(film, mask, 128, "crop+mask")
    assert masked[2, 2, 0] == 0 and plain[2, 2, 0] > 0
    assert masked[64, 40, 0] == plain[64, 40, 0]  # inside the left lung


def test_modes_that_need_lungs_refuse_without_them():
    film, mask = synthetic_film()
    with pytest.raises(ValueError, match="lung mask"):
        lung_focus(film, None, 64, "crop")
    with pytest.raises(ValueError, match="lung mask"):
        lung_focus(film, np.zeros_like(mask), 64, "attenuate")
    with pytest.raises(ValueError, match="unknown focus mode"):
        lung_focus(film, mask, 64, "zoom")


GOLDEN_SHA256 = {
    "crop": "d98151345f75177ce4e7c5aaf62a1a6d82b9315f6e7d1e9e9114cc8c3c060feb",
    "attenuate": "974bdfe30cb1183d94aec78b607aa845c96fd571f93d15101206f03aaff43c73",
    "crop+attenuate": "2b1a1dea4b65e7ab94453dbf4103799459ef985db4c59f8f366653bf337d2bbe",
    "crop+mask": "9eee37e0a3e0fe85e8f304ef3ce67d5ecd7a618daeb048e2d4e6f69f0b3b14c8",
}


GOLDEN_EQUALISED_SHA256 = {
    ("full", "equalise"): "7d7fd5bcc32e95ed960a0c81251b0577d078bb941dd55d583f1e774f2d06a37c",
    ("crop", "equalise"): "3d44ed4da4fa0e6404b22899c05cc4ea77650a013a52955d485a7bed4de95208",
    ("full", "equalise-film"): "87890b68e773596a6a753b3a854b86a283d4f91443e145f9610e975069040d94",
    ("crop", "equalise-film"): "b3a0d01a93965111fc07591a970c972d420e78e4bca8bb4b7368125ea4bd3b03",
    ("full", "window-film"): "97824075bf7b2d6dec658d2e386c742380695e6a5180f2a2b6353e79ae25eeee",
    ("crop", "window-film"): "c2d98e6125a7ae459a4be36bbe741e0377ee8d23ea07c1bc45b83bf69747ffc7",
    ("full", "standardise-film"):
        "1e9a15645f803d0af43055cea2b892b843de64ed7b0ec22ba309d14cfaa4a825",
    ("crop", "standardise-film"):
        "27fa2d20b9419b405e5f7fc225908fa03181839cfe4a8b058f43628e6a0fc30d",
}


@pytest.mark.parametrize("mode", sorted(GOLDEN_SHA256))
def test_golden_image(mode):
    """The shipped classifier was trained on exactly these bytes; any change retrains it."""
    film, mask = synthetic_film()
    x, _ = lung_focus(film, mask, 160, mode)
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    assert digest == GOLDEN_SHA256[mode], digest
    assert np.array_equal(lung_focus(film, mask, 160, mode, contrast="none")[0], x)


@pytest.mark.parametrize(("mode", "contrast"), sorted(GOLDEN_EQUALISED_SHA256))
def test_golden_equalised_image(mode, contrast):
    """v4's runs train on exactly these bytes; any change retrains them."""
    film, mask = synthetic_film()
    x, _ = lung_focus(film, mask, 160, mode, contrast=contrast)
    digest = hashlib.sha256(x.tobytes()).hexdigest()
    assert digest == GOLDEN_EQUALISED_SHA256[mode, contrast], digest


@pytest.mark.parametrize("contrast", ["equalise", "equalise-film"])
def test_equalised_grey_level_says_nothing_of_exposure(contrast):
    """A darker, flatter copy of a film (another exposure and gamma) gives nearly the same input."""
    film, mask = synthetic_film()
    noise = np.random.default_rng(0).normal(0, 6, film.shape)
    film = np.clip(film + noise, 0, 255).astype(np.uint8)
    grey = np.clip(40 + 0.5 * 255 * (film / 255.0) ** 1.5, 0, 255).astype(np.uint8)
    plain = [lung_focus(f, mask, 96, "crop")[0].astype(int) for f in (film, grey)]
    equal = [lung_focus(f, mask, 96, "crop", contrast=contrast)[0].astype(int)
             for f in (film, grey)]
    assert abs(plain[0].mean() - plain[1].mean()) > 30
    assert abs(equal[0].mean() - equal[1].mean()) < 3
    assert np.abs(equal[0] - equal[1]).mean() < 4


def test_equalisation_spreads_the_levels_and_keeps_padding_black():
    x = np.tile(np.arange(100, 132, dtype=np.uint8), (32, 1))
    inside = np.ones_like(x, bool)
    inside[:, :4] = False
    out = equalise(x, inside)
    assert (out[:, :4] == 0).all()
    assert out[:, 4:].min() < 20 and out[:, 4:].max() > 230
    assert (np.diff(out[0, 4:].astype(int)) >= 0).all()  # order kept


def test_film_equalisation_keeps_more_of_a_diffuse_opacity():
    """Both lungs made denser: their levels rise more equalised over the film than over the box."""
    film, mask = synthetic_film()
    noise = np.random.default_rng(1).normal(0, 6, film.shape)
    film = np.clip(film + noise, 0, 255).astype(np.uint8)
    hazy = np.where(mask, np.clip(film.astype(int) + 40, 0, 255), film).astype(np.uint8)
    lungs = lung_focus(mask.astype(np.uint8) * 255, mask, 96, "crop")[0][..., 0] > 127

    def lung_rise(contrast: str) -> float:
        clear, dense = (lung_focus(f, mask, 96, "crop", contrast=contrast)[0][..., 0]
                        for f in (film, hazy))
        return float(dense[lungs].mean()) - float(clear[lungs].mean())

    assert lung_rise("equalise-film") > lung_rise("equalise") + 5


def test_window_stretches_the_percentiles_and_ignores_shift_and_scale():
    film, mask = synthetic_film()
    noise = np.random.default_rng(2).normal(0, 6, film.shape)
    film = np.clip(film + noise, 0, 255).astype(np.uint8)
    out = window(film)
    assert np.percentile(out, 1) == pytest.approx(0, abs=1)
    assert np.percentile(out, 99) == pytest.approx(255, abs=1)
    assert (np.diff(np.sort(out.ravel()).astype(int)) >= 0).all()
    flat = np.clip(20 + 0.6 * film.astype(np.float64), 0, 255).astype(np.uint8)
    shifted = [lung_focus(f, mask, 96, "crop", contrast="window-film")[0].astype(int)
               for f in (film, flat)]
    assert np.abs(shifted[0] - shifted[1]).mean() < 3
    one_level = np.full((8, 8), 77, np.uint8)
    assert np.array_equal(window(one_level), one_level)


def test_standardisation_ignores_exposure_even_where_it_clips():
    """A darker exposure clips the darkest pixels: the window follows it, the quartiles do not."""
    film, mask = synthetic_film()
    noise = np.random.default_rng(3).normal(0, 6, film.shape)
    film = np.clip(film + noise, 0, 255).astype(np.uint8)
    film[:, :40] = 5  # air beside the body, black on the film
    darker = np.clip(film.astype(int) - 38, 0, 255).astype(np.uint8)
    change = {}
    for contrast in ("window-film", "standardise-film"):
        clear, dark = (lung_focus(f, mask, 96, "crop", contrast=contrast)[0].astype(int)
                       for f in (film, darker))
        change[contrast] = np.abs(clear - dark).mean()
    assert change["standardise-film"] < 1 < 5 < change["window-film"]


def test_standardisation_centres_the_median_and_scales_the_quartiles():
    film = np.tile(np.arange(40, 200, dtype=np.uint8), (10, 1))
    out = standardise(film).astype(float)
    assert np.median(out) == pytest.approx(128, abs=1)
    q25, q75 = np.percentile(out, (25, 75))
    assert q75 - q25 == pytest.approx(64, abs=1.5)
    one_level = np.full((8, 8), 77, np.uint8)
    assert np.array_equal(standardise(one_level), one_level)


def test_unknown_contrast_is_refused():
    film, mask = synthetic_film()
    with pytest.raises(ValueError, match="unknown contrast"):
        lung_focus(film, mask, 64, "crop", contrast="clahe")
