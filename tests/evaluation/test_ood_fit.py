"""Fitting the out-of-distribution statistics: the Mahalanobis fit, its threshold, the CLI."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid.evaluation.ood_fit import fit_ood, main, quantile_threshold
from covid.model.ood_stats import mahalanobis_score, save_ood

D = 64


def gaussian_features(rng, n, shift=0.0, d=D):
    """Two Gaussian classes with a shared anisotropic covariance: (N, d) float32 and labels."""
    scales = np.linspace(3.0, 0.3, d)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) * scales + labels[:, None] * 2.0 + shift
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train, labels = gaussian_features(rng, 4000)
    stats = fit_ood(train, labels, n_components=16)
    val, _ = gaussian_features(rng, 4000)
    return stats, quantile_threshold(mahalanobis_score(stats, val), 0.02), val, rng


def test_in_distribution_scores_low_and_shifted_cluster_flagged(fitted):
    stats, threshold, val, rng = fitted
    held_out, _ = gaussian_features(rng, 4000)
    shifted, _ = gaussian_features(rng, 500, shift=4.0)
    assert np.mean(mahalanobis_score(stats, val) > threshold) <= 0.02  # exact on calibration
    # held-out: 2% up to the binomial noise of 4000 + 4000 samples (2 sigma = 0.6 points)
    assert np.mean(mahalanobis_score(stats, held_out) > threshold) <= 0.026
    assert np.mean(mahalanobis_score(stats, shifted) > threshold) >= 0.99
    # normalised: the mean in-distribution score is the dimension (a chi-square's mean)
    assert abs(np.mean(mahalanobis_score(stats, held_out)) / D - 1) < 0.1


def test_shift_in_discarded_pca_directions_is_still_flagged(fitted):
    stats, threshold, _, rng = fitted
    x, _ = gaussian_features(rng, 500)
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
    x, y = gaussian_features(rng, 3000, d=8)
    stats = fit_ood(x, y, n_components=None)
    assert stats.pca_components is None and math.isnan(stats.residual_var)
    centred = x - stats.class_means[y]
    cov = np.cov(centred.T)
    probe = x[:5].astype(np.float64)
    expected = np.min([np.einsum("nd,de,ne->n", probe - m, np.linalg.inv(cov), probe - m)
                       for m in stats.class_means.astype(np.float64)], axis=0)
    np.testing.assert_allclose(mahalanobis_score(stats, probe), expected, rtol=0.05)


def test_fit_and_threshold_validate_their_input():
    with pytest.raises(ValueError, match="expected"):
        fit_ood(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        fit_ood(np.full((5, 3), np.nan), np.zeros(5))
    with pytest.raises(ValueError, match="two"):
        fit_ood(np.zeros((1, 3)), np.zeros(1))
    with pytest.raises(ValueError, match="max_flag_rate"):
        quantile_threshold(np.zeros(2), max_flag_rate=1.5)
    with pytest.raises(ValueError, match="no validation"):
        quantile_threshold(np.zeros(0), max_flag_rate=0.1)


def test_the_threshold_is_a_score_that_flags_at_most_the_rate():
    scores = np.arange(100, dtype=np.float64)
    threshold = quantile_threshold(scores, 0.05)
    assert threshold in scores and np.mean(scores > threshold) <= 0.05
    assert np.mean(scores > threshold) == pytest.approx(0.04)


def test_real_sized_statistics_stay_small(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 2048)).astype(np.float32)
    stats = fit_ood(x, rng.integers(0, 2, 400), n_components=128)
    path = save_ood(stats, tmp_path / "big.ood.npz")
    assert path.stat().st_size < 2 * 2**20


# ------------------------------------------------------------------ CLI on a tiny model


def _tiny_model_file(directory: Path, tiny_cnn_factory) -> Path:
    from covid.model.classes import CLASS_NAMES
    from covid.model.metadata import ModelMetadata
    from covid.model.network import save_with_metadata

    metadata = ModelMetadata(name="tiny", version="test", class_names=list(CLASS_NAMES),
                             input_size=32, input_mode="full", gradcam_layer="last_conv")
    path = directory / "tiny.keras"
    save_with_metadata(tiny_cnn_factory(), metadata, path)
    return path


def _tiny_dataset(root: Path) -> dict:
    """A split record in the trainer's layout: 14 COVID and 14 Normal films, 10/2/2 a side."""
    from covid.model.classes import CLASS_NAMES, index_of

    rng = np.random.default_rng(0)
    record = {"root": str(root), "class_names": list(CLASS_NAMES),
              **{key: {"train": [], "val": [], "test": []}
                 for key in ("files", "labels", "sources", "ages")}}
    for c, name in enumerate(("COVID", "Normal")):
        (root / name).mkdir(parents=True)
        for i in range(14):
            film = np.linspace(20, 200, 64)[None, :] + rng.normal(0, 15 + 10 * c, (64, 64))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(film, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
            relative = f"{name}/{name}-{i}.png"
            (root / relative).write_bytes(buffer.getvalue())
            side = "train" if i < 10 else "val" if i < 12 else "test"
            for key, value in (("files", relative), ("labels", index_of(CLASS_NAMES, name)),
                               ("sources", name.lower()), ("ages", "adult")):
                record[key][side].append(value)
    return record


def test_cli_fits_on_a_tiny_model(tmp_path, capsys, tiny_cnn_factory):
    from covid.model.metadata import ModelFileError, read_metadata
    from covid.model.network import load_model
    from covid.screening.ood import load_detector

    model_path = _tiny_model_file(tmp_path, tiny_cnn_factory)
    assert load_detector(model_path).stats is None  # no statistics yet: cheap checks only
    record = _tiny_dataset(tmp_path / "data")
    model_path.with_suffix(".split.json").write_text(json.dumps(record))  # found by default

    assert main(["--model", str(model_path), "--components", "4", "--max-flag-rate", "0.1",
                 "--max-train", "18"]) == 0
    entry = read_metadata(model_path).extra["ood"]
    assert entry["file"] == "tiny.ood.npz" and (tmp_path / "tiny.ood.npz").is_file()
    assert (entry["n_train"], entry["n_val"], entry["feature_dim"], entry["components"]) == (
        18, 4, 16, 4)
    assert entry["val_flag_rate"] <= 0.1 and "wrote tiny.ood.npz" in capsys.readouterr().err
    # the test split's flag rate per true class, beside the model's other test figures
    assert set(entry["test_flagged"]) == {"COVID", "Normal"}
    assert all(share in (0.0, 0.5, 1.0) for share in entry["test_flagged"].values())
    assert read_metadata(model_path).metrics["ood_flagged"] == entry["test_flagged"]
    load_model(model_path)  # the .keras file is untouched: its SHA-256 still matches

    detector = load_detector(model_path)
    assert detector.threshold == entry["threshold"] and detector.stats.feature_dim == 16

    (tmp_path / "tiny.ood.npz").write_bytes(b"altered")
    with pytest.raises(ModelFileError, match="do not match"):
        load_detector(model_path)


def test_cli_reports_a_missing_split(tmp_path, capsys, tiny_cnn_factory):
    model_path = _tiny_model_file(tmp_path, tiny_cnn_factory)
    status = main(["--model", str(model_path), "--split", str(tmp_path / "none.json")])
    assert status == 1 and capsys.readouterr().err.startswith("error: ")
