"""The Streamlit pages, driven in-process by ``streamlit.testing.v1.AppTest``.

The pages serve the tiny test model (``COVID_MODEL_PATH``), or a copy of it with
evaluation artefacts made on tiny random data for the model page; uploads are
synthetic PNGs held in memory. The out-of-distribution detector is the one the
served model ships with: none but the tag, pixel and lung gates (which the
synthetic grey films pass and a colour one fails: refused as not a chest X-ray),
or, to flag every chest film as unusual, statistics recorded in a copy of the
model's metadata with a threshold below any distance. A row of the batch table is
chosen by writing its selection state, as a click would.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from covid import DISCLAIMER
from covid.explain.batching import BatchingClassifier
from covid.explain.inference import Classifier
from covid.inputs.decode import decode_image
from covid.inputs.preprocess import to_model_input
from covid.model.classes import NORMAL
from covid.model.decision import UNUSUAL_ADVICE
from covid.model.metadata import read_metadata
from tests.app.pages import APP, TIMEOUT, open_model_page


def _png(seed: int = 0, size: int = 128) -> bytes:
    """A smooth grayscale image big enough for the decoder, as PNG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = 128 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0) + rng.normal(0, 8, xx.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _colour_png(seed: int = 0, size: int = 128) -> bytes:
    """A colour photograph-like image: the pixel checks refuse it as not a chest X-ray."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _flagging_copy(model: Path, directory: Path) -> Path:
    """A copy of a model shipped with statistics that flag every chest film as unusual."""
    from covid.model.ood_stats import OODStats, write_model_stats

    copy = directory / "flagging.keras"
    shutil.copyfile(model, copy)
    shutil.copyfile(model.with_suffix(".json"), copy.with_suffix(".json"))
    n = Classifier.from_file(model).n_features
    stats = OODStats(np.zeros((1, n), np.float32), np.eye(n, dtype=np.float32), threshold=-1.0)
    write_model_stats(stats, copy, {"method": "test: any distance is above the limit"})
    return copy


@pytest.fixture
def make_app(tiny_model_file, monkeypatch, tmp_path):
    """Returns a factory of AppTests serving the tiny model (every film unusual, or none).

    No lung or opacity segmenter is served unless a test sets ``COVID_LUNG_MODEL_PATH``
    (and ``COVID_OPACITY_MODEL_PATH``).
    """
    monkeypatch.setenv("COVID_LUNG_MODEL_PATH", str(tmp_path / "no_lung_model.keras"))
    monkeypatch.setenv("COVID_OPACITY_MODEL_PATH", str(tmp_path / "no_opacity_model.keras"))

    def make(flagged: bool = False) -> AppTest:
        model = _flagging_copy(tiny_model_file, tmp_path) if flagged else tiny_model_file
        monkeypatch.setenv("COVID_MODEL_PATH", str(model))
        st.cache_resource.clear()
        st.cache_data.clear()
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    yield make
    st.cache_resource.clear()


@pytest.fixture
def meta(tiny_model_file):
    return read_metadata(tiny_model_file)


@pytest.fixture
def calls(monkeypatch):
    """Counts the network calls the page makes through the server's batching classifier."""
    counts = {"forward": 0, "explain": []}
    forward, batch, explain = (BatchingClassifier.forward_batch, BatchingClassifier.explain_batch,
                               BatchingClassifier.explain)

    def counting_forward(self, x, *args, **kwargs):
        counts["forward"] += len(x)
        return forward(self, x, *args, **kwargs)

    def counting_batch(self, x, *args, **kwargs):
        counts["forward"] += len(x)
        return batch(self, x, *args, **kwargs)

    def counting_explain(self, x, target=None, method="gradcam", **kwargs):
        counts["explain"].append((target, method))
        return explain(self, x, target=target, method=method, **kwargs)

    monkeypatch.setattr(BatchingClassifier, "forward_batch", counting_forward)
    monkeypatch.setattr(BatchingClassifier, "explain_batch", counting_batch)
    monkeypatch.setattr(BatchingClassifier, "explain", counting_explain)
    return counts


@pytest.fixture
def runs(monkeypatch):
    """Counts full runs of the screening page and runs of its results fragment."""
    import covid.app.screening as screening

    counts = {"page": 0, "results": 0}
    header, results = screening.header_ui, screening.results_ui

    def counting_header():
        counts["page"] += 1
        return header()

    def counting_results(*args, **kwargs):
        counts["results"] += 1
        results(*args, **kwargs)

    monkeypatch.setattr(screening, "header_ui", counting_header)
    monkeypatch.setattr(screening, "results_ui", counting_results)
    return counts


def _fragment_control(at: AppTest, runs: dict, kind: str, key: str, value) -> list:
    """Sets a sidebar control and checks that only the results fragment reran.

    Returns the images the fragment drew, then runs the page in full: an AppTest
    keeps only the last run's elements (a browser keeps the rest of the page).
    """
    page, results = runs["page"], runs["results"]
    getattr(at, kind)(key=key).set_value(value).run()
    assert not at.exception
    assert (runs["page"], runs["results"]) == (page, results + 1)
    drawn = [img.value for img in at.image]
    at.run()
    return drawn


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [a.value for a in (*at.warning, *at.info)]
    parts += [a.value for a in (*at.error, *at.success)] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _percentages(at: AppTest, class_names: list[str]) -> dict[str, float]:
    found = {}
    for bar in at.progress:
        text = bar.text.replace("*", "")
        for name in class_names:
            if text.startswith(f"{name} "):
                found[name] = float(text.removeprefix(f"{name} ").split()[0].rstrip("%"))
    return found


def _passes(at: AppTest) -> int:
    """Films the pipeline sent to the network: each once, and again where its label at the
    operating point is not its most probable class (it is explained again for its label)."""
    results = [r for r in at.session_state["_covid_studies"].values() if r.probs is not None]
    return sum(1 + (r.cam_target != int(np.argmax(r.probs))) for r in results)


def test_page_renders_controls_and_model_card(make_app, meta):
    at = make_app().run()
    assert not at.exception
    assert at.title[0].value == "Chest X-ray screening"
    assert any(DISCLAIMER in w.value for w in at.warning)

    assert at.selectbox(key="target").options == ["Predicted class", *meta.class_names]
    assert at.selectbox(key="target").value == "Predicted class"
    assert at.radio(key="method").options == ["Grad-CAM", "Grad-CAM++"]
    assert at.radio(key="view").options == ["Overlay", "Heatmap alone", "Contour lines"]
    assert "jet" in at.selectbox(key="colormap").options
    opacity = at.slider(key="opacity")
    assert opacity.min == 0.0 and opacity.max == 1.0 and 0.0 < opacity.value < 1.0
    uploader = at.file_uploader(key="uploads")
    assert uploader.accept_multiple_files
    assert set(uploader.allowed_type) >= {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}

    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    sidebar += "\n".join(c.value for c in at.sidebar.caption)
    assert meta.name in sidebar and meta.sha256[:12] in sidebar
    assert f"{meta.threshold:.3f}" in sidebar and f"{meta.temperature:.3f}" in sidebar
    assert any("Upload one or more chest X-rays" in i.value for i in at.info)


def test_missing_model_explains_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setenv("COVID_MODEL_PATH", str(tmp_path / "absent.keras"))
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "absent.keras" in at.error[0].value
    assert "python -m covid.train" in at.info[0].value
    assert "python -m covid.evaluate" in at.info[0].value
    assert not at.slider and not at.file_uploader
    assert any(DISCLAIMER in w.value for w in at.warning)


def test_altered_model_file_is_refused(monkeypatch, tmp_path, tiny_model_file):
    copy = tmp_path / "model.keras"
    shutil.copyfile(tiny_model_file, copy)
    raw = json.loads(Path(tiny_model_file).with_suffix(".json").read_text())
    raw["sha256"] = "0" * 64
    copy.with_suffix(".json").write_text(json.dumps(raw))
    monkeypatch.setenv("COVID_MODEL_PATH", str(copy))
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "does not match" in at.error[0].value
    assert "python -m covid.train" in at.info[0].value


def _select_row(at: AppTest, row: int | None) -> AppTest:
    """Ticks one row of the batch table (as a click would), or clears the choice."""
    table = at.dataframe[0]
    rows = [] if row is None else [row]
    at.session_state[table.key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return at.run()


def _table(at: AppTest) -> list[dict]:
    return at.dataframe[0].value.to_dict("records")


BROKEN = ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png")


def test_batch_shows_a_table_sorted_by_suspicion_with_the_broken_file_last(make_app, meta, calls):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", _png(1), "image/png"), BROKEN, ("other.png", _png(2), "image/png"),
        ("third.png", _png(7), "image/png"),
    ]).run()
    assert not at.exception

    errors = [e.value for e in at.error if "broken.png" in e.value]
    assert len(errors) == 1 and errors[0].startswith("broken.png")
    rows = _table(at)
    findings = [f"{name} %" for name in meta.class_names if name != "Normal"]
    assert list(rows[0]) == ["file", *findings, "label", "flag", "advice", "evidence in lungs %",
                             "opacity % of lungs", "opacity score /8", "triage", "error"]
    assert [r["file"] for r in rows][-1] == "broken.png"
    assert rows[-1]["error"].startswith("broken.png: ") and rows[-1]["label"] == ""
    assert np.isnan(rows[-1]["COVID %"])
    store = at.session_state["_covid_studies"]
    by_name = {r.name: r for r in store.values()}
    finding = [by_name[r["file"]].p_finding for r in rows[:-1]]
    assert finding == sorted(finding, reverse=True) and len(finding) == 3
    expected = sorted((n for n in by_name if n != "broken.png"),
                      key=lambda n: (-by_name[n].p_finding, -by_name[n].p_positive))
    assert [r["file"] for r in rows[:-1]] == expected
    for row in rows[:-1]:
        result = by_name[row["file"]]
        assert row["label"] == result.label and row["triage"] in result.triage
        # largest-remainder rounding moves a percentage by less than one step of 0.1
        assert row["COVID %"] == pytest.approx(100 * result.p_positive, abs=0.1)
        assert row["error"] == ""

    # no study opens until a row is chosen, and no map is computed for it
    assert not [h for h in at.subheader if h.value.endswith(".png")]
    assert any("Choose a row" in i.value for i in at.info)
    passes = _passes(at)
    assert calls["forward"] == passes and not calls["explain"]

    _select_row(at, 1)
    assert not at.exception
    assert [h.value for h in at.subheader if h.value.endswith(".png")] == [rows[1]["file"]]
    pct = _percentages(at, meta.class_names)
    assert round(sum(pct.values()), 6) == 100.0
    assert pct["COVID"] == rows[1]["COVID %"]
    triage = [a.value for a in (*at.success, *at.error) if DISCLAIMER in a.value]
    assert len(triage) == 1 and rows[1]["triage"] in triage[0]
    captions = [c for img in at.image for c in img.captions]
    assert captions.count("X-ray") == 1 and sum(c.startswith("Grad-CAM") for c in captions) == 1

    _select_row(at, len(rows) - 1)  # the broken file: its error, no panel
    assert not at.exception
    assert not [h for h in at.subheader if h.value.endswith(".png")]
    assert sum("broken.png" in e.value for e in at.error) == 2
    assert calls["forward"] == passes and not calls["explain"]  # the pipeline's map was shown


