"""The results sent back into a PACS study: a Structured Report and a Secondary Capture.

For every scored film the tool stores, in the film's own study:

- a Comprehensive SR holding a TID 1500 Measurement Report: the finding at the
  operating point, the decision's flag (``none``, ``unusual``, ``not_chest``)
  and advice (``admit``, ``home``) and its triage text, the calibrated
  probability of every class, the operating point, the share of the map's
  evidence inside the lungs, the model's name, version and SHA-256 (TID 4019
  Algorithm Identification) and "research use only, not for diagnosis" (a
  comment, the series description and Content Qualification RESEARCH). When the
  opacity segmenter ran, the share of each lung and of both lungs covered by
  opacity (UCUM ``%``, the lung and its laterality as the finding site) and the
  modified RALE score (UCUM ``{score}``, 0-8) are numeric measurements too, by
  the method "Opacity segmentation" and, when given, the segmenter's own
  algorithm identification: a separate model, not the classifier.
  Machine-readable results are what the AI Results profile asks for.
- a Secondary Capture of the map over the film (and the opacity segmenter's
  outline, in the page's and the PDF's colour), drawn by the same code as the page
  and the PDF, with "RESEARCH USE ONLY", the same finding, advice and flag (and what
  the outline is) burnt into the pixels, so that every viewer shows them.

What is said comes from the film's :class:`~covid.model.decision.Decision`
alone. A film refused as not a chest X-ray has nothing to send
(:func:`nothing_to_send`); its SR, were one built, would code no finding.

Anonymised films often lack Type 2 attributes (birth date, sex, accession
number...) or hold invalid ones; the objects are built from a copy of the
film's header in which each such attribute is present and empty, as the
standard allows (:func:`evidence_header`). Patient names never pass through
highdicom, which would print a name it finds odd in a warning: they are copied
onto the finished objects instead.

An SR and an image cannot share a series (Modality is a series attribute), so
each gets a series of its own. Every UID is derived from the source instance, the
model's SHA-256, the explained class and the method: sending again builds the
same UIDs, and :func:`send_results` stores nothing that is already there. The
series descriptions begin with :data:`covid.inputs.pacs.RESULT_SERIES_PREFIX`,
so the search never offers these objects as films.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from covid.explain.localisation import OPACITY_COLOUR, OPACITY_RGB, draw_outline
from covid.inputs.pacs import RESULT_SERIES_PREFIX, PacsClient, PacsError
from covid.model.classes import COVID, NORMAL, OTHER_PNEUMONIA
from covid.model.decision import (
    ADMIT_CODE,
    FLAG_NONE,
    FLAG_NOT_CHEST,
    FLAG_UNUSUAL,
    HOME_CODE,
    Decision,
)
from covid.screening.studies import DisplaySettings, render_map

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from covid.model.metadata import ModelMetadata
    from covid.model.opacity import OpacityModelMetadata, OpacitySegmenter
    from covid.screening.pipeline import StudyResult

MANUFACTURER = "covid-xray-dashboard"
RESEARCH_ONLY = "Research use only, not for diagnosis."
BURNT_IN = "RESEARCH USE ONLY - not for diagnosis"
OPACITY_LEGEND = f"{OPACITY_COLOUR.capitalize()} outline: opacities (separate segmenter)"
"""The burnt-in line under the decision when the opacity outline is drawn."""
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
"""High series numbers, after the study's own."""

_SCHEME = "99COVIDXR"
"""A private coding scheme (99 prefix) for the concepts no standard one names."""
_FINDINGS = {
    COVID: ("840539006", "SCT",
            "Disease caused by severe acute respiratory syndrome coronavirus 2"),
    OTHER_PNEUMONIA: ("233604007", "SCT", "Pneumonia"),
    NORMAL: ("17621005", "SCT", "Normal"),
}
_PLAIN_CHEST_XRAY = ("399208008", "SCT", "Plain chest X-ray")
_NO_UNITS = ("1", "UCUM", "no units")
_PERCENT = ("%", "UCUM", "percent")
_SCORE = ("{score}", "UCUM", "score")
OPACITY_EXTENT = "Opacity extent"
"""The measurement of the share of lung field covered by opacity (percent)."""
RALE_SCORE = "Modified RALE score"
"""The measurement of the opacities' grade: both lungs' 0-4 scores added, 0-8."""
OPACITY_METHOD = "Opacity segmentation"
"""The method of both: the opacity segmenter, a separate model from the classifier."""
_FLAG_MEANINGS = {FLAG_NONE: "Like the films the model was trained on",
                  FLAG_UNUSUAL: "Unusual chest X-ray", FLAG_NOT_CHEST: "Not a chest X-ray"}
