import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from covid.__main__ import main
from covid.model.classes import PROBABILITY_COLUMNS
from covid.screening.scoring import COLUMNS
from tests.opacity_models import save_tiny_opacity

NO_LUNGS = ["--lung-model", "/nonexistent/lungs.keras"]
"""No segmenter: the shipped one finds no lungs in noise, and such a film is refused."""


def _total(row) -> float:
    """The sum of a row's probability columns (those of the model's classes are filled)."""
    return sum(float(row[column]) for column in PROBABILITY_COLUMNS if row[column] != "")


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (70, 80), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    _png(tmp_path / "in" / "a.png", 1)
    _png(tmp_path / "in" / "sub" / "b.png", 2)
    (tmp_path / "in" / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (tmp_path / "in" / ".hidden.png").write_bytes(b"skip me")
    return tmp_path / "in"


def test_csv_rows_columns_and_error_row(folder, tiny_model_file, capsys):
    status = main(["predict", *NO_LUNGS, "--model", str(tiny_model_file), str(folder),
                   str(folder / "missing.png")])
    assert status == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0] == ",".join(COLUMNS)
    assert COLUMNS[:5] == ("path", "label", "p_covid", "p_normal", "error")
    names = [r["path"].rsplit("/", 1)[-1] for r in rows]
    assert names == ["a.png", "b.png", "corrupt.png", "missing.png"]
    for r in rows[:2]:
        assert r["error"] == "" and r["label"] in PROBABILITY_COLUMNS.values()
        assert _total(r) == pytest.approx(1.0, abs=3e-6)
    assert rows[2]["error"].startswith("corrupt.png: ") and rows[2]["label"] == ""
    assert rows[3]["error"] == "missing.png: no such file."