def test_one_readable_xray_opens_directly_beside_the_errors(make_app, meta):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value([("chest.png", _png(1), "image/png"), BROKEN]).run()
    assert not at.exception
    assert not at.dataframe
    assert [h.value for h in at.subheader] == ["chest.png"]
    assert any(e.value.startswith("broken.png") for e in at.error)
    assert set(_percentages(at, meta.class_names)) == set(meta.class_names)


def test_display_controls_rerun_only_the_results_and_not_the_network(make_app, meta, calls,
                                                                      runs):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(3), "image/png")).run()
    assert not at.exception
    passes = _passes(at)
    assert calls["forward"] == passes and not calls["explain"]  # the pipeline's map is reused
    shown = [img.value for img in at.image]

    drawn = _fragment_control(at, runs, "slider", "opacity", 0.8)
    assert drawn[0] == shown[0] and drawn[1] != shown[1]  # the same X-ray, a new overlay
    _fragment_control(at, runs, "selectbox", "colormap", at.selectbox(key="colormap").options[-1])
    page = runs["page"]
    at.radio(key="view").set_value("Heatmap alone").run()  # enables other controls: full run
    assert runs["page"] == page + 1 and at.slider(key="opacity").disabled
    at.radio(key="view").set_value("Contour lines").run()
    at.radio(key="view").set_value("Overlay").run()
    assert not at.exception
    assert calls["forward"] == passes and not calls["explain"]

    _fragment_control(at, runs, "radio", "method", "Grad-CAM++")
    assert calls["forward"] == passes and calls["explain"][-1][1] == "gradcam++"
    for name in meta.class_names:
        _fragment_control(at, runs, "selectbox", "target", name)
    assert not at.exception
    explained = set(calls["explain"])
    assert len(explained) == len(calls["explain"])  # never the same map twice
    assert {t for t, m in explained if m == "gradcam++"} == set(range(len(meta.class_names)))
    assert calls["forward"] == passes
    assert any("Grad-CAM++" in c for img in at.image for c in img.captions)


