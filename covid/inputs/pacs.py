"""Chest radiographs from a hospital PACS, over DICOMweb (QIDO-RS search, WADO-RS retrieval).

The server's address and credentials come from the administrator only: the
environment (``COVID_PACS_URL``, ``COVID_PACS_USER``, ``COVID_PACS_PASSWORD``) or
the page's Streamlit secrets, read into a :class:`PacsConfig` by the caller. A
visitor never types an address, so the tool cannot be made to call arbitrary
hosts. TLS certificates are always verified: against certifi's authorities, or
the CA bundle the administrator names (``COVID_PACS_CA_BUNDLE``). The environment's
proxy, ``REQUESTS_CA_BUNDLE`` and ``~/.netrc`` settings are ignored on purpose.

Searches return immutable records holding no patient name: accession number,
date, description, modality and view are what a radiologist needs to pick a
study. Searches are paged by ``limit`` and ``offset`` and say when the server
holds more matches than it gave (:attr:`StudySearch.complete`). Instances are
retrieved in memory, in the transfer syntax the server holds them in
(``transfer-syntax=*``), so nothing is transcoded on the way and the bytes go
through the same decoder as an uploaded ``.dcm`` file.

Every failure raises a :class:`PacsError` whose message says what failed in plain
words (wrong password, server down or slow, TLS, refused request); messages
carry the server's address without credentials, and nothing here logs.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

CHEST_MODALITIES = ("CR", "DX")
"""The modalities of chest radiographs."""

RESULT_SERIES_PREFIX = "COVID screening AI result"
"""How the series this tool stores back begin their description: never listed as films."""

ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
"""WADO-RS media type: the instance as stored. Orthanc serves only ``application/dicom``
(400 for ``application/octet-stream``) and answers 406 to a syntax it cannot produce."""

DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a connection or an answer."""

SEARCH_PAGE = 100
"""Matches asked for per search request (QIDO-RS ``limit``)."""
MAX_MATCHES = 1000
"""The most studies one search gathers, and the most instances of one study."""

_QIDO_FIELDS = ("StudyDescription", "SeriesDescription", "Modality", "ViewPosition",
                "SOPClassUID", "SeriesNumber", "InstanceNumber")
_WILDCARDS = frozenset("*?\\")

_T = TypeVar("_T")


class PacsError(Exception):
    """A PACS operation that failed; the message says what, without credentials."""


class PacsConfigError(PacsError):
    """The administrator's PACS settings are incomplete or malformed."""


class PacsAuthError(PacsError):
    """The server refused the user name or password."""


class PacsUnavailableError(PacsError):
    """The server cannot be reached, does not answer in time, or fails TLS verification."""


class PacsRequestError(PacsError):
    """The server refused a request or answered something unusable."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to sign in to it.

    Attributes:
        url: The DICOMweb root (e.g. ``https://pacs.example.org/dicom-web``).
        user: The user name ('' for none); kept out of ``repr``.
        password: The password; kept out of ``repr``.
        timeout: Seconds to wait for a connection and for each answer.
        verify: True to verify TLS certificates against the system's authorities,
            or the path of a CA bundle; never False.
    """

    url: str
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsConfigError("the PACS address must be an http:// or https:// URL "
                                  f"naming a server, not {safe_url(self.url)!r}.")
        if parts.username or parts.password:
            raise PacsConfigError("the PACS address must not hold a user name or password: "
                                  "set COVID_PACS_USER and COVID_PACS_PASSWORD instead.")
        if parts.query or parts.fragment:
            raise PacsConfigError("the PACS address must not have a query or fragment.")
        if self.verify is False:
            raise PacsConfigError("TLS verification cannot be switched off; name a CA bundle.")
        if not self.timeout > 0:
            raise PacsConfigError("the PACS timeout must be a positive number of seconds.")

    @property
    def display_url(self) -> str:
        """The address as shown in messages."""
        return safe_url(self.url)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], url: str | None = None
                      ) -> PacsConfig | None:
        """Reads ``COVID_PACS_URL``, ``COVID_PACS_USER`` and ``COVID_PACS_PASSWORD``.

        Optional: ``COVID_PACS_TIMEOUT`` (seconds) and ``COVID_PACS_CA_BUNDLE``.

        Args:
            settings: The environment (``os.environ``) or the page's secrets.
            url: An address given on the command line, used instead of ``COVID_PACS_URL``.

        Returns:
            The configuration, or None when no address is set.

        Raises:
            PacsConfigError: A setting is malformed.
        """
        address = url or str(settings.get("COVID_PACS_URL", "") or "").strip()
        if not address:
            return None
        try:
            timeout = float(settings.get("COVID_PACS_TIMEOUT") or DEFAULT_TIMEOUT)
        except ValueError as err:
            raise PacsConfigError("COVID_PACS_TIMEOUT must be a number of seconds.") from err
        return cls(url=address.rstrip("/"), user=str(settings.get("COVID_PACS_USER") or ""),
                   password=str(settings.get("COVID_PACS_PASSWORD") or ""), timeout=timeout,
                   verify=str(settings.get("COVID_PACS_CA_BUNDLE") or "") or True)


