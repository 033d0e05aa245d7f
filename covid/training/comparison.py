"""A model's headline figures beside the previous model's and the goals, and the ship gate.

The figures are those issue 17 set for model v3 (the screening questions a
radiologist asks first): how well P(COVID) ranks, what the decision rule tells
each true class, how often pneumonias look out of distribution, and where the
COVID-19 map lies against the radiologists' masks. :func:`comparison_rows`
reads them from an evaluation's metrics (:func:`covid.training.evaluate.evaluate`
writes the previous model's, measured on the same films, under
``comparison.previous``); :func:`ship_verdict` is the one rule that decides
whether a candidate replaces the shipped model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One headline figure.

    Attributes:
        key: Short identifier.
        title: What it measures, in words.
        path: Keys leading to the value in an evaluation's metrics.
        goal: The target value.
        higher_is_better: True for a figure to raise (AUC), False for a rate to lower.
        share: True for a share of films (shown as a percentage), False for an AUC.
    """

    key: str
    title: str
    path: tuple[str, ...]
    goal: float
    higher_is_better: bool
    share: bool = True

    def value(self, metrics: Mapping[str, Any] | None) -> float | None:
        """The figure in these metrics, or None where they do not hold it."""
        found: Any = metrics
        for key in self.path:
            if not isinstance(found, Mapping):
                return None
            found = found.get(key)
        return float(found) if isinstance(found, int | float) else None

    def text(self, value: float | None) -> str:
        """The value as shown: a percentage for a share, three decimals for an AUC."""
        if value is None:
            return "—"
        return f"{value:.1%}" if self.share else f"{value:.3f}"

    def meets_goal(self, value: float | None) -> bool | None:
        """Whether a value reaches the goal (None without a value)."""
        if value is None:
            return None
        return value >= self.goal if self.higher_is_better else value <= self.goal


FIGURES = (
    Figure("auc_covid", "AUC of P(COVID), COVID and Normal films",
           ("auc_covid_vs_normal", "auc"), 0.995, True, share=False),
    Figure("sensitivity", "Sensitivity: COVID films labelled COVID", ("sensitivity",), 0.98, True),
    Figure("specificity", "Specificity: Normal films labelled Normal", ("specificity",), 0.98,
           True),
    Figure("pneumonia_home", "Other pneumonias told to go home",
           ("sent_home", "Other pneumonia"), 0.02, False),
    Figure("pneumonia_covid", "Other pneumonias labelled COVID",
           ("labelled_covid", "Other pneumonia"), 0.10, False),
    Figure("pneumonia_ood", "Other pneumonias flagged out of distribution",
           ("ood_flagged", "Other pneumonia"), 0.05, False),
    Figure("energy_in_lungs", "COVID map: share of its energy inside the lungs",
           ("localisation", "energy_in_lungs"), 0.70, True),
    Figure("peak_in_lungs", "COVID map: peak inside the lungs", ("localisation", "peak_in_lungs"),
           0.90, True),
    Figure("peak_in_infection", "COVID map: peak inside the radiologists' infection mask",
           ("localisation", "peak_in_infection"), 0.50, True),
)
"""The headline figures and their goals (issue 17), in the order they are shown."""

MUST_BEAT = ("auc_covid", "energy_in_lungs", "peak_in_lungs", "peak_in_infection")
"""Figures in which a candidate must beat the shipped model to replace it."""
MAX_PNEUMONIA_HOME = 0.02
"""Most of the validation split's other pneumonias a candidate may send home."""


def _by_key(key: str) -> Figure:
    return next(f for f in FIGURES if f.key == key)


def comparison_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The headline figures of a model beside the previous model's and the goals.

    Args:
        metrics: An evaluation's test metrics, with the previous model's under
            ``comparison.previous`` where it was compared.

    Returns:
        One row of strings per figure that either model has: ``figure``, ``this
        model``, ``previous`` (:meth:`Figure.text`), ``goal`` ("≥ 99.5%", "≤ 2.0%"...)
        and ``goal met`` ("yes", "no" or "—" without a value).
    """
    previous = (metrics.get("comparison") or {}).get("previous")
    rows = []
    for figure in FIGURES:
        mine, theirs = figure.value(metrics), figure.value(previous)
        if mine is None and theirs is None:
            continue
        met = figure.meets_goal(mine)
        rows.append({"figure": figure.title, "this model": figure.text(mine),
                     "previous": figure.text(theirs),
                     "goal": f"{'≥' if figure.higher_is_better else '≤'} "
                             f"{figure.text(figure.goal)}",
                     "goal met": "—" if met is None else "yes" if met else "no"})
    return rows


@dataclass(frozen=True)
class ShipVerdict:
    """Whether a candidate replaces the shipped model, and why not.

    Attributes:
        ship: True when every condition holds.
        reasons: One sentence per condition that failed (empty when shipping).
    """

    ship: bool
    reasons: tuple[str, ...]


def ship_verdict(candidate: Mapping[str, Any], shipped: Mapping[str, Any] | None
                 ) -> ShipVerdict:
    """The ship gate: better than the shipped model, on the validation split.

    A candidate ships when it beats the shipped model (measured on the same
    validation films at its own operating point) on the AUC of P(COVID) and on
    all three localisation figures, and sends home at most
    :data:`MAX_PNEUMONIA_HOME` of the validation split's other pneumonias.

    Args:
        candidate: The candidate's validation metrics.
        shipped: The shipped model's, or None when nothing is shipped yet.

    Returns:
        The verdict.
    """
    reasons = []
    for key in MUST_BEAT:
        figure = _by_key(key)
        mine, theirs = figure.value(candidate), figure.value(shipped)
        if mine is None:
            reasons.append(f"{figure.title}: not measured for the candidate")
        elif theirs is not None and mine <= theirs:
            reasons.append(f"{figure.title}: {mine:.3f}, not above the shipped model's "
                           f"{theirs:.3f}")
    home = _by_key("pneumonia_home").value(candidate)
    if home is None or home > MAX_PNEUMONIA_HOME:
        shown = "not measured" if home is None else f"{home:.1%}"
        reasons.append(f"other pneumonias sent home: {shown}, above "
                       f"{MAX_PNEUMONIA_HOME:.0%}")
    return ShipVerdict(not reasons, tuple(reasons))


def with_previous_sent_home(rows: list[dict[str, Any]], metrics: Mapping[str, Any],
                            key: str) -> list[dict[str, Any]]:
    """Group rows with the previous model's share sent home beside this model's.

    Args:
        rows: :func:`covid.training.results.group_rows` of ``metrics[key]``.
        metrics: The evaluation's test metrics.
        key: ``by_source`` or ``by_age``.

    Returns:
        New rows, each with ``previous: sent home`` (percent, None where the
        previous model has no such group) after ``sent home``; the rows unchanged
        when there is no previous model.
    """
    previous = ((metrics.get("comparison") or {}).get("previous") or {}).get(key)
    if not isinstance(previous, Mapping):
        return rows
    out = []
    for row in rows:
        home = (previous.get(f"{row['group']} / {row['true class']}") or {}).get("sent_home")
        extended = {}
        for column, value in row.items():
            extended[column] = value
            if column == "sent home":
                extended["previous: sent home"] = None if home is None else 100.0 * home
        out.append(extended)
    return out
