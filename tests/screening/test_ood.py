"""The out-of-distribution gate's pixel checks, and the detector that combines the gates."""

import math

import numpy as np
import pytest

from covid.evaluation.ood_fit import fit_ood, quantile_threshold
from covid.inputs.decode import DecodedImage, decode_image, read_image
from covid.model.ood_stats import mahalanobis_score
from covid.screening.ood import MIN_STD, OODDetector, cheap_checks
from covid.training.catalogue import data_dir

DATA_DIR = data_dir() / "covid19-radiography"
D = 64


@pytest.fixture(scope="module")
def fitted():
    """Statistics of two Gaussian classes, their threshold and in-distribution features."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4000)
    train = rng.normal(size=(4000, D)) + labels[:, None] * 2.0
    stats = fit_ood(train, labels, n_components=16)
    val = rng.normal(size=(1000, D)) + rng.integers(0, 2, 1000)[:, None] * 2.0
    return stats, quantile_threshold(mahalanobis_score(stats, val), 0.02), val


# ------------------------------------------------------------------ cheap checks


def _film(h=256, w=256, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(30, 220, w)[None, :] + rng.normal(0, 20, (h, w))
    return DecodedImage(np.clip(x, 0, 255).astype(np.uint8), "film.png", "PNG")


def test_cheap_checks_pass_a_grey_film():
    assert cheap_checks(_film()) is None
    assert cheap_checks(_film(200, 390)) is None  # 1.95: still a (landscape) film


def test_cheap_checks_flag_a_colour_photo():
    cbook = pytest.importorskip("matplotlib.cbook")
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = decode_image(handle.read(), "grace_hopper.jpg")
    assert cheap_checks(photo) == "it is a colour image; chest X-rays are grey."


def test_cheap_checks_flag_odd_shapes_and_blank_images():
    assert "shape (800 x 200 pixels)" in cheap_checks(_film(200, 800))
    assert "shape (100 x 300 pixels)" in cheap_checks(_film(300, 100))
    flat = DecodedImage(np.full((256, 256), 128, np.uint8), "blank.png", "PNG")
    assert cheap_checks(flat) == "it is nearly blank (almost no contrast)."
    faint = np.full((256, 256), 128, np.uint8)
    faint[::2] += int(MIN_STD)  # std = MIN_STD / 2
    assert cheap_checks(DecodedImage(faint, "faint.png", "PNG")) is not None


def test_cheap_checks_pass_real_x_rays():
    if not DATA_DIR.is_dir():
        pytest.skip(f"real X-rays not found at {DATA_DIR} (the shared dataset is absent)")
    paths = sorted(DATA_DIR.glob("*/*.jpg"))[::40]  # ~330 of the 13,156, both classes
    flagged = {p.name: cheap_checks(read_image(p)) for p in paths}
    assert len(paths) > 100
    assert {k: v for k, v in flagged.items() if v} == {}


# ------------------------------------------------------------------ detector


def test_detector_combines_cheap_checks_and_score(fitted):
    stats, threshold, val = fitted
    detector = OODDetector(stats, threshold)
    ok = detector.assess(_film(), val[0])
    assert ok.flag == "none" and ok.reason is None and 0 <= ok.score <= threshold
    far = detector.assess(_film(), val[0] + 10.0)  # a chest film, only far in features
    assert far.flag == "unusual" and far.score > threshold
    assert far.reason.startswith("it is unlike the chest X-rays the model was trained on")
    assert f"feature distance {far.score:.0f}, above the limit {threshold:.0f}" in far.reason
    assert "not a chest" not in far.reason.lower()
    colour = DecodedImage(_film().pixels, "c.png", "PNG", is_color=True)
    for features in (val[0], val[0] + 10.0):  # the pixels decide, whatever the distance
        verdict = detector.assess(colour, features)
        assert verdict.flag == "not_chest" and verdict.reason.startswith("it is a colour image")


def test_detector_without_statistics_uses_cheap_checks_only():
    detector = OODDetector()
    verdict = detector.assess(_film(), np.ones(2048, np.float32))
    assert verdict.flag == "none" and math.isnan(verdict.score)
    blank = DecodedImage(np.zeros((128, 128), np.uint8), "b.png", "PNG")
    assert detector.assess(blank, None).flag == "not_chest"
