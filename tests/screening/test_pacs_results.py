"""The SR and the map sent back to the PACS, read back from a real Orthanc with highdicom."""

import io
from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes

from covid.explain.inference import Classifier
from covid.inputs.pacs import InstanceRecord, PacsClient, PacsConfig, StudyQuery
from covid.model.lungs import LungSegmenter
from covid.screening.pacs_results import (
    BURNT_IN,
    RESEARCH_ONLY,
    ResultsError,
    build_results,
    burn_in,
    overlay_picture,
    result_uids,
    send_results,
    source_header,
)
from covid.screening.pipeline import StudyResult, analyse
from covid.screening.studies import DisplaySettings, render_map
from tests.pacs_server import PASSWORD, USER, dx_film, to_bytes


@pytest.fixture(scope="module")
def classifier(tiny_model_file):
    return Classifier.from_file(tiny_model_file)


@pytest.fixture
def scored(orthanc, film_pixels, classifier, tiny_lung_file, plant_lungs):
    """One film stored in Orthanc, retrieved, scored: (client, header, result)."""
    orthanc.upload(to_bytes(dx_film(film_pixels[0], "ACC001", "20240101")))
    client = PacsClient(PacsConfig(orthanc.url, user=USER, password=PASSWORD))
    record = client.find_instances(StudyQuery()).instances[0]
    data = client.retrieve(record)
    result = analyse([(record.sop_instance_uid, data)], classifier,
                     segmenter=LungSegmenter.from_file(tiny_lung_file))[0]
    assert result.error is None
    return client, source_header(data), result


def test_uids_are_derived_from_source_model_class_and_method():
    uids = result_uids("1.2.3", "ab" * 32, "COVID", "gradcam")
    assert uids == result_uids("1.2.3", "ab" * 32, "COVID", "gradcam")
    assert len({uids.sr, uids.sc, uids.sr_series, uids.sc_series}) == 4
    for changed in (("1.2.4", "ab" * 32, "COVID", "gradcam"),
                    ("1.2.3", "cd" * 32, "COVID", "gradcam"),
                    ("1.2.3", "ab" * 32, "Normal", "gradcam"),
                    ("1.2.3", "ab" * 32, "COVID", "gradcam++")):
        assert result_uids(*changed).sr != uids.sr


def test_a_failed_film_has_no_results(scored, classifier):
    _, header, _ = scored
    with pytest.raises(ResultsError, match="broken: there are no results"):
        build_results(header, StudyResult(name="broken", error="broken: corrupt"),
                      classifier.metadata, 0.5)


def test_the_burnt_in_banner_marks_research_use():
    image = np.full((200, 300, 3), 128, np.uint8)
    marked = burn_in(image)
    banner = marked[:16]
    assert banner.max() > 200 and banner.min() == 0  # white text on black
    assert (banner == 0).mean() > 0.5
    np.testing.assert_array_equal(marked[60:], image[60:])
    assert "RESEARCH USE ONLY" in BURNT_IN


def test_sr_and_sc_are_stored_in_the_study_and_read_back(scored, classifier, orthanc):
    client, header, result = scored
    meta = replace(classifier.metadata, sha256="0f" * 32)
    objects = build_results(header, result, meta, meta.threshold)
    assert send_results(client, objects) is True
    sr = hd.sr.srread(io.BytesIO(client.retrieve(InstanceRecord(
        objects.study_uid, objects.uids.sr_series, objects.uids.sr, "SR", ""))))
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.PatientID == header.PatientID and sr.ContentQualification == "RESEARCH"
    assert "research use only" in sr.SeriesDescription
    group = sr.content.get_image_measurement_groups()[0]
    assert group.finding_type.meaning.startswith(
        "Disease caused by severe" if result.label == "COVID" else "Normal")
    flag = group.get_qualitative_evaluations()[0]
    assert (flag.name.meaning, flag.value) == ("Not a chest X-ray", codes.SCT.No)
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values["P(COVID)"] == pytest.approx(result.probs[0], abs=1e-6)
    assert values["P(Normal)"] == pytest.approx(result.probs[1], abs=1e-6)
    assert values["Operating point"] == pytest.approx(meta.threshold)
    assert values["Lung evidence"] == pytest.approx(result.lung_evidence, abs=1e-6)
    def texts_named(concept):
        return [item.TextValue for item in find_content_items(group[0], name=concept)]

    assert texts_named(codes.DCM.AlgorithmName) == [meta.name]
    assert texts_named(codes.DCM.AlgorithmVersion) == [meta.version]
    assert f"SHA-256 {'0f' * 32}" in texts_named(codes.DCM.AlgorithmParameters)
    texts = [item.TextValue for item in group[0].ContentSequence if "TextValue" in item]
    assert RESEARCH_ONLY in texts
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
