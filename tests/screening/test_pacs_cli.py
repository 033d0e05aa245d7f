"""``python -m covid pacs`` against a real Orthanc holding real films, with the tiny models."""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from covid.__main__ import main
from covid.model.opacity import MAX_SCORE
from covid.screening import scoring
from covid.screening.pacs_cli import COLUMNS
from covid.screening.pacs_results import RALE_SCORE
from tests.conftest import planted_lungs
from tests.pacs_server import PASSWORD, PATIENT_NAME, USER


@pytest.fixture
def pacs_env(monkeypatch):
    """Points the command's credentials at a test server's user."""
    monkeypatch.setenv("COVID_PACS_USER", USER)
    monkeypatch.setenv("COVID_PACS_PASSWORD", PASSWORD)
    monkeypatch.delenv("COVID_PACS_URL", raising=False)


def run_pacs(server, models, *extra):
    model, lungs, opacity = models
    return main(["pacs", "--url", server.url, "--model", str(model), "--lung-model", str(lungs),
                 "--opacity-model", str(opacity), *extra])


@pytest.fixture(scope="module")
def opacity_file(tmp_path_factory):
    from tests.opacity_models import save_tiny_opacity

    return save_tiny_opacity(tmp_path_factory.mktemp("opacity") / "opacity.keras")


@pytest.fixture
def models(tiny_model_file, tiny_lung_file, opacity_file, plant_lungs):
    # The CT slice (256 px) gets no lungs, the films (224 px) a plausible pair; the tiny
    # opacity segmenter sees opacity all over the lungs it is given.
    plant_lungs.mask_for = lambda shape: (planted_lungs(shape) if shape == (224, 224)
                                          else np.zeros(shape, bool))
    return tiny_model_file, tiny_lung_file, opacity_file


def rows_of(out: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(out)))


def test_one_row_per_chest_instance_with_the_predict_columns(loaded_orthanc, models, pacs_env,
                                                              capsys):
    server, stored = loaded_orthanc
    assert run_pacs(server, models) == 0
    captured = capsys.readouterr()
    header = captured.out.splitlines()[0].split(",")
    assert header == ["study_uid", "sop_instance_uid",
                      *[c for c in scoring.COLUMNS if c != "path"], "sent"]
    assert tuple(header) == COLUMNS
    rows = rows_of(captured.out)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted([*stored.films,
                                                                  stored.disguised])
    assert stored.ct_study not in {r["study_uid"] for r in rows}
    assert all(r["error"] == "" and r["sent"] == "no" for r in rows)
    for part in PATIENT_NAME.split("^"):
        assert part not in captured.out + captured.err


def test_p_covid_equals_predict_for_the_same_pixels(loaded_orthanc, models, pacs_env, capsys,
                                                     tmp_path):
    server, stored = loaded_orthanc
    paths = {}
    for uid, pixels in stored.films.items():
        paths[uid] = tmp_path / f"{uid}.png"
        Image.fromarray(pixels).save(paths[uid])
    assert run_pacs(server, models) == 0
    from_pacs = {r["sop_instance_uid"]: r for r in rows_of(capsys.readouterr().out)}
    model, lungs, opacity = models
    assert main(["predict", "--model", str(model), "--lung-model", str(lungs),
                 "--opacity-model", str(opacity), *map(str, paths.values())]) == 0
    from_files = {r["path"]: r for r in rows_of(capsys.readouterr().out)}
    for uid, path in paths.items():
        expected, got = from_files[str(path)], from_pacs[uid]
        assert abs(float(got["p_covid"]) - float(expected["p_covid"])) <= 1e-3
        for column in ("label", "lung_evidence", "opacity_extent", "severity"):
            assert got[column] == expected[column], column


