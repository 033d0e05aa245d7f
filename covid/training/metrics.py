"""Screening metrics: ROC AUC with a bootstrap CI, and operating-point statistics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def auc_with_ci(
    scores: np.ndarray,
    is_positive: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """ROC AUC with a percentile bootstrap confidence interval.

    Args:
        scores: (N,) positive-class scores.
        is_positive: (N,) booleans, true for the positive class.
        n_boot: Bootstrap resamples.
        level: Confidence level of the interval.
        seed: Resampling seed.

    Returns:
        (AUC, lower bound, upper bound).
    """
    is_positive = np.asarray(is_positive, bool)
    auc = float(roc_auc_score(is_positive, scores))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(scores), len(scores))
        if is_positive[idx].all() or not is_positive[idx].any():
            continue
        boots.append(roc_auc_score(is_positive[idx], scores[idx]))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boots, [tail, 100 - tail])
    return auc, float(low), float(high)


def operating_point(
    scores: np.ndarray,
    is_positive: np.ndarray,
    threshold: float,
    prevalence: float | None = None,
) -> dict[str, float | int | None]:
    """Confusion counts and rates at a threshold (positive when ``score >= threshold``).

    Args:
        scores: (N,) positive-class scores.
        is_positive: (N,) booleans, true for the positive class.
        threshold: The operating threshold.
        prevalence: Disease prevalence for PPV and NPV; None uses the sample's.

    Returns:
        ``tp, fp, tn, fn, sensitivity, specificity, ppv, npv, prevalence,
        threshold`` (a rate is None where its denominator is zero).
    """
    is_positive = np.asarray(is_positive, bool)
    predicted = np.asarray(scores) >= threshold
    tn, fp, fn, tp = confusion_matrix(is_positive, predicted, labels=[False, True]).ravel()
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    prev = float(is_positive.mean()) if prevalence is None else float(prevalence)
    ppv = npv = None
    if sens is not None and spec is not None:
        ppv = _ratio(sens * prev, sens * prev + (1 - spec) * (1 - prev))
        npv = _ratio(spec * (1 - prev), spec * (1 - prev) + (1 - sens) * prev)
    return {
        "threshold": float(threshold), "tp": int(tp), "fp": int(fp), "tn": int(tn),
        "fn": int(fn), "sensitivity": _f(sens), "specificity": _f(spec),
        "ppv": _f(ppv), "npv": _f(npv), "prevalence": prev,
    }


def roc_points(scores: np.ndarray, is_positive: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve's points.

    Returns:
        ``{"fpr", "tpr", "thresholds"}`` lists (thresholds capped at 1).
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(is_positive, bool), scores)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "thresholds": np.minimum(thresholds, 1.0).tolist(),
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _f(value: float | None) -> float | None:
    return None if value is None else float(value)
