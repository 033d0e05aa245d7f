"""The PDF report's layout, read back with pypdf: what it says, where, and what it never says."""

import io
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import ImageFont
from pypdf import PdfReader
from pypdf.generic import ContentStream

from covid import DISCLAIMER
from covid.explain.localisation import EVIDENCE_MEANING, OPACITY_RGB, lung_outline
from covid.model.classes import COVID, NORMAL, OTHER_PNEUMONIA
from covid.model.decision import (
    ADVICE,
    FLAG_NOT_CHEST,
    FLAG_UNUSUAL,
    UNUSUAL_ADVICE,
)
from covid.model.metadata import ModelMetadata
from covid.model.opacity import OpacitySegmentation, grade
from covid.screening.pipeline import StudyResult, percentages
from covid.screening.report_layout import (
    ReportError,
    build_report,
    opacity_figures,
)
from tests.conftest import planted_lungs
from tests.results import THREE_CLASSES, TWO_CLASSES, scored
from tests.screening.pdfs import all_bytes, flat, pdf_images, pdf_text

SHA = "0123456789abcdef" * 4
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
PATIENT = "DOE^JANE"
PATIENT_ID = "PID-12345"
SHAPE = (90, 70)

ADMIT, GO_HOME = ADVICE[COVID], ADVICE[NORMAL]
REASONS = {FLAG_NOT_CHEST: "it is a colour image; chest X-rays are grey.",
           FLAG_UNUSUAL: "it is unlike the chest X-rays the model was trained on."}


def meta_for(class_names=TWO_CLASSES, threshold=0.5, name="tiny test CNN"):
    return ModelMetadata(name=name, version="test-7", sha256=SHA, threshold=threshold,
                         class_names=list(class_names), input_size=32, input_mode="full")


@pytest.fixture
def metadata():
    return meta_for()


def _pages(pdf: bytes) -> int:
    return len(PdfReader(io.BytesIO(pdf)).pages)


def _result(p_covid=0.8766, flag=None, info=None, threshold=0.5, **fields):
    rng = np.random.default_rng(1)
    return scored(
        "study_01.png", p_covid, threshold=threshold, flag=flag, flag_reason=REASONS.get(flag),
        pixels=rng.integers(0, 255, SHAPE, dtype=np.uint8),
        model_input=np.zeros((32, 32, 1), np.uint8), info=info or {"Modality": "CR"},
        **fields)


def _overlay(shape=SHAPE):
    return np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)


