"""One study's view (``covid/app/study.py``) in an in-process ``AppTest``.

What a film shows once opened: bars, map, triage and the sentence that says why,
an unusual film's caution, a refused film's refusal, a failing map's message,
its PDF at the session's operating point, the share of the map's evidence inside
the (planted) lung fields with the lung outline, and the opacity segmenter's
outline and figures. The served model and films are those of ``conftest.py``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from covid import DISCLAIMER
from covid.explain.batching import BatchingClassifier
from covid.explain.inference import Classifier
from covid.inputs.decode import decode_image
from covid.inputs.preprocess import to_model_input
from covid.model.classes import NORMAL
from covid.model.decision import UNUSUAL_ADVICE, why_sentence
from tests.app.pages import (
    bar_percentages,
    chest_png,
    colour_png,
    image_captions,
    page_text,
    select_row,
    table_rows,
)


def test_an_unusual_chest_xray_keeps_bars_and_map_with_a_caution_and_is_admitted(make_app,
                                                                                   meta):
    at = make_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(("icu.png", chest_png(4), "image/png")).run()
    assert not at.exception
    assert any(w.value.startswith("Caution: it is unlike the chest X-rays") for w in at.warning)
    assert [a.value for a in at.error if a.value.startswith(UNUSUAL_ADVICE)]  # red: admit
    assert not at.success and "does not look like a chest X-ray" not in page_text(at)
    assert round(sum(bar_percentages(at, meta.class_names).values()), 6) == 100.0
    assert any("prediction" in bar.text for bar in at.progress)
    assert any(c.startswith("Grad-CAM") for c in image_captions(at)) and not at.expander


def test_the_sentence_that_says_why_sits_under_the_bars(make_app, meta):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
    assert not at.exception
    result = next(iter(at.session_state["_covid_studies"].values()))
    why = why_sentence(result.decision, meta.class_names, meta.threshold)  # the PDF's sentence
    assert why.startswith("P(any finding) ")
    shown = [(node.type, node.value) for node in at.main if node.type in ("progress", "caption")]
    last_bar = max(i for i, (kind, _) in enumerate(shown) if kind == "progress")
    assert shown[last_bar + 1] == ("caption", f"{why} The operating point is the shipped one.")


def test_an_image_that_is_not_a_chest_xray_is_refused_without_scores_or_map(make_app):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("cat.png", colour_png(), "image/png")).run()
    assert not at.exception
    refusal = [w.value for w in at.warning if "does not look like a chest X-ray" in w.value]
    assert refusal and refusal[0].startswith("Not a chest X-ray: it is a colour image")
    assert not [a for a in (*at.success, *at.error) if DISCLAIMER in a.value]
    assert not at.progress and not at.expander and "Prediction" not in page_text(at)
    assert image_captions(at) == ["X-ray"]  # no map
    assert at.get("download_button")  # its PDF gives the refusal


def test_a_failing_map_only_hides_its_own_panel(make_app, meta, monkeypatch):
    explain = BatchingClassifier.explain

    def flaky(self, x, target=None, method="gradcam"):
        if float(np.asarray(x).mean()) == flaky.bad_mean:
            raise RuntimeError("simulated failure")
        return explain(self, x, target=target, method=method)

    size = meta.input_size
    bad = decode_image(chest_png(5), "bad.png").pixels
    flaky.bad_mean = float(to_model_input(bad, size).mean())
    monkeypatch.setattr(BatchingClassifier, "explain", flaky)
    at = make_app().run()
    at.radio(key="method").set_value("Grad-CAM++").run()  # a map the pipeline did not make
    at.file_uploader(key="uploads").set_value([
        ("bad.png", chest_png(5), "image/png"), ("good.png", chest_png(6), "image/png"),
    ]).run()
    files = [r["file"] for r in table_rows(at)]
    select_row(at, files.index("bad.png"))
    assert not at.exception
    assert any(e.value.startswith("bad.png: the result could not be displayed") for e in at.error)
    assert at.dataframe and not [h for h in at.subheader if h.value.endswith(".png")]
    select_row(at, files.index("good.png"))
    assert not at.exception
    assert [h.value for h in at.subheader if h.value.endswith(".png")] == ["good.png"]
    assert any(c.startswith("Grad-CAM") for img in at.image for c in img.captions)


def test_pdf_report_follows_the_session_operating_point(tiny_model_file):
    from pypdf import PdfReader

    from covid.screening import studies as app
    from covid.screening.pipeline import analyse

    classifier = Classifier.from_file(tiny_model_file)
    cached = analyse([("chest.png", chest_png(1))], classifier)[0]  # at the shipped threshold
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


# ------------------------------------------------------------------ lung fields


SHARE_TEXT = "of the evidence lies inside the lung fields"


def _shares(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if SHARE_TEXT in m.value and "Only" not in m.value]


def _cautions(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if "mostly outside the lungs" in w.value]


def test_the_share_is_measured_on_the_map_shown(lungs_app, plant_lungs, meta, calls):
    from covid.explain.localisation import energy_inside, evidence_sentence
    from covid.screening.pipeline import film_map

    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
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
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
    assert not at.exception
    result = next(iter(at.session_state["_covid_studies"].values()))
    assert result.flag == "unusual" and (result.lung_evidence < 0.5) == cautioned
    assert _shares(at) == [f"**{evidence_sentence(result.lung_evidence)}**"]
    assert len(_cautions(at)) == int(cautioned)
    if cautioned:
        assert "treat this result with suspicion" in _cautions(at)[0]


def test_the_outline_switch_draws_the_lungs_over_the_xray_and_the_map(lungs_app, calls):
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
    toggle = at.toggle(key="outline")
    assert toggle.label == "Lung outline" and not toggle.disabled and toggle.value is False
    plain = [img.value for img in at.image]
    assert "X-ray" in image_captions(at) and not any("outline" in c for c in image_captions(at))

    at.toggle(key="outline").set_value(True).run()
    assert not at.exception
    captions = image_captions(at)
    assert "X-ray · lung outline" in captions
    assert any(c.startswith("Grad-CAM") and c.endswith("lung outline in white")
               for c in captions)
    drawn = [img.value for img in at.image]
    assert len(drawn) == len(plain) and all(a != b for a, b in zip(plain, drawn, strict=True))
    at.run()  # the switch reran only the results: an AppTest then holds nothing else

    for view in ("Heatmap alone", "Contour lines"):  # over every display of the map
        at.radio(key="view").set_value(view).run()
        assert any(c.endswith("lung outline in white") for c in image_captions(at))
    at.radio(key="view").set_value("Overlay").run()
    at.toggle(key="outline").set_value(False).run()
    assert [img.value for img in at.image] == plain
    assert not calls["explain"]  # drawing the outline never runs the network


def test_without_a_segmenter_there_is_no_outline_and_no_share(make_app):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
    assert not at.exception
    assert at.toggle(key="outline").disabled
    assert not _shares(at) and not _cautions(at)
    assert "X-ray" in image_captions(at)
    at.file_uploader(key="uploads").set_value([
        ("chest.png", chest_png(1), "image/png"), ("other.png", chest_png(2), "image/png")]).run()
    assert all(row["evidence in lungs %"] is None or np.isnan(row["evidence in lungs %"])
               for row in table_rows(at))


def test_an_unusual_film_shows_its_share_and_a_refused_one_none(lungs_app):
    at = lungs_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(("icu.png", chest_png(4), "image/png")).run()
    assert not at.exception
    assert any(w.value.startswith("Caution:") for w in at.warning) and _shares(at)
    at.file_uploader(key="uploads").set_value(("cat.png", colour_png(), "image/png")).run()
    assert not at.exception
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not _shares(at) and not at.expander


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
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
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
    caption = image_captions(at)[0]
    assert caption.startswith("X-ray") and "opacity segmenter, not the classifier's" in caption
    assert not any("opacit" in c for c in image_captions(at)[1:])
    assert not calls["explain"]  # drawing the outline never runs the network


def test_a_refused_film_has_no_opacity_outline_figures_or_table_cells(opacity_app):
    at = opacity_app().run()
    at.toggle(key="opacity_outline").set_value(True).run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", chest_png(1), "image/png"), ("cat.png", colour_png(), "image/png")]).run()
    assert not at.exception
    rows = {row["file"]: row for row in table_rows(at)}
    assert rows["chest.png"]["opacity % of lungs"] == 100.0
    assert rows["chest.png"]["opacity score /8"] == 8
    cat = rows["cat.png"]
    assert all(v is None or np.isnan(v) for v in (cat["opacity % of lungs"],
                                                    cat["opacity score /8"]))
    select_row(at, list(rows).index("cat.png"))
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not _opacity_lines(at) and not any("opacit" in c for c in image_captions(at))
    select_row(at, list(rows).index("chest.png"))
    assert _opacity_lines(at) == [OPACITY_SUMMARY]
    assert "opacities in magenta" in image_captions(at)[0]


def test_without_the_opacity_segmenter_there_are_no_opacity_figures(lungs_app):
    at = lungs_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", chest_png(1), "image/png")).run()
    assert not at.exception
    assert at.toggle(key="opacity_outline").disabled and not _opacity_lines(at)
    assert _shares(at)  # the lung segmenter still runs
