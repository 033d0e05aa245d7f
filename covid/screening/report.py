"""A one-page PDF report for one study, built in memory.

The report holds the X-ray and its Grad-CAM overlay (with the lung outline)
side by side, the class probabilities as bars, the share of the map's evidence
inside the lung fields with what it means, the decision's label and triage
message (for an unusual chest X-ray, with the caution saying why), the operating
point, the model's identity (name, version, SHA-256 prefix), the date and time
and the research-tool disclaimer. A film refused as not a chest X-ray was never
classified: its report shows the X-ray and the refusal with its reason, and no
probabilities, map or label. It names the file but never the patient: of the DICOM header only the
safe fields the pipeline keeps (modality, body part, view...) are shown, and
keys that look like identifiers are dropped even if they ever got there.

Why fpdf2: it is pure Python (no system libraries such as Cairo, Pango or a
headless browser, unlike WeasyPrint or wkhtmltopdf), actively maintained, embeds
images straight from memory (PIL images, no temporary files), and supports
Unicode TrueType fonts, so any file name renders. The font is the DejaVu Sans
that matplotlib (already a dependency) ships; the core Helvetica font, limited
to Latin-1, is the fallback.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from covid import DISCLAIMER
from covid.explain.localisation import (
    EVIDENCE_MEANING,
    draw_outline,
    evidence_caution,
    evidence_sentence,
)
from covid.explain.overlay import DEFAULT_OPACITY
from covid.inputs.decode import MAX_FILE_BYTES, ImageDecodeError
from covid.model.decision import FLAG_NONE, NORMAL, decide, finding_name
from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH
from covid.model.network import DEFAULT_MODEL_PATH, ModelFileError, ModelMetadata
from covid.screening.engine import missing_model_message
from covid.screening.pipeline import StudyResult, analyse, film_map, lung_share, percentages

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter

TITLE = "Chest X-ray screening report"
SHA_PREFIX_CHARS = 12
"""Hex characters of the model's SHA-256 printed in the report."""
OUTLINE_RGB = (255, 255, 255)
"""The lung outline's colour over the report's overlay."""

_FONT = "DejaVu"
_PAGE_W, _MARGIN = 210.0, 15.0
_CONTENT_W = _PAGE_W - 2 * _MARGIN
_IMAGE_GAP, _IMAGE_H = 6.0, 95.0
_BAR_LABEL_W, _BAR_W, _BAR_H = 32.0, 110.0, 6.0
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
        self.pdf.ln(2.5)
        self.line(value, size=12, bold=True, height=7)


# --------------------------------------------------------------------------- content


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


def safe_info(info: dict[str, str]) -> list[tuple[str, str]]:
    """The info fields fit to print: identifier-like keys dropped, values shortened.

    Args:
        info: The study's info fields (``StudyResult.info``).

    Returns:
        (key, value) pairs, in the input order.
    """
    return [(k, str(v)[:64]) for k, v in info.items() if not _PHI_KEY.search(str(k))]


def _study_lines(doc: _Doc, result: StudyResult, when: datetime) -> None:
    """File name, safe DICOM fields and date."""
    doc.line(f"File: {result.name}")
    fields = safe_info(result.info)
    if fields:
        doc.line(" · ".join(f"{k}: {v}" for k, v in fields))
    doc.line(f"Report date: {when.strftime('%Y-%m-%d %H:%M %Z').strip()}")


def _images(doc: _Doc, pixels: np.ndarray, overlay: np.ndarray | None, outlined: bool) -> None:
    """The X-ray and the overlay (if any) side by side, each fitted in its box, with captions."""
    pdf = doc.pdf
    width = (_CONTENT_W - _IMAGE_GAP) / 2
    if pdf.will_page_break(_IMAGE_H + 8):
        pdf.add_page()
    top = pdf.get_y() + 1
    pictures = [Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))]
    captions = ["X-ray"]
    if overlay is not None:
        pictures.append(Image.fromarray(np.ascontiguousarray(overlay, dtype=np.uint8)))
        captions.append("Grad-CAM overlay (evidence for the label)"
                        + (", lung outline in white" if outlined else ""))
    doc.font(9)
    for i, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        x = _MARGIN + i * (width + _IMAGE_GAP)
        pdf.image(picture, x=x, y=top, w=width, h=_IMAGE_H, keep_aspect_ratio=True)
        pdf.set_xy(x, top + _IMAGE_H + 1)
        pdf.cell(width, 5, doc.text(caption), align="C")
    pdf.set_xy(_MARGIN, top + _IMAGE_H + 7)


