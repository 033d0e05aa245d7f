"""Scored results for the tests of the screening stage, decided by the one rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covid.model.decision import FLAG_NONE, decide
from covid.screening.pipeline import StudyResult

TWO_CLASSES = ("COVID", "Normal")
THREE_CLASSES = ("COVID", "Other pneumonia", "Normal")


def scored(name: str, probs: Sequence[float] | float, class_names: Sequence[str] = TWO_CLASSES,
           threshold: float = 0.5, flag: str | None = None, **fields) -> StudyResult:
    """A scored result as the pipeline makes it (``probs`` a float: P(COVID) of two classes).

    ``flag`` is the gates' verdict (None: no detector ran); ``fields`` are further
    fields, e.g. ``flag_reason`` or ``lung_evidence``.
    """
    if isinstance(probs, float | int):
        probs = [float(probs), 1.0 - float(probs)]
    probs = np.asarray(probs, np.float32)
    names = tuple(class_names)
    return StudyResult(
        name=name, probs=probs, class_names=names, p_positive=float(probs[names.index("COVID")]),
        decision=decide(probs, names, threshold, flag or FLAG_NONE), flag=flag, **fields)


def failed(name: str) -> StudyResult:
    """A file that could not be read."""
    return StudyResult(name=name, error=f"{name}: this is not a PNG, JPEG or DICOM image.")
