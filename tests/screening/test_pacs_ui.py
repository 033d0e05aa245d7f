"""The page's PACS source (``covid/app/pacs_ui.py``): who sees it, and a search against Orthanc.

Driven in-process by ``streamlit.testing.v1.AppTest``, against a real Orthanc: the
search, the retrieval, and "Send to PACS" / "Send all to PACS" storing each study's
report and map once. The sign-in itself (a real OpenID Connect provider in a
browser) is ``tests/app/test_browser_pacs.py``.
"""

import io

import pytest
from streamlit.testing.v1 import AppTest

from covid.app.pacs_ui import pacs_access
from covid.inputs.pacs import RESULT_SERIES_PREFIX
from covid.model.classes import FINDINGS, NORMAL
from covid.model.decision import decide
from covid.model.metadata import read_metadata_as
from covid.model.opacity import OpacityModelMetadata
from tests import pacs_server
from tests.pacs_server import PASSWORD, PATIENT_NAME, USER, ct_slice, dx_film, to_bytes

qido_stub = pacs_server.qido_stub  # registered here: the conftest is shared

TIMEOUT = 60


def source_page():
    import streamlit as st

    from covid.app.pacs_ui import pacs_source_ui

    files = pacs_source_ui()
    st.text(f"files: {sorted(name for name, _ in files)}")


