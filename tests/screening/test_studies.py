"""One session's studies: scored once, re-labelled at the threshold, maps computed once,
placed on the film, drawn with the lung outline and measured against the lungs."""

import types

import numpy as np
import pytest

from covid import DISCLAIMER
from covid.explain.localisation import energy_inside, lung_outline
from covid.inputs.preprocess import LungBox
from covid.model.decision import ADVICE
from covid.screening.pipeline import StudyResult
from covid.screening.studies import (
    MAP_OUTLINE,
    PREDICTED,
    XRAY_OUTLINE,
    DisplaySettings,
    Study,
    at_threshold,
    class_map,
    content_digest,
    evidence_in_lungs,
    known_map,
    measure_relabelled,
    prune_maps,
    render_map,
    report_name,
    score_files,
    target_index,
    xray_image,
)
from tests.results import scored

ADMIT, GO_HOME = ADVICE["COVID"], ADVICE["Normal"]

CLASSES = ["COVID", "Normal"]


class _FakeClassifier:
    """The parts of :class:`covid.explain.inference.Classifier` the helpers use."""

    def __init__(self, sha: str = "a" * 64) -> None:
        self.metadata = types.SimpleNamespace(sha256=sha, positive_class="COVID",
                                              class_names=CLASSES, threshold=0.5)
        self.explained = []

    def explain(self, x, target=None, method="gradcam"):
        self.explained.append((target, method))
        return types.SimpleNamespace(cam=np.full((4, 4), 0.5 + 0.1 * target, np.float32))


def _lungs(shape=(64, 64)) -> np.ndarray:
    """Two rectangular lung fields, one each side of the midline."""
    mask = np.zeros(shape, bool)
    mask[10:50, 8:28] = True
    mask[10:50, 36:56] = True
    return mask


def _result(name: str, p: float = 0.4, box: LungBox | None = None,
            lungs: np.ndarray | None = None, **fields) -> StudyResult:
    return scored(name, p, pixels=np.zeros((64, 64), np.uint8),
                  model_input=np.zeros((32, 32, 1), np.uint8),
                  box=box or LungBox(0, 0, 64), lungs=lungs, **fields)


class _FakeSegmenter:
    def __init__(self, sha: str = "c" * 64) -> None:
        self.metadata = types.SimpleNamespace(sha256=sha)


class _Recorder(list):
    """Stands in for the pipeline's ``analyse``, recording the files it is asked to score."""

    def __call__(self, files, classifier, ood=None, progress=None, segmenter=None,
                 opacity=None):
        self.append([name for name, _ in files])
        self.segmenters = [*getattr(self, "segmenters", []), segmenter]
        self.opacities = [*getattr(self, "opacities", []), opacity]
        if progress is not None:
            progress(1.0)
        return [_result(name) for name, _ in files]


@pytest.fixture
def analysed() -> _Recorder:
    """A recorder to pass as ``score_files(..., analyse=analysed)``."""
    return _Recorder()


def test_each_upload_is_scored_once_and_the_store_follows_the_uploads(analysed):
    classifier, store = _FakeClassifier(), {}
    first = score_files([("a.png", b"1"), ("b.png", b"2")], classifier, store,
                        analyse=analysed)
    assert [s.result.name for s in first] == ["a.png", "b.png"] and analysed == [["a.png", "b.png"]]
    assert first[0].digest == content_digest(b"1")
    assert first[0].key == f"{'a' * 16}:{content_digest(b'1')}:a.png"

    fractions = []
    second = score_files([("b.png", b"2"), ("c.png", b"3")], classifier, store,
                         progress=fractions.append, analyse=analysed)
    assert analysed[-1] == ["c.png"] and fractions == [1.0]
    assert second[0].result is first[1].result  # cached, not re-scored
    assert sorted(store) == sorted(s.key for s in second)  # a.png pruned

    score_files([("b.png", b"2")], _FakeClassifier(sha="b" * 64), store, analyse=analysed)
    assert analysed[-1] == ["b.png"]  # another model scores again


