"""Reading the evaluation's results back: test scores, confusion matrix, rates.

The model page shows what :mod:`covid.evaluation.evaluate` left beside the model,
read by :func:`read_evaluation` (never raising for a missing or malformed file):
every class's test-split scores parsed from its CSV (:func:`class_scores_from_csv`),
each test film's share of evidence inside the lungs (:func:`lung_evidence_from_csv`),
the matrix of true class against label at an operating point
(:func:`confusion_matrix_at`) and its rates (:func:`finding_rates`), the ROC of
P(any finding) and its marker (:func:`finding_roc`, :func:`roc_marker`), the change
from the shipped point (:func:`change_from`), the figures by group
(:func:`group_rows`), what the operating point costs as it moves
(:func:`trade_curve`) and the split sizes (:func:`split_table`). Where the maps'
evidence lies, in table rows and words, is :mod:`covid.evaluation.map_checks`.

No Streamlit and no TensorFlow: everything takes and returns plain values.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from covid.evaluation.artefacts import artefact_paths
from covid.model.classes import NORMAL, index_of, probability_column
from covid.model.decision import decide_labels, p_finding

SPLIT_ORDER = ("train", "val", "test")
"""The order split sizes are shown in (any other side follows)."""

SAME_CHANGE_PP = 0.05
"""A change from the shipped point smaller than this (percentage points) shows as none."""


@dataclass(frozen=True)
class ClassScores:
    """The test split's calibrated probabilities over every class, and each film's truth.

    Attributes:
        class_names: The model's C classes, in output order.
        probs: (N, C) float64 calibrated probabilities (read-only).
        truth: (N,) str true class names (read-only); may hold a class the model lacks.
        ages: (N,) str age groups (``adult``, ``child``...; read-only), or None where
            the scores CSV has no ``age`` column.
    """

    class_names: tuple[str, ...]
    probs: np.ndarray
    truth: np.ndarray
    ages: np.ndarray | None = None


@dataclass(frozen=True)
class Evaluation:
    """The evaluation artefacts beside a model, as far as they could be read.

    Attributes:
        summary: The evaluation JSON (metrics, temperature, threshold, curves), or None.
        classes: Every class's test-split scores, or None.
        problems: Plain-words reasons for what is missing or unreadable.
        lung_evidence: Per true class, each test film's share of Grad-CAM
            energy inside the lungs, or None when the scores CSV has none.
    """

    summary: Mapping[str, Any] | None
    classes: ClassScores | None
    problems: tuple[str, ...]
    lung_evidence: Mapping[str, np.ndarray] | None = None

    @property
    def scores(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(N,) calibrated P(any finding) and (N,) bool: has a finding; None without scores."""
        if self.classes is None:
            return None
        return (p_finding(self.classes.probs, self.classes.class_names),
                self.classes.truth != NORMAL)

    @property
    def test_prevalence(self) -> float | None:
        """The share of the test split's films with a finding, or None without scores."""
        scores = self.scores
        return None if scores is None else float(scores[1].mean())


def read_evaluation(path: str | Path, class_names: Sequence[str]) -> Evaluation:
    """Reads the evaluation JSON and the test scores CSV beside a model.

    Args:
        path: The ``.keras`` model.
        class_names: The model's classes (:func:`class_scores_from_csv`).

    Returns:
        What could be read, and why the rest could not (never raises for a
        missing or malformed file).
    """
    paths = artefact_paths(path)
    problems: list[str] = []
    summary = lung_evidence = classes = None
    try:
        summary = json.loads(paths["evaluation"].read_text())
        if not isinstance(summary, dict):
            raise ValueError("it is not a JSON object")
    except FileNotFoundError:
        problems.append(f"`{paths['evaluation'].name}` (metrics and curves) is missing.")
    except (OSError, ValueError) as err:
        summary = None
        problems.append(f"`{paths['evaluation'].name}` cannot be read ({err}).")
    try:
        text = paths["scores"].read_text()
        classes = class_scores_from_csv(text, class_names)
        lung_evidence = lung_evidence_from_csv(text)
    except FileNotFoundError:
        problems.append(f"`{paths['scores'].name}` (per-image test scores) is missing.")
    except (OSError, ValueError) as err:
        problems.append(f"`{paths['scores'].name}` cannot be read ({err}).")
    return Evaluation(summary=summary, classes=classes, problems=tuple(problems),
                      lung_evidence=lung_evidence)


