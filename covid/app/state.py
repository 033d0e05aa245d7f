"""Every ``st.session_state`` key the pages use, behind small functions.

One browser session's memory: its scored studies and maps (so that nothing is
scored twice), the last uploads (kept across a visit to the model page), the
study opened from the batch table, the page last shown, and the session's
operating point, and what it found and retrieved on the PACS. The operating
point chosen on the model page applies to this session only; it is stored with
the model's SHA-256 so that a choice made for another model file is ignored.
Widgets' own keys stay on the widgets, except those read here.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from covid.model.decision import same_point
from covid.model.metadata import ModelMetadata

_STUDIES_KEY = "_covid_studies"
"""Scored results, keyed by model, content and file name."""
_CAMS_KEY = "_covid_cams"
"""Class-activation maps, keyed by (study key, class index, method)."""
_OPERATING_POINT_KEY = "_covid_operating_point"
"""Per-session operating point: ``{"model": SHA-256, "threshold": float}``."""
_BATCH_KEY = "_covid_batch"
"""The last uploads, (name, bytes) pairs, kept to survive a visit to the model page."""
_RESTORED_KEY = "_covid_batch_restored"
"""Whether the files shown are the kept ones rather than the uploader's."""
_CHOSEN_KEY = "_covid_chosen"
"""The key of the study opened from the batch table."""
_PAGE_KEY = "_covid_page"
"""The URL path of the page shown last."""
_RESULTS_KEY = "_covid_results_shown"
"""Whether the last full run drew the results fragment (the controls may rerun it alone)."""
_PACS_STUDIES_KEY = "pacs_studies"
"""The studies the last PACS search found (``covid.inputs.pacs.StudyRecord``)."""
_PACS_NOTE_KEY = "pacs_search_note"
"""What the last PACS search left out (a capped search), or empty."""
_PACS_FILES_KEY = "pacs_files"
"""The instances retrieved from the PACS, (name, DICOM bytes) pairs."""
_PACS_SOURCES_KEY = "pacs_sources"
"""Those instances by content digest, for the buttons that send results back."""
THRESHOLD_WIDGET = "op_threshold"
"""The model page's threshold slider."""
PREVALENCE_WIDGET = "op_prevalence"
"""The model page's prevalence input."""
OPACITY_OUTLINE_WIDGET = "opacity_outline"
"""The screening page's switch that outlines the opacity segmenter's opacities on the X-ray."""


# ------------------------------------------------------------------ caches


def studies_store() -> dict[str, Any]:
    """This session's scored results (see :func:`covid.screening.studies.score_files`)."""
    return st.session_state.setdefault(_STUDIES_KEY, {})


def maps_store() -> dict[tuple[str, int, str], Any]:
    """This session's maps (see :func:`covid.screening.studies.class_map`)."""
    return st.session_state.setdefault(_CAMS_KEY, {})


def drop_studies() -> None:
    """Forgets this session's results and maps (no file is uploaded any more)."""
    studies_store().clear()
    maps_store().clear()


# ------------------------------------------------------------- page and batch


def visit(page: str) -> bool:
    """Records ``page`` as shown; returns whether the last page shown was another one."""
    came_back = st.session_state.get(_PAGE_KEY, page) != page
    st.session_state[_PAGE_KEY] = page
    return came_back


def batch_to_show(
    uploaded: list[tuple[str, bytes]], came_back: bool
) -> tuple[list[tuple[str, bytes]], bool]:
    """The files to show: the uploads, or the last ones after a visit to another page.

    Streamlit empties the uploader when the user switches pages, so the last
    uploads are kept in this session's memory and shown again on the way back,
    until new files are uploaded or the user clears them (:func:`clear_batch`).

    Args:
        uploaded: What the uploader holds now.
        came_back: Whether the user has just come back from another page.

    Returns:
        (name, bytes) pairs, and whether they are the kept uploads.
    """
    state = st.session_state
    if uploaded:
        state[_BATCH_KEY], state[_RESTORED_KEY] = uploaded, False
        return uploaded, False
    if came_back and state.get(_BATCH_KEY):
        state[_RESTORED_KEY] = True
    if state.get(_RESTORED_KEY) and state.get(_BATCH_KEY):
        return state[_BATCH_KEY], True
    state.pop(_BATCH_KEY, None)
    state[_RESTORED_KEY] = False
    return [], False


