"""The plain name of every screening figure, keyed by its key in an evaluation's metrics.

"Sensitivity" meant two things: the share of COVID-19 films labelled COVID
(:func:`covid.evaluation.metrics.screening_figures` writes it as ``sensitivity``) and
the share of films with any finding that the rule admits (``admitted_findings``; the
model page's live operating point). Every place that shows a figure (the sidebar,
the model page, the comparison table, the ship gate) names it here, so that a reader
never sees one name for two figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

FIGURE_NAMES: Mapping[str, str] = MappingProxyType({
    "sensitivity": "COVID films labelled COVID",
    "admitted_findings": "Findings admitted",
    "specificity": "Normal films labelled Normal",
    "ppv": "PPV",
    "npv": "NPV",
    "auc_covid_vs_normal": "AUC of P(COVID), COVID and Normal films",
    "auc_finding": "ROC AUC, any finding",
    "ece_after_scaling": "ECE (calibrated)",
})
"""Metric key -> plain name, as shown."""


def figure_name(key: str) -> str:
    """The plain name of a figure, e.g. ``"sensitivity"`` -> ``"COVID films labelled COVID"``.

    Raises:
        KeyError: No figure has this key (a typo must not show a raw key on the page).
    """
    try:
        return FIGURE_NAMES[key]
    except KeyError:
        raise KeyError(f"no figure is named {key!r}; known: {', '.join(FIGURE_NAMES)}") from None