"""The flag's coded values are the flags as every output writes them, in the private scheme."""
_ADVICE_MEANINGS = {ADMIT_CODE: "Admit for further diagnosis",
                    HOME_CODE: "Go home and wait for the PCR result"}

_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
"""Type 1: the results reference the film by these; without them nothing can be built."""
_TYPE_2 = ("PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
           "StudyDate", "StudyTime")
"""Type 2 attributes highdicom copies from the film: present, but may be empty."""
_NAMES = ("PatientName", "ReferringPhysicianName")
"""Type 2 names: empty in the evidence copy, copied onto the finished objects."""
_SEXES = frozenset({"M", "F", "O"})


class ResultsError(ValueError):
    """A study that cannot be turned into results (it failed or was not scored)."""


@dataclass(frozen=True)
class ResultUids:
    """The derived UIDs of one film's results.

    Attributes:
        sr_series: The SR's Series Instance UID.
        sc_series: The Secondary Capture's Series Instance UID.
        sr: The SR's SOP Instance UID.
        sc: The Secondary Capture's SOP Instance UID.
    """

    sr_series: str
    sc_series: str
    sr: str
    sc: str


@dataclass(frozen=True)
class ResultObjects:
    """One film's results, ready to store.

    Attributes:
        study_uid: The study they go into (the film's).
        uids: Their UIDs.
        sr: The Structured Report data set.
        sc: The Secondary Capture data set.
    """

    study_uid: str
    uids: ResultUids
    sr: Any
    sc: Any


def result_uids(source_uid: str, model_sha256: str, explained_class: str,
                method: str, opacity_sha256: str = "") -> ResultUids:
    """UIDs that depend only on what the results are of and how they were made.

    Args:
        source_uid: The film's SOP Instance UID.
        model_sha256: The classifier file's SHA-256.
        explained_class: The class the map explains.
        method: The explanation method (``gradcam``...).
        opacity_sha256: The opacity segmenter file's SHA-256, when it graded the
            film ("": not known, and not part of the UIDs).

    Returns:
        The same UIDs for the same inputs, every time.
    """
    from pydicom.uid import generate_uid

    base = [source_uid, model_sha256, explained_class, method]
    if opacity_sha256:  # another segmenter's figures are other results
        base.append(opacity_sha256)
    return ResultUids(*(generate_uid(entropy_srcs=[*base, part])
                        for part in ("sr-series", "sc-series", "sr", "sc")))


# ------------------------------------------------------------------ the film's header


def _usable(keyword: str, source: Dataset) -> bool:
    """Whether the film holds one non-empty value for ``keyword`` that its VR allows."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    if keyword not in source:
        return False
    element = source.data_element(keyword)
    if element.is_empty or element.VM != 1:
        return False
    try:
        validate_value(element.VR, element.value, config.RAISE)
    except (ValueError, TypeError):
        return False
    return keyword != "PatientSex" or str(element.value) in _SEXES


def evidence_header(source: Dataset) -> Dataset:
    """A copy of the film's header that the result objects can be built from.

    Each Type 2 attribute highdicom copies (birth date, sex, accession number,
    study ID, date and time, patient ID) that the film lacks, leaves empty or
    holds in a form its VR does not allow (a sex ``U``, a date that is no date)
    is present and empty in the copy, as the standard allows; the names are
    empty too (see :func:`_copy_names`). The film's own header is untouched.

    Args:
        source: The film's header.

    Returns:
        The copy.

    Raises:
        ResultsError: A UID the results must reference is missing.
    """
    missing = [k for k in _UIDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise ResultsError(f"the film's header lacks {', '.join(missing)}, which the results "
                           "must reference.")
    header = copy.deepcopy(source)
    for keyword in (*_TYPE_2, *_NAMES):
        if keyword in _NAMES or not _usable(keyword, header):
            setattr(header, keyword, "")
    return header


def _copy_names(target: Dataset, source: Dataset) -> None:
    """Copies the film's names, as they are, onto a finished result object."""
    for keyword in _NAMES:
        if keyword in source:
            target.add(copy.deepcopy(source.data_element(keyword)))


def _without_names(text: str, source: Dataset) -> str:
    """A message with every part of the patient's name blotted out."""
    name = str(source.get("PatientName", "") or "")
    for part in {p.strip() for p in name.replace("=", "^").split("^")}:
        if len(part) > 1:
            text = text.replace(part, "…")
    return text