def test_a_segmenter_is_passed_on_and_keys_its_own_results(analysed):
    classifier, store, segmenter = _FakeClassifier(), {}, _FakeSegmenter()
    without = score_files([("a.png", b"1")], classifier, store, analyse=analysed)
    with_lungs = score_files([("a.png", b"1")], classifier, store, segmenter=segmenter,
                             analyse=analysed)
    assert analysed.segmenters == [None, segmenter]  # a segmenter shipped meanwhile scores again
    assert with_lungs[0].key == f"{'a' * 16}+lungs:{'c' * 8}:{content_digest(b'1')}:a.png"
    assert without[0].key != with_lungs[0].key and list(store) == [with_lungs[0].key]


def test_an_opacity_segmenter_is_passed_on_and_a_new_one_scores_again(analysed):
    classifier, store, lungs = _FakeClassifier(), {}, _FakeSegmenter()
    old, new = _FakeSegmenter("d" * 64), _FakeSegmenter("e" * 64)
    first = score_files([("a.png", b"1")], classifier, store, segmenter=lungs, opacity=old,
                        analyse=analysed)
    again = score_files([("a.png", b"1")], classifier, store, segmenter=lungs, opacity=old,
                        analyse=analysed)
    shipped = score_files([("a.png", b"1")], classifier, store, segmenter=lungs, opacity=new,
                          analyse=analysed)
    assert analysed.opacities == [old, new]  # the same one is cached; a new one scores again
    assert again[0].key == first[0].key
    assert f"+opacity:{'e' * 8}:" in shipped[0].key and list(store) == [shipped[0].key]


def test_a_session_keeps_at_most_limit_results_and_drops_removed_files(analysed):
    classifier, store = _FakeClassifier(), {}
    files = [(f"{i}.png", bytes([i])) for i in range(5)]
    studies = score_files(files, classifier, store, limit=3, analyse=analysed)
    assert analysed == [["0.png", "1.png", "2.png"]] and len(store) == 3
    assert [s.result.name for s in studies] == [name for name, _ in files]
    for study in studies[3:]:  # over the limit: named, with the reason, nothing kept
        assert study.result.error.startswith(f"{study.result.name}: not scored")
        assert "at most 3 files" in study.result.error and study.result.probs is None
        assert study.key not in store

    # removing files frees room: the next ones are scored, the removed ones forgotten
    studies = score_files(files[2:], classifier, store, limit=3, analyse=analysed)
    assert analysed[-1] == ["3.png", "4.png"]
    assert sorted(store) == sorted(s.key for s in studies) and len(store) == 3
    assert all(s.result.error is None for s in studies)
    score_files([], classifier, store, limit=3, analyse=analysed)
    assert store == {}


def test_same_content_under_another_name_is_its_own_study(analysed):
    studies = score_files([("a.png", b"1"), ("copy.png", b"1")], _FakeClassifier(), {},
                          analyse=analysed)
    assert studies[0].digest == studies[1].digest and studies[0].key != studies[1].key


def test_at_threshold_relabels_without_touching_the_cache():
    cached = _result("a.png", p=0.4)
    study = Study("k", "d", cached)
    low = at_threshold([study], 0.3)[0]
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
    assert known_map(study, 1, "gradcam", store) is None
    first = class_map(study, classifier, 1, "gradcam", store)
    assert first.shape == (64, 64)  # on the film, not over the model input
    np.testing.assert_array_equal(class_map(study, classifier, 1, "gradcam", store), first)
    np.testing.assert_array_equal(known_map(study, 1, "gradcam", store), first)
    class_map(study, classifier, 1, "gradcam++", store)
    class_map(study, classifier, 0, "gradcam", store)
    assert classifier.explained == [(1, "gradcam"), (1, "gradcam++"), (0, "gradcam")]
    store[("gone", 0, "gradcam")] = store[("k", 0, "gradcam")]
    prune_maps(store, {"k"})
    assert {key[0] for key in store} == {"k"} and len(store) == 3


