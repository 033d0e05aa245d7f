"""Reading the evaluation's results back: test scores, confusion matrix, CAM energy.

The model page shows what :mod:`covid.training.evaluate` left beside the model,
read by :func:`read_evaluation` (never raising for a missing or malformed file):
the test-split scores parsed from its CSV (:func:`scores_from_csv`), the
confusion matrix at an operating point (:func:`confusion_at`), the ROC marker
and the change from the shipped point (:func:`roc_marker`, :func:`change_from`),
the split sizes (:func:`split_table`), the Grad-CAM energy check in words
(:func:`cam_energy_rows`, :func:`cam_energy_verdict`), and where the evidence lies
against the lungs: each test film's share inside them, per class
(:func:`lung_evidence_from_csv`, :func:`lung_evidence_rows`), and the localisation
figures beside a uniform map's (:func:`localisation_rows`, :func:`localisation_verdict`).

No Streamlit and no TensorFlow: everything takes and returns plain values.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covid.explain.cam_stats import REGIONS, area_shares
from covid.training.evaluate import artefact_paths

SPLIT_ORDER = ("train", "val", "test")
"""The order split sizes are shown in (any other side follows)."""

SAME_CHANGE_PP = 0.05
"""A change from the shipped point smaller than this (percentage points) shows as none."""


@dataclass
class Evaluation:
    """The evaluation artefacts beside a model, as far as they could be read.

    Attributes:
        summary: The evaluation JSON (metrics, temperature, threshold, curves,
            optionally ``cam_energy``), or None.
        scores: The test split's calibrated P(positive) and truth, or None.
        problems: Plain-words reasons for what is missing or unreadable.
        lung_evidence: Per true class, each test film's share of Grad-CAM
            energy inside the lungs, or None when the scores CSV has none.
    """

    summary: dict[str, Any] | None
    scores: tuple[np.ndarray, np.ndarray] | None
    problems: list[str]
    lung_evidence: dict[str, np.ndarray] | None = None

    @property
    def test_prevalence(self) -> float | None:
        """The positive class's share of the test split, or None without scores."""
        if self.scores is None:
            return None
        return float(self.scores[1].mean())


def read_evaluation(path: str | Path, positive_class: str) -> Evaluation:
    """Reads the evaluation JSON and the test scores CSV beside a model.

    Args:
        path: The ``.keras`` model.
        positive_class: The pathological class, as written in the scores CSV.

    Returns:
        What could be read, and why the rest could not (never raises for a
        missing or malformed file).
    """
    paths = artefact_paths(path)
    problems: list[str] = []
    summary = scores = lung_evidence = None
    try:
        summary = json.loads(paths["evaluation"].read_text())
        if not isinstance(summary, dict):
            raise ValueError("it is not a JSON object")
    except FileNotFoundError:
        problems.append(f"`{paths['evaluation'].name}` (metrics and curves) is missing.")
    except (OSError, ValueError) as err:
        summary = None
        problems.append(f"`{paths['evaluation'].name}` cannot be read ({err}).")
    try:
        text = paths["scores"].read_text()
        scores = scores_from_csv(text, positive_class)
        lung_evidence = lung_evidence_from_csv(text)
    except FileNotFoundError:
        problems.append(f"`{paths['scores'].name}` (per-image test scores) is missing.")
    except (OSError, ValueError) as err:
        problems.append(f"`{paths['scores'].name}` cannot be read ({err}).")
    return Evaluation(summary=summary, scores=scores, problems=problems,
                      lung_evidence=lung_evidence)



def scores_from_csv(text: str, positive_class: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split's calibrated scores and truth, from the evaluation's scores CSV.

    Args:
        text: The CSV (columns ``file,label,p_covid,logit_covid,logit_normal``).
        positive_class: The pathological class, as written in ``label``.

    Returns:
        ``(scores, is_positive)``: (N,) float64 calibrated P(positive) and (N,) bool.

    Raises:
        ValueError: A column is missing, a score is not a number in [0, 1], or
            there are no rows.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"label", "p_covid"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"the scores CSV lacks the column(s) {', '.join(sorted(missing))}")
    scores, truth = [], []
    for line, row in enumerate(reader, start=2):
        try:
            score = float(row["p_covid"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"line {line}: p_covid is not a number") from err
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"line {line}: p_covid {score} is outside [0, 1]")
        scores.append(score)
        truth.append(row["label"] == positive_class)
    if not scores:
        raise ValueError("the scores CSV has no rows")
    return np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)