# ------------------------------------------------------------------ the report


def _code(value: str, scheme: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value, scheme, meaning[:64])


def _local(meaning: str) -> Any:
    """A concept in the private scheme, its value derived from its meaning."""
    value = "".join(ch if ch.isalnum() else "-" for ch in meaning.upper())[:16]
    return _code(value, _SCHEME, meaning)


def finding_code(label: str) -> Any:
    """The coded finding for a class name (SNOMED CT where one fits)."""
    return _code(*_FINDINGS[label]) if label in _FINDINGS else _local(label)


def _measurements(result: StudyResult, meta: ModelMetadata, threshold: float) -> list[Any]:
    """Calibrated probabilities, the operating point and the lung-evidence share."""
    from highdicom.sr import Measurement

    unit = _code(*_NO_UNITS)
    items = [Measurement(name=_local(f"P({name})"), value=float(p), unit=unit)
             for name, p in zip(meta.class_names, result.probs, strict=True)]
    items.append(Measurement(name=_local("Operating point"), value=float(threshold), unit=unit))
    if result.lung_evidence is not None:
        items.append(Measurement(name=_local("Lung evidence"), value=float(result.lung_evidence),
                                 unit=unit))
    return items


def _opacity_measurements(result: StudyResult,
                          opacity_meta: OpacityModelMetadata | None) -> list[Any]:
    """The opacities' extent per lung and in both (percent) and their 0-8 score.

    None for a film without an outline (refused, no lungs, or no segmenter); a
    lung the lung segmenter did not find has no extent of its own.
    """
    from highdicom.sr import AlgorithmIdentification, FindingSite, Measurement
    from pydicom.sr.codedict import codes

    if result.opacity is None or result.refused:
        return []
    severity = result.opacity.severity
    algorithm = None if opacity_meta is None else AlgorithmIdentification(
        name=opacity_meta.name[:64], version=opacity_meta.version[:64],
        parameters=[f"SHA-256 {opacity_meta.sha256}"])

    def measured(name: str, value: float, unit: tuple[str, str, str], side: Any) -> Any:
        return Measurement(name=_local(name), value=value, unit=_code(*unit),
                           method=_local(OPACITY_METHOD), algorithm_id=algorithm,
                           finding_sites=[FindingSite(codes.SCT.Lung, laterality=side)])

    sides = ((codes.SCT.Right, severity.right), (codes.SCT.Left, severity.left),
             (codes.SCT.RightAndLeft, severity.extent))
    items = [measured(OPACITY_EXTENT, round(100.0 * share, 4), _PERCENT, side)
             for side, share in sides if share is not None]
    items.append(measured(RALE_SCORE, float(severity.score), _SCORE, codes.SCT.RightAndLeft))
    return items


def _decision_items(decision: Decision) -> list[Any]:
    """The flag and, for a film not refused, the advice, as TID 1501 qualitative evaluations."""
    from highdicom.sr import QualitativeEvaluation

    items = [QualitativeEvaluation(_local("Flag"), _code(decision.flag, _SCHEME,
                                                         _FLAG_MEANINGS[decision.flag]))]
    if decision.advice:
        items.append(QualitativeEvaluation(_local("Advice"), _code(
            decision.advice, _SCHEME, _ADVICE_MEANINGS[decision.advice])))
    return items


def _group(source: Dataset, result: StudyResult, meta: ModelMetadata, threshold: float,
           uids: ResultUids, method: str, opacity_meta: OpacityModelMetadata | None) -> Any:
    """The TID 1501 measurement group: finding, flag, advice, measurements, algorithm, image.

    A refused film (not a chest X-ray) codes no finding, no advice and no opacities.
    """
    from highdicom.sr import (
        AlgorithmIdentification,
        MeasurementsAndQualitativeEvaluations,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    decision = result.decision
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uids.sr, identifier="COVID screening"),
        algorithm_id=AlgorithmIdentification(
            name=meta.name[:64], version=meta.version[:64],
            parameters=[f"SHA-256 {meta.sha256}", f"method {method}",
                        f"explained class {decision.label}"]),
        # TID 1501's "Finding" row; none for a film that was never classified.
        finding_type=None if decision.refused else finding_code(decision.label),
        measurements=[*_measurements(result, meta, threshold),
                      *_opacity_measurements(result, opacity_meta)],
        qualitative_evaluations=_decision_items(decision),
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)])
    # TID 1501 has no free-text row; the triage text and the comment ride in the group.
    for name, text in ((_local("Triage"), decision.triage), (codes.DCM.Comment, RESEARCH_ONLY)):
        group[0].ContentSequence.append(TextContentItem(
            name=name, value=text, relationship_type="CONTAINS"))
    return group


