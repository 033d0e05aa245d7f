import contextlib
import io
import re
import subprocess
import sys
import zlib
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from covid import DISCLAIMER
from covid.__main__ import main
from covid.explain.localisation import EVIDENCE_MEANING, energy_inside, lung_outline
from covid.inputs.decode import ImageDecodeError
from covid.model.decision import ADVICE, FLAG_NOT_CHEST, FLAG_UNUSUAL, UNUSUAL_ADVICE
from covid.model.network import ModelMetadata
from covid.screening.pipeline import StudyResult, percentages
from covid.screening.report import ReportError, build_report, report_for_file
from tests.results import THREE_CLASSES, scored

SHA = "0123456789abcdef" * 4
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
PATIENT = "DOE^JANE"
PATIENT_ID = "PID-12345"

ADMIT, GO_HOME = ADVICE["COVID"], ADVICE["Normal"]


def _text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def _all_bytes(pdf: bytes) -> bytes:
    """The raw file plus every stream inflated, to look for leaks anywhere."""
    inflated = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        with contextlib.suppress(zlib.error):
            inflated.append(zlib.decompress(match.group(1)))
    return pdf + b"".join(inflated)


def _n_images(pdf: bytes) -> int:
    return sum(len(page.images) for page in PdfReader(io.BytesIO(pdf)).pages)