def safe_url(url: str) -> str:
    """An address without any user name, password, query or fragment (for messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a malformed address)"
    return f"{parts.scheme}://{host}{port}{parts.path}" if host else "(a malformed address)"


# ------------------------------------------------------------------ queries and records


@dataclass(frozen=True)
class StudyQuery:
    """What to search for; every field narrows the search (exact match, no wildcards).

    Attributes:
        since: First study date, ``YYYYMMDD``, or None.
        until: Last study date, ``YYYYMMDD``, or None.
        accession: Accession number, or None.
        patient_id: Patient ID, or None.
    """

    since: str | None = None
    until: str | None = None
    accession: str | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and parse_date(value) is None:
                raise PacsConfigError(f"the {name} date must be a date as YYYYMMDD, "
                                      f"not {value!r}.")
        if self.since and self.until and self.since > self.until:
            raise PacsConfigError(f"the dates are reversed: {self.since} is after {self.until}.")
        for name in ("accession", "patient_id"):
            value = getattr(self, name)
            if value is not None and (_WILDCARDS & set(value) or not value.strip()):
                raise PacsConfigError(f"the {name.replace('_', ' ')} must be a plain value, "
                                      "without wildcards.")

    def filters(self) -> dict[str, str]:
        """The QIDO-RS matching keys (a DICOM date range for the dates)."""
        found = {}
        if self.since or self.until:
            found["StudyDate"] = f"{self.since or ''}-{self.until or ''}"
        if self.accession:
            found["AccessionNumber"] = self.accession.strip()
        if self.patient_id:
            found["PatientID"] = self.patient_id.strip()
        return found


def parse_date(text: str) -> dt.date | None:
    """A ``YYYYMMDD`` date, or None when it is not one."""
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class StudyRecord:
    """One chest radiograph study as a radiologist picks it (no patient name).

    Attributes:
        study_uid: Study Instance UID.
        accession: Accession number ('' when the server has none).
        date: Study date, ``YYYYMMDD``.
        description: Study description.
        modalities: The modalities in the study.
    """

    study_uid: str
    accession: str
    date: str
    description: str
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class StudySearch:
    """The chest radiograph studies a search found.

    Attributes:
        studies: The studies, oldest first.
        complete: False when the server holds more matches than it gave (it
            capped the results, or :data:`MAX_MATCHES` was reached).
    """

    studies: tuple[StudyRecord, ...]
    complete: bool = True

    @property
    def note(self) -> str:
        """What to tell the user about an incomplete search ('' when complete)."""
        if self.complete:
            return ""
        return (f"Showing the first {len(self.studies)} chest studies: the PACS holds more "
                "matches than it returned. Narrow the search (study dates, accession number "
                "or patient ID) to see the others.")


@dataclass(frozen=True)
class InstanceRecord:
    """One chest radiograph instance (no patient name).

    Attributes:
        study_uid: Study Instance UID.
        series_uid: Series Instance UID.
        sop_instance_uid: SOP Instance UID.
        modality: CR or DX.
        view: View position (PA, AP, LL...), '' when not given.
        accession: The study's accession number.
        date: The study's date, ``YYYYMMDD``.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    modality: str
    view: str
    accession: str = ""
    date: str = ""


