import numpy as np
import pytest

from covid.evaluation.metrics import group_figures, screening_figures

CLASSES = ["COVID", "Other pneumonia", "Normal"]


def test_figures_follow_the_decision_rule():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.05, 0.05, 0.9], [0.2, 0.2, 0.6],
                      [0.45, 0.5, 0.05], [0.2, 0.1, 0.7]])
    truth = np.array(["COVID", "Other pneumonia", "Normal", "Other pneumonia", "COVID", "Normal"])
    fig = screening_figures(probs, truth, CLASSES, threshold=0.5,
                            groups={"by_age": np.array(["adult", "child"] * 3)})
    m = np.array(fig["confusion3"]["matrix"])
    assert m.sum() == 6
    assert m.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert fig["sent_home"]["Other pneumonia"] == 0.5
    assert fig["sensitivity"] == 0.5 and fig["specificity"] == 1.0
    assert fig["admitted_findings"] == 0.75
    assert set(fig["auc_per_class"]) == set(CLASSES)
    assert "child / Other pneumonia" in fig["by_age"]


def test_a_two_class_model_sends_pneumonias_somewhere():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    truth = np.array(["COVID", "Normal", "Other pneumonia"])
    fig = screening_figures(probs, truth, ["COVID", "Normal"], threshold=0.5)
    assert fig["labelled_covid"]["Other pneumonia"] == 1.0
    assert fig["sent_home"]["Other pneumonia"] == 0.0
    assert fig["auc_covid_vs_normal"]["auc"] == pytest.approx(1.0)


def test_group_figures():
    out = group_figures(np.array(["Normal"] * 4), np.array(["Normal", "COVID", "Normal", "Normal"]))
    assert out["n"] == 4 and out["sent_home"] == 0.75
    assert out["label_shares"] == {"COVID": 0.25, "Normal": 0.75}