def test_a_control_change_with_no_results_reruns_the_page_and_brings_back_no_study(
    make_app, runs
):
    at = make_app().run()
    page = runs["page"]
    at.slider(key="opacity").set_value(0.7).run()  # no results fragment: the page reruns
    assert not at.exception and runs["page"] == page + 1
    at.file_uploader(key="uploads").set_value(("chest.png", _png(3), "image/png")).run()
    assert [h.value for h in at.subheader] == ["chest.png"]

    at.file_uploader(key="uploads").set_value([]).run()  # the file removed
    page = runs["page"]
    at.slider(key="opacity").set_value(0.5).run()
    assert not at.exception and runs["page"] == page + 1
    assert not at.subheader and not at.image
    assert not at.session_state["_covid_studies"] and not at.session_state["_covid_cams"]


def test_an_unusual_chest_xray_keeps_bars_and_map_with_a_caution_and_is_admitted(make_app,
                                                                                   meta):
    at = make_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(("icu.png", _png(4), "image/png")).run()
    assert not at.exception
    assert any(w.value.startswith("Caution: it is unlike the chest X-rays") for w in at.warning)
    assert [a.value for a in at.error if a.value.startswith(UNUSUAL_ADVICE)]  # red: admit
    assert not at.success and "does not look like a chest X-ray" not in _texts(at)
    assert round(sum(_percentages(at, meta.class_names).values()), 6) == 100.0
    assert any("prediction" in bar.text for bar in at.progress)
    assert any(c.startswith("Grad-CAM") for c in _captions(at)) and not at.expander