@pytest.fixture
def pacs_settings(monkeypatch):
    for key in ("COVID_PACS_URL", "COVID_PACS_USER", "COVID_PACS_PASSWORD",
                "COVID_PACS_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_with_login_only_an_allowed_signed_in_user_sees_the_pacs():
    values = {"COVID_PACS_ALLOWED_EMAILS": "dr.who@example.org, a@b.c",
              "COVID_PACS_ALLOWED_GROUPS": ["radiology"]}
    visitor = pacs_access(values, auth_configured=True, user=None)
    assert not visitor.allowed and visitor.sign_in
    assert pacs_access(values, True, {"email": "Dr.Who@example.org"}).allowed
    assert pacs_access(values, True, {"email": "x@y.z", "groups": ["Radiology"]}).allowed
    stranger = pacs_access(values, True, {"email": "x@y.z", "groups": ["finance"]})
    assert not stranger.allowed and not stranger.sign_in
    # Anonymous access does not open a page that has a login.
    assert not pacs_access({**values, "COVID_PACS_ALLOW_ANONYMOUS": "1"}, True, None).allowed


def test_without_login_only_an_explicit_anonymous_setting_opens_it_and_says_so():
    unset = pacs_access({}, auth_configured=False, user=None)
    assert not unset.allowed and "COVID_PACS_URL" in unset.notice  # says how to configure
    locked = pacs_access({"COVID_PACS_URL": "https://pacs.example.org"}, False, None)
    assert not locked.allowed and "COVID_PACS_ALLOW_ANONYMOUS=1" in locked.notice
    opened = pacs_access({"COVID_PACS_ALLOW_ANONYMOUS": "1"}, False, None)
    assert opened.allowed and "COVID_PACS_ALLOW_ANONYMOUS=1" in opened.notice


def test_a_visitor_sees_no_pacs_by_default(pacs_settings):
    at = AppTest.from_function(source_page, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert len(at.expander) == 0 and at.text[0].value == "files: []"
    assert any("COVID_PACS_URL" in c.value for c in at.caption)  # and how to configure one


def test_the_tab_says_how_to_configure_a_pacs(pacs_settings):
    pacs_settings.setenv("COVID_PACS_ALLOW_ANONYMOUS", "1")
    at = AppTest.from_function(source_page, default_timeout=TIMEOUT).run()
    assert "No PACS is configured" in at.info[0].value
    assert "COVID_PACS_ALLOW_ANONYMOUS=1" in at.caption[0].value


def test_search_pick_and_retrieve_from_orthanc(loaded_orthanc, pacs_settings):
    server, _ = loaded_orthanc
    pacs_settings.setenv("COVID_PACS_ALLOW_ANONYMOUS", "1")
    pacs_settings.setenv("COVID_PACS_URL", server.url)
    pacs_settings.setenv("COVID_PACS_USER", USER)
    pacs_settings.setenv("COVID_PACS_PASSWORD", PASSWORD)
    at = AppTest.from_function(source_page, default_timeout=TIMEOUT).run()
    at.text_input(key="pacs_since").input("20240102")
    at.text_input(key="pacs_until").input("20240103")
    at.button[0].click().run()  # the form's Search
    choice = at.multiselect(key="pacs_chosen")
    labels = choice.options  # as shown: accession, date, description
    assert [label.split(" · ")[:2] for label in labels] == [["ACC002", "2024-01-02"],
                                                            ["ACC003", "2024-01-03"]]
    for part in PATIENT_NAME.split("^"):
        assert all(part not in label for label in labels)
    choice.select(at.session_state["pacs_studies"][1]).run()
    next(b for b in at.button if b.label == "Retrieve and score").click().run()
    assert not at.exception and not at.error
    assert at.text[0].value == "files: ['ACC003-PA-1.dcm']"


def test_a_search_the_server_caps_lists_what_came_and_says_so(qido_stub, pacs_settings):
    qido_stub.total, qido_stub.cap, qido_stub.reachable = 9, 3, 3  # warns, never gives more
    pacs_settings.setenv("COVID_PACS_ALLOW_ANONYMOUS", "1")
    pacs_settings.setenv("COVID_PACS_URL", qido_stub.url)
    at = AppTest.from_function(source_page, default_timeout=TIMEOUT).run()
    next(b for b in at.button if b.label == "Search").click().run()
    assert not at.exception and not at.error
    assert len(at.multiselect(key="pacs_chosen").options) == 3
    assert at.warning[0].value.startswith("Showing the first 3 chest studies: the PACS holds")


def test_a_wrong_password_is_shown_without_a_traceback(orthanc, pacs_settings):
    pacs_settings.setenv("COVID_PACS_ALLOW_ANONYMOUS", "1")
    pacs_settings.setenv("COVID_PACS_URL", orthanc.url)
    pacs_settings.setenv("COVID_PACS_USER", USER)
    pacs_settings.setenv("COVID_PACS_PASSWORD", "wrong-password-here")
    at = AppTest.from_function(source_page, default_timeout=TIMEOUT).run()
    at.button[0].click().run()
    assert not at.exception
    assert "refused the user name or password" in at.error[0].value
    assert "wrong-password-here" not in at.error[0].value


# ------------------------------------------------------------------ sending the results


def send_page(classifier, uploads=(), threshold=None, ood=None, opacities=False):
    import streamlit as st

    from covid.app import state
    from covid.app.pacs_ui import pacs_source_ui, send_all_ui, send_study_ui
    from covid.app.resources import opacity_for, segmenter_for
    from covid.screening.studies import at_threshold, score_files

    pacs_source_ui()
    # What was retrieved, even once the panel is hidden: the send buttons gate themselves.
    files = [*uploads, *state.pacs_files()]
    if not files:
        return
    threshold = classifier.metadata.threshold if threshold is None else threshold
    maps = st.session_state.setdefault("maps", {})
    # With opacities, the models the screening page loads score the films (its load_ui).
    segmenter = segmenter_for(classifier) if opacities else None
    studies = at_threshold(score_files(files, classifier, st.session_state.setdefault(
        "studies", {}), ood=ood, segmenter=segmenter, opacity=opacity_for(segmenter)),
        threshold)
    send_all_ui(studies, classifier, maps, threshold)  # as under the triage table
    for study in studies:  # as in each study's view
        st.text(f"study: {study.result.name}")
        send_study_ui(study, classifier, maps, threshold)


@pytest.fixture(scope="module")
def classifier(tiny_model_file):
    from covid.explain.inference import Classifier

    return Classifier.from_file(tiny_model_file)


def _open_pacs(monkeypatch, server):
    for key, value in (("COVID_PACS_ALLOW_ANONYMOUS", "1"), ("COVID_PACS_URL", server.url),
                       ("COVID_PACS_USER", USER), ("COVID_PACS_PASSWORD", PASSWORD)):
        monkeypatch.setenv(key, value)


def _retrieve_every_study(at):
    """Searches with no filter, picks every study and retrieves them."""
    next(b for b in at.button if b.label == "Search").click().run()
    at.multiselect(key="pacs_chosen").set_value(at.session_state["pacs_studies"]).run()
    next(b for b in at.button if b.label == "Retrieve and score").click().run()
    assert not at.exception and not at.error


def _buttons(at, label):
    return [b for b in at.button if b.label == label]


def _result_series(server) -> list[tuple[str, str]]:
    """(modality, description) of each series the tool stored, from Orthanc's own API."""
    tags = [s["MainDicomTags"] for s in server.rest("/series?expand")]
    return sorted((t.get("Modality", ""), t.get("SeriesDescription", "")) for t in tags
                  if t.get("SeriesDescription", "").startswith(RESULT_SERIES_PREFIX))


def _shown(at) -> str:
    return " ".join(str(e.value) for e in [*at.text, *at.success, *at.info, *at.error,
                                            *at.caption])


def test_send_to_pacs_stores_the_report_and_map_once(orthanc, film_pixels, classifier,
                                                     pacs_settings):
    orthanc.upload(to_bytes(dx_film(film_pixels[0], "ACC001", "20240101")))
    _open_pacs(pacs_settings, orthanc)
    at = AppTest.from_function(send_page, args=(classifier,), default_timeout=TIMEOUT).run()
    _retrieve_every_study(at)
    assert [t.value for t in at.text] == ["study: ACC001-PA-1.dcm"]

    _buttons(at, "Send to PACS")[0].click().run()
    assert not at.exception and not at.error
    assert "ACC001-PA-1.dcm: the report and the map were stored" in at.success[0].value
    assert orthanc.instance_count() == 3  # the film, its SR and its map
    assert [m for m, _ in _result_series(orthanc)] == ["OT", "SR"]

    _buttons(at, "Send to PACS")[0].click().run()  # again: nothing new
    assert not at.success and "nothing new was stored" in at.info[0].value
    assert orthanc.instance_count() == 3
    for part in (PASSWORD, *PATIENT_NAME.split("^")):
        assert part not in _shown(at)


def test_send_all_sends_what_is_missing_and_says_when_nothing_is_new(
        orthanc, film_pixels, classifier, pacs_settings):
    for pixels, accession in zip(film_pixels[:2], ("ACC001", "ACC002"), strict=True):
        orthanc.upload(to_bytes(dx_film(pixels, accession, "20240101")))
    upload = to_bytes(dx_film(film_pixels[2], "ACC-UPLOAD", "20240101"))  # never in the PACS
    _open_pacs(pacs_settings, orthanc)
    at = AppTest.from_function(send_page, args=(classifier, [("upload.dcm", upload)]),
                               default_timeout=TIMEOUT).run()
    _retrieve_every_study(at)
    assert len(at.text) == 3 and len(_buttons(at, "Send to PACS")) == 2  # not the upload
    _buttons(at, "Send to PACS")[0].click().run()  # one study first
    assert orthanc.instance_count() == 4

    _buttons(at, "Send all to PACS (2)")[0].click().run()
    assert not at.exception and not at.error
    assert at.success[0].value == ("Stored the results of 1 study on the PACS; 1 already "
                                   "held them.")
    assert orthanc.instance_count() == 6 and len(_result_series(orthanc)) == 4

    _buttons(at, "Send all to PACS (2)")[0].click().run()
    assert not at.success
    assert at.info[0].value == ("Nothing new was stored: the PACS already holds the results "
                                "of 2 studies.")
    assert orthanc.instance_count() == 6


def test_a_failed_send_names_the_study_without_a_traceback(orthanc, film_pixels, classifier,
                                                            pacs_settings):
    orthanc.upload(to_bytes(dx_film(film_pixels[0], "ACC001", "20240101")))
    _open_pacs(pacs_settings, orthanc)
    at = AppTest.from_function(send_page, args=(classifier,), default_timeout=TIMEOUT).run()
    _retrieve_every_study(at)
    orthanc.stop()  # the PACS goes down between retrieval and sending
    _buttons(at, "Send all to PACS (1)")[0].click().run()
    assert not at.exception and not at.success
    assert at.error[0].value.startswith("ACC001-PA-1.dcm: the results could not be sent:")
    assert PASSWORD not in at.error[0].value


def test_no_send_button_for_a_visitor_who_may_not_use_the_pacs(orthanc, film_pixels,
                                                               classifier, pacs_settings):
    orthanc.upload(to_bytes(dx_film(film_pixels[0], "ACC001", "20240101")))
    _open_pacs(pacs_settings, orthanc)
    at = AppTest.from_function(send_page, args=(classifier,), default_timeout=TIMEOUT).run()
    _retrieve_every_study(at)
    assert _buttons(at, "Send to PACS")
    pacs_settings.setenv("COVID_PACS_ALLOW_ANONYMOUS", "0")  # the administrator closes it
    at.run()
    assert [t.value for t in at.text] == ["study: ACC001-PA-1.dcm"]  # still scored
    assert not _buttons(at, "Send to PACS") and not _buttons(at, "Send all to PACS (1)")


def test_a_study_relabelled_at_another_operating_point_sends_its_new_label(
        orthanc, film_pixels, classifier, pacs_settings):
    from covid.inputs.pacs import PacsClient, PacsConfig
    from covid.screening.pacs_results import result_uids

    film = dx_film(film_pixels[0], "ACC001", "20240101")
    orthanc.upload(to_bytes(film))
    _open_pacs(pacs_settings, orthanc)
    client = PacsClient(PacsConfig(orthanc.url, user=USER, password=PASSWORD))
    meta = classifier.metadata
    labels = []
    for threshold in (0.0, 1.0):  # always / never a finding
        at = AppTest.from_function(send_page, args=(classifier,), kwargs={"threshold": threshold},
                                   default_timeout=TIMEOUT).run()
        _retrieve_every_study(at)
        _buttons(at, "Send to PACS")[0].click().run()
        assert not at.exception and not at.error and at.success
        (result,) = at.session_state["studies"].values()
        labels.append(decide(result.probs, meta.class_names, threshold).label)
        uids = result_uids(str(film.SOPInstanceUID), meta.sha256, labels[-1], "gradcam")
        for uid in (uids.sr, uids.sc):
            assert client.has_instance(str(film.StudyInstanceUID), uid)
    assert labels[0] in FINDINGS and labels[1] == NORMAL
    assert orthanc.instance_count() == 5  # the film, and an SR and a map for each label


@pytest.fixture
def opacity_models(tiny_lung_file, tmp_path, plant_lungs, pacs_settings):
    """The page's lung and opacity segmenters: tiny, the latter outlining all the lungs."""
    from tests.opacity_models import save_tiny_opacity

    path = save_tiny_opacity(tmp_path / "opacity.keras")
    pacs_settings.setenv("COVID_LUNG_MODEL_PATH", str(tiny_lung_file))
    pacs_settings.setenv("COVID_OPACITY_MODEL_PATH", str(path))
    return read_metadata_as(OpacityModelMetadata, path)


def test_the_page_sends_the_opacity_segmenter_it_scored_with_as_the_command_line_does(
        orthanc, film_pixels, classifier, pacs_settings, opacity_models):
    import highdicom as hd
    from highdicom.sr.utils import find_content_items
    from pydicom.sr.codedict import codes

    from covid.inputs.pacs import InstanceRecord, PacsClient, PacsConfig
    from covid.screening.pacs_results import RALE_SCORE, result_uids

    film = dx_film(film_pixels[0], "ACC001", "20240101")
    orthanc.upload(to_bytes(film))
    _open_pacs(pacs_settings, orthanc)
    at = AppTest.from_function(send_page, args=(classifier,), kwargs={"opacities": True},
                               default_timeout=TIMEOUT).run()
    _retrieve_every_study(at)
    (result,) = at.session_state["studies"].values()
    assert result.opacity is not None and result.opacity.severity.score == 8  # all the lungs
    _buttons(at, "Send to PACS")[0].click().run()
    assert not at.exception and not at.error and at.success

    meta = classifier.metadata
    label = decide(result.probs, meta.class_names, meta.threshold).label
    uids = result_uids(str(film.SOPInstanceUID), meta.sha256, label, "gradcam",
                       opacity_models.sha256)  # the UIDs pacs --send derives with the segmenter
    client = PacsClient(PacsConfig(orthanc.url, user=USER, password=PASSWORD))
    sr = hd.sr.srread(io.BytesIO(client.retrieve(InstanceRecord(
        str(film.StudyInstanceUID), uids.sr_series, uids.sr, "SR", ""))))
    group = sr.content.get_image_measurement_groups()[0]
    (score,) = [m for m in group.get_measurements() if m.name.meaning == RALE_SCORE]
    assert score.value == 8
    named = [item.TextValue for item in find_content_items(
        score[0], name=codes.DCM.AlgorithmName, recursive=True)]
    assert named == [opacity_models.name]  # the segmenter identified, not only its figures
    assert client.has_instance(str(film.StudyInstanceUID), uids.sc)
    assert orthanc.instance_count() == 3


class RefuseCtSlices:
    """An OOD gate that refuses the 256-px CT slice as not a chest X-ray, and nothing else."""

    def assess(self, decoded, features, lungs=None):
        from covid.model.decision import FLAG_NONE, FLAG_NOT_CHEST
        from covid.screening.ood import OODResult

        if decoded.pixels.shape == (256, 256):
            return OODResult(FLAG_NOT_CHEST, float("nan"), "it is a CT slice.")
        return OODResult(FLAG_NONE, float("nan"))


def test_a_film_refused_as_not_a_chest_x_ray_is_never_sent(orthanc, film_pixels, classifier,
                                                            pacs_settings):
    orthanc.upload(to_bytes(dx_film(film_pixels[0], "ACC001", "20240101")))
    orthanc.upload(to_bytes(dx_film(ct_slice(), "ACC-CT-DX", "20240102",
                                    RescaleIntercept=-1024, RescaleSlope=1)))
    _open_pacs(pacs_settings, orthanc)
    at = AppTest.from_function(send_page, args=(classifier,), kwargs={"ood": RefuseCtSlices()},
                               default_timeout=TIMEOUT).run()
    _retrieve_every_study(at)
    assert len(at.text) == 2 and len(_buttons(at, "Send to PACS")) == 1
    _buttons(at, "Send all to PACS (1)")[0].click().run()
    assert not at.exception and not at.error
    assert at.success[0].value == "Stored the results of 1 study on the PACS."
    assert orthanc.instance_count() == 4  # two films, and the chest film's SR and map