def test_json_format(folder, tiny_model_file, capsys):
    assert main(["predict", *NO_LUNGS, "--format", "json", "--model", str(tiny_model_file),
                 str(folder / "a.png")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert list(rows[0]) == list(COLUMNS)
    assert _total(rows[0]) == pytest.approx(1.0, abs=3e-6)


def test_missing_model_is_a_clear_error_without_traceback(folder, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "covid", "predict", "--model", str(tmp_path / "none.keras"),
         str(folder)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "model file not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_usage_error_is_non_zero():
    with pytest.raises(SystemExit) as exc:
        main(["predict"])
    assert exc.value.code == 2


def test_csv_header_is_exactly_the_documented_columns_in_order():
    assert ",".join(COLUMNS) == ("path,label,p_covid,p_normal,error,ood,lung_evidence,"
                                 "p_other_pneumonia,flag,advice,opacity_extent,severity")


def test_lung_evidence_is_a_share_for_every_scored_film_and_empty_for_failed_ones(
    folder, tiny_model_file, tiny_lung_file, plant_lungs, capsys
):
    status = main(["predict", "--model", str(tiny_model_file), "--lung-model",
                   str(tiny_lung_file), str(folder)])
    assert status == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(COLUMNS)
    rows = list(csv.DictReader(io.StringIO(out)))
    scored = [r for r in rows if not r["error"]]
    assert len(scored) == 2
    for r in scored:
        assert 0.0 <= float(r["lung_evidence"]) <= 1.0
        assert r["ood"] == "false" and r["flag"] == "none"  # planted lungs: a plausible pair
        assert r["advice"] == ("home" if r["label"] == "Normal" else "admit")
    failed = next(r for r in rows if r["error"])
    assert failed["lung_evidence"] == "" and failed["ood"] == "" and failed["flag"] == ""
    assert failed["advice"] == ""


def test_a_film_without_lungs_is_refused_in_the_csv(
    folder, tiny_model_file, tiny_lung_file, plant_lungs, capsys
):
    plant_lungs.mask_for = lambda shape: np.zeros(shape, bool)  # no lungs at all
    assert main(["predict", "--model", str(tiny_model_file), "--lung-model",
                 str(tiny_lung_file), str(folder / "a.png")]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["ood"] == "true" and row["flag"] == "not_chest" and row["error"] == ""
    assert row["label"] == row["advice"] == row["p_covid"] == row["lung_evidence"] == ""


def test_csv_text_cells_are_guarded_against_formulas(tmp_path, tiny_model_file, capsys,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, so that a cell starts with the name
    _png(tmp_path / "=cmd.png", 3)
    assert main(["predict", *NO_LUNGS, "--model", str(tiny_model_file), "=cmd.png",
                 "@gone.png"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["path"] == "'=cmd.png" and rows[0]["error"] == ""
    assert rows[1]["path"] == "'@gone.png" and rows[1]["error"] == "'@gone.png: no such file."


def test_without_a_segmenter_lung_evidence_is_empty(folder, tiny_model_file, tmp_path, capsys):
    assert main(["predict", "--model", str(tiny_model_file), "--lung-model",
                 str(tmp_path / "none.keras"), str(folder / "a.png")]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["error"] == "" and row["lung_evidence"] == ""


def test_a_three_class_model_fills_p_other_pneumonia(folder, tmp_path, tiny_cnn_factory,
                                                     tiny_metadata, capsys):
    from covid.model.network import save_with_metadata

    tiny_metadata.class_names = ["COVID", "Other pneumonia", "Normal"]
    model = tmp_path / "three.keras"
    save_with_metadata(tiny_cnn_factory(n_classes=3), tiny_metadata, model)
    assert main(["predict", *NO_LUNGS, "--model", str(model), str(folder / "a.png")]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    total = sum(float(row[c]) for c in ("p_covid", "p_other_pneumonia", "p_normal"))
    assert total == pytest.approx(1.0, abs=3e-6)
    assert row["label"] in tiny_metadata.class_names


def test_a_two_class_model_leaves_p_other_pneumonia_empty(folder, tmp_path, tiny_cnn_factory,
                                                          tiny_metadata, capsys):
    from covid.model.network import save_with_metadata

    tiny_metadata.class_names = ["COVID", "Normal"]
    model = tmp_path / "two.keras"
    save_with_metadata(tiny_cnn_factory(n_classes=2), tiny_metadata, model)
    assert main(["predict", *NO_LUNGS, "--model", str(model), str(folder / "a.png")]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["p_other_pneumonia"] == "" and row["p_covid"] != ""


@pytest.fixture(scope="module")
def opacity_file(tmp_path_factory):
    """A tiny opacity segmenter that finds opacity all over the lungs."""
    return save_tiny_opacity(tmp_path_factory.mktemp("opacity") / "opacity.keras")


def test_opacity_extent_and_severity_for_chest_films_only(
    folder, tiny_model_file, tiny_lung_file, plant_lungs, opacity_file, capsys
):
    models = ["--model", str(tiny_model_file), "--lung-model", str(tiny_lung_file),
              "--opacity-model", str(opacity_file)]
    assert main(["predict", *models, str(folder)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    scored = [r for r in rows if not r["error"]]
    assert len(scored) == 2
    for r in scored:  # opacity over all of both planted lungs: the highest grade
        assert r["flag"] == "none"
        assert float(r["opacity_extent"]) == pytest.approx(1.0)
        assert r["severity"] == "8"
    failed = next(r for r in rows if r["error"])
    assert failed["opacity_extent"] == failed["severity"] == ""

    plant_lungs.mask_for = lambda shape: np.zeros(shape, bool)  # refused: no lung field
    assert main(["predict", *models, str(folder / "a.png")]) == 0
    refused = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert refused["flag"] == "not_chest"
    assert refused["opacity_extent"] == refused["severity"] == ""


def test_without_the_opacity_segmenter_its_columns_are_empty(
    folder, tiny_model_file, tiny_lung_file, plant_lungs, tmp_path, capsys
):
    assert main(["predict", "--model", str(tiny_model_file), "--lung-model",
                 str(tiny_lung_file), "--opacity-model", str(tmp_path / "none.keras"),
                 "--format", "json", str(folder / "a.png")]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["flag"] == "none" and row["lung_evidence"] != ""
    assert row["opacity_extent"] == row["severity"] == ""


def test_table_format_gives_the_csv_rows_aligned(folder, tiny_model_file, capsys):
    args = ["predict", *NO_LUNGS, "--model", str(tiny_model_file), str(folder)]
    assert main(args) == 0
    as_csv = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert main([*args, "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(COLUMNS) and len(lines) == len(as_csv) + 1
    for line, row in zip(lines[1:], as_csv, strict=True):
        assert line.startswith(row["path"]) and row["p_covid"] in line


def test_batch_size_is_the_films_scored_together_by_the_local_engine(
    folder, tiny_model_file, capsys, monkeypatch
):
    from covid.screening import pipeline, scoring

    passes = []

    def recorded(files, classifier, **kwargs):
        passes.append((len(files), kwargs["batch_size"], classifier.batch_size))
        return analyse(files, classifier, **kwargs)

    analyse = pipeline.analyse  # scoring imports it when it scores (its importers need no TF)
    monkeypatch.setattr(pipeline, "analyse", recorded)
    args = ["predict", *NO_LUNGS, "--model", str(tiny_model_file), str(folder)]
    assert main(args) == 0  # three files, all read: one pass
    together = capsys.readouterr().out
    assert passes == [(3, 3, scoring.BATCH)]
    passes.clear()
    assert main([*args, "--batch-size", "2"]) == 0
    assert passes == [(2, 2, 2), (1, 1, 2)]
    assert capsys.readouterr().out == together  # the same rows, whatever the batches


def test_from_any_folder_the_shipped_models_are_found(tmp_path, monkeypatch, capsys):
    from covid.settings import LUNG_MODEL_ENV, MODEL_ENV, OPACITY_MODEL_ENV, settings

    for variable in (MODEL_ENV, LUNG_MODEL_ENV, OPACITY_MODEL_ENV):
        monkeypatch.delenv(variable, raising=False)
    if not settings().model_path.is_file():
        pytest.skip(f"no shipped model at {settings().model_path}")
    monkeypatch.chdir(tmp_path)  # no models/ here
    _png(tmp_path / "film.png", 4)
    assert main(["predict", "--format", "json", "film.png"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] == "film.png" and row["error"] == "" and row["flag"] != ""


def test_the_model_variable_is_honoured_from_any_folder(tmp_path, tiny_model_file, monkeypatch,
                                                        capsys):
    from covid.settings import LUNG_MODEL_ENV, MODEL_ENV

    monkeypatch.setenv(MODEL_ENV, str(tiny_model_file))
    monkeypatch.setenv(LUNG_MODEL_ENV, str(tmp_path / "none.keras"))
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "film.png", 5)
    assert main(["predict", "film.png"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["error"] == "" and _total(row) == pytest.approx(1.0, abs=3e-6)
