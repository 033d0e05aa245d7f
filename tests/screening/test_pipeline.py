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
    scores = [r.p_finding for r in ranked[:-1]]  # P(any finding), most suspicious first
    assert scores == sorted(scores, reverse=True)
    assert ranked[-1].name == "bad.png"


def test_progress_reaches_one(classifier):
    seen = []
    analyse([(f"{i}.png", _png(i)) for i in range(5)], classifier, progress=seen.append,
            batch_size=2)
    assert seen[-1] == 1.0 and seen == sorted(seen)


@pytest.fixture(scope="module")
def opacity_segmenter(tmp_path_factory):
    from covid.model.opacity import OpacitySegmenter
    from tests.opacity_models import save_tiny_opacity

    path = save_tiny_opacity(tmp_path_factory.mktemp("opacity") / "opacity.keras")
    return OpacitySegmenter.from_file(path)


def test_a_chest_film_is_outlined_and_a_refused_one_is_not(
        classifier, tiny_lung_file, plant_lungs, opacity_segmenter):
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import MAX_SCORE
    from covid.screening.ood import OODDetector
    from tests.films import pattern, png

    colour = np.random.default_rng(0).integers(0, 255, (96, 112, 3), dtype=np.uint8)
    files = [("chest.png", png(pattern(96, 112))), ("photo.png", png(colour))]
    chest, photo = analyse(files, classifier, ood=OODDetector(), opacity=opacity_segmenter,
                           segmenter=LungSegmenter.from_file(tiny_lung_file))
    assert not chest.refused and photo.refused
    # the tiny segmenter sees opacity everywhere: all of both planted lungs
    assert np.array_equal(chest.opacity.mask, chest.lungs)
    assert chest.opacity.severity.score == MAX_SCORE
    assert chest.opacity.severity.extent == pytest.approx(1.0)
    assert photo.opacity is None
    without = analyse(files[:1], classifier, ood=OODDetector(),
                      segmenter=LungSegmenter.from_file(tiny_lung_file))[0]
    assert without.opacity is None  # no opacity segmenter, no figures


def test_the_opacity_segmenter_is_optional_and_verified(tiny_model_file, tiny_lung_file,
                                                        tmp_path):
    from covid.model.metadata import ModelFileError
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.engine import load_models
    from tests.opacity_models import save_tiny_opacity

    missing = load_models(tiny_model_file, tiny_lung_file, warm_up=False,
                          opacity_path=tmp_path / "none.keras")
    assert missing.opacity is None and missing.segmenter is not None
    path = save_tiny_opacity(tmp_path / "opacity.keras")
    loaded = load_models(tiny_model_file, tiny_lung_file, warm_up=False, opacity_path=path)
    assert isinstance(loaded.opacity, OpacitySegmenter)
    path.write_bytes(path.read_bytes() + b"x")  # altered after its SHA-256 was recorded
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_models(tiny_model_file, tiny_lung_file, warm_up=False, opacity_path=path)
