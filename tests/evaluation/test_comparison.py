"""The headline figures beside the previous model's, and the ship gate."""

from covid.evaluation.comparison import (
    FIGURES,
    MAX_PNEUMONIA_HOME,
    comparison_rows,
    gate_figures,
    judge,
    ship_verdict,
    with_previous_sent_home,
)
from covid.evaluation.results import group_rows


def _ci(value, half=0.02):
    return [value - half, value + half]


def _metrics(auc=0.99, home=0.01, energy=0.6, peak=0.8, infection=0.4, spec=0.9, child=0.8,
             quex=0.03, **extra) -> dict:
    """Validation metrics as the evaluation writes them, each gate figure with a CI."""
    group = {"kermany / Other pneumonia": {"sent_home": 0.0, "sent_home_ci95": [0.0, 0.05]},
             "quex / Other pneumonia": {"sent_home": quex, "sent_home_ci95": _ci(quex)},
             "rsna / Normal": {"sent_home": spec, "sent_home_ci95": _ci(spec)}}
    return {"auc_covid_vs_normal": {"auc": auc, "ci95": _ci(auc, 0.01)},
            "sensitivity": 0.97, "sensitivity_ci95": _ci(0.97),
            "specificity": spec, "specificity_ci95": _ci(spec),
            "sent_home": {"COVID": 0.0, "Other pneumonia": home},
            "sent_home_ci95": {"COVID": [0.0, 0.01], "Other pneumonia": _ci(home, 0.01)},
            "labelled_covid": {"Other pneumonia": 0.2, "Normal": 0.01},
            "by_age": {"adult / Normal": {"sent_home": spec, "sent_home_ci95": _ci(spec)},
                       "child / Normal": {"sent_home": child, "sent_home_ci95": _ci(child)}},
            "by_source": group,
            "localisation": {"energy_in_lungs": energy, "energy_in_lungs_ci95": _ci(energy),
                             "peak_in_lungs": peak, "peak_in_lungs_ci95": _ci(peak, 0.05),
                             "peak_in_infection": infection,
                             "peak_in_infection_ci95": _ci(infection, 0.05)}, **extra}


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
        ("COVID films labelled COVID", "—", "no")]


def test_the_gate_compares_every_headline_figure_and_each_sources_findings():
    keys = [f.key for f in gate_figures(_metrics(), _metrics())]
    assert keys == ["auc_covid", "sensitivity", "specificity", "specificity_adult",
                    "specificity_child", "pneumonia_home", "energy_in_lungs", "peak_in_lungs",
                    "peak_in_infection", "home:kermany / Other pneumonia",
                    "home:quex / Other pneumonia"]
    titles = {f.key: f.title for f in gate_figures(_metrics(), None)}
    assert titles["specificity_child"] == "Normal films labelled Normal, children"
    assert titles["home:quex / Other pneumonia"] == "Other pneumonia films from quex sent home"


def test_the_gate_ships_a_candidate_better_everywhere_and_says_so():
    verdict = ship_verdict(_metrics(), _metrics(auc=0.98, energy=0.3, peak=0.4, infection=0.2,
                                                spec=0.5, child=0.3, quex=0.05))
    assert verdict.ship and verdict.reasons == ()
    assert not any(j.worse for j in verdict.figures)
    assert verdict.summary.startswith("Ships: better or within its 95% CI on every headline "
                                      "figure (11 compared with the shipped model)")


def test_the_gate_ships_a_candidate_worse_only_within_its_ci():
    # every shipped value is better, but inside the candidate's interval
    shipped = _metrics(auc=0.995, energy=0.61, peak=0.84, infection=0.44, spec=0.915,
                       child=0.815, quex=0.015)
    verdict = ship_verdict(_metrics(), shipped)
    assert verdict.ship, verdict.reasons
    assert "better or within its 95% CI on every headline figure" in verdict.summary


def test_the_gate_refuses_one_figure_lost_beyond_its_ci_and_names_it():
    verdict = ship_verdict(_metrics(child=0.3), _metrics(child=0.8))
    assert not verdict.ship
    assert verdict.reasons == (
        "worse beyond its 95% CI: Normal films labelled Normal, children: 30.0% "
        "(95% CI 28.0%-32.0%), shipped 80.0%",)
    assert verdict.summary.startswith("Refused on 1 count(s): worse beyond its 95% CI")


def test_the_gate_lists_every_figure_lost_and_the_pneumonias_cap():
    shipped = _metrics(auc=0.999, peak=0.9, quex=0.0, spec=0.95)
    verdict = ship_verdict(_metrics(home=0.05, quex=0.06), shipped)
    assert not verdict.ship
    # the AUC's shipped 0.999 lies inside the candidate's 0.980-1.000: not lost
    assert verdict.reasons == (
        "worse beyond its 95% CI: Normal films labelled Normal: 90.0% (95% CI 88.0%-92.0%), "
        "shipped 95.0%",
        "worse beyond its 95% CI: Normal films labelled Normal, adults: 90.0% "
        "(95% CI 88.0%-92.0%), shipped 95.0%",
        "worse beyond its 95% CI: Other pneumonias told to go home: 5.0% (95% CI 4.0%-6.0%), "
        "shipped 1.0%",
        "worse beyond its 95% CI: COVID map: peak inside the lungs: 80.0% "
        "(95% CI 75.0%-85.0%), shipped 90.0%",
        "worse beyond its 95% CI: Other pneumonia films from quex sent home: 6.0% "
        "(95% CI 4.0%-8.0%), shipped 0.0%",
        f"other pneumonias sent home: 5.0%, above {MAX_PNEUMONIA_HOME:.0%}")


def test_a_figure_without_a_ci_may_not_fall_at_all():
    candidate = _metrics()
    del candidate["specificity_ci95"]
    specificity = next(f for f in FIGURES if f.key == "specificity")
    judged = judge(specificity, candidate, _metrics(spec=0.901))
    assert judged.worse and judged.ci is None
    assert judged.line() == ("Normal films labelled Normal: 90.0% (no CI), shipped 90.1%")
    assert not judge(specificity, candidate, _metrics(spec=0.9)).worse


def test_the_gate_needs_the_candidates_figures_but_not_a_shipped_model():
    alone = ship_verdict(_metrics(), None)
    assert alone.ship and "no shipped model" in alone.summary
    verdict = ship_verdict({"auc_covid_vs_normal": {"auc": 0.99}}, None)
    assert not verdict.ship and len(verdict.reasons) == 6
    assert verdict.reasons[0] == "COVID films labelled COVID: not measured for the candidate"
    # a figure the shipped model has must not vanish from the candidate's
    lost = _metrics()
    del lost["by_age"]["child / Normal"]
    assert ship_verdict(lost, _metrics()).reasons == (
        "Normal films labelled Normal, children: not measured for the candidate",)


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
