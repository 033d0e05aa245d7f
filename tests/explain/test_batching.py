"""The cross-session micro-batcher: every caller gets exactly its own rows, batches merge.

A tiny real Keras model stands in for the network. Where a test needs requests to be
queued together, the wrapped classifier's first call is held at a gate until they
are (a liveness wait, not a timing): nothing here asserts a speed.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from covid.explain.batching import BatchingClassifier
from covid.explain.inference import Classifier

SIZE = 32
ATOL = 1e-5
LIVENESS_S = 60.0


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype(np.float32)


@pytest.fixture
def classifier(tiny_cnn, tiny_metadata):
    return Classifier(tiny_cnn, tiny_metadata, batch_size=32)


@pytest.fixture
def reference(tiny_cnn, tiny_metadata):
    """The same network, called directly: what a caller alone would get."""
    return Classifier(tiny_cnn, tiny_metadata, batch_size=32)


def assert_same(got, expected) -> None:
    """Explanations equal row for row (same classes and method, arrays within ATOL)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g.target, g.method) == (e.target, e.method)
        for name in ("probs", "cam", "logits", "features"):
            np.testing.assert_allclose(getattr(g, name), getattr(e, name), atol=ATOL)


def wait_for(condition, what: str) -> None:
    """Waits until ``condition()`` holds (a liveness bound, not a timed assertion)."""
    deadline = time.monotonic() + LIVENESS_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


class Gate:
    """Records each call of the wrapped classifier; holds the first until opened."""

    def __init__(self, classifier: Classifier, method_name: str = "explain_batch") -> None:
        self.calls: list[tuple[str, int]] = []
        self.entered, self.opened = threading.Event(), threading.Event()
        self._real = getattr(classifier, method_name)
        self._name = method_name
        setattr(classifier, method_name, self)

    def __call__(self, x, *args, **kwargs):
        kind = self._name if self._name == "forward_batch" else (args[1] if len(args) > 1
                                                                 else kwargs["method"])
        self.calls.append((kind, len(x)))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.opened.wait(LIVENESS_S)
        return self._real(x, *args, **kwargs)


def run_threads(jobs) -> list:
    """Runs each job in its own thread, all released together; returns results or errors."""
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def worker(i):
        start.wait()
        try:
            results[i] = jobs[i]()
        except Exception as err:  # handed back to the test, which checks it
            results[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIVENESS_S)
    assert not any(t.is_alive() for t in threads)
    return results


def while_busy(batcher: BatchingClassifier, gate: Gate, jobs, queued: int,
               then=None) -> list:
    """Runs ``jobs`` together while the network is busy with a first caller.

    The first caller's call is held at the gate until ``queued`` images wait in
    the queue, so that the jobs' requests are queued together; ``then`` runs just
    before the gate opens.

    Returns:
        Each job's result (or exception), in order.
    """
    first = threading.Thread(target=batcher.explain_batch, args=(_images(1, seed=999),))
    first.start()
    assert gate.entered.wait(LIVENESS_S)  # the network is busy with the first caller
    got: list = []
    crowd = threading.Thread(target=lambda: got.extend(run_threads(jobs)))
    crowd.start()
    wait_for(lambda: batcher.waiting() == queued, "every caller queued")
    extra = None if then is None else threading.Thread(target=then)
    if extra is not None:
        extra.start()
    gate.opened.set()
    for t in (crowd, first, *([extra] if extra else [])):
        t.join(LIVENESS_S)
    return got


def test_a_crowd_of_sixteen_callers_each_gets_exactly_its_own_results(classifier, reference):
    requests = []
    for i in range(16):  # different films, counts, classes and methods in every caller
        x = _images(1 + i % 5, seed=100 + i)
        targets = None if i % 2 else np.array([(i + j) % 2 for j in range(len(x))])
        requests.append((x, targets, "gradcam++" if i % 3 == 0 else "gradcam"))
    expected = [reference.explain_batch(x, t, m) for x, t, m in requests]
    features = [reference.features_batch(x) for x, _, _ in requests]
    with BatchingClassifier(classifier, batch_size=8) as batcher:
        got = run_threads([lambda r=r: batcher.explain_batch(*r) for r in requests]
                          + [lambda r=r: batcher.features_batch(r[0]) for r in requests])
    for i in range(16):
        assert_same(got[i], expected[i])
        np.testing.assert_allclose(got[16 + i], features[i], atol=ATOL)


def test_requests_queued_together_share_one_call_and_keep_their_own_rows(classifier,
                                                                          reference):
    films = [_images(1 + i % 3, seed=i) for i in range(8)]
    with BatchingClassifier(classifier) as batcher:
        gate = Gate(classifier)
        waiting = sum(len(x) for x in films)
        got = while_busy(batcher, gate, [lambda x=x: batcher.explain_batch(x) for x in films],
                         waiting)
    assert gate.calls == [("gradcam", 1), ("gradcam", waiting)]  # 9 requests, 2 calls
    for x, rows in zip(films, got, strict=True):
        assert_same(rows, reference.explain_batch(x))


