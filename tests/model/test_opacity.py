"""The opacity segmenter: extent and grade, placing its map on the film, verified loading."""

from pathlib import Path

import numpy as np
import pytest

from covid.inputs.preprocess import LungBox, lung_box
from covid.model.lungs import LungSegmentation
from covid.model.metadata import ModelFileError
from covid.model.opacity import (
    OpacityModelMetadata,
    OpacitySegmenter,
    Severity,
    build_opacity_unet,
    grade,
    load_opacity_model,
    lung_score,
    opacity_from_probs,
    opacity_input,
    save_opacity_model,
    split_lungs,
)

SHIPPED = Path(__file__).resolve().parents[2] / "models/opacity_unet.keras"


def two_fields(shape=(100, 100)) -> tuple[np.ndarray, np.ndarray]:
    """Two 40 x 20 rectangles: on the image's left (patient's right) and right."""
    image_left = np.zeros(shape, bool)
    image_right = np.zeros(shape, bool)
    image_left[30:70, 20:40] = True  # 800 pixels
    image_right[30:70, 60:80] = True
    return image_left, image_right


def test_no_opacity_scores_zero():
    right, left = two_fields()
    severity = grade(right | left, np.zeros((100, 100), bool))
    assert severity == Severity(0.0, 0.0, 0.0, 0, 0, 0)


def test_the_image_left_lung_is_the_patients_right():
    right, left = two_fields()
    opacity = right.copy()  # all of the image-left field
    severity = grade(right | left, opacity)
    assert severity.right == 1.0 and severity.left == 0.0
    assert severity.extent == pytest.approx(0.5)
    assert (severity.right_score, severity.left_score, severity.score) == (4, 0, 4)


def test_each_band_includes_its_lower_bound():
    assert [lung_score(s) for s in (0.0, 0.001, 0.2499, 0.25, 0.4999, 0.5, 0.7499, 0.75, 1.0)] \
        == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert lung_score(None) == 0


@pytest.mark.parametrize(("rows", "share", "score"), [
    (1, 0.025, 1), (10, 0.25, 2), (9, 0.225, 1), (20, 0.5, 3), (30, 0.75, 4), (29, 0.725, 3)
])
def test_shares_at_the_band_edges(rows, share, score):
    right, left = two_fields()
    opacity = np.zeros_like(right)
    opacity[30 : 30 + rows, 60:80] = True  # the top rows of the patient's left lung
    severity = grade(right | left, opacity)
    assert severity.left == pytest.approx(share)
    assert severity.left_score == score and severity.score == score
    assert severity.right == 0.0


def test_the_summary_names_each_lung_and_the_score():
    assert Severity(0.35, 0.1, 0.225, 2, 1, 3).summary() \
        == "right lung 35% · left lung 10% · score 3/8"
    assert Severity(None, 0.5, 0.5, 0, 3, 3).summary() \
        == "right lung not found · left lung 50% · score 3/8"


def test_opacity_outside_the_lungs_does_not_count():
    right, left = two_fields()
    outside = ~(right | left)
    severity = grade(right | left, outside)
    assert severity.score == 0 and severity.extent == 0.0


def test_one_lung_missing():
    right, left = two_fields()
    opacity = np.zeros_like(left)
    opacity[30:50, 60:80] = True  # half of the lone field
    severity = grade(left, opacity)  # only the image-right field: the patient's left lung
    assert severity.right is None and severity.right_score == 0
    assert severity.left == pytest.approx(0.5) and severity.score == 3
    assert severity.extent == pytest.approx(0.5)
    lone_right = grade(right, right)
    assert lone_right.left is None and lone_right.right == 1.0 and lone_right.score == 4


def test_no_lungs_and_mismatched_masks():
    assert grade(np.zeros((8, 8), bool), np.ones((8, 8), bool)) == Severity(None, None, 0.0,
                                                                            0, 0, 0)
    with pytest.raises(ValueError, match="differ in shape"):
        grade(np.zeros((8, 8), bool), np.zeros((8, 9), bool))


