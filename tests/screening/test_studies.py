"""One session's studies: scored once, re-labelled at the threshold, maps computed once."""

import types

import numpy as np
import pytest

import covid.screening.pipeline
from covid import DISCLAIMER
from covid.screening.pipeline import StudyResult
from covid.screening.studies import (
    PREDICTED,
    DisplaySettings,
    Study,
    at_threshold,
    class_map,
    content_digest,
    prune_maps,
    render_map,
    report_name,
    score_files,
    target_index,
)
from covid.screening.triage import ADMIT, GO_HOME, triage_message

CLASSES = ["COVID", "Normal"]


class _FakeClassifier:
    """The parts of :class:`covid.explain.inference.Classifier` the helpers use."""

    def __init__(self, sha: str = "a" * 64) -> None:
        self.metadata = types.SimpleNamespace(sha256=sha, positive_class="COVID",
                                              class_names=CLASSES, threshold=0.5)
        self.explained = []

    def label_for(self, p_positive, threshold=None):
        threshold = self.metadata.threshold if threshold is None else threshold
        return "COVID" if p_positive >= threshold else "Normal"

    def explain(self, x, target=None, method="gradcam"):
        self.explained.append((target, method))
        return types.SimpleNamespace(cam=np.full((4, 4), 0.5 + 0.1 * target, np.float32))


def _result(name: str, p: float = 0.4) -> StudyResult:
    label = "COVID" if p >= 0.5 else "Normal"
    return StudyResult(name=name, probs=np.array([p, 1 - p]), p_positive=p, label=label,
                       triage=triage_message(label, "COVID"),
                       pixels=np.zeros((64, 64), np.uint8),
                       model_input=np.zeros((32, 32, 1), np.uint8))


@pytest.fixture
def analysed(monkeypatch):
    """Replaces the pipeline's ``analyse`` with a recorder of the files it scores."""
    seen = []

    def analyse(files, classifier, ood=None, progress=None):
        seen.append([name for name, _ in files])
        if progress is not None:
            progress(1.0)
        return [_result(name) for name, _ in files]

    monkeypatch.setattr(covid.screening.pipeline, "analyse", analyse)
    return seen


def test_each_upload_is_scored_once_and_the_store_follows_the_uploads(analysed):
    classifier, store = _FakeClassifier(), {}
    first = score_files([("a.png", b"1"), ("b.png", b"2")], classifier, store)
    assert [s.result.name for s in first] == ["a.png", "b.png"] and analysed == [["a.png", "b.png"]]
    assert first[0].digest == content_digest(b"1")
    assert first[0].key == f"{'a' * 16}:{content_digest(b'1')}:a.png"

    fractions = []
    second = score_files([("b.png", b"2"), ("c.png", b"3")], classifier, store,
                         progress=fractions.append)
    assert analysed[-1] == ["c.png"] and fractions == [1.0]
    assert second[0].result is first[1].result  # cached, not re-scored
    assert sorted(store) == sorted(s.key for s in second)  # a.png pruned

    score_files([("b.png", b"2")], _FakeClassifier(sha="b" * 64), store)
    assert analysed[-1] == ["b.png"]  # another model scores again


def test_same_content_under_another_name_is_its_own_study(analysed):
    studies = score_files([("a.png", b"1"), ("copy.png", b"1")], _FakeClassifier(), {})
    assert studies[0].digest == studies[1].digest and studies[0].key != studies[1].key


def test_at_threshold_relabels_without_touching_the_cache():
    cached = _result("a.png", p=0.4)
    study = Study("k", "d", cached)
    low = at_threshold([study], _FakeClassifier(), 0.3)[0]
    assert (low.key, low.digest) == ("k", "d")
    assert low.result.label == "COVID" and low.result.triage == f"{ADMIT} {DISCLAIMER}"
    assert cached.label == "Normal" and cached.triage.startswith(GO_HOME)
    assert study.result is cached


def test_target_index_follows_the_shown_label():
    result = _result("a.png", p=0.9)
    assert target_index(result, PREDICTED, CLASSES) == 0
    assert target_index(result, "Normal", CLASSES) == 1


def test_maps_are_computed_once_per_class_and_method_and_pruned():
    classifier, store = _FakeClassifier(), {}
    study = Study("k", "d", _result("a.png"))
    first = class_map(study, classifier, 1, "gradcam", store)
    assert class_map(study, classifier, 1, "gradcam", store) is first
    class_map(study, classifier, 1, "gradcam++", store)
    class_map(study, classifier, 0, "gradcam", store)
    assert classifier.explained == [(1, "gradcam"), (1, "gradcam++"), (0, "gradcam")]
    store[("gone", 0, "gradcam")] = first
    prune_maps(store, {"k"})
    assert {key[0] for key in store} == {"k"} and len(store) == 3


@pytest.mark.parametrize("view", ["Overlay", "Heatmap alone", "Contour lines"])
def test_render_map_draws_every_view_at_the_xray_size(view):
    pixels = np.tile(np.arange(80, dtype=np.uint8), (64, 1))
    cam = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    image = render_map(pixels, cam, DisplaySettings(view=view))
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8


def test_opacity_only_changes_the_overlay():
    pixels = np.full((64, 64), 100, np.uint8)
    cam = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    faint = render_map(pixels, cam, DisplaySettings(opacity=0.1))
    strong = render_map(pixels, cam, DisplaySettings(opacity=0.9))
    assert not np.array_equal(faint, strong)
    alone = [render_map(pixels, cam, DisplaySettings(view="Heatmap alone", opacity=o))
             for o in (0.1, 0.9)]
    np.testing.assert_array_equal(*alone)


def test_report_name():
    assert report_name("COVID-1.png") == "COVID-1-report.pdf"
    assert report_name(" .png") == "study-report.pdf"
