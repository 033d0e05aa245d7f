"""The SR and the map sent back to the PACS, read back from a real Orthanc with highdicom."""

import io
from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes
from scipy import ndimage

from covid.explain.inference import Classifier
from covid.explain.localisation import OPACITY_RGB
from covid.inputs.pacs import InstanceRecord, PacsClient, PacsConfig, StudyQuery
from covid.model.classes import COVID, NORMAL, OTHER_PNEUMONIA
from covid.model.decision import FLAG_NOT_CHEST, FLAG_UNUSUAL, decide
from covid.model.lungs import LungSegmenter
from covid.model.opacity import OpacityModelMetadata, OpacitySegmentation, grade
from covid.screening import pacs_results
from covid.screening.pacs_results import (
    BURNT_IN,
    OPACITY_EXTENT,
    OPACITY_LEGEND,
    OPACITY_METHOD,
    RALE_SCORE,
    RESEARCH_ONLY,
    ResultsError,
    build_results,
    build_sr,
    burn_in,
    decision_line,
    evidence_header,
    finding_code,
    nothing_to_send,
    overlay_picture,
    result_uids,
    send_results,
    source_header,
)
from covid.screening.pipeline import StudyResult, analyse
from covid.screening.studies import DisplaySettings, render_map
from tests.pacs_server import (
    LEFT_OUT,
    PASSWORD,
    PATIENT_NAME,
    USER,
    bare_film,
    dx_film,
    to_bytes,
)


@pytest.fixture(scope="module")
def classifier(tiny_model_file):
    return Classifier.from_file(tiny_model_file)


def score_stored(orthanc, film, classifier, tiny_lung_file):
    """Stores a film in Orthanc, retrieves and scores it: (client, header, result)."""
    orthanc.upload(to_bytes(film))
    client = PacsClient(PacsConfig(orthanc.url, user=USER, password=PASSWORD))
    record = next(r for r in client.find_instances(StudyQuery()).instances
                  if r.sop_instance_uid == film.SOPInstanceUID)
    data = client.retrieve(record)
    result = analyse([(record.sop_instance_uid, data)], classifier,
                     segmenter=LungSegmenter.from_file(tiny_lung_file))[0]
    assert result.error is None
    return client, source_header(data), result


@pytest.fixture
def scored(orthanc, film_pixels, classifier, tiny_lung_file, plant_lungs):
    """One film stored in Orthanc, retrieved, scored: (client, header, result)."""
    return score_stored(orthanc, dx_film(film_pixels[0], "ACC001", "20240101"), classifier,
                        tiny_lung_file)


def read_sr(client, objects):
    return hd.sr.srread(io.BytesIO(client.retrieve(InstanceRecord(
        objects.study_uid, objects.uids.sr_series, objects.uids.sr, "SR", ""))))


def evaluations(group) -> dict[str, str]:
    """The group's qualitative evaluations: concept name -> coded value."""
    return {e.name.meaning: e.value.value for e in group.get_qualitative_evaluations()}


def texts(group) -> list[str]:
    return [item.TextValue for item in group[0].ContentSequence if "TextValue" in item]


def opacity_measurements(group) -> dict[tuple[str, str], object]:
    """The group's opacity measurements: (name, laterality) -> measurement."""
    return {(m.name.meaning, m.finding_sites[0].laterality.meaning): m
            for m in group.get_measurements()
            if m.name.meaning in (OPACITY_EXTENT, RALE_SCORE)}


