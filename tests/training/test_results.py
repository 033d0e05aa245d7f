"""Reading the evaluation back for the model page: scores, confusion, CAM energy, splits."""

import json

import numpy as np
import pytest

from covid.training.evaluate import artefact_paths
from covid.training.metrics import operating_point
from covid.training.results import (
    cam_energy_rows,
    cam_energy_verdict,
    change_from,
    confusion_at,
    read_evaluation,
    roc_marker,
    scores_from_csv,
    split_table,
)

SCORES = ("file,label,p_covid,logit_covid,logit_normal\r\n"
          "COVID/1.png,COVID,0.900000,1,0\r\nNormal/2.png,Normal,0.250000,0,1\r\n"
          "Normal/3.png,Normal,0.100000,0,1\r\nNormal/4.png,Normal,0.050000,0,1\r\n")


def test_scores_from_csv_reads_the_evaluation_file():
    text = ("file,label,p_covid,logit_covid,logit_normal\r\n"
            "COVID/1.png,COVID,0.900000,1,0\r\nNormal/2.png,Normal,0.250000,0,1\r\n")
    scores, truth = scores_from_csv(text, "COVID")
    assert scores.tolist() == [0.9, 0.25] and truth.tolist() == [True, False]


@pytest.mark.parametrize("text, message", [
    ("file,label\r\nx,COVID\r\n", "p_covid"),
    ("file,label,p_covid\r\nx,COVID,high\r\n", "not a number"),
    ("file,label,p_covid\r\nx,COVID,1.5\r\n", "outside"),
    ("file,label,p_covid\r\n", "no rows"),
])
def test_scores_from_csv_refuses_malformed_files(text, message):
    with pytest.raises(ValueError, match=message):
        scores_from_csv(text, "COVID")


@pytest.mark.parametrize("class_names", [["COVID", "Normal"], ["Normal", "COVID"]])
def test_confusion_at_puts_truth_in_rows_in_class_order(class_names):
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2])
    truth = np.array([True, True, True, False, False, False])
    point = operating_point(scores, truth, 0.5)  # tp 2, fn 1, fp 1, tn 2
    matrix = confusion_at(point, class_names, "COVID")
    covid, normal = class_names.index("COVID"), class_names.index("Normal")
    assert matrix[covid, covid] == 2 and matrix[covid, normal] == 1
    assert matrix[normal, covid] == 1 and matrix[normal, normal] == 2


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


def test_read_evaluation_reads_both_artefacts(tmp_path):
    model = tmp_path / "m.keras"
    paths = artefact_paths(model)
    paths["evaluation"].write_text(json.dumps({"metrics": {"auc": 0.9}}))
    paths["scores"].write_text(SCORES)
    evaluation = read_evaluation(model, "COVID")
    assert evaluation.problems == [] and evaluation.summary == {"metrics": {"auc": 0.9}}
    scores, truth = evaluation.scores
    assert scores.tolist() == [0.9, 0.25, 0.1, 0.05] and truth.sum() == 1
    assert evaluation.test_prevalence == pytest.approx(0.25)


def test_read_evaluation_says_what_is_missing_or_unreadable(tmp_path):
    model = tmp_path / "m.keras"
    missing = read_evaluation(model, "COVID")
    assert missing.summary is None and missing.scores is None
    assert missing.test_prevalence is None
    assert missing.problems == ["`m.evaluation.json` (metrics and curves) is missing.",
                                "`m.test_scores.csv` (per-image test scores) is missing."]
    paths = artefact_paths(model)
    paths["evaluation"].write_text("[1, 2]")
    paths["scores"].write_text("file,label\r\n")
    broken = read_evaluation(model, "COVID")
    assert broken.summary is None and broken.scores is None
    assert "cannot be read (it is not a JSON object)" in broken.problems[0]
    assert "cannot be read" in broken.problems[1] and "p_covid" in broken.problems[1]


def test_roc_marker_is_false_positive_rate_and_sensitivity():
    assert roc_marker({"sensitivity": 0.9, "specificity": 0.75}) == pytest.approx((0.25, 0.9))
    assert roc_marker(None) is None
    assert roc_marker({"sensitivity": None, "specificity": 0.5}) is None


def test_change_from_the_shipped_point_in_percentage_points():
    assert change_from(0.95, 0.9) == ("+5.0 pp vs shipped", False)
    assert change_from(0.8, 0.9)[0] == "-10.0 pp vs shipped"
    assert change_from(0.9002, 0.9) == ("+0.0 pp vs shipped", True)
    assert change_from(None, 0.9) == (None, True) and change_from(0.9, None) == (None, True)


def test_split_table_orders_sides_and_totals_them():
    splits = {"test": {"COVID": 2, "Normal": 3}, "extra": None, "train": {"COVID": 7, "Normal": 8},
              "val": {"Normal": 1}}
    rows = split_table(splits, ["COVID", "Normal"])
    assert rows == {"split": ["train", "val", "test", "extra"], "COVID": [7, 0, 2, 0],
                    "Normal": [8, 1, 3, 0], "total": [15, 1, 5, 0]}