def test_an_image_that_is_not_a_chest_xray_is_refused_without_scores_or_map(make_app):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("cat.png", _colour_png(), "image/png")).run()
    assert not at.exception
    refusal = [w.value for w in at.warning if "does not look like a chest X-ray" in w.value]
    assert refusal and refusal[0].startswith("Not a chest X-ray: it is a colour image")
    assert not [a for a in (*at.success, *at.error) if DISCLAIMER in a.value]
    assert not at.progress and not at.expander and "Prediction" not in _texts(at)
    assert _captions(at) == ["X-ray"]  # no map
    assert at.get("download_button")  # its PDF gives the refusal


def test_a_failing_map_only_hides_its_own_panel(make_app, meta, monkeypatch):
    explain = BatchingClassifier.explain

    def flaky(self, x, target=None, method="gradcam"):
        if float(np.asarray(x).mean()) == flaky.bad_mean:
            raise RuntimeError("simulated failure")
        return explain(self, x, target=target, method=method)

    size = meta.input_size
    flaky.bad_mean = float(to_model_input(decode_image(_png(5), "bad.png").pixels, size).mean())
    monkeypatch.setattr(BatchingClassifier, "explain", flaky)
    at = make_app().run()
    at.radio(key="method").set_value("Grad-CAM++").run()  # a map the pipeline did not make
    at.file_uploader(key="uploads").set_value([
        ("bad.png", _png(5), "image/png"), ("good.png", _png(6), "image/png"),
    ]).run()
    files = [r["file"] for r in _table(at)]
    _select_row(at, files.index("bad.png"))
    assert not at.exception
    assert any(e.value.startswith("bad.png: the result could not be displayed") for e in at.error)
    assert at.dataframe and not [h for h in at.subheader if h.value.endswith(".png")]
    _select_row(at, files.index("good.png"))
    assert not at.exception
    assert [h.value for h in at.subheader if h.value.endswith(".png")] == ["good.png"]
    assert any(c.startswith("Grad-CAM") for img in at.image for c in img.captions)


