"""A model's headline figures beside the previous model's and the goals, and the ship gate.

The figures are those issue 17 set for model v3 (the screening questions a
radiologist asks first): how well P(COVID) ranks, what the decision rule tells
each true class, how often pneumonias look out of distribution, and where the
COVID-19 map lies against the radiologists' masks. :func:`comparison_rows`
reads them from an evaluation's metrics (:func:`covid.evaluation.evaluate.evaluate`
writes the previous model's, measured on the same films, under
``comparison.previous``); :func:`ship_verdict` is the one rule that decides
whether a candidate replaces the shipped model: it may lose none of the headline
figures (issue 27), that is, no shipped value may lie beyond the candidate's 95%
interval on the better side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from covid.model.classes import NORMAL, OTHER_PNEUMONIA
from covid.model.figure_names import figure_name


@dataclass(frozen=True)
class Figure:
    """One headline figure.

    Attributes:
        key: Short identifier.
        title: What it measures, in words.
        path: Keys leading to the value in an evaluation's metrics.
        goal: The target value (None: no goal is set for it).
        higher_is_better: True for a figure to raise (AUC), False for a rate to lower.
        share: True for a share of films (shown as a percentage), False for an AUC.
        ci_path: Keys leading to its 95% interval ``[lower, upper]`` (None: the
            value's path with ``_ci95`` after its last key).
    """

    key: str
    title: str
    path: tuple[str, ...]
    goal: float | None
    higher_is_better: bool
    share: bool = True
    ci_path: tuple[str, ...] | None = None

    def value(self, metrics: Mapping[str, Any] | None) -> float | None:
        """The figure in these metrics, or None where they do not hold it."""
        found = _find(metrics, self.path)
        return float(found) if isinstance(found, int | float) else None

    def ci(self, metrics: Mapping[str, Any] | None) -> tuple[float, float] | None:
        """The figure's 95% interval in these metrics, or None where they hold none."""
        path = self.ci_path or (*self.path[:-1], f"{self.path[-1]}_ci95")
        found = _find(metrics, path)
        if (isinstance(found, Sequence) and len(found) == 2
                and all(isinstance(v, int | float) for v in found)):
            return float(found[0]), float(found[1])
        return None

    def text(self, value: float | None) -> str:
        """The value as shown: a percentage for a share, three decimals for an AUC."""
        if value is None:
            return "—"
        return f"{value:.1%}" if self.share else f"{value:.3f}"

    def meets_goal(self, value: float | None) -> bool | None:
        """Whether a value reaches the goal (None without a value or a goal)."""
        if value is None or self.goal is None:
            return None
        return value >= self.goal if self.higher_is_better else value <= self.goal


def _find(metrics: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    found: Any = metrics
    for key in path:
        if not isinstance(found, Mapping):
            return None
        found = found.get(key)
    return found


def _map_figure(key: str, title: str, goal: float) -> Figure:
    return Figure(key, title, ("localisation", key), goal, True)


FIGURES = (
    Figure("auc_covid", figure_name("auc_covid_vs_normal"), ("auc_covid_vs_normal", "auc"), 0.995,
           True, share=False, ci_path=("auc_covid_vs_normal", "ci95")),
    Figure("sensitivity", figure_name("sensitivity"), ("sensitivity",), 0.98, True),
    Figure("specificity", figure_name("specificity"), ("specificity",), 0.98, True),
    Figure("pneumonia_home", "Other pneumonias told to go home",
           ("sent_home", OTHER_PNEUMONIA), 0.02, False,
           ci_path=("sent_home_ci95", OTHER_PNEUMONIA)),
    Figure("pneumonia_covid", "Other pneumonias labelled COVID",
           ("labelled_covid", OTHER_PNEUMONIA), 0.10, False),
    Figure("pneumonia_ood", "Other pneumonias flagged out of distribution",
           ("ood_flagged", OTHER_PNEUMONIA), 0.05, False),
    _map_figure("energy_in_lungs", "COVID map: share of its energy inside the lungs", 0.70),
    _map_figure("peak_in_lungs", "COVID map: peak inside the lungs", 0.90),
    _map_figure("peak_in_infection", "COVID map: peak inside the radiologists' infection mask",
                0.50),
)
"""The headline figures and their goals (issue 17), in the order they are shown."""


def _by_key(key: str) -> Figure:
    return next(f for f in FIGURES if f.key == key)


def _normals(group: str, title: str) -> Figure:
    return Figure(f"specificity_{group}", f"{figure_name('specificity')}, {title}",
                  ("by_age", f"{group} / {NORMAL}", "sent_home"), None, True)


GATE_FIGURES = (
    _by_key("auc_covid"), _by_key("sensitivity"), _by_key("specificity"),
    _normals("adult", "adults"), _normals("child", "children"), _by_key("pneumonia_home"),
    _by_key("energy_in_lungs"), _by_key("peak_in_lungs"), _by_key("peak_in_infection"),
)
"""The headline figures the ship gate compares, besides the share sent home from each
source (:func:`gate_figures`); a candidate may lose none of them (issue 27)."""
MUST_MEASURE = ("auc_covid", "sensitivity", "specificity", "energy_in_lungs", "peak_in_lungs",
                "peak_in_infection")
"""Figures the candidate must have even where no model is shipped."""
MAX_PNEUMONIA_HOME = 0.02
"""Most of the validation split's other pneumonias a candidate may send home."""


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


def gate_figures(candidate: Mapping[str, Any], shipped: Mapping[str, Any] | None
                 ) -> tuple[Figure, ...]:
    """The figures the ship gate compares: :data:`GATE_FIGURES`, then each source's findings.

    Every group ``"<source> / <true class>"`` of either model's ``by_source``
    whose films have a finding adds the share of them sent home (lower is better).
    """
    groups = {key for metrics in (candidate, shipped)
              for key in ((metrics or {}).get("by_source") or {})
              if not key.endswith(f" / {NORMAL}")}
    per_source = tuple(
        Figure(f"home:{key}", f"{key.rpartition(' / ')[2]} films from "
               f"{key.rpartition(' / ')[0]} sent home", ("by_source", key, "sent_home"),
               None, False) for key in sorted(groups))
    return GATE_FIGURES + per_source


@dataclass(frozen=True)
class Judged:
    """One gate figure of the candidate beside the shipped model's.

    Attributes:
        figure: The figure.
        candidate: The candidate's value (None: not measured).
        ci: Its 95% interval, or None where the metrics hold none.
        shipped: The shipped model's value (None: no model, or not measured).
        worse: True when the shipped value lies beyond the candidate's interval on
            the better side (without an interval: when it is better at all).
    """

    figure: Figure
    candidate: float | None
    ci: tuple[float, float] | None
    shipped: float | None
    worse: bool

    def line(self) -> str:
        """E.g. "Specificity, children: 31.2% (95% CI 25.0-37.0%), shipped 37.3%"."""
        text = self.figure.text
        ci = ("no CI" if self.ci is None
              else f"95% CI {text(self.ci[0])}-{text(self.ci[1])}")
        return (f"{self.figure.title}: {text(self.candidate)} ({ci}), shipped "
                f"{text(self.shipped)}")


def judge(figure: Figure, candidate: Mapping[str, Any], shipped: Mapping[str, Any] | None
          ) -> Judged:
    """The candidate's figure against the shipped model's, beyond its 95% interval or not."""
    mine, ci, theirs = figure.value(candidate), figure.ci(candidate), figure.value(shipped)
    worse = False
    if mine is not None and theirs is not None:
        low, high = ci if ci is not None else (mine, mine)
        worse = theirs > high if figure.higher_is_better else theirs < low
    return Judged(figure, mine, ci, theirs, worse)


@dataclass(frozen=True)
class ShipVerdict:
    """Whether a candidate replaces the shipped model, and why (not).

    Attributes:
        ship: True when every condition holds.
        reasons: One sentence per condition that failed (empty when shipping).
        figures: Every gate figure, judged.
    """

    ship: bool
    reasons: tuple[str, ...]
    figures: tuple[Judged, ...] = ()

    @property
    def summary(self) -> str:
        """The verdict in one sentence, for the log and the model page."""
        if not self.ship:
            return (f"Refused on {len(self.reasons)} count(s): " + "; ".join(self.reasons)
                    + ".")
        compared = sum(j.shipped is not None for j in self.figures)
        if not compared:
            return ("Ships: no shipped model to compare with; every headline figure is "
                    f"measured and at most {MAX_PNEUMONIA_HOME:.0%} of other pneumonias are "
                    "sent home.")
        return (f"Ships: better or within its 95% CI on every headline figure ({compared} "
                f"compared with the shipped model), and at most {MAX_PNEUMONIA_HOME:.0%} of "
                "other pneumonias sent home.")


def ship_verdict(candidate: Mapping[str, Any], shipped: Mapping[str, Any] | None
                 ) -> ShipVerdict:
    """The ship gate on the validation split: a candidate may lose no headline figure.

    Each figure of :func:`gate_figures` is judged (:func:`judge`): the candidate is
    refused where the shipped model's value (on the same validation films, at its
    own operating point) lies beyond the candidate's 95% interval on the better
    side. It must also have :data:`MUST_MEASURE` and every figure the shipped model
    has, and send home at most :data:`MAX_PNEUMONIA_HOME` of the other pneumonias.

    Args:
        candidate: The candidate's validation metrics.
        shipped: The shipped model's, or None when nothing is shipped yet.

    Returns:
        The verdict; its reasons name every figure lost, with both values.
    """
    judged = tuple(judge(f, candidate, shipped) for f in gate_figures(candidate, shipped))
    reasons = []
    for j in judged:
        if j.candidate is None and (j.figure.key in MUST_MEASURE or j.shipped is not None):
            reasons.append(f"{j.figure.title}: not measured for the candidate")
        elif j.worse:
            reasons.append(f"worse beyond its 95% CI: {j.line()}")
    home = _by_key("pneumonia_home").value(candidate)
    if home is None or home > MAX_PNEUMONIA_HOME:
        shown = "not measured" if home is None else f"{home:.1%}"
        reasons.append(f"other pneumonias sent home: {shown}, above "
                       f"{MAX_PNEUMONIA_HOME:.0%}")
    return ShipVerdict(not reasons, tuple(reasons), judged)


def with_previous_sent_home(rows: list[dict[str, Any]], metrics: Mapping[str, Any],
                            key: str) -> list[dict[str, Any]]:
    """Group rows with the previous model's share sent home beside this model's.

    Args:
        rows: :func:`covid.evaluation.results.group_rows` of ``metrics[key]``.
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
