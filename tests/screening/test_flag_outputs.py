"""Every output says the same thing about a film, whatever its flag.

One film of each kind goes through the real serving pipeline with a tiny
classifier: an ordinary one (flag ``none``), an unusual chest X-ray (only its
feature distance is high: a detector whose limit is below any distance), and
images that are not chest X-rays (a colour picture, and a DICOM whose Modality
is CT). Then each output is read back the way its reader would see it, as
(label, flag, advice), and all must agree with the decision and with the rule.

Each output is a reader taking a :class:`Film` and returning :class:`Said` in
:data:`READERS`: the decision, the result, the page's table and its CSV, the PDF,
``predict``'s CSV, the Ray archive's Parquet and the PACS Structured Report.

The films' lungs are planted and a tiny opacity segmenter outlines all of them,
so that every chest film has opacity figures (100% of the lungs, score 8/8); a
refused film must have none in any output (:data:`OPACITY_READERS`).
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from covid.explain.inference import Classifier
from covid.inputs.preprocess import lung_box
from covid.model.decision import (
    ADVICE,
    FLAG_NONE,
    FLAG_NOT_CHEST,
    FLAG_UNUSUAL,
    NOT_A_CHEST_XRAY,
    UNUSUAL_ADVICE,
)
from covid.model.lungs import LungSegmentation, LungSegmenter
from covid.model.metadata import ModelMetadata
from covid.model.ood_stats import OODStats
from covid.model.opacity import MAX_SCORE, OpacitySegmenter
from covid.screening import scoring
from covid.screening.archive_parts import PartWriter, read_rows, row_schema
from covid.screening.ood import OODDetector
from covid.screening.output import write_rows
from covid.screening.pacs_results import ResultsError, build_results, finding_code
from covid.screening.pipeline import StudyResult, analyse
from covid.screening.studies import DisplaySettings, Study, report_pdf
from covid.screening.table import OPACITY, OPACITY_SCORE, csv_bytes, table_columns, table_rows
from tests.films import dicom_bytes, dicom_dataset, pattern, png
from tests.opacity_models import save_tiny_opacity


@dataclass(frozen=True)
class Said:
    """What one output says about a film."""

    label: str
    flag: str
    advice: str


@dataclass(frozen=True)
class Film:
    """One film scored by the serving pipeline, with what its outputs need.

    Attributes:
        kind: The flag the film was made to raise (one of the decision's flags).
        result: Its result from :func:`covid.screening.pipeline.analyse`.
        classifier: The classifier that scored it.
    """

    kind: str
    result: StudyResult
    classifier: Classifier

    @property
    def meta(self) -> ModelMetadata:
        return self.classifier.metadata


def _grey() -> bytes:
    return png(pattern(96, 112))


def _colour() -> bytes:
    return png(np.random.default_rng(0).integers(0, 255, (96, 112, 3), dtype=np.uint8))


def _ct_slice() -> bytes:
    return dicom_bytes(dicom_dataset(pattern(96, 112), Modality="CT"))


FILMS = {  # name: (the flag it must raise, its bytes, whether its features are far)
    "ordinary.png": (FLAG_NONE, _grey, False),
    "unusual.png": (FLAG_UNUSUAL, _grey, True),
    "photo.png": (FLAG_NOT_CHEST, _colour, True),
    "ct.dcm": (FLAG_NOT_CHEST, _ct_slice, False),
}


@pytest.fixture(scope="module")
def classifier(tiny_model_file) -> Classifier:
    return Classifier.from_file(tiny_model_file)


def _two_lungs(shape: tuple[int, int]) -> LungSegmentation:
    """Two upright elliptical lung fields, one each side of the midline (a plausible pair)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    h, w = shape
    mask = np.zeros(shape, bool)
    for centre in (0.3, 0.7):
        mask |= ((rows - 0.45 * h) / (0.3 * h)) ** 2 + ((cols - centre * w) / (0.12 * w)) ** 2 <= 1
    return LungSegmentation(mask, lung_box(mask), None)


@pytest.fixture(scope="module")
def films(classifier, tiny_lung_file, tmp_path_factory) -> dict[str, Film]:
    """Each film of :data:`FILMS` through the serving pipeline, lungs and opacities too."""
    n = classifier.n_features
    far = OODStats(np.zeros((1, n), np.float32), np.eye(n, dtype=np.float32), threshold=-1.0)
    lungs = LungSegmenter.from_file(tiny_lung_file)
    lungs.segment_batch = lambda pixels: [_two_lungs(p.shape) for p in pixels]  # planted
    opacity = OpacitySegmenter.from_file(
        save_tiny_opacity(tmp_path_factory.mktemp("opacity") / "opacity.keras"))
    out = {}
    for name, (kind, make, distant) in FILMS.items():
        gate = OODDetector(far) if distant else OODDetector()  # a limit below any distance
        result = analyse([(name, make())], classifier, ood=gate, segmenter=lungs,
                         opacity=opacity)[0]
        assert result.error is None and result.flag == kind, (name, result.flag)
        out[name] = Film(kind, result, classifier)
    return out


# ------------------------------------------------------------------- readers


def _from_text(text: str) -> Said:
    """What a page of text (a PDF's) says: its result line, its flag and its advice."""
    flat = " ".join(text.split())
    label = re.search(r"Result at the operating point: (COVID|Other pneumonia|Normal)", flat)
    flag = (FLAG_UNUSUAL if UNUSUAL_ADVICE in flat
            else FLAG_NOT_CHEST if NOT_A_CHEST_XRAY in flat else FLAG_NONE)
    advice = "home" if "go home" in flat else "admit" if re.search(r"\badmit\b", flat) else ""
    return Said(label.group(1) if label else "", flag, advice)


def said_by_decision(film: Film) -> Said:
    decision = film.result.decision
    return Said(decision.label, decision.flag, decision.advice)


def said_by_result(film: Film) -> Said:
    """The result's own fields: its label, the gates' flag and the advice's colour."""
    result = film.result
    return Said(result.label, result.flag, result.decision.advice)


def said_by_table(film: Film) -> Said:
    row = table_rows([film.result], film.meta.class_names)[0]
    return Said(row["label"], row["flag"], row["advice"])


def said_by_table_csv(film: Film) -> Said:
    rows = table_rows([film.result], film.meta.class_names)
    data = csv_bytes(rows, table_columns(film.meta.class_names)).decode("utf-8")
    row = next(csv.DictReader(io.StringIO(data)))
    return Said(row["label"], row["flag"], row["advice"])


def said_by_pdf(film: Film) -> Said:
    study = Study(key=film.result.name, digest="", result=film.result)
    pdf = report_pdf(study, film.classifier, DisplaySettings(), film.meta.threshold,
                     film.result.cam)
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    return _from_text(text)


def said_by_predict_csv(film: Film) -> Said:
    out = io.StringIO()
    write_rows([scoring.row(Path(film.result.name), film.result, film.meta.class_names)],
               scoring.COLUMNS, "csv", out)
    row = next(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["ood"] == str(film.kind != FLAG_NONE).lower()
    return Said(row["label"], row["flag"], row["advice"])


def _archive_row(film: Film) -> dict:
    """The row the Ray archive's actors write (predict's row), read back from its Parquet file."""
    path = Path(film.result.name)
    with tempfile.TemporaryDirectory() as out:
        writer = PartWriter(Path(out), row_schema(scoring.COLUMNS), film.meta.sha256, [])
        writer.add(scoring.row(path, film.result, film.meta.class_names), (str(path), "sha"))
        writer.flush()
        (row,) = read_rows(Path(out))
    return row


def said_by_archive_parquet(film: Film) -> Said:
    """What the Ray archive's Parquet row says."""
    row = _archive_row(film)
    assert row["ood"] == str(film.kind != FLAG_NONE).lower()
    return Said(row["label"], row["flag"], row["advice"])


def _sr_items(dataset) -> dict[str, object]:
    """Every coded SR content item's value, by its concept name's meaning (depth first)."""
    found = {}
    for item in getattr(dataset, "ContentSequence", []):
        if "ConceptCodeSequence" in item:
            found[item.ConceptNameCodeSequence[0].CodeMeaning] = item.ConceptCodeSequence[0]
        found.update(_sr_items(item))
    return found


def said_by_pacs_sr(film: Film) -> Said:
    """What the Structured Report sent to the PACS codes; a refused film sends nothing."""
    from pydicom.uid import generate_uid

    source = dicom_dataset(pattern(96, 112), StudyInstanceUID=generate_uid(),
                           SeriesInstanceUID=generate_uid())
    try:
        objects = build_results(source, film.result, film.meta, film.meta.threshold)
    except ResultsError as err:
        assert "refused as not a chest X-ray" in str(err)
        return Said("", FLAG_NOT_CHEST, "")
    items = _sr_items(objects.sr)
    labels = {finding_code(n).value: n for n in film.meta.class_names}
    finding = items.get("Finding")
    return Said(labels[finding.CodeValue] if finding is not None else "",
                items["Flag"].CodeValue, items["Advice"].CodeValue if "Advice" in items else "")


READERS: dict[str, Callable[[Film], Said]] = {
    "decision": said_by_decision,
    "result": said_by_result,
    "table": said_by_table,
    "table CSV": said_by_table_csv,
    "PDF": said_by_pdf,
    "predict CSV": said_by_predict_csv,
    "archive Parquet": said_by_archive_parquet,
    "PACS SR": said_by_pacs_sr,
}
"""Every output checked, by name."""


Figures = tuple[float, int] | None
"""What an output says of the opacities: (share of both lungs, score 0-8), or nothing."""


def _figures(extent: object, score: object, percent: bool = False) -> Figures:
    """Figures from an output's two cells (empty cells: nothing)."""
    if extent in (None, "") and score in (None, ""):
        return None
    share = float(extent) / (100.0 if percent else 1.0)
    return round(share, 3), int(float(score))


def opacity_by_result(film: Film) -> Figures:
    outline = film.result.opacity
    return None if outline is None else _figures(outline.severity.extent, outline.severity.score)


def opacity_by_table(film: Film) -> Figures:
    row = table_rows([film.result], film.meta.class_names)[0]
    return _figures(row[OPACITY], row[OPACITY_SCORE], percent=True)


def opacity_by_table_csv(film: Film) -> Figures:
    rows = table_rows([film.result], film.meta.class_names)
    data = csv_bytes(rows, table_columns(film.meta.class_names)).decode("utf-8")
    row = next(csv.DictReader(io.StringIO(data)))
    return _figures(row[OPACITY], row[OPACITY_SCORE], percent=True)


def opacity_by_predict_csv(film: Film) -> Figures:
    out = io.StringIO()
    write_rows([scoring.row(Path(film.result.name), film.result, film.meta.class_names)],
               scoring.COLUMNS, "csv", out)
    row = next(csv.DictReader(io.StringIO(out.getvalue())))
    return _figures(row[scoring.OPACITY_EXTENT], row[scoring.SEVERITY])


def opacity_by_archive_parquet(film: Film) -> Figures:
    row = _archive_row(film)
    return _figures(row[scoring.OPACITY_EXTENT], row[scoring.SEVERITY])


OPACITY_READERS: dict[str, Callable[[Film], Figures]] = {
    "result": opacity_by_result,
    "table": opacity_by_table,
    "table CSV": opacity_by_table_csv,
    "predict CSV": opacity_by_predict_csv,
    "archive Parquet": opacity_by_archive_parquet,
}
"""Every output that carries the opacity figures, by name."""


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", FILMS)
def test_every_output_says_the_same_label_flag_and_advice(films, name):
    film = films[name]
    said = {output: read(film) for output, read in READERS.items()}
    assert len(set(said.values())) == 1, said
    assert said["decision"] == said_by_decision(film)


@pytest.mark.parametrize("name", FILMS)
def test_what_they_say_is_the_rule_for_that_kind_of_flag(films, name):
    film = films[name]
    said = said_by_decision(film)
    assert said.flag == film.kind
    if film.kind == FLAG_NOT_CHEST:  # refused: never classified
        assert said == Said("", FLAG_NOT_CHEST, "")
        assert film.result.cam is None and film.result.lung_evidence is None
    elif film.kind == FLAG_UNUSUAL:  # kept, with its map, and always admitted
        assert said.label in film.meta.class_names and said.advice == "admit"
        assert film.result.cam is not None
    else:
        assert said.advice == ("home" if said.label == "Normal" else "admit")
        assert film.result.triage.startswith(ADVICE[said.label])


@pytest.mark.parametrize("name", FILMS)
def test_a_refused_film_has_no_opacity_figures_in_any_output(films, name):
    film = films[name]
    said = {output: read(film) for output, read in OPACITY_READERS.items()}
    if film.kind == FLAG_NOT_CHEST:
        assert film.result.opacity is None
        assert set(said.values()) == {None}, said
    else:  # the tiny segmenter outlines all of both lungs
        assert set(said.values()) == {(1.0, MAX_SCORE)}, said


def test_the_pdf_reader_tells_the_outputs_apart():
    """The reader of the PDF's text, on texts that differ only in what they say."""
    assert _from_text("Result at the operating point: Normal\nNo finding: go home") == Said(
        "Normal", FLAG_NONE, "home")
    assert _from_text(f"Result at the operating point: COVID {UNUSUAL_ADVICE}") == Said(
        "COVID", FLAG_UNUSUAL, "admit")
    assert _from_text(f"{NOT_A_CHEST_XRAY} P(COVID) ≥ 0.5 admits") == Said(
        "", FLAG_NOT_CHEST, "")