# ------------------------------------------------------------------ model page


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


def test_model_page_shows_card_charts_operating_point_and_map_checks(serve, evaluated_model):
    from covid.evaluation.metrics import operating_point
    from covid.evaluation.results import read_evaluation
    from covid.model.figure_names import figure_name

    meta = read_metadata(evaluated_model)
    at = open_model_page(serve(evaluated_model).run())
    assert [h.value for h in at.header] == [
        "Model card", "Operating point", "Test-split charts", "By source and age",
        "Evidence inside the lungs"]
    text = _texts(at)
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
    assert "Not measured yet" in _texts(at)  # no radiologists' masks for these films


def test_model_page_without_artefacts_says_so(serve, tiny_model_file):
    at = open_model_page(serve(tiny_model_file).run())
    text = _texts(at)
    assert "Evaluation artefacts missing" in text and "python -m covid.evaluate" in text
    assert "tiny.evaluation.json" in text and "tiny.test_scores.csv" in text
    assert "Not measured yet" in text
    assert "DeGrave" in text  # the model card needs only the metadata
    assert not [s for s in at.slider if s.key == "op_threshold"]  # nothing to judge it on
    assert not at.image


def _has_lung_evidence(at: AppTest) -> bool:
    return not any("hold no `lung_evidence` column" in i.value for i in at.info)


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
    text = _texts(at)
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
    text = _texts(at)
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


def _label_and_triage(at: AppTest) -> tuple[str, str]:
    label = next(m.value for m in at.markdown if m.value.startswith("**Prediction: "))
    triage = next(a.value for a in (*at.success, *at.error) if DISCLAIMER in a.value)
    return label.removeprefix("**Prediction: ").rstrip("*"), triage


def test_operating_point_is_per_session_and_relabels_cached_results(
    serve, evaluated_model, calls, plant_lungs
):
    from covid.model.decision import ADVICE

    meta = read_metadata(evaluated_model)
    upload = ("chest.png", _png(1), "image/png")
    first = serve(evaluated_model).run()
    first.file_uploader(key="uploads").set_value(upload).run()
    passes = _passes(first)
    shipped_label, shipped_triage = _label_and_triage(first)
    p = next(iter(first.session_state["_covid_studies"].values())).p_finding
    assert (shipped_label != NORMAL) == (p >= meta.threshold)
    assert "the shipped operating point" in _texts(first)

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
    assert "chosen for this session" in _texts(first)
    assert f"{threshold:.3f}" in "\n".join(m.value for m in first.sidebar.markdown)
    assert calls["forward"] == passes  # re-labelled, not re-scored

    # session 2, same process and caches, keeps the shipped operating point
    second = serve(evaluated_model).run()
    second.file_uploader(key="uploads").set_value(upload).run()
    assert not second.exception
    assert _label_and_triage(second) == (shipped_label, shipped_triage)
    assert "the shipped operating point" in _texts(second)
    assert second.button(key="op_reset").disabled
    open_model_page(second)
    assert second.slider(key="op_threshold").value == pytest.approx(meta.threshold)

    # session 1 still has its own choice, and its reset button brings back the shipped one
    first.run()
    assert _label_and_triage(first)[0] == label
    first.button(key="op_reset").click().run()
    assert _label_and_triage(first) == (shipped_label, shipped_triage)
    assert "the shipped operating point" in _texts(first)


def test_pdf_report_follows_the_session_operating_point(tiny_model_file):
    from pypdf import PdfReader

    from covid.screening import studies as app
    from covid.screening.pipeline import analyse

    classifier = Classifier.from_file(tiny_model_file)
    cached = analyse([("chest.png", _png(1))], classifier)[0]  # at the shipped threshold
    assert cached.p_positive < 1.0
    threshold = 1.0 if cached.label != NORMAL else 0.0
    study = app.at_threshold([app.Study("key", "digest", cached)], threshold)[0]
    assert study.result.label != cached.label
    settings = app.DisplaySettings(view="Contour lines", method="gradcam++")
    pdf = app.report_pdf(study, classifier, settings, threshold)
    assert pdf.startswith(b"%PDF")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert f"Result at the operating point: {study.result.label}" in text
    assert "session choice" in text and "chest.png" in text


