"""Out-of-distribution gate: is this image like the chest X-rays the model knows?

Two layers:

* Cheap checks on the decoded pixels (:func:`cheap_checks`): a colour image, a
  shape far from a chest film, a nearly blank image.
* A Mahalanobis distance on the model's pooled penultimate features (Lee et al.,
  "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
  Adversarial Attacks", NeurIPS 2018): class means and one shared (tied)
  covariance fitted on the training split, the score being the squared distance
  to the nearest class mean. The 2048-D ResNet-50 features are first reduced by
  PCA (128 dimensions by default) so that the statistics file stays near 1 MB,
  and the covariance is Ledoit-Wolf shrunk so that its inverse is well
  conditioned. What PCA leaves out is not ignored: as in probabilistic PCA
  (Tipping and Bishop 1999) the covariance is taken as isotropic in the
  discarded directions, so the score adds the squared residual over its mean
  variance, and an image that differs only there is still flagged. The
  threshold is the 98th percentile of the validation split's scores: about 2% of
  in-distribution X-rays are flagged.

``python -m covid.screening.ood --model models/covid_resnet50.keras`` fits the statistics
and writes them beside the model (``covid_resnet50.ood.npz``), recording the file
name, its SHA-256 and the threshold in the model's metadata JSON under
``extra["ood"]`` (the ``.keras`` file is not touched, so its SHA-256 stays valid).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from covid.inputs.decode import DecodedImage

DEFAULT_COMPONENTS = 128
"""PCA dimensions kept from the features (a 128 x 2048 float32 basis is 1 MB)."""

DEFAULT_MAX_FLAG_RATE = 0.02
"""Share of in-distribution (validation) X-rays the threshold may flag."""

ASPECT_RANGE = (0.5, 2.0)
"""Accepted width / height: chest films are roughly square (14 x 17 in, 17 x 14 in)."""

MIN_STD = 6.0
"""Smallest pixel standard deviation (0-255) of a real film. The 13,156 shared
training X-rays have 14.1 at least; a blank or near-uniform image has far less."""

_FORMAT_VERSION = 1
_DEFAULT_SPLIT = Path("runs/main/split.json")


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
        return _reduce(features, self.pca_mean, self.pca_components)


@dataclass(frozen=True)
class OODResult:
    """The verdict on one image.

    Attributes:
        flagged: Whether the image looks unlike the training X-rays.
        score: Mahalanobis score (NaN when no statistics or features were used).
        reason: Why it was flagged, in plain words; None when not flagged.
    """

    flagged: bool
    score: float
    reason: str | None = None


def fit_ood(
    features: np.ndarray,
    labels: np.ndarray,
    n_components: int | None = DEFAULT_COMPONENTS,
    seed: int = 0,
) -> OODStats:
    """Fits class means and a shared, shrunk covariance (Lee et al. 2018).

    Args:
        features: (N, D) training features.
        labels: (N,) integer class labels.
        n_components: PCA dimensions to keep; None (or >= D) keeps all.
        seed: Seed of the randomised PCA solver.

    Returns:
        The statistics, not yet calibrated (``threshold`` is NaN).

    Raises:
        ValueError: Shapes disagree, values are not finite, or fewer than two samples.
    """
    features, labels = _check_training_data(features, labels)
    pca_mean = pca_components = None
    keep = min(n_components or features.shape[1], features.shape[0], features.shape[1])
    if keep < features.shape[1]:
        pca = PCA(n_components=keep, random_state=seed).fit(features)
        pca_mean = pca.mean_.astype(np.float32)
        pca_components = pca.components_.astype(np.float32)
    reduced = _reduce(features, pca_mean, pca_components)
    residual_var = _residual_var(features, pca_mean, pca_components)
    classes = np.unique(labels)
    means = np.stack([reduced[labels == c].mean(axis=0) for c in classes])
    centred = reduced - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return OODStats(
        class_means=means.astype(np.float32), precision=precision.astype(np.float32),
        pca_mean=pca_mean, pca_components=pca_components, classes=classes.astype(np.int64),
        residual_var=residual_var,
    )


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
        score += _residual_sq(features, stats.pca_mean, stats.pca_components) / stats.residual_var
    return score


def calibrate_threshold(
    stats: OODStats, val_features: np.ndarray, max_flag_rate: float = DEFAULT_MAX_FLAG_RATE
) -> float:
    """The score threshold that flags at most ``max_flag_rate`` of validation images.

    Images are flagged when their score is strictly above the threshold, and the
    threshold is a validation score (the ``1 - max_flag_rate`` quantile, rounded
    up), so at most that share of the validation images is flagged.

    Args:
        stats: Fitted statistics.
        val_features: (M, D) features of in-distribution images not used to fit.
        max_flag_rate: Share of them that may be flagged, in (0, 1).

    Returns:
        The threshold.

    Raises:
        ValueError: ``max_flag_rate`` is outside (0, 1) or there are no features.
    """
    return _quantile_threshold(mahalanobis_score(stats, val_features), max_flag_rate)


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
            version=np.int64(_FORMAT_VERSION),
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


def cheap_checks(decoded: DecodedImage) -> str | None:
    """Pixel-level reasons an image cannot be a chest X-ray.

    Args:
        decoded: The decoded image ((H, W) uint8 pixels and its colour flag).

    Returns:
        The reason in plain words, or None when nothing is wrong.
    """
    if decoded.is_color:
        return "it is a colour image; chest X-rays are grey."
    height, width = decoded.pixels.shape[:2]
    aspect = width / height
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return (f"its shape ({width} x {height} pixels) is far from a chest film's "
                "(roughly square).")
    step = max(1, max(height, width) // 512)
    if float(decoded.pixels[::step, ::step].std()) < MIN_STD:
        return "it is nearly blank (almost no contrast)."
    return None


NON_CHEST_MODALITIES = {"CT": "CT", "MR": "MR", "US": "ultrasound", "NM": "nuclear medicine",
                        "PT": "PET"}
"""DICOM Modality values that are never a chest radiograph, with plain names."""

CHEST_BODY_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "TORAX", "PORT CHEST", "CHEST PA",
    "CHEST AP", "PECHO", "THORAX PA",
})
"""BodyPartExamined values accepted as a chest (upper-cased)."""


def dicom_tag_problem(info: dict[str, str]) -> str | None:
    """Why a DICOM's own tags say it is not a chest radiograph, or None.

    Args:
        info: The safe DICOM fields of a decoded image (empty for PNG and JPEG).

    Returns:
        A reason naming the tag and its value, or None.
    """
    modality = info.get("Modality", "").strip().upper()
    if modality in NON_CHEST_MODALITIES:
        return (f"its DICOM tag Modality is {modality} ({NON_CHEST_MODALITIES[modality]}), "
                "not a radiograph.")
    part = info.get("BodyPartExamined", "").strip().upper()
    if part and part not in CHEST_BODY_PARTS:
        return f"its DICOM tag BodyPartExamined is {part}, not the chest."
    return None


def lung_problem(lungs: Any) -> str | None:
    """Why the segmented lung fields are implausible, or None (also when no segmenter ran).

    Args:
        lungs: A :class:`covid.model.lungs.LungSegmentation`, or None.
    """
    if lungs is None or lungs.problem is None:
        return None
    return f"no plausible pair of lung fields: {lungs.problem}."


class OODDetector:
    """Flags images unlike the training X-rays: cheap checks, then Mahalanobis.

    Attributes:
        stats: Fitted statistics, or None for the cheap checks only.
        threshold: Scores above it are flagged (NaN: never flagged by score).
    """

    def __init__(self, stats: OODStats | None = None, threshold: float | None = None) -> None:
        self.stats = stats
        if threshold is None:
            threshold = stats.threshold if stats is not None else math.nan
        self.threshold = float(threshold)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis scores of a batch.

        Args:
            features: (N, D) features.

        Returns:
            (N,) float64 scores, NaN when the detector has no statistics.
        """
        features = np.asarray(features)
        if self.stats is None:
            return np.full(len(features), math.nan)
        return mahalanobis_score(self.stats, features)

    def assess(
        self, decoded: DecodedImage, features: np.ndarray | None, lungs: Any = None
    ) -> OODResult:
        """Judges one image: DICOM tags, cheap pixel checks, lung fields, then features.

        Args:
            decoded: The decoded image.
            features: (D,) pooled features of the image, or None.
            lungs: Its :class:`covid.model.lungs.LungSegmentation`, or None.

        Returns:
            Flagged with the first reason found, or not flagged.
        """
        score = math.nan
        if features is not None and self.stats is not None:
            score = float(self.score(np.asarray(features).reshape(1, -1))[0])
        reason = dicom_tag_problem(decoded.info) or cheap_checks(decoded) or lung_problem(lungs)
        if reason is None and score > self.threshold:  # False when either is NaN
            reason = ("it does not look like the chest X-rays the model was trained on "
                      f"(feature distance {score:.0f}, above the limit {self.threshold:.0f}).")
        return OODResult(flagged=reason is not None, score=score, reason=reason)