def build_sr(source: Dataset, result: StudyResult, meta: ModelMetadata, threshold: float,
             uids: ResultUids, method: str = "gradcam",
             opacity_meta: OpacityModelMetadata | None = None) -> Any:
    """The film's results as a Comprehensive SR (TID 1500 Measurement Report).

    Args:
        source: The film's header, as :func:`evidence_header` gives it (patient and
            study are copied from it; the names are copied by :func:`build_results`).
        result: Its scored result.
        meta: The classifier's metadata.
        threshold: The operating point that gave ``result.label``.
        uids: The derived UIDs.
        method: The explanation method.
        opacity_meta: The opacity segmenter's metadata, which identifies the
            algorithm of the opacity measurements (None: they are still made
            when ``result.opacity`` holds them, without it).

    Returns:
        The ``highdicom.sr.ComprehensiveSR`` data set.
    """
    from highdicom import ContentQualificationValues
    from highdicom.sr import (
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["device", meta.sha256]),
            name=meta.name[:64], manufacturer_name=MANUFACTURER, model_name=meta.version[:64]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=_code(*_PLAIN_CHEST_XRAY),
        imaging_measurements=[_group(source, result, meta, threshold, uids, method,
                                     opacity_meta)])
    return ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER, sop_instance_uid=uids.sr, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True,
        series_description=f"{RESULT_SERIES_PREFIX} (SR) - research use only",
        content_qualification=ContentQualificationValues.RESEARCH,
        manufacturer_model_name=meta.name[:64], software_versions=meta.version[:64])


# ------------------------------------------------------------------ the picture


def decision_line(decision: Decision) -> str:
    """The finding, advice and flag in one short line, as the picture shows them."""
    return f"{decision.label or 'no finding'} | {decision.advice or 'no advice'} | " \
           f"flag {decision.flag}"