def test_batch_and_opened_study_survive_a_visit_to_the_model_page(serve, evaluated_model):
    at = serve(evaluated_model).run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", _png(1), "image/png"), ("other.png", _png(2), "image/png"),
    ]).run()
    chosen = _table(at)[1]["file"]
    _select_row(at, 1)
    open_model_page(at)
    at.button(key="op_back").click().run()
    assert not at.exception
    assert any("uploaded before you opened the model page" in i.value for i in at.info)
    assert [h.value for h in at.subheader if h.value.endswith(".png")] == [chosen]

    at.button(key="clear_batch").click().run()
    assert not at.exception and not at.dataframe
    assert any("Upload one or more chest X-rays" in i.value for i in at.info)


def test_a_batch_is_scored_behind_a_progress_bar(make_app, monkeypatch):
    from covid.app import screening

    seen = []
    score_files = screening.score_files

    def recording(files, classifier, *args, analyse, **kwargs):
        def analyse_in_pairs(*args, progress, **options):
            def report(fraction):
                seen.append(fraction)
                progress(fraction)

            return analyse(*args, **dict(options, progress=report, batch_size=2))

        return score_files(files, classifier, *args, **kwargs, analyse=analyse_in_pairs)

    monkeypatch.setattr(screening, "score_files", recording)
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(
        [(f"{i}.png", _png(i), "image/png") for i in range(5)]).run()
    assert not at.exception
    assert seen[0] < 1.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert not [bar for bar in at.progress if "Scoring" in bar.text]  # gone once done
    assert len(_table(at)) == 5


def test_in_a_batch_unusual_films_are_admitted_and_refused_images_have_no_label(
        make_app, tiny_model_file):
    at = make_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(
        [("cat.png", _colour_png(), "image/png"), ("icu.png", _png(4), "image/png"),
         ("icu2.png", _png(8), "image/png")]).run()
    assert not at.exception
    rows = _table(at)
    assert [r["file"] for r in rows][-1] == "cat.png"  # refused: after every classified film
    for row in rows[:-1]:
        assert row["flag"] == "unusual" and row["label"] in read_metadata(
            tiny_model_file).class_names
        assert row["advice"] == "admit" and row["triage"].startswith(UNUSUAL_ADVICE)
    cat = rows[-1]
    assert cat["flag"] == "not_chest" and cat["label"] == "" and cat["advice"] == ""
    assert cat["triage"].startswith("This does not look like a chest X-ray")
    assert np.isnan(cat["COVID %"])
    _select_row(at, len(rows) - 1)
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not [a for a in (*at.success, *at.error) if DISCLAIMER in a.value]


# ------------------------------------------------------------------ lung fields


@pytest.fixture
def lungs_app(make_app, tiny_lung_file, monkeypatch, plant_lungs):
    """AppTests serving the tiny model with a lung segmenter whose masks are planted."""

    def make(flagged: bool = False) -> AppTest:
        monkeypatch.setenv("COVID_LUNG_MODEL_PATH", str(tiny_lung_file))
        return make_app(flagged)

    return make


SHARE_TEXT = "of the evidence lies inside the lung fields"


def _shares(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if SHARE_TEXT in m.value and "Only" not in m.value]


def _cautions(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if "mostly outside the lungs" in w.value]