def lung_evidence_from_csv(text: str) -> dict[str, np.ndarray] | None:
    """Each test film's share of evidence inside the lungs, grouped by true class.

    Args:
        text: The scores CSV; its optional ``lung_evidence`` column holds a share
            in [0, 1] per film (empty where none was measured).

    Returns:
        ``{label: (N,) float64 shares}`` in the order the classes first appear,
        or None when the column is absent or holds no usable value.
    """
    reader = csv.DictReader(io.StringIO(text))
    if "lung_evidence" not in (reader.fieldnames or ()):
        return None
    groups: dict[str, list[float]] = {}
    for row in reader:
        try:
            share = float(row.get("lung_evidence") or "nan")
        except ValueError:
            continue
        if 0.0 <= share <= 1.0:  # False for NaN
            groups.setdefault(row.get("label") or "?", []).append(share)
    return {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()} or None


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


def confusion_at(
    point: Mapping[str, Any], class_names: Sequence[str], positive_class: str
) -> np.ndarray:
    """The 2 x 2 confusion matrix of an operating point, in class order.

    Args:
        point: From :func:`covid.training.metrics.operating_point` (``tp, fn, fp, tn``).
        class_names: The two class names, in output order.
        positive_class: The pathological class.

    Returns:
        (2, 2) int counts; rows are the truth, columns the prediction, both in
        ``class_names`` order (as :func:`covid.training.plots.confusion_figure` expects).

    Raises:
        ValueError: There are not exactly two classes.
    """
    if len(class_names) != 2:
        raise ValueError(f"expected two classes, got {len(class_names)}")
    matrix = np.array([[point["tp"], point["fn"]], [point["fp"], point["tn"]]], dtype=np.int64)
    if list(class_names).index(positive_class) == 1:
        matrix = matrix[::-1, ::-1]
    return matrix


def roc_marker(point: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """Where an operating point sits on the ROC curve: (false-positive rate, sensitivity).

    Args:
        point: From :func:`covid.training.metrics.operating_point`, or None.

    Returns:
        The (x, y) marker, or None when there is no point or a rate is undefined.
    """
    if point is None or point["sensitivity"] is None or point["specificity"] is None:
        return None
    return (1 - point["specificity"], point["sensitivity"])


def change_from(value: float | None, reference: float | None) -> tuple[str | None, bool]:
    """A rate's change from the shipped operating point, in percentage points.

    Args:
        value: The rate at the chosen point (0 to 1), or None.
        reference: The same rate at the shipped point, or None.

    Returns:
        ``(text, same)``: e.g. ``"+2.5 pp vs shipped"`` (None when either rate is
        missing) and whether the change rounds to none (below :data:`SAME_CHANGE_PP`).
    """
    if value is None or reference is None:
        return None, True
    change = 100 * (value - reference)
    return f"{change:+.1f} pp vs shipped", abs(change) < SAME_CHANGE_PP


def split_table(
    splits: Mapping[str, Mapping[str, Any] | None], class_names: Sequence[str]
) -> dict[str, list[Any]]:
    """The split sizes as table columns: one row per split, one column per class, a total.

    Args:
        splits: Per split side, the image count per class (from the metadata).
        class_names: The model's classes, in output order.

    Returns:
        Columns ``split``, one per class and ``total``; rows in :data:`SPLIT_ORDER`,
        then any other side in its recorded order.
    """
    classes = list(class_names)
    rows: dict[str, list[Any]] = {"split": [], **{name: [] for name in classes}, "total": []}
    known = [side for side in SPLIT_ORDER if side in splits]
    for side in known + [side for side in splits if side not in known]:
        counts = splits[side] or {}
        rows["split"].append(side)
        for name in classes:
            rows[name].append(int(counts.get(name, 0)))
        rows["total"].append(sum(int(v) for v in counts.values()))
    return rows


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