def _opacity(covered_rows: slice = slice(45, 90)) -> OpacitySegmentation:
    """Planted lungs with the opacity over their lower part (patient's right more than left)."""
    lungs = planted_lungs(SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[covered_rows] = True
    mask &= lungs
    mask[:, SHAPE[1] // 2:] &= np.arange(SHAPE[0])[:, None] >= 55  # less of the other lung
    return OpacitySegmentation(mask, grade(lungs, mask))


# --------------------------------------------------------------------------- content


def test_report_holds_everything_required(metadata):
    result = _result()
    pdf = build_report(result, _overlay(), metadata, 0.5, when=WHEN)
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf)
    covid_pct, normal_pct = percentages(result.probs)
    assert covid_pct + normal_pct == pytest.approx(100.0)
    for expected in (f"COVID {covid_pct:.1f} %", f"Normal {normal_pct:.1f} %", ADMIT,
                     "tiny test CNN", "test-7", SHA[:12], DISCLAIMER, "0.500",
                     "shipped operating point", "study_01.png", "Modality: CR",
                     "2024-05-01 12:30"):
        assert expected in text, expected
    assert SHA[:13] not in text
    assert len(pdf_images(pdf)) == 2 and _pages(pdf) == 1


def test_session_threshold_is_named_as_such(metadata):
    result = _result(p_covid=0.4, threshold=0.3)
    assert result.label == COVID
    text = pdf_text(build_report(result, _overlay(), metadata, 0.3, when=WHEN))
    assert "0.300" in text and "session choice" in text and "0.500" in text


def test_a_three_class_report_has_three_bars_and_the_finding_advice():
    metadata = meta_for(THREE_CLASSES, threshold=0.4, name="three")
    result = scored("p.png", [0.15, 0.5, 0.35], THREE_CLASSES, threshold=0.4,
                    pixels=np.zeros(SHAPE, np.uint8))
    text = flat(pdf_text(build_report(result, _overlay(), metadata, 0.4, when=WHEN)))
    for expected in ("COVID 15.0 %", "Other pneumonia 50.0 %", "Normal 35.0 %",
                     "Result at the operating point: Other pneumonia",
                     ADVICE[OTHER_PNEUMONIA], "P(any finding) ≥ 0.400 admits"):
        assert expected in text, expected
    with pytest.raises(ReportError, match="threshold"):
        build_report(result, _overlay(), metadata, 0.7)  # 0.65 < 0.7 would be Normal


def _label_and_bar_edges(pdf: bytes, names) -> dict[str, tuple[float, float]]:
    """Each class label's right edge and the bars' left edge, in points.

    The label's width is measured with the font file itself (PIL), not with the
    layout's own measure, and the bars are the drawn rectangles.
    """
    page = PdfReader(io.BytesIO(pdf)).pages[0]
    starts = {}

    def visit(text, cm, tm, font, size):
        if text.strip() in names:
            starts[text.strip()] = (tm[4], size)

    page.extract_text(visitor_text=visit)
    bars = [[float(v) for v in operands]
            for operands, op in ContentStream(page.get_contents(), page.pdf).operations
            if op == b"re"]
    bar_left = min(x for x, _, _, _ in bars)
    bold = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    font = ImageFont.truetype(str(bold), 1000)
    assert set(starts) == set(names)
    return {name: (x + font.getlength(name) * size / 1000, bar_left)
            for name, (x, size) in starts.items()}


@pytest.mark.parametrize("class_names", [
    THREE_CLASSES, (COVID, "Bacterial or fungal pneumonia, any age", NORMAL)],
    ids=["three", "longer"])
def test_no_class_label_is_cut_by_its_bar(class_names):
    """The labels' column is as wide as the model's longest class name, whatever it is."""
    metadata = meta_for(class_names, threshold=0.4)
    result = scored("p.png", [0.15, 0.5, 0.35], class_names, threshold=0.4,
                    pixels=np.zeros(SHAPE, np.uint8))
    pdf = build_report(result, _overlay(), metadata, 0.4, when=WHEN)
    for name, (label_end, bar_left) in _label_and_bar_edges(pdf, class_names).items():
        assert label_end < bar_left, f"{name!r} runs under its bar"
    assert f"{class_names[1]} 50.0 %" in flat(pdf_text(pdf))


# --------------------------------------------------------------------------- why


def test_the_why_sentence_sits_between_the_bars_and_the_result():
    """The issue's film: Normal has the longest bar, yet the rule admits it."""
    metadata = meta_for(THREE_CLASSES, threshold=0.195)
    result = scored("p.png", [0.05, 0.206, 0.744], THREE_CLASSES, threshold=0.195,
                    pixels=np.zeros(SHAPE, np.uint8))
    text = flat(pdf_text(build_report(result, _overlay(), metadata, 0.195, when=WHEN)))
    why = ("P(any finding) 25.6% is above the operating point 19.5%: admit, as Other "
           "pneumonia, the likelier finding.")
    assert why in text
    assert text.index("Normal 74.4 %") < text.index(why) < text.index(
        "Result at the operating point: Other pneumonia")


# --------------------------------------------------------------------------- flags


def test_a_refused_study_gets_the_refusal_and_no_label_bars_map_or_advice(metadata):
    pdf = build_report(_result(flag=FLAG_NOT_CHEST), None, metadata, 0.5, when=WHEN)
    text = flat(pdf_text(pdf))
    assert "This does not look like a chest X-ray" in text
    assert f"Not a chest X-ray: {REASONS[FLAG_NOT_CHEST]}" in text
    assert ADMIT not in text and GO_HOME not in text
    assert "Result at the operating point" not in text
    assert "%" not in text and "Grad-CAM" not in text  # no bars, no reason, no map
    assert DISCLAIMER in text and len(pdf_images(pdf)) == 1


def test_an_unusual_study_keeps_its_label_and_bars_with_a_caution_and_is_admitted(metadata):
    result = _result(p_covid=0.1, flag=FLAG_UNUSUAL)  # Normal, yet admitted
    text = flat(pdf_text(build_report(result, _overlay(), metadata, 0.5, when=WHEN)))
    assert "Result at the operating point: Normal" in text
    assert f"Caution: {REASONS[FLAG_UNUSUAL]}" in text
    assert UNUSUAL_ADVICE in text and GO_HOME not in text
    assert "COVID 10.0 %" in text and "Normal 90.0 %" in text
    assert "is below the operating point 50.0%, but the film is unusual: admit." in text


def test_a_classified_study_needs_its_overlay(metadata):
    with pytest.raises(ReportError, match="overlay"):
        build_report(_result(flag=FLAG_UNUSUAL), None, metadata, 0.5)


def test_identifier_like_info_keys_are_never_printed(metadata):
    info = {"Modality": "DX", "PatientName": PATIENT, "Patient ID": PATIENT_ID}
    pdf = build_report(_result(info=info), _overlay(), metadata, 0.5, when=WHEN)
    assert "Modality: DX" in pdf_text(pdf)
    for secret in (PATIENT, PATIENT_ID):
        assert secret not in pdf_text(pdf)
        assert secret.encode() not in all_bytes(pdf)


# --------------------------------------------------------------------------- opacities


def test_a_chest_film_shows_the_opacity_outline_and_figures(metadata):
    opacity = _opacity()
    severity = opacity.severity
    assert severity.right != severity.left and 0 < severity.score < 8  # a telling film
    result = _result(lungs=planted_lungs(SHAPE), opacity=opacity)
    pdf = build_report(result, _overlay(), metadata, 0.5, when=WHEN, lung_evidence=0.3)
    text = flat(pdf_text(pdf))
    figures = (f"Right lung {severity.right:.0%} · left lung {severity.left:.0%} · "
               f"score {severity.score}/8")
    assert opacity_figures(result) == figures
    assert figures in text and "a separate segmentation" in text
    assert "not the classifier's" in text  # named apart from the map
    xray, overlay = pdf_images(pdf)
    assert (xray == OPACITY_RGB).all(axis=2).sum() == lung_outline(opacity.mask).sum()
    assert not (overlay == OPACITY_RGB).all(axis=2).any()  # the map is left as it is
    assert _pages(pdf) == 1  # everything, the lungs' caution too, on one page


def test_without_the_segmenter_the_opacities_are_said_to_be_unmeasured(metadata):
    pdf = build_report(_result(), _overlay(), metadata, 0.5, when=WHEN)
    text = flat(pdf_text(pdf))
    assert "Not measured: the opacity segmenter did not run" in text
    assert "score" not in text and "Right lung" not in text
    assert not (pdf_images(pdf)[0] == OPACITY_RGB).all(axis=2).any()


def test_a_refused_film_gets_no_opacity_outline_or_figures(metadata):
    refused = _result(flag=FLAG_NOT_CHEST, opacity=_opacity())  # even if one got through
    pdf = build_report(refused, None, metadata, 0.5, when=WHEN)
    text = flat(pdf_text(pdf))
    assert opacity_figures(refused) is None
    assert "Right lung" not in text and "score" not in text and "opacit" not in text.lower()
    (xray,) = pdf_images(pdf)
    assert not (xray == OPACITY_RGB).all(axis=2).any()


# --------------------------------------------------------------------------- lungs


@pytest.mark.parametrize("flag", [None, FLAG_UNUSUAL])
def test_the_share_of_evidence_in_the_lungs_and_its_meaning_are_reported(metadata, flag):
    result = _result(flag=flag, lungs=np.zeros(SHAPE, bool))
    low = build_report(result, _overlay(), metadata, 0.5, when=WHEN, lung_evidence=0.3)
    text = flat(pdf_text(low))
    assert "30% of the evidence lies inside the lung fields" in text
    assert flat(EVIDENCE_MEANING) in text
    assert "Caution" in text and "mostly outside the lungs" in text
    assert "lung outline in white" in text
    assert _pages(low) == 1
    high = flat(pdf_text(build_report(result, _overlay(), metadata, 0.5, when=WHEN,
                                    lung_evidence=0.81)))
    assert "81% of the evidence lies inside the lung fields" in high
    assert ("Caution" in high) == (flag == FLAG_UNUSUAL)  # the lungs' caution is gone
    if flag:  # an unusual film is admitted, whatever its label
        assert UNUSUAL_ADVICE in high and GO_HOME not in high


def test_without_lungs_the_share_is_said_to_be_unmeasured(metadata):
    text = flat(pdf_text(build_report(_result(), _overlay(), metadata, 0.5, when=WHEN)))
    assert "Not measured: no lung segmenter" in text
    assert "lung outline" not in text and "of the evidence lies inside" not in text


def test_inconsistent_or_failed_inputs_are_refused(metadata):
    with pytest.raises(ReportError, match="threshold"):
        build_report(_result(p_covid=0.6), _overlay(), metadata, 0.7)
    with pytest.raises(ReportError, match="failed"):
        build_report(StudyResult(name="x.png", error="x.png: empty"), _overlay(), metadata, 0.5)
    with pytest.raises(ReportError, match="overlay"):
        build_report(_result(), _overlay()[:, :, 0], metadata, 0.5)