def test_a_batch_never_exceeds_the_batch_size_nor_mixes_kinds(classifier, reference):
    films = [_images(2, seed=i) for i in range(7)]
    methods = ["gradcam", "gradcam++", "gradcam", "gradcam", "gradcam++", "gradcam", "gradcam"]
    with BatchingClassifier(classifier, batch_size=4) as batcher:
        gate = Gate(classifier)
        got = while_busy(batcher, gate, [lambda x=x, m=m: batcher.explain_batch(x, method=m)
                                         for x, m in zip(films, methods, strict=True)], 14)
    later = gate.calls[1:]
    assert all(size <= 4 for _, size in later)
    assert sorted(later) == [("gradcam", 2), ("gradcam", 4), ("gradcam", 4), ("gradcam++", 4)]
    for x, m, rows in zip(films, methods, got, strict=True):
        assert_same(rows, reference.explain_batch(x, method=m))


def test_a_caller_with_more_films_than_a_batch_gets_them_all_in_order(classifier, reference):
    x = _images(11, seed=5)
    with BatchingClassifier(classifier, batch_size=4) as batcher:
        assert_same(batcher.explain_batch(x), reference.explain_batch(x))
        np.testing.assert_allclose(batcher.logits_batch(x), reference.logits_batch(x), atol=ATOL)


def test_a_request_that_fails_in_a_batch_fails_alone(classifier, reference):
    poisoned = _images(2, seed=7)
    poisoned[1, 0, 0, 0] = 7.25  # the wrapped call below refuses a batch holding this pixel
    films = [_images(1, seed=i) for i in range(5)]
    with BatchingClassifier(classifier) as batcher:
        gate = Gate(classifier)
        real = gate._real

        def refusing(x, *args, **kwargs):
            if np.any(x[:, 0, 0, 0] == 7.25):
                raise FloatingPointError("a poisoned film")
            return real(x, *args, **kwargs)

        gate._real = refusing
        got = while_busy(batcher, gate, [lambda x=x: batcher.explain_batch(x)
                                         for x in [*films[:2], poisoned, *films[2:]]], 7)
        assert len(gate.calls) == 2 + 6  # the shared call failed; then each request alone
        assert isinstance(got[2], FloatingPointError)
        for x, rows in zip(films, got[:2] + got[3:], strict=True):
            assert_same(rows, reference.explain_batch(x))
        assert_same(batcher.explain_batch(films[0]), reference.explain_batch(films[0]))


def test_a_malformed_request_is_refused_in_its_callers_thread_and_never_queued(classifier):
    with BatchingClassifier(classifier) as batcher:
        with pytest.raises(ValueError, match=r"\(N, 32, 32, 1\)"):
            batcher.explain_batch(np.zeros((1, 16, 16, 1), np.float32))
        with pytest.raises(ValueError, match="targets"):
            batcher.explain_batch(_images(2, 0), targets=np.array([0, 5]))
        with pytest.raises(ValueError, match="unknown CAM method"):
            batcher.explain_batch(_images(1, 0), method="saliency")
        with pytest.raises(ValueError, match="target must be"):
            batcher.explain(_images(1, 0)[0], target=classifier.n_classes)
        assert batcher.waiting() == 0


def test_the_wrapper_answers_as_the_classifier_does(classifier, reference):
    x = _images(3, seed=11)
    with BatchingClassifier(classifier) as batcher:
        assert batcher.metadata is classifier.metadata
        assert (batcher.n_classes, batcher.n_features, batcher.gradcam_layer) == (
            reference.n_classes, reference.n_features, reference.gradcam_layer)
        assert batcher.map_cells == reference.map_cells
        assert_same([batcher.explain(x[0], target=1, method="gradcam++")],
                    [reference.explain(x[0], target=1, method="gradcam++")])
        np.testing.assert_allclose(batcher.predict_batch(x), reference.predict_batch(x),
                                   atol=ATOL)
        logits, features = batcher.forward_batch(x[:0])
        assert logits.shape == (0, reference.n_classes)
        assert features.shape == (0, reference.n_features)
        assert batcher.explain_batch(x[:0]) == []


def test_each_callers_arrays_are_its_own_not_views_of_the_shared_batch(classifier):
    with BatchingClassifier(classifier) as batcher:
        gate = Gate(classifier)
        got = while_busy(batcher, gate, [lambda i=i: batcher.explain_batch(_images(1, seed=i))
                                         for i in range(2)], 2)
    assert gate.calls[1] == ("gradcam", 2)  # the two shared one call
    (a,), (b,) = got
    for name in ("probs", "cam", "logits", "features"):
        assert not np.shares_memory(getattr(a, name), getattr(b, name))


def test_a_closed_batcher_stops_its_worker_and_answers_directly(classifier, reference):
    batcher = BatchingClassifier(classifier)
    x = _images(2, seed=3)
    assert_same(batcher.explain_batch(x), reference.explain_batch(x))
    batcher.close()
    batcher.close()  # idempotent
    assert not batcher._worker.is_alive()
    assert_same(batcher.explain_batch(x), reference.explain_batch(x))


def test_close_answers_what_was_queued_before_the_worker_stops(classifier, reference):
    films = [_images(1, seed=i) for i in range(3)]
    batcher = BatchingClassifier(classifier)
    gate = Gate(classifier)
    got = while_busy(batcher, gate, [lambda x=x: batcher.explain_batch(x) for x in films], 3,
                     then=batcher.close)
    assert not batcher._worker.is_alive()
    for x, rows in zip(films, got, strict=True):
        assert_same(rows, reference.explain_batch(x))


def test_bad_settings_are_refused(classifier):
    with pytest.raises(ValueError, match="batch_size"):
        BatchingClassifier(classifier, batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        BatchingClassifier(classifier, max_wait_s=-1)
