"""Where the maps' evidence lies, as table rows and one honest sentence each.

Two checks of the evaluation's Grad-CAM maps: each test film's share inside its
lungs, per true class (:func:`lung_evidence_rows`, read by
:func:`covid.evaluation.results.lung_evidence_from_csv`); and the localisation
figures on the radiologists' masks, beside a constant map's (the same map for
every film) and a uniform map's (:func:`localisation_summary`,
:func:`constant_map_figures`, :func:`localisation_rows`, :func:`localisation_verdict`).

No Streamlit and no TensorFlow: everything takes and returns plain values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from covid.evaluation.metrics import mean_ci, proportion_ci
from covid.explain.localisation import (
    busiest_cell,
    constant_map,
    energy_inside,
    inside_each,
    inside_own,
    own_and_others,
    peak_position,
    resize_map,
)


def lung_evidence_rows(groups: Mapping[str, np.ndarray], caution: float = 0.5
                       ) -> list[dict[str, Any]]:
    """The share-of-evidence distribution as table rows, one per true class.

    Args:
        groups: From :func:`lung_evidence_from_csv`.
        caution: The share below which the page cautions the reader.

    Returns:
        Dicts with ``class``, ``films``, ``median``, ``mean`` (percent) and
        ``below caution`` (percent of the class's films below ``caution``).
    """
    rows = []
    for name, values in groups.items():
        values = np.asarray(values, dtype=np.float64)
        rows.append({
            "class": f"True {name}", "films": len(values),
            "median": 100.0 * float(np.median(values)), "mean": 100.0 * float(values.mean()),
            "below caution": 100.0 * float(np.mean(values < caution)),
        })
    return rows


LOCALISATION_MEASURES = (
    ("energy_in_lungs", "Grad-CAM energy inside the lungs"),
    ("peak_in_lungs", "Map's peak inside the lungs"),
    ("peak_in_infection", "Map's peak inside the film's own infection"),
    ("peak_in_other_infection", "Map's peak inside another film's infection"),
    ("busiest_sixteenth", "Peaks in the busiest sixteenth of the film"),
)
"""The localisation figures (keys of ``metrics["localisation"]``) and their names."""

CONSTANT, UNIFORM = "_constant", "_uniform"
"""Suffixes of a figure's baselines: the average infection mask as every film's map, and
a map spread evenly over the film (which scores the masks' share of the film)."""


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def localisation_summary(energies: np.ndarray, peaks: np.ndarray, lungs: Sequence[np.ndarray],
                         infections: Sequence[np.ndarray]) -> dict[str, Any]:
    """The localisation figures of N films' maps against the radiologists' masks.

    Args:
        energies: (N,) each map's share of energy inside its film's lungs.
        peaks: (N, 2) each map's peak position (:func:`covid.explain.localisation.peak_position`).
        lungs: N (h, w) bool lung masks.
        infections: N (h, w) bool infection masks (an empty one: no infection marked).

    Returns:
        ``n``, ``n_with_infection``; the means ``energy_in_lungs`` (bootstrap 95%
        CI), ``peak_in_lungs`` and ``peak_in_infection`` (the film's own, over films
        with an infection; Wilson CIs), each with its uniform-map twin;
        ``peak_in_other_infection`` (a peak placed on each other film with an
        infection), ``infection_margin`` (own less others') and
        ``busiest_sixteenth`` (share of peaks in the busiest cell of a 4 x 4 grid).
    """
    peaks = np.asarray(peaks, np.float64).reshape(-1, 2)
    infected = np.flatnonzero([np.asarray(m).any() for m in infections])
    in_lungs = inside_own(peaks, lungs)
    hits = inside_each(peaks[infected], [infections[i] for i in infected])
    own, others = own_and_others(hits)
    busiest, _ = busiest_cell(peaks)
    lung_area = _mean(np.array([np.mean(m) for m in lungs]))
    infection_area = _mean(np.array([np.mean(infections[i]) for i in infected]))
    return {
        "n": len(peaks), "n_with_infection": len(infected),
        "energy_in_lungs": _mean(energies), "energy_in_lungs_ci95": mean_ci(energies),
        "energy_in_lungs_uniform": lung_area,
        "peak_in_lungs": _mean(in_lungs), "peak_in_lungs_ci95": proportion_ci(in_lungs),
        "peak_in_lungs_uniform": lung_area,
        "peak_in_infection": own,
        "peak_in_infection_ci95": proportion_ci(np.diag(hits)),
        "peak_in_infection_uniform": infection_area,
        "peak_in_other_infection": others, "peak_in_other_infection_uniform": infection_area,
        "infection_margin": None if own is None or others is None else own - others,
        "busiest_sixteenth": busiest,
    }


def constant_map_figures(lungs: Sequence[np.ndarray], infections: Sequence[np.ndarray]
                         ) -> dict[str, Any]:
    """What a map that is the same for every film scores: the average infection mask.

    It knows where infections usually are and nothing of the film, so a map must
    beat it to show that it reads the film (issue 27).

    Args:
        lungs: N (h, w) bool lung masks.
        infections: N (h, w) bool infection masks.

    Returns:
        :func:`localisation_summary` of the constant map, placed on every film.
    """
    prior = constant_map([m for m in infections if np.asarray(m).any()])
    maps = [resize_map(prior, np.asarray(m).shape) for m in lungs]
    energies = np.array([energy_inside(cam, m) for cam, m in zip(maps, lungs, strict=True)])
    peaks = np.array([peak_position(cam) for cam in maps]).reshape(-1, 2)
    return localisation_summary(energies, peaks, lungs, infections)


def with_constant_map(loc: Mapping[str, Any], lungs: Sequence[np.ndarray],
                      infections: Sequence[np.ndarray]) -> dict[str, Any]:
    """The localisation figures with the constant map's beside them (``<key>_constant``)."""
    baseline = constant_map_figures(lungs, infections)
    return {**loc, **{f"{key}{CONSTANT}": baseline[key]
                      for key, _ in (*LOCALISATION_MEASURES, ("infection_margin", ""))}}


def _ci_text(ci: Any) -> str | None:
    if not isinstance(ci, Sequence) or len(ci) != 2 or None in ci:
        return None
    return f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f}%"


def localisation_rows(loc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The localisation figures beside a constant and a uniform map's, as table rows.

    Args:
        loc: The evaluation's ``metrics["localisation"]`` (``energy_in_lungs``,
            ``peak_in_lungs``, ``peak_in_infection``... as shares in [0, 1], with
            ``_ci95``, ``_constant`` and ``_uniform`` twins where measured), or None.

    Returns:
        Dicts with ``measure``, ``model`` (percent), ``95% CI`` (text),
        ``constant map`` and ``uniform map`` (percent; None where missing), one per
        figure measured for the model (an older evaluation lacks the newer ones).
    """
    if not isinstance(loc, Mapping):
        return []

    def _pct(key: str) -> float | None:
        value = loc.get(key)
        return None if value is None else 100.0 * float(value)

    rows = [{"measure": name, "model": _pct(key), "95% CI": _ci_text(loc.get(f"{key}_ci95")),
             "constant map": _pct(f"{key}{CONSTANT}"), "uniform map": _pct(f"{key}{UNIFORM}")}
            for key, name in LOCALISATION_MEASURES]
    return [row for row in rows if row["model"] is not None]


def localisation_verdict(loc: Mapping[str, Any]) -> str:
    """One honest sentence: do the maps find the lungs better than a uniform map?

    Args:
        loc: The evaluation's ``metrics["localisation"]``.

    Returns:
        The sentence.
    """
    energy, uniform = loc.get("energy_in_lungs"), loc.get("energy_in_lungs_uniform")
    if energy is None or uniform is None:
        return "The share of the maps' energy inside the lungs was not measured."
    text = (f"{energy:.0%} of the {loc.get('map') or 'Grad-CAM'} energy lies inside the lungs, "
            f"which cover {uniform:.0%} of the film")
    if energy <= uniform:
        text += (": no better than a map spread evenly over the film, so the model's "
                 "evidence is not in the lungs.")
    elif energy < 0.5:
        text += (": more than an even map, but most of the evidence still lies outside "
                 "the lungs.")
    else:
        text += ": most of the evidence lies in the lungs (necessary, not sufficient)."
    own, others = loc.get("peak_in_infection"), loc.get("peak_in_other_infection")
    if own is not None and others is not None:
        text += (f" Its peak lies in the film's own infection {own:.0%} of the time and in "
                 f"another film's {others:.0%}: what the map adds over a prior blind to the "
                 f"film is the {own - others:.2f} between them.")
    return text