def _captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def test_the_share_is_measured_on_the_map_shown(lungs_app, plant_lungs, meta, calls):
    from covid.explain.localisation import energy_inside, evidence_sentence
    from covid.screening.pipeline import film_map

    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(1), "image/png")).run()
    assert not at.exception
    key, result = next(iter(at.session_state["_covid_studies"].items()))
    lungs = plant_lungs.mask(result.pixels.shape)
    assert np.array_equal(result.lungs, lungs) and result.cam.max() > 0
    share = energy_inside(result.cam, lungs)
    assert result.lung_evidence == pytest.approx(share)
    assert _shares(at) == [f"**{evidence_sentence(share)}**"]
    assert bool(_cautions(at)) == (share < 0.5)
    assert not calls["explain"]  # the pipeline's own map, not explained again

    # explain the other class: the share follows the map shown, unaltered
    other = next(i for i, name in enumerate(meta.class_names) if name != result.label)
    at.selectbox(key="target").set_value(meta.class_names[other]).run()
    assert not at.exception and calls["explain"] == [(other, "gradcam")]
    explained = at.session_state["_covid_cams"][(key, other, "gradcam")]
    cam = film_map(result, explained)
    assert _shares(at) == [f"**{evidence_sentence(energy_inside(cam, lungs))}**"]
    assert any(f"explains {meta.class_names[other]}" in c.value for c in at.caption
               if "segmented lung fields" in c.value)


def _bottom_strip(shape: tuple[int, int]) -> np.ndarray:
    """A lung-sized field along the film's bottom edge, where little of the map lies."""
    mask = np.zeros(shape, bool)
    mask[-max(1, shape[0] // 25) :, :] = True  # 4% of the film: a field, though no pair
    return mask


@pytest.mark.parametrize(("mask_for", "cautioned"),
                         [(lambda shape: np.ones(shape, bool), False), (_bottom_strip, True)])
def test_the_caution_appears_below_half_and_not_above(lungs_app, plant_lungs, mask_for,
                                                      cautioned):
    from covid.explain.localisation import evidence_sentence

    plant_lungs.mask_for = mask_for  # no plausible pair either way: unusual, still classified
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(1), "image/png")).run()
    assert not at.exception
    result = next(iter(at.session_state["_covid_studies"].values()))
    assert result.flag == "unusual" and (result.lung_evidence < 0.5) == cautioned
    assert _shares(at) == [f"**{evidence_sentence(result.lung_evidence)}**"]
    assert len(_cautions(at)) == int(cautioned)
    if cautioned:
        assert "treat this result with suspicion" in _cautions(at)[0]


def test_the_outline_switch_draws_the_lungs_over_the_xray_and_the_map(lungs_app, calls):
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(1), "image/png")).run()
    toggle = at.toggle(key="outline")
    assert toggle.label == "Lung outline" and not toggle.disabled and toggle.value is False
    plain = [img.value for img in at.image]
    assert "X-ray" in _captions(at) and not any("outline" in c for c in _captions(at))

    at.toggle(key="outline").set_value(True).run()
    assert not at.exception
    captions = _captions(at)
    assert "X-ray · lung outline" in captions
    assert any(c.startswith("Grad-CAM") and c.endswith("lung outline in white")
               for c in captions)
    drawn = [img.value for img in at.image]
    assert len(drawn) == len(plain) and all(a != b for a, b in zip(plain, drawn, strict=True))
    at.run()  # the switch reran only the results: an AppTest then holds nothing else

    for view in ("Heatmap alone", "Contour lines"):  # over every display of the map
        at.radio(key="view").set_value(view).run()
        assert any(c.endswith("lung outline in white") for c in _captions(at))
    at.radio(key="view").set_value("Overlay").run()
    at.toggle(key="outline").set_value(False).run()
    assert [img.value for img in at.image] == plain
    assert not calls["explain"]  # drawing the outline never runs the network


def test_without_a_segmenter_there_is_no_outline_and_no_share(make_app):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(1), "image/png")).run()
    assert not at.exception
    assert at.toggle(key="outline").disabled
    assert not _shares(at) and not _cautions(at)
    assert "X-ray" in _captions(at)
    at.file_uploader(key="uploads").set_value([
        ("chest.png", _png(1), "image/png"), ("other.png", _png(2), "image/png")]).run()
    assert all(row["evidence in lungs %"] is None or np.isnan(row["evidence in lungs %"])
               for row in _table(at))


def test_the_batch_table_has_a_numeric_evidence_in_lungs_column(lungs_app):
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(
        [(f"{i}.png", _png(i), "image/png") for i in range(3)]).run()
    assert not at.exception
    store = {r.name: r for r in at.session_state["_covid_studies"].values()}
    for row in _table(at):
        share = store[row["file"]].lung_evidence
        assert row["evidence in lungs %"] == pytest.approx(round(100 * share, 1))
    assert at.dataframe[0].value["evidence in lungs %"].dtype.kind == "f"  # sorts as numbers


