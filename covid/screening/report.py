"""One study's PDF report from a file, and the ``python -m covid report`` command.

The file is read (refusing missing, unreadable or huge ones), scored, explained
and graded by the same pipeline as the page and ``predict``, and laid out by
:func:`covid.screening.report_layout.build_report`. The map explains the label at the
operating point; it is placed on the film, the lung outline is drawn over it and
its share inside the lungs is reported. When the opacity segmenter is there,
the X-ray carries its outline and the report its figures. A bad file gives a
message naming it and the reason, and exit status 1, without a traceback. The
model paths default to the shipped models or their variables (:mod:`covid.settings`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covid.explain.localisation import draw_outline
from covid.explain.overlay import DEFAULT_OPACITY
from covid.flags import add_model_flags, add_out
from covid.inputs.decode import ImageDecodeError
from covid.model.classes import index_of
from covid.model.metadata import ModelFileError
from covid.screening.engine import missing_model_message
from covid.screening.pipeline import StudyResult, analyse, film_map, lung_share
from covid.screening.report_layout import build_report
from covid.screening.scoring import read_file

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import OpacitySegmenter

OUTLINE_RGB = (255, 255, 255)
"""The lung outline's colour over the report's overlay."""


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
    content = read_file(path)  # the one reading path of every command
    if isinstance(content, str):
        raise ImageDecodeError(path.name, _reason(path.name, content))
    return content


def _reason(name: str, message: str) -> str:
    """A message about a file without the file's name in front (the error adds it)."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _raise_for_error(result: StudyResult) -> None:
    """Turns a failed result back into the decode error it came from."""
    if result.error is not None:
        raise ImageDecodeError(result.name, _reason(result.name, result.error))


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
    opacity_segmenter: OpacitySegmenter | None = None,
) -> bytes:
    """Scores, explains, grades and reports one image file (PNG, JPEG or DICOM).

    The map explains the class reported at the operating point; it is placed
    on the film (the classifier may have seen a lung crop), the lung outline is
    drawn over it and its share inside the lungs is reported. The opacity
    segmenter, when given, outlines the opacities of a chest film (never of a
    refused one) and grades their extent.

    Args:
        path: The image file.
        classifier: The loaded classifier.
        threshold: Operating point on P(any finding); None for the shipped one.
        method: ``"gradcam"`` or ``"gradcam++"``.
        colormap: A matplotlib colormap name for the overlay.
        opacity: Weight of the coloured map in the overlay, in [0, 1].
        ood: An out-of-distribution detector (see :func:`covid.screening.pipeline.analyse`),
            or None.
        when: The report's date and time (None: now).
        segmenter: The lung segmenter (required by lung-focused classifiers).
        opacity_segmenter: The opacity segmenter, or None (no outline, no figures).

    Returns:
        The PDF file's bytes.

    Raises:
        covid.inputs.decode.ImageDecodeError: The file cannot be read or decoded.
        ValueError: Bad method, colormap or opacity.
    """
    from covid.explain.overlay import overlay_heatmap

    path = Path(path)
    result = analyse([(path.name, read_study(path))], classifier, threshold=threshold, ood=ood,
                     segmenter=segmenter, opacity=opacity_segmenter)[0]
    _raise_for_error(result)
    meta = classifier.metadata
    used = meta.threshold if threshold is None else threshold
    if result.refused:
        return build_report(result, None, meta, used, when=when)
    cam = result.cam  # the Grad-CAM of the label at this threshold
    if method != "gradcam" or cam is None:
        target = index_of(meta.class_names, result.label)
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
    add_out(parser, "where to write the report", metavar="PDF", required=True)
    add_model_flags(parser)
    parser.add_argument("--threshold", type=_unit_interval, default=None,
                        help="operating point on P(any finding), 1 - P(Normal) "
                             "(default: the shipped one)")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--colormap", choices=colormap_names(), default="jet")
    parser.add_argument("--opacity", type=_unit_interval, default=DEFAULT_OPACITY,
                        help="the map's opacity at its peak (it follows the map)")


def _make_report(args: argparse.Namespace) -> bytes:
    """Checks the file, loads the models and the detector, and builds the report."""
    from covid.inputs.decode import decode_image
    from covid.screening.engine import load_models

    decode_image(read_study(args.file), args.file.name)  # fail fast, before loading the model
    models = load_models(args.model, args.lung_model, warm_up=False,
                         opacity_path=args.opacity_model)
    return report_for_file(
        args.file, models.classifier, threshold=args.threshold, method=args.method,
        colormap=args.colormap, opacity=args.opacity, ood=models.ood,
        segmenter=models.segmenter, opacity_segmenter=models.opacity,
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
        args.out.write_bytes(pdf)
    except OSError as err:
        print(f"error: cannot write {args.out} ({err.strerror}).", file=sys.stderr)
        return 1
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
