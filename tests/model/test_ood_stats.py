"""Out-of-distribution statistics: the Mahalanobis score, the ``.npz`` file and its record."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from covid.model.metadata import ModelFileError, read_metadata
from covid.model.ood_stats import (
    OODFileError,
    OODStats,
    load_ood,
    mahalanobis_score,
    ood_path,
    read_model_stats,
    save_ood,
    write_model_stats,
)

D, K = 12, 4  # feature size, kept PCA dimensions


@pytest.fixture(scope="module")
def stats() -> OODStats:
    """Hand-made statistics: two class means, an SPD precision and an orthonormal basis."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(D, K)))[0].T  # (K, D) orthonormal rows
    half = rng.normal(size=(K, K))
    return OODStats(
        class_means=rng.normal(size=(2, K)).astype(np.float32),
        precision=(half @ half.T + np.eye(K)).astype(np.float32),
        pca_mean=rng.normal(size=D).astype(np.float32),
        pca_components=basis.astype(np.float32),
        classes=np.array([0, 2]), threshold=7.5, residual_var=0.5,
    )


def _by_hand(stats: OODStats, x: np.ndarray) -> np.ndarray:
    centred = x - stats.pca_mean.astype(np.float64)
    basis = stats.pca_components.astype(np.float64)
    reduced = centred @ basis.T
    residual = centred - reduced @ basis
    precision = stats.precision.astype(np.float64)
    nearest = np.min([np.einsum("nd,de,ne->n", reduced - m, precision, reduced - m)
                      for m in stats.class_means.astype(np.float64)], axis=0)
    return nearest + (residual**2).sum(axis=1) / stats.residual_var


def test_the_score_is_the_nearest_class_distance_plus_the_weighed_residual(stats):
    x = np.random.default_rng(1).normal(size=(6, D))
    np.testing.assert_allclose(mahalanobis_score(stats, x), _by_hand(stats, x), rtol=1e-6)
    without_residual = dataclasses.replace(stats, residual_var=math.nan)
    assert np.all(mahalanobis_score(without_residual, x) < mahalanobis_score(stats, x))
    with pytest.raises(ValueError, match=rf"\(N, {D}\)"):
        mahalanobis_score(stats, np.zeros((2, D + 1)))


def test_save_load_round_trip(stats, tmp_path):
    loaded = load_ood(save_ood(stats, tmp_path / "m.ood.npz"))
    assert loaded.threshold == stats.threshold and loaded.residual_var == stats.residual_var
    for name in ("class_means", "precision", "pca_mean", "pca_components", "classes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
    x = np.random.default_rng(2).normal(size=(5, D))
    np.testing.assert_array_equal(mahalanobis_score(loaded, x), mahalanobis_score(stats, x))


def test_statistics_without_pca_round_trip(tmp_path):
    plain = OODStats(np.zeros((2, 3), np.float32), np.eye(3, dtype=np.float32))
    loaded = load_ood(save_ood(plain, tmp_path / "plain.ood.npz"))
    assert loaded.pca_components is None and loaded.pca_mean is None
    assert loaded.feature_dim == 3 and list(loaded.classes) == [0, 1]


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"), (b"not a zip", "unreadable")])
def test_bad_statistics_files(tmp_path, content, message):
    path = tmp_path / "x.ood.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OODFileError, match=message):
        load_ood(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"version": np.int64(99)}, "another version"),
    ({"precision": np.eye(K + 1, dtype=np.float32)}, "inconsistent shapes"),
])
def test_another_version_or_inconsistent_shapes_are_refused(stats, tmp_path, change, message):
    path = save_ood(stats, tmp_path / "x.ood.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    np.savez(path, **{**arrays, **change})
    with pytest.raises(OODFileError, match=message):
        load_ood(path)


def test_ood_path():
    assert ood_path("models/covid_resnet50.keras") == Path("models/covid_resnet50.ood.npz")


def test_the_record_in_the_metadata_names_and_verifies_the_file(stats, tiny_model_file, tmp_path):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copyfile(tiny_model_file, model)
    shutil.copyfile(tiny_model_file.with_suffix(".json"), model.with_suffix(".json"))
    assert read_model_stats(model) is None  # no statistics shipped

    entry = write_model_stats(stats, model, {"n_train": 3})
    assert read_metadata(model).extra["ood"] == entry
    assert (entry["file"], entry["threshold"], entry["n_train"]) == ("m.ood.npz", 7.5, 3)
    assert (entry["feature_dim"], entry["components"]) == (D, K)
    assert read_model_stats(model).threshold == 7.5

    ood_path(model).write_bytes(b"altered")
    with pytest.raises(ModelFileError, match="do not match"):
        read_model_stats(model)
    ood_path(model).unlink()
    with pytest.raises(ModelFileError, match="not found"):
        read_model_stats(model)
