import numpy as np
import pytest

from covid.model.calibration import (
    calibrated_probs,
    choose_finding_threshold,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def test_calibrated_probs_sum_to_one_and_soften():
    logits = np.array([[4.0, -1.0], [0.5, 0.2]])
    p1, p2 = calibrated_probs(logits, 1.0), calibrated_probs(logits, 2.0)
    np.testing.assert_allclose(p1.sum(axis=1), 1.0, atol=1e-6)
    assert p2[0, 0] < p1[0, 0]
    with pytest.raises(ValueError):
        calibrated_probs(logits, 0.0)


def test_fit_temperature_recovers_known_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (20000, 2))
    p = calibrated_probs(true_logits)
    labels = (rng.uniform(size=20000) > p[:, 0]).astype(int)  # drawn from calibrated probs
    temperature = fit_temperature(true_logits * 3.0, labels)  # the model is 3x overconfident
    assert temperature == pytest.approx(3.0, rel=0.08)


def test_ece_zero_for_calibrated_and_large_for_overconfident():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.5, 1, 50000)
    labels = np.where(rng.uniform(size=50000) < p, 0, 1)
    probs = np.stack([p, 1 - p], axis=1)
    assert expected_calibration_error(probs, labels) < 0.01
    sure = np.stack([np.full(50000, 0.99), np.full(50000, 0.01)], axis=1)
    assert expected_calibration_error(sure, labels) == pytest.approx(0.99 - 0.75, abs=0.01)


def test_choose_threshold_keeps_sensitivity():
    p = np.linspace(0, 1, 200)
    positive = p > 0.3
    t = choose_threshold(p, positive, min_sensitivity=1.0)
    assert t == pytest.approx(p[positive].min())
    t98 = choose_threshold(p, positive, 0.98)
    assert ((p >= t98) & positive).sum() / positive.sum() >= 0.98
    assert t98 > t
    with pytest.raises(ValueError):
        choose_threshold(p, np.zeros(200, bool))


def test_reliability_curve_bins():
    curve = reliability_curve(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 0]))
    assert curve["observed"] == [0.0, 0.5]
    assert curve["count"] == [2.0, 2.0]


def test_the_finding_threshold_admits_enough_of_each_finding():
    # 100 easy COVID films (0.9-0.99) and 100 harder pneumonias (0.3-0.99): pooled, the
    # COVID films would carry the pneumonias; each class alone must keep 98%
    covid = np.linspace(0.9, 0.99, 100)
    pneumonia = np.linspace(0.3, 0.99, 100)
    normal = np.linspace(0.0, 0.5, 100)
    p = np.concatenate([covid, pneumonia, normal])
    names = np.array(["COVID"] * 100 + ["Other pneumonia"] * 100 + ["Normal"] * 100)
    t = choose_finding_threshold(p, names, 0.98)
    assert t == pneumonia[2]  # two of the pneumonias may be missed, no more
    assert (pneumonia >= t).mean() >= 0.98 and (covid >= t).all()
    pooled = choose_threshold(p, names != "Normal", 0.98)
    assert (pneumonia >= pooled).mean() < 0.98  # what pooling would have allowed
    with pytest.raises(ValueError, match="finding"):
        choose_finding_threshold(normal, names[200:])
