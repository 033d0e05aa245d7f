"""What the page tests share: the app's path, the run timeout, getting to the model page."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "streamlit_app.py"
"""The front door that every AppTest runs."""
TIMEOUT = 120
"""Seconds an AppTest run may take (a loaded CI machine is slow)."""


def open_model_page(at: AppTest) -> AppTest:
    """Goes from the screening page to the model page through its Change button."""
    at.button(key="op_change").click().run()
    assert not at.exception
    assert at.title[0].value == "Model"
    return at
