"""Screening metrics: AUC and shares with their CIs, and operating-point statistics.

scikit-learn and SciPy are imported inside the functions: the model page imports this
module, and the server should not pay for them before the first film.
"""

from __future__ import annotations

import numpy as np

from covid.model.classes import CLASS_NAMES, COVID, FINDINGS, NORMAL, OTHER_PNEUMONIA, index_of


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
    from sklearn.metrics import roc_auc_score

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
    from sklearn.metrics import confusion_matrix

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
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(np.asarray(is_positive, bool), scores)
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "thresholds": np.minimum(thresholds, 1.0).tolist(),
    }


def proportion_ci(hits: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a share (SciPy's ``binomtest``).

    Args:
        hits: (N,) booleans, true where a film counts (e.g. sent home).
        level: Confidence level.

    Returns:
        ``[lower, upper]``, or None for no films.
    """
    from scipy.stats import binomtest

    hits = np.asarray(hits, bool)
    if not len(hits):
        return None
    ci = binomtest(int(hits.sum()), len(hits)).proportion_ci(level, method="wilson")
    return [float(ci.low), float(ci.high)]


def mean_ci(values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0
            ) -> list[float] | None:
    """Percentile bootstrap interval of a mean (SciPy's ``bootstrap``).

    Args:
        values: (N,) per-film values (e.g. each map's share of energy in the lungs).
        level: Confidence level.
        n_boot: Bootstrap resamples.
        seed: Resampling seed.

    Returns:
        ``[lower, upper]``; the value itself for a single film; None for none.
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return None if not len(values) else [float(values.mean())] * 2
    ci = bootstrap((values,), np.mean, confidence_level=level, n_resamples=n_boot,
                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return [float(ci.low), float(ci.high)]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _f(value: float | None) -> float | None:
    return None if value is None else float(value)


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


def _share_and_ci(out: dict, key: str, mask: np.ndarray) -> None:
    """Writes a share and, beside it under ``<key>_ci95``, its Wilson interval."""
    out[key], out[f"{key}_ci95"] = _share(mask), proportion_ci(mask)


def flagged_by_class(flagged: np.ndarray, true_names: np.ndarray) -> dict[str, float]:
    """Share of each true class's films flagged out of distribution.

    Args:
        flagged: (N,) bool flags.
        true_names: (N,) true class names.

    Returns:
        Class name -> share flagged, for every class present.
    """
    flagged, true_names = np.asarray(flagged, bool), np.asarray(true_names)
    return {str(n): float(flagged[true_names == n].mean()) for n in np.unique(true_names)}


def group_figures(true_names: np.ndarray, decided: np.ndarray, flagged: np.ndarray | None = None
                  ) -> dict:
    """Label shares of one group of films: what the decision rule told them.

    Args:
        true_names: (N,) true class names.
        decided: (N,) decided label names at the operating point.
        flagged: (N,) bool out-of-distribution flags, or None.

    Returns:
        ``n``, ``label_shares`` (label -> share), ``sent_home`` (share labelled
        Normal) with its 95% interval ``sent_home_ci95`` and, with flags, ``ood_flagged``.
    """
    labels, counts = np.unique(decided, return_counts=True)
    out = {"n": len(decided),
           "label_shares": {str(k): float(c / len(decided)) for k, c in zip(labels, counts,
                                                                          strict=True)}}
    _share_and_ci(out, "sent_home", decided == NORMAL)
    if flagged is not None:
        out["ood_flagged"] = _share(np.asarray(flagged, bool))
    return out


def screening_figures(probs: np.ndarray, true_names: np.ndarray, class_names: list[str],
                      threshold: float, groups: dict[str, np.ndarray] | None = None) -> dict:
    """Every test figure of a model at its operating point.

    Args:
        probs: (N, C) calibrated probabilities over ``class_names``.
        true_names: (N,) true class names (COVID, Other pneumonia, Normal).
        class_names: The model's classes.
        threshold: Operating point on P(any finding).
        groups: Named (N,) string arrays (e.g. ``by_source``, ``by_age``) to break
            the label shares down by.

    Returns:
        AUC of P(COVID) on COVID and Normal films, AUC of P(any finding), per-class
        one-vs-rest AUCs (classes the model has), sensitivity (COVID films labelled
        COVID), admitted share of all findings, specificity (Normal films labelled
        Normal), the share of each true class sent home and labelled COVID, the
        3 x 3 confusion matrix and the group breakdowns. Each share the ship gate
        compares has its 95% Wilson interval beside it (``sensitivity_ci95``...).
    """
    from covid.model.decision import decide_labels, p_finding

    true_names = np.asarray(true_names)
    decided = np.asarray(class_names)[decide_labels(probs, class_names, threshold)]
    covid = probs[:, index_of(class_names, COVID)]
    pair = np.isin(true_names, [COVID, NORMAL])
    finding = true_names != NORMAL
    out: dict = {"n": len(true_names), "threshold": float(threshold)}
    out["auc_covid_vs_normal"] = _auc_dict(covid[pair], true_names[pair] == COVID)
    out["auc_finding"] = _auc_dict(p_finding(probs, class_names), finding)
    out["auc_per_class"] = {name: _auc_dict(probs[:, c], true_names == name)
                            for c, name in enumerate(class_names) if (true_names == name).any()}
    _share_and_ci(out, "sensitivity", decided[true_names == COVID] == COVID)
    _share_and_ci(out, "admitted_findings", decided[finding] != NORMAL)
    _share_and_ci(out, "specificity", decided[~finding] == NORMAL)
    home = {n: decided[true_names == n] == NORMAL for n in FINDINGS}
    out["sent_home"] = {n: _share(hits) for n, hits in home.items()}
    out["sent_home_ci95"] = {n: proportion_ci(hits) for n, hits in home.items()}
    out["labelled_covid"] = {n: _share(decided[true_names == n] == COVID)
                             for n in (OTHER_PNEUMONIA, NORMAL)}
    order = list(CLASS_NAMES)
    out["confusion3"] = {"labels": order, "matrix": [
        [int(((true_names == t) & (decided == d)).sum()) for d in order] for t in order]}
    for key, values in (groups or {}).items():
        values = np.asarray(values)
        out[key] = {f"{g} / {t}": group_figures(true_names[m], decided[m])
                    for g in np.unique(values) for t in order
                    if (m := (values == g) & (true_names == t)).any()}
    return out


def _auc_dict(scores: np.ndarray, is_positive: np.ndarray) -> dict | None:
    is_positive = np.asarray(is_positive, bool)
    if is_positive.all() or not is_positive.any():
        return None
    auc, low, high = auc_with_ci(scores, is_positive, n_boot=1000)
    return {"auc": auc, "ci95": [low, high]}
