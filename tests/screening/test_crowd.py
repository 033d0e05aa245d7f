"""A crowd of sessions scoring films through the one shared batching classifier.

Sixteen sessions call :func:`covid.screening.pipeline.analyse` at once, each with
its own films (half of them with a file that cannot be decoded among them), through
one :class:`covid.explain.batching.BatchingClassifier` over the tiny test model.
Each session must get exactly what it gets alone, and their films must share the
network's calls. No timing is asserted.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from covid.explain.batching import BatchingClassifier
from covid.explain.inference import Classifier
from covid.screening.pipeline import analyse
from tests.films import png

SESSIONS = 16
GOOD_FILMS = 3
LIVENESS_S = 60.0


def session_files(i: int) -> list[tuple[str, bytes]]:
    """Session ``i``'s uploads: its own noise films, and in every other session a broken one."""
    rng = np.random.default_rng(1000 + i)
    films = [(f"s{i}-film{j}.png", png(rng.integers(0, 256, (72 + j, 80), dtype=np.uint8)))
             for j in range(GOOD_FILMS)]
    if i % 2 == 0:
        whole = films[0][1]
        films.insert(1, (f"s{i}-broken.png", whole[: len(whole) // 2]))
    return films


@pytest.fixture
def reference(tiny_model_file):
    """The model called directly, by one session alone."""
    return Classifier.from_file(tiny_model_file)


@pytest.fixture
def shared(tiny_model_file):
    """The batching classifier every session shares, and the calls its network gets.

    The network's first call is held until every other film is queued, so that
    the sessions' films are known to be queued together (a liveness wait only).
    """
    classifier = Classifier.from_file(tiny_model_file)
    sizes: list[int] = []
    real = classifier.explain_batch
    with BatchingClassifier(classifier) as batcher:
        def held(x, *args, **kwargs):
            sizes.append(len(x))
            if len(sizes) == 1:
                rest = SESSIONS * GOOD_FILMS - len(x)
                deadline = time.monotonic() + LIVENESS_S
                while batcher.waiting() < rest and time.monotonic() < deadline:
                    time.sleep(0.005)
            return real(x, *args, **kwargs)

        classifier.explain_batch = held
        yield batcher, sizes


def crowd(batcher: BatchingClassifier) -> list:
    """Every session's ``analyse`` at once, each in its own thread; results in session order."""
    results: list = [None] * SESSIONS
    start = threading.Barrier(SESSIONS)

    def session(i: int) -> None:
        start.wait()
        results[i] = analyse(session_files(i), batcher)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LIVENESS_S)
    assert not any(t.is_alive() for t in threads)
    return results


def test_every_session_gets_exactly_its_own_results_broken_files_included(reference, shared):
    batcher, sizes = shared
    expected = [analyse(session_files(i), reference) for i in range(SESSIONS)]
    got = crowd(batcher)
    for i in range(SESSIONS):
        assert [r.name for r in got[i]] == [name for name, _ in session_files(i)]
        assert sum(r.error is None for r in got[i]) == GOOD_FILMS
        for mine, alone in zip(got[i], expected[i], strict=True):
            assert mine.error == alone.error
            if alone.error is not None:  # the broken file: named, and nothing else lost
                assert mine.name in mine.error and mine.probs is None
                continue
            assert (mine.label, mine.triage, mine.cam_target) == (
                alone.label, alone.triage, alone.cam_target)
            np.testing.assert_allclose(mine.probs, alone.probs, atol=1e-5)
            np.testing.assert_allclose(mine.cam, alone.cam, atol=1e-5)
            np.testing.assert_array_equal(mine.pixels, alone.pixels)
    # every good film once, no broken one; a film whose label at the operating point
    # is not its most probable class is explained again for its label
    relabelled = sum(r.cam_target != int(np.argmax(r.probs))
                     for results in expected for r in results if r.error is None)
    assert sum(sizes) == SESSIONS * GOOD_FILMS + relabelled
    assert len(sizes) < SESSIONS  # the sessions' films shared the network's calls