def test_the_disguised_ct_slice_is_refused(loaded_orthanc, models, pacs_env, capsys):
    server, stored = loaded_orthanc
    assert run_pacs(server, models) == 0
    rows = {r["sop_instance_uid"]: r for r in rows_of(capsys.readouterr().out)}
    disguised = rows[stored.disguised]
    assert (disguised["ood"], disguised["flag"], disguised["label"], disguised["advice"]) == (
        "true", "not_chest", "", "")
    assert {rows[uid]["ood"] for uid in stored.films} == {"false"}
    assert {rows[uid]["flag"] for uid in stored.films} == {"none"}
    assert {rows[uid]["advice"] for uid in stored.films} <= {"admit", "home"}
    assert (disguised["opacity_extent"], disguised["severity"]) == ("", "")
    assert {rows[uid]["severity"] for uid in stored.films} == {str(MAX_SCORE)}


def test_table_format_and_date_range(loaded_orthanc, models, pacs_env, capsys):
    server, _ = loaded_orthanc
    assert run_pacs(server, models, "--format", "table", "--since", "20240102",
                    "--until", "20240103") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert len(lines) == 3


def test_json_format_gives_the_same_rows_as_csv(loaded_orthanc, models, pacs_env, capsys):
    import json

    server, _ = loaded_orthanc
    dates = ("--since", "20240102", "--until", "20240103")
    assert run_pacs(server, models, *dates) == 0
    as_csv = rows_of(capsys.readouterr().out)
    assert run_pacs(server, models, "--format", "json", *dates) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert [list(r) for r in as_json] == [list(COLUMNS)] * 2
    assert [r["sop_instance_uid"] for r in as_json] == [r["sop_instance_uid"] for r in as_csv]
    assert [str(r["severity"]) for r in as_json] == [r["severity"] for r in as_csv]


def test_send_gives_a_row_per_film_an_sr_and_map_per_scored_film_and_is_idempotent(
        orthanc, film_pixels, models, pacs_env, capsys):
    """The issue's check, smaller: films lacking birth date, sex and accession among them."""
    from tests.pacs_server import load_studies

    stored = load_studies(orthanc, film_pixels[:2])
    before = orthanc.instance_count()
    assert run_pacs(orthanc, models, "--send") == 0
    captured = capsys.readouterr()
    first = rows_of(captured.out)
    assert sorted(r["sop_instance_uid"] for r in first) == sorted([*stored.films,
                                                                   stored.disguised])
    assert all(r["error"] == "" for r in first)
    refused = {r["sop_instance_uid"] for r in first if r["flag"] == "not_chest"}
    assert refused == {stored.disguised}  # a CT slice: refused, so nothing sent
    sent = [r for r in first if r["sop_instance_uid"] not in refused]
    assert {r["sent"] for r in sent} == {"yes"} and len(sent) == 4
    assert {r["sent"] for r in first if r["sop_instance_uid"] in refused} == {"no"}
    assert {r["sop_instance_uid"] for r in sent} >= set(stored.bare)
    assert orthanc.instance_count() == before + 2 * len(sent)
    for row in first:  # each scored study now holds the film, its SR and its map
        expected = ["DX"] if row["sop_instance_uid"] in refused else ["DX", "OT", "SR"]
        assert sorted(_study_modalities(orthanc, row["study_uid"])) == expected
    assert {_sr_score(orthanc, r["study_uid"]) for r in sent} == {MAX_SCORE}  # the SR's grade

    assert run_pacs(orthanc, models, "--send") == 0  # again: nothing new, no duplicates
    second = rows_of(capsys.readouterr().out)
    assert [r["sop_instance_uid"] for r in second] == [r["sop_instance_uid"] for r in first]
    assert {r["sent"] for r in second if r["sop_instance_uid"] not in refused} == {"already"}
    assert orthanc.instance_count() == before + 2 * len(sent)
    assert stored.ct_study not in {r["study_uid"] for r in second}
    for part in PATIENT_NAME.split("^"):
        assert part not in captured.out + captured.err
    assert "Traceback" not in captured.err