def burn_in(rgb: np.ndarray, lines: Sequence[str] = (BURNT_IN,)) -> np.ndarray:
    """The image with a black banner across the top holding ``lines`` in white.

    The text is made smaller, down to 8 px, until the longest line fits the width.

    Args:
        rgb: (H, W, 3) uint8 image.
        lines: What to write, one line each.

    Returns:
        A new (H, W, 3) uint8 image (the banner covers the top rows).
    """
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    size = max(12, image.width // 24)
    font = ImageFont.load_default(size=size)
    while size > 8 and max(draw.textlength(line, font=font) for line in lines) > (
            image.width - size):
        size -= 1
        font = ImageFont.load_default(size=size)
    step = int(size * 1.4)
    draw.rectangle((0, 0, image.width, step * len(lines) + size // 2), fill=(0, 0, 0))
    for n, line in enumerate(lines):
        draw.text((size // 2, size // 4 + n * step), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def overlay_picture(result: StudyResult) -> np.ndarray:
    """The map over the film, drawn as the page and the report draw it, marked research only.

    Returns:
        (H, W, 3) uint8: the label's map over the film with the lung outline and
        the opacities' (last, so that its colour is exact), when the segmenter
        outlined the film; "RESEARCH USE ONLY", :func:`decision_line` and then
        :data:`OPACITY_LEGEND` burnt in across the top.
    """
    picture = render_map(result.pixels, result.cam, DisplaySettings(outline=True), result.lungs)
    lines = [BURNT_IN, decision_line(result.decision)]
    if result.opacity is not None and not result.refused:
        picture = draw_outline(picture, result.opacity.mask, OPACITY_RGB)
        lines.append(OPACITY_LEGEND)
    return burn_in(picture, lines)


def build_sc(source: Dataset, result: StudyResult, meta: ModelMetadata, uids: ResultUids) -> Any:
    """The map overlay as a Secondary Capture image in the film's study.

    Args:
        source: The film's header, as :func:`evidence_header` gives it.
        result: Its scored result.
        meta: The classifier's metadata.
        uids: The derived UIDs.

    Returns:
        The ``highdicom.sc.SCImage`` data set.
    """
    from highdicom import ContentQualificationValues
    from highdicom.sc import SCImage

    orientation = tuple(source.get("PatientOrientation") or ()) or ("L", "F")
    return SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=overlay_picture(result),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc, instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        series_description=f"{RESULT_SERIES_PREFIX} (map) - research use only",
        content_qualification=ContentQualificationValues.RESEARCH,
        manufacturer_model_name=meta.name[:64], software_versions=meta.version[:64])


# ------------------------------------------------------------------ both, and sending


def source_header(data: bytes) -> Dataset:
    """The film's header from its DICOM bytes (pixels left unread)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def nothing_to_send(result: StudyResult) -> str | None:
    """Why a result has nothing to send to the PACS, or None when it has something.

    A failed or unscored film has no results; a film refused as not a chest X-ray
    is never sent (the decision gave it no label and no advice).
    """
    if result.error is not None or result.probs is None or result.decision is None:
        return f"there are no results to send ({result.error or 'the film was not scored'})"
    if result.decision.refused:
        return "it was refused as not a chest X-ray, so nothing is sent"
    return None


def build_results(source: Dataset, result: StudyResult, meta: ModelMetadata,
                  threshold: float, method: str = "gradcam",
                  opacity_meta: OpacityModelMetadata | None = None) -> ResultObjects:
    """Both result objects for one scored film.

    Args:
        source: The film's header as read (:func:`source_header`); missing or
            invalid Type 2 attributes are emptied in a copy (:func:`evidence_header`).
        result: Its scored result.
        meta: The classifier's metadata.
        threshold: The operating point that gave ``result.decision``.
        method: The explanation method of ``result.cam``.
        opacity_meta: The opacity segmenter's metadata, when it graded the film
            (see :func:`build_sr`).

    Returns:
        The SR and the Secondary Capture, with their UIDs.

    Raises:
        ResultsError: The film failed, was not scored or was refused, or its
            header cannot give results (the message names the film, and no part
            of the patient's name).
    """
    reason = nothing_to_send(result)
    if reason is None and result.cam is None:
        reason = "it has no map to send"
    if reason is not None:
        raise ResultsError(f"{result.name}: {reason}.")
    try:
        header = evidence_header(source)
        graded = "" if opacity_meta is None or result.opacity is None else opacity_meta.sha256
        uids = result_uids(str(header.SOPInstanceUID), meta.sha256, result.decision.label,
                           method, graded)
        sr = build_sr(header, result, meta, threshold, uids, method, opacity_meta)
        sc = build_sc(header, result, meta, uids)
    except ResultsError as err:
        raise ResultsError(f"{result.name}: {_without_names(str(err), source)}") from err
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        # highdicom refuses what it cannot encode; say so without a traceback.
        raise ResultsError(f"{result.name}: the results could not be built "
                           f"({type(err).__name__}: {_without_names(str(err), source)})."
                           ) from err
    for built in (sr, sc):
        _copy_names(built, source)
    return ResultObjects(str(header.StudyInstanceUID), uids, sr, sc)


def send_results(client: PacsClient, objects: ResultObjects) -> bool:
    """Stores a film's results unless the study holds them already.

    Returns:
        True when they were stored now, False when they were there already.

    Raises:
        covid.inputs.pacs.PacsError: The check or the storage failed, or the
            server does not hold them after accepting them.
    """
    missing = _missing(client, objects, (objects.sr, objects.sc))
    if not missing:
        return False
    client.store(missing, objects.study_uid)
    # A server may accept an upload and drop it (a filter, a full disk): check.
    if _missing(client, objects, missing):
        raise PacsError(f"storing results in study {objects.study_uid}: the PACS at "
                        f"{client.config.display_url} accepted them but does not hold them.")
    return True


def send_film(client: PacsClient, source: bytes, result: StudyResult, meta: ModelMetadata,
              threshold: float, method: str = "gradcam",
              opacity: OpacitySegmenter | None = None) -> bool:
    """:func:`build_results` from the film's DICOM bytes, then :func:`send_results`.

    The one way the command line and the page send: both name the opacity
    segmenter they scored with (or None), so that the SR identifies it and the
    UIDs tell its results from another segmenter's.

    Returns:
        True when the results were stored now, False when the study held them.

    Raises:
        ResultsError: See :func:`build_results`.
        covid.inputs.pacs.PacsError: See :func:`send_results`.
    """
    opacity_meta = None if opacity is None else opacity.metadata
    return send_results(client, build_results(source_header(source), result, meta, threshold,
                                              method, opacity_meta))


def _missing(client: PacsClient, objects: ResultObjects, datasets: Sequence[Any]) -> list[Any]:
    """The data sets the study does not hold yet."""
    return [ds for ds in datasets
            if not client.has_instance(objects.study_uid, str(ds.SOPInstanceUID))]
