"""The process-wide resources: the preload at server start, the warm-up, and no Keras reset.

The tiny test model stands in for the shipped one (``COVID_MODEL_PATH``); it reads
whole films, so no lung segmenter is needed (``COVID_LUNG_MODEL_PATH`` names an
absent file).
"""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.runtime.scriptrunner import script_runner
from streamlit.testing.v1 import AppTest

from covid.app import resources
from covid.explain.inference import Classifier
from covid.settings import LUNG_MODEL_ENV, MODEL_ENV, settings

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "streamlit_app.py"


@pytest.fixture
def tiny_served(tiny_model_file, monkeypatch, tmp_path):
    """Serves the tiny model with no lung segmenter; the caches start and end empty."""
    monkeypatch.setenv(MODEL_ENV, str(tiny_model_file))
    monkeypatch.setenv(LUNG_MODEL_ENV, str(tmp_path / "no_lung_model.keras"))
    st.cache_resource.clear()
    yield tiny_model_file
    st.cache_resource.clear()


@pytest.fixture
def loads(monkeypatch):
    """Counts the classifier loads from a file."""
    counted = []
    from_file = Classifier.from_file.__func__

    def counting(cls, *args, **kwargs):
        counted.append(args)
        return from_file(cls, *args, **kwargs)

    monkeypatch.setattr(Classifier, "from_file", classmethod(counting))
    return counted


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_preload_loads_once_what_the_page_then_finds_and_starts_the_warm_up(
    tiny_served, loads
):
    resources.preload()
    assert len(loads) == 1
    classifier, _ = resources.load_model(settings().model_path)  # the page's call
    assert len(loads) == 1  # found loaded, not loaded again
    warm_up = classifier.warm_up_in_background()  # the preload's warm-up, started once
    warm_up.join(timeout=120)
    assert not warm_up.is_alive()
    assert classifier.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}


def test_the_servers_lung_segmenter_answers_eagerly_until_the_warm_up_traces_it(
    tiny_served, tiny_lung_file, monkeypatch
):
    monkeypatch.setenv(LUNG_MODEL_ENV, str(tiny_lung_file))
    segmenter = resources.load_lung_segmenter(str(tiny_lung_file),
                                              resources.file_stamp(tiny_lung_file))
    size = segmenter.input_size
    films = np.random.default_rng(0).uniform(0, 255, (2, size, size, 1)).astype(np.float32)
    eager = segmenter.probs_batch(films)  # a first film, before the warm-up
    assert segmenter._forward.experimental_get_tracing_count() == 0
    classifier, _ = resources.load_model(settings().model_path)
    resources._trace_segmenters(classifier)  # what the warm-up does once the classifier's done
    assert segmenter._forward.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(segmenter.probs_batch(films), eager, atol=1e-5)
    assert segmenter._forward.experimental_get_tracing_count() == 1


@pytest.fixture
def collector():
    """Starts with the collector enabled and nothing frozen; puts both back afterwards."""
    was_enabled = gc.isenabled()
    gc.enable()
    gc.unfreeze()
    yield
    gc.unfreeze()
    if not was_enabled:
        gc.disable()


def test_the_preload_pauses_the_collector_while_loading_then_freezes_and_enables_it(
    tiny_served, collector, monkeypatch
):
    enabled_while_loading = []
    load_model = resources.load_model

    def recording(path):
        enabled_while_loading.append(gc.isenabled())
        return load_model(path)

    monkeypatch.setattr(resources, "load_model", recording)
    resources.preload()
    assert enabled_while_loading == [False]
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # the loaded models, out of the collector's scans


def test_importing_the_resources_imports_no_keras_so_the_pause_covers_tensorflows_import():
    code = ("import sys, covid.app.resources; "
            "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[]"


def test_a_failed_preload_enables_the_collector_again(monkeypatch, tmp_path, collector):
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "absent.keras"))
    st.cache_resource.clear()
    resources.preload()
    assert gc.isenabled()


def test_the_pause_keeps_a_collector_that_was_disabled_disabled(collector):
    gc.disable()
    with pytest.raises(RuntimeError), resources._collector_paused():
        raise RuntimeError("a load that fails")
    assert not gc.isenabled()


class _Node:
    """An object that can sit in a reference cycle and be watched through a weak reference."""


def test_the_warm_ups_freeze_collects_the_garbage_the_preload_froze(collector):
    with resources._collector_paused():
        node = _Node()
        node.itself = node  # a reference cycle: garbage only the collector frees
        watched = weakref.ref(node)
        del node
    gc.collect()
    assert watched() is not None  # frozen with the models, out of the collector's reach
    resources._freeze_garbage()
    assert watched() is None


def test_loading_the_models_leaves_tensorflows_graph_options_alone(tiny_served):
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    resources.preload()
    assert tf.config.optimizer.get_experimental_options() == before


def test_a_model_that_cannot_be_loaded_is_only_logged_by_the_preload(
    monkeypatch, tmp_path, caplog
):
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "absent.keras"))
    st.cache_resource.clear()
    resources.preload()  # no exception: the page explains it to whoever visits
    assert any("not preloaded" in r.getMessage() and "absent.keras" in r.getMessage()
               for r in caplog.records)