@dataclass(frozen=True)
class Listing:
    """The chest radiograph instances a search found, and what it left out.

    Attributes:
        instances: The instances to score, by study date then study.
        notes: One line per study part left out (a CT or MR series, say), naming it.
    """

    instances: tuple[InstanceRecord, ...]
    notes: tuple[str, ...]


def _value(item: Mapping[str, Any], keyword: str) -> str:
    """One attribute of a DICOM JSON object as text ('' when absent)."""
    from pydicom.datadict import tag_for_keyword

    values = item.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value") or [""]
    return str(values[0]).strip()


def _values(item: Mapping[str, Any], keyword: str) -> tuple[str, ...]:
    from pydicom.datadict import tag_for_keyword

    values = item.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value") or []
    return tuple(str(v).strip() for v in values)


def _is_own_result(item: Mapping[str, Any]) -> bool:
    """Whether a QIDO answer describes a series this tool stored."""
    return _value(item, "SeriesDescription").startswith(RESULT_SERIES_PREFIX)


def _may_hold_chest_films(item: Mapping[str, Any]) -> bool:
    """Whether a study's answer names a CR or DX modality, or names none (unknown)."""
    modalities = _values(item, "ModalitiesInStudy")
    return not modalities or any(m in CHEST_MODALITIES for m in modalities)


_MORE_RESULTS = "additional results"
"""What a server's ``Warning: 299`` header says when it returned fewer matches than it
holds (PS3.18 8.3.4.4); a client then asks for the next page."""


# ------------------------------------------------------------------ the client


