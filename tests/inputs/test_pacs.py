"""The DICOMweb client against a real Orthanc: search, retrieval and every failure, named."""

import dataclasses
import os
import signal

import numpy as np
import pytest
from pydicom.uid import RLELossless, generate_uid

from covid.inputs import pacs
from covid.inputs.decode import ImageDecodeError, decode_image
from covid.inputs.pacs import (
    InstanceRecord,
    PacsAuthError,
    PacsClient,
    PacsConfig,
    PacsConfigError,
    PacsRequestError,
    PacsUnavailableError,
    StudyQuery,
    safe_url,
)
from tests import pacs_server
from tests.pacs_server import PASSWORD, PATIENT_NAME, USER, ct_slice, dx_film, instance, to_bytes

# The server fixtures, registered in this module (tests/conftest.py is not ours to change).
orthanc = pacs_server.orthanc
film_pixels = pacs_server.film_pixels
loaded_orthanc = pacs_server.loaded_orthanc
tls_server = pacs_server.tls_server
qido_stub = pacs_server.qido_stub


def client_for(server, page_size=pacs.SEARCH_PAGE, max_matches=pacs.MAX_MATCHES,
               **overrides) -> PacsClient:
    settings = {"url": server.url, "user": USER, "password": PASSWORD, **overrides}
    return PacsClient(PacsConfig(**settings), page_size=page_size, max_matches=max_matches)


# ------------------------------------------------------------------ configuration


def test_settings_come_from_the_environment_and_none_without_an_address():
    config = PacsConfig.from_settings({"COVID_PACS_URL": "https://pacs.example.org/dicom-web/",
                                       "COVID_PACS_USER": "u", "COVID_PACS_PASSWORD": "pw",
                                       "COVID_PACS_TIMEOUT": "5"})
    assert config.url == "https://pacs.example.org/dicom-web"
    assert (config.user, config.password, config.timeout, config.verify) == ("u", "pw", 5.0, True)
    assert PacsConfig.from_settings({}) is None
    override = PacsConfig.from_settings({"COVID_PACS_URL": "http://a"}, url="http://b:8042")
    assert override.url == "http://b:8042"


def test_the_password_never_shows_in_a_config_repr():
    config = PacsConfig("https://pacs.example.org", user="admin", password="hunter22")
    assert "hunter22" not in repr(config) and "admin" not in repr(config)


@pytest.mark.parametrize("url", ["ftp://pacs", "pacs.example.org", "https://u:p@pacs/dicom-web",
                                 "https://pacs/dicom-web?x=1"])
def test_malformed_or_credential_bearing_addresses_are_refused(url):
    with pytest.raises(PacsConfigError) as err:
        PacsConfig(url)
    assert ":p@" not in str(err.value)


def test_tls_verification_cannot_be_switched_off():
    with pytest.raises(PacsConfigError, match="TLS verification"):
        PacsConfig("https://pacs", verify=False)


def test_safe_url_strips_credentials():
    assert safe_url("https://u:secret@pacs:8443/dicom-web?q=1") == "https://pacs:8443/dicom-web"


@pytest.mark.parametrize("fields", [{"since": "2024-01-01"}, {"until": "20241301"},
                                    {"since": "20240105", "until": "20240101"},
                                    {"accession": "ACC*"}, {"patient_id": "P?"}])
def test_bad_queries_are_refused(fields):
    with pytest.raises(PacsConfigError):
        StudyQuery(**fields)


def test_query_filters_use_a_dicom_date_range():
    assert StudyQuery(since="20240101").filters() == {"StudyDate": "20240101-"}
    assert StudyQuery(until="20240102", accession="A1").filters() == {
        "StudyDate": "-20240102", "AccessionNumber": "A1"}


# ------------------------------------------------------------------ search


def test_search_finds_chest_studies_by_date_range_and_leaves_the_ct_study_out(loaded_orthanc):
    server, stored = loaded_orthanc
    client = client_for(server)
    search = client.search_studies(StudyQuery())
    everything = search.studies
    assert search.complete and search.note == ""
    assert [s.accession for s in everything] == ["ACC001", "ACC002", "ACC003", "ACC004",
                                                 "ACC-CT-DX", "", ""]  # the bare films last
    assert stored.ct_study not in {s.study_uid for s in everything}
    ranged = client.search_studies(StudyQuery(since="20240102", until="20240103")).studies
    assert [(s.accession, s.date) for s in ranged] == [("ACC002", "20240102"),
                                                       ("ACC003", "20240103")]
    assert ranged[0].modalities == ("DX",) and ranged[0].description == "XR CHEST"


