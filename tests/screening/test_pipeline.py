import io

import numpy as np
import pytest
from PIL import Image

from covid.explain.inference import Classifier
from covid.model.decision import ADVICE
from covid.screening.pipeline import analyse, percentages, rank_by_suspicion

ADMIT, GO_HOME = ADVICE["COVID"], ADVICE["Normal"]


def _png(seed: int, size: int = 72) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size + 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def classifier(tiny_model_file):
    return Classifier.from_file(tiny_model_file)


@pytest.mark.parametrize("probs", [[0.333333, 0.666667], [0.5, 0.5], [0.99951, 0.00049],
                                   [0.1234, 0.8766], [1.0, 0.0]])
def test_percentages_sum_to_exactly_100(probs):
    values = percentages(np.array(probs))
    assert sum(round(v * 10) for v in values) == 1000
    assert all(abs(v - p * 100) <= 0.1 + 1e-9 for v, p in zip(values, probs, strict=True))


def test_bad_file_does_not_stop_the_others(classifier):
    files = [("a.png", _png(1)), ("broken.png", b"\x89PNG\r\n\x1a\nnot really"),
             ("b.png", _png(2)), ("empty.jpg", b"")]
    results = analyse(files, classifier, batch_size=2)
    assert [r.name for r in results] == ["a.png", "broken.png", "b.png", "empty.jpg"]
    for good in (results[0], results[2]):
        assert good.error is None
        assert good.probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert good.label in ("COVID", "Normal")
        assert good.model_input.shape == (32, 32, 1)
        assert "not a medical device" in good.triage
    assert results[1].error.startswith("broken.png: ")
    assert results[3].error.startswith("empty.jpg: ") and "empty" in results[3].error
    assert results[1].probs is None and results[1].triage is None


def test_threshold_drives_label_and_triage(classifier):
    files = [("a.png", _png(3))]
    always = analyse(files, classifier, threshold=0.0)[0]
    never = analyse(files, classifier, threshold=1.01)[0]
    assert always.label == "COVID" and always.triage.startswith(ADMIT)
    assert never.label == "Normal" and never.triage.startswith(GO_HOME)
    assert always.p_positive == never.p_positive


def test_rank_by_suspicion_puts_errors_last(classifier):
    files = [(f"{i}.png", _png(i)) for i in range(5)] + [("bad.png", b"junk")]
    ranked = rank_by_suspicion(analyse(files, classifier))
    scores = [r.p_positive for r in ranked[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert ranked[-1].name == "bad.png"


def test_progress_reaches_one(classifier):
    seen = []
    analyse([(f"{i}.png", _png(i)) for i in range(5)], classifier, progress=seen.append,
            batch_size=2)
    assert seen[-1] == 1.0 and seen == sorted(seen)
