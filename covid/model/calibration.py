"""Temperature scaling, calibration error and the operating threshold.

All fitted on the validation split, never on test (Guo et al., 2017).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from covid.model.classes import NORMAL


def calibrated_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of temperature-scaled logits.

    Args:
        logits: (N, C) raw logits.
        temperature: Positive temperature dividing the logits.

    Returns:
        (N, C) float32 probabilities; each row sums to 1.

    Raises:
        ValueError: ``temperature`` is not positive.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(np.asarray(logits, np.float64) / temperature, axis=-1).astype(np.float32)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_p = log_softmax(logits / temperature, axis=-1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Finds the temperature that minimises the negative log-likelihood.

    Args:
        logits: (N, C) validation logits.
        labels: (N,) validation class indices.

    Returns:
        The temperature, in [0.05, 20].
    """
    logits = np.asarray(logits, np.float64)
    result = minimize_scalar(
        lambda log_t: _nll(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Args:
        probs: (N, C) probabilities.
        labels: (N,) true class indices.
        n_bins: Number of confidence bins over [0, 1].

    Returns:
        The ECE: the bin-size-weighted mean gap between confidence and accuracy.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(ece)


def reliability_curve(
    p_positive: np.ndarray, is_positive: np.ndarray, n_bins: int = 10
) -> dict[str, list[float]]:
    """Observed positive rate against mean predicted probability, per bin.

    Args:
        p_positive: (N,) predicted positive-class probabilities.
        is_positive: (N,) booleans, true for the positive class.
        n_bins: Number of equal-width bins.

    Returns:
        ``{"predicted", "observed", "count"}`` lists over non-empty bins.
    """
    bins = np.minimum((p_positive * n_bins).astype(int), n_bins - 1)
    curve: dict[str, list[float]] = {"predicted": [], "observed": [], "count": []}
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            curve["predicted"].append(float(p_positive[in_bin].mean()))
            curve["observed"].append(float(is_positive[in_bin].mean()))
            curve["count"].append(float(in_bin.sum()))
    return curve


def choose_threshold(
    p_positive: np.ndarray, is_positive: np.ndarray, min_sensitivity: float = 0.98
) -> float:
    """The highest threshold whose sensitivity still reaches ``min_sensitivity``.

    A screening tool must not miss disease, so the operating point first keeps
    sensitivity and then gives as much specificity as it can.

    Args:
        p_positive: (N,) validation positive-class probabilities.
        is_positive: (N,) booleans, true for the positive class.
        min_sensitivity: Required sensitivity on the validation split.

    Returns:
        The threshold: predict positive when ``p >= threshold``.

    Raises:
        ValueError: There are no positive cases.
    """
    positives = np.sort(p_positive[is_positive.astype(bool)])
    if len(positives) == 0:
        raise ValueError("cannot choose a threshold without positive cases")
    allowed_misses = int(np.floor((1.0 - min_sensitivity) * len(positives) + 1e-9))
    return float(positives[allowed_misses])


def choose_finding_threshold(p_finding: np.ndarray, true_names: np.ndarray,
                             min_sensitivity: float = 0.98) -> float:
    """The highest threshold on P(any finding) that admits enough of *every* finding.

    Pooling the findings would let an easy class (COVID-19) carry a hard one
    (other pneumonias): each finding class must itself keep ``min_sensitivity``.

    Args:
        p_finding: (N,) validation probabilities of any finding.
        true_names: (N,) true class names.
        min_sensitivity: Share of each finding's films that must be admitted.

    Returns:
        The threshold: admit when ``p >= threshold``.

    Raises:
        ValueError: There are no films with a finding.
    """
    true_names = np.asarray(true_names)
    findings = [n for n in np.unique(true_names) if n != NORMAL]
    if not findings:
        raise ValueError("cannot choose a threshold without films with a finding")
    return min(choose_threshold(p_finding, true_names == n, min_sensitivity) for n in findings)