def clear_batch() -> None:
    """Button callback: forgets the uploads kept across a visit to the model page."""
    st.session_state.pop(_BATCH_KEY, None)
    st.session_state[_RESTORED_KEY] = False


def chosen_study() -> str | None:
    """The key of the study opened from the batch table, if any."""
    return st.session_state.get(_CHOSEN_KEY)


def choose_study(key: str | None) -> None:
    """Remembers the study opened from the batch table (reopened after a page switch)."""
    if key is None:
        st.session_state.pop(_CHOSEN_KEY, None)
    else:
        st.session_state[_CHOSEN_KEY] = key


def results_shown(shown: bool | None = None) -> bool:
    """Whether the results fragment is on the page; records it when ``shown`` is given."""
    if shown is not None:
        st.session_state[_RESULTS_KEY] = shown
    return bool(st.session_state.get(_RESULTS_KEY, False))


def opacity_outline_on() -> bool:
    """Whether the opacity outline switch is on (off before the switch is drawn)."""
    return bool(st.session_state.get(OPACITY_OUTLINE_WIDGET, False))


# ------------------------------------------------------------------------ PACS


def keep_pacs_search(studies: list[Any], note: str) -> None:
    """Records what a PACS search found and what it left out."""
    st.session_state[_PACS_STUDIES_KEY] = studies
    st.session_state[_PACS_NOTE_KEY] = note


def pacs_search() -> tuple[list[Any], str]:
    """The studies the last PACS search found, and its note ([] and "" before any search)."""
    return (st.session_state.get(_PACS_STUDIES_KEY, []),
            st.session_state.get(_PACS_NOTE_KEY, ""))


def keep_pacs_files(files: list[tuple[str, bytes]], by_digest: dict[str, bytes]) -> None:
    """Records the instances retrieved from the PACS, and the same keyed by content digest."""
    st.session_state[_PACS_FILES_KEY] = files
    st.session_state[_PACS_SOURCES_KEY] = by_digest


def pacs_files() -> list[tuple[str, bytes]]:
    """The instances retrieved from the PACS this session, (name, DICOM bytes) pairs."""
    return list(st.session_state.get(_PACS_FILES_KEY, []))


def pacs_sources() -> dict[str, bytes]:
    """Content digest -> DICOM bytes of each instance retrieved from the PACS this session."""
    return st.session_state.get(_PACS_SOURCES_KEY, {})


# ---------------------------------------------------------------- operating point


def threshold_in_force(meta: ModelMetadata) -> float:
    """The session's operating point on P(positive class), else the shipped one.

    A choice made for another model (a re-shipped file) is ignored.
    """
    chosen = st.session_state.get(_OPERATING_POINT_KEY)
    if isinstance(chosen, dict) and chosen.get("model") == meta.sha256:
        return float(chosen["threshold"])
    return float(meta.threshold)


def is_shipped(meta: ModelMetadata, threshold: float) -> bool:
    """Whether a threshold is the model's shipped operating point."""
    return same_point(threshold, meta.threshold)


def choose_threshold(meta: ModelMetadata, threshold: float) -> None:
    """Makes ``threshold`` this session's operating point (never shared between sessions)."""
    if is_shipped(meta, threshold):
        st.session_state.pop(_OPERATING_POINT_KEY, None)
    else:
        st.session_state[_OPERATING_POINT_KEY] = {"model": meta.sha256, "threshold": threshold}


def reset_operating_point() -> None:
    """Button callback: back to the shipped operating point (this session only)."""
    st.session_state.pop(_OPERATING_POINT_KEY, None)
    st.session_state.pop(THRESHOLD_WIDGET, None)


def start_threshold_widget(meta: ModelMetadata) -> None:
    """Sets the threshold slider to the point in force, unless it already has a value."""
    if THRESHOLD_WIDGET not in st.session_state:
        st.session_state[THRESHOLD_WIDGET] = threshold_in_force(meta)


def follow_threshold_widget(meta: ModelMetadata, value: float) -> float:
    """Makes the slider's value this session's choice; returns the threshold in force."""
    if not same_point(value, threshold_in_force(meta)):
        choose_threshold(meta, float(value))
    return threshold_in_force(meta)
