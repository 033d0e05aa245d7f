"""The opacity segmenter's figures as the model page words them."""

import numpy as np

from covid.evaluation.segmenters import grade_confusion, opacity_rows

SERVED = {
    "covid_films": 214, "normal_films": 106, "dice_mean": 0.7249, "dice_median": 0.788,
    "extent_abs_error_median_pts": 11.11, "score_within_2": 0.8505,
    "normal_extent_median_pct": 0.0, "normal_score_zero": 0.5377,
    "score_confusion": np.eye(9, dtype=int).tolist(),
}


def test_rows_word_the_served_figures():
    rows = dict(opacity_rows({"lung_segmenter_lungs": SERVED, "radiologists_lungs": {}}))
    assert rows["test films: COVID-19 / normal"] == "214 / 106"
    assert rows["mean Dice, COVID-19 films"] == "0.725 (median 0.788)"
    assert rows["extent of both lungs: median absolute error"] == "11.1 points"
    assert rows["0-8 score within 2 of the radiologists'"] == "85.0%"
    assert rows["normal films: median extent"] == "0.0%"
    assert rows["normal films graded 0"] == "53.8%"


def test_figures_not_measured_are_said_so_and_no_record_gives_no_rows():
    empty = {**SERVED, "dice_mean": None, "score_within_2": None}
    rows = dict(opacity_rows({"lung_segmenter_lungs": empty}))
    assert rows["mean Dice, COVID-19 films"] == "not measured"
    assert rows["0-8 score within 2 of the radiologists'"] == "not measured"
    assert opacity_rows({}) == [] and grade_confusion({}) is None


def test_the_grade_confusion_is_the_recorded_table():
    matrix = grade_confusion({"lung_segmenter_lungs": SERVED})
    assert matrix.shape == (9, 9) and matrix.trace() == 9 and matrix.dtype.kind == "i"