def test_an_unusual_film_shows_its_share_and_a_refused_one_none(lungs_app):
    at = lungs_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(("icu.png", _png(4), "image/png")).run()
    assert not at.exception
    assert any(w.value.startswith("Caution:") for w in at.warning) and _shares(at)
    at.file_uploader(key="uploads").set_value(("cat.png", _colour_png(), "image/png")).run()
    assert not at.exception
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not _shares(at) and not at.expander


def test_a_lung_focused_model_without_its_segmenter_explains_why(
    make_app, tiny_model_file, tmp_path, monkeypatch
):
    copy = tmp_path / "focused.keras"
    shutil.copyfile(tiny_model_file, copy)
    raw = json.loads(Path(tiny_model_file).with_suffix(".json").read_text())
    raw["input_mode"] = "crop"
    copy.with_suffix(".json").write_text(json.dumps(raw))
    at = make_app()
    monkeypatch.setenv("COVID_MODEL_PATH", str(copy))
    at.run()
    assert not at.exception
    assert any("no_lung_model.keras" in e.value for e in at.error)
    assert not at.file_uploader


# ------------------------------------------------------------------ opacities


@pytest.fixture
def opacity_app(lungs_app, monkeypatch, tmp_path):
    """AppTests with planted lungs and a tiny opacity segmenter that outlines all of them."""
    from tests.opacity_models import save_tiny_opacity

    path = save_tiny_opacity(tmp_path / "opacity.keras")

    def make(flagged: bool = False) -> AppTest:
        monkeypatch.setenv("COVID_OPACITY_MODEL_PATH", str(path))
        return lungs_app(flagged)

    return make


OPACITY_SUMMARY = "**Opacities:** Right lung 100% · left lung 100% · score 8/8"
"""What the study shows beside its bars when the opacity covers all of both lungs."""


def _opacity_lines(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**Opacities:**")]


def test_the_opacity_outline_is_drawn_on_the_xray_only_and_the_figures_beside_the_bars(
        opacity_app, calls):
    at = opacity_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(1), "image/png")).run()
    assert not at.exception
    assert _opacity_lines(at) == [OPACITY_SUMMARY]
    toggle = at.toggle(key="opacity_outline")
    assert toggle.label == "Opacity outline (separate segmentation)"
    assert not toggle.disabled and toggle.value is False
    assert "not the classifier's evidence" in toggle.help
    xray, cam = (img.value for img in at.image)

    at.toggle(key="opacity_outline").set_value(True).run()
    assert not at.exception
    outlined, same_cam = (img.value for img in at.image)
    assert outlined != xray and same_cam == cam  # the Grad-CAM is left as it is
    caption = _captions(at)[0]
    assert caption.startswith("X-ray") and "opacity segmenter, not the classifier's" in caption
    assert not any("opacit" in c for c in _captions(at)[1:])
    assert not calls["explain"]  # drawing the outline never runs the network


def test_a_refused_film_has_no_opacity_outline_figures_or_table_cells(opacity_app):
    at = opacity_app().run()
    at.toggle(key="opacity_outline").set_value(True).run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", _png(1), "image/png"), ("cat.png", _colour_png(), "image/png")]).run()
    assert not at.exception
    rows = {row["file"]: row for row in _table(at)}
    assert rows["chest.png"]["opacity % of lungs"] == 100.0
    assert rows["chest.png"]["opacity score /8"] == 8
    cat = rows["cat.png"]
    assert all(v is None or np.isnan(v) for v in (cat["opacity % of lungs"],
                                                    cat["opacity score /8"]))
    _select_row(at, list(rows).index("cat.png"))
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not _opacity_lines(at) and not any("opacit" in c for c in _captions(at))
    _select_row(at, list(rows).index("chest.png"))
    assert _opacity_lines(at) == [OPACITY_SUMMARY]
    assert "opacities in magenta" in _captions(at)[0]


def test_without_the_opacity_segmenter_there_are_no_opacity_figures(lungs_app):
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(1), "image/png")).run()
    assert not at.exception
    assert at.toggle(key="opacity_outline").disabled and not _opacity_lines(at)
    assert _shares(at)  # the lung segmenter still runs
