"""The page's Streamlit settings agree with the library's own limits."""

from __future__ import annotations

from pathlib import Path

import tomllib

from covid.inputs.errors import MAX_FILE_BYTES

CONFIG = Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml"


def test_the_upload_cap_is_the_decoders_file_limit():
    server = tomllib.loads(CONFIG.read_text())["server"]
    assert server["maxUploadSize"] * 1024 * 1024 == MAX_FILE_BYTES


def test_errors_never_show_details_and_nothing_is_sent_home_to_streamlit():
    config = tomllib.loads(CONFIG.read_text())
    assert config["client"]["showErrorDetails"] == "none"  # no traceback reaches the page
    assert config["browser"]["gatherUsageStats"] is False