class PacsClient:
    """A DICOMweb client for one server (QIDO-RS, WADO-RS and STOW-RS).

    Args:
        config: Where the server is and how to sign in.
        page_size: Matches asked for per search request.
        max_matches: The most matches one search gathers.
    """

    def __init__(self, config: PacsConfig, page_size: int = SEARCH_PAGE,
                 max_matches: int = MAX_MATCHES) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        self.page_size, self.max_matches = page_size, max_matches
        self._more_held = False
        session = requests.Session()
        session.hooks["response"].append(self._note_warning)
        # Settings come from the config alone: no ~/.netrc credentials, and no
        # REQUESTS_CA_BUNDLE or proxy variables silently overriding the CA bundle.
        session.trust_env = False
        if config.user:
            session.auth = (config.user, config.password)
        session.verify = config.verify
        self._web = DICOMwebClient(config.url, session=session,
                                   timeout=(min(10.0, config.timeout), config.timeout))
        # No silent retries with back-off: a failure is reported at once, and named.
        self._web.set_http_retry_params(retry=False)

    def _note_warning(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """Records whether the last answer said the server holds more matches."""
        self._more_held = _MORE_RESULTS in response.headers.get("Warning", "").lower()

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        """Runs one request, turning every failure into a :class:`PacsError` naming it."""
        import requests
        from pydicom.errors import InvalidDicomError

        where = self.config.display_url
        try:
            return action()
        except requests.exceptions.SSLError as err:
            raise PacsUnavailableError(f"{what}: no trusted TLS connection to the PACS at "
                                       f"{where} (its certificate could not be verified; "
                                       "COVID_PACS_CA_BUNDLE names a private authority).") from err
        except requests.exceptions.Timeout as err:
            raise PacsUnavailableError(f"{what}: the PACS at {where} did not answer within "
                                       f"{self.config.timeout:g} s.") from err
        except requests.exceptions.ConnectionError as err:
            raise PacsUnavailableError(f"{what}: cannot connect to the PACS at {where} "
                                       "(is it running, and is the address right?).") from err
        except requests.exceptions.HTTPError as err:
            raise _http_error(what, where, err.response) from err
        except (requests.exceptions.RequestException, InvalidDicomError, ValueError, KeyError,
                EOFError) as err:
            raise PacsRequestError(f"{what}: the PACS at {where} sent an answer that could "
                                   "not be read.") from err

    # -------------------------------------------------------------- search

    def _search_all(self, what: str, search: Callable[[int, int], list[dict[str, Any]]],
                    key: str) -> tuple[list[dict[str, Any]], bool]:
        """Every match of a search, a page at a time, and whether the server gave them all.

        Pages by ``limit`` and ``offset`` and never loops: dicomweb-client's own
        paging asks forever of a server that ignores ``offset`` (Orthanc 1.10 does
        for some keys). A short page ends the search, unless the server's
        ``Warning`` header says it holds more; a page with nothing new (the server
        repeats itself) ends it too, incomplete when that page was full, as does
        reaching :attr:`max_matches`.

        Args:
            what: The search, in words, for error messages.
            search: Runs one request: ``(limit, offset) -> DICOM JSON answers``.
            key: The keyword naming each match uniquely (``StudyInstanceUID``...).

        Returns:
            The matches in the server's order, and whether they are all it holds.
        """
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while len(found) < self.max_matches:
            page = self._call(what, lambda start=offset: search(self.page_size, start))
            fresh = {uid: item for item in page
                     if (uid := _value(item, key)) and uid not in found}
            if not fresh:  # an empty page, or one the server repeated
                return list(found.values()), len(page) < self.page_size and not self._more_held
            found.update(fresh)
            offset += len(page)
            if len(page) < self.page_size and not self._more_held:
                return list(found.values()), True
        return list(found.values())[: self.max_matches], False

    def search_studies(self, query: StudyQuery) -> StudySearch:
        """Chest radiograph studies (CR or DX in the study) matching a query.

        The modality is matched here, not by the server: Orthanc 1.10 pages a
        ``ModalitiesInStudy`` search wrongly (it ignores ``offset``, or answers
        nothing past the first page). A study whose answer names no modality is
        kept; its instance listing leaves out what is not a radiograph.

        Returns:
            The studies, oldest first, and whether the server gave every match.
        """
        filters = query.filters()
        answers, complete = self._search_all(
            "searching for studies",
            lambda limit, offset: self._web.search_for_studies(
                search_filters=filters, fields=["StudyDescription", "ModalitiesInStudy"],
                limit=limit, offset=offset),
            "StudyInstanceUID")
        records = [StudyRecord(study_uid=_value(item, "StudyInstanceUID"),
                               accession=_value(item, "AccessionNumber"),
                               date=_value(item, "StudyDate"),
                               description=_value(item, "StudyDescription"),
                               modalities=_values(item, "ModalitiesInStudy"))
                   for item in answers if _may_hold_chest_films(item)]
        records.sort(key=lambda r: (r.date, r.accession, r.study_uid))
        return StudySearch(tuple(records), complete)

    def study_instances(self, study: StudyRecord) -> tuple[list[InstanceRecord], list[str]]:
        """A study's chest radiograph instances, and notes on what was left out.

        Instances of other modalities (a CT or MR series in the study) are left
        out with a note naming them; the series this tool stored are left out
        silently.
        """
        name = study.accession or study.study_uid
        answers, complete = self._search_all(
            f"listing study {name}",
            lambda limit, offset: self._web.search_for_instances(
                study_instance_uid=study.study_uid, fields=list(_QIDO_FIELDS), limit=limit,
                offset=offset),
            "SOPInstanceUID")
        kept, others = [], {}
        for item in sorted(answers, key=_instance_order):
            modality = _value(item, "Modality")
            if _is_own_result(item):
                continue
            if modality not in CHEST_MODALITIES:
                others[modality or "unknown"] = others.get(modality or "unknown", 0) + 1
                continue
            kept.append(InstanceRecord(
                study_uid=study.study_uid, series_uid=_value(item, "SeriesInstanceUID"),
                sop_instance_uid=_value(item, "SOPInstanceUID"), modality=modality,
                view=_value(item, "ViewPosition"), accession=study.accession, date=study.date))
        notes = [f"study {name}: {count} {modality} instance{'s' if count > 1 else ''} left "
                 "out (not a chest radiograph)." for modality, count in sorted(others.items())]
        if not complete:
            notes.append(f"study {name}: only the first {len(answers)} instances were listed; "
                         "the PACS holds more.")
        return kept, notes

    def find_instances(self, query: StudyQuery) -> Listing:
        """Every chest radiograph instance in the studies a query finds."""
        search = self.search_studies(query)
        instances, notes = [], [search.note] if search.note else []
        for study in search.studies:
            kept, left_out = self.study_instances(study)
            instances.extend(kept)
            notes.extend(left_out)
        return Listing(tuple(instances), tuple(notes))

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool:
        """Whether the server holds an instance in a study."""
        answers = self._call(
            "checking for stored results",
            lambda: self._web.search_for_instances(
                study_instance_uid=study_uid,
                search_filters={"SOPInstanceUID": sop_instance_uid}))
        return any(_value(a, "SOPInstanceUID") == sop_instance_uid for a in answers)

    # -------------------------------------------------------------- retrieve and store

    def retrieve(self, record: InstanceRecord) -> bytes:
        """One instance as DICOM file bytes, in memory, as the server stores it.

        Raises:
            PacsError: The request failed (see :meth:`_call`).
        """
        dataset = self._call(
            f"retrieving instance {record.sop_instance_uid}",
            lambda: self._web.retrieve_instance(record.study_uid, record.series_uid,
                                                record.sop_instance_uid,
                                                media_types=ANY_TRANSFER_SYNTAX))
        return dataset_bytes(dataset)

    def store(self, datasets: Sequence[Any], study_uid: str) -> None:
        """Stores instances in a study (STOW-RS).

        Raises:
            PacsRequestError: The server refused some of them.
            PacsError: The request failed (see :meth:`_call`).
        """
        answer = self._call(f"storing results in study {study_uid}",
                            lambda: self._web.store_instances(list(datasets), study_uid))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise PacsRequestError(f"storing results in study {study_uid}: the PACS at "
                                   f"{self.config.display_url} refused {len(failed)} of "
                                   f"{len(datasets)} instances.")


def _instance_order(item: Mapping[str, Any]) -> tuple[int, int, str]:
    def number(keyword: str) -> int:
        text = _value(item, keyword)
        return int(text) if text.lstrip("-").isdigit() else 0

    return number("SeriesNumber"), number("InstanceNumber"), _value(item, "SOPInstanceUID")


def _http_error(what: str, where: str, response: Any) -> PacsError:
    """The error for an HTTP failure status, in plain words."""
    status = getattr(response, "status_code", 0)
    if status in (401, 403):
        return PacsAuthError(f"{what}: the PACS at {where} refused the user name or password "
                             f"(HTTP {status}); check COVID_PACS_USER and COVID_PACS_PASSWORD.")
    if status == 406:
        return PacsRequestError(f"{what}: the PACS at {where} cannot send it in a form this "
                                "tool accepts (HTTP 406, not acceptable).")
    if status == 404:
        return PacsRequestError(f"{what}: the PACS at {where} has no such object, or this "
                                "address is not its DICOMweb root (HTTP 404).")
    return PacsRequestError(f"{what}: the PACS at {where} answered HTTP {status}.")


def dataset_bytes(dataset: Any) -> bytes:
    """A retrieved data set as DICOM file bytes (preamble, meta header), unchanged."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