def ood_path(model_path: str | Path) -> Path:
    """The statistics file beside a model: ``name.keras`` -> ``name.ood.npz``."""
    return Path(model_path).with_suffix(".ood.npz")


def load_detector(model_path: str | Path) -> OODDetector:
    """The detector for a model, from the ``extra["ood"]`` entry of its metadata.

    Args:
        model_path: The ``.keras`` file, with its metadata JSON beside it.

    Returns:
        The detector; with the cheap checks only when the model has no statistics.

    Raises:
        covid.model.classifier.ModelFileError: The metadata is missing or malformed, or the
            statistics file it names is missing, altered or unreadable.
    """
    from covid.model.classifier import ModelFileError, read_metadata

    entry = read_metadata(model_path).extra.get("ood")
    if not entry:
        return OODDetector()
    path = Path(model_path).parent / str(entry.get("file", ""))
    if entry.get("sha256") and path.is_file() and _sha256(path) != entry["sha256"]:
        raise ModelFileError(f"out-of-distribution statistics {path} do not match the metadata")
    try:
        stats = load_ood(path)
    except OODFileError as err:
        raise ModelFileError(str(err)) from err
    return OODDetector(stats, threshold=entry.get("threshold", stats.threshold))


def main(argv: Sequence[str] | None = None) -> int:
    """Fits and records a model's out-of-distribution statistics.

    Args:
        argv: Command-line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 with a message on stderr.
    """
    args = _parse_args(argv)
    from covid.inputs.decode import ImageDecodeError
    from covid.model.classifier import ModelFileError

    try:
        entry = fit_for_model(args)
    except (ModelFileError, ImageDecodeError, OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {entry['file']}: threshold {entry['threshold']:.1f}, "
          f"{entry['val_flag_rate']:.1%} of validation images flagged", file=sys.stderr)
    return 0


