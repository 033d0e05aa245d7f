"""The model page of a three-class model (COVID, Other pneumonia, Normal), in an AppTest.

A tiny untrained three-class CNN is evaluated on tiny random films from every source
(:func:`covid.evaluation.evaluate.evaluate`, as the shipped model would be) and served
with ``COVID_MODEL_PATH``. The page must follow the model's metadata and artefacts:
the matrix of every true class against the labels at the live operating point, a
one-vs-rest ROC per class, admit against home, what the operating point costs, and the
figures by source and age.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.comparison import comparison_rows
from covid.evaluation.evaluate import evaluate
from covid.evaluation.results import (
    class_scores_from_csv,
    confusion_matrix_at,
    finding_rates,
    lung_evidence_from_csv,
    trade_curve,
)
from covid.evaluation.scoring import Options
from covid.model.figure_names import figure_name
from covid.model.metadata import read_metadata
from covid.model.network import save_with_metadata
from covid.training.catalogue import CLASS_NAMES, SOURCES
from tests.app.pages import open_model_page
from tests.films import three_class_split


@pytest.fixture(scope="module")
def three_class_model(tiny_cnn_factory, tiny_model_file, tmp_path_factory) -> Path:
    """The tiny CNN with three classes, evaluated on tiny random films (no training)."""
    root = tmp_path_factory.mktemp("three")
    (root / "m").mkdir()
    meta = read_metadata(tiny_model_file)
    meta.class_names = list(CLASS_NAMES)
    model = root / "m" / "tiny3.keras"
    save_with_metadata(tiny_cnn_factory(n_classes=3), meta, model)
    evaluate(model, Options(three_class_split(root), compare=tiny_model_file,
                            cache_dir=root / "cache"))
    return model


def _matrix(at: AppTest) -> dict[str, list]:
    frame = next(d.value for d in at.dataframe if "true" in d.value.columns)
    return {column: frame[column].tolist() for column in frame.columns}


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    return "\n".join([*parts, *(a.value for a in (*at.info, *at.warning, *at.error))])


def test_the_page_shows_three_classes_at_the_live_operating_point(serve, three_class_model):
    meta = read_metadata(three_class_model)
    paths = artefact_paths(three_class_model)
    summary = json.loads(paths["evaluation"].read_text())
    scores = class_scores_from_csv(paths["scores"].read_text(), meta.class_names)
    at = serve(three_class_model).run()
    # the sidebar and the model page name each figure alike: COVID films labelled COVID in
    # the sidebar, findings admitted at the live point
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert f"| {figure_name('sensitivity')} | {meta.metrics['sensitivity']:.1%} |" in sidebar
    assert "Sensitivity" not in sidebar
    at = open_model_page(at)
    assert [h.value for h in at.header] == [
        "Model card", "Against the previous model", "Operating point", "Test-split charts",
        "By source and age", "Evidence inside the lungs"]
    assert not at.error and "Evaluation artefacts missing" not in _texts(at)
    assert at.slider(key="op_threshold").label == "Threshold on calibrated P(any finding)"

    # the headline figures beside the previous model's, as the metadata holds them
    table = next(d.value for d in at.dataframe if "previous" in d.value.columns)
    assert table.to_dict("records") == comparison_rows(meta.metrics)
    assert "previous: tiny test CNN vtest" in _texts(at)

    # the 3 x 3 matrix at the shipped point is the evaluation's own
    shipped = _matrix(at)
    assert shipped["true"] == list(CLASS_NAMES)
    assert [shipped[name] for name in CLASS_NAMES] == np.array(
        summary["metrics"]["confusion3"]["matrix"]).T.tolist()
    rates = finding_rates(confusion_matrix_at(scores, meta.threshold))
    assert _metric(at, figure_name("admitted_findings")) == f"{rates.sensitivity:.1%}"
    assert _metric(at, figure_name("specificity")) == f"{rates.specificity:.1%}"
    for name in ("COVID", "Other pneumonia"):
        assert _metric(at, f"{name} sent home") == f"{rates.sent_home[name]:.1%}"
        assert rates.sent_home[name] == pytest.approx(summary["metrics"]["sent_home"][name])

    # one-vs-rest ROC per class: the chart, and every class's AUC from the evaluation
    caption = next(c.value for c in at.caption if c.value.startswith("One-vs-rest AUC"))
    for name in CLASS_NAMES:
        assert f"{name} {summary['metrics']['auc_per_class'][name]['auc']:.3f}" in caption
    # the trade, ROC, confusion matrix, reliability (and the lung share histogram when measured)
    assert len(at.image) == 4 + (lung_evidence_from_csv(paths["scores"].read_text()) is not None)
    # what the operating point costs: normals by age against findings sent home, the shipped
    # point in words
    cost = next(c.value for c in at.caption if c.value.startswith("Each point is one threshold"))
    shipped_point = trade_curve(scores, [meta.threshold])
    assert list(shipped_point.specificity) == ["all", "adult", "child"]
    assert shipped_point.specificity["all"][0] == pytest.approx(rates.specificity)
    for group, values in shipped_point.specificity.items():
        assert f"{group} {values[0]:.1%}" in cost
    for name in ("COVID", "Other pneumonia"):
        assert f"{name} {rates.sent_home[name]:.1%}" in cost

    # per source and per age group, from the evaluation's figures
    by_source = next(d.value for d in at.dataframe if "group" in d.value.columns)
    assert set(by_source["group"]) == {source.name for source in SOURCES}
    assert "labelled Other pneumonia" in by_source.columns
    previous = summary["metrics"]["comparison"]["previous"]["by_source"]
    assert by_source["previous: sent home"].tolist() == [
        100.0 * previous[f"{g} / {t}"]["sent_home"]
        for g, t in zip(by_source["group"], by_source["true class"], strict=True)]
    by_age = [d.value for d in at.dataframe if "group" in d.value.columns][1]
    assert set(by_age["group"]) == {"adult", "child"}

    # the slider moves the matrix: at 0 every film is admitted, at 1 every film goes home
    at.slider(key="op_threshold").set_value(0.0).run()
    assert not at.exception
    admitted = _matrix(at)
    assert admitted["Normal"] == [0, 0, 0] and admitted != shipped
    assert _metric(at, "COVID sent home") == "0.0%"
    assert _metric(at, "Other pneumonia sent home") == "0.0%"
    assert _metric(at, figure_name("admitted_findings")) == "100.0%"
    at.slider(key="op_threshold").set_value(1.0).run()
    home = _matrix(at)
    assert home["COVID"] == home["Other pneumonia"] == [0, 0, 0]
    assert home["Normal"] == [sum(row) for row in zip(*(shipped[n] for n in CLASS_NAMES),
                                                       strict=True)]
    assert _metric(at, "Other pneumonia sent home") == "100.0%"
    assert "P(any finding) ≥ 1.000" in _texts(at)


def test_a_scores_file_without_the_true_class_is_explained(serve, three_class_model,
                                                           tmp_path):
    from covid.evaluation.ship import ship

    copy = tmp_path / "old.keras"
    ship(three_class_model, copy)
    artefact_paths(copy)["scores"].write_text("file,label,p_covid\r\nx.png,COVID,0.5\r\n")
    at = open_model_page(serve(copy).run())
    text = _texts(at)
    assert "cannot be read" in text and "true" in text
    assert not [s for s in at.slider if s.key == "op_threshold"]
