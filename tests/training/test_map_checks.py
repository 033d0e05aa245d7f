"""Where the maps' evidence lies, against a uniform map: CAM energy by region, each
film's share inside its lungs, and the localisation figures on radiologists' masks."""

import numpy as np
import pytest

from covid.training.map_checks import (
    cam_energy_rows,
    cam_energy_verdict,
    localisation_rows,
    localisation_verdict,
    lung_evidence_rows,
)


def _energy(central, corners=0.02, covid=None):
    group = {"n": 10, "n_empty": 0, "central": central, "border": 1 - central, "corners": corners}
    covid_group = group if covid is None else dict(group, central=covid, border=1 - covid)
    return {"overall": group, "per_class": {"COVID": covid_group, "Normal": dict(group, n=4)},
            "area": {"central": 0.56, "border": 0.44, "corners": 0.09}}


def test_cam_energy_rows():
    rows = cam_energy_rows(_energy(0.8))
    assert [r["group"] for r in rows] == ["All test images", "True COVID", "True Normal",
                                          "Uniform map (area)"]
    assert rows[0]["central"] == pytest.approx(80.0) and rows[2]["images"] == 4
    assert rows[-1]["central"] == pytest.approx(56.0) and rows[-1]["images"] is None


def test_cam_energy_verdict_is_graded_against_a_uniform_map():
    clear = cam_energy_verdict(_energy(0.8))
    assert clear.startswith("80% of the Grad-CAM energy") and "not sufficient" in clear
    assert "films" not in clear and "corners" not in clear
    weak = cam_energy_verdict(_energy(0.61, covid=0.54))
    assert "barely more than an uninformative map" in weak
    assert weak.endswith("For true COVID films it is 54%.")
    low = cam_energy_verdict(_energy(0.5, corners=0.2))
    assert low.startswith("Only 50%") and "borders" in low and "corners" in low
    assert "says nothing" in cam_energy_verdict({"overall": {"central": None}})


def test_lung_evidence_rows_summarise_each_class():
    rows = lung_evidence_rows({"COVID": np.array([0.8, 0.4, 0.6]), "Normal": np.array([0.2])})
    assert rows[0] == {"class": "True COVID", "films": 3, "median": pytest.approx(60.0),
                       "mean": pytest.approx(60.0), "below caution": pytest.approx(100 / 3)}
    assert rows[1]["below caution"] == 100.0


LOCALISATION = {"n": 40, "n_with_infection": 38, "energy_in_lungs": 0.15,
                "energy_in_lungs_uniform": 0.26, "peak_in_lungs": 0.04,
                "peak_in_lungs_uniform": 0.26, "peak_in_infection": 0.04,
                "peak_in_infection_uniform": 0.07}


def test_localisation_rows_put_each_figure_beside_a_uniform_maps():
    rows = localisation_rows(LOCALISATION)
    assert [r["measure"] for r in rows] == ["Grad-CAM energy inside the lungs",
                                           "Map's peak inside the lungs",
                                           "Map's peak inside the infection"]
    assert rows[0]["model"] == pytest.approx(15.0)
    assert rows[0]["uniform map"] == pytest.approx(26.0)
    assert rows[2]["uniform map"] == pytest.approx(7.0)
    partial = localisation_rows({"energy_in_lungs": 0.7, "peak_in_infection": None})
    assert partial[0]["uniform map"] is None and partial[2]["model"] is None
    assert localisation_rows(None) == [] and localisation_rows({"n": 3}) == []


def test_localisation_verdict_is_graded_against_a_uniform_map():
    assert "no better than a map spread evenly" in localisation_verdict(LOCALISATION)
    assert "most of the evidence still lies outside" in localisation_verdict(
        {**LOCALISATION, "energy_in_lungs": 0.4})
    assert "most of the evidence lies in the lungs" in localisation_verdict(
        {**LOCALISATION, "energy_in_lungs": 0.75})
    assert "not measured" in localisation_verdict({})
