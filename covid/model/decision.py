"""The one decision rule: probabilities, operating point and OOD verdict to label and triage.

The prototype's rule: any pathological finding means "admit for further
diagnosis"; only a normal film means "go home and wait for the PCR result". The
operating point therefore decides admit against home on the probability of any
finding, ``1 - P(Normal)``; among findings the label is the likelier one. For a
model with one finding class (the two-class models before v3) that is the
threshold on the finding's own probability.

The out-of-distribution gates raise one of two flags, and this rule alone says
what each means. A film that is plainly not a chest X-ray (``not_chest``) is
refused: no label, no advice. A chest X-ray unlike the training films
(``unusual``) keeps its probabilities and label but is always admitted for a
radiologist to read: the sickest patients' films (devices, severe disease) are
the ones most unlike the training films, and must never be sent home or silenced.

Every caller (pipeline, table, session threshold, CLI, report, evaluation) uses
:func:`decide` or, for whole arrays, :func:`decide_labels`; the PDF report and the
page say why a film was admitted or sent home with :func:`why_sentence`, the
rule's own comparison in words. Pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covid import DISCLAIMER
from covid.model.classes import COVID, NORMAL, OTHER_PNEUMONIA, index_of

FLAG_NONE = "none"
"""The film looks like the chest X-rays the model was trained on."""
FLAG_UNUSUAL = "unusual"
"""A chest X-ray unlike the training films (only the feature distance is high)."""
FLAG_NOT_CHEST = "not_chest"
"""Plainly not a chest X-ray (a DICOM tag, the pixel checks or missing lung fields)."""
FLAGS: tuple[str, ...] = (FLAG_NONE, FLAG_UNUSUAL, FLAG_NOT_CHEST)
"""Every flag, as written in each output's ``flag`` column or field."""

ADMIT_CODE = "admit"
HOME_CODE = "home"
"""The ``advice`` column's values; a refused film's advice is empty."""

ADVICE = {
    COVID: "Findings suggestive of COVID-19: admit for further diagnosis.",
    OTHER_PNEUMONIA: "Pathological findings not typical of COVID-19: admit for further "
                       "diagnosis.",
    NORMAL: "No finding: go home and wait for the PCR result.",
}
"""Triage advice per label (a finding not listed here gets :data:`ADMIT`)."""
ADMIT = "Pathological findings: admit for further diagnosis."
UNUSUAL_ADVICE = ("Unusual chest X-ray, unlike the films the model was trained on: admit, "
                  "a radiologist must read this film.")
NOT_A_CHEST_XRAY = ("This does not look like a chest X-ray, so it was not classified and no "
                    "triage advice is given.")


@dataclass(frozen=True)
class Decision:
    """What the rule decided for one film.

    Attributes:
        label: The class name at the operating point; empty for a refused film
            (flag ``not_chest``), which is never classified.
        p_finding: Calibrated probability of any finding, ``1 - P(Normal)``.
        flag: One of :data:`FLAGS`.
        admit: Whether the advice is to admit: a finding, or an unusual chest
            X-ray whatever its label. False for a normal film and a refused one.
        triage: The advice in words, ending with the research-tool disclaimer.
    """

    label: str
    p_finding: float
    flag: str
    admit: bool
    triage: str

    @property
    def refused(self) -> bool:
        """Whether the film was refused as not a chest X-ray (no label, no advice)."""
        return self.flag == FLAG_NOT_CHEST

    @property
    def ood(self) -> bool:
        """Whether either kind of flag was raised (the CLI's ``ood`` column)."""
        return self.flag != FLAG_NONE

    @property
    def advice(self) -> str:
        """The ``advice`` column: ``admit``, ``home``, or empty for a refused film."""
        if self.refused:
            return ""
        return ADMIT_CODE if self.admit else HOME_CODE


def same_point(threshold: float, other: float) -> bool:
    """Whether two operating points are one, a widget's float round trip aside.

    It answers whether a session's point is the shipped one, and whether a slider's
    value is the point in force.
    """
    return math.isclose(threshold, other, rel_tol=0.0, abs_tol=1e-9)


