"""Fits a model's out-of-distribution statistics on its training split.

Usage::

    python -m covid.fit_ood --max-train 3000      # the shipped model (or --model FILE)

The last step of shipping a model (train -> evaluate -> OOD statistics): the
training films' pooled features, decoded and focused exactly as served, give the
class means and one shared covariance (see :mod:`covid.model.ood_stats` for the
score). The features are reduced by PCA (:data:`DEFAULT_COMPONENTS` dimensions,
a 1 MB basis) and the covariance is Ledoit-Wolf shrunk so that its inverse is
well conditioned. The threshold is a high quantile of the validation split's
scores, so that at most :data:`DEFAULT_MAX_FLAG_RATE` of in-distribution X-rays
are flagged. The statistics are written beside the model and recorded in its
metadata (:func:`covid.model.ood_stats.write_model_stats`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from covid.evaluation.artefacts import default_split
from covid.evaluation.metrics import flagged_by_class
from covid.evaluation.scoring import split_side, true_names
from covid.flags import add_batch_size, add_data, add_model_flags
from covid.inputs.decode import ImageDecodeError
from covid.model.metadata import ModelFileError, read_metadata, write_metadata
from covid.model.ood_stats import (
    OODStats,
    mahalanobis_score,
    reduce_features,
    residual_sq,
    write_model_stats,
)
from covid.training.catalogue import Catalogue

LOG = logging.getLogger(__name__)

DEFAULT_COMPONENTS = 128
"""PCA dimensions kept from the features (a 128 x 2048 float32 basis is 1 MB)."""

DEFAULT_MAX_FLAG_RATE = 0.02
"""Share of in-distribution (validation) X-rays the threshold may flag."""

METHOD = "Mahalanobis, tied Ledoit-Wolf covariance, PCA (Lee et al. 2018)"


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
    reduced = reduce_features(features, pca_mean, pca_components)
    classes = np.unique(labels)
    means = np.stack([reduced[labels == c].mean(axis=0) for c in classes])
    centred = reduced - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return OODStats(
        class_means=means.astype(np.float32), precision=precision.astype(np.float32),
        pca_mean=pca_mean, pca_components=pca_components, classes=classes.astype(np.int64),
        residual_var=_residual_var(features, pca_mean, pca_components),
    )


def quantile_threshold(scores: np.ndarray, max_flag_rate: float) -> float:
    """The score threshold that flags at most ``max_flag_rate`` of these scores.

    Images are flagged when their score is strictly above the threshold, and the
    threshold is one of the scores (the ``1 - max_flag_rate`` quantile, rounded
    up), so at most that share of them is flagged.

    Args:
        scores: (M,) scores of in-distribution images not used to fit.
        max_flag_rate: Share of them that may be flagged, in (0, 1).

    Returns:
        The threshold.

    Raises:
        ValueError: ``max_flag_rate`` is outside (0, 1) or there are no scores.
    """
    if not 0 < max_flag_rate < 1:
        raise ValueError(f"max_flag_rate must be in (0, 1), got {max_flag_rate}")
    if scores.size == 0:
        raise ValueError("no validation features to calibrate on")
    return float(np.quantile(scores, 1 - max_flag_rate, method="higher"))


def fit_for_model(args: argparse.Namespace) -> dict:
    """Fits the statistics on the training split, calibrates on validation, saves.

    Args:
        args: Parsed arguments (see :func:`parse_args`).

    Returns:
        The ``extra["ood"]`` entry written to the model's metadata.
    """
    from covid.explain.loading import load_verified

    loaded = load_verified(args.model, args.lung_model, batch_size=args.batch_size)
    classifier = loaded.classifier
    # Served inputs: a whole-film classifier's features never see the lungs.
    segmenter = loaded.segmenter if classifier.metadata.input_mode != "full" else None
    split_file = args.split or default_split(args.model)
    train, val = _sides(split_file, args.data, args.max_train, args.seed)
    stats = fit_ood(features_of(classifier, train.paths, segmenter), train.labels,
                    n_components=args.components, seed=args.seed)
    val_scores = mahalanobis_score(stats, features_of(classifier, val.paths, segmenter))
    threshold = quantile_threshold(val_scores, args.max_flag_rate)
    test = split_side(json.loads(Path(split_file).read_text()), "test", args.data)
    test_flagged = flagged_by_class(
        mahalanobis_score(stats, features_of(classifier, test.paths, segmenter)) > threshold,
        true_names(test)) if test.names else {}
    entry = write_model_stats(dataclasses.replace(stats, threshold=threshold), args.model, {
        "method": METHOD, "n_train": len(train.names), "n_val": len(val.names),
        "max_flag_rate": args.max_flag_rate,
        "val_flag_rate": float(np.mean(val_scores > threshold)), "split": str(split_file),
        "test_flagged": test_flagged,
    })
    if test_flagged:  # beside the other test figures, as the evaluation would record it
        meta = read_metadata(args.model)
        meta.metrics["ood_flagged"] = test_flagged
        write_metadata(meta, args.model)
    return entry


def features_of(classifier, paths: Sequence[Path], segmenter=None, chunk: int = 256) -> np.ndarray:
    """(N, D) pooled features of image files, decoded and focused exactly as served."""
    from covid.training.lung_data import focused_dataset

    meta = classifier.metadata
    parts = [np.zeros((0, classifier.n_features), np.float32)]
    for start in range(0, len(paths), chunk):
        focused = focused_dataset(tuple(paths[start : start + chunk]), meta.input_size,
                                  meta.input_mode, segmenter, cache_dir=None,
                                  contrast=meta.input_contrast)
        parts.append(classifier.features_batch(focused.x.astype(np.float32)))
        LOG.info("features of %d/%d films", min(start + chunk, len(paths)), len(paths))
    return np.concatenate(parts)


def _sides(
    split_file: Path, root: Path | None, max_train: int, seed: int
) -> tuple[Catalogue, Catalogue]:
    """The training films (a random subset of ``max_train`` when set) and the validation films.

    Each film's label is its catalogue class; the statistics need groups, not
    the model's output order, so a class the model lacks is a group of its own.
    """
    record = json.loads(Path(split_file).read_text())
    train, val = (split_side(record, side, root) for side in ("train", "val"))
    for side, films in (("train", train), ("val", val)):
        if not films.names:
            raise ValueError(f"the split {split_file} has no {side} images")
    if max_train and len(train.names) > max_train:
        keep = np.random.default_rng(seed).choice(len(train.names), max_train, replace=False)
        train = train.subset(np.sort(keep))
    return train, val


def _residual_var(
    features: np.ndarray, pca_mean: np.ndarray | None, pca_components: np.ndarray | None
) -> float:
    """Mean training variance per discarded direction; NaN when there is none."""
    if pca_components is None:
        return math.nan
    dims_left = features.shape[1] - pca_components.shape[0]
    mean_sq = float(residual_sq(features, pca_mean, pca_components).mean())
    total = float(features.var(axis=0).sum())
    if dims_left <= 0 or mean_sq <= 1e-9 * total:
        return math.nan  # the basis spans the training data: nothing to weigh
    return mean_sq / dims_left


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.max_flag_rate < 1:
        parser.error("--max-flag-rate must be in (0, 1)")
    return args


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (its shared flags are :mod:`covid.flags`')."""
    parser = argparse.ArgumentParser(
        prog="python -m covid.fit_ood",
        description="Fit a model's out-of-distribution (Mahalanobis) statistics.",
    )
    add_model_flags(parser, opacity=False)
    parser.add_argument("--split", type=Path, default=None,
                        help="split JSON from python -m covid.train (default: NAME.split.json "
                             "beside the model, else split.json in its folder)")
    add_data(parser)
    parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS,
                        help="PCA dimensions kept (0: all)")
    parser.add_argument("--max-flag-rate", type=float, default=DEFAULT_MAX_FLAG_RATE,
                        help="share of validation X-rays the threshold may flag")
    parser.add_argument("--max-train", type=int, default=0,
                        help="fit on a random subset of this many training images (0: all)")
    add_batch_size(parser, 32)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Fits and records a model's out-of-distribution statistics.

    Args:
        argv: Command-line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 with a message on stderr.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        entry = fit_for_model(args)
    except (ModelFileError, ImageDecodeError, OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {entry['file']}: threshold {entry['threshold']:.1f}, "
          f"{entry['val_flag_rate']:.1%} of validation images flagged", file=sys.stderr)
    return 0
