"""A real Orthanc PACS for the tests, and the chest films stored in it.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages give the server (``.ci/run``
and ``scripts/test.sh`` install them). Without it the tests skip, saying so; under
``scripts/test.sh`` (and so in CI) they fail instead, since there its absence is a
broken set-up (:mod:`tests.servers`). Missing films (the shared data folder) skip.

Each server gets a free loopback port, a temporary storage folder and a
configuration written here: a user and password, the DICOMweb plugin on,
remote access and the DICOM (non-HTTP) port off. The fixtures are plain
functions registered by ``tests/screening/conftest.py`` and imported by the
modules that need them.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.servers import server_missing

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "radiology", "s3cret-Pa55"
READY_SECONDS = 60
"""How long a starting server may take to answer (a loaded CI machine is slow)."""

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
ACCESSIONS = ("ACC001", "ACC002", "ACC003", "ACC004")
"""The chest studies' accession numbers, one film each (the last one RLE-compressed)."""
PATIENT_NAME = "Doe^Jane^Secret"
"""Every instance's patient name: it must never be printed."""
BARE_DATES = ("20240301", "20240302")
"""The study dates of the two films whose headers lack Type 2 attributes (see :func:`bare_film`)."""
LEFT_OUT = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
            "ReferringPhysicianName", "StudyTime")
"""The Type 2 attributes an anonymised film often lacks."""


# ------------------------------------------------------------------------ the server


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_binary() -> str:
    """The Orthanc executable; skips the test without it (fails under scripts/test.sh)."""
    found = shutil.which(ORTHANC) or shutil.which(ORTHANC, path="/usr/sbin")
    if found is None or not DICOMWEB_PLUGIN.is_file():
        server_missing("Orthanc with its DICOMweb plugin",
                       "run `apt-get install orthanc orthanc-dicomweb`")
    return found


