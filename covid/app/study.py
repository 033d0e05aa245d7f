"""One study's view: the X-ray, its Grad-CAM, the probability bars, triage and PDF report.

Under the bars, the sentence that says why the rule admitted the film or sent it
home (:func:`covid.model.decision.why_sentence`, the PDF report's own).

With a lung segmenter, the lung outline can be drawn over the X-ray and the map,
and beside the bars the share of the shown map's evidence inside the lung
fields is given, with a caution when less than half of it lies there. With the
opacity segmenter, beside the bars go the share of each lung it outlines and the
score ("Right lung 35% · left lung 10% · score 3/8"), and its outline can be
drawn over the X-ray: a separate segmentation, never drawn over the Grad-CAM,
which stays the classifier's unaltered map. What is
shown is what the decision says: an unusual chest X-ray keeps its bars and map
with a caution and is always admitted; an image refused as not a chest X-ray
shows the refusal and its reason, and no scores or map.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from covid.app import state
from covid.app.pacs_ui import send_study_ui
from covid.explain.localisation import (
    OPACITY_COLOUR,
    OPACITY_RGB,
    draw_outline,
    evidence_caution,
    evidence_sentence,
)
from covid.model.decision import why_sentence
from covid.model.metadata import ModelMetadata
from covid.screening.pipeline import StudyResult, percentages
from covid.screening.studies import (
    CONTOUR_LEVELS,
    METHODS,
    DisplaySettings,
    Study,
    class_map,
    evidence_in_lungs,
    known_map,
    render_map,
    report_name,
    report_pdf,
    target_index,
    xray_image,
)

if TYPE_CHECKING:
    from covid.explain.inference import Classifier

LOG = logging.getLogger(__name__)


def probability_bars_ui(result: StudyResult, class_names: Sequence[str]) -> list[float]:
    """One bar per class with its percentage; the predicted label in bold.

    The percentages are rounded so that they sum to exactly 100.

    Args:
        result: A classified study (not a refused one).
        class_names: The model's classes, in output order.

    Returns:
        The percentages shown, in class order.
    """
    shown = percentages(result.probs, decimals=1)
    st.caption("Calibrated probabilities")
    for name, pct in zip(class_names, shown, strict=True):
        text = f"{name} {pct:.1f}%"
        if name == result.label:
            text = f"**{text}** · prediction"
        st.progress(min(max(pct / 100.0, 0.0), 1.0), text=text)
    return shown


def why_ui(result: StudyResult, meta: ModelMetadata, threshold: float) -> None:
    """Under the bars, why the rule decided as it did: the PDF report's sentence.

    E.g. "P(any finding) 25.6% is above the operating point 19.5%: admit, as Other
    pneumonia, the likelier finding.", then whose operating point it is.
    """
    which = "the shipped one" if state.is_shipped(meta, threshold) else "this session's choice"
    st.caption(f"{why_sentence(result.decision, meta.class_names, threshold)} "
               f"The operating point is {which}.")


def triage_ui(result: StudyResult) -> None:
    """The prediction, an unusual film's caution and the advice: red to admit, else green."""
    st.markdown(f"**Prediction: {result.label}**")
    if result.flag_note:  # an unusual chest X-ray: why a radiologist must read it
        st.warning(result.flag_note, icon=":material/report:")
    if result.decision.admit:
        st.error(result.triage, icon=":material/flag:")
    else:
        st.success(result.triage, icon=":material/check_circle:")


def info_ui(info: dict[str, str]) -> None:
    """The safe DICOM fields (modality, body part, view), if any."""
    if info:
        st.caption(" · ".join(f"{k}: {v}" for k, v in info.items()))


def _outlined(result: StudyResult, settings: DisplaySettings) -> bool:
    """Whether the lung outline is drawn for this study."""
    return settings.outline and result.lungs is not None


def xray_ui(result: StudyResult, settings: DisplaySettings, opacities: bool = False) -> None:
    """The X-ray, with the lung outline and the opacity segmenter's outline when switched on.

    Args:
        result: The study.
        settings: The display settings (``outline``: the lungs').
        opacities: Whether the opacity outline switch is on (drawn only where the
            opacity segmenter outlined this film).
    """
    outlined = _outlined(result, settings)
    image, caption, alt = xray_image(result, outlined), ["X-ray"], [f"X-ray {result.name}"]
    if outlined:
        caption.append("lung outline")
        alt.append("with the lung outline")
    if opacities and result.opacity is not None:
        rgb = image if image.ndim == 3 else np.repeat(image[:, :, np.newaxis], 3, axis=2)
        image = draw_outline(rgb, result.opacity.mask, OPACITY_RGB)
        caption.append(f"opacities in {OPACITY_COLOUR} (opacity segmenter, not the classifier's "
                       "evidence)")
        alt.append("with the opacity segmenter's outline")
    st.image(image, caption=" · ".join(caption), width="stretch", alt=" ".join(alt))


