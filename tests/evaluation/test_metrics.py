import numpy as np
import pytest

from covid.evaluation.metrics import auc_with_ci, operating_point, roc_points


def test_perfect_scores_give_auc_one():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 1], bool)
    auc, low, high = auc_with_ci(labels.astype(float) * 0.8 + 0.1, labels, n_boot=200)
    assert (auc, low, high) == (1.0, 1.0, 1.0)


def test_random_scores_give_auc_near_half_with_ci_covering_it():
    rng = np.random.default_rng(0)
    auc, low, high = auc_with_ci(rng.uniform(size=2000), rng.uniform(size=2000) < 0.3, n_boot=300)
    assert low < 0.5 < high
    assert abs(auc - 0.5) < 0.05
    assert high - low < 0.1


def test_known_confusion_matrix():
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1, 0.6, 0.3])
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    m = operating_point(scores, truth, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 2, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["ppv"] == pytest.approx(2 / 4)
    assert m["npv"] == pytest.approx(3 / 4)


def test_ppv_npv_follow_prevalence():
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1, 0.6, 0.3])
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    m = operating_point(scores, truth, 0.5, prevalence=0.1)
    sens, spec = 2 / 3, 3 / 5
    assert m["ppv"] == pytest.approx(sens * 0.1 / (sens * 0.1 + (1 - spec) * 0.9))
    assert m["npv"] == pytest.approx(spec * 0.9 / (spec * 0.9 + (1 - sens) * 0.1))


def test_roc_points_span_the_unit_square():
    roc = roc_points(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
    assert roc["fpr"][0] == 0 and roc["fpr"][-1] == 1
    assert roc["tpr"][-1] == 1
    assert max(roc["thresholds"]) <= 1

