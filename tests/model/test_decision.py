"""The one decision rule: any finding admits, only a normal film goes home."""

import numpy as np
import pytest

from covid import DISCLAIMER
from covid.model.decision import (
    ADVICE,
    FLAG_NONE,
    FLAG_NOT_CHEST,
    FLAG_UNUSUAL,
    FLAGS,
    NOT_A_CHEST_XRAY,
    UNUSUAL_ADVICE,
    decide,
    decide_labels,
    finding_name,
    p_finding,
    why_sentence,
)

THREE = ("COVID", "Other pneumonia", "Normal")
TWO = ("COVID", "Normal")


def test_the_operating_point_is_on_the_probability_of_any_finding():
    probs = np.array([[0.3, 0.3, 0.4], [0.05, 0.1, 0.85], [0.6, 0.1, 0.3]])
    np.testing.assert_allclose(p_finding(probs, THREE), [0.6, 0.15, 0.7])
    # 0.6 of findings admits even though Normal is the likeliest single class
    assert decide_labels(probs, THREE, 0.5).tolist() == [0, 2, 0]
    assert decide_labels(probs, THREE, 0.1).tolist() == [0, 1, 0]  # the likelier finding
    assert decide_labels(probs, THREE, 0.65).tolist() == [2, 2, 0]


@pytest.mark.parametrize(("probs", "label"), [
    ([0.7, 0.2, 0.1], "COVID"), ([0.2, 0.7, 0.1], "Other pneumonia"), ([0.1, 0.1, 0.8], "Normal")])
def test_each_label_gets_the_prototypes_advice_with_the_disclaimer(probs, label):
    decision = decide(np.array(probs), THREE, 0.5)
    assert decision.label == label and decision.flag == FLAG_NONE and not decision.ood
    assert decision.triage == f"{ADVICE[label]} {DISCLAIMER}"
    assert decision.admit == (label != "Normal")
    assert decision.advice == ("home" if label == "Normal" else "admit")
    assert ("admit" in decision.triage) == decision.admit
    assert ("go home" in decision.triage) == (label == "Normal")


def test_a_film_that_is_not_a_chest_xray_is_refused_without_label_or_advice():
    decision = decide(np.array([0.9, 0.05, 0.05]), THREE, 0.5, flag=FLAG_NOT_CHEST)
    assert decision.label == "" and decision.refused and decision.ood
    assert not decision.admit and decision.advice == ""
    assert decision.triage == f"{NOT_A_CHEST_XRAY} {DISCLAIMER}"


@pytest.mark.parametrize("probs", [[0.9, 0.05, 0.05], [0.01, 0.01, 0.98]])
def test_an_unusual_chest_xray_keeps_its_label_and_is_always_admitted(probs):
    decision = decide(np.array(probs), THREE, 0.5, flag=FLAG_UNUSUAL)
    assert decision.label == decide(np.array(probs), THREE, 0.5).label  # label unchanged
    assert decision.admit and decision.advice == "admit" and decision.ood
    assert not decision.refused
    assert decision.triage == f"{UNUSUAL_ADVICE} {DISCLAIMER}"
    assert "go home" not in decision.triage and "radiologist" in decision.triage


def test_no_flag_ever_sends_a_finding_home():
    rng = np.random.default_rng(0)
    for probs in rng.dirichlet(np.ones(3), size=200):
        for flag in FLAGS:
            decision = decide(probs, THREE, 0.3, flag=flag)
            if decision.label and decision.label != "Normal":
                assert decision.advice == "admit"
            if flag != FLAG_NONE:
                assert decision.advice != "home"


def test_an_unknown_flag_is_an_error():
    with pytest.raises(ValueError, match="unknown flag"):
        decide(np.array([0.5, 0.2, 0.3]), THREE, 0.5, flag="maybe")


def test_a_two_class_model_thresholds_p_covid():
    assert decide(np.array([0.31, 0.69]), TWO, 0.3).label == "COVID"
    assert decide(np.array([0.29, 0.71]), TWO, 0.3).label == "Normal"
    assert decide(np.array([0.5, 0.5]), TWO, 0.5).label == "COVID"  # at the point: admit
    assert finding_name(TWO) == "P(COVID)" and finding_name(THREE) == "P(any finding)"


def test_the_decision_is_an_immutable_value():
    decision = decide(np.array([0.2, 0.8]), TWO, 0.5)
    with pytest.raises(AttributeError):
        decision.label = "COVID"


@pytest.mark.parametrize(("probs", "names", "threshold", "flag", "expected"), [
    ([0.05, 0.206, 0.744], THREE, 0.195, "none",
     "P(any finding) 25.6% is above the operating point 19.5%: admit, as Other pneumonia, "
     "the likelier finding."),
    ([0.1, 0.05, 0.85], THREE, 0.195, "none",
     "P(any finding) 15.0% is below the operating point 19.5%: go home."),
    ([0.1, 0.05, 0.85], THREE, 0.195, FLAG_UNUSUAL,
     "P(any finding) 15.0% is below the operating point 19.5%, but the film is unusual: "
     "admit."),
    ([0.3, 0.7], TWO, 0.3, "none",
     "P(COVID) 30.0% is at the operating point 30.0%: admit."),
    ([0.19496, 0.80504], TWO, 0.195, "none",  # alike at one decimal: more are shown
     "P(COVID) 19.496% is below the operating point 19.500%: go home."),
])
def test_the_why_sentence_follows_the_rule(probs, names, threshold, flag, expected):
    decision = decide(np.asarray(probs), names, threshold, flag)
    assert why_sentence(decision, names, threshold) == expected


def test_a_refused_film_has_no_why_sentence():
    decision = decide(np.asarray([0.9, 0.1]), TWO, 0.5, FLAG_NOT_CHEST)
    assert why_sentence(decision, TWO, 0.5) == ""


def test_the_why_sentence_says_what_the_rule_decided():
    rng = np.random.default_rng(1)
    for probs in rng.dirichlet(np.ones(3), size=200):
        for flag in (FLAG_NONE, FLAG_UNUSUAL):
            decision = decide(probs, THREE, 0.3, flag=flag)
            sentence = why_sentence(decision, THREE, 0.3)
            assert sentence.startswith("P(any finding) ")
            assert ("is below" in sentence) == (decision.p_finding < 0.3)
            assert sentence.endswith(": go home.") == (decision.advice == "home")
            assert (f"as {decision.label}," in sentence) == (decision.label != "Normal")


def test_a_model_without_a_normal_class_is_refused_with_the_classes_it_has():
    with pytest.raises(KeyError, match="no class 'Normal'; it has COVID, Other pneumonia"):
        p_finding(np.array([0.4, 0.6]), ("COVID", "Other pneumonia"))
    with pytest.raises(KeyError, match="no class 'Normal'"):
        decide_labels(np.array([[0.4, 0.6]]), ("COVID", "Other pneumonia"), 0.5)


def test_same_point_forgives_a_float_round_trip_only():
    from covid.model.decision import same_point

    assert same_point(0.1946551799774, 0.1946551799774 + 1e-12)
    assert not same_point(0.195, 0.196)
