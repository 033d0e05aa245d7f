"""The lung segmenter: post-processing, Dice, plausibility, verified loading, real films."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid.model.lungs import (
    LungSegmenter,
    build_unet,
    dice,
    load_lung_model,
    lung_field_problem,
    mask_from_probs,
)
from covid.model.metadata import ModelFileError
from covid.training.catalogue import data_dir

MASK_DIR = data_dir() / "covid-qu-ex-masks"
SHIPPED = Path(__file__).resolve().parents[2] / "models/lung_unet.keras"


def two_lungs(shape=(200, 200)) -> np.ndarray:
    """Two upright ellipses, one each side of the midline."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    h, w = shape
    left = ((rows - 0.45 * h) / (0.3 * h)) ** 2 + ((cols - 0.3 * w) / (0.12 * w)) ** 2 <= 1
    right = ((rows - 0.45 * h) / (0.3 * h)) ** 2 + ((cols - 0.7 * w) / (0.12 * w)) ** 2 <= 1
    return left | right


def test_dice_of_known_overlap():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 pixels
    b[:, 3:8] = True  # 50 pixels, 20 shared
    assert dice(a, b) == pytest.approx(2 * 20 / 100)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice(a, np.zeros((5, 5), bool))


def test_mask_from_probs_keeps_two_largest_fields_and_fills_holes():
    probs = np.zeros((64, 64), np.float32)
    probs[10:50, 8:26] = 0.9
    probs[10:50, 38:56] = 0.9
    probs[28:30, 15:17] = 0.1  # a hole inside the left field
    probs[2:5, 2:5] = 0.9  # a speck that is not a lung
    mask = mask_from_probs(probs, (64, 64), 0.5)
    expected = np.zeros((64, 64), bool)
    expected[10:50, 8:26] = True
    expected[10:50, 38:56] = True
    assert np.array_equal(mask, expected)


def test_mask_from_probs_returns_the_films_resolution():
    probs = np.zeros((32, 32), np.float32)
    probs[4:28, 4:14] = 1.0
    probs[4:28, 18:28] = 1.0
    mask = mask_from_probs(probs, (600, 480), 0.5)
    assert mask.shape == (600, 480)
    assert 0.3 < mask.mean() < 0.6
    assert not mask[:, 240].any()  # the gap between the fields survives upsampling


def test_plausible_lungs_pass_and_implausible_masks_say_why():
    assert lung_field_problem(two_lungs()) is None
    assert "no lung fields" in lung_field_problem(np.zeros((100, 100), bool))
    full = np.ones((100, 100), bool)
    assert "cover" in lung_field_problem(full)
    one = two_lungs()
    one[:, 100:] = False
    one[:, :100] |= two_lungs()[:, 100:]
    assert "one lung field" in lung_field_problem(one)
    high_low = np.zeros((200, 200), bool)
    high_low[10:70, 30:80] = True
    high_low[140:195, 120:170] = True
    assert "heights" in lung_field_problem(high_low)
    same_side = np.zeros((200, 200), bool)
    same_side[40:160, 10:40] = True
    same_side[40:160, 50:90] = True
    assert "midline" in lung_field_problem(same_side)
    air_beside_a_body = np.zeros((100, 100), bool)
    air_beside_a_body[10:90, :25] = True
    air_beside_a_body[10:90, 75:] = True
    assert "edges" in lung_field_problem(air_beside_a_body)
    one_touching = two_lungs()
    one_touching[60:140, :30] = True  # a real left lung may touch the border
    assert lung_field_problem(one_touching) is None


def test_unet_maps_a_film_to_a_probability_map_of_its_size():
    model = build_unet(None, filters=(4, 8))
    out = np.asarray(model(np.zeros((2, 48, 48, 1), np.float32)))
    assert out.shape == (2, 48, 48, 1)
    assert ((out >= 0) & (out <= 1)).all()


def test_segmenter_returns_masks_at_each_films_resolution(tiny_lung_file):
    segmenter = LungSegmenter.from_file(tiny_lung_file)
    films = [np.full((90, 70), 100, np.uint8), np.zeros((40, 64), np.uint8)]
    segs = segmenter.segment_batch(films)
    assert [s.mask.shape for s in segs] == [(90, 70), (40, 64)]
    assert all(s.mask.dtype == bool for s in segs)
    assert segmenter.segment_batch([]) == []


def test_loading_refuses_an_altered_segmenter(tiny_lung_file, tmp_path):
    altered = tmp_path / "altered.keras"
    altered.write_bytes(tiny_lung_file.read_bytes() + b"x")
    altered.with_suffix(".json").write_text(tiny_lung_file.with_suffix(".json").read_text())
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_lung_model(altered)
    with pytest.raises(ModelFileError, match="not found"):
        load_lung_model(tmp_path / "missing.keras")


def _real_pairs(n: int):
    if not MASK_DIR.is_dir():
        pytest.skip(f"COVID-QU-Ex masks not found at {MASK_DIR}")
    if not SHIPPED.is_file():
        pytest.skip(f"shipped segmenter not found at {SHIPPED}")
    pairs = []
    for folder in ("COVID-19", "Normal", "Non-COVID"):
        films = sorted((MASK_DIR / folder / "images").glob("*.jpg"))[-n:]
        for film in films:
            mask = np.asarray(Image.open(MASK_DIR / folder / "lungs" / f"{film.stem}.png")) > 0
            pairs.append((np.asarray(Image.open(film).convert("L")), mask))
    return pairs


@pytest.mark.slow
def test_shipped_segmenter_finds_the_lungs_on_real_films():
    pairs = _real_pairs(4)
    segmenter = LungSegmenter.from_file(SHIPPED)
    segs = segmenter.segment_batch([film for film, _ in pairs])
    scores = [dice(seg.mask, mask) for seg, (_, mask) in zip(segs, pairs, strict=True)]
    assert np.mean(scores) >= 0.9, scores
    assert sum(seg.problem is None for seg in segs) >= len(segs) - 1
    assert all(seg.box is not None for seg in segs)