def _bars(doc: _Doc, result: StudyResult, metadata: ModelMetadata) -> None:
    """One horizontal bar per class: name, filled share and percentage."""
    pdf = doc.pdf
    shares = percentages(result.probs)
    for name, pct in zip(metadata.class_names, shares, strict=True):
        y = pdf.get_y() + 1
        doc.font(10, bold=True)
        pdf.set_xy(_MARGIN, y)
        pdf.cell(_BAR_LABEL_W, _BAR_H, doc.text(name))
        left = _MARGIN + _BAR_LABEL_W
        pdf.set_draw_color(120, 120, 120)
        pdf.set_fill_color(235, 235, 235)
        pdf.rect(left, y, _BAR_W, _BAR_H, style="DF")
        pdf.set_fill_color(*(_NORMAL_RGB if name == NORMAL else _FINDING_RGB))
        if pct > 0:
            pdf.rect(left, y, _BAR_W * pct / 100.0, _BAR_H, style="F")
        doc.font(10)
        pdf.set_xy(left + _BAR_W + 3, y)
        pdf.cell(25, _BAR_H, f"{pct:.1f} %")
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


def _lung_evidence(doc: _Doc, share: float | None) -> None:
    """The share of the map's evidence inside the lungs, what it means, and the caution."""
    if share is None:
        doc.line("Not measured: no lung segmenter was available for this report.")
        return
    doc.line(f"{evidence_sentence(share)}.", bold=True)
    doc.line(EVIDENCE_MEANING, size=9, height=4.5)
    caution = evidence_caution(share)
    if caution:
        doc.line(f"Caution: {caution}", bold=True)


def operating_point_text(metadata: ModelMetadata, threshold: float) -> str:
    """Describes the operating point and whether it is the shipped one.

    Args:
        metadata: The model's metadata (its ``threshold`` is the shipped one).
        threshold: The threshold used on the probability of any finding.

    Returns:
        A sentence such as "P(any finding) ≥ 0.500 admits (the shipped operating point)."
    """
    rule = f"{finding_name(metadata.class_names)} ≥ {threshold:.3f} admits"
    if math.isclose(threshold, metadata.threshold, rel_tol=0.0, abs_tol=1e-9):
        return f"{rule} (the shipped operating point)."
    return f"{rule} (a session choice; the shipped operating point is {metadata.threshold:.3f})."


def _model_lines(doc: _Doc, metadata: ModelMetadata) -> None:
    """The model's name, version and SHA-256 prefix."""
    sha = metadata.sha256[:SHA_PREFIX_CHARS] or "(unknown)"
    doc.line(f"Model: {metadata.name}, version {metadata.version}, SHA-256 {sha}")


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
            ``pixels`` (H, W) uint8 are shown as the X-ray.
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
    doc.pdf.ln(2)
    if result.refused:  # never classified: no map, bars or share of evidence
        _images(doc, result.pixels, None, False)
    else:
        _images(doc, result.pixels, np.asarray(overlay), result.lungs is not None)
        doc.heading("Class probabilities (calibrated)")
        _bars(doc, result, metadata)
        doc.heading("Evidence inside the lungs")
        _lung_evidence(doc, lung_evidence)
    doc.heading("Triage")
    _verdict(doc, result)
    doc.heading("Operating point and model")
    doc.line(operating_point_text(metadata, threshold))
    _model_lines(doc, metadata)
    doc.pdf.ln(3)
    doc.line(DISCLAIMER, size=9, bold=True)
    return bytes(doc.pdf.output())


# --------------------------------------------------------------------------- from a file


