"""The shipped model: it loads, its SHA-256 matches, and it reads real X-rays."""

import csv
import io
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.scoring import split_side
from covid.inputs.preprocess import FOCUS_MODES
from covid.model.classes import probability_column
from covid.model.metadata import file_sha256, read_metadata
from covid.model.network import DEFAULT_MODEL_PATH
from covid.screening.pipeline import analyse
from covid.training.catalogue import CLASS_NAMES

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


def _evaluation_rows() -> dict[str, dict[str, str]]:
    """The evaluation's per-film test rows (``NAME.test_scores.csv``), keyed by file."""
    text = artefact_paths(DEFAULT_MODEL_PATH)["scores"].read_text()
    return {row["file"]: row for row in csv.DictReader(io.StringIO(text))}


def test_serving_reproduces_the_evaluation_on_real_xrays(shipped_models, shared_data_dir):
    """Bytes through the serving pipeline (decode, segment, focus, score) on 20 test films a class.

    The shipped figures were measured by ``covid.evaluate`` from files on disk; the page
    and the CLI score uploaded bytes. One preprocessing path means both give each film
    the same calibrated probabilities and the same label at the shipped operating point.
    P(COVID) must also rank these COVID films above these Normal ones.
    """
    split = json.loads(artefact_paths(DEFAULT_MODEL_PATH)["split"].read_text())
    films, evaluated = split_side(split, "test"), _evaluation_rows()
    meta = shipped_models.classifier.metadata
    columns = [probability_column(name) for name in meta.class_names]
    p_covid = {}
    for name in [n for n in CLASS_NAMES if n in meta.class_names]:
        chosen = np.flatnonzero(films.labels == CLASS_NAMES.index(name))[:20]
        results = analyse([(films.names[i], films.paths[i].read_bytes()) for i in chosen],
                          shipped_models.classifier, segmenter=shipped_models.segmenter)
        assert all(r.error is None for r in results)
        for i, result in zip(chosen, results, strict=True):
            row = evaluated[films.names[i]]
            expected = np.array([float(row[c]) for c in columns])
            np.testing.assert_allclose(result.probs, expected, atol=2e-3, err_msg=row["file"])
            assert result.label == row["label"], row["file"]
        p_covid[name] = [r.p_positive for r in results]
    auc = roc_auc_score([1] * 20 + [0] * 20, p_covid["COVID"] + p_covid["Normal"])
    assert auc >= 0.9, f"AUC {auc:.3f} on 40 held-out films"
