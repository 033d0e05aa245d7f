"""Pure helpers behind the page's batch table, its CSV export and the model page.

* Batch triage: results re-labelled at a session's operating point
  (:func:`relabel`), the suspicion order (:func:`suspicion_order`), one table
  row per study (:func:`table_rows`) and the same rows as CSV (:func:`csv_bytes`).
* Model page: the test-split scores parsed from the evaluation CSV
  (:func:`scores_from_csv`), the confusion matrix at an operating point
  (:func:`confusion_at`) and the Grad-CAM energy check in words
  (:func:`cam_energy_rows`, :func:`cam_energy_verdict`).

No Streamlit, no TensorFlow, no file access: everything takes and returns plain
values, so the page stays layout only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from covid import DISCLAIMER
from covid.explain.cam_stats import REGIONS, area_shares
from covid.screening.pipeline import StudyResult, percentages, rank_by_suspicion
from covid.screening.triage import triage_message

FILE, LABEL, OOD, TRIAGE, ERROR = "file", "label", "out-of-distribution", "triage", "error"
"""Table column names (the probability column is named after the positive class)."""

YES, NO = "yes", "no"
"""The out-of-distribution flag's values (empty when no detector ran or the file failed)."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Cell prefixes a spreadsheet would run as a formula (CSV injection)."""


def probability_column(positive_class: str) -> str:
    """The name of the positive-class probability column, e.g. ``"COVID %"``."""
    return f"{positive_class} %"


def table_columns(positive_class: str) -> list[str]:
    """The batch table's columns, in order (the CSV has the same ones).

    Args:
        positive_class: The pathological class (``"COVID"``).

    Returns:
        ``file``, ``<positive> %``, ``label``, ``out-of-distribution``, ``triage``, ``error``.
    """
    return [FILE, probability_column(positive_class), LABEL, OOD, TRIAGE, ERROR]


def relabel(
    result: StudyResult, label_for: Callable[[float], str], positive_class: str
) -> StudyResult:
    """The result with its label and triage re-derived at another operating point.

    Results are scored once, at the shipped threshold; a session may choose
    another threshold, so the label and the triage advice shown are always
    re-derived from ``p_positive``. The input is left untouched.

    Args:
        result: A result from :func:`covid.screening.pipeline.analyse`.
        label_for: Maps P(positive) to a class name at the chosen operating
            point, e.g. ``lambda p: classifier.label_for(p, threshold)``.
        positive_class: The pathological class.

    Returns:
        A shallow copy with ``label`` and ``triage`` replaced, or the result
        itself when it was not scored (a file that failed).
    """
    if result.error is not None or result.p_positive is None:
        return result
    label = label_for(result.p_positive)
    triage = triage_message(label, positive_class, ood=bool(result.ood))
    return dataclasses.replace(result, label=label, triage=triage)


def suspicion_order(results: Sequence[StudyResult]) -> list[int]:
    """Indices of the results, most suspicious first, failed files last.

    Follows :func:`covid.screening.pipeline.rank_by_suspicion`: descending P(positive);
    ties and failed files keep their upload order.

    Args:
        results: Results in upload order.

    Returns:
        A permutation of ``range(len(results))``.
    """
    position = {id(result): i for i, result in enumerate(results)}
    return [position[id(result)] for result in rank_by_suspicion(results)]


def _ood_flag(result: StudyResult) -> str:
    """``"yes"``, ``"no"``, or ``""`` when no detector ran or the file failed."""
    if result.error is not None or result.ood is None:
        return ""
    return YES if result.ood else NO


def _advice(triage: str | None, disclaimer: bool) -> str:
    """The triage message, with or without its trailing disclaimer."""
    if not triage:
        return ""
    return triage if disclaimer else triage.removesuffix(DISCLAIMER).rstrip()


def table_rows(
    results: Sequence[StudyResult],
    class_names: Sequence[str],
    positive_class: str,
    disclaimer: bool = True,
) -> list[dict[str, Any]]:
    """One table row per study, in the given order.

    Args:
        results: Results (already re-labelled at the operating point in force).
        class_names: The model's classes, in output order.
        positive_class: The pathological class.
        disclaimer: Whether the triage text keeps its trailing "Research tool,
            not a medical device." (keep it in exported files; a page that shows
            the disclaimer once may drop it from every row).

    Returns:
        Dicts keyed by :func:`table_columns`: the file name, the positive-class
        percentage as shown on the bars (one decimal, None for a failed file),
        the label (empty for an image flagged as not a chest X-ray, whose raw
        scores are not meaningful), the out-of-distribution flag, the triage
        message and the error (empty strings where not applicable).
    """
    index = list(class_names).index(positive_class)
    column = probability_column(positive_class)
    rows = []
    for result in results:
        failed = result.error is not None or result.probs is None
        rows.append({
            FILE: result.name,
            column: None if failed else percentages(result.probs, decimals=1)[index],
            LABEL: "" if failed or result.ood else (result.label or ""),
            OOD: _ood_flag(result),
            TRIAGE: "" if failed else _advice(result.triage, disclaimer),
            ERROR: result.error or "",
        })
    return rows


def _csv_cell(value: Any) -> str:
    """A value as CSV text: one decimal for numbers, text neutralised against formulas."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return YES if value else NO
    if isinstance(value, (int, float, np.floating, np.integer)):
        return f"{float(value):.1f}"
    text = str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """The table as UTF-8 CSV, with a header row, in the rows' order.

    Text that a spreadsheet would run as a formula (starting with ``=``, ``+``,
    ``-`` or ``@``, e.g. a crafted file name) is prefixed with an apostrophe.

    Args:
        rows: Dicts from :func:`table_rows`.
        columns: The columns to write, in order (:func:`table_columns`).

    Returns:
        The CSV file's bytes.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return buffer.getvalue().encode("utf-8")