def test_split_keeps_the_two_largest_fields():
    right, left = two_fields()
    speck = np.zeros_like(right)
    speck[5:7, 5:7] = True
    found_right, found_left = split_lungs(right | left | speck)
    assert np.array_equal(found_right, right) and np.array_equal(found_left, left)


def test_the_map_goes_back_to_the_lung_box_on_the_film():
    right, left = two_fields()
    lungs = right | left
    box = lung_box(lungs)
    probs = np.zeros((32, 32), np.float32)
    probs[:, :16] = 0.9  # the box's left half: the patient's right lung
    mask = opacity_from_probs(probs, box, lungs.shape, lungs)
    assert np.array_equal(mask, right)
    half = opacity_from_probs(probs, box, lungs.shape, lungs[::2, ::2])  # a smaller working size
    assert half.shape == (50, 50) and np.array_equal(half, right[::2, ::2])


def test_specks_are_removed():
    right, left = two_fields()
    lungs = right | left
    probs = np.zeros((100, 100), np.float32)
    probs[40:42, 65:67] = 0.9  # 4 pixels of 1,600: below MIN_COMPONENT
    probs[30:50, 20:40] = 0.9  # 400 pixels
    mask = opacity_from_probs(probs, LungBox(0, 0, 100), lungs.shape, lungs)
    assert mask.sum() == 400 and not mask[:, 50:].any()


def test_the_crop_is_the_lungs_box():
    film = np.zeros((100, 100), np.uint8)
    right, left = two_fields()
    film[right | left] = 200
    x, box = opacity_input(film, right | left, 32)
    assert x.shape == (32, 32, 1) and box == lung_box(right | left)
    assert x[16, 8, 0] > 100 and x[16, 16, 0] < 50  # a lung, then the gap between them


@pytest.fixture(scope="module")
def tiny_opacity_file(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("opacity") / "tiny_opacity.keras"
    save_opacity_model(build_opacity_unet(None, filters=(4, 8)),
                       OpacityModelMetadata(input_size=32), path)
    return path


def test_segmenter_outlines_films_with_lungs_and_skips_the_rest(tiny_opacity_file):
    segmenter = OpacitySegmenter.from_file(tiny_opacity_file)
    right, left = two_fields((90, 70))
    lungs = LungSegmentation(right | left, lung_box(right | left), None)
    no_lungs = LungSegmentation(np.zeros((40, 64), bool), None, "no lung fields found")
    films = [np.full((90, 70), 100, np.uint8), np.zeros((40, 64), np.uint8),
             np.zeros((30, 30), np.uint8)]
    found = segmenter.segment_batch(films, [lungs, no_lungs, None])
    assert found[1] is None and found[2] is None
    assert found[0].mask.shape == (90, 70) and found[0].mask.dtype == bool
    assert not (found[0].mask & ~lungs.mask).any()  # never outside the lungs
    assert 0 <= found[0].severity.score <= 8
    assert segmenter.segment_batch([], []) == []
    with pytest.raises(ValueError, match="2 films but 1"):
        segmenter.segment_batch(films[:2], [lungs])


def test_loading_refuses_an_altered_segmenter(tiny_opacity_file, tmp_path):
    altered = tmp_path / "altered.keras"
    altered.write_bytes(tiny_opacity_file.read_bytes() + b"x")
    altered.with_suffix(".json").write_text(tiny_opacity_file.with_suffix(".json").read_text())
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_opacity_model(altered)
    with pytest.raises(ModelFileError, match="opacity model not found"):
        load_opacity_model(tmp_path / "missing.keras")
    _, meta = load_opacity_model(tiny_opacity_file)
    assert meta.input_size == 32 and len(meta.sha256) == 64


def test_the_shipped_segmenter_records_its_held_out_figures():
    if not SHIPPED.is_file():
        pytest.skip(f"shipped opacity segmenter not found at {SHIPPED}")
    segmenter = OpacitySegmenter.from_file(SHIPPED)  # SHA-checked
    served = segmenter.metadata.metrics["lung_segmenter_lungs"]
    assert served["covid_films"] > 100 and served["normal_films"] > 50
    assert 0.0 <= served["dice_mean"] <= 1.0
    assert segmenter.model.count_params() < 3_000_000  # a small segmenter, a few MB
