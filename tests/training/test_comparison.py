"""The headline figures beside the previous model's, and the ship gate."""

from covid.training.comparison import (
    FIGURES,
    MAX_PNEUMONIA_HOME,
    comparison_rows,
    ship_verdict,
    with_previous_sent_home,
)
from covid.training.results import group_rows


def _metrics(auc=0.99, home=0.01, energy=0.6, peak=0.8, infection=0.4, **extra) -> dict:
    return {"auc_covid_vs_normal": {"auc": auc, "ci95": [auc - 0.01, auc + 0.01]},
            "sensitivity": 0.97, "specificity": 0.99,
            "sent_home": {"COVID": 0.0, "Other pneumonia": home},
            "labelled_covid": {"Other pneumonia": 0.2, "Normal": 0.01},
            "localisation": {"energy_in_lungs": energy, "peak_in_lungs": peak,
                             "peak_in_infection": infection}, **extra}


def test_rows_put_each_figure_beside_the_previous_and_the_goal():
    previous = _metrics(auc=0.977, home=0.276, energy=0.35, peak=0.42, infection=0.22)
    rows = comparison_rows(_metrics(ood_flagged={"Other pneumonia": 0.03},
                                    comparison={"previous": previous}))
    by_title = {r["figure"]: r for r in rows}
    assert [r["figure"] for r in rows] == [f.title for f in FIGURES]
    auc = by_title["AUC of P(COVID), COVID and Normal films"]
    assert (auc["this model"], auc["previous"], auc["goal"], auc["goal met"]) == (
        "0.990", "0.977", "≥ 0.995", "no")
    home = by_title["Other pneumonias told to go home"]
    assert (home["this model"], home["previous"], home["goal"], home["goal met"]) == (
        "1.0%", "27.6%", "≤ 2.0%", "yes")
    ood = by_title["Other pneumonias flagged out of distribution"]
    assert (ood["this model"], ood["previous"], ood["goal met"]) == ("3.0%", "—", "yes")


def test_rows_leave_out_figures_neither_model_has():
    rows = comparison_rows({"sensitivity": 0.9})
    assert [(r["figure"], r["previous"], r["goal met"]) for r in rows] == [
        ("Sensitivity: COVID films labelled COVID", "—", "no")]


def test_the_gate_ships_a_candidate_better_everywhere_it_must_be():
    verdict = ship_verdict(_metrics(), _metrics(auc=0.98, energy=0.3, peak=0.4, infection=0.2))
    assert verdict.ship and verdict.reasons == ()


def test_the_gate_names_every_figure_that_is_not_better():
    shipped = _metrics(auc=0.995, energy=0.3, peak=0.8, infection=0.2)
    verdict = ship_verdict(_metrics(home=0.05), shipped)
    assert not verdict.ship
    assert verdict.reasons == (
        "AUC of P(COVID), COVID and Normal films: 0.990, not above the shipped model's 0.995",
        "COVID map: peak inside the lungs: 0.800, not above the shipped model's 0.800",
        f"other pneumonias sent home: 5.0%, above {MAX_PNEUMONIA_HOME:.0%}")


def test_the_gate_needs_the_candidates_figures_but_not_a_shipped_model():
    assert ship_verdict(_metrics(), None).ship
    verdict = ship_verdict({"auc_covid_vs_normal": {"auc": 0.99}}, None)
    assert not verdict.ship and len(verdict.reasons) == 4
    assert verdict.reasons[0] == "COVID map: share of its energy inside the lungs: not measured " \
        "for the candidate"


def test_group_rows_gain_the_previous_models_share_sent_home():
    groups = {"kermany / Other pneumonia": {"n": 10, "label_shares": {"Normal": 0.1,
                                                                        "COVID": 0.2},
                                            "sent_home": 0.1},
              "rsna / Normal": {"n": 4, "label_shares": {"Normal": 1.0}, "sent_home": 1.0}}
    previous = {"by_source": {"kermany / Other pneumonia": {"sent_home": 0.3}}}
    rows = group_rows(groups, ["COVID", "Other pneumonia", "Normal"])
    extended = with_previous_sent_home(rows, {"by_source": groups,
                                              "comparison": {"previous": previous}}, "by_source")
    assert list(extended[0]) == ["group", "true class", "films", "sent home",
                                 "previous: sent home", "labelled COVID",
                                 "labelled Other pneumonia"]
    assert [r["previous: sent home"] for r in extended] == [30.0, None]
    assert with_previous_sent_home(rows, {"by_source": groups}, "by_source") == rows
