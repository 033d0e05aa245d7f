"""The one-page PDF report of one study: its layout, built in memory.

The report holds the X-ray (with the opacity segmenter's outline, when it ran)
and the Grad-CAM overlay (with the lung outline) side by side, the class
probabilities as bars, the sentence that says why the rule decided as it did,
the decision's label and triage message (for an unusual chest X-ray, with the
caution saying why), the opacities' extent per lung and their 0-8 score, the
share of the map's evidence inside the lung fields with what it means, the
operating point, the model's identity (name, version, SHA-256 prefix), the date
and time and the research-tool disclaimer. A film refused as not a chest X-ray
was never classified: its report shows the X-ray and the refusal with its
reason, and no probabilities, map, label or opacity figures. It names the file
but never the patient: of the DICOM header only the safe fields the pipeline
keeps (modality, body part, view...) are shown, and keys that look like
identifiers are dropped even if they ever got there.

Scoring a file and the ``report`` command are in :mod:`covid.screening.report`.

Why fpdf2: it is pure Python (no system libraries such as Cairo, Pango or a
headless browser, unlike WeasyPrint or wkhtmltopdf), actively maintained, embeds
images straight from memory (PIL images, no temporary files), and supports
Unicode TrueType fonts, so any file name renders. The font is the DejaVu Sans
that matplotlib (already a dependency) ships; the core Helvetica font, limited
to Latin-1, is the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from covid import DISCLAIMER
from covid.explain.localisation import (
    EVIDENCE_MEANING,
    OPACITY_COLOUR,
    OPACITY_RGB,
    draw_outline,
    evidence_caution,
    evidence_sentence,
)
from covid.model.classes import NORMAL
from covid.model.decision import FLAG_NONE, decide, finding_name, same_point, why_sentence
from covid.model.metadata import ModelMetadata
from covid.screening.pipeline import StudyResult, percentages

TITLE = "Chest X-ray screening report"
SHA_PREFIX_CHARS = 12
"""Hex characters of the model's SHA-256 printed in the report."""
OPACITY_MEANING = (
    "From the opacity segmenter, a separate model that outlines opacities inside the lung "
    "fields, not the classifier's evidence. Each lung scores 0-4 for none, under 25%, 25-50%, "
    "50-75% or over 75% covered (the modified RALE score, Wong et al. 2020)."
)
"""What the opacity figures are, printed below them."""

_FONT = "DejaVu"
_PAGE_W, _MARGIN = 210.0, 15.0
_CONTENT_W = _PAGE_W - 2 * _MARGIN
_IMAGE_GAP, _IMAGE_H, _CAPTION_H = 6.0, 70.0, 3.8
_BAR_H, _BAR_PAD, _PERCENT_W = 5.0, 3.0, 18.0
"""Bar height, the gap either side of a bar, and the room of its percentage (mm)."""
_BAR_FONT = 10.0
_FINDING_RGB, _NORMAL_RGB = (200, 40, 40), (40, 100, 190)
_PHI_KEY = re.compile(
    r"patient|name|birth|accession|institution|physician|operator|address|referring|uid|"
    r"(^|[^a-z])id($|[^a-z])|date|time",
    re.IGNORECASE,
)
"""Info keys never printed, whatever the pipeline passes on (defence in depth)."""


class ReportError(ValueError):
    """A study that cannot be reported (it failed, or its inputs disagree)."""


# --------------------------------------------------------------------------- text