def test_the_pipelines_own_map_is_reused_not_explained_again():
    classifier, store = _FakeClassifier(), {}
    result = _result("a.png", p=0.9, cam=np.full((64, 64), 0.25, np.float32), cam_target=0)
    study = Study("k", "d", result)
    assert class_map(study, classifier, 0, "gradcam", store) is result.cam
    assert known_map(study, 0, "gradcam", store) is result.cam
    assert not classifier.explained and not store
    class_map(study, classifier, 0, "gradcam++", store)  # another method is explained
    class_map(study, classifier, 1, "gradcam", store)  # and another class
    assert classifier.explained == [(0, "gradcam++"), (1, "gradcam")]


def test_a_map_over_a_lung_crop_is_placed_in_its_box_on_the_film():
    study = Study("k", "d", _result("a.png", box=LungBox(16, 8, 32)))
    cam = class_map(study, _FakeClassifier(), 1, "gradcam", {})
    assert cam.shape == (64, 64)
    assert cam[16:48, 8:40].min() == pytest.approx(0.6)  # the fake map, unaltered
    outside = np.ones((64, 64), bool)
    outside[16:48, 8:40] = False
    assert not cam[outside].any()


def test_evidence_in_lungs_is_the_share_of_the_map_shown():
    lungs = _lungs()
    result = _result("a.png", lungs=lungs)
    cam = np.zeros((64, 64), np.float32)
    cam[20:30, 10:20] = 1.0  # 100 units inside the left lung
    cam[0:5, 0:20] = 1.0  # 100 units above the lungs
    assert evidence_in_lungs(result, cam) == pytest.approx(0.5)
    assert evidence_in_lungs(result, cam) == energy_inside(cam, lungs)
    assert evidence_in_lungs(_result("b.png"), cam) is None  # no segmenter: no share


def test_the_lung_outline_is_drawn_over_the_xray_and_the_map_only_when_asked():
    lungs = _lungs()
    edge = lung_outline(lungs)
    result = _result("a.png", lungs=lungs)
    assert xray_image(result, outline=False) is result.pixels
    shown = xray_image(result, outline=True)
    assert shown.shape == (64, 64, 3)
    assert (shown[edge] == XRAY_OUTLINE).all() and not shown[~edge].any()
    assert xray_image(_result("b.png"), outline=True).ndim == 2  # no lungs: plain X-ray

    cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    for view in ("Overlay", "Heatmap alone", "Contour lines"):
        plain = render_map(result.pixels, cam, DisplaySettings(view=view), lungs)
        drawn = render_map(result.pixels, cam, DisplaySettings(view=view, outline=True), lungs)
        assert (drawn[edge] == MAP_OUTLINE).all()
        np.testing.assert_array_equal(drawn[~edge], plain[~edge])
        np.testing.assert_array_equal(
            render_map(result.pixels, cam, DisplaySettings(view=view, outline=True)), plain)


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


def test_a_label_flipped_by_the_threshold_gets_the_share_of_its_own_map():
    lungs = _lungs()
    cached = _result("a.png", p=0.4, lungs=lungs, cam=np.ones((64, 64), np.float32),
                     cam_target=1, lung_evidence=0.9)  # Normal at the shipped 0.5
    study = Study("k", "d", cached)
    classifier, maps = _FakeClassifier(), {}

    same = measure_relabelled(at_threshold([study], 0.45), classifier, maps)[0]
    assert same.result.lung_evidence == 0.9 and not classifier.explained

    relabelled = at_threshold([study], 0.3)  # now COVID: no network, no share yet
    assert relabelled[0].result.label == "COVID" and relabelled[0].result.lung_evidence is None
    assert not classifier.explained
    flipped = measure_relabelled(relabelled, classifier, maps)[0]
    assert classifier.explained == [(0, "gradcam")]
    cam = class_map(flipped, classifier, 0, "gradcam", maps)
    assert flipped.result.lung_evidence == pytest.approx(energy_inside(cam, lungs))
    measure_relabelled(at_threshold([study], 0.3), classifier, maps)
    assert len(classifier.explained) == 1  # explained once per session
    assert cached.lung_evidence == 0.9 and cached.label == "Normal"  # the cache is untouched

