"""Fixtures shared by the page tests.

The pages serve the tiny test model (``COVID_MODEL_PATH``). The out-of-distribution
detector is the one the served model ships with: none but the tag, pixel and lung
gates (which the synthetic grey films pass and a colour one fails: refused as not a
chest X-ray), or, to flag every chest film as unusual, statistics recorded in a copy
of the model's metadata with a threshold below any distance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from covid.explain.batching import BatchingClassifier
from covid.explain.inference import Classifier
from covid.model.metadata import read_metadata
from tests.app.pages import APP, TIMEOUT


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """Serves a given model file in fresh AppTests (with the gates it ships with).

    No opacity segmenter is served unless a test sets ``COVID_OPACITY_MODEL_PATH``.
    """
    monkeypatch.setenv("COVID_OPACITY_MODEL_PATH", str(tmp_path / "no_opacity_model.keras"))

    def make(model: Path) -> AppTest:
        monkeypatch.setenv("COVID_MODEL_PATH", str(model))
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    st.cache_resource.clear()
    yield make
    st.cache_resource.clear()


def _flagging_copy(model: Path, directory: Path) -> Path:
    """A copy of a model shipped with statistics that flag every chest film as unusual."""
    from covid.model.ood_stats import OODStats, write_model_stats

    copy = directory / "flagging.keras"
    shutil.copyfile(model, copy)
    shutil.copyfile(model.with_suffix(".json"), copy.with_suffix(".json"))
    n = Classifier.from_file(model).n_features
    stats = OODStats(np.zeros((1, n), np.float32), np.eye(n, dtype=np.float32), threshold=-1.0)
    write_model_stats(stats, copy, {"method": "test: any distance is above the limit"})
    return copy


@pytest.fixture
def make_app(tiny_model_file, monkeypatch, tmp_path):
    """Returns a factory of AppTests serving the tiny model (every film unusual, or none).

    No lung or opacity segmenter is served unless a test sets ``COVID_LUNG_MODEL_PATH``
    (and ``COVID_OPACITY_MODEL_PATH``).
    """
    monkeypatch.setenv("COVID_LUNG_MODEL_PATH", str(tmp_path / "no_lung_model.keras"))
    monkeypatch.setenv("COVID_OPACITY_MODEL_PATH", str(tmp_path / "no_opacity_model.keras"))

    def make(flagged: bool = False) -> AppTest:
        model = _flagging_copy(tiny_model_file, tmp_path) if flagged else tiny_model_file
        monkeypatch.setenv("COVID_MODEL_PATH", str(model))
        st.cache_resource.clear()
        st.cache_data.clear()
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    yield make
    st.cache_resource.clear()


@pytest.fixture
def meta(tiny_model_file):
    return read_metadata(tiny_model_file)


@pytest.fixture
def calls(monkeypatch):
    """Counts the network calls the page makes through the server's batching classifier."""
    counts = {"forward": 0, "explain": []}
    forward, batch, explain = (BatchingClassifier.forward_batch, BatchingClassifier.explain_batch,
                               BatchingClassifier.explain)

    def counting_forward(self, x, *args, **kwargs):
        counts["forward"] += len(x)
        return forward(self, x, *args, **kwargs)

    def counting_batch(self, x, *args, **kwargs):
        counts["forward"] += len(x)
        return batch(self, x, *args, **kwargs)

    def counting_explain(self, x, target=None, method="gradcam", **kwargs):
        counts["explain"].append((target, method))
        return explain(self, x, target=target, method=method, **kwargs)

    monkeypatch.setattr(BatchingClassifier, "forward_batch", counting_forward)
    monkeypatch.setattr(BatchingClassifier, "explain_batch", counting_batch)
    monkeypatch.setattr(BatchingClassifier, "explain", counting_explain)
    return counts


@pytest.fixture
def lungs_app(make_app, tiny_lung_file, monkeypatch, plant_lungs):
    """AppTests serving the tiny model with a lung segmenter whose masks are planted."""

    def make(flagged: bool = False) -> AppTest:
        monkeypatch.setenv("COVID_LUNG_MODEL_PATH", str(tiny_lung_file))
        return make_app(flagged)

    return make
