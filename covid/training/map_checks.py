"""Where the maps' evidence lies, as table rows and one honest sentence each.

Three checks of the evaluation's Grad-CAM maps, each against what a uniform
(uninformative) map would score: the energy on the central chest box, borders
and corners (:func:`cam_energy_rows`, :func:`cam_energy_verdict`); each test
film's share inside its lungs, per true class (:func:`lung_evidence_rows`, read
by :func:`covid.training.results.lung_evidence_from_csv`); and the localisation
figures on the radiologists' masks (:func:`localisation_rows`,
:func:`localisation_verdict`).

No Streamlit and no TensorFlow: everything takes and returns plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from covid.explain.cam_stats import REGIONS, area_shares


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
    ("peak_in_infection", "Map's peak inside the infection"),
)
"""The localisation figures (keys of ``metrics["localisation"]``) and their names."""


def localisation_rows(loc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The localisation figures beside what a uniform map would score, as table rows.

    Args:
        loc: The evaluation's ``metrics["localisation"]`` (``energy_in_lungs``,
            ``peak_in_lungs``, ``peak_in_infection``, each with a ``_uniform``
            twin, as shares in [0, 1]), or None.

    Returns:
        Dicts with ``measure``, ``model`` and ``uniform map`` in percent (None
        where missing); empty when no figure is there.
    """
    if not isinstance(loc, Mapping):
        return []

    def _pct(key: str) -> float | None:
        value = loc.get(key)
        return None if value is None else 100.0 * float(value)

    rows = [{"measure": name, "model": _pct(key), "uniform map": _pct(f"{key}_uniform")}
            for key, name in LOCALISATION_MEASURES]
    return rows if any(row["model"] is not None for row in rows) else []


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
        return (text + ": no better than a map spread evenly over the film, so the model's "
                "evidence is not in the lungs.")
    if energy < 0.5:
        return (text + ": more than an even map, but most of the evidence still lies outside "
                "the lungs.")
    return text + ": most of the evidence lies in the lungs (necessary, not sufficient)."


def _area(energy: Mapping[str, Any]) -> dict[str, float]:
    """Each region's share of the image (what a uniform map would get)."""
    area = energy.get("area")
    if isinstance(area, Mapping) and all(area.get(r) is not None for r in REGIONS):
        return {r: float(area[r]) for r in REGIONS}
    return area_shares(224, 224)


def cam_energy_rows(energy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Grad-CAM energy shares as table rows: overall, per true class, and by area.

    Args:
        energy: The evaluation's ``cam_energy`` (``overall`` and ``per_class``
            groups of ``n, central, border, corners``; optionally ``area``).

    Returns:
        Dicts with ``group``, ``images`` and one percentage per region (None
        where a group has no map with energy); the last row is what a uniform
        map would give.
    """
    groups = [("All test images", energy.get("overall") or {})]
    per_class = energy.get("per_class") or {}
    groups += [(f"True {name}", group or {}) for name, group in per_class.items()]
    rows = []
    for name, group in groups:
        row: dict[str, Any] = {"group": name, "images": group.get("n")}
        for region in REGIONS:
            value = group.get(region)
            row[region] = None if value is None else 100.0 * float(value)
        rows.append(row)
    area = _area(energy)
    rows.append({"group": "Uniform map (area)", "images": None,
                 **{region: 100.0 * area[region] for region in REGIONS}})
    return rows


CLEAR_MARGIN = 0.10
"""How far above its area share the central energy must be to call it a lean toward the chest."""


def cam_energy_verdict(energy: Mapping[str, Any]) -> str:
    """One honest sentence on where the maps put their energy.

    Compares the central chest box's share of the Grad-CAM energy with its
    share of the image (what a uniform, uninformative map would give): below
    it, the maps favour the film's borders; less than :data:`CLEAR_MARGIN`
    above it, the check shows little; further above, the maps lean toward the
    chest, which is necessary but not sufficient evidence that the model reads
    the lungs. Classes whose maps fall below the uniform share are named, and
    the corners (where text markers sit) when they get more than their area.

    Args:
        energy: The evaluation's ``cam_energy``.

    Returns:
        The sentence.
    """
    overall = energy.get("overall") or {}
    central, corners = overall.get("central"), overall.get("corners")
    if central is None:
        return "No map had any energy, so this check says nothing about what the model uses."
    area = _area(energy)
    share = (f"{central:.0%} of the Grad-CAM energy falls on the central chest region, which "
             f"covers {area['central']:.0%} of the image")
    if central <= area["central"]:
        text = (f"Only {share}: no more than an uninformative map, so the model may be reading "
                "the film's borders rather than the lungs.")
    elif central - area["central"] < CLEAR_MARGIN:
        text = (f"{share}: barely more than an uninformative map, so this check does not show "
                "that the model reads the lungs.")
    else:
        text = (f"{share}: the maps lean toward the chest, which is necessary but not "
                "sufficient; it does not rule out shortcuts.")
    below = [(name, group["central"]) for name, group in (energy.get("per_class") or {}).items()
             if (group or {}).get("central") is not None and group["central"] < area["central"]]
    if below and central > area["central"]:
        text += " For true " + " and ".join(f"{n} films it is {v:.0%}" for n, v in below) + "."
    if corners is not None and corners > area["corners"]:
        text += (f" The corners, where text markers sit, get {corners:.0%} of it for "
                 f"{area['corners']:.0%} of the area, a possible source shortcut.")
    return text
