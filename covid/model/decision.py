"""The one decision rule: probabilities, operating point and OOD verdict to label and triage.

The prototype's rule: any pathological finding means "admit for further
diagnosis"; only a normal film means "go home and wait for the PCR result". The
operating point therefore decides admit against home on the probability of any
finding, ``1 - P(Normal)``; among findings the label is the likelier one. For a
two-class COVID/Normal model this is the familiar threshold on P(COVID).

Every caller (pipeline, table, session threshold, CLI, report, evaluation) uses
:func:`decide` or, for whole arrays, :func:`decide_labels`. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covid import DISCLAIMER

NORMAL = "Normal"
"""The class that means "no finding"."""

ADVICE = {
    "COVID": "Findings suggestive of COVID-19: admit for further diagnosis.",
    "Other pneumonia": "Pathological findings not typical of COVID-19: admit for further "
                       "diagnosis.",
    NORMAL: "No finding: go home and wait for the PCR result.",
}
"""Triage advice per label (a finding not listed here gets :data:`ADMIT`)."""
ADMIT = "Pathological findings: admit for further diagnosis."
NOT_A_CHEST_XRAY = "This does not look like a chest X-ray, so no triage advice is given."


@dataclass(frozen=True)
class Decision:
    """What the rule decided for one film.

    Attributes:
        label: The class name at the operating point.
        p_finding: Calibrated probability of any finding, ``1 - P(Normal)``.
        admit: Whether the advice is to admit (a finding, and a chest X-ray).
        ood: Whether the film was flagged as not a chest X-ray (then no advice).
        triage: The advice, ending with the research-tool disclaimer.
    """

    label: str
    p_finding: float
    admit: bool
    ood: bool
    triage: str


def p_finding(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Probability of any finding, ``1 - P(Normal)``.

    Args:
        probs: (..., C) calibrated probabilities.
        class_names: The C classes, one of them :data:`NORMAL`.

    Returns:
        (...) probabilities.
    """
    return 1.0 - np.asarray(probs)[..., list(class_names).index(NORMAL)]


def finding_name(class_names: Sequence[str]) -> str:
    """What the operating point thresholds, in words: ``P(COVID)`` or ``P(any finding)``.

    With one finding (a COVID/Normal model) the probability of any finding is
    that finding's probability, and is named after it.
    """
    findings = [name for name in class_names if name != NORMAL]
    return f"P({findings[0]})" if len(findings) == 1 else "P(any finding)"


def decide_labels(probs: np.ndarray, class_names: Sequence[str], threshold: float) -> np.ndarray:
    """The label index of every film at an operating point.

    Args:
        probs: (N, C) calibrated probabilities.
        class_names: The C classes.
        threshold: Operating point on P(any finding).

    Returns:
        (N,) int class indices: Normal below the threshold, else the likeliest finding.
    """
    probs = np.asarray(probs, np.float64)
    normal = list(class_names).index(NORMAL)
    findings = probs.copy()
    findings[:, normal] = -np.inf
    return np.where(p_finding(probs, class_names) >= threshold, findings.argmax(axis=1), normal)


def triage_text(label: str, ood: bool = False) -> str:
    """The advice for a label (or the not-a-chest-X-ray warning), with the disclaimer."""
    advice = NOT_A_CHEST_XRAY if ood else ADVICE.get(label, ADMIT)
    return f"{advice} {DISCLAIMER}"


def decide(probs: np.ndarray, class_names: Sequence[str], threshold: float,
           ood: bool = False) -> Decision:
    """Label and triage for one film.

    Args:
        probs: (C,) calibrated probabilities summing to 1.
        class_names: The C classes, one of them :data:`NORMAL`.
        threshold: Operating point on P(any finding).
        ood: Whether the film was flagged as not a chest X-ray.

    Returns:
        The decision; a flagged film keeps its label but gets no advice.
    """
    probs = np.asarray(probs, np.float64)
    index = int(decide_labels(probs[np.newaxis], class_names, threshold)[0])
    label = list(class_names)[index]
    return Decision(label=label, p_finding=float(p_finding(probs, class_names)),
                    admit=label != NORMAL and not ood, ood=ood, triage=triage_text(label, ood))
