"""What a test does when a server it needs (Orthanc, Node.js, Chromium) is not installed.

The README's test command (``scripts/test.sh``) installs every server and sets
:data:`REQUIRE_ENV`: there an absent server is a broken set-up, and the test fails.
Anywhere else (a quick ``pytest`` on a laptop without Orthanc) the test skips and
says what is missing and how to install it, so that the fast command works anywhere.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "COVID_TESTS_REQUIRE_SERVERS"
"""Set to ``1`` by ``scripts/test.sh`` (and so by CI)."""


def servers_required() -> bool:
    """Whether an absent server fails the test rather than skipping it."""
    return os.environ.get(REQUIRE_ENV) == "1"


def server_missing(what: str, how: str) -> None:
    """Skips the test (or fails it under the full test command) for a missing server.

    Args:
        what: What is missing, e.g. "Orthanc with its DICOMweb plugin".
        how: How to install it, e.g. "apt-get install orthanc orthanc-dicomweb".

    Raises:
        pytest.skip.Exception or pytest.fail.Exception: Always.
    """
    message = f"{what} is not installed: {how} (scripts/test.sh does)"
    if servers_required():
        pytest.fail(message)
    pytest.skip(message)
