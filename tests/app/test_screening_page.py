"""The screening page (``covid/app/screening.py``) in an in-process ``AppTest``.

Its controls and model card, a missing or altered model, the batch table (sorted
by suspicion, refused and broken files last) and which runs a control change
causes: only the results fragment, never the network. The served model, the
synthetic films and the out-of-distribution gates are those of ``conftest.py``.
A row of the batch table is chosen by writing its selection state, as a click would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from covid import DISCLAIMER
from covid.model.decision import UNUSUAL_ADVICE
from covid.model.metadata import read_metadata
from tests.app.pages import (
    APP,
    TIMEOUT,
    bar_percentages,
    chest_png,
    colour_png,
    network_passes,
    select_row,
    table_rows,
)


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


# ------------------------------------------------------------------ the batch


BROKEN = ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png")


def test_batch_shows_a_table_sorted_by_suspicion_with_the_broken_file_last(make_app, meta, calls):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", chest_png(1), "image/png"), BROKEN, ("other.png", chest_png(2), "image/png"),
        ("third.png", chest_png(7), "image/png"),
    ]).run()
    assert not at.exception

    errors = [e.value for e in at.error if "broken.png" in e.value]
    assert len(errors) == 1 and errors[0].startswith("broken.png")
    rows = table_rows(at)
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
    passes = network_passes(at)
    assert calls["forward"] == passes and not calls["explain"]

    select_row(at, 1)
    assert not at.exception
    assert [h.value for h in at.subheader if h.value.endswith(".png")] == [rows[1]["file"]]
    pct = bar_percentages(at, meta.class_names)
    assert round(sum(pct.values()), 6) == 100.0
    assert pct["COVID"] == rows[1]["COVID %"]
    triage = [a.value for a in (*at.success, *at.error) if DISCLAIMER in a.value]
    assert len(triage) == 1 and rows[1]["triage"] in triage[0]
    captions = [c for img in at.image for c in img.captions]
    assert captions.count("X-ray") == 1 and sum(c.startswith("Grad-CAM") for c in captions) == 1

    select_row(at, len(rows) - 1)  # the broken file: its error, no panel
    assert not at.exception
    assert not [h for h in at.subheader if h.value.endswith(".png")]
    assert sum("broken.png" in e.value for e in at.error) == 2
    assert calls["forward"] == passes and not calls["explain"]  # the pipeline's map was shown


def test_one_readable_xray_opens_directly_beside_the_errors(make_app, meta):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(
        [("chest.png", chest_png(1), "image/png"), BROKEN]).run()
    assert not at.exception
    assert not at.dataframe
    assert [h.value for h in at.subheader] == ["chest.png"]
    assert any(e.value.startswith("broken.png") for e in at.error)
    assert set(bar_percentages(at, meta.class_names)) == set(meta.class_names)


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
        [(f"{i}.png", chest_png(i), "image/png") for i in range(5)]).run()
    assert not at.exception
    assert seen[0] < 1.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert not [bar for bar in at.progress if "Scoring" in bar.text]  # gone once done
    assert len(table_rows(at)) == 5


def test_in_a_batch_unusual_films_are_admitted_and_refused_images_have_no_label(
        make_app, tiny_model_file):
    at = make_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(
        [("cat.png", colour_png(), "image/png"), ("icu.png", chest_png(4), "image/png"),
         ("icu2.png", chest_png(8), "image/png")]).run()
    assert not at.exception
    rows = table_rows(at)
    assert [r["file"] for r in rows][-1] == "cat.png"  # refused: after every classified film
    for row in rows[:-1]:
        assert row["flag"] == "unusual" and row["label"] in read_metadata(
            tiny_model_file).class_names
        assert row["advice"] == "admit" and row["triage"].startswith(UNUSUAL_ADVICE)
    cat = rows[-1]
    assert cat["flag"] == "not_chest" and cat["label"] == "" and cat["advice"] == ""
    assert cat["triage"].startswith("This does not look like a chest X-ray")
    assert np.isnan(cat["COVID %"])
    select_row(at, len(rows) - 1)
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not [a for a in (*at.success, *at.error) if DISCLAIMER in a.value]


def test_the_batch_table_has_a_numeric_evidence_in_lungs_column(lungs_app):
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(
        [(f"{i}.png", chest_png(i), "image/png") for i in range(3)]).run()
    assert not at.exception
    store = {r.name: r for r in at.session_state["_covid_studies"].values()}
    for row in table_rows(at):
        share = store[row["file"]].lung_evidence
        assert row["evidence in lungs %"] == pytest.approx(round(100 * share, 1))
    assert at.dataframe[0].value["evidence in lungs %"].dtype.kind == "f"  # sorts as numbers


# ------------------------------------------------------------------ reruns


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


def test_display_controls_rerun_only_the_results_and_not_the_network(make_app, meta, calls,
                                                                      runs):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(3), "image/png")).run()
    assert not at.exception
    passes = network_passes(at)
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
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(3), "image/png")).run()
    assert [h.value for h in at.subheader] == ["chest.png"]

    at.file_uploader(key="uploads").set_value([]).run()  # the file removed
    page = runs["page"]
    at.slider(key="opacity").set_value(0.5).run()
    assert not at.exception and runs["page"] == page + 1
    assert not at.subheader and not at.image
    assert not at.session_state["_covid_studies"] and not at.session_state["_covid_cams"]
