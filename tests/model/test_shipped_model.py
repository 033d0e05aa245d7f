"""The shipped model: it loads, its SHA-256 matches, and it reads real X-rays."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covid.inputs.preprocess import FOCUS_MODES
from covid.model.network import DEFAULT_MODEL_PATH, file_sha256, read_metadata
from covid.screening.pipeline import analyse
from covid.training.catalogue import CLASS_NAMES
from covid.training.evaluate import artefact_paths, split_side

pytestmark = pytest.mark.skipif(
    not DEFAULT_MODEL_PATH.exists(), reason=f"no shipped model at {DEFAULT_MODEL_PATH}"
)


def test_size_sha_and_metadata():
    meta = read_metadata(DEFAULT_MODEL_PATH)
    assert DEFAULT_MODEL_PATH.stat().st_size <= 100 * 2**20
    assert file_sha256(DEFAULT_MODEL_PATH) == meta.sha256
    assert meta.class_names in (["COVID", "Normal"], list(CLASS_NAMES))
    assert meta.input_size in (128, 160, 224) and meta.input_mode in FOCUS_MODES
    assert 0 < meta.threshold < 1 and meta.temperature > 0
    for key in ("sensitivity", "specificity", "ece_before_scaling", "ece_after_scaling"):
        assert key in meta.metrics
    assert "auc" in meta.metrics or "auc_covid_vs_normal" in meta.metrics


def test_classifies_real_xrays_from_its_test_split(shipped_models, shared_data_dir):
    """Bytes through the serving pipeline (segment, focus, score) on 20 held-out films a class.

    The operating point favours sensitivity (>= 0.98 of findings on validation), so
    COVID films must nearly all be flagged, most normal films pass, other pneumonias
    (for a model that knows them) are mostly admitted, and P(COVID) ranks COVID
    above Normal.
    """
    films = split_side(json.loads(artefact_paths(DEFAULT_MODEL_PATH)["split"].read_text()),
                       "test")
    meta = shipped_models.classifier.metadata
    scores = {}
    for name in [n for n in CLASS_NAMES if n in meta.class_names]:
        chosen = np.flatnonzero(films.labels == CLASS_NAMES.index(name))[:20]
        results = analyse([(films.names[i], films.paths[i].read_bytes()) for i in chosen],
                          shipped_models.classifier, segmenter=shipped_models.segmenter)
        assert all(r.error is None for r in results)
        scores[name] = [r.p_positive for r in results]
        right = sum(r.label == name for r in results)
        if name == "Other pneumonia":  # admitted, whichever finding it is labelled with
            right = sum(r.label != "Normal" for r in results)
        assert right >= (12 if name == "Normal" else 18), f"{name}: {right}/20 correct"
    auc = roc_auc_score([1] * 20 + [0] * 20, scores["COVID"] + scores["Normal"])
    assert auc >= 0.9, f"AUC {auc:.3f} on 40 held-out films"
