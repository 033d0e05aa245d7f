"""The pages' URL paths, and switching between them from a button.

``streamlit_app.py`` builds the :class:`st.Page` objects and registers them here
(:func:`register`), so that a page can switch to another (:func:`go_to`) without
importing it.
"""

from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

SCREENING, MODEL = "screening", "model"
"""The pages' URL paths."""

_PAGES: dict[str, st.Page] = {}


def register(pages: Mapping[str, st.Page]) -> list[st.Page]:
    """Records the dashboard's pages, keyed by URL path; returns them in order."""
    _PAGES.update(pages)
    return list(pages.values())


def go_to(page: str) -> None:
    """Switches to another page (for buttons)."""
    st.switch_page(_PAGES[page])
