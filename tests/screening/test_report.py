"""A study's PDF report from its file, and the ``report`` command."""

import io
import re
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from covid import DISCLAIMER
from covid.__main__ import main
from covid.explain.localisation import OPACITY_RGB, energy_inside, lung_outline
from covid.inputs.decode import ImageDecodeError
from covid.model.opacity import MAX_SCORE
from covid.screening.report import OUTLINE_RGB, report_for_file
from tests.screening.pdfs import all_bytes, flat, pdf_text

WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
PATIENT = "DOE^JANE"
PATIENT_ID = "PID-12345"


def _n_images(pdf: bytes) -> int:
    return sum(len(page.images) for page in PdfReader(io.BytesIO(pdf)).pages)


def _png_bytes(seed: int = 0, shape=(72, 80)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def classifier(tiny_model_file):
    from covid.explain.inference import Classifier

    return Classifier.from_file(tiny_model_file)


@pytest.fixture(scope="module")
def opacity_file(tmp_path_factory):
    from tests.opacity_models import save_tiny_opacity

    return save_tiny_opacity(tmp_path_factory.mktemp("opacity") / "opacity.keras")


@pytest.fixture(scope="module")
def opacity_segmenter(opacity_file):
    from covid.model.opacity import OpacitySegmenter

    return OpacitySegmenter.from_file(opacity_file)


def test_report_for_file_on_a_png(classifier, tmp_path):
    path = tmp_path / "thorax_ü.png"
    path.write_bytes(_png_bytes())
    pdf = report_for_file(path, classifier, method="gradcam++", colormap="turbo", when=WHEN)
    text = pdf_text(pdf)
    assert "thorax_ü.png" in text and "tiny test CNN" in text
    assert "shipped operating point" in text
    assert _n_images(pdf) >= 2


def test_report_for_file_outlines_the_lungs_and_opacities_and_reports_both(
    classifier, tiny_lung_file, plant_lungs, opacity_segmenter, tmp_path, monkeypatch
):
    import covid.screening.report as report
    from covid.model.lungs import LungSegmenter

    drawn = {}
    build = report.build_report

    def spy(result, overlay, metadata, threshold, when=None, lung_evidence=None):
        drawn.update(result=result, overlay=overlay, share=lung_evidence)
        return build(result, overlay, metadata, threshold, when=when,
                     lung_evidence=lung_evidence)

    monkeypatch.setattr(report, "build_report", spy)
    path = tmp_path / "film.png"
    path.write_bytes(_png_bytes(6, shape=(120, 100)))
    segmenter = LungSegmenter.from_file(tiny_lung_file)
    pdf = report_for_file(path, classifier, when=WHEN, segmenter=segmenter,
                          opacity_segmenter=opacity_segmenter)
    text = flat(pdf_text(pdf))
    result, overlay = drawn["result"], drawn["overlay"]
    lungs = plant_lungs.mask((120, 100))
    assert np.array_equal(result.lungs, lungs)
    assert (overlay[lung_outline(lungs)] == OUTLINE_RGB).all()
    assert drawn["share"] == pytest.approx(energy_inside(result.cam, lungs))
    assert f"{int(100 * drawn['share'] + 1e-9)}% of the evidence lies inside the lung fields" \
        in text
    # the tiny opacity segmenter sees opacity everywhere: all of both lungs, on the X-ray only
    assert f"Right lung 100% · left lung 100% · score {MAX_SCORE}/{MAX_SCORE}" in text
    xray = np.asarray(PdfReader(io.BytesIO(pdf)).pages[0].images[0].image.convert("RGB"))
    assert (xray[lung_outline(lungs)] == OPACITY_RGB).all()
    assert not (overlay == OPACITY_RGB).all(axis=2).any()


def test_report_for_file_refuses_a_colour_photograph_without_a_map_or_opacities(
        classifier, tiny_lung_file, plant_lungs, opacity_segmenter, tmp_path):
    from covid.model.lungs import LungSegmenter
    from covid.screening.ood import OODDetector

    path = tmp_path / "photo.png"
    colour = np.random.default_rng(8).integers(0, 255, (80, 90, 3), dtype=np.uint8)
    Image.fromarray(colour).save(path)
    pdf = report_for_file(path, classifier, ood=OODDetector(), when=WHEN,
                          segmenter=LungSegmenter.from_file(tiny_lung_file),
                          opacity_segmenter=opacity_segmenter)
    text = flat(pdf_text(pdf))
    assert "Not a chest X-ray: it is a colour image" in text and _n_images(pdf) == 1
    assert "Result at the operating point" not in text and "%" not in text
    assert "score" not in text and "Right lung" not in text


def test_report_for_file_on_a_broken_file(classifier, tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageDecodeError, match=r"^broken\.png: .*corrupt"):
        report_for_file(path, classifier)
    with pytest.raises(ImageDecodeError, match="no such file"):
        report_for_file(tmp_path / "missing.png", classifier)


def _dicom_bytes() -> bytes:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    ds.PatientBirthDate, ds.InstitutionName = "19700101", "General Hospital"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.random.default_rng(3).integers(0, 255, (64, 64), np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_patient_identifiers_never_reach_the_pdf(classifier, tmp_path):
    pytest.importorskip("covid.inputs.dicom", reason="DICOM decoding not there yet")
    path = tmp_path / "study.dcm"
    path.write_bytes(_dicom_bytes())
    pdf = report_for_file(path, classifier, when=WHEN)
    text, raw = pdf_text(pdf), all_bytes(pdf)
    assert "study.dcm" in text and _n_images(pdf) >= 2
    assert "Modality: CR" in text and "ViewPosition: PA" in text
    for secret in (PATIENT, PATIENT_ID, "DOE", "JANE", "19700101", "General Hospital"):
        assert secret not in text, secret
        assert secret.encode() not in raw, secret


def test_cli_writes_a_valid_pdf(tiny_model_file, tmp_path, capsys):
    image, out = tmp_path / "a.png", tmp_path / "out" / "report.pdf"
    image.write_bytes(_png_bytes(4))
    out.parent.mkdir()
    # no segmenter: the shipped one finds no lungs in noise, which would be refused
    assert main(["report", str(image), "--out", str(out), "--model", str(tiny_model_file),
                 "--lung-model", str(tmp_path / "none.keras")]) == 0
    text = flat(pdf_text(out.read_bytes()))
    assert "a.png" in text and DISCLAIMER in text and _n_images(out.read_bytes()) >= 2
    assert re.search(r"P\((COVID|any finding)\) [\d.]+% is (above|at|below) the operating "
                     r"point 50\.0%", text)  # the rule's reason, either way
    assert "Not measured: the opacity segmenter did not run" in text  # no lungs, no opacities


def test_cli_grades_the_opacities_with_the_opacity_model(
        tiny_model_file, tiny_lung_file, plant_lungs, opacity_file, tmp_path):
    image, out = tmp_path / "a.png", tmp_path / "report.pdf"
    image.write_bytes(_png_bytes(4, shape=(120, 100)))
    assert main(["report", str(image), "--out", str(out), "--model", str(tiny_model_file),
                 "--lung-model", str(tiny_lung_file), "--opacity-model", str(opacity_file)]) == 0
    assert f"score {MAX_SCORE}/{MAX_SCORE}" in flat(pdf_text(out.read_bytes()))
    assert main(["report", str(image), "--out", str(out), "--model", str(tiny_model_file),
                 "--lung-model", str(tiny_lung_file),
                 "--opacity-model", str(tmp_path / "none.keras")]) == 0  # optional
    assert "score" not in flat(pdf_text(out.read_bytes()))


def test_cli_missing_model_is_a_clear_error(tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(_png_bytes(5))
    status = main(["report", str(image), "--out", str(tmp_path / "r.pdf"),
                   "--model", str(tmp_path / "none.keras")])
    assert status == 1
    assert "error: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "r.pdf").exists()


def test_cli_broken_file_exits_1_without_traceback(tiny_model_file, tmp_path):
    broken, out = tmp_path / "broken.png", tmp_path / "r.pdf"
    broken.write_bytes(b"not an image at all")
    proc = subprocess.run(
        [sys.executable, "-m", "covid", "report", str(broken), "--out", str(out),
         "--model", str(tiny_model_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "error: broken.png: this is not a PNG, JPEG or DICOM image" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()