def _probability(row: Mapping[str, str], column: str, line: int) -> float:
    """One probability of a scores CSV row, checked to be a number in [0, 1]."""
    try:
        value = float(row[column])
    except (TypeError, ValueError) as err:
        raise ValueError(f"line {line}: {column} is not a number") from err
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"line {line}: {column} {value} is outside [0, 1]")
    return value


def _rows(text: str, columns: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The scores CSV's header and rows, checked to hold ``columns`` and a row at least."""
    reader = csv.DictReader(io.StringIO(text))
    fields = list(reader.fieldnames or ())
    missing = set(columns) - set(fields)
    if missing:
        raise ValueError(f"the scores CSV lacks the column(s) {', '.join(sorted(missing))}")
    rows = list(reader)
    if not rows:
        raise ValueError("the scores CSV has no rows")
    return fields, rows


def _read_only(values: Any, dtype: Any) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.flags.writeable = False
    return array


def class_scores_from_csv(text: str, class_names: Sequence[str]) -> ClassScores:
    """Every class's calibrated probability and each film's truth, from the scores CSV.

    Args:
        text: The CSV with columns ``true`` and one per class
            (:func:`covid.model.classes.probability_column`).
        class_names: The model's C classes, in output order.

    Returns:
        The scores: (N, C) probabilities, (N,) true names and, where the CSV has
        an ``age`` column, (N,) age groups.

    Raises:
        ValueError: A column is missing, a probability is not a number in
            [0, 1], or there are no rows.
    """
    columns = [probability_column(name) for name in class_names]
    fields, rows = _rows(text, ("true", *columns))
    probs = [[_probability(row, column, line) for column in columns]
             for line, row in enumerate(rows, start=2)]
    ages = _read_only([row["age"] for row in rows], str) if "age" in fields else None
    return ClassScores(tuple(class_names), _read_only(probs, np.float64),
                       _read_only([row["true"] for row in rows], str), ages)


def lung_evidence_from_csv(text: str) -> dict[str, np.ndarray] | None:
    """Each test film's share of evidence inside the lungs, grouped by true class.

    Args:
        text: The scores CSV; its optional ``lung_evidence`` column holds a share
            in [0, 1] per film (empty where none was measured), grouped by the
            true class (column ``true``).

    Returns:
        ``{label: (N,) float64 shares}`` in the order the classes first appear,
        or None when the column is absent or holds no usable value.
    """
    reader = csv.DictReader(io.StringIO(text))
    if not {"lung_evidence", "true"} <= set(reader.fieldnames or ()):
        return None
    groups: dict[str, list[float]] = {}
    for row in reader:
        try:
            share = float(row.get("lung_evidence") or "nan")
        except ValueError:
            continue
        if 0.0 <= share <= 1.0:  # False for NaN
            groups.setdefault(row.get("true") or "?", []).append(share)
    return {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()} or None


def roc_marker(point: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """Where an operating point sits on the ROC curve: (false-positive rate, sensitivity).

    Args:
        point: From :func:`covid.evaluation.metrics.operating_point` (positive: any
            finding), or None.

    Returns:
        The (x, y) marker, or None when there is no point or a rate is undefined.
    """
    if point is None or point["sensitivity"] is None or point["specificity"] is None:
        return None
    return (1 - point["specificity"], point["sensitivity"])


def change_from(value: float | None, reference: float | None) -> tuple[str | None, bool]:
    """A rate's change from the shipped operating point, in percentage points.

    Args:
        value: The rate at the chosen point (0 to 1), or None.
        reference: The same rate at the shipped point, or None.

    Returns:
        ``(text, same)``: e.g. ``"+2.5 pp vs shipped"`` (None when either rate is
        missing) and whether the change rounds to none (below :data:`SAME_CHANGE_PP`).
    """
    if value is None or reference is None:
        return None, True
    change = 100 * (value - reference)
    return f"{change:+.1f} pp vs shipped", abs(change) < SAME_CHANGE_PP


@dataclass(frozen=True)
class Confusion:
    """True classes against the labels of the decision rule at one operating point.

    Attributes:
        true_names: The R rows: the model's classes, then any other in the truth.
        labels: The C columns: the model's classes.
        matrix: (R, C) int64 counts, read-only.
    """

    true_names: tuple[str, ...]
    labels: tuple[str, ...]
    matrix: np.ndarray

    def columns(self) -> dict[str, list[Any]]:
        """The matrix as table columns: ``true``, then one per label."""
        return {"true": list(self.true_names),
                **{name: self.matrix[:, c].tolist() for c, name in enumerate(self.labels)}}


def confusion_matrix_at(scores: ClassScores, threshold: float) -> Confusion:
    """The matrix of true class against label at an operating point.

    Args:
        scores: Every class's scores over N films.
        threshold: On P(any finding), as :func:`covid.model.decision.decide_labels` takes it.

    Returns:
        The (R, C) counts; each row sums to its true class's films.
    """
    names = np.asarray(scores.class_names)
    labels = names[decide_labels(scores.probs, scores.class_names, threshold)]
    rows = (*names, *(n for n in dict.fromkeys(scores.truth.tolist()) if n not in names))
    matrix = [[int(np.sum((scores.truth == t) & (labels == d))) for d in names] for t in rows]
    return Confusion(tuple(rows), tuple(names), _read_only(matrix, np.int64))


def _rate(part: float, whole: float) -> float | None:
    return float(part / whole) if whole else None


@dataclass(frozen=True)
class FindingRates:
    """Admit against home at one operating point (None where no film is there to count).

    Attributes:
        sensitivity: Share of the films with a finding admitted.
        specificity: Share of the Normal films sent home.
        sent_home: Per true class with a finding (matrix order), its share sent home.
    """

    sensitivity: float | None
    specificity: float | None
    sent_home: Mapping[str, float | None]


def finding_rates(confusion: Confusion) -> FindingRates:
    """Sensitivity and specificity of any finding, and each finding's films sent home.

    Args:
        confusion: From :func:`confusion_matrix_at` (R true classes x C labels).

    Returns:
        The rates (``sent_home`` read-only).
    """
    home = confusion.matrix[:, index_of(confusion.labels, NORMAL)]
    films = confusion.matrix.sum(axis=1)
    finding = np.asarray(confusion.true_names) != NORMAL
    return FindingRates(
        _rate(films[finding].sum() - home[finding].sum(), films[finding].sum()),
        _rate(home[~finding].sum(), films[~finding].sum()),
        MappingProxyType({name: _rate(home[r], films[r])
                          for r, name in enumerate(confusion.true_names) if name != NORMAL}))


def finding_roc(summary: Mapping[str, Any]
                ) -> tuple[Mapping[str, tuple[float, ...]], float, tuple[float, float]]:
    """The ROC of the thresholded probability, P(any finding), from the evaluation JSON.

    Args:
        summary: With ``curves.roc_finding`` and ``metrics.auc_finding``.

    Returns:
        ``(curve, auc, ci95)``: read-only ``{"fpr", "tpr"}`` (K,) tuples, the AUC, its CI.

    Raises:
        KeyError, TypeError, ValueError: The evaluation JSON is not as expected.
    """
    finding, curve = summary["metrics"]["auc_finding"], summary["curves"]["roc_finding"]
    auc, ci = finding["auc"], finding["ci95"]
    points = {key: tuple(float(v) for v in curve[key]) for key in ("fpr", "tpr")}
    return MappingProxyType(points), float(auc), (float(ci[0]), float(ci[1]))


ALL_NORMALS = "all"
"""The trade curve's specificity over every Normal film, beside each age group's."""


@dataclass(frozen=True)
class TradeCurve:
    """What each operating point costs: normals kept home against findings sent home.

    Attributes:
        thresholds: (K,) increasing thresholds on P(any finding).
        specificity: :data:`ALL_NORMALS`, then each age group with Normal films, in
            name order -> (K,) share of its Normal films labelled Normal (sent home).
        sent_home: Each true class with a finding -> (K,) share of its films sent home.
    """

    thresholds: np.ndarray
    specificity: Mapping[str, np.ndarray]
    sent_home: Mapping[str, np.ndarray]


def trade_thresholds(scores: ClassScores, points: int = 201) -> np.ndarray:
    """(K,) thresholds for a trade curve: 0, 1 and quantiles of the films' P(any finding).

    Quantiles put the points where the films are, so the curve is as fine where
    a few findings are sent home as where most normals are.
    """
    finding = p_finding(scores.probs, scores.class_names)
    return np.unique(np.concatenate([[0.0, 1.0],
                                     np.quantile(finding, np.linspace(0.0, 1.0, points))]))


def trade_curve(scores: ClassScores, thresholds: Sequence[float] | np.ndarray) -> TradeCurve:
    """Specificity overall and per age group, and each finding sent home, at each threshold.

    Args:
        scores: The test split's scores (with ``ages`` for the age groups).
        thresholds: (K,) operating points on P(any finding) (e.g. :func:`trade_thresholds`,
            or one shipped threshold to mark).

    Returns:
        The curve; a film is sent home where :func:`covid.model.decision.decide_labels`
        labels it Normal, as everywhere else.
    """
    thresholds = np.asarray(thresholds, np.float64).reshape(-1)
    normal = index_of(scores.class_names, NORMAL)
    home = np.stack([decide_labels(scores.probs, scores.class_names, t) == normal
                     for t in thresholds]).reshape(len(thresholds), len(scores.truth))
    normals = scores.truth == NORMAL
    groups = {ALL_NORMALS: normals}
    if scores.ages is not None:
        groups.update({str(age): normals & (scores.ages == age)
                       for age in sorted(set(scores.ages[normals].tolist()))})
    findings = [n for n in dict.fromkeys(scores.truth.tolist()) if n != NORMAL]
    return TradeCurve(
        _read_only(thresholds, np.float64),
        MappingProxyType({g: _read_only(home[:, m].mean(axis=1), np.float64)
                          for g, m in groups.items() if m.any()}),
        MappingProxyType({f: _read_only(home[:, scores.truth == f].mean(axis=1), np.float64)
                          for f in findings}))


def group_rows(groups: Mapping[str, Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """The evaluation's figures by source or age group as table rows.

    Args:
        groups: ``metrics["by_source"]`` or ``["by_age"]``: ``{"group / true class":
            {"n", "label_shares", "sent_home"}}``, shares in [0, 1].
        class_names: The model's classes.

    Returns:
        Dicts with ``group``, ``true class``, ``films``, ``sent home`` and
        ``labelled <finding>`` per finding class (percent; None where missing).
    """
    rows = []
    for key, figures in groups.items():
        group, _, true = key.rpartition(" / ")
        shares, home = figures.get("label_shares") or {}, figures.get("sent_home")
        rows.append({"group": group, "true class": true, "films": figures.get("n"),
                     "sent home": None if home is None else 100.0 * home,
                     **{f"labelled {n}": 100.0 * shares.get(n, 0.0)
                        for n in class_names if n != NORMAL}})
    return rows


def split_table(
    splits: Mapping[str, Mapping[str, Any] | None], class_names: Sequence[str]
) -> dict[str, list[Any]]:
    """The split sizes as table columns: one row per split, one column per class, a total.

    Args:
        splits: Per split side, the image count per class (from the metadata).
        class_names: The model's classes, in output order.

    Returns:
        Columns ``split``, one per class and ``total``; rows in :data:`SPLIT_ORDER`,
        then any other side in its recorded order.
    """
    classes = list(class_names)
    rows: dict[str, list[Any]] = {"split": [], **{name: [] for name in classes}, "total": []}
    known = [side for side in SPLIT_ORDER if side in splits]
    for side in known + [side for side in splits if side not in known]:
        counts = splits[side] or {}
        rows["split"].append(side)
        for name in classes:
            rows[name].append(int(counts.get(name, 0)))
        rows["total"].append(sum(int(v) for v in counts.values()))
    return rows