def _font_files() -> tuple[Path, Path] | None:
    """DejaVu Sans regular and bold as shipped with matplotlib, or None."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
    return (regular, bold) if regular.is_file() and bold.is_file() else None


class _Doc:
    """An A4 page plus the font in use; text is made printable by :meth:`text`."""

    def __init__(self, when: datetime) -> None:
        from fpdf import FPDF  # deferred: the page imports this module before any report

        self.pdf = FPDF(orientation="P", unit="mm", format="A4")
        self.pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.pdf.set_auto_page_break(True, margin=_MARGIN)
        self.pdf.set_creation_date(when)
        self.pdf.set_title(TITLE)
        self.pdf.set_subject(DISCLAIMER)
        fonts = _font_files()
        self.unicode = fonts is not None
        self.family = _FONT if self.unicode else "Helvetica"
        if fonts is not None:
            self.pdf.add_font(_FONT, "", str(fonts[0]))
            self.pdf.add_font(_FONT, "B", str(fonts[1]))
        self.pdf.add_page()

    def text(self, value: str) -> str:
        """The text as the current font can render it (Latin-1 for core fonts)."""
        if self.unicode:
            return value
        value = value.replace("≥", ">=").replace("…", "...").replace("·", "-")
        return value.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False) -> None:
        """Selects the report font."""
        self.pdf.set_font(self.family, "B" if bold else "", size)

    def width(self, value: str, size: float, bold: bool = False) -> float:
        """The printed width of a text in the report font (mm)."""
        self.font(size, bold)
        return self.pdf.get_string_width(self.text(value))

    def line(self, value: str, size: float = 10, bold: bool = False, height: float = 5.5) -> None:
        """Writes a wrapped paragraph across the content width."""
        from fpdf.enums import XPos, YPos

        self.font(size, bold)
        self.pdf.multi_cell(
            _CONTENT_W, height, self.text(value), align="L",
            new_x=XPos.LMARGIN, new_y=YPos.NEXT,
        )

    def heading(self, value: str) -> None:
        """Writes a section heading with a little space above."""
        self.pdf.ln(1.5)
        self.line(value, size=12, bold=True, height=6.0)


# --------------------------------------------------------------------------- checks


def _check_inputs(result: StudyResult, overlay: np.ndarray | None, threshold: float) -> None:
    """Refuses failed studies, malformed or missing overlays and bad thresholds."""
    if result.error is not None:
        raise ReportError(f"cannot report on a study that failed: {result.error}")
    if result.probs is None or result.pixels is None or result.decision is None:
        raise ReportError(f"{result.name}: the study has not been scored.")
    if not result.refused:  # a refused film was never classified: it has no map
        _check_overlay(overlay)
    if not 0.0 <= threshold <= 1.0:
        raise ReportError(f"the threshold must be in [0, 1], got {threshold}")


def _check_overlay(overlay: np.ndarray | None) -> None:
    """Refuses a missing overlay, or one that is not (H, W, 3) uint8."""
    if overlay is None:
        raise ReportError("the report of a classified study needs its Grad-CAM overlay")
    overlay = np.asarray(overlay)
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ReportError(
            f"expected a (H, W, 3) uint8 overlay, got {overlay.shape} {overlay.dtype}"
        )


def _check_label(result: StudyResult, threshold: float) -> None:
    """Refuses a threshold that would not have produced the result's label."""
    decided = decide(result.probs, result.class_names, threshold, result.flag or FLAG_NONE)
    if decided.label != result.label:
        raise ReportError(
            f"{result.name}: the label {result.label!r} was not produced at the threshold "
            f"{threshold:.3f} ({finding_name(result.class_names)} = {result.p_finding:.3f})."
        )


# --------------------------------------------------------------------------- sentences


def safe_info(info: dict[str, str]) -> list[tuple[str, str]]:
    """The info fields fit to print: identifier-like keys dropped, values shortened.

    Args:
        info: The study's info fields (``StudyResult.info``).

    Returns:
        (key, value) pairs, in the input order.
    """
    return [(k, str(v)[:64]) for k, v in info.items() if not _PHI_KEY.search(str(k))]


def operating_point_text(metadata: ModelMetadata, threshold: float) -> str:
    """Describes the operating point and whether it is the shipped one.

    Args:
        metadata: The model's metadata (its ``threshold`` is the shipped one).
        threshold: The threshold used on the probability of any finding.

    Returns:
        A sentence such as "P(any finding) ≥ 0.500 admits (the shipped operating point)."
    """
    rule = f"{finding_name(metadata.class_names)} ≥ {threshold:.3f} admits"
    if same_point(threshold, metadata.threshold):
        return f"{rule} (the shipped operating point)."
    return f"{rule} (a session choice; the shipped operating point is {metadata.threshold:.3f})."


# --------------------------------------------------------------------------- content