def _png_bytes(seed: int = 0, shape=(72, 80)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def metadata():
    return ModelMetadata(name="tiny test CNN", version="test-7", sha256=SHA, threshold=0.5,
                         class_names=["COVID", "Normal"], input_size=32, input_mode="full")


REASONS = {FLAG_NOT_CHEST: "it is a colour image; chest X-rays are grey.",
           FLAG_UNUSUAL: "it is unlike the chest X-rays the model was trained on."}


def _result(p_covid=0.8766, flag=None, info=None, threshold=0.5, **fields):
    rng = np.random.default_rng(1)
    return scored(
        "study_01.png", p_covid, threshold=threshold, flag=flag, flag_reason=REASONS.get(flag),
        pixels=rng.integers(0, 255, (90, 70), dtype=np.uint8),
        model_input=np.zeros((32, 32, 1), np.uint8), info=info or {"Modality": "CR"},
        **fields)


def _overlay(shape=(90, 70)):
    return np.random.default_rng(2).integers(0, 255, (*shape, 3), dtype=np.uint8)


def test_report_holds_everything_required(metadata):
    result = _result()
    pdf = build_report(result, _overlay(), metadata, 0.5, when=WHEN)
    assert pdf.startswith(b"%PDF-")
    text = _text(pdf)
    covid_pct, normal_pct = percentages(result.probs)
    assert covid_pct + normal_pct == pytest.approx(100.0)
    for expected in (f"COVID {covid_pct:.1f} %", f"Normal {normal_pct:.1f} %", ADMIT,
                     "tiny test CNN", "test-7", SHA[:12], DISCLAIMER, "0.500",
                     "shipped operating point", "study_01.png", "Modality: CR",
                     "2024-05-01 12:30"):
        assert expected in text, expected
    assert SHA[:13] not in text
    assert _n_images(pdf) >= 2


def test_session_threshold_is_named_as_such(metadata):
    result = _result(p_covid=0.4, threshold=0.3)
    assert result.label == "COVID"
    text = _text(build_report(result, _overlay(), metadata, 0.3, when=WHEN))
    assert "0.300" in text and "session choice" in text and "0.500" in text


def test_a_three_class_report_has_three_bars_and_the_finding_advice():
    metadata = ModelMetadata(name="three", version="3", sha256=SHA, threshold=0.4,
                             class_names=list(THREE_CLASSES))
    result = scored("p.png", [0.15, 0.5, 0.35], THREE_CLASSES, threshold=0.4,
                    pixels=np.zeros((90, 70), np.uint8))
    text = _text(build_report(result, _overlay(), metadata, 0.4, when=WHEN))
    for expected in ("COVID 15.0 %", "Other pneumonia 50.0 %", "Normal 35.0 %",
                     "Result at the operating point: Other pneumonia",
                     ADVICE["Other pneumonia"], "P(any finding) ≥ 0.400 admits"):
        assert expected in _flat(text), expected
    with pytest.raises(ReportError, match="threshold"):
        build_report(result, _overlay(), metadata, 0.7)  # 0.65 < 0.7 would be Normal


def test_a_refused_study_gets_the_refusal_and_no_label_bars_map_or_advice(metadata):
    pdf = build_report(_result(flag=FLAG_NOT_CHEST), None, metadata, 0.5, when=WHEN)
    text = _flat(_text(pdf))
    assert "This does not look like a chest X-ray" in text
    assert f"Not a chest X-ray: {REASONS[FLAG_NOT_CHEST]}" in text
    assert ADMIT not in text and GO_HOME not in text
    assert "Result at the operating point" not in text
    assert " %" not in text and "Grad-CAM" not in text  # no bars, no map
    assert DISCLAIMER in text and _n_images(pdf) == 1


def test_an_unusual_study_keeps_its_label_and_bars_with_a_caution_and_is_admitted(metadata):
    result = _result(p_covid=0.1, flag=FLAG_UNUSUAL)  # Normal, yet admitted
    text = _flat(_text(build_report(result, _overlay(), metadata, 0.5, when=WHEN)))
    assert "Result at the operating point: Normal" in text
    assert f"Caution: {REASONS[FLAG_UNUSUAL]}" in text
    assert UNUSUAL_ADVICE in text and GO_HOME not in text
    assert "COVID 10.0 %" in text and "Normal 90.0 %" in text


def test_a_classified_study_needs_its_overlay(metadata):
    with pytest.raises(ReportError, match="overlay"):
        build_report(_result(flag=FLAG_UNUSUAL), None, metadata, 0.5)


def test_identifier_like_info_keys_are_never_printed(metadata):
    info = {"Modality": "DX", "PatientName": PATIENT, "Patient ID": PATIENT_ID}
    pdf = build_report(_result(info=info), _overlay(), metadata, 0.5, when=WHEN)
    assert "Modality: DX" in _text(pdf)
    for secret in (PATIENT, PATIENT_ID):
        assert secret not in _text(pdf)
        assert secret.encode() not in _all_bytes(pdf)


def _pages(pdf: bytes) -> int:
    return len(PdfReader(io.BytesIO(pdf)).pages)


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("flag", [None, FLAG_UNUSUAL])
def test_the_share_of_evidence_in_the_lungs_and_its_meaning_are_reported(metadata, flag):
    result = _result(flag=flag, lungs=np.zeros((90, 70), bool))
    low = build_report(result, _overlay(), metadata, 0.5, when=WHEN, lung_evidence=0.3)
    text = _flat(_text(low))
    assert "30% of the evidence lies inside the lung fields" in text
    assert _flat(EVIDENCE_MEANING) in text
    assert "Caution" in text and "mostly outside the lungs" in text
    assert "lung outline in white" in text
    assert _pages(low) == 1
    high = _flat(_text(build_report(result, _overlay(), metadata, 0.5, when=WHEN,
                                    lung_evidence=0.81)))
    assert "81% of the evidence lies inside the lung fields" in high
    assert ("Caution" in high) == (flag == FLAG_UNUSUAL)  # the lungs' caution is gone
    if flag:  # an unusual film is admitted, whatever its label
        assert UNUSUAL_ADVICE in high and GO_HOME not in high


def test_without_lungs_the_share_is_said_to_be_unmeasured(metadata):
    text = _flat(_text(build_report(_result(), _overlay(), metadata, 0.5, when=WHEN)))
    assert "Not measured: no lung segmenter" in text
    assert "lung outline" not in text and "of the evidence lies inside" not in text


def test_inconsistent_or_failed_inputs_are_refused(metadata):
    with pytest.raises(ReportError, match="threshold"):
        build_report(_result(p_covid=0.6), _overlay(), metadata, 0.7)
    with pytest.raises(ReportError, match="failed"):
        build_report(StudyResult(name="x.png", error="x.png: empty"), _overlay(), metadata, 0.5)
    with pytest.raises(ReportError, match="overlay"):
        build_report(_result(), _overlay()[:, :, 0], metadata, 0.5)


@pytest.fixture(scope="module")
def classifier(tiny_model_file):
    from covid.explain.inference import Classifier

    return Classifier.from_file(tiny_model_file)


def test_report_for_file_on_a_png(classifier, tmp_path):
    path = tmp_path / "thorax_ü.png"
    path.write_bytes(_png_bytes())
    pdf = report_for_file(path, classifier, method="gradcam++", colormap="turbo", when=WHEN)
    text = _text(pdf)
    assert "thorax_ü.png" in text and "tiny test CNN" in text
    assert "shipped operating point" in text
    assert _n_images(pdf) >= 2


def test_report_for_file_outlines_the_lungs_and_reports_the_share(
    classifier, tiny_lung_file, plant_lungs, tmp_path, monkeypatch
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
    text = _flat(_text(report_for_file(path, classifier, when=WHEN, segmenter=segmenter)))
    result, overlay = drawn["result"], drawn["overlay"]
    lungs = plant_lungs.mask((120, 100))
    assert np.array_equal(result.lungs, lungs)
    assert (overlay[lung_outline(lungs)] == report.OUTLINE_RGB).all()
    assert drawn["share"] == pytest.approx(energy_inside(result.cam, lungs))
    assert f"{int(100 * drawn['share'] + 1e-9)}% of the evidence lies inside the lung fields" \
        in text


def test_report_for_file_refuses_a_colour_photograph_without_a_map(classifier, tmp_path):
    from covid.screening.ood import OODDetector

    path = tmp_path / "photo.png"
    colour = np.random.default_rng(8).integers(0, 255, (80, 90, 3), dtype=np.uint8)
    Image.fromarray(colour).save(path)
    pdf = report_for_file(path, classifier, ood=OODDetector(), when=WHEN)
    text = _flat(_text(pdf))
    assert "Not a chest X-ray: it is a colour image" in text and _n_images(pdf) == 1
    assert "Result at the operating point" not in text and " %" not in text


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
    text, raw = _text(pdf), _all_bytes(pdf)
    assert "study.dcm" in text and _n_images(pdf) >= 2
    assert "Modality: CR" in text and "ViewPosition: PA" in text
    for secret in (PATIENT, PATIENT_ID, "DOE", "JANE", "19700101", "General Hospital"):
        assert secret not in text, secret
        assert secret.encode() not in raw, secret


def test_cli_writes_a_valid_pdf(tiny_model_file, tmp_path, capsys):
    pytest.importorskip("covid.screening.ood", reason="covid/ood.py not there yet")
    image, out = tmp_path / "a.png", tmp_path / "out" / "report.pdf"
    image.write_bytes(_png_bytes(4))
    out.parent.mkdir()
    # no segmenter: the shipped one finds no lungs in noise, which would be refused
    assert main(["report", str(image), "-o", str(out), "--model", str(tiny_model_file),
                 "--lung-model", str(tmp_path / "none.keras")]) == 0
    text = _text(out.read_bytes())
    assert "a.png" in text and DISCLAIMER in text and _n_images(out.read_bytes()) >= 2


def test_cli_missing_model_is_a_clear_error(tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(_png_bytes(5))
    status = main(["report", str(image), "-o", str(tmp_path / "r.pdf"),
                   "--model", str(tmp_path / "none.keras")])
    assert status == 1
    assert "error: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "r.pdf").exists()


def test_cli_broken_file_exits_1_without_traceback(tiny_model_file, tmp_path):
    broken, out = tmp_path / "broken.png", tmp_path / "r.pdf"
    broken.write_bytes(b"not an image at all")
    proc = subprocess.run(
        [sys.executable, "-m", "covid", "report", str(broken), "-o", str(out),
         "--model", str(tiny_model_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "error: broken.png: this is not a PNG, JPEG or DICOM image" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()