@dataclass
class OrthancServer:
    """A running Orthanc on the loopback interface.

    Attributes:
        folder: Its configuration, storage and log.
        port: Its HTTP port.
        process: The server process (None once stopped).
    """

    folder: Path
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def root(self) -> str:
        """The server's own address."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The DICOMweb root, as an administrator configures it."""
        return f"{self.root}/dicom-web"

    def rest(self, path: str) -> object:
        """GET on Orthanc's own REST API (to check what the DICOMweb side did)."""
        answer = requests.get(f"{self.root}{path}", auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def instance_count(self) -> int:
        """How many instances the server stores."""
        return int(self.rest("/statistics")["CountInstances"])

    def upload(self, data: bytes) -> None:
        """Stores one DICOM file through the REST API."""
        answer = requests.post(f"{self.root}/instances", data=data, auth=(USER, PASSWORD),
                               timeout=30)
        answer.raise_for_status()

    def start(self) -> None:
        """Starts the server and waits until it answers; fails with its log if it cannot."""
        with (self.folder / "orthanc.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [orthanc_binary(), str(self.folder / "orthanc.json")],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.rest("/system")
                return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        text = (self.folder / "orthanc.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"Orthanc did not start on port {self.port}:\n{text}")

    def stop(self) -> None:
        """Stops the server (the storage stays, so :meth:`start` resumes it)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the TLS test")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def write_config(folder: Path, port: int) -> None:
    """Orthanc's configuration: loopback only, a user, DICOMweb on, no DICOM port."""
    config = {
        "Name": "covid-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "OrthancExplorerEnabled": False,
        "HttpThreadsCount": 8,
        "ConcurrentJobs": 1,
        "StableAge": 1,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": f"127.0.0.1:{port}"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))


def start_orthanc(folder: Path) -> OrthancServer:
    """Writes a configuration into ``folder`` and starts a server there."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    write_config(folder, port)
    server = OrthancServer(folder, port)
    server.start()
    return server


# ------------------------------------------------------------------------ the instances


def chest_pixels(data_dir: Path, count: int) -> list[np.ndarray]:
    """``count`` real films (alternately COVID and Normal) as (H, W) uint8 grey."""
    covid = sorted((data_dir / "COVID").glob("*.jpg"))[:count]
    normal = sorted((data_dir / "Normal").glob("*.jpg"))[:count]
    paths = [p for pair in zip(covid, normal, strict=False) for p in pair][:count]
    return [np.asarray(Image.open(p).convert("L")) for p in paths]


def ct_slice(side: int = 256) -> np.ndarray:
    """A CT-like axial slice in Hounsfield units + 1024 (uint16): body, lungs, spine."""
    rows, cols = np.mgrid[:side, :side] / side
    hu = np.full((side, side), -1000.0)  # air
    hu[((rows - 0.5) / 0.38) ** 2 + ((cols - 0.5) / 0.46) ** 2 <= 1] = 40  # soft tissue
    for centre in (0.3, 0.7):  # the lungs
        hu[((rows - 0.45) / 0.25) ** 2 + ((cols - centre) / 0.15) ** 2 <= 1] = -850
    hu[((rows - 0.78) / 0.07) ** 2 + ((cols - 0.5) / 0.07) ** 2 <= 1] = 700  # a vertebra
    return (hu + 1024).astype(np.uint16)


def instance(pixels: np.ndarray, study: str, series: str, modality: str, sop_class: str,
             **fields) -> object:
    """A DICOM data set holding ``pixels`` in a study and series (native little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        PATIENT_NAME, "PID-1", "19700101", "F")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240105", "101500", "1"
    ds.AccessionNumber, ds.StudyDescription = "", "XR CHEST"
    ds.Manufacturer, ds.ReferringPhysicianName = "Test", ""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def dx_film(pixels: np.ndarray, accession: str, date: str, **fields) -> object:
    """A chest DX instance (PA view) in a study of its own.

    Its window (centre 128, width 256) maps each stored value to itself, so the
    film displays exactly as the JPEG it came from.
    """
    from pydicom.uid import generate_uid

    fields = {"WindowCenter": 128, "WindowWidth": 256, **fields}
    return instance(pixels, generate_uid(), generate_uid(), "DX", DX_SOP_CLASS,
                    AccessionNumber=accession, StudyDate=date, BodyPartExamined="CHEST",
                    ViewPosition="PA", PresentationIntentType="FOR PRESENTATION", **fields)


def bare_film(pixels: np.ndarray, date: str, odd: bool = False) -> object:
    """A chest DX film whose header lacks birth date, sex, accession number and the
    other attributes of :data:`LEFT_OUT`, as anonymised studies often do.

    With ``odd``, they are present but empty or invalid instead (sex ``U``, a birth
    date that is no date), and the patient name has a single component, which
    highdicom would print in a warning.
    """
    ds = dx_film(pixels, "", date)
    for keyword in LEFT_OUT:
        delattr(ds, keyword)
    if odd:
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.StudyID = "", "U", "", ""
        with warnings.catch_warnings():  # pydicom warns of the invalid time, as it should
            warnings.simplefilter("ignore")
            ds.StudyTime = "25"
        ds.PatientName = PATIENT_NAME.split("^")[-1]
    return ds


def to_bytes(ds, compress: str | None = None) -> bytes:
    """A data set as DICOM file bytes, compressed with ``compress`` (a transfer syntax)."""
    if compress is not None:
        ds.compress(compress)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Stored:
    """What the loaded server holds.

    Attributes:
        films: SOP Instance UID -> the film's (H, W) uint8 pixels, for each chest film
            (the bare ones among them).
        disguised: The SOP Instance UID of the DX instance holding a CT slice.
        ct_study: The CT study's Study Instance UID.
        compressed: The SOP Instance UID of the RLE-compressed film.
        bare: The SOP Instance UIDs of the films whose headers lack (or hold empty or
            invalid) birth date, sex and accession number (:func:`bare_film`).
    """

    films: dict[str, np.ndarray]
    disguised: str
    ct_study: str
    compressed: str
    bare: tuple[str, ...] = ()


def load_studies(server: OrthancServer, films: list[np.ndarray]) -> Stored:
    """Stores the films (one DX study each, dated one day apart), a CT study, a
    DX instance whose pixels are a CT slice, and two bare films (:func:`bare_film`,
    showing the first two films again, dated :data:`BARE_DATES`)."""
    from pydicom.uid import RLELossless, generate_uid

    stored = {}
    compressed = ""
    for i, (pixels, accession) in enumerate(zip(films, ACCESSIONS, strict=False)):
        ds = dx_film(pixels, accession, f"2024010{i + 1}")
        last = i == len(films) - 1
        server.upload(to_bytes(ds, RLELossless if last else None))
        stored[ds.SOPInstanceUID] = pixels
        compressed = ds.SOPInstanceUID if last else compressed
    disguised = dx_film(ct_slice(), "ACC-CT-DX", "20240201",
                        RescaleIntercept=-1024, RescaleSlope=1,
                        WindowCenter=40, WindowWidth=400)
    server.upload(to_bytes(disguised))
    ct_study = generate_uid()
    ct = instance(ct_slice(), ct_study, generate_uid(), "CT", CT_SOP_CLASS,
                  AccessionNumber="ACC-CT", StudyDate="20240103", StudyDescription="CT CHEST",
                  RescaleIntercept=-1024, RescaleSlope=1, ImageType=["ORIGINAL", "PRIMARY",
                                                                      "AXIAL"])
    server.upload(to_bytes(ct))
    bare = []
    for pixels, date, odd in zip(films, BARE_DATES, (False, True), strict=False):
        ds = bare_film(pixels, date, odd)
        server.upload(to_bytes(ds))
        stored[ds.SOPInstanceUID] = pixels
        bare.append(ds.SOPInstanceUID)
    return Stored(stored, disguised.SOPInstanceUID, ct_study, compressed, tuple(bare))


# ------------------------------------------------------------------------ the fixtures


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """An empty Orthanc, stopped after the test."""
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on the loopback with a self-signed certificate, answering every
    GET with an empty DICOM JSON list: (its DICOMweb URL, its certificate).

    Debian 12's Orthanc 1.10 crashes on a TLS handshake, so the TLS check runs
    against Python's own server; what is tested is the client's certificate check.
    """
    import http.server
    import ssl
    import threading

    cert, key = self_signed_certificate(tmp_path)

    class Empty(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web", cert
    server.shutdown()
    server.server_close()


@dataclass
class QidoStub:
    """A DICOMweb search server that pages as told, for what Orthanc cannot be made to do.

    Attributes:
        url: Its DICOMweb root (loopback).
        total: How many DX studies it holds.
        cap: The most studies one answer holds (then a ``Warning`` header says more
            exist), or 0 for no cap.
        reachable: How many of them any answer reaches (beyond, an empty answer that
            still warns), or 0 for all.
        honour_offset: False: every answer starts at the first study, whatever
            ``offset`` says.
        requests: How many searches it answered.
    """

    url: str = ""
    total: int = 5
    cap: int = 0
    reachable: int = 0
    honour_offset: bool = True
    requests: int = 0

    def answer(self, query: dict[str, list[str]]) -> tuple[list[dict], bool]:
        """The studies for one search's query string, and whether to warn of more."""
        offset = int(query.get("offset", ["0"])[0]) if self.honour_offset else 0
        limit = int(query.get("limit", [str(self.total)])[0])
        end = min(self.total, self.reachable or self.total)
        count = min(limit, self.cap or limit, max(0, end - offset))
        items = [{"0020000D": {"vr": "UI", "Value": [f"1.2.3.{n}"]},
                  "00080050": {"vr": "SH", "Value": [f"STUB{n:03d}"]},
                  "00080020": {"vr": "DA", "Value": [f"202401{n % 28 + 1:02d}"]},
                  "00080061": {"vr": "CS", "Value": ["DX"]}}
                 for n in range(offset, offset + count)]
        return items, offset + count < self.total


@pytest.fixture
def qido_stub() -> Iterator[QidoStub]:
    """A :class:`QidoStub` on a free loopback port (plain HTTP, no password)."""
    import http.server
    import threading
    from urllib.parse import parse_qs, urlsplit

    stub = QidoStub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stub.requests += 1
            items, more = stub.answer(parse_qs(urlsplit(self.path).query))
            body = json.dumps(items).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            if more and (stub.cap or stub.reachable):
                self.send_header("Warning", "299 stub: There are additional results that "
                                            "can be requested")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    yield stub
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def film_pixels(shared_data_dir: Path) -> list[np.ndarray]:
    """Four real chest films (skips without the shared data folder)."""
    return chest_pixels(shared_data_dir, len(ACCESSIONS))


@pytest.fixture(scope="module")
def loaded_orthanc(tmp_path_factory, film_pixels) -> Iterator[tuple[OrthancServer, Stored]]:
    """An Orthanc holding four chest films, a CT study and a disguised CT slice (read only)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server, load_studies(server, film_pixels)
    finally:
        server.stop()