def test_search_by_accession_and_by_patient_id(loaded_orthanc):
    client = client_for(loaded_orthanc[0])
    found = client.search_studies(StudyQuery(accession="ACC003")).studies
    assert [s.accession for s in found] == ["ACC003"]
    assert len(client.search_studies(StudyQuery(patient_id="PID-1")).studies) == 7
    assert client.search_studies(StudyQuery(patient_id="nobody")).studies == ()


def test_a_search_pages_through_orthanc_and_finds_every_study(loaded_orthanc):
    server, _ = loaded_orthanc
    whole = client_for(server).search_studies(StudyQuery())
    paged = client_for(server, page_size=2).search_studies(StudyQuery())
    assert paged == whole and len(paged.studies) == 7 and paged.complete


def test_a_search_that_reaches_its_limit_says_it_shows_the_first_studies(loaded_orthanc):
    server, _ = loaded_orthanc
    client = client_for(server, page_size=2, max_matches=3)
    search = client.search_studies(StudyQuery())
    shown = len(search.studies)  # of the first three studies, the chest ones
    assert 0 < shown <= 3 and not search.complete
    assert search.note.startswith(f"Showing the first {shown} chest studies: the PACS holds")
    assert client.find_instances(StudyQuery()).notes[0] == search.note


def test_a_study_s_instances_are_paged_too(orthanc, film_pixels):
    study, series = generate_uid(), generate_uid()
    for number in (1, 2, 3):
        orthanc.upload(to_bytes(instance(film_pixels[0], study, series, "DX",
                                         pacs_server.DX_SOP_CLASS, InstanceNumber=number,
                                         AccessionNumber="THREE")))
    record = client_for(orthanc).search_studies(StudyQuery()).studies[0]
    kept, notes = client_for(orthanc, page_size=2).study_instances(record)
    assert len({r.sop_instance_uid for r in kept}) == 3 and notes == []
    kept, notes = client_for(orthanc, page_size=2, max_matches=2).study_instances(record)
    assert len(kept) == 2
    assert notes == ["study THREE: only the first 2 instances were listed; the PACS holds more."]


def test_a_server_that_warns_of_more_results_is_asked_for_them(qido_stub):
    qido_stub.total, qido_stub.cap = 7, 3  # three per answer, then "Warning: 299"
    search = PacsClient(PacsConfig(qido_stub.url)).search_studies(StudyQuery())
    assert len(search.studies) == 7 and search.complete
    assert qido_stub.requests == 3


def test_a_server_that_caps_its_results_is_shown_as_the_first_n(qido_stub):
    qido_stub.total, qido_stub.cap, qido_stub.reachable = 9, 3, 3  # warns, never gives more
    search = PacsClient(PacsConfig(qido_stub.url)).search_studies(StudyQuery())
    assert len(search.studies) == 3 and not search.complete
    assert "Showing the first 3 chest studies" in search.note


def test_a_server_that_ignores_offset_never_loops(qido_stub):
    qido_stub.total, qido_stub.honour_offset = 6, False  # dicomweb-client's paging loops here
    search = PacsClient(PacsConfig(qido_stub.url), page_size=4).search_studies(StudyQuery())
    assert len(search.studies) == 4 and not search.complete  # a full page, then repeats
    assert qido_stub.requests == 2
    qido_stub.requests = 0
    whole = PacsClient(PacsConfig(qido_stub.url), page_size=10).search_studies(StudyQuery())
    assert len(whole.studies) == 6 and whole.complete and qido_stub.requests == 1


def test_records_hold_no_patient_name(loaded_orthanc):
    client = client_for(loaded_orthanc[0])
    listing = client.find_instances(StudyQuery())
    text = repr(client.search_studies(StudyQuery())) + repr(listing)
    for part in PATIENT_NAME.split("^"):
        assert part not in text
    assert {f.name for f in dataclasses.fields(InstanceRecord)}.isdisjoint(
        {"patient_name", "name"})


def test_every_chest_instance_is_listed_once(loaded_orthanc):
    server, stored = loaded_orthanc
    listing = client_for(server).find_instances(StudyQuery())
    uids = [i.sop_instance_uid for i in listing.instances]
    assert sorted(uids) == sorted([*stored.films, stored.disguised])
    assert {i.modality for i in listing.instances} == {"DX"}
    assert {i.view for i in listing.instances} == {"PA"}
    assert listing.notes == ()