def _study_lines(doc: _Doc, result: StudyResult, when: datetime) -> None:
    """File name, safe DICOM fields and date."""
    doc.line(f"File: {result.name}")
    fields = safe_info(result.info)
    if fields:
        doc.line(" · ".join(f"{k}: {v}" for k, v in fields))
    doc.line(f"Report date: {when.strftime('%Y-%m-%d %H:%M %Z').strip()}")


def _pictures(result: StudyResult, overlay: np.ndarray | None) -> list[tuple[np.ndarray, str]]:
    """The pictures side by side, each with its caption.

    The X-ray carries the opacity outline when the opacity segmenter ran (never
    for a refused film); the Grad-CAM overlay stays the classifier's map.
    """
    xray, caption = result.pixels, "X-ray"
    if result.opacity is not None and not result.refused:
        rgb = np.repeat(np.asarray(result.pixels, np.uint8)[:, :, np.newaxis], 3, axis=2)
        xray = draw_outline(rgb, result.opacity.mask, OPACITY_RGB)
        caption = f"X-ray; in {OPACITY_COLOUR}, the opacity segmentation (not the classifier's)"
    pictures = [(xray, caption)]
    if overlay is not None:
        pictures.append((overlay, "Grad-CAM overlay (evidence for the label)"
                         + ("; lung outline in white" if result.lungs is not None else "")))
    return pictures


def _images(doc: _Doc, pictures: list[tuple[np.ndarray, str]]) -> None:
    """The pictures side by side, each fitted in its box, with captions below."""
    pdf = doc.pdf
    width = (_CONTENT_W - _IMAGE_GAP) / 2
    if pdf.will_page_break(_IMAGE_H + 3 * _CAPTION_H):
        pdf.add_page()
    top, bottom = pdf.get_y() + 1, pdf.get_y()
    doc.font(8)
    for i, (picture, caption) in enumerate(pictures):
        x = _MARGIN + i * (width + _IMAGE_GAP)
        image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8))
        pdf.image(image, x=x, y=top, w=width, h=_IMAGE_H, keep_aspect_ratio=True)
        pdf.set_xy(x, top + _IMAGE_H + 1)
        pdf.multi_cell(width, _CAPTION_H, doc.text(caption), align="C")
        bottom = max(bottom, pdf.get_y())
    pdf.set_xy(_MARGIN, bottom + 1)


def _bars(doc: _Doc, result: StudyResult, class_names: Sequence[str]) -> None:
    """One horizontal bar per class: name, filled share and percentage.

    The names' column is as wide as the model's longest class name, so no name
    is cut, whatever the classes.
    """
    pdf = doc.pdf
    label_w = max(doc.width(name, _BAR_FONT, bold=True) for name in class_names) + _BAR_PAD
    bar_w = _CONTENT_W - label_w - _BAR_PAD - _PERCENT_W
    for name, pct in zip(class_names, percentages(result.probs), strict=True):
        y = pdf.get_y() + 1
        doc.font(_BAR_FONT, bold=True)
        pdf.set_xy(_MARGIN, y)
        pdf.cell(label_w, _BAR_H, doc.text(name))
        left = _MARGIN + label_w
        pdf.set_draw_color(120, 120, 120)
        pdf.set_fill_color(235, 235, 235)
        pdf.rect(left, y, bar_w, _BAR_H, style="DF")
        pdf.set_fill_color(*(_NORMAL_RGB if name == NORMAL else _FINDING_RGB))
        if pct > 0:
            pdf.rect(left, y, bar_w * pct / 100.0, _BAR_H, style="F")
        doc.font(_BAR_FONT)
        pdf.set_xy(left + bar_w + _BAR_PAD, y)
        pdf.cell(_PERCENT_W, _BAR_H, f"{pct:.1f} %")
        pdf.set_xy(_MARGIN, y + _BAR_H + 1)


def _verdict(doc: _Doc, result: StudyResult) -> None:
    """What the decision says: the refusal with its reason, or the label, caution and advice."""
    decision, note = result.decision, result.flag_note
    if decision.refused:
        doc.line(decision.triage, size=11, bold=True)
        if note:
            doc.line(note)
        return
    doc.line(f"Result at the operating point: {decision.label}", size=11, bold=True)
    if note:  # an unusual chest X-ray: why a radiologist must read it
        doc.line(note, bold=True)
    doc.line(decision.triage)


