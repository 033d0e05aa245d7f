"""Reading the evaluation back for the model page: every class's scores, the matrix at any
operating point, admit against home, splits, each film's share of evidence inside the
lungs, and the figures by group."""

import json

import numpy as np
import pytest

from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.metrics import operating_point
from covid.evaluation.plots import class_roc_figure, confusion_figure, trade_figure
from covid.evaluation.results import (
    change_from,
    class_scores_from_csv,
    confusion_matrix_at,
    finding_rates,
    finding_roc,
    group_rows,
    lung_evidence_from_csv,
    read_evaluation,
    roc_marker,
    split_table,
    trade_curve,
    trade_thresholds,
)
from covid.model.decision import decide_labels, p_finding

CLASSES = ["COVID", "Other pneumonia", "Normal"]
SCORES = ("file,true,label,p_covid,p_other_pneumonia,p_normal\r\n"
          "COVID/1.png,COVID,COVID,0.9,0.05,0.05\r\nNormal/2.png,Normal,COVID,0.25,0,0.75\r\n"
          "Normal/3.png,Normal,Normal,0.1,0,0.9\r\nNormal/4.png,Normal,Normal,0.05,0,0.95\r\n")


def test_read_evaluation_reads_both_artefacts(tmp_path):
    model = tmp_path / "m.keras"
    paths = artefact_paths(model)
    paths["evaluation"].write_text(json.dumps({"metrics": {"auc": 0.9}}))
    paths["scores"].write_text(SCORES)
    evaluation = read_evaluation(model, CLASSES)
    assert evaluation.problems == () and evaluation.summary == {"metrics": {"auc": 0.9}}
    scores, truth = evaluation.scores  # P(any finding), and whether a film has one
    assert scores.tolist() == pytest.approx([0.95, 0.25, 0.1, 0.05]) and truth.sum() == 1
    assert evaluation.test_prevalence == pytest.approx(0.25)


def test_read_evaluation_says_what_is_missing_or_unreadable(tmp_path):
    model = tmp_path / "m.keras"
    missing = read_evaluation(model, CLASSES)
    assert missing.summary is None and missing.scores is None
    assert missing.test_prevalence is None
    assert missing.problems == ("`m.evaluation.json` (metrics and curves) is missing.",
                                "`m.test_scores.csv` (per-image test scores) is missing.")
    paths = artefact_paths(model)
    paths["evaluation"].write_text("[1, 2]")
    paths["scores"].write_text("file,label\r\n")
    broken = read_evaluation(model, CLASSES)
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


SCORES_WITH_LUNGS = (
    "file,true,p_covid,p_other_pneumonia,p_normal,lung_evidence\r\n"
    "COVID/1.png,COVID,0.9,0,0.1,0.8\r\nNormal/2.png,Normal,0.25,0,0.75,0.3\r\n"
    "COVID/3.png,COVID,0.7,0,0.3,0.4\r\nNormal/4.png,Normal,0.05,0,0.95,\r\n"
    "Normal/5.png,Normal,0.1,0,0.9,0.9\r\n"
)


def test_lung_evidence_is_read_per_class_and_absent_where_not_measured():
    groups = lung_evidence_from_csv(SCORES_WITH_LUNGS)
    assert list(groups) == ["COVID", "Normal"]
    assert groups["COVID"].tolist() == [0.8, 0.4]
    assert groups["Normal"].tolist() == [0.3, 0.9]  # the empty value is left out
    assert lung_evidence_from_csv(SCORES) is None  # no such column
    assert lung_evidence_from_csv("file,true,p_covid,lung_evidence\r\nx,COVID,0.5,\r\n") is None


def test_read_evaluation_carries_the_lung_evidence(tmp_path):
    model = tmp_path / "m.keras"
    paths = artefact_paths(model)
    paths["scores"].write_text(SCORES_WITH_LUNGS)
    evaluation = read_evaluation(model, CLASSES)
    assert evaluation.lung_evidence["COVID"].tolist() == [0.8, 0.4]
    assert evaluation.scores[0].tolist() == pytest.approx([0.9, 0.25, 0.7, 0.05, 0.1])
    paths["scores"].write_text(SCORES)
    assert read_evaluation(model, CLASSES).lung_evidence is None


