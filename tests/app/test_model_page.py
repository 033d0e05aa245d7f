"""The model page (``covid/app/model_page.py``) in an in-process ``AppTest``.

The tiny model is served as a copy with evaluation artefacts made on tiny random
films: its card, charts, live operating point, lung-share and localisation
figures, and the session's operating point that relabels the studies already
scored (never another session's) and survives a visit back to the screening page.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from covid import DISCLAIMER
from covid.model.classes import NORMAL
from covid.model.metadata import read_metadata
from tests.app.pages import (
    chest_png,
    network_passes,
    open_model_page,
    page_text,
    select_row,
    table_rows,
)


@pytest.fixture(scope="module")
def evaluated_model(tiny_model_file, tmp_path_factory) -> Path:
    """A copy of the tiny model with evaluation artefacts made on tiny random films."""
    from covid.evaluation.evaluate import evaluate
    from covid.evaluation.scoring import Options
    from tests.films import three_class_split

    root = tmp_path_factory.mktemp("evaluated")
    split = three_class_split(root)
    model = root / "m" / "tiny.keras"
    shutil.copyfile(tiny_model_file, model)
    shutil.copyfile(Path(tiny_model_file).with_suffix(".json"), model.with_suffix(".json"))
    evaluate(model, Options(split, cache_dir=root / "cache"))
    return model


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _has_lung_evidence(at: AppTest) -> bool:
    return not any("hold no `lung_evidence` column" in i.value for i in at.info)


def test_model_page_shows_card_charts_operating_point_and_map_checks(serve, evaluated_model):
    from covid.evaluation.metrics import operating_point
    from covid.evaluation.results import read_evaluation
    from covid.model.figure_names import figure_name

    meta = read_metadata(evaluated_model)
    at = open_model_page(serve(evaluated_model).run())
    assert [h.value for h in at.header] == [
        "Model card", "Operating point", "Test-split charts", "By source and age",
        "Evidence inside the lungs"]
    text = page_text(at)
    assert "DeGrave" in text and "shortcut" in text.lower()
    assert "Not for clinical use" in text and meta.trained_on in text
    assert "Evaluation artefacts missing" not in text

    slider = at.slider(key="op_threshold")
    assert slider.value == pytest.approx(meta.threshold)
    scores, truth = read_evaluation(evaluated_model, meta.class_names).scores  # P(any finding)
    prevalence = at.number_input(key="op_prevalence")
    assert prevalence.value == pytest.approx(100 * truth.mean(), abs=0.05)
    expected = operating_point(scores, truth, meta.threshold, prevalence=prevalence.value / 100)
    assert _metric(at, figure_name("admitted_findings")) == f"{expected['sensitivity']:.1%}"
    assert _metric(at, figure_name("specificity")) == f"{expected['specificity']:.1%}"

    prevalence.set_value(1.0).run()
    expected = operating_point(scores, truth, meta.threshold, prevalence=0.01)
    assert _metric(at, "PPV") == f"{expected['ppv']:.1%}"
    assert _metric(at, "NPV") == f"{expected['npv']:.1%}"
    at.slider(key="op_threshold").set_value(0.0).run()
    assert not at.exception
    assert _metric(at, figure_name("admitted_findings")) == "100.0%"
    assert _metric(at, figure_name("specificity")) == "0.0%"
    # the trade, ROC, confusion matrix, reliability (and the lung share histogram when measured)
    assert len(at.image) == 4 + _has_lung_evidence(at)
    assert "Not measured yet" in page_text(at)  # no radiologists' masks for these films


def test_model_page_without_artefacts_says_so(serve, tiny_model_file):
    at = open_model_page(serve(tiny_model_file).run())
    text = page_text(at)
    assert "Evaluation artefacts missing" in text and "python -m covid.evaluate" in text
    assert "tiny.evaluation.json" in text and "tiny.test_scores.csv" in text
    assert "Not measured yet" in text
    assert "DeGrave" in text  # the model card needs only the metadata
    assert not [s for s in at.slider if s.key == "op_threshold"]  # nothing to judge it on
    assert not at.image


def test_model_page_shows_the_opacity_segmenters_figures_from_its_metadata(
        serve, tiny_model_file, monkeypatch):
    from covid.evaluation.segmenters import opacity_rows
    from covid.model.metadata import read_metadata_as
    from covid.model.opacity import OpacityModelMetadata
    from covid.settings import MODELS_DIR, OPACITY_MODEL_FILE

    absent = open_model_page(serve(tiny_model_file).run())
    assert "No opacity segmenter" in page_text(absent) and not absent.image

    shipped = MODELS_DIR / OPACITY_MODEL_FILE
    meta = read_metadata_as(OpacityModelMetadata, shipped)
    monkeypatch.setenv("COVID_OPACITY_MODEL_PATH", str(shipped))
    at = open_model_page(serve(tiny_model_file).run())
    text = page_text(at)
    assert "Opacity segmenter" in [h.value for h in at.subheader]
    assert f"above {meta.threshold:g}" in text
    dice = dict(opacity_rows(meta.metrics))["mean Dice, COVID-19 films"]
    assert f"| mean Dice, COVID-19 films | {dice} |" in text
    assert len(at.image) == 1  # the grade confusion (no evaluation artefacts beside the model)
    assert not at.exception


def test_model_page_without_lung_figures_says_they_were_not_measured(
    serve, evaluated_model, tmp_path
):
    import csv

    from covid.evaluation.artefacts import artefact_paths
    from covid.evaluation.ship import ship

    copy = tmp_path / "copy.keras"  # no lung column, no localisation
    ship(evaluated_model, copy)
    scores = artefact_paths(copy)["scores"]
    rows = list(csv.DictReader(io.StringIO(scores.read_text())))
    with open(scores, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [k for k in rows[0] if k != "lung_evidence"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    raw = json.loads(copy.with_suffix(".json").read_text())
    raw["metrics"].pop("localisation", None)
    copy.with_suffix(".json").write_text(json.dumps(raw))
    path = artefact_paths(copy)["evaluation"]
    evaluation = json.loads(path.read_text())
    evaluation.get("metrics", {}).pop("localisation", None)
    path.write_text(json.dumps(evaluation))

    at = open_model_page(serve(copy).run())
    text = page_text(at)
    assert "how its Grad-CAM maps sit against radiologists' lung and infection masks" in text
    assert "hold no `lung_evidence` column" in text
    assert len(at.image) == 4  # no share histogram


def test_model_page_shows_the_lung_share_per_class_and_the_localisation_figures(
    serve, evaluated_model, tmp_path
):
    import csv

    from covid.evaluation.artefacts import artefact_paths
    from covid.evaluation.ship import ship

    copy = tmp_path / "copy.keras"
    ship(evaluated_model, copy)
    scores = artefact_paths(copy)["scores"]
    rows = list(csv.DictReader(io.StringIO(scores.read_text())))
    shares = {"COVID": [0.2, 0.7], "Other pneumonia": [0.2, 0.7], "Normal": [0.9, 0.45]}
    with open(scores, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [*rows[0], "lung_evidence"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "lung_evidence": shares[row["true"]][i % 2]})
    raw = json.loads(copy.with_suffix(".json").read_text())
    raw["metrics"]["localisation"] = {
        "n": 12, "n_with_infection": 11, "energy_in_lungs": 0.72,
        "energy_in_lungs_uniform": 0.27, "peak_in_lungs": 0.93, "peak_in_lungs_uniform": 0.27,
        "peak_in_infection": 0.55, "peak_in_infection_uniform": 0.08,
        "split": "test (COVID films with COVID-QU-Ex masks)"}
    copy.with_suffix(".json").write_text(json.dumps(raw))

    at = open_model_page(serve(copy).run())
    assert not at.exception
    assert at.header[-1].value == "Evidence inside the lungs"
    text = page_text(at)
    assert "72% of the Grad-CAM energy lies inside the lungs, which cover 27%" in text
    assert "12 COVID films (11 with an infection mask)" in text
    figures = at.dataframe[-2].value
    assert figures["measure"].tolist()[2] == "Map's peak inside the film's own infection"
    assert figures["model"].tolist() == pytest.approx([72.0, 93.0, 55.0])
    assert figures["uniform map"].tolist() == pytest.approx([27.0, 27.0, 8.0])
    per_class = at.dataframe[-1].value
    assert per_class["class"].tolist() == ["True COVID", "True Other pneumonia", "True Normal"]
    assert per_class["films"].tolist() == [4, 12, 4]  # four films from each of five sources
    assert per_class["below caution"].tolist() == pytest.approx([50.0, 50.0, 50.0])
    assert len(at.image) == 5  # the trade, ROC, confusion, reliability and the share histogram


# ------------------------------------------------------------------ the session's operating point


def _label_and_triage(at: AppTest) -> tuple[str, str]:
    label = next(m.value for m in at.markdown if m.value.startswith("**Prediction: "))
    triage = next(a.value for a in (*at.success, *at.error) if DISCLAIMER in a.value)
    return label.removeprefix("**Prediction: ").rstrip("*"), triage


def test_operating_point_is_per_session_and_relabels_cached_results(
    serve, evaluated_model, calls, plant_lungs
):
    from covid.model.decision import ADVICE

    meta = read_metadata(evaluated_model)
    upload = ("chest.png", chest_png(1), "image/png")
    first = serve(evaluated_model).run()
    first.file_uploader(key="uploads").set_value(upload).run()
    passes = network_passes(first)
    shipped_label, shipped_triage = _label_and_triage(first)
    p = next(iter(first.session_state["_covid_studies"].values())).p_finding
    assert (shipped_label != NORMAL) == (p >= meta.threshold)
    assert "the shipped operating point" in page_text(first)

    # session 1 picks a threshold that flips this study between a finding and Normal
    threshold = 1.0 if shipped_label != NORMAL else 0.0
    assert p < 1.0
    open_model_page(first)
    first.slider(key="op_threshold").set_value(threshold).run()
    first.button(key="op_back").click().run()
    assert not first.exception and first.title[0].value == "Chest X-ray screening"
    assert any("uploaded before you opened the model page" in i.value for i in first.info)
    label, triage = _label_and_triage(first)
    assert (label == NORMAL) == (shipped_label != NORMAL)
    assert triage.startswith(ADVICE[label])
    assert "chosen for this session" in page_text(first)
    assert "The operating point is this session's choice." in page_text(first)
    assert f"{threshold:.3f}" in "\n".join(m.value for m in first.sidebar.markdown)
    assert calls["forward"] == passes  # re-labelled, not re-scored

    # session 2, same process and caches, keeps the shipped operating point
    second = serve(evaluated_model).run()
    second.file_uploader(key="uploads").set_value(upload).run()
    assert not second.exception
    assert _label_and_triage(second) == (shipped_label, shipped_triage)
    assert "the shipped operating point" in page_text(second)
    assert second.button(key="op_reset").disabled
    open_model_page(second)
    assert second.slider(key="op_threshold").value == pytest.approx(meta.threshold)

    # session 1 still has its own choice, and its reset button brings back the shipped one
    first.run()
    assert _label_and_triage(first)[0] == label
    first.button(key="op_reset").click().run()
    assert _label_and_triage(first) == (shipped_label, shipped_triage)
    assert "the shipped operating point" in page_text(first)


def test_batch_and_opened_study_survive_a_visit_to_the_model_page(serve, evaluated_model):
    at = serve(evaluated_model).run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", chest_png(1), "image/png"), ("other.png", chest_png(2), "image/png"),
    ]).run()
    chosen = table_rows(at)[1]["file"]
    select_row(at, 1)
    open_model_page(at)
    at.button(key="op_back").click().run()
    assert not at.exception
    assert any("uploaded before you opened the model page" in i.value for i in at.info)
    assert [h.value for h in at.subheader if h.value.endswith(".png")] == [chosen]

    at.button(key="clear_batch").click().run()
    assert not at.exception and not at.dataframe
    assert any("Upload one or more chest X-rays" in i.value for i in at.info)
