"""The backend probe's figures, handed from the probing process to the trainer it re-executes.

Apart from :mod:`covid.training.backend` so that the trainers can read the record
without importing the probe, which itself builds the trainer's step to time it.
"""

from __future__ import annotations

import json
import os

PROBE_ENV = "COVID_BACKEND_PROBE"
"""The environment variable that carries the probe's results (JSON) into the trainer."""


def probe_record() -> list[dict]:
    """The probe results handed down by the backend choice (empty when none ran)."""
    return json.loads(os.environ.get(PROBE_ENV, "[]"))