# ------------------------------------------------------------------ three classes

SCORES3 = (  # as covid.evaluation.evaluate writes it: ``label`` is the decided label
    "file,true,source,age,label,p_covid,p_other_pneumonia,p_normal,lung_evidence\r\n"
    "a.png,COVID,s1,adult,COVID,0.7,0.2,0.1,0.5\r\n"
    "b.png,COVID,s1,adult,Normal,0.2,0.1,0.7,\r\n"
    "c.png,Other pneumonia,s2,child,Other pneumonia,0.1,0.6,0.3,0.4\r\n"
    "d.png,Other pneumonia,s2,child,COVID,0.35,0.3,0.35,0.9\r\n"
    "e.png,Normal,s3,adult,Normal,0.1,0.1,0.8,\r\n"
    "f.png,Normal,s3,child,COVID,0.5,0.2,0.3,0.2\r\n"
)  # P(any finding): 0.9, 0.3, 0.7, 0.65, 0.2, 0.7


def test_class_scores_are_read_per_class_with_the_true_class():
    scores = class_scores_from_csv(SCORES3, CLASSES)
    assert scores.class_names == tuple(CLASSES) and scores.probs.shape == (6, 3)
    assert scores.probs[3].tolist() == [0.35, 0.3, 0.35]
    assert scores.truth.tolist() == ["COVID"] * 2 + ["Other pneumonia"] * 2 + ["Normal"] * 2
    assert not scores.probs.flags.writeable and not scores.truth.flags.writeable


@pytest.mark.parametrize("text, message", [
    (SCORES3.replace("p_other_pneumonia", "p_other"), "p_other_pneumonia"),
    (SCORES3.replace(",true,", ",truth,"), "true"),
    (SCORES3.replace("0.6,0.3", "six,0.3"), "line 4: p_other_pneumonia is not a number"),
    (SCORES3.replace("0.8,", "1.8,"), "p_normal 1.8 is outside"),
    (SCORES3.split("\r\n")[0] + "\r\n", "no rows"),
])
def test_class_scores_refuse_malformed_files(text, message):
    with pytest.raises(ValueError, match=message):
        class_scores_from_csv(text, CLASSES)


def test_the_truth_is_the_true_column_not_the_decided_label():
    scores = class_scores_from_csv(SCORES3, CLASSES)
    assert scores.truth.tolist() == ["COVID", "COVID", "Other pneumonia", "Other pneumonia",
                                     "Normal", "Normal"]
    groups = lung_evidence_from_csv(SCORES3)
    assert groups["COVID"].tolist() == [0.5] and groups["Other pneumonia"].tolist() == [0.4, 0.9]
    assert groups["Normal"].tolist() == [0.2]


def test_the_confusion_matrix_follows_the_decision_rule_at_any_threshold():
    scores = class_scores_from_csv(SCORES3, CLASSES)
    at_half = confusion_matrix_at(scores, 0.5)
    assert at_half.true_names == at_half.labels == tuple(CLASSES)
    assert at_half.matrix.tolist() == [[1, 0, 1], [1, 1, 0], [1, 0, 1]]
    assert not at_half.matrix.flags.writeable
    decided = decide_labels(scores.probs, CLASSES, 0.5)
    for t, true in enumerate(CLASSES):
        for d in range(3):
            assert at_half.matrix[t, d] == np.sum((scores.truth == true) & (decided == d))
    assert confusion_matrix_at(scores, 0.66).matrix.tolist() == [[1, 0, 1], [0, 1, 1],
                                                                 [1, 0, 1]]
    assert confusion_matrix_at(scores, 0.0).matrix[:, 2].tolist() == [0, 0, 0]
    assert confusion_matrix_at(scores, 1.0).matrix[:, 2].tolist() == [2, 2, 2]
    assert at_half.columns() == {"true": CLASSES, "COVID": [1, 1, 1],
                                 "Other pneumonia": [0, 1, 0], "Normal": [1, 0, 1]}