def test_a_study_whose_results_cannot_be_built_gets_its_error_and_the_run_goes_on(
        orthanc, film_pixels, models, pacs_env, capsys):
    from tests.pacs_server import dx_film, to_bytes

    good = dx_film(film_pixels[0], "GOOD", "20240101")
    bad = dx_film(film_pixels[1], "BAD", "20240102", PatientOrientation=["X", "Y"])
    for film in (bad, good):
        orthanc.upload(to_bytes(film))
    assert run_pacs(orthanc, models, "--send") == 1
    captured = capsys.readouterr()
    rows = {r["sop_instance_uid"]: r for r in rows_of(captured.out)}
    assert rows[good.SOPInstanceUID]["sent"] == "yes" and rows[good.SOPInstanceUID]["error"] == ""
    failed = rows[bad.SOPInstanceUID]
    assert failed["sent"] == "failed" and failed["label"]  # scored, but not sent
    assert failed["error"].startswith(f"the results could not be sent: {bad.SOPInstanceUID}: "
                                      "the results could not be built (ValueError:")
    assert captured.err.splitlines()[-1] == ("error: 1 of 2 instances failed; the error column "
                                             "of each says why.")
    assert "Traceback" not in captured.err
    for part in PATIENT_NAME.split("^"):
        assert part not in captured.out + captured.err


def test_csv_text_is_guarded_against_formulas(capsys):
    import sys

    from covid.screening.output import write_rows

    row = dict.fromkeys(COLUMNS, "")
    row.update(study_uid="1.2.3", error="=HYPERLINK(\"http://x\")", p_covid=0.25, sent="no")
    write_rows(iter([row]), COLUMNS, "csv", sys.stdout)
    written = rows_of(capsys.readouterr().out)[0]
    assert written["error"] == "'=HYPERLINK(\"http://x\")"
    assert (written["study_uid"], written["p_covid"]) == ("1.2.3", "0.25")


def _sr_score(server, study_uid: str) -> float:
    """The modified RALE score measured in the study's Structured Report."""
    import highdicom as hd
    import requests

    (sr_series,) = [s for s in _series(server, study_uid)
                    if s["MainDicomTags"]["Modality"] == "SR"]
    (instance,) = sr_series["Instances"]
    answer = requests.get(f"{server.root}/instances/{instance}/file", auth=(USER, PASSWORD),
                          timeout=30)
    answer.raise_for_status()
    group = hd.sr.srread(io.BytesIO(answer.content)).content.get_image_measurement_groups()[0]
    (score,) = [m.value for m in group.get_measurements() if m.name.meaning == RALE_SCORE]
    return float(score)


def _series(server, study_uid: str) -> list[dict]:
    import requests

    answer = requests.post(f"http://127.0.0.1:{server.port}/tools/find", auth=(USER, PASSWORD),
                           json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                 "Expand": True}, timeout=30)
    answer.raise_for_status()
    return answer.json()


def _study_modalities(server, study_uid: str) -> list[str]:
    return [s["MainDicomTags"]["Modality"] for s in _series(server, study_uid)]


def test_a_wrong_password_exits_non_zero_with_a_clear_message(orthanc, models, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("COVID_PACS_USER", USER)
    monkeypatch.setenv("COVID_PACS_PASSWORD", "not-the-password")
    assert run_pacs(orthanc, models) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "refused the user name or password (HTTP 401)" in captured.err
    assert "not-the-password" not in captured.err and "Traceback" not in captured.err


def test_a_stopped_server_exits_non_zero(orthanc, models, pacs_env, capsys):
    orthanc.stop()
    assert run_pacs(orthanc, models) == 1
    assert "cannot connect to the PACS" in capsys.readouterr().err


def test_without_a_pacs_the_command_says_how_to_configure_one(models, pacs_env, capsys):
    model, lungs, _ = models
    assert main(["pacs", "--model", str(model), "--lung-model", str(lungs)]) == 1
    assert "COVID_PACS_URL" in capsys.readouterr().err


def test_a_bad_date_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["pacs", "--url", "http://127.0.0.1:1", "--since", "2024-01-01"])
    assert exc.value.code == 2
