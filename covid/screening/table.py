"""The batch triage table: pure helpers behind the screening page's table and its CSV.

Results re-labelled at a session's operating point (:func:`relabel`), the
suspicion order (:func:`suspicion_order`), one table row per study
(:func:`table_rows`) and the same rows as CSV (:func:`csv_bytes`).

No Streamlit, no TensorFlow, no file access: everything takes and returns plain
values, so the page stays layout only.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from covid import DISCLAIMER
from covid.screening.pipeline import StudyResult, percentages, rank_by_suspicion
from covid.screening.triage import triage_message

FILE, LABEL, OOD, TRIAGE, ERROR = "file", "label", "out-of-distribution", "triage", "error"
"""Table column names (the probability column is named after the positive class)."""
LUNGS = "evidence in lungs %"
"""The share of the predicted class's Grad-CAM energy inside the lung fields, in percent."""

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
        ``file``, ``<positive> %``, ``label``, ``out-of-distribution``,
        ``evidence in lungs %``, ``triage``, ``error``.
    """
    return [FILE, probability_column(positive_class), LABEL, OOD, LUNGS, TRIAGE, ERROR]


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


def _lung_percent(result: StudyResult) -> float | None:
    """The share of evidence inside the lungs in percent, one decimal (None if unknown)."""
    if result.error is not None or result.lung_evidence is None:
        return None
    return round(100.0 * float(result.lung_evidence), 1)


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
        scores are not meaningful), the out-of-distribution flag, the share of
        the predicted class's Grad-CAM energy inside the lungs in percent (None
        for a failed file or without a lung segmenter), the triage message (the
        not-a-chest-X-ray warning for a flagged image) and the error (empty
        strings where not applicable).
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
            LUNGS: _lung_percent(result),
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


def by_column(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Rows turned into columns (what a data-frame widget takes), in the given order.

    Args:
        rows: Dicts holding every one of ``columns``.
        columns: The columns to keep, in order.

    Returns:
        One list per column, the rows' values in the rows' order.
    """
    return {column: [row[column] for row in rows] for column in columns}


def table_key(study_keys: Sequence[str]) -> str:
    """A key naming one set of uploads: a new set starts with no row chosen.

    Args:
        study_keys: The studies' keys (content digest and name), in upload order.

    Returns:
        ``"batch_table_"`` followed by 16 hex digits.
    """
    digest = hashlib.sha256("\n".join(study_keys).encode()).hexdigest()
    return f"batch_table_{digest[:16]}"