def map_ui(study: Study, cam: np.ndarray, settings: DisplaySettings, explained: str) -> None:
    """The Grad-CAM image with its caption (and the lung outline when switched on)."""
    method = next(k for k, v in METHODS.items() if v == settings.method)
    legend = ""
    if settings.view == "Contour lines":
        low, high = (f"{level:.0%}" for level in CONTOUR_LEVELS)
        legend = f" (gold {low}, red {high} of the peak)"
    outlined = _outlined(study.result, settings)
    st.image(
        render_map(study.result.pixels, cam, settings, study.result.lungs),
        caption=f"{method} · {settings.view.lower()}{legend} · explains {explained}"
        + (" · lung outline in white" if outlined else ""),
        width="stretch",
        alt=f"{method} {settings.view.lower()} for {study.result.name}"
        + (" with the lung outline" if outlined else ""),
    )


def lung_evidence_ui(
    result: StudyResult, cam: np.ndarray, settings: DisplaySettings, explained: str
) -> None:
    """The share of the shown map's evidence inside the lungs, and the caution below half.

    Nothing is shown when the lungs were not segmented (no segmenter installed).
    """
    share = evidence_in_lungs(result, cam)
    sentence = evidence_sentence(share)
    if sentence is None:
        return
    method = next(k for k, v in METHODS.items() if v == settings.method)
    st.markdown(f"**{sentence}**")
    st.caption(f"Share of the energy of the map shown ({method}, explains {explained}) that "
               "falls inside the segmented lung fields, measured on the unaltered map.")
    caution = evidence_caution(share)
    if caution:
        st.warning(caution, icon=":material/report:")


def opacity_ui(result: StudyResult) -> None:
    """The opacity segmenter's figures for the study, e.g. "Right lung 35% · ... · score 3/8".

    Nothing is shown without its outline (no opacity segmenter, no lungs, or a
    refused film).
    """
    if result.opacity is None:
        return
    summary = result.opacity.severity.summary()
    st.markdown(f"**Opacities:** {summary[:1].upper()}{summary[1:]}")
    st.caption("From the opacity segmenter, a separate network trained on radiologists' "
               "infection masks, not the classifier's evidence: the share of each lung field "
               "it outlines and the modified RALE score (each lung 0-4, total 0-8).")


def report_ui(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    maps: MutableMapping,
    threshold: float,
) -> None:
    """The study's PDF report, built in memory only when the button is clicked.

    The report shows the label and triage at the operating point in force and
    the map, drawn with the current method, display, colour map and opacity,
    of the evidence for the reported label.
    """
    cam = None  # a refused film has no label, so no map: its report gives the refusal
    if not study.result.refused:
        target = classifier.metadata.class_names.index(study.result.label)
        cam = known_map(study, target, settings.method, maps)  # read here, never written later
    st.download_button(
        "PDF report",
        data=functools.partial(report_pdf, study, classifier, settings, threshold, cam),
        file_name=report_name(study.result.name), mime="application/pdf",
        key=f"pdf:{study.key}", on_click="ignore", icon=":material/picture_as_pdf:",
        help="One page: the X-ray, the map of the evidence for the reported label (current "
        "display settings) with the lung outline, the share of that evidence inside the "
        "lungs, the probabilities, the triage at the operating point in force, the model's "
        "identity and the disclaimer. Built in memory, never stored.",
    )
    send_study_ui(study, classifier, maps, threshold)  # a study from the PACS only


def study_detail_ui(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    maps: MutableMapping,
    threshold: float,
) -> None:
    """One scored X-ray: image, Grad-CAM, probabilities, triage and its PDF, side by side.

    An image refused as not a chest X-ray was never classified: beside it, the
    refusal with its reason, and its PDF; no scores, map or advice.
    """
    result, meta = study.result, classifier.metadata
    if not result.refused:  # before anything is drawn: a failing map hides the whole panel
        target = target_index(result, settings.target, meta.class_names)
        cam = class_map(study, classifier, target, settings.method, maps)
        explained = meta.class_names[target]
    with st.container(border=True):
        st.subheader(result.name, anchor=False)
        image_col, map_col, score_col = st.columns([1, 1, 1.15], gap="medium")
        with image_col:
            xray_ui(result, settings, state.opacity_outline_on())
        if result.refused:
            with map_col:
                note = f"{result.flag_note}\n\n" if result.flag_note else ""
                st.warning(f"{note}{result.triage}", icon=":material/warning:")
            with score_col:
                info_ui(result.info)
                report_ui(study, classifier, settings, maps, threshold)
            return
        with map_col:
            map_ui(study, cam, settings, explained)
        with score_col:
            probability_bars_ui(result, meta.class_names)
            why_ui(result, meta, threshold)
            opacity_ui(result)
            lung_evidence_ui(result, cam, settings, explained)
            triage_ui(result)
            info_ui(result.info)
            report_ui(study, classifier, settings, maps, threshold)


def safe_detail_ui(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    maps: MutableMapping,
    threshold: float,
) -> None:
    """:func:`study_detail_ui`, with a failure shown as a message instead of a traceback."""
    try:
        study_detail_ui(study, classifier, settings, maps, threshold)
    except Exception:  # one failing panel must not take the page down
        LOG.exception("displaying %s failed", study.result.name)
        st.error(
            f"{study.result.name}: the result could not be displayed "
            "(the error was logged on the server).",
            icon=":material/error:",
        )
