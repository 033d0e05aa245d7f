"""Out-of-distribution statistics of a classifier's features: the score and the file.

A Mahalanobis distance on the model's pooled penultimate features (Lee et al.,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018): class means and one shared (tied)
covariance fitted on the training split, the score being the squared distance
to the nearest class mean. The features are first reduced by PCA so that the
statistics file stays small. What PCA leaves out is not ignored: as in
probabilistic PCA (Tipping and Bishop 1999) the covariance is taken as isotropic
in the discarded directions, so the score adds the squared residual over its
mean variance, and an image that differs only there is still flagged.

The statistics are fitted by :mod:`covid.evaluation.ood_fit` (``python -m
covid.fit_ood``), written beside the model (``name.keras`` -> ``name.ood.npz``,
see :func:`write_model_stats`) and recorded in the model's metadata under
``extra["ood"]`` with the file's SHA-256 and the threshold; the ``.keras`` file is
not touched, so its own SHA-256 stays valid. Serving reads them back with
:func:`read_model_stats`; the gates that use them are in ``covid.screening.ood``.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covid.model.metadata import ModelFileError, file_sha256, read_metadata, write_metadata

FORMAT_VERSION = 1
"""Version of the ``.npz`` layout written by :func:`save_ood`."""


class OODFileError(ValueError):
    """A statistics file that is missing, malformed or of another format version."""


@dataclass(frozen=True)
class OODStats:
    """Class-conditional Gaussian statistics of the training features.

    Attributes:
        class_means: (K, d) float32 class means in the reduced space.
        precision: (d, d) float32 inverse of the shared covariance.
        pca_mean: (D,) float32 feature mean subtracted before projecting,
            or None when the features are used as they are (d = D).
        pca_components: (d, D) float32 orthonormal projection rows, or None.
        classes: (K,) int64 class labels, in the order of ``class_means``.
        threshold: Score above which an image is flagged (NaN: not calibrated).
        residual_var: Mean training variance per discarded PCA direction (NaN:
            no PCA, or nothing left out), dividing the squared residual.
    """

    class_means: np.ndarray
    precision: np.ndarray
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None
    classes: np.ndarray | None = None
    threshold: float = math.nan
    residual_var: float = math.nan

    @property
    def feature_dim(self) -> int:
        """D, the feature size the statistics expect."""
        if self.pca_components is not None:
            return int(self.pca_components.shape[1])
        return int(self.class_means.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        """Maps features into the reduced space.

        Args:
            features: (N, D) features.

        Returns:
            (N, d) float64 projected features.

        Raises:
            ValueError: ``features`` is not (N, D).
        """
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"expected (N, {self.feature_dim}) features, got shape {features.shape}"
            )
        return reduce_features(features, self.pca_mean, self.pca_components)


def mahalanobis_score(stats: OODStats, features: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean (higher = stranger).

    With PCA, the squared residual outside the kept components, over
    ``stats.residual_var``, is added (the distance under a probabilistic-PCA
    covariance).

    Args:
        stats: Fitted statistics.
        features: (N, D) features.

    Returns:
        (N,) float64 scores.
    """
    reduced = stats.project(features)
    precision = stats.precision.astype(np.float64)
    scores = []
    for mean in stats.class_means.astype(np.float64):
        diff = reduced - mean
        scores.append(np.einsum("nd,de,ne->n", diff, precision, diff))
    score = np.min(np.stack(scores), axis=0)
    if math.isfinite(stats.residual_var):
        features = np.asarray(features, dtype=np.float64)
        score += residual_sq(features, stats.pca_mean, stats.pca_components) / stats.residual_var
    return score


def reduce_features(
    features: np.ndarray, pca_mean: np.ndarray | None, pca_components: np.ndarray | None
) -> np.ndarray:
    """(N, D) float64 features -> (N, d) through the stored float32 PCA basis."""
    if pca_components is None:
        return features
    return (features - pca_mean.astype(np.float64)) @ pca_components.T.astype(np.float64)


def residual_sq(
    features: np.ndarray, pca_mean: np.ndarray, pca_components: np.ndarray
) -> np.ndarray:
    """(N,) squared norms of what the PCA basis leaves out of (N, D) features."""
    centred = features - pca_mean.astype(np.float64)
    basis = pca_components.astype(np.float64)
    residual = centred - (centred @ basis.T) @ basis
    return np.einsum("nd,nd->n", residual, residual)


# ------------------------------------------------------------------ the file


def ood_path(model_path: str | Path) -> Path:
    """The statistics file beside a model: ``name.keras`` -> ``name.ood.npz``."""
    return Path(model_path).with_suffix(".ood.npz")