def test_a_ct_series_in_a_chest_study_is_left_out_with_a_note(orthanc, film_pixels):
    film = dx_film(film_pixels[0], "MIXED", "20240301")
    orthanc.upload(to_bytes(film))
    ct = instance(ct_slice(), film.StudyInstanceUID, generate_uid(), "CT",
                  pacs_server.CT_SOP_CLASS, AccessionNumber="MIXED", StudyDate="20240301")
    orthanc.upload(to_bytes(ct))
    listing = client_for(orthanc).find_instances(StudyQuery())
    assert [i.sop_instance_uid for i in listing.instances] == [film.SOPInstanceUID]
    assert listing.notes == ("study MIXED: 1 CT instance left out (not a chest radiograph).",)


# ------------------------------------------------------------------ retrieval


def test_retrieval_gives_the_stored_pixels(loaded_orthanc):
    server, stored = loaded_orthanc
    client = client_for(server)
    for record in client.find_instances(StudyQuery()).instances:
        if record.sop_instance_uid not in stored.films:
            continue
        data = client.retrieve(record)
        assert data[128:132] == b"DICM"
        decoded = decode_image(data, record.sop_instance_uid)
        np.testing.assert_array_equal(decoded.pixels, stored.films[record.sop_instance_uid])


def test_a_compressed_instance_arrives_as_stored_and_decodes(loaded_orthanc):
    import io

    import pydicom

    server, stored = loaded_orthanc
    client = client_for(server)
    record = next(i for i in client.find_instances(StudyQuery()).instances
                  if i.sop_instance_uid == stored.compressed)
    data = client.retrieve(record)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(decode_image(data, "x").pixels, stored.films[stored.compressed])


def test_a_transfer_syntax_the_server_cannot_make_is_a_named_error(loaded_orthanc):
    client = client_for(loaded_orthanc[0])
    record = client.find_instances(StudyQuery()).instances[0]
    jpeg2000 = (("application/dicom", "1.2.840.10008.1.2.4.90"),)
    # Orthanc 1.10 answers 500 here (newer ones 406): either way a named error, no traceback.
    with pytest.raises(PacsRequestError, match=r"^retrieving: the PACS at http.* HTTP (406|5)"):
        client._call("retrieving", lambda: client._web.retrieve_instance(
            record.study_uid, record.series_uid, record.sop_instance_uid, media_types=jpeg2000))


def test_no_pixel_data_and_an_unknown_compression_get_clear_decode_errors(orthanc, film_pixels):
    empty = dx_film(film_pixels[0], "EMPTY", "20240401")
    del empty.PixelData
    video = dx_film(film_pixels[0], "VIDEO", "20240402")
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder here
    from pydicom.encaps import encapsulate

    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    orthanc.upload(to_bytes(empty))
    orthanc.upload(to_bytes(video))
    client = client_for(orthanc)
    records = {r.accession: r for r in client.find_instances(StudyQuery()).instances}
    with pytest.raises(ImageDecodeError, match="holds no image"):
        decode_image(client.retrieve(records["EMPTY"]), "empty")
    with pytest.raises(ImageDecodeError, match=r"MPEG2.*cannot be decoded"):
        decode_image(client.retrieve(records["VIDEO"]), "video")


# ------------------------------------------------------------------ failures


def test_a_wrong_password_is_named_and_not_echoed(orthanc):
    client = client_for(orthanc, password="wrong-horse-battery")
    with pytest.raises(PacsAuthError) as err:
        client.search_studies(StudyQuery())
    message = str(err.value)
    assert "refused the user name or password (HTTP 401)" in message
    assert orthanc.url in message
    assert "wrong-horse-battery" not in message and USER not in message


def test_a_stopped_server_is_named(orthanc):
    client = client_for(orthanc)
    orthanc.stop()
    with pytest.raises(PacsUnavailableError, match="cannot connect to the PACS at http://127"):
        client.search_studies(StudyQuery())


def test_a_server_that_does_not_answer_times_out(orthanc):
    client = client_for(orthanc, timeout=1.0)
    os.kill(orthanc.process.pid, signal.SIGSTOP)  # the port stays open, nothing answers
    try:
        with pytest.raises(PacsUnavailableError, match="did not answer within 1 s"):
            client.search_studies(StudyQuery())
    finally:
        os.kill(orthanc.process.pid, signal.SIGCONT)


def test_tls_certificates_are_verified_by_default(tls_server):
    url, certificate = tls_server
    with pytest.raises(PacsUnavailableError,
                       match=r"no trusted TLS connection to the PACS at https://127\.0\.0\.1"):
        PacsClient(PacsConfig(url)).search_studies(StudyQuery())
    trusting = PacsConfig.from_settings({"COVID_PACS_URL": url,
                                         "COVID_PACS_CA_BUNDLE": str(certificate)})
    assert PacsClient(trusting).search_studies(StudyQuery()).studies == ()