def test_a_two_class_model_judged_on_other_pneumonias_gets_a_row_for_them():
    text = ("file,true,label,p_covid,p_normal\r\na,COVID,COVID,0.8,0.2\r\n"
            "b,Other pneumonia,Normal,0.3,0.7\r\nc,Normal,Normal,0.1,0.9\r\n")
    confusion = confusion_matrix_at(class_scores_from_csv(text, ["COVID", "Normal"]), 0.5)
    assert confusion.true_names == ("COVID", "Normal", "Other pneumonia")
    assert confusion.labels == ("COVID", "Normal")
    assert confusion.matrix.tolist() == [[1, 0], [0, 1], [0, 1]]
    rates = finding_rates(confusion)
    assert rates.sensitivity == 0.5 and rates.specificity == 1.0
    assert dict(rates.sent_home) == {"COVID": 0.0, "Other pneumonia": 1.0}


def test_finding_rates_are_admit_against_home():
    scores = class_scores_from_csv(SCORES3, CLASSES)
    rates = finding_rates(confusion_matrix_at(scores, 0.5))
    assert rates.sensitivity == 0.75 and rates.specificity == 0.5
    assert dict(rates.sent_home) == {"COVID": 0.5, "Other pneumonia": 0.0}
    with pytest.raises(TypeError):
        rates.sent_home["COVID"] = 0.0  # read-only
    assert finding_rates(confusion_matrix_at(scores, 0.66)).sent_home["Other pneumonia"] == 0.5
    for threshold in (0.0, 0.25, 0.5, 0.68, 0.95):  # the same as the binary operating point
        point = operating_point(p_finding(scores.probs, CLASSES), scores.truth != "Normal",
                                threshold)
        rates = finding_rates(confusion_matrix_at(scores, threshold))
        assert (rates.sensitivity, rates.specificity) == pytest.approx(
            (point["sensitivity"], point["specificity"]))
    empty = finding_rates(confusion_matrix_at(class_scores_from_csv(
        SCORES3.split("\r\nc.png")[0] + "\r\n", CLASSES), 0.5))
    assert empty.specificity is None and empty.sent_home["Other pneumonia"] is None


def test_read_evaluation_reads_every_class_of_a_three_class_model(tmp_path):
    model = tmp_path / "m.keras"
    artefact_paths(model)["scores"].write_text(SCORES3)
    evaluation = read_evaluation(model, CLASSES)
    assert evaluation.problems == (  # the JSON is not needed for the scores
        "`m.evaluation.json` (metrics and curves) is missing.",)
    assert evaluation.classes.probs.shape == (6, 3)
    scores, truth = evaluation.scores  # what the operating point thresholds: P(any finding)
    assert scores.tolist() == pytest.approx([0.9, 0.3, 0.7, 0.65, 0.2, 0.7])
    assert truth.tolist() == [True, True, True, True, False, False]
    assert evaluation.test_prevalence == pytest.approx(4 / 6)
    artefact_paths(model)["scores"].write_text(SCORES.replace(",true,", ",truth,"))
    old = read_evaluation(model, CLASSES)
    assert old.scores is None and old.classes is None
    assert "cannot be read" in old.problems[-1] and "true" in old.problems[-1]


def test_finding_roc_reads_the_evaluation_json():
    curve = {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1], "thresholds": [1, 0.5, 0]}
    summary = {"metrics": {"auc_finding": {"auc": 0.9, "ci95": [0.8, 0.95]}},
               "curves": {"roc_finding": curve}}
    points, auc, ci = finding_roc(summary)
    assert points["fpr"] == (0.0, 0.5, 1.0) and points["tpr"] == (0.0, 0.9, 1.0)
    assert (auc, ci) == (0.9, (0.8, 0.95))
    with pytest.raises(KeyError):
        finding_roc({"metrics": {}, "curves": {}})