def fit_for_model(args: argparse.Namespace) -> dict:
    """Fits the statistics on the training split, calibrates on validation, saves.

    Args:
        args: Parsed arguments (see :func:`_parse_args`).

    Returns:
        The ``extra["ood"]`` entry written to the model's metadata.
    """
    from covid.explain.inference import Classifier
    from covid.model.classifier import read_metadata, write_metadata

    classifier = Classifier.from_file(args.model, batch_size=args.batch_size)
    split_file = args.split or _default_split(args.model)
    record = json.loads(Path(split_file).read_text())
    root = Path(args.data_root or record["root"])
    names = classifier.metadata.class_names
    train_paths, train_labels = _split_files(record, "train", root, names)
    if args.max_train and len(train_paths) > args.max_train:
        keep = np.sort(np.random.default_rng(args.seed).choice(
            len(train_paths), args.max_train, replace=False))
        train_paths, train_labels = [train_paths[i] for i in keep], train_labels[keep]
    val_paths, _ = _split_files(record, "val", root, names)
    segmenter = None
    if classifier.metadata.input_mode != "full":
        from covid.model.lungs import LungSegmenter

        segmenter = LungSegmenter.from_file(args.lung_model)
    stats = fit_ood(_features(classifier, train_paths, segmenter), train_labels,
                    n_components=args.components, seed=args.seed)
    val_scores = mahalanobis_score(stats, _features(classifier, val_paths, segmenter))
    threshold = _quantile_threshold(val_scores, args.max_flag_rate)
    out = save_ood(dataclasses.replace(stats, threshold=threshold), ood_path(args.model))
    entry = {
        "file": out.name, "sha256": _sha256(out), "threshold": threshold,
        "method": "Mahalanobis, tied Ledoit-Wolf covariance, PCA (Lee et al. 2018)",
        "feature_dim": stats.feature_dim, "components": int(stats.class_means.shape[1]),
        "n_train": len(train_paths), "n_val": len(val_paths),
        "max_flag_rate": args.max_flag_rate,
        "val_flag_rate": float(np.mean(val_scores > threshold)),
        "split": str(split_file),
    }
    metadata = read_metadata(args.model)
    metadata.extra["ood"] = entry
    write_metadata(metadata, args.model)
    return entry


def _features(classifier, paths: list[Path], segmenter=None, chunk: int = 256) -> np.ndarray:
    """(N, D) pooled features of image files, decoded and focused exactly as served."""
    from covid.training.lung_data import focused_dataset

    meta = classifier.metadata
    parts = [np.zeros((0, classifier.n_features), np.float32)]
    for start in range(0, len(paths), chunk):
        focused = focused_dataset(tuple(paths[start : start + chunk]), meta.input_size,
                                  meta.input_mode, segmenter, cache_dir=None)
        parts.append(classifier.features_batch(focused.x.astype(np.float32)))
    return np.concatenate(parts)


