"""Fixtures shared by the page tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.app.pages import APP, TIMEOUT


@pytest.fixture
def serve(monkeypatch):
    """Serves a given model file in fresh AppTests (with the gates it ships with)."""

    def make(model: Path) -> AppTest:
        monkeypatch.setenv("COVID_MODEL_PATH", str(model))
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    st.cache_resource.clear()
    yield make
    st.cache_resource.clear()