def read_study(path: str | Path) -> bytes:
    """Reads one study file's bytes, refusing missing, unreadable or huge files.

    Args:
        path: The file's path.

    Returns:
        Its content.

    Raises:
        covid.inputs.decode.ImageDecodeError: The file is missing, unreadable or too large.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageDecodeError(
                path.name, f"the file is larger than the {MAX_FILE_BYTES // 2**20} MB limit."
            )
        return path.read_bytes()
    except FileNotFoundError as err:
        raise ImageDecodeError(path.name, "no such file.") from err
    except OSError as err:
        raise ImageDecodeError(path.name, f"the file cannot be read ({err.strerror}).") from err


def _raise_for_error(result: StudyResult) -> None:
    """Turns a failed result back into the decode error it came from."""
    if result.error is None:
        return
    prefix = f"{result.name}: "
    reason = result.error[len(prefix) :] if result.error.startswith(prefix) else result.error
    raise ImageDecodeError(result.name, reason)


def report_for_file(
    path: str | Path,
    classifier: Classifier,
    threshold: float | None = None,
    method: str = "gradcam",
    colormap: str = "jet",
    opacity: float = DEFAULT_OPACITY,
    ood: Any | None = None,
    when: datetime | None = None,
    segmenter: LungSegmenter | None = None,
) -> bytes:
    """Scores, explains and reports one image file (PNG, JPEG or DICOM).

    The map explains the class reported at the operating point; it is placed
    on the film (the classifier may have seen a lung crop), the lung outline is
    drawn over it and its share inside the lungs is reported.

    Args:
        path: The image file.
        classifier: The loaded classifier.
        threshold: Operating point on P(positive class); None for the shipped one.
        method: ``"gradcam"`` or ``"gradcam++"``.
        colormap: A matplotlib colormap name for the overlay.
        opacity: Weight of the coloured map in the overlay, in [0, 1].
        ood: An out-of-distribution detector (see :func:`covid.screening.pipeline.analyse`),
            or None.
        when: The report's date and time (None: now).
        segmenter: The lung segmenter (required by lung-focused classifiers).

    Returns:
        The PDF file's bytes.

    Raises:
        covid.inputs.decode.ImageDecodeError: The file cannot be read or decoded.
        ValueError: Bad method, colormap or opacity.
    """
    from covid.explain.overlay import overlay_heatmap

    path = Path(path)
    result = analyse([(path.name, read_study(path))], classifier, threshold=threshold, ood=ood,
                     segmenter=segmenter)[0]
    _raise_for_error(result)
    meta = classifier.metadata
    used = meta.threshold if threshold is None else threshold
    if result.refused:
        return build_report(result, None, meta, used, when=when)
    cam = result.cam  # the Grad-CAM of the label at this threshold
    if method != "gradcam" or cam is None:
        target = meta.class_names.index(result.label)
        cam = film_map(result, classifier.explain(
            result.model_input.astype(np.float32), target=target, method=method))
    overlay = overlay_heatmap(result.pixels, cam, colormap=colormap, opacity=opacity)
    if result.lungs is not None:
        overlay = draw_outline(overlay, result.lungs, OUTLINE_RGB)
    return build_report(result, overlay, meta, used, when=when,
                        lung_evidence=lung_share(result, cam))


# --------------------------------------------------------------------------- CLI


def _unit_interval(text: str) -> float:
    """The ``--threshold`` and ``--opacity`` type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``report`` sub-command's arguments."""
    from covid.explain.gradcam import METHODS
    from covid.explain.overlay import colormap_names

    parser.add_argument("file", type=Path, metavar="FILE", help="a PNG, JPEG or DICOM image")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="PDF",
                        help="where to write the report")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--lung-model", type=Path, default=DEFAULT_LUNG_MODEL_PATH,
                        help="the lung segmenter (default: the shipped one, when present)")
    parser.add_argument("--threshold", type=_unit_interval, default=None,
                        help="operating point on P(COVID) (default: the shipped one)")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--colormap", choices=colormap_names(), default="jet")
    parser.add_argument("--opacity", type=_unit_interval, default=DEFAULT_OPACITY,
                        help="the map's opacity at its peak (it follows the map)")


def _make_report(args: argparse.Namespace) -> bytes:
    """Checks the file, loads the models and the detector, and builds the report."""
    from covid.inputs.decode import decode_image
    from covid.screening.engine import load_models

    decode_image(read_study(args.file), args.file.name)  # fail fast, before loading the model
    models = load_models(args.model, args.lung_model, warm_up=False)
    return report_for_file(
        args.file, models.classifier, threshold=args.threshold, method=args.method,
        colormap=args.colormap, opacity=args.opacity, ood=models.ood,
        segmenter=models.segmenter,
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``report``; returns the exit status (1 with a message on stderr on failure)."""
    try:
        pdf = _make_report(args)
    except ImageDecodeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ModelFileError as err:
        print(missing_model_message(err), file=sys.stderr)
        return 1
    try:
        args.output.write_bytes(pdf)
    except OSError as err:
        print(f"error: cannot write {args.output} ({err.strerror}).", file=sys.stderr)
        return 1
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