def graded(result):
    """The result with opacity over the lower half of its lungs (unequal in the two lungs)."""
    lungs = result.lungs
    mask = np.zeros_like(lungs)
    mask[lungs.shape[0] // 2 :, : lungs.shape[1] // 2] = True  # the patient's right: image left
    mask[int(lungs.shape[0] * 0.7) :, lungs.shape[1] // 2 :] = True
    mask &= lungs
    return replace(result, opacity=OpacitySegmentation(mask, grade(lungs, mask)))


def with_flag(result, flag, threshold):
    """The result as the decision rule decides it under another flag."""
    return replace(result, decision=decide(result.probs, result.class_names, threshold, flag))


def test_uids_are_derived_from_source_model_class_and_method():
    uids = result_uids("1.2.3", "ab" * 32, "COVID", "gradcam")
    assert uids == result_uids("1.2.3", "ab" * 32, "COVID", "gradcam")
    assert len({uids.sr, uids.sc, uids.sr_series, uids.sc_series}) == 4
    for changed in (("1.2.4", "ab" * 32, "COVID", "gradcam"),
                    ("1.2.3", "cd" * 32, "COVID", "gradcam"),
                    ("1.2.3", "ab" * 32, "Normal", "gradcam"),
                    ("1.2.3", "ab" * 32, "COVID", "gradcam++"),
                    ("1.2.3", "ab" * 32, "COVID", "gradcam", "ef" * 32)):  # opacity model
        assert result_uids(*changed).sr != uids.sr


def test_a_failed_film_has_no_results(scored, classifier):
    _, header, _ = scored
    with pytest.raises(ResultsError, match="broken: there are no results"):
        build_results(header, StudyResult(name="broken", error="broken: corrupt"),
                      classifier.metadata, 0.5)


def test_a_header_without_the_uids_to_reference_gives_no_results(scored):
    _, header, _ = scored
    del header.SOPInstanceUID
    with pytest.raises(ResultsError, match="lacks SOPInstanceUID, which the results must"):
        evidence_header(header)


def test_the_burnt_in_banner_marks_research_use():
    image = np.full((200, 300, 3), 128, np.uint8)
    marked = burn_in(image)
    banner = marked[:16]
    assert banner.max() > 200 and banner.min() == 0  # white text on black
    assert (banner == 0).mean() > 0.5
    np.testing.assert_array_equal(marked[60:], image[60:])
    assert "RESEARCH USE ONLY" in BURNT_IN
    narrow = np.full((200, 160, 3), 128, np.uint8)  # the text shrinks to fit, two lines
    two = burn_in(narrow, (BURNT_IN, "Other pneumonia | admit | flag unusual"))
    rows = np.flatnonzero((two == 0).all(axis=(1, 2)))
    assert 20 < rows.max() < 60 and (two[:, -4:] == 0).all(axis=2).sum() > 0


def test_sr_and_sc_are_stored_in_the_study_and_read_back(scored, classifier, orthanc):
    client, header, result = scored
    meta = replace(classifier.metadata, sha256="0f" * 32)
    objects = build_results(header, result, meta, meta.threshold)
    assert send_results(client, objects) is True
    sr = read_sr(client, objects)
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.PatientID == header.PatientID and sr.ContentQualification == "RESEARCH"
    assert "research use only" in sr.SeriesDescription
    group = sr.content.get_image_measurement_groups()[0]
    assert group.finding_type.meaning == finding_code(result.label).meaning
    assert evaluations(group) == {"Flag": "none", "Advice": result.decision.advice}
    assert result.decision.advice in ("admit", "home")
    assert result.decision.triage in texts(group)
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    for name, p in zip(meta.class_names, result.probs, strict=True):
        assert values[f"P({name})"] == pytest.approx(float(p), abs=1e-6)
    assert values["Operating point"] == pytest.approx(meta.threshold)
    assert values["Lung evidence"] == pytest.approx(result.lung_evidence, abs=1e-6)
    assert opacity_measurements(group) == {}  # no opacity segmenter ran
    def texts_named(concept):
        return [item.TextValue for item in find_content_items(group[0], name=concept)]

    assert texts_named(codes.DCM.AlgorithmName) == [meta.name]
    assert texts_named(codes.DCM.AlgorithmVersion) == [meta.version]
    assert f"SHA-256 {'0f' * 32}" in texts_named(codes.DCM.AlgorithmParameters)
    assert RESEARCH_ONLY in texts(group)
    assert group.source_images[0].referenced_sop_instance_uid == header.SOPInstanceUID

    sc = hd.imread(io.BytesIO(client.retrieve(InstanceRecord(
        objects.study_uid, objects.uids.sc_series, objects.uids.sc, "OT", ""))))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    pixels = sc.get_frame(1)
    expected = overlay_picture(result)
    np.testing.assert_array_equal(pixels, expected)
    drawn = render_map(result.pixels, result.cam, replace(DisplaySettings(), outline=True),
                       result.lungs)
    assert not np.array_equal(pixels[:8], drawn[:8])  # the banner
    np.testing.assert_array_equal(pixels[pixels.shape[0] // 2:], drawn[drawn.shape[0] // 2:])


def sc_pixels(objects) -> np.ndarray:
    """(Rows, Columns, 3) uint8: the Secondary Capture's PixelData as stored (RGB, interleaved)."""
    sc = objects.sc
    assert (sc.SamplesPerPixel, sc.PlanarConfiguration, sc.BitsAllocated) == (3, 0, 8)
    return np.frombuffer(sc.PixelData, np.uint8)[: sc.Rows * sc.Columns * 3].reshape(
        sc.Rows, sc.Columns, 3)


def banner_rows(picture: np.ndarray) -> int:
    """How many rows from the top the black banner takes (to its last all-black row).

    The map colours every row below it (no colour map offered is black), so only
    the banner's margins between and under the text are black across the width.
    """
    black = (picture[: picture.shape[0] // 2] == 0).all(axis=(1, 2))
    return int(np.flatnonzero(black).max()) + 1


def test_the_sc_outlines_the_opacities_in_the_pdf_colour_only_when_there_are_some(
        scored, classifier):
    _, header, result = scored
    meta = classifier.metadata
    outlined = graded(result)
    mask = outlined.opacity.mask
    plain, drawn = (sc_pixels(build_results(header, r, meta, meta.threshold))
                    for r in (result, outlined))
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)  # 224 px: a 1-px line
    inside = ndimage.binary_erosion(mask, iterations=3, border_value=0)
    below = np.zeros_like(mask)
    below[banner_rows(drawn) + 1 :] = True  # the banner hides the picture's top rows
    assert (edge & below).sum() > 100 and inside.sum() > 100

    def coloured(picture):
        return (picture == OPACITY_RGB).all(axis=2)

    assert coloured(drawn)[edge & below].all()  # on the mask's boundary, all of it
    assert not coloured(drawn)[inside].any()  # a line, not a fill: the map shows inside
    assert not coloured(plain).any()  # no opacities, no outline colour anywhere
    away = ~ndimage.binary_dilation(mask, iterations=2) & below
    np.testing.assert_array_equal(drawn[away], plain[away])  # the rest is the same map
    assert banner_rows(drawn) > banner_rows(plain)  # one more burnt-in line: the legend
    assert "opacities" in OPACITY_LEGEND and "separate" in OPACITY_LEGEND


def test_sending_again_stores_nothing_and_results_are_never_listed(scored, classifier, orthanc):
    client, header, result = scored
    objects = build_results(header, result, classifier.metadata, classifier.metadata.threshold)
    assert send_results(client, objects) is True
    count = orthanc.instance_count()
    again = build_results(header, result, classifier.metadata, classifier.metadata.threshold)
    assert again.uids == objects.uids
    assert send_results(client, again) is False
    assert orthanc.instance_count() == count == 3
    listed = client.find_instances(StudyQuery()).instances
    assert [i.sop_instance_uid for i in listed] == [header.SOPInstanceUID]


@pytest.mark.parametrize("odd", [False, True], ids=["absent", "empty-or-invalid"])
def test_a_film_without_birth_date_sex_or_accession_gets_its_results(
        odd, orthanc, film_pixels, classifier, tiny_lung_file, plant_lungs, recwarn, caplog):
    film = bare_film(film_pixels[0], "20240301", odd)
    client, header, result = score_stored(orthanc, film, classifier, tiny_lung_file)
    objects = build_results(header, result, classifier.metadata, 0.5)
    assert send_results(client, objects) is True
    sr = read_sr(client, objects)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName"):
        assert keyword in sr and sr.data_element(keyword).is_empty  # Type 2: present, empty
    assert str(sr.PatientName) == str(film.PatientName)  # copied, never through highdicom
    assert sr.PatientID == film.PatientID and sr.StudyDate == film.StudyDate
    assert sr.content.get_image_measurement_groups()[0].finding_type is not None
    assert orthanc.instance_count() == 3
    if not odd:
        assert not any(keyword in header for keyword in LEFT_OUT)  # as the PACS sent it
    shown = " ".join([str(w.message) for w in recwarn] + [caplog.text])
    for part in PATIENT_NAME.split("^"):
        assert part not in shown


def test_a_build_failure_names_the_film_but_not_the_patient(scored, classifier, monkeypatch):
    _, header, result = scored

    def refuse(*args, **kwargs):
        raise ValueError(f"odd name {PATIENT_NAME}")

    monkeypatch.setattr(pacs_results, "build_sc", refuse)
    with pytest.raises(ResultsError) as err:
        build_results(header, result, classifier.metadata, 0.5)
    message = str(err.value)
    assert message.startswith(f"{result.name}: the results could not be built (ValueError:")
    for part in PATIENT_NAME.split("^"):
        assert part not in message


def test_an_unusual_film_keeps_its_finding_and_is_admitted_in_the_sr_and_the_picture(
        scored, classifier):
    client, header, result = scored
    meta = classifier.metadata
    unusual = with_flag(result, FLAG_UNUSUAL, 1.0)  # Normal at this operating point
    assert unusual.decision.label == "Normal" and unusual.decision.advice == "admit"
    objects = build_results(header, unusual, meta, 1.0)
    assert send_results(client, objects) is True
    group = read_sr(client, objects).content.get_image_measurement_groups()[0]
    assert group.finding_type.meaning == "Normal"
    assert evaluations(group) == {"Flag": "unusual", "Advice": "admit"}
    assert unusual.decision.triage in texts(group) and "radiologist" in unusual.decision.triage
    assert decision_line(unusual.decision) == "Normal | admit | flag unusual"
    assert not np.array_equal(overlay_picture(unusual), overlay_picture(result))


def test_a_refused_film_is_never_sent_and_its_sr_would_code_no_finding(scored, classifier):
    _, header, result = scored
    meta = classifier.metadata
    refused = replace(with_flag(graded(result), FLAG_NOT_CHEST, meta.threshold), cam=None)
    assert nothing_to_send(refused) == "it was refused as not a chest X-ray, so nothing is sent"
    with pytest.raises(ResultsError, match="refused as not a chest X-ray"):
        build_results(header, refused, meta, meta.threshold)
    uids = result_uids(str(header.SOPInstanceUID), meta.sha256, "", "gradcam")
    sr = build_sr(evidence_header(header), refused, meta, meta.threshold, uids,
                  opacity_meta=OpacityModelMetadata(sha256="ab" * 32))
    group = hd.sr.srread(io.BytesIO(to_bytes(sr))).content.get_image_measurement_groups()[0]
    assert group.finding_type is None
    assert evaluations(group) == {"Flag": "not_chest"}  # and no advice
    assert opacity_measurements(group) == {}
    assert refused.decision.triage in texts(group)
    assert nothing_to_send(result) is None


def test_the_opacity_extent_and_score_are_numeric_measurements_with_units(scored, classifier):
    client, header, result = scored
    meta = classifier.metadata
    result = graded(result)
    severity = result.opacity.severity
    assert 0 < severity.right != severity.left > 0 and 0 < severity.score < 8
    opacity_meta = OpacityModelMetadata(name="tiny opacity U-Net", version="o-1",
                                        sha256="cd" * 32)
    objects = build_results(header, result, meta, meta.threshold, opacity_meta=opacity_meta)
    assert send_results(client, objects) is True
    group = read_sr(client, objects).content.get_image_measurement_groups()[0]
    found = opacity_measurements(group)
    both = codes.SCT.RightAndLeft.meaning
    expected = {"Right": severity.right, "Left": severity.left, both: severity.extent}
    for side, share in expected.items():
        extent = found[(OPACITY_EXTENT, side)]
        assert extent.value == pytest.approx(100 * share, abs=1e-3)
        assert (extent.unit.value, extent.unit.scheme_designator) == ("%", "UCUM")
        assert extent.finding_sites[0].value.value == codes.SCT.Lung.value
        assert extent.method.meaning == OPACITY_METHOD
    score = found[(RALE_SCORE, both)]
    assert score.value == severity.score
    assert (score.unit.value, score.unit.scheme_designator) == ("{score}", "UCUM")
    assert len(found) == 4
    names = [item.TextValue for m in found.values()
             for item in find_content_items(m[0], name=codes.DCM.AlgorithmName, recursive=True)]
    assert names == ["tiny opacity U-Net"] * 4  # the segmenter's, not the classifier's
    # another segmenter's figures are other results, with UIDs of their own
    other = build_results(header, result, meta, meta.threshold,
                          opacity_meta=replace(opacity_meta, sha256="ef" * 32))
    assert other.uids.sr != objects.uids.sr


def test_findings_are_coded_from_the_class_names():
    assert finding_code(COVID).scheme_designator == "SCT"
    assert finding_code(NORMAL).meaning == "Normal"
    assert finding_code(OTHER_PNEUMONIA).meaning == "Pneumonia"
    assert finding_code("Tuberculosis").scheme_designator == "99COVIDXR"  # a model's own class
