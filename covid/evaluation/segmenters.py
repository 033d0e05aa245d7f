"""The opacity segmenter's held-out figures as the model page shows them.

They are read from the segmenter's metadata, where its trainer wrote them
(:func:`covid.training.train_opacity.held_out_metrics`): the test films segmented
as served, inside the lung segmenter's lungs, judged against the radiologists' masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SERVED = "lung_segmenter_lungs"
"""The metrics measured as served (the radiologists' lungs are the other key)."""


def _share(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.1f}%"


def _points(value: float | None, unit: str) -> str:
    return "not measured" if value is None else f"{value:.1f}{unit}"


def opacity_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) rows of the served test figures, empty when none were recorded.

    Args:
        metrics: The segmenter's ``metrics`` (its metadata).
    """
    m = metrics.get(SERVED)
    if not m:
        return []
    dice = m.get("dice_mean")
    return [
        ("test films: COVID-19 / normal", f"{m['covid_films']} / {m['normal_films']}"),
        ("mean Dice, COVID-19 films",
         "not measured" if dice is None else f"{dice:.3f} (median {m['dice_median']:.3f})"),
        ("extent of both lungs: median absolute error",
         _points(m.get("extent_abs_error_median_pts"), " points")),
        ("0-8 score within 2 of the radiologists'", _share(m.get("score_within_2"))),
        ("normal films: median extent", _points(m.get("normal_extent_median_pct"), "%")),
        ("normal films graded 0", _share(m.get("normal_score_zero"))),
    ]


def grade_confusion(metrics: dict[str, Any]) -> np.ndarray | None:
    """The (9, 9) counts of 0-8 scores, rows the radiologists', columns the segmenter's."""
    table = (metrics.get(SERVED) or {}).get("score_confusion")
    return None if table is None else np.asarray(table, int)
