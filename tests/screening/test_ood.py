"""Out-of-distribution gate: Mahalanobis statistics, cheap checks, detector and CLI."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid.inputs.decode import DecodedImage, decode_image, read_image
from covid.screening.ood import (
    MIN_STD,
    OODDetector,
    OODFileError,
    OODStats,
    calibrate_threshold,
    cheap_checks,
    fit_ood,
    load_ood,
    mahalanobis_score,
    ood_path,
    save_ood,
)

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/covid19-radiography"
D = 64


def _features(rng, n, shift=0.0, d=D):
    """Two Gaussian classes with a shared anisotropic covariance: (N, d) float32 and labels."""
    scales = np.linspace(3.0, 0.3, d)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) * scales + labels[:, None] * 2.0 + shift
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train, labels = _features(rng, 4000)
    stats = fit_ood(train, labels, n_components=16)
    val, _ = _features(rng, 4000)
    return stats, calibrate_threshold(stats, val), val, rng


def test_in_distribution_scores_low_and_shifted_cluster_flagged(fitted):
    stats, threshold, val, rng = fitted
    held_out, _ = _features(rng, 4000)
    shifted, _ = _features(rng, 500, shift=4.0)
    assert np.mean(mahalanobis_score(stats, val) > threshold) <= 0.02  # exact on calibration
    # held-out: 2% up to the binomial noise of 4000 + 4000 samples (2 sigma = 0.6 points)
    assert np.mean(mahalanobis_score(stats, held_out) > threshold) <= 0.026
    assert np.mean(mahalanobis_score(stats, shifted) > threshold) >= 0.99
    # normalised: the mean in-distribution score is the dimension (a chi-square's mean)
    assert abs(np.mean(mahalanobis_score(stats, held_out)) / D - 1) < 0.1


def test_shift_in_discarded_pca_directions_is_still_flagged(fitted):
    stats, threshold, _, rng = fitted
    x, _ = _features(rng, 500)
    basis = stats.pca_components.astype(np.float64)
    direction = rng.normal(size=D)
    direction -= basis.T @ (basis @ direction)  # orthogonal to the 16 kept components
    shifted = x + 12.0 * direction / np.linalg.norm(direction)
    np.testing.assert_allclose(stats.project(shifted), stats.project(x), atol=1e-3)
    assert np.mean(mahalanobis_score(stats, x) > threshold) <= 0.05
    assert np.mean(mahalanobis_score(stats, shifted) > threshold) >= 0.95


def test_fit_shapes_and_dtypes(fitted):
    stats = fitted[0]
    assert stats.class_means.shape == (2, 16) and stats.class_means.dtype == np.float32
    assert stats.precision.shape == (16, 16) and stats.precision.dtype == np.float32
    assert stats.pca_components.shape == (16, D) and stats.pca_mean.shape == (D,)
    assert stats.feature_dim == D and list(stats.classes) == [0, 1]
    assert math.isfinite(stats.residual_var) and math.isnan(stats.threshold)
    np.testing.assert_allclose(stats.precision, stats.precision.T, rtol=1e-5, atol=1e-6)


def test_without_pca_it_is_the_plain_tied_mahalanobis():
    rng = np.random.default_rng(1)
    x, y = _features(rng, 3000, d=8)
    stats = fit_ood(x, y, n_components=None)
    assert stats.pca_components is None and math.isnan(stats.residual_var)
    centred = x - stats.class_means[y]
    cov = np.cov(centred.T)
    probe = x[:5].astype(np.float64)
    expected = np.min([np.einsum("nd,de,ne->n", probe - m, np.linalg.inv(cov), probe - m)
                       for m in stats.class_means.astype(np.float64)], axis=0)
    np.testing.assert_allclose(mahalanobis_score(stats, probe), expected, rtol=0.05)


def test_fit_validates_its_input():
    with pytest.raises(ValueError, match="expected"):
        fit_ood(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        fit_ood(np.full((5, 3), np.nan), np.zeros(5))
    stats = fit_ood(np.random.default_rng(0).normal(size=(20, 3)), np.zeros(20))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        mahalanobis_score(stats, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="max_flag_rate"):
        calibrate_threshold(stats, np.zeros((2, 3)), max_flag_rate=1.5)


def test_save_load_round_trip(fitted, tmp_path):
    stats, threshold, val, _ = fitted
    calibrated = OODStats(stats.class_means, stats.precision, stats.pca_mean,
                          stats.pca_components, stats.classes, threshold, stats.residual_var)
    path = save_ood(calibrated, tmp_path / "m.ood.npz")
    loaded = load_ood(path)
    assert loaded.threshold == threshold and loaded.residual_var == stats.residual_var
    for name in ("class_means", "precision", "pca_mean", "pca_components", "classes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
    np.testing.assert_array_equal(mahalanobis_score(loaded, val), mahalanobis_score(stats, val))


def test_real_sized_statistics_stay_small(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 2048)).astype(np.float32)
    stats = fit_ood(x, rng.integers(0, 2, 400), n_components=128)
    path = save_ood(stats, tmp_path / "big.ood.npz")
    assert path.stat().st_size < 2 * 2**20


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"), (b"not a zip", "unreadable")])
def test_bad_statistics_files(tmp_path, content, message):
    path = tmp_path / "x.ood.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OODFileError, match=message):
        load_ood(path)


def test_other_version_is_refused(fitted, tmp_path):
    path = save_ood(fitted[0], tmp_path / "x.ood.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["version"] = np.int64(99)
    np.savez(path, **arrays)
    with pytest.raises(OODFileError, match="another version"):
        load_ood(path)


def test_ood_path():
    assert ood_path("models/covid_resnet50.keras") == Path("models/covid_resnet50.ood.npz")


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
    stats, threshold, val, _ = fitted
    detector = OODDetector(stats, threshold)
    ok = detector.assess(_film(), val[0])
    assert not ok.flagged and ok.reason is None and 0 <= ok.score <= threshold
    far = detector.assess(_film(), val[0] + 10.0)
    assert far.flagged and far.score > threshold
    assert far.reason.startswith("it does not look like the chest X-rays")
    colour = DecodedImage(_film().pixels, "c.png", "PNG", is_color=True)
    verdict = detector.assess(colour, val[0])
    assert verdict.flagged and verdict.reason.startswith("it is a colour image")


def test_detector_without_statistics_uses_cheap_checks_only():
    detector = OODDetector()
    verdict = detector.assess(_film(), np.ones(2048, np.float32))
    assert not verdict.flagged and math.isnan(verdict.score)
    blank = DecodedImage(np.zeros((128, 128), np.uint8), "b.png", "PNG")
    assert detector.assess(blank, None).flagged


# ------------------------------------------------------------------ CLI on a tiny model


def _tiny_model_file(directory: Path) -> Path:
    import keras

    from covid.model.classifier import LOGITS_LAYER, ModelMetadata, save_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1), name="xray")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(2, name=LOGITS_LAYER)(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits))
    metadata = ModelMetadata(name="tiny", version="test", input_size=32,
                             gradcam_layer="last_conv")
    path = directory / "tiny.keras"
    save_model(model, metadata, path)
    return path


def _tiny_dataset(root: Path) -> dict:
    rng = np.random.default_rng(0)
    files = {"train": [], "val": [], "test": []}
    for c, name in enumerate(("COVID", "Normal")):
        (root / name).mkdir(parents=True)
        for i in range(14):
            film = np.linspace(20, 200, 64)[None, :] + rng.normal(0, 15 + 10 * c, (64, 64))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(film, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
            relative = f"{name}/{name}-{i}.png"
            (root / relative).write_bytes(buffer.getvalue())
            files["train" if i < 10 else "val"].append(relative)
    return {"root": str(root), "files": files}


def test_cli_fits_on_a_tiny_model(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from covid.model.classifier import load_model, read_metadata
    from covid.screening.ood import load_detector, main

    model_path = _tiny_model_file(tmp_path)
    assert load_detector(model_path).stats is None  # no statistics yet: cheap checks only
    record = _tiny_dataset(tmp_path / "data")
    model_path.with_suffix(".split.json").write_text(json.dumps(record))  # found by default

    assert main(["--model", str(model_path), "--components", "4", "--max-flag-rate", "0.1"]) == 0
    entry = read_metadata(model_path).extra["ood"]
    assert entry["file"] == "tiny.ood.npz" and (tmp_path / "tiny.ood.npz").is_file()
    assert (entry["n_train"], entry["n_val"], entry["feature_dim"], entry["components"]) == (
        20, 8, 8, 4)
    assert entry["val_flag_rate"] <= 0.1 and "wrote tiny.ood.npz" in capsys.readouterr().err
    load_model(model_path)  # the .keras file is untouched: its SHA-256 still matches

    detector = load_detector(model_path)
    assert detector.threshold == entry["threshold"] and detector.stats.feature_dim == 8

    (tmp_path / "tiny.ood.npz").write_bytes(b"altered")
    from covid.model.classifier import ModelFileError

    with pytest.raises(ModelFileError, match="do not match"):
        load_detector(model_path)


def test_cli_reports_a_missing_split(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from covid.screening.ood import main

    model_path = _tiny_model_file(tmp_path)
    status = main(["--model", str(model_path), "--split", str(tmp_path / "none.json")])
    assert status == 1 and capsys.readouterr().err.startswith("error: ")
