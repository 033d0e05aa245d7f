"""The ``st.cache_resource`` loaders: the models and the detector, once per process.

Every session shares what they return. The classifier is warmed up as it loads
(its graphs traced in a background thread while early films are answered
eagerly) and the lung segmenter before it is returned, so that no request pays
for tracing.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one,
and ``COVID_LUNG_MODEL_PATH`` for another lung segmenter. The loaders are keyed
by the file's path and (size, mtime), so a re-shipped model is reloaded; what
they return is shared by every session and never mutated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from covid.model.classifier import DEFAULT_MODEL_PATH
from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter

MODEL_ENV = "COVID_MODEL_PATH"
"""Environment variable naming the model to serve."""
LUNG_MODEL_ENV = "COVID_LUNG_MODEL_PATH"
"""Environment variable naming the lung segmenter to serve."""


def model_path() -> Path:
    """The model to serve: ``$COVID_MODEL_PATH``, else the shipped model."""
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_MODEL_PATH)


def lung_model_path() -> Path:
    """The lung segmenter to serve: ``$COVID_LUNG_MODEL_PATH``, else the shipped one."""
    return Path(os.environ.get(LUNG_MODEL_ENV) or DEFAULT_LUNG_MODEL_PATH)


def file_stamp(path: Path) -> tuple[int, int]:
    """A model file's (size, mtime_ns), or (0, 0) when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_size, stat.st_mtime_ns)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def load_classifier(path: str, stamp: tuple[int, int]) -> Classifier:
    """Loads and verifies the classifier once per process (per file version).

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns), so that a re-shipped model is reloaded.

    Returns:
        The :class:`covid.explain.inference.Classifier`; shared by every session, never mutated.

    Raises:
        ModelFileError: The model or its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.explain.inference import Classifier  # deferred: imports TensorFlow

    classifier = Classifier.from_file(path)
    # Traced in a thread from now on; a film arriving meanwhile is answered eagerly,
    # so that neither the first visitor nor the first film waits for the tracing.
    classifier.warm_up_in_background()
    return classifier


@st.cache_resource(show_spinner=False, max_entries=2)
def load_ood_detector(path: str, stamp: tuple[int, int]) -> Any | None:
    """Loads the out-of-distribution detector shipped with the model, if any.

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns).

    Returns:
        The detector from :func:`covid.screening.ood.load_detector` (cheap checks only
        when the model ships no out-of-distribution statistics).
    """
    del stamp
    from covid.screening.ood import load_detector  # deferred: imports scikit-learn

    return load_detector(path)


def load_model(path: Path) -> tuple[Classifier, Any | None]:
    """The cached classifier and detector for a model file.

    Raises:
        ModelFileError: The model or its metadata is missing, or the SHA-256 differs.
    """
    classifier = load_classifier(str(path), file_stamp(path))
    ood = load_ood_detector(str(path), file_stamp(path))
    return classifier, ood


@st.cache_resource(show_spinner="Loading the lung segmenter…", max_entries=2)
def load_lung_segmenter(path: str, stamp: tuple[int, int]) -> LungSegmenter:
    """Loads and verifies the lung segmenter once per process (per file version).

    Raises:
        ModelFileError: The file or its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.model.lungs import LungSegmenter

    segmenter = LungSegmenter.from_file(path)
    segmenter.warm_up()  # a small graph: traced now, before the first film
    return segmenter


def segmenter_for(classifier: Classifier) -> LungSegmenter | None:
    """The cached lung segmenter to run beside a classifier, or None.

    None when no segmenter file is there and the classifier reads whole films
    (then the page shows no lung outline and no share of evidence).

    Raises:
        ModelFileError: A lung-focused classifier has no segmenter, or another
            one than it was trained with; or the file is altered.
    """
    from covid.screening.engine import check_segmenter, wants_segmenter

    path, meta = lung_model_path(), classifier.metadata
    if not wants_segmenter(meta, path):
        return None
    segmenter = load_lung_segmenter(str(path), file_stamp(path))
    check_segmenter(meta, segmenter, model_path(), path)
    return segmenter