def opacity_figures(result: StudyResult) -> str | None:
    """E.g. "Right lung 35% · left lung 10% · score 3/8"; None when not segmented or refused."""
    if result.opacity is None or result.refused:
        return None
    summary = result.opacity.severity.summary()
    return summary[:1].upper() + summary[1:]


def _opacities(doc: _Doc, result: StudyResult) -> None:
    """The opacities' extent per lung and their score, and what they are."""
    figures = opacity_figures(result)
    if figures is None:
        doc.line("Not measured: the opacity segmenter did not run, or found no lung fields.")
        return
    doc.line(figures, bold=True)
    doc.line(OPACITY_MEANING, size=8, height=3.8)


def _lung_evidence(doc: _Doc, share: float | None) -> None:
    """The share of the map's evidence inside the lungs, what it means, and the caution."""
    if share is None:
        doc.line("Not measured: no lung segmenter was available for this report.")
        return
    doc.line(f"{evidence_sentence(share)}.", bold=True)
    doc.line(EVIDENCE_MEANING, size=8, height=3.8)
    caution = evidence_caution(share)
    if caution:
        doc.line(f"Caution: {caution}", bold=True)


def _model_lines(doc: _Doc, metadata: ModelMetadata) -> None:
    """The model's name, version and SHA-256 prefix."""
    sha = metadata.sha256[:SHA_PREFIX_CHARS] or "(unknown)"
    doc.line(f"Model: {metadata.name}, version {metadata.version}, SHA-256 {sha}", size=9,
             height=4.5)


def build_report(
    result: StudyResult,
    overlay: np.ndarray | None,
    metadata: ModelMetadata,
    threshold: float,
    when: datetime | None = None,
    lung_evidence: float | None = None,
) -> bytes:
    """Builds the one-study PDF report in memory.

    Args:
        result: A scored study (from :func:`covid.screening.pipeline.analyse`); its
            ``pixels`` (H, W) uint8 are shown as the X-ray, with the outline of
            ``result.opacity`` (H, W) bool when the opacity segmenter ran.
        overlay: (h, w, 3) uint8 Grad-CAM overlay of the same film, with the lung
            outline drawn when ``result.lungs`` is known; None (or ignored) for
            a film refused as not a chest X-ray.
        metadata: The model's metadata.
        threshold: The operating point on P(any finding) that produced
            ``result.label``; compared with ``metadata.threshold`` to say whether
            it is the shipped one or a session choice.
        when: The report's date and time (None: now, local time zone).
        lung_evidence: The share of the overlaid map's energy inside the lungs,
            in [0, 1], or None when the lungs were not segmented.

    Returns:
        The PDF file's bytes. Nothing is written to disk.

    Raises:
        ReportError: The study failed or was not scored, the overlay is not
            (h, w, 3) uint8, or the threshold is outside [0, 1] or disagrees
            with the result's label.
    """
    _check_inputs(result, overlay, threshold)
    _check_label(result, threshold)
    when = (when or datetime.now()).astimezone()
    doc = _Doc(when)
    doc.line(TITLE, size=18, bold=True, height=9)
    doc.line(DISCLAIMER, size=10, bold=True)
    doc.pdf.ln(1)
    _study_lines(doc, result, when)
    doc.pdf.ln(1)
    _images(doc, _pictures(result, None if result.refused else np.asarray(overlay)))
    if result.refused:  # never classified: no bars, reason, opacities or evidence
        doc.heading("Triage")
        _verdict(doc, result)
    else:
        doc.heading("Class probabilities (calibrated) and triage")
        _bars(doc, result, metadata.class_names)
        doc.line(why_sentence(result.decision, metadata.class_names, threshold))
        _verdict(doc, result)
        doc.heading("Opacities (a separate segmentation)")
        _opacities(doc, result)
        doc.heading("Evidence inside the lungs")
        _lung_evidence(doc, lung_evidence)
    doc.pdf.ln(2)
    doc.line(operating_point_text(metadata, threshold), size=9, height=4.5)
    _model_lines(doc, metadata)
    doc.line(DISCLAIMER, size=9, bold=True, height=4.5)
    return bytes(doc.pdf.output())