def p_finding(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Probability of any finding, ``1 - P(Normal)``.

    Args:
        probs: (..., C) calibrated probabilities.
        class_names: The C classes, one of them :data:`NORMAL`.

    Returns:
        (...) probabilities.

    Raises:
        KeyError: The model has no :data:`NORMAL` class (said with the ones it has).
    """
    return 1.0 - np.asarray(probs)[..., index_of(class_names, NORMAL)]


def _findings(class_names: Sequence[str]) -> list[str]:
    """A model's finding classes: every class but :data:`NORMAL`, in output order."""
    return [name for name in class_names if name != NORMAL]


def finding_name(class_names: Sequence[str]) -> str:
    """What the operating point thresholds, in words: ``P(COVID)`` or ``P(any finding)``.

    With one finding class (a two-class model) the probability of any finding is
    that class's probability, and is named after it.
    """
    findings = _findings(class_names)
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
    normal = index_of(class_names, NORMAL)
    findings = probs.copy()
    findings[:, normal] = -np.inf
    return np.where(p_finding(probs, class_names) >= threshold, findings.argmax(axis=1), normal)


def triage_text(label: str, flag: str = FLAG_NONE) -> str:
    """The advice for a label under a flag, in words, with the disclaimer."""
    if flag == FLAG_NOT_CHEST:
        advice = NOT_A_CHEST_XRAY
    elif flag == FLAG_UNUSUAL:
        advice = UNUSUAL_ADVICE
    else:
        advice = ADVICE.get(label, ADMIT)
    return f"{advice} {DISCLAIMER}"


def decide(probs: np.ndarray, class_names: Sequence[str], threshold: float,
           flag: str = FLAG_NONE) -> Decision:
    """Label and triage for one film.

    Args:
        probs: (C,) calibrated probabilities summing to 1.
        class_names: The C classes, one of them :data:`NORMAL`.
        threshold: Operating point on P(any finding).
        flag: One of :data:`FLAGS`, from the out-of-distribution gates.

    Returns:
        The decision. A refused film gets no label and no advice; an unusual one
        keeps its label and is always admitted, so that it is never sent home.

    Raises:
        ValueError: ``flag`` is not one of :data:`FLAGS`.
    """
    if flag not in FLAGS:
        raise ValueError(f"unknown flag {flag!r}: expected one of {', '.join(FLAGS)}")
    probs = np.asarray(probs, np.float64)
    finding = float(p_finding(probs, class_names))
    if flag == FLAG_NOT_CHEST:
        return Decision(label="", p_finding=finding, flag=flag, admit=False,
                        triage=triage_text("", flag))
    index = int(decide_labels(probs[np.newaxis], class_names, threshold)[0])
    label = list(class_names)[index]
    admit = label != NORMAL or flag == FLAG_UNUSUAL
    return Decision(label=label, p_finding=finding, flag=flag, admit=admit,
                    triage=triage_text(label, flag))


def _percents(value: float, threshold: float) -> tuple[str, str]:
    """Both as percentages, with the fewest decimals (one to four) that tell them apart.

    Two that differ by less than 0.00005% are equal to the eye: one decimal each.
    """
    for digits in range(1, 5):
        shown = f"{value:.{digits}%}", f"{threshold:.{digits}%}"
        if shown[0] != shown[1]:
            return shown
    return f"{value:.1%}", f"{threshold:.1%}"


def why_sentence(decision: Decision, class_names: Sequence[str], threshold: float) -> str:
    """Why the rule decided as it did, in one sentence (empty for a refused film).

    E.g. "P(any finding) 25.6% is above the operating point 19.5%: admit, as Other
    pneumonia, the likelier finding." The comparison is :func:`decide`'s own: a
    finding label means P(any finding) reached the operating point. The PDF report
    and the page's study view both print this sentence.

    Args:
        decision: The film's decision at ``threshold``.
        class_names: The model's classes (they name the thresholded probability).
        threshold: The operating point on P(any finding).
    """
    if decision.refused:
        return ""
    shown, point = _percents(decision.p_finding, threshold)
    subject = f"{finding_name(class_names)} {shown}"
    if decision.label == NORMAL:
        below = f"{subject} is below the operating point {point}"
        if decision.admit:  # only an unusual film is admitted below the operating point
            return f"{below}, but the film is unusual: admit."
        return f"{below}: go home."
    where = "at" if math.isclose(decision.p_finding, threshold, abs_tol=1e-12) else "above"
    several = len(_findings(class_names)) > 1  # else the one finding needs no naming
    likelier = f", as {decision.label}, the likelier finding" if several else ""
    return f"{subject} is {where} the operating point {point}: admit{likelier}."
