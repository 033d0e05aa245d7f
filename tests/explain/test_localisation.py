"""Maps placed back on the film, their share inside the lungs, and the lung outline."""

import numpy as np
import pytest

from covid.explain.localisation import (
    CAUTION_SHARE,
    busiest_cell,
    cam_to_film,
    constant_map,
    draw_outline,
    energy_inside,
    evidence_caution,
    evidence_sentence,
    inside_each,
    inside_own,
    lung_outline,
    own_and_others,
    peak_position,
    share_percent,
)
from covid.inputs.preprocess import LungBox, lung_focus


def test_cam_to_film_places_the_map_in_its_box_and_zero_elsewhere():
    cam = np.ones((8, 8), np.float32)
    film = cam_to_film(cam, LungBox(10, 20, 40), (100, 90))
    assert film.shape == (100, 90)
    assert film[10:50, 20:60].min() == pytest.approx(1.0)
    assert film.sum() == pytest.approx(40 * 40)


def test_cam_to_film_clips_a_box_that_reaches_past_the_film():
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0  # the box's top-left corner lies outside the film
    film = cam_to_film(cam, LungBox(-20, -20, 40), (30, 30))
    assert film.shape == (30, 30)
    assert film.max() < 0.5  # most of the corner's weight fell off the film


def test_energy_share_of_a_planted_map_is_exact():
    cam = np.zeros((10, 10))
    cam[:, :4] = 1.0  # 40 units on the left
    cam[:, 4:] = 0.5  # 30 units on the right
    mask = np.zeros((10, 10), bool)
    mask[:, :4] = True
    assert energy_inside(cam, mask) == pytest.approx(40 / 70)
    assert energy_inside(np.zeros((10, 10)), mask) == 0.0
    # a mask at another resolution is resized to the map
    big = np.repeat(np.repeat(mask, 3, axis=0), 3, axis=1)
    assert energy_inside(cam, big) == pytest.approx(40 / 70)


def _peak_inside(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Whether one map's peak lies inside its film's mask (as the evaluation asks it)."""
    return bool(inside_own(peak_position(cam)[np.newaxis], [mask])[0])


def test_a_peak_is_inside_a_mask_only_where_the_mask_is_set():
    cam = np.zeros((10, 10))
    cam[2, 7] = 1.0
    mask = np.zeros((10, 10), bool)
    assert not _peak_inside(cam, mask)
    mask[2, 7] = True
    assert _peak_inside(cam, mask)
    assert not _peak_inside(np.zeros((10, 10)), mask)


def test_a_peak_is_found_in_a_mask_at_any_resolution():
    cam = np.zeros((10, 10))
    cam[2, 7] = 1.0
    assert peak_position(cam) == pytest.approx([0.25, 0.75])
    mask = np.zeros((10, 10), bool)
    mask[2, 7] = True
    coarse = np.zeros((5, 5), bool)
    coarse[1, 3] = True  # the same pixel's span at half the resolution
    fine = np.repeat(np.repeat(mask, 4, axis=0), 4, axis=1)
    assert _peak_inside(cam, coarse) and _peak_inside(cam, fine)
    assert not _peak_inside(cam, np.roll(fine, 4, axis=1))
    assert np.isnan(peak_position(np.zeros((4, 4)))).all()


def _films(n: int = 4, side: int = 16) -> list[np.ndarray]:
    """n infection masks, each a square in another quarter of the film."""
    masks = []
    for k in range(n):
        mask = np.zeros((side, side), bool)
        top, left = (k // 2) * side // 2, (k % 2) * side // 2
        mask[top + 2:top + side // 2 - 2, left + 2:left + side // 2 - 2] = True
        masks.append(mask)
    return masks


def _peak_at(mask: np.ndarray) -> np.ndarray:
    """A map whose peak is the middle of a mask's region."""
    rows, cols = np.nonzero(mask)
    cam = np.zeros(mask.shape)
    cam[int(rows.mean()), int(cols.mean())] = 1.0
    return cam


def test_a_map_that_follows_each_film_lands_in_its_own_infection_not_in_others():
    infections = _films()
    peaks = np.array([peak_position(_peak_at(m)) for m in infections])
    hits = inside_each(peaks, infections)
    assert hits.tolist() == np.eye(4, dtype=bool).tolist()
    assert inside_own(peaks, infections).all()
    assert own_and_others(hits) == (1.0, 0.0)
    # a map that peaks in the first film's infection whatever the film
    same = np.repeat(peaks[:1], 4, axis=0)
    own, others = own_and_others(inside_each(same, infections))
    assert (own, others) == (0.25, 0.25)  # it cannot tell one film from another
    assert own_and_others(np.zeros((0, 0), bool)) == (None, None)
    assert own_and_others(np.ones((1, 1), bool)) == (1.0, None)


def test_the_busiest_sixteenth_counts_peaks_per_cell_of_a_4_by_4_grid():
    spread = np.array([[(r + 0.5) / 4, (c + 0.5) / 4] for r in range(4) for c in range(4)])
    assert busiest_cell(spread)[0] == pytest.approx(1 / 16)
    piled = np.array([[0.8, 0.1], [0.9, 0.2], [0.76, 0.01], [0.1, 0.9]])
    assert busiest_cell(piled) == (0.75, (3, 0))
    # a map without a peak counts among the films but in no cell
    assert busiest_cell(np.vstack([piled, [[np.nan, np.nan]] * 4]))[0] == pytest.approx(3 / 8)
    assert busiest_cell(np.zeros((0, 2)))[0] is None


def test_the_constant_map_is_the_average_mask_at_any_resolution():
    small, large = np.zeros((4, 4), bool), np.zeros((8, 8), bool)
    small[:2, :2] = True
    large[:4, :] = True
    prior = constant_map([small, large], shape=(4, 4))
    assert prior.dtype == np.float32
    assert prior.tolist() == [[1.0, 1.0, 0.5, 0.5]] * 2 + [[0.0] * 4] * 2
    assert not constant_map([], shape=(2, 2)).any()


def test_outline_of_a_known_square():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    outline = lung_outline(mask, width=1)
    expected = mask.copy()
    expected[3:6, 3:6] = False
    assert np.array_equal(outline, expected)
    rgb = np.zeros((9, 9, 3), np.uint8)
    drawn = draw_outline(rgb, mask, color=(1, 2, 3), width=1)
    assert drawn.dtype == np.uint8 and (drawn[expected] == (1, 2, 3)).all()
    assert (drawn[~expected] == 0).all() and (rgb == 0).all()


def _identity_cam_classifier(size: int):
    """A classifier whose COVID Grad-CAM is proportional to its input's intensity."""
    import keras

    from covid.explain.inference import Classifier
    from covid.model.metadata import ModelMetadata

    inputs = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="last_conv")(
        inputs
    )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(2, name="logits", kernel_initializer=keras.initializers.Constant(
        [[1.0, -1.0]]))(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits))
    meta = ModelMetadata(class_names=["finding", "none"], input_size=size,
                         gradcam_layer="last_conv", input_mode="crop")
    return Classifier(model, meta)