def _split_files(
    record: dict, side: str, root: Path, class_names: list[str]
) -> tuple[list[Path], np.ndarray]:
    """One side of a split file: paths under ``root`` and labels from the class folder."""
    index = {name.lower(): i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for relative in record["files"][side]:
        folder = Path(relative).parts[0].lower()
        if folder not in index:
            raise ValueError(f"{relative}: its folder is not one of the classes {class_names}")
        paths.append(root / relative)
        labels.append(index[folder])
    if not paths:
        raise ValueError(f"the split has no {side} images")
    return paths, np.asarray(labels, dtype=np.int64)


def _default_split(model_path: Path) -> Path:
    """The split copied beside the model, else the training run's."""
    beside = Path(model_path).with_suffix(".split.json")
    return beside if beside.is_file() else _DEFAULT_SPLIT


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m covid.screening.ood",
        description="Fit a model's out-of-distribution (Mahalanobis) statistics.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the .keras model file")
    parser.add_argument("--split", type=Path, default=None,
                        help="split JSON from covid.training.train (default: NAME.split.json "
                             f"beside the model, else {_DEFAULT_SPLIT})")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="dataset folder (default: the split file's root)")
    parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS,
                        help="PCA dimensions kept (0: all)")
    parser.add_argument("--max-flag-rate", type=float, default=DEFAULT_MAX_FLAG_RATE,
                        help="share of validation X-rays the threshold may flag")
    parser.add_argument("--max-train", type=int, default=0,
                        help="fit on a random subset of this many training images (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lung-model", type=Path, default=Path("models/lung_unet.keras"),
                        help="the lung segmenter (for lung-focused classifiers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.max_flag_rate < 1:
        parser.error("--max-flag-rate must be in (0, 1)")
    return args


def _reduce(
    features: np.ndarray, pca_mean: np.ndarray | None, pca_components: np.ndarray | None
) -> np.ndarray:
    """(N, D) float64 features -> (N, d) through the stored float32 PCA basis."""
    if pca_components is None:
        return features
    return (features - pca_mean.astype(np.float64)) @ pca_components.T.astype(np.float64)


def _residual_sq(
    features: np.ndarray, pca_mean: np.ndarray, pca_components: np.ndarray
) -> np.ndarray:
    """(N,) squared norms of what the PCA basis leaves out of (N, D) features."""
    centred = features - pca_mean.astype(np.float64)
    basis = pca_components.astype(np.float64)
    residual = centred - (centred @ basis.T) @ basis
    return np.einsum("nd,nd->n", residual, residual)


def _residual_var(
    features: np.ndarray, pca_mean: np.ndarray | None, pca_components: np.ndarray | None
) -> float:
    """Mean training variance per discarded direction; NaN when there is none."""
    if pca_components is None:
        return math.nan
    dims_left = features.shape[1] - pca_components.shape[0]
    mean_sq = float(_residual_sq(features, pca_mean, pca_components).mean())
    total = float(features.var(axis=0).sum())
    if dims_left <= 0 or mean_sq <= 1e-9 * total:
        return math.nan  # the basis spans the training data: nothing to weigh
    return mean_sq / dims_left


def _quantile_threshold(scores: np.ndarray, max_flag_rate: float) -> float:
    """The ``1 - max_flag_rate`` quantile of the scores, rounded up to a score."""
    if not 0 < max_flag_rate < 1:
        raise ValueError(f"max_flag_rate must be in (0, 1), got {max_flag_rate}")
    if scores.size == 0:
        raise ValueError("no validation features to calibrate on")
    return float(np.quantile(scores, 1 - max_flag_rate, method="higher"))


def _check_training_data(
    features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validates (N, D) finite features and (N,) labels; returns them as float64 and int."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"expected (N, D) features and (N,) labels, got {features.shape} "
                         f"and {labels.shape}")
    if len(features) < 2:
        raise ValueError("need at least two training samples")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features, labels


def _stats_from_arrays(arrays: dict[str, np.ndarray], path: Path) -> OODStats:
    """Builds and validates statistics from the arrays of an ``.npz`` file."""
    required = {"version", "class_means", "precision", "pca_mean", "pca_components",
                "classes", "threshold", "residual_var"}
    if missing := required - arrays.keys():
        raise OODFileError(f"out-of-distribution statistics {path} lack {sorted(missing)}")
    if int(arrays["version"]) != _FORMAT_VERSION:
        raise OODFileError(f"out-of-distribution statistics {path} are of another version "
                           f"({int(arrays['version'])}, expected {_FORMAT_VERSION})")
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
