"""A missing server skips a test, except under the full test command, where it fails."""

from __future__ import annotations

import pytest

from tests.servers import REQUIRE_ENV, server_missing


def test_a_missing_server_skips_with_its_name_and_the_cure(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="Orthanc is not installed: run `apt"):
        server_missing("Orthanc", "run `apt-get install orthanc`")


def test_under_the_full_test_command_a_missing_server_fails(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"Node\.js is not installed"):
        server_missing("Node.js", "run `apt-get install nodejs npm`")
