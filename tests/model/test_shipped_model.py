"""The shipped model: it loads, its SHA-256 matches, and it reads real X-rays."""

import json

import numpy as np
import pytest

from covid.explain.inference import Classifier
from covid.model.classifier import DEFAULT_MODEL_PATH, file_sha256, read_metadata
from covid.training.data import load_images
from covid.training.evaluate import artefact_paths

pytestmark = pytest.mark.skipif(
    not DEFAULT_MODEL_PATH.exists(), reason=f"no shipped model at {DEFAULT_MODEL_PATH}"
)


@pytest.fixture(scope="module")
def classifier():
    return Classifier.from_file(DEFAULT_MODEL_PATH)


def test_size_sha_and_metadata():
    meta = read_metadata(DEFAULT_MODEL_PATH)
    assert DEFAULT_MODEL_PATH.stat().st_size <= 100 * 2**20
    assert file_sha256(DEFAULT_MODEL_PATH) == meta.sha256
    assert meta.class_names == ["COVID", "Normal"] and meta.input_size == 224
    assert 0 < meta.threshold < 1 and meta.temperature > 0
    for key in ("auc", "auc_ci95", "sensitivity", "specificity", "ppv", "npv",
                "ece_before_scaling", "ece_after_scaling"):
        assert key in meta.metrics


def test_classifies_real_xrays_from_its_test_split(classifier, shared_data_dir):
    split = json.loads(artefact_paths(DEFAULT_MODEL_PATH)["split"].read_text())
    chosen = {name: [f for f in split["files"]["test"] if f.startswith(name + "/")][:10]
              for name in ("COVID", "Normal")}
    for name, files in chosen.items():
        x = load_images(tuple(shared_data_dir / f for f in files), 224).astype(np.float32)
        probs = classifier.predict_batch(x)
        labels = [classifier.label_for(float(p)) for p in probs[:, 0]]
        correct = sum(label == name for label in labels)
        assert correct >= 9, f"{name}: {correct}/10 correct"
