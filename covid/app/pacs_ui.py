"""The Screening page's PACS source: search a DICOMweb server, retrieve studies in memory.

Drawn beside drag and drop by :func:`pacs_source_ui`, which returns the retrieved
instances as ``(name, DICOM bytes)`` pairs, so that they join the uploads in the
same pipeline, triage table, study view and PDF. Nothing is written to disk.

Who sees it (:func:`pacs_access`):

- with ``[auth]`` in ``.streamlit/secrets.toml`` (Streamlit's OpenID Connect
  login), only a signed-in user whose e-mail is in ``COVID_PACS_ALLOWED_EMAILS``
  or who belongs to a group in ``COVID_PACS_ALLOWED_GROUPS`` (secrets, or
  comma-separated in the environment); a visitor gets a sign-in button only,
  and whoever is signed in a sign-out button;
- without ``[auth]``, everybody, but only when the administrator sets
  ``COVID_PACS_ALLOW_ANONYMOUS=1`` for a trusted network, and the tab says so.

The server comes from the secrets or the environment (``COVID_PACS_URL``,
``COVID_PACS_USER``, ``COVID_PACS_PASSWORD``); a visitor never types an address.
With none configured, the tab says how to configure one. A search the server
answers only in part (it caps its results) lists what came and says so.

Results go back to the PACS from the study view (:func:`send_study_ui`, "Send to
PACS") and under the triage table (:func:`send_all_ui`, "Send all to PACS"): a
Structured Report and a Secondary Capture of the map, built and stored by
:func:`covid.screening.pacs_results.send_film` as the command line does, naming
the opacity segmenter when it outlined the film. Only studies retrieved from the PACS in this
session get the buttons, only for a visitor who may use the PACS, and never a
film refused as not a chest X-ray. Sending again stores nothing new (the
results' UIDs are derived), and the page says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import streamlit as st

from covid.app import state
from covid.app.resources import opacity_for, segmenter_for
from covid.inputs.pacs import (
    PacsClient,
    PacsConfig,
    PacsError,
    StudyQuery,
    StudyRecord,
    StudySearch,
)
from covid.model.metadata import ModelFileError
from covid.screening.studies import Study, class_map, content_digest

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.pipeline import StudyResult

_KEYS = ("COVID_PACS_URL", "COVID_PACS_USER", "COVID_PACS_PASSWORD", "COVID_PACS_TIMEOUT",
         "COVID_PACS_CA_BUNDLE", "COVID_PACS_ALLOW_ANONYMOUS", "COVID_PACS_ALLOWED_EMAILS",
         "COVID_PACS_ALLOWED_GROUPS")
NOT_CONFIGURED = ("Studies can also come from the hospital's PACS: an administrator sets "
                  "COVID_PACS_URL, COVID_PACS_USER and COVID_PACS_PASSWORD (environment or "
                  ".streamlit/secrets.toml) and who may use it (README, \"Connecting a PACS\").")
"""What a visitor reads where the PACS would be, while none is configured."""
MAX_INSTANCES = 50
"""Instances retrieved at once (the page's memory stays bounded)."""
SEND_METHOD = "gradcam"
"""The map sent with the results: Grad-CAM of the label, whatever the page displays, so
that the page and ``python -m covid pacs --send`` derive the same UIDs (a second send
from either stores nothing)."""


@dataclass(frozen=True)
class Access:
    """Whether this visitor may use the PACS, and what the tab says about it.

    Attributes:
        allowed: Whether the PACS tab is shown.
        sign_in: Whether to offer the sign-in button instead.
        notice: A line shown in the tab (or instead of it), or ''.
    """

    allowed: bool
    sign_in: bool = False
    notice: str = ""


def settings() -> dict[str, Any]:
    """The PACS settings: the environment, overridden by the page's secrets."""
    found = {k: os.environ[k] for k in _KEYS if os.environ.get(k)}
    try:
        if st.secrets.load_if_toml_exists():
            found.update({k: st.secrets[k] for k in _KEYS if k in st.secrets})
    except (OSError, ValueError):  # an unreadable secrets file: the environment alone
        pass
    return found


def _listed(value: Any) -> set[str]:
    """A list setting (a TOML list, or comma-separated text) as lower-cased entries."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return {str(i).strip().lower() for i in items if str(i).strip()}


def pacs_access(values: Mapping[str, Any], auth_configured: bool,
                user: Mapping[str, Any] | None) -> Access:
    """Decides who sees the PACS tab.

    Args:
        values: The PACS settings (see :func:`settings`).
        auth_configured: Whether ``[auth]`` is in the secrets (OpenID Connect login).
        user: The signed-in user's claims, or None for a visitor.

    Returns:
        The decision.
    """
    if auth_configured:
        if user is None:
            return Access(False, sign_in=True, notice="Sign in to search the hospital PACS.")
        email = str(user.get("email") or "").lower()
        groups = _listed(user.get("groups"))
        if email in _listed(values.get("COVID_PACS_ALLOWED_EMAILS")) or groups & _listed(
                values.get("COVID_PACS_ALLOWED_GROUPS")):
            return Access(True)
        return Access(False, notice="Your account is not allowed to use the PACS.")
    if str(values.get("COVID_PACS_ALLOW_ANONYMOUS", "")).strip() == "1":
        return Access(True, notice="Sign-in is not configured: everyone who can reach this "
                                   "page can search the PACS (COVID_PACS_ALLOW_ANONYMOUS=1).")
    if not values.get("COVID_PACS_URL"):
        return Access(False, notice=NOT_CONFIGURED)
    return Access(False, notice="A PACS is configured, but not who may use it: an "
                                "administrator sets [auth] (sign-in) in .streamlit/secrets.toml, "
                                "or COVID_PACS_ALLOW_ANONYMOUS=1 on a trusted network.")


def _current_user() -> Mapping[str, Any] | None:
    """The signed-in user's claims, or None."""
    try:
        return dict(st.user) if st.user.is_logged_in else None
    except (AttributeError, KeyError):
        return None


def _auth_configured() -> bool:
    try:
        return bool(st.secrets.load_if_toml_exists() and "auth" in st.secrets)
    except (OSError, ValueError):
        return False


def _query_ui() -> StudyQuery | None:
    """The search form; the query once submitted and valid, else None."""
    with st.form("pacs_search"):
        left, right = st.columns(2)
        since = left.text_input("From (YYYYMMDD)", key="pacs_since")
        until = right.text_input("Until (YYYYMMDD)", key="pacs_until")
        accession = left.text_input("Accession number", key="pacs_accession")
        patient = right.text_input("Patient ID", key="pacs_patient")
        if not st.form_submit_button("Search", icon=":material/search:"):
            return None
    try:
        return StudyQuery(since=since.strip() or None, until=until.strip() or None,
                          accession=accession.strip() or None, patient_id=patient.strip() or None)
    except PacsError as err:
        st.error(str(err), icon=":material/error:")
        return None


def _study_label(study: StudyRecord) -> str:
    """What a radiologist picks a study by: accession, date, description (no name)."""
    date = f"{study.date[:4]}-{study.date[4:6]}-{study.date[6:]}" if study.date else "no date"
    return f"{study.accession or '(no accession)'} · {date} · {study.description or ''}".strip()


def _retrieve(client: PacsClient, studies: Sequence[StudyRecord]) -> list[tuple[str, bytes]]:
    """The chosen studies' chest radiographs in memory; failures are shown, not raised."""
    files: list[tuple[str, bytes]] = []
    for study in studies:
        try:
            instances, notes = client.study_instances(study)
        except PacsError as err:
            st.error(str(err), icon=":material/error:")
            continue
        for note in notes:
            st.warning(note, icon=":material/info:")
        for n, record in enumerate(instances[: MAX_INSTANCES - len(files)], start=1):
            name = f"{study.accession or 'study'}-{record.view or record.modality}-{n}.dcm"
            try:
                files.append((name, client.retrieve(record)))
            except PacsError as err:
                st.error(f"{name}: {err}", icon=":material/error:")
    return files


def _sign_out_ui(user: Mapping[str, Any]) -> None:
    """Who is signed in, and a button to sign out (Streamlit's ``st.logout``)."""
    who = str(user.get("email") or user.get("name") or "")
    if st.button("Sign out", icon=":material/logout:", key="pacs_sign_out",
                 help=f"Signed in as {who}." if who else None):
        st.logout()


def _pacs_tab(config: PacsConfig) -> None:
    """Search, pick studies and retrieve them into the session."""
    client = PacsClient(config)
    query = _query_ui()
    if query is not None:
        try:
            search = client.search_studies(query)
        except PacsError as err:
            search = StudySearch(())
            st.error(str(err), icon=":material/error:")
        state.keep_pacs_search(list(search.studies), search.note)
    studies, note = state.pacs_search()
    if not studies:
        if query is not None:
            st.info("No chest radiograph study (CR or DX) matches.")
        return
    if note:
        st.warning(note, icon=":material/filter_list:")
    chosen = st.multiselect("Studies", studies, format_func=_study_label, key="pacs_chosen",
                            help="Accession number, date and description; no patient name.")
    if st.button("Retrieve and score", disabled=not chosen, icon=":material/download:"):
        files = _retrieve(client, chosen)
        # Hashed once here, not on every rerun of every study view that asks.
        state.keep_pacs_files(files, {content_digest(data): data for _, data in files})


def pacs_source_ui() -> list[tuple[str, bytes]]:
    """The PACS tab (when this visitor may see it); returns the retrieved instances.

    Returns:
        ``(name, DICOM bytes)`` pairs, to score with the uploads; [] without a PACS.
    """
    values = settings()
    user = _current_user()
    access = pacs_access(values, _auth_configured(), user)
    if user is not None:
        _sign_out_ui(user)
    if not access.allowed:
        if access.sign_in and st.button("Sign in", icon=":material/login:"):
            st.login()
        elif access.notice:
            st.caption(access.notice)
        return []
    with st.expander("PACS", expanded=True, icon=":material/cloud:"):
        if access.notice:
            st.caption(access.notice)
        try:
            config = PacsConfig.from_settings(values)
        except PacsError as err:
            st.error(str(err), icon=":material/error:")
            return []
        if config is None:
            st.info("No PACS is configured. An administrator sets COVID_PACS_URL, "
                    "COVID_PACS_USER and COVID_PACS_PASSWORD in the environment or in "
                    ".streamlit/secrets.toml.", icon=":material/settings:")
            return []
        _pacs_tab(config)
    return state.pacs_files()


# ------------------------------------------------------------------ sending the results


def _retrieved() -> dict[str, bytes]:
    """Content digest -> DICOM bytes of each instance retrieved from the PACS this session.

    Keyed like :class:`~covid.screening.studies.Study` (by content, not name), so an
    upload that happens to share a PACS file's name never gets the PACS's buttons.
    """
    return state.pacs_sources()


def _send_client() -> PacsClient | None:
    """A client to send with, when this visitor may use the PACS; else None (no buttons)."""
    values = settings()
    if not pacs_access(values, _auth_configured(), _current_user()).allowed:
        return None
    try:
        config = PacsConfig.from_settings(values)
    except PacsError:  # the PACS panel shows this configuration error already
        return None
    return None if config is None else PacsClient(config)


def _sendable(study: Study, sources: Mapping[str, bytes]) -> bool:
    """Whether a study came from the PACS and has results to send (never a refused film)."""
    from covid.screening.pacs_results import nothing_to_send

    return study.digest in sources and nothing_to_send(study.result) is None


def send_study(client: PacsClient, study: Study, source: bytes, classifier: Classifier,
               maps: MutableMapping, threshold: float) -> bool:
    """Builds a study's SR and map and stores them in its PACS study.

    The map is the label's Grad-CAM (:data:`SEND_METHOD`): a study relabelled at
    another operating point sends the map of its new label, explained once and
    kept in ``maps`` as the page does.

    Args:
        client: The PACS.
        study: A scored study retrieved from it.
        source: Its DICOM bytes (the header names the study and patient).
        classifier: The loaded classifier (its metadata identifies the model).
        maps: The session's explanations.
        threshold: The operating point in force (recorded in the SR).

    Returns:
        True when the results were stored now, False when the study held them.

    Raises:
        covid.inputs.pacs.PacsError: The PACS refused or failed.
        covid.screening.pacs_results.ResultsError: The study has no results, was
            refused as not a chest X-ray, or its header cannot give results.
    """
    # Imported here: highdicom is needed only once something is sent (cold start).
    from covid.screening.pacs_results import ResultsError, nothing_to_send, send_film

    meta = classifier.metadata
    result = study.result
    reason = nothing_to_send(result)
    if reason is not None:
        raise ResultsError(f"{result.name}: {reason}.")
    target = list(meta.class_names).index(result.label)
    cam = class_map(study, classifier, target, SEND_METHOD, maps)
    result = replace(result, cam=cam, cam_target=target)
    return send_film(client, source, result, meta, threshold, SEND_METHOD,
                     _opacity_segmenter(result, classifier))


def _opacity_segmenter(result: StudyResult, classifier: Classifier) -> OpacitySegmenter | None:
    """The page's opacity segmenter when it outlined this film (None otherwise).

    It is the one the page scored with (cached, see :func:`covid.app.resources.opacity_for`).
    A file altered since only costs the SR the segmenter's name, as it costs the
    page its opacity figures.
    """
    if result.opacity is None:
        return None
    try:
        return opacity_for(segmenter_for(classifier))
    except ModelFileError:
        return None


def _try_send(client: PacsClient, study: Study, source: bytes, classifier: Classifier,
              maps: MutableMapping, threshold: float) -> bool | str:
    """:func:`send_study`, with a failure returned as its message (never raised)."""
    from covid.screening.pacs_results import ResultsError

    try:
        return send_study(client, study, source, classifier, maps, threshold)
    except (PacsError, ResultsError) as err:
        return f"{study.result.name}: the results could not be sent: {err}"


def send_study_ui(study: Study, classifier: Classifier, maps: MutableMapping,
                  threshold: float) -> None:
    """"Send to PACS" for a study retrieved from the PACS (nothing for any other study).

    Args:
        study: The study shown.
        classifier: The loaded classifier.
        maps: The session's explanations.
        threshold: The operating point in force.
    """
    sources = _retrieved()
    if not _sendable(study, sources):
        return
    source = sources[study.digest]
    client = _send_client()
    if client is None:
        return
    if not st.button("Send to PACS", key=f"pacs_send:{study.key}", icon=":material/cloud_upload:",
                     help="Store a Structured Report (finding, probabilities, operating point, "
                          "model) and the map, marked research use only, as new series in "
                          "this study on the PACS. Sending again stores nothing new."):
        return
    with st.spinner("Sending the report and the map to the PACS…"):
        sent = _try_send(client, study, source, classifier, maps, threshold)
    if isinstance(sent, str):
        st.error(sent, icon=":material/error:")
    elif sent:
        st.success(f"{study.result.name}: the report and the map were stored in its study "
                   "on the PACS.", icon=":material/cloud_done:")
    else:
        st.info(f"{study.result.name}: nothing new was stored; the PACS already holds these "
                "results.", icon=":material/info:")


def send_all_ui(studies: Sequence[Study], classifier: Classifier, maps: MutableMapping,
                threshold: float) -> None:
    """"Send all to PACS" for every study in the table that came from the PACS.

    A study that fails gets its own message; the others are still sent.

    Args:
        studies: The table's studies (uploads among them are left out).
        classifier: The loaded classifier.
        maps: The session's explanations.
        threshold: The operating point in force.
    """
    sources = _retrieved()
    chosen = [s for s in studies if _sendable(s, sources)]
    if not chosen:
        return
    client = _send_client()
    if client is None or not st.button(
            f"Send all to PACS ({len(chosen)})", key="pacs_send_all",
            icon=":material/cloud_upload:",
            help="Store each study's report and map in its study on the PACS (only the "
                 "studies retrieved from it). Studies that hold them already are skipped."):
        return
    outcomes = []
    bar = st.progress(0.0, text="Sending the results to the PACS…")
    for n, study in enumerate(chosen, start=1):
        outcomes.append(_try_send(client, study, sources[study.digest], classifier, maps,
                                  threshold))
        bar.progress(n / len(chosen), text="Sending the results to the PACS…")
    bar.empty()
    _sent_summary_ui(outcomes)


def _sent_summary_ui(outcomes: Sequence[bool | str]) -> None:
    """One line for what was stored, one message per failure."""
    stored = sum(1 for o in outcomes if o is True)
    already = sum(1 for o in outcomes if o is False)
    for failure in (o for o in outcomes if isinstance(o, str)):
        st.error(failure, icon=":material/error:")
    if stored:
        st.success(f"Stored the results of {stored} {_studies(stored)} on the PACS"
                   + (f"; {already} already held them." if already else "."),
                   icon=":material/cloud_done:")
    elif already:
        st.info(f"Nothing new was stored: the PACS already holds the results of {already} "
                f"{_studies(already)}.", icon=":material/info:")


def _studies(n: int) -> str:
    return "study" if n == 1 else "studies"