def test_group_rows_show_each_groups_sent_home_and_findings():
    groups = {"s1 / COVID": {"n": 4, "label_shares": {"COVID": 0.75, "Normal": 0.25},
                             "sent_home": 0.25},
              "kermany-viral / Other pneumonia": {"n": 2, "label_shares": {"COVID": 1.0},
                                                  "sent_home": 0.0}}
    rows = group_rows(groups, CLASSES)
    assert rows[0] == {"group": "s1", "true class": "COVID", "films": 4,
                       "sent home": 25.0, "labelled COVID": 75.0,
                       "labelled Other pneumonia": 0.0}
    assert rows[1]["group"] == "kermany-viral" and rows[1]["true class"] == "Other pneumonia"
    assert rows[1]["labelled COVID"] == 100.0 and rows[1]["sent home"] == 0.0
    assert list(group_rows(groups, ["COVID", "Normal"])[0]) == [
        "group", "true class", "films", "sent home", "labelled COVID"]


def test_three_class_figures_draw_every_class():
    curve = {"fpr": [0.0, 0.3, 1.0], "tpr": [0.0, 0.8, 1.0]}
    aucs = {"COVID": {"auc": 0.91, "ci95": [0.8, 0.97]}, "Other pneumonia": None}
    fig = class_roc_figure({"COVID": curve, "Other pneumonia": curve, "Normal": curve}, aucs,
                           finding=curve, operating=(0.3, 0.8))
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["COVID vs rest, AUC 0.910", "Other pneumonia", "Normal",
                      "any finding vs Normal", "operating point"]
    confusion = confusion_matrix_at(class_scores_from_csv(SCORES3, CLASSES), 0.5)
    fig = confusion_figure(confusion.matrix, confusion.labels, confusion.true_names)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert sorted(t.get_text() for t in ax.texts) == sorted(map(str, confusion.matrix.ravel()))


def test_the_trade_curve_follows_the_decision_rule_per_age_group():
    scores = class_scores_from_csv(SCORES3, CLASSES)
    assert scores.ages.tolist() == ["adult", "adult", "child", "child", "adult", "child"]
    curve = trade_curve(scores, [0.5, 0.75])
    assert list(curve.specificity) == ["all", "adult", "child"]
    assert {g: v.tolist() for g, v in curve.specificity.items()} == {
        "all": [0.5, 1.0], "adult": [1.0, 1.0], "child": [0.0, 1.0]}
    assert {f: v.tolist() for f, v in curve.sent_home.items()} == {
        "COVID": [0.5, 0.5], "Other pneumonia": [0.0, 1.0]}
    thresholds = trade_thresholds(scores, points=11)
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0 and (np.diff(thresholds) > 0).all()
    full = trade_curve(scores, thresholds)
    for k, threshold in enumerate(thresholds):  # the same rates as the live operating point
        rates = finding_rates(confusion_matrix_at(scores, threshold))
        assert full.specificity["all"][k] == pytest.approx(rates.specificity)
        assert {f: v[k] for f, v in full.sent_home.items()} == pytest.approx(
            dict(rates.sent_home))
    assert not full.specificity["child"].flags.writeable
    # a scores file without ages gives the specificity over all normals only
    no_age = SCORES3.replace(",age,", ",group,")
    assert list(trade_curve(class_scores_from_csv(no_age, CLASSES), [0.5]).specificity) == [
        "all"]


def test_the_trade_figure_draws_a_panel_per_finding_and_marks_the_shipped_point():
    scores = class_scores_from_csv(SCORES3, CLASSES)
    curve = trade_curve(scores, trade_thresholds(scores))
    fig = trade_figure(curve, {"shipped": trade_curve(scores, [0.5]),
                               "this session": trade_curve(scores, [0.75])})
    assert [ax.get_title() for ax in fig.axes] == ["COVID", "Other pneumonia"]
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["child normals", "adult normals", "all normals", "shipped (≥ 0.500)",
                      "this session (≥ 0.750)"]
    shipped = [line for line in fig.axes[1].lines if line.get_label() == "shipped (≥ 0.500)"]
    assert shipped[0].get_xydata().tolist() == [[0.0, 0.5]]  # no pneumonia home, half normals
