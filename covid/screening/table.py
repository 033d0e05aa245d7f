"""The batch triage table: pure helpers behind the screening page's table and its CSV.

The suspicion order (:func:`suspicion_order`), one table row per study
(:func:`table_rows`) and the same rows as CSV (:func:`csv_bytes`), whose text
cells are guarded against formula injection by :func:`spreadsheet_safe`, the
one guard of every CSV the project writes.

No Streamlit, no TensorFlow, no file access: everything takes and returns plain
values, so the page stays layout only.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covid import DISCLAIMER
from covid.model.decision import NORMAL
from covid.screening.pipeline import StudyResult, percentages, rank_by_suspicion

FILE, LABEL, FLAG, ADVICE, TRIAGE, ERROR = "file", "label", "flag", "advice", "triage", "error"
"""Table column names (the probability columns are named after the findings). ``flag``
holds :data:`covid.model.decision.FLAGS`, ``advice`` ``admit``, ``home`` or nothing."""
LUNGS = "evidence in lungs %"
"""The share of the predicted class's Grad-CAM energy inside the lung fields, in percent."""
OPACITY, OPACITY_SCORE = "opacity % of lungs", "opacity score /8"
"""The opacity segmenter's figures (a separate segmentation, not the classifier's
evidence): the share of both lung fields covered, in percent, and the modified RALE
score, 0-8 (:class:`covid.model.opacity.Severity`)."""

YES, NO = "yes", "no"
"""How a CSV writes a true or false cell."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Cell prefixes a spreadsheet would run as a formula (CSV injection)."""


def probability_column(class_name: str) -> str:
    """The name of a class's probability column, e.g. ``"COVID %"``."""
    return f"{class_name} %"


def finding_columns(class_names: Sequence[str]) -> list[str]:
    """One probability column per finding (every class but Normal), in output order."""
    return [probability_column(name) for name in class_names if name != NORMAL]


def table_columns(class_names: Sequence[str]) -> list[str]:
    """The batch table's columns, in order (the CSV has the same ones).

    Args:
        class_names: The model's classes, in output order.

    Returns:
        ``file``, one ``<finding> %`` per finding (``COVID %``...), ``label``,
        ``flag``, ``advice``, ``evidence in lungs %``, ``opacity % of lungs``,
        ``opacity score /8``, ``triage``, ``error``.
    """
    return [FILE, *finding_columns(class_names), LABEL, FLAG, ADVICE, LUNGS, OPACITY,
            OPACITY_SCORE, TRIAGE, ERROR]


def suspicion_order(results: Sequence[StudyResult]) -> list[int]:
    """Indices of the results, most suspicious first, failed files last.

    Follows :func:`covid.screening.pipeline.rank_by_suspicion`: descending P(any finding);
    ties and failed files keep their upload order.

    Args:
        results: Results in upload order.

    Returns:
        A permutation of ``range(len(results))``.
    """
    position = {id(result): i for i, result in enumerate(results)}
    return [position[id(result)] for result in rank_by_suspicion(results)]


def _lung_percent(result: StudyResult) -> float | None:
    """The share of evidence inside the lungs in percent, one decimal (None if unknown)."""
    if result.error is not None or result.lung_evidence is None:
        return None
    return round(100.0 * float(result.lung_evidence), 1)


def _opacity(result: StudyResult) -> dict[str, float | int | None]:
    """The opacity cells: extent in percent (one decimal) and score (None without an outline)."""
    if result.error is not None or result.opacity is None:
        return {OPACITY: None, OPACITY_SCORE: None}
    severity = result.opacity.severity
    return {OPACITY: round(100.0 * severity.extent, 1), OPACITY_SCORE: severity.score}


def _decided(result: StudyResult, disclaimer: bool) -> dict[str, str]:
    """The decision's own cells: label, flag, advice code and triage (empty if failed)."""
    decision = result.decision
    if result.error is not None or decision is None:
        return {LABEL: "", FLAG: "", ADVICE: "", TRIAGE: ""}
    return {LABEL: decision.label, FLAG: decision.flag, ADVICE: decision.advice,
            TRIAGE: _advice(decision.triage, disclaimer)}


def _advice(triage: str | None, disclaimer: bool) -> str:
    """The triage message, with or without its trailing disclaimer."""
    if not triage:
        return ""
    return triage if disclaimer else triage.removesuffix(DISCLAIMER).rstrip()


def table_rows(
    results: Sequence[StudyResult], class_names: Sequence[str], disclaimer: bool = True,
) -> list[dict[str, Any]]:
    """One table row per study, in the given order.

    Args:
        results: Results (already decided at the operating point in force).
        class_names: The model's classes, in output order.
        disclaimer: Whether the triage text keeps its trailing "Research tool,
            not a medical device." (keep it in exported files; a page that shows
            the disclaimer once may drop it from every row).

    Returns:
        Dicts keyed by :func:`table_columns`: the file name, each finding's
        percentage as shown on the bars (one decimal; None for a failed file and
        for a film refused as not a chest X-ray, which was never classified),
        then what the decision says: the label (empty when refused), the flag
        (``none``, ``unusual`` or ``not_chest``), the advice (``admit``, ``home``,
        empty when refused), then the share of the label's Grad-CAM energy
        inside the lungs in percent (None for a failed or refused file, without
        a lung segmenter, or while a changed label's map is not measured), the
        share of both lungs the opacity segmenter outlined in percent and its
        score 0-8 (None without an outline: failed or refused, or no opacity
        segmenter), the decision's triage message and the error (empty strings
        where not applicable).
    """
    findings = [(i, probability_column(name)) for i, name in enumerate(class_names)
                if name != NORMAL]
    columns, rows = table_columns(class_names), []
    for result in results:
        hidden = result.error is not None or result.probs is None or result.refused
        shown = None if hidden else percentages(result.probs, decimals=1)
        cells = {FILE: result.name, **{column: None if hidden else shown[i]
                                       for i, column in findings},
                 **_decided(result, disclaimer), LUNGS: _lung_percent(result),
                 **_opacity(result), ERROR: result.error or ""}
        rows.append({column: cells[column] for column in columns})
    return rows


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs as a formula (CSV injection).

    The one guard of every CSV the project writes (the page's table, ``predict``,
    ``pacs``): text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return (e.g. a crafted file name) gets a leading apostrophe.

    Args:
        value: A cell's value.

    Returns:
        The text, guarded; anything that is not text (a number, None), unchanged.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return f"'{value}"
    return value


def _csv_cell(value: Any) -> str:
    """A value as CSV text: whole numbers as such, one decimal for others, text guarded."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return YES if value else NO
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.1f}"
    return spreadsheet_safe(str(value))


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """The table as UTF-8 CSV, with a header row, in the rows' order.

    Text that a spreadsheet would run as a formula is guarded
    (:func:`spreadsheet_safe`).

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
