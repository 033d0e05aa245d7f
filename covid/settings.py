"""Where the models and the data are: one settings object for the page and every command.

Each setting is read from the environment when asked for, so that a test or a
deployment that sets a variable is honoured by the page and the CLI alike. The
shipped models are found next to the package, whatever the working directory: a
radiologist who runs ``python -m covid predict`` from their own folder gets the
shipped model, not "file not found". A path given in a variable is taken as
written (relative to the working directory, as any shell path).

Importing this module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout: the folder that holds ``covid/``, ``models/`` and ``streamlit_app.py``."""
MODELS_DIR = PROJECT_ROOT / "models"
"""The shipped models and their metadata."""

MODEL_ENV = "COVID_MODEL_PATH"
LUNG_MODEL_ENV = "COVID_LUNG_MODEL_PATH"
OPACITY_MODEL_ENV = "COVID_OPACITY_MODEL_PATH"
DATA_ENV = "COVID_DATA_DIR"
"""The environment variables, each overriding one default below."""

MODEL_FILE = "covid_resnet50.keras"
LUNG_MODEL_FILE = "lung_unet.keras"
OPACITY_MODEL_FILE = "opacity_unet.keras"
"""The shipped files' names in :data:`MODELS_DIR` (a trainer's ``--ship`` writes them)."""


@dataclass(frozen=True)
class Settings:
    """The paths every stage needs.

    Attributes:
        model_path: The classifier's ``.keras`` file.
        lung_model_path: The lung segmenter's ``.keras`` file.
        opacity_model_path: The opacity segmenter's ``.keras`` file (optional at
            run time: without it the outputs carry no opacity figures).
        data_dir: The shared data folder (``../shared/data`` beside the checkout).
    """

    model_path: Path
    lung_model_path: Path
    opacity_model_path: Path
    data_dir: Path


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings now: each variable that is set and not empty, else the default.

    Args:
        environ: The environment to read (``os.environ`` when None).
    """
    env = os.environ if environ is None else environ

    def path(variable: str, default: Path) -> Path:
        return Path(env[variable]) if env.get(variable) else default

    return Settings(
        model_path=path(MODEL_ENV, MODELS_DIR / MODEL_FILE),
        lung_model_path=path(LUNG_MODEL_ENV, MODELS_DIR / LUNG_MODEL_FILE),
        opacity_model_path=path(OPACITY_MODEL_ENV, MODELS_DIR / OPACITY_MODEL_FILE),
        data_dir=path(DATA_ENV, PROJECT_ROOT.parent / "shared" / "data"),
    )
