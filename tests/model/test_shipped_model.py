"""The shipped model: it loads, its SHA-256 matches, and it reads real X-rays."""

import json

import pytest
from sklearn.metrics import roc_auc_score

from covid.inputs.preprocess import FOCUS_MODES
from covid.model.network import DEFAULT_MODEL_PATH, file_sha256, read_metadata
from covid.screening.pipeline import analyse
from covid.training.evaluate import artefact_paths

pytestmark = pytest.mark.skipif(
    not DEFAULT_MODEL_PATH.exists(), reason=f"no shipped model at {DEFAULT_MODEL_PATH}"
)


def test_size_sha_and_metadata():
    meta = read_metadata(DEFAULT_MODEL_PATH)
    assert DEFAULT_MODEL_PATH.stat().st_size <= 100 * 2**20
    assert file_sha256(DEFAULT_MODEL_PATH) == meta.sha256
    assert meta.class_names == ["COVID", "Normal"] and meta.input_size in (160, 224)
    assert meta.input_mode in FOCUS_MODES
    assert 0 < meta.threshold < 1 and meta.temperature > 0
    for key in ("auc", "auc_ci95", "sensitivity", "specificity", "ppv", "npv",
                "ece_before_scaling", "ece_after_scaling"):
        assert key in meta.metrics


def test_classifies_real_xrays_from_its_test_split(shipped_models, shared_data_dir):
    """Bytes through the serving pipeline (segment, focus, score) on 20 + 20 held-out films.

    The operating point favours sensitivity (>= 0.98 on validation), so COVID films
    must nearly all be flagged, most normal films pass, and the scores rank them.
    """
    split = json.loads(artefact_paths(DEFAULT_MODEL_PATH)["split"].read_text())
    chosen = {name: [f for f in split["files"]["test"] if f.startswith(name + "/")][:20]
              for name in ("COVID", "Normal")}
    scores = {}
    for name, files in chosen.items():
        results = analyse([(f, (shared_data_dir / f).read_bytes()) for f in files],
                          shipped_models.classifier, segmenter=shipped_models.segmenter)
        assert all(r.error is None for r in results)
        scores[name] = [r.p_positive for r in results]
        correct = sum(r.label == name for r in results)
        assert correct >= (18 if name == "COVID" else 12), f"{name}: {correct}/20 correct"
    auc = roc_auc_score([1] * 20 + [0] * 20, scores["COVID"] + scores["Normal"])
    assert auc >= 0.9, f"AUC {auc:.3f} on 40 held-out films"