def test_a_map_over_a_lung_crop_lands_where_the_evidence_was_on_the_film():
    rows, cols = np.mgrid[:240, :200]
    lungs = (((rows - 120) / 80) ** 2 + ((cols - 60) / 35) ** 2 <= 1) | (
        ((rows - 120) / 80) ** 2 + ((cols - 140) / 35) ** 2 <= 1
    )
    film = np.zeros((240, 200), np.uint8)
    film[150:162, 40:52] = 255  # the planted evidence, in the left lung
    classifier = _identity_cam_classifier(32)
    x, box = lung_focus(film, lungs, 32, "crop")
    explained = classifier.explain(x.astype(np.float32), target=0)
    on_film = cam_to_film(explained.cam, box, film.shape)
    row, col = np.unravel_index(np.argmax(on_film), on_film.shape)
    assert 146 <= row <= 166 and 36 <= col <= 56
    planted = np.zeros_like(lungs)
    planted[140:172, 30:62] = True
    assert energy_inside(on_film, planted) > 0.8
    assert _peak_inside(on_film, lungs)


@pytest.mark.parametrize("share", [0.0, 0.2, 0.49, 0.4999])
def test_the_caution_appears_below_half(share):
    caution = evidence_caution(share)
    assert caution and "mostly outside the lungs" in caution and "suspicion" in caution
    assert f"{share_percent(share)}%" in caution


@pytest.mark.parametrize("share", [CAUTION_SHARE, 0.5001, 0.8, 1.0])
def test_no_caution_at_or_above_half(share):
    assert evidence_caution(share) is None


def test_share_sentence_never_rounds_a_cautioned_share_up_to_half():
    assert evidence_sentence(0.62) == "62% of the evidence lies inside the lung fields"
    assert evidence_sentence(0.4999).startswith("49% ") and evidence_caution(0.4999)
    assert evidence_sentence(0.5).startswith("50% ") and evidence_caution(0.5) is None
    assert evidence_sentence(1.0).startswith("100% ") and evidence_sentence(0.0).startswith("0% ")
    assert evidence_sentence(None) is None and evidence_caution(None) is None
    assert [share_percent(v) for v in (0.29, 0.57, 0.58, 0.999)] == [29, 57, 58, 99]


def test_caution_follows_the_share_of_a_planted_map():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    inside = np.zeros((10, 10))
    inside[:, :5], inside[:, 5:] = 1.0, 0.5  # 2/3 inside
    outside = inside[:, ::-1]  # 1/3 inside
    assert evidence_caution(energy_inside(inside, mask)) is None
    assert evidence_caution(energy_inside(outside, mask)).startswith("Only 33%")