# --------------------------------------------------------------------- model page


def scores_from_csv(text: str, positive_class: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split's calibrated scores and truth, from the evaluation's scores CSV.

    Args:
        text: The CSV (columns ``file,label,p_covid,logit_covid,logit_normal``).
        positive_class: The pathological class, as written in ``label``.

    Returns:
        ``(scores, is_positive)``: (N,) float64 calibrated P(positive) and (N,) bool.

    Raises:
        ValueError: A column is missing, a score is not a number in [0, 1], or
            there are no rows.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"label", "p_covid"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"the scores CSV lacks the column(s) {', '.join(sorted(missing))}")
    scores, truth = [], []
    for line, row in enumerate(reader, start=2):
        try:
            score = float(row["p_covid"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"line {line}: p_covid is not a number") from err
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"line {line}: p_covid {score} is outside [0, 1]")
        scores.append(score)
        truth.append(row["label"] == positive_class)
    if not scores:
        raise ValueError("the scores CSV has no rows")
    return np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)


def confusion_at(
    point: Mapping[str, Any], class_names: Sequence[str], positive_class: str
) -> np.ndarray:
    """The 2 x 2 confusion matrix of an operating point, in class order.

    Args:
        point: From :func:`covid.training.metrics.operating_point` (``tp, fn, fp, tn``).
        class_names: The two class names, in output order.
        positive_class: The pathological class.

    Returns:
        (2, 2) int counts; rows are the truth, columns the prediction, both in
        ``class_names`` order (as :func:`covid.training.plots.confusion_figure` expects).

    Raises:
        ValueError: There are not exactly two classes.
    """
    if len(class_names) != 2:
        raise ValueError(f"expected two classes, got {len(class_names)}")
    matrix = np.array([[point["tp"], point["fn"]], [point["fp"], point["tn"]]], dtype=np.int64)
    if list(class_names).index(positive_class) == 1:
        matrix = matrix[::-1, ::-1]
    return matrix


def _area(energy: Mapping[str, Any]) -> dict[str, float]:
    """Each region's share of the image (what a uniform map would get)."""
    area = energy.get("area")
    if isinstance(area, Mapping) and all(area.get(r) is not None for r in REGIONS):
        return {r: float(area[r]) for r in REGIONS}
    return area_shares(224, 224)


def cam_energy_rows(energy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Grad-CAM energy shares as table rows: overall, per true class, and by area.

    Args:
        energy: The evaluation's ``cam_energy`` (``overall`` and ``per_class``
            groups of ``n, central, border, corners``; optionally ``area``).

    Returns:
        Dicts with ``group``, ``images`` and one percentage per region (None
        where a group has no map with energy); the last row is what a uniform
        map would give.
    """
    groups = [("All test images", energy.get("overall") or {})]
    per_class = energy.get("per_class") or {}
    groups += [(f"True {name}", group or {}) for name, group in per_class.items()]
    rows = []
    for name, group in groups:
        row: dict[str, Any] = {"group": name, "images": group.get("n")}
        for region in REGIONS:
            value = group.get(region)
            row[region] = None if value is None else 100.0 * float(value)
        rows.append(row)
    area = _area(energy)
    rows.append({"group": "Uniform map (area)", "images": None,
                 **{region: 100.0 * area[region] for region in REGIONS}})
    return rows


CLEAR_MARGIN = 0.10
"""How far above its area share the central energy must be to call it a lean toward the chest."""


def cam_energy_verdict(energy: Mapping[str, Any]) -> str:
    """One honest sentence on where the maps put their energy.

    Compares the central chest box's share of the Grad-CAM energy with its
    share of the image (what a uniform, uninformative map would give): below
    it, the maps favour the film's borders; less than :data:`CLEAR_MARGIN`
    above it, the check shows little; further above, the maps lean toward the
    chest, which is necessary but not sufficient evidence that the model reads
    the lungs. Classes whose maps fall below the uniform share are named, and
    the corners (where text markers sit) when they get more than their area.

    Args:
        energy: The evaluation's ``cam_energy``.

    Returns:
        The sentence.
    """
    overall = energy.get("overall") or {}
    central, corners = overall.get("central"), overall.get("corners")
    if central is None:
        return "No map had any energy, so this check says nothing about what the model uses."
    area = _area(energy)
    share = (f"{central:.0%} of the Grad-CAM energy falls on the central chest region, which "
             f"covers {area['central']:.0%} of the image")
    if central <= area["central"]:
        text = (f"Only {share}: no more than an uninformative map, so the model may be reading "
                "the film's borders rather than the lungs.")
    elif central - area["central"] < CLEAR_MARGIN:
        text = (f"{share}: barely more than an uninformative map, so this check does not show "
                "that the model reads the lungs.")
    else:
        text = (f"{share}: the maps lean toward the chest, which is necessary but not "
                "sufficient; it does not rule out shortcuts.")
    below = [(name, group["central"]) for name, group in (energy.get("per_class") or {}).items()
             if (group or {}).get("central") is not None and group["central"] < area["central"]]
    if below and central > area["central"]:
        text += " For true " + " and ".join(f"{n} films it is {v:.0%}" for n, v in below) + "."
    if corners is not None and corners > area["corners"]:
        text += (f" The corners, where text markers sit, get {corners:.0%} of it for "
                 f"{area['corners']:.0%} of the area, a possible source shortcut.")
    return text