def save_ood(stats: OODStats, path: str | Path) -> Path:
    """Writes the statistics as a compressed ``.npz`` (no pickled objects).

    Args:
        stats: The statistics, usually with a calibrated threshold.
        path: Where to write; the ``.npz`` suffix is kept as given.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = np.zeros(0, np.float32)
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            version=np.int64(FORMAT_VERSION),
            class_means=stats.class_means.astype(np.float32),
            precision=stats.precision.astype(np.float32),
            pca_mean=empty if stats.pca_mean is None else stats.pca_mean.astype(np.float32),
            pca_components=(empty if stats.pca_components is None
                            else stats.pca_components.astype(np.float32)),
            classes=(np.arange(len(stats.class_means)) if stats.classes is None
                     else stats.classes).astype(np.int64),
            threshold=np.float64(stats.threshold),
            residual_var=np.float64(stats.residual_var),
        )
    return path


def load_ood(path: str | Path) -> OODStats:
    """Reads statistics written by :func:`save_ood`.

    Args:
        path: The ``.npz`` file.

    Returns:
        The statistics.

    Raises:
        OODFileError: The file is missing, malformed or of another version.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError as err:
        raise OODFileError(f"out-of-distribution statistics not found: {path}") from err
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise OODFileError(f"out-of-distribution statistics unreadable: {path} ({err})") from err
    return _stats_from_arrays(arrays, path)


def write_model_stats(stats: OODStats, model_path: str | Path, details: dict[str, Any]) -> dict:
    """Saves calibrated statistics beside a model and records them in its metadata.

    Args:
        stats: The statistics, with their threshold.
        model_path: The ``.keras`` file (left untouched).
        details: Facts about the fit to keep in the entry (sizes, rates, method).

    Returns:
        The ``extra["ood"]`` entry written: ``file``, ``sha256``, ``threshold``,
        ``feature_dim``, ``components`` and ``details``.
    """
    out = save_ood(stats, ood_path(model_path))
    entry = {"file": out.name, "sha256": file_sha256(out), "threshold": stats.threshold,
             "feature_dim": stats.feature_dim, "components": int(stats.class_means.shape[1]),
             **details}
    metadata = read_metadata(model_path)
    metadata.extra["ood"] = entry
    write_metadata(metadata, model_path)
    return entry


def read_model_stats(model_path: str | Path) -> OODStats | None:
    """The statistics a model's metadata names, verified, with the recorded threshold.

    Args:
        model_path: The ``.keras`` file, with its metadata JSON beside it.

    Returns:
        The statistics, or None when the model ships none.

    Raises:
        ModelFileError: The metadata is missing or malformed, or the statistics
            file it names is missing, altered or unreadable.
    """
    entry = read_metadata(model_path).extra.get("ood")
    if not entry:
        return None
    path = Path(model_path).parent / str(entry.get("file", ""))
    if entry.get("sha256") and path.is_file() and file_sha256(path) != entry["sha256"]:
        raise ModelFileError(f"out-of-distribution statistics {path} do not match the metadata")
    try:
        stats = load_ood(path)
    except OODFileError as err:
        raise ModelFileError(str(err)) from err
    return dataclasses.replace(stats, threshold=float(entry.get("threshold", stats.threshold)))


def _stats_from_arrays(arrays: dict[str, np.ndarray], path: Path) -> OODStats:
    """Builds and validates statistics from the arrays of an ``.npz`` file."""
    required = {"version", "class_means", "precision", "pca_mean", "pca_components",
                "classes", "threshold", "residual_var"}
    if missing := required - arrays.keys():
        raise OODFileError(f"out-of-distribution statistics {path} lack {sorted(missing)}")
    if int(arrays["version"]) != FORMAT_VERSION:
        raise OODFileError(f"out-of-distribution statistics {path} are of another version "
                           f"({int(arrays['version'])}, expected {FORMAT_VERSION})")
    means, precision = arrays["class_means"], arrays["precision"]
    components = arrays["pca_components"] if arrays["pca_components"].size else None
    pca_mean = arrays["pca_mean"] if arrays["pca_mean"].size else None
    d = means.shape[1] if means.ndim == 2 else -1
    consistent = (precision.shape == (d, d) and (components is None) == (pca_mean is None)
                  and (components is None or (components.ndim == 2 and components.shape[0] == d
                                              and pca_mean.shape == (components.shape[1],))))
    if not consistent:
        raise OODFileError(f"out-of-distribution statistics {path} have inconsistent shapes")
    return OODStats(means, precision, pca_mean, components, arrays["classes"],
                    float(arrays["threshold"]), float(arrays["residual_var"]))