def test_after_the_hook_is_replaced_a_run_no_longer_resets_keras_but_closes_figures(monkeypatch):
    monkeypatch.setattr(script_runner, "_clean_problem_modules",
                        script_runner._clean_problem_modules)  # put back after the test
    resets = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: resets.append(a))
    resources.keep_keras_between_runs()
    resources.keep_keras_between_runs()  # idempotent
    figure = plt.figure()
    script_runner._clean_problem_modules()  # what Streamlit calls after every script run
    assert resets == []
    assert not plt.fignum_exists(figure.number)


def test_a_streamlit_without_the_hook_stops_the_server_saying_why(monkeypatch):
    monkeypatch.setattr(resources, "_STREAMLIT_CLEAN_UP", None)
    with pytest.raises(resources.StreamlitHookError, match="_clean_problem_modules is gone"):
        resources.keep_keras_between_runs()


def test_streamlits_own_clean_up_would_reset_keras(monkeypatch):
    """The reset that :func:`keep_keras_between_runs` removes (so the test above can fail)."""
    original = resources._STREAMLIT_CLEAN_UP
    assert original is not None and original is not resources._clean_up_after_run
    resets = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: resets.append(a))
    original()
    assert len(resets) == 1


def test_page_reruns_neither_reset_keras_nor_trace_again(tiny_served, monkeypatch):
    monkeypatch.setattr(script_runner, "_clean_problem_modules",
                        script_runner._clean_problem_modules)  # put back after the test
    resources.keep_keras_between_runs()  # as the server's start does (AppTest has none)
    resets = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: resets.append(a))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.file_uploader(key="uploads").set_value([("a.png", _png(1), "image/png")]).run()
    assert not at.exception
    classifier, _ = resources.load_model(settings().model_path)
    classifier.warm_up_in_background().join(timeout=120)
    counts = classifier.tracing_counts()
    at.file_uploader(key="uploads").set_value([("b.png", _png(2), "image/png")]).run()
    at.run()
    assert not at.exception
    assert resets == []
    assert classifier.tracing_counts() == counts == {"gradcam": 1, "forward": 1, "gradcam++": 1}


def test_keras_is_imported_without_scikit_learn_and_pyplot_which_stay_importable():
    script = textwrap.dedent("""
        import sys, threading
        from covid.app import resources
        refuse = resources._RefusedInThisThread(("wave",))  # a module nothing here imports
        sys.meta_path.insert(0, refuse)
        try:
            import wave
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("not refused in the owning thread")
        other = threading.Thread(target=lambda: __import__("wave"))  # another thread: imported
        other.start(); other.join()
        assert "wave" in sys.modules
        sys.meta_path.remove(refuse)
        imported = []
        thread = threading.Thread(
            target=lambda: imported.append(resources.import_keras_without_extras()))
        thread.start()
        thread.join()
        assert imported == [True] and "keras" in sys.modules and "tensorflow" in sys.modules
        left_out = [m for m in resources.KERAS_EXTRAS if m in sys.modules]
        import sklearn.metrics, matplotlib.pyplot  # the model page's, later: still there
        assert not [f for f in sys.meta_path if isinstance(f, resources._RefusedInThisThread)]
        assert resources.import_keras_without_extras() is False  # already in: nothing to do
        print("left out:", left_out == [])
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left out: True" in done.stdout


def test_streamlit_run_finds_the_app_and_its_lifespan_preloads_the_models(tiny_model_file,
                                                                          tmp_path):
    script = textwrap.dedent("""
        import asyncio, threading
        import streamlit as st
        import streamlit_app
        from covid.app import resources
        from covid.explain.inference import Classifier
        from covid.settings import settings

        assert isinstance(streamlit_app.app, st.App)
        async def serve():
            async with streamlit_app.lifespan(streamlit_app.app):
                pass
        asyncio.run(serve())
        from streamlit.runtime.scriptrunner import script_runner
        assert script_runner._clean_problem_modules is resources._clean_up_after_run
        for thread in threading.enumerate():
            if thread.name == "preload-models":
                thread.join(timeout=120)
        def refuse(*args, **kwargs):
            raise AssertionError("loaded again")
        Classifier.from_file = refuse
        classifier, _ = resources.load_model(settings().model_path)
        classifier.warm_up_in_background().join(timeout=120)
        print(sorted(classifier.tracing_counts().items()))
    """)
    env = dict(os.environ, **{MODEL_ENV: str(tiny_model_file),
                              LUNG_MODEL_ENV: str(tmp_path / "no_lung_model.keras")})
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[('forward', 1), ('gradcam', 1), ('gradcam++', 1)]" in done.stdout


def test_every_session_shares_one_batching_classifier_whose_worker_stops_when_dropped(
    tiny_served
):
    from covid.explain.batching import BatchingClassifier

    first, _ = resources.load_model(settings().model_path)
    again, _ = resources.load_model(settings().model_path)  # another session's call
    assert isinstance(first, BatchingClassifier) and again is first
    assert first._worker.is_alive()
    st.cache_resource.clear()  # as when a re-shipped model replaces it
    assert not first._worker.is_alive()
