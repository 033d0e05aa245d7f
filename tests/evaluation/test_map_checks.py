"""Where the maps' evidence lies: each film's share inside its lungs, and the localisation
figures on radiologists' masks beside a constant and a uniform map's."""

import numpy as np
import pytest

from covid.evaluation.map_checks import (
    constant_map_figures,
    localisation_rows,
    localisation_summary,
    localisation_verdict,
    lung_evidence_rows,
    with_constant_map,
)
from covid.explain.localisation import energy_inside, peak_position


def test_lung_evidence_rows_summarise_each_class():
    rows = lung_evidence_rows({"COVID": np.array([0.8, 0.4, 0.6]), "Normal": np.array([0.2])})
    assert rows[0] == {"class": "True COVID", "films": 3, "median": pytest.approx(60.0),
                       "mean": pytest.approx(60.0), "below caution": pytest.approx(100 / 3)}
    assert rows[1]["below caution"] == 100.0


LOCALISATION = {"n": 40, "n_with_infection": 38, "energy_in_lungs": 0.15,
                "energy_in_lungs_uniform": 0.26, "peak_in_lungs": 0.04,
                "peak_in_lungs_uniform": 0.26, "peak_in_infection": 0.04,
                "peak_in_infection_uniform": 0.07}


def test_localisation_rows_put_each_figure_beside_a_constant_and_a_uniform_maps():
    rows = localisation_rows({**LOCALISATION, "energy_in_lungs_ci95": [0.1, 0.2],
                              "peak_in_infection_constant": 0.5, "peak_in_other_infection": 0.02,
                              "busiest_sixteenth": 0.68})
    assert [r["measure"] for r in rows] == ["Grad-CAM energy inside the lungs",
                                           "Map's peak inside the lungs",
                                           "Map's peak inside the film's own infection",
                                           "Map's peak inside another film's infection",
                                           "Peaks in the busiest sixteenth of the film"]
    assert rows[0]["model"] == pytest.approx(15.0) and rows[0]["95% CI"] == "10-20%"
    assert rows[0]["uniform map"] == pytest.approx(26.0) and rows[1]["95% CI"] is None
    assert rows[2]["uniform map"] == pytest.approx(7.0)
    assert rows[2]["constant map"] == pytest.approx(50.0) and rows[0]["constant map"] is None
    assert rows[4]["model"] == pytest.approx(68.0)
    # figures not measured (an older evaluation) get no row
    partial = localisation_rows({"energy_in_lungs": 0.7, "peak_in_infection": None})
    assert [r["measure"] for r in partial] == ["Grad-CAM energy inside the lungs"]
    assert partial[0]["uniform map"] is None
    assert localisation_rows(None) == [] and localisation_rows({"n": 3}) == []


def _masks(n: int = 8, side: int = 32) -> tuple[list, list]:
    """n films: both lungs, and an infection in one of four places inside them."""
    lungs, infections = [], []
    for k in range(n):
        size = side if k % 2 else 2 * side  # masks at two resolutions
        lung = np.zeros((size, size), bool)
        lung[size // 8:7 * size // 8, size // 8:7 * size // 8] = True
        infection = np.zeros_like(lung)
        top, left = size // 8 + (k % 4 // 2) * size * 3 // 8, size // 8 + (k % 2) * size * 3 // 8
        infection[top:top + size // 4, left:left + size // 4] = True
        lungs.append(lung)
        infections.append(infection)
    return lungs, infections


def _following(infection: np.ndarray) -> np.ndarray:
    """A map that peaks in the middle of the film's infection."""
    cam = infection.astype(float) * 0.5
    rows, cols = np.nonzero(infection)
    cam[int(rows.mean()), int(cols.mean())] = 1.0
    return cam


def test_a_map_that_follows_each_films_infection_beats_other_films_masks():
    lungs, infections = _masks()
    maps = [_following(m) for m in infections]
    energies = np.array([energy_inside(c, m) for c, m in zip(maps, lungs, strict=True)])
    loc = localisation_summary(energies, np.array([peak_position(c) for c in maps]), lungs,
                               infections)
    assert (loc["n"], loc["n_with_infection"]) == (8, 8)
    assert loc["energy_in_lungs"] == pytest.approx(1.0) and loc["peak_in_lungs"] == 1.0
    assert loc["peak_in_infection"] == 1.0
    assert loc["peak_in_other_infection"] == pytest.approx(1 / 7)  # one other film shares it
    assert loc["infection_margin"] == pytest.approx(6 / 7)
    assert loc["busiest_sixteenth"] == pytest.approx(2 / 8)
    low, high = loc["peak_in_lungs_ci95"]
    assert low < 1.0 == high and loc["energy_in_lungs_ci95"] == pytest.approx([1.0, 1.0])
    assert loc["peak_in_lungs_uniform"] == pytest.approx(0.75 ** 2)
    assert loc["peak_in_infection_uniform"] == pytest.approx(1 / 16)

    baseline = constant_map_figures(lungs, infections)
    assert baseline["peak_in_infection"] < loc["peak_in_infection"]
    assert baseline["infection_margin"] < loc["infection_margin"]


def test_a_constant_map_scores_as_the_constant_baseline():
    lungs, infections = _masks()
    baseline = constant_map_figures(lungs, infections)
    # the constant map is the same for every film: its peaks all fall in one sixteenth, and
    # land in a film's own infection as often as in another's
    assert baseline["busiest_sixteenth"] == 1.0
    assert baseline["peak_in_infection"] == pytest.approx(baseline["peak_in_other_infection"])
    assert baseline["peak_in_lungs"] == 1.0
    loc = with_constant_map({"energy_in_lungs": 0.3}, lungs, infections)
    assert loc["energy_in_lungs"] == 0.3
    for key in ("energy_in_lungs", "peak_in_lungs", "peak_in_infection",
                "peak_in_other_infection", "busiest_sixteenth", "infection_margin"):
        assert loc[f"{key}_constant"] == baseline[key], key


def test_no_films_give_no_figures():
    loc = localisation_summary(np.zeros(0), np.zeros((0, 2)), [], [])
    assert loc["n"] == 0 and loc["energy_in_lungs"] is None and loc["peak_in_infection"] is None
    assert loc["busiest_sixteenth"] is None and loc["energy_in_lungs_ci95"] is None


def test_localisation_verdict_is_graded_against_a_uniform_map():
    assert "no better than a map spread evenly" in localisation_verdict(LOCALISATION)
    assert "most of the evidence still lies outside" in localisation_verdict(
        {**LOCALISATION, "energy_in_lungs": 0.4})
    assert "most of the evidence lies in the lungs" in localisation_verdict(
        {**LOCALISATION, "energy_in_lungs": 0.75})
    assert "not measured" in localisation_verdict({})
    assert localisation_verdict({**LOCALISATION, "peak_in_infection": 0.69,
                                 "peak_in_other_infection": 0.39}).endswith(
        "Its peak lies in the film's own infection 69% of the time and in another film's 39%: "
        "what the map adds over a prior blind to the film is the 0.30 between them.")
