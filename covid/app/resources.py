"""The ``st.cache_resource`` loaders: the models and the detector, once per process.

Every session shares what they return; the classifier comes wrapped in one
batching worker, which runs the films of every session together
(:mod:`covid.explain.batching`). The server starts loading them in a
thread as it starts (:func:`preload`, from ``streamlit_app``'s lifespan), so that
the first visitor finds them loaded or loading; a page that asks meanwhile waits
for that same load. The classifier's graphs, then the segmenters', are traced in
a background thread whenever the network is idle, and films arriving before then
are answered eagerly (:func:`warm_up_when_idle`), so that no request waits for
tracing.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one,
and ``COVID_LUNG_MODEL_PATH`` for another lung segmenter. The loaders are keyed
by the file's path and (size, mtime), so a re-shipped model is reloaded; what
they return is shared by every session and never mutated.

Three pieces of process-wide state are set here, each because a measured gain
needs it, each with its figure beside it (``python -m benchmarks.server_state``
measures them again; 2-core AMD EPYC, 2026-12-07, other jobs running, load
average 5-7): Streamlit's Keras reset after every run is switched off
(:func:`keep_keras_between_runs`); the garbage collector is paused while the
preload imports and loads, and the loaded models are then frozen out of its
scans (:func:`_collector_paused`, :func:`_freeze_garbage`); Keras is imported
without scikit-learn and pyplot (:func:`import_keras_without_extras`).
TensorFlow's graph options are left alone: without Grappler's rewrites a warm
Grad-CAM pass took 0.154 s against 0.086 s with them, for a trace no faster.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from streamlit.runtime.scriptrunner import script_runner

from covid.settings import settings

if TYPE_CHECKING:
    from covid.explain.batching import BatchingClassifier
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.ood import OODDetector

LOG = logging.getLogger(__name__)

_STREAMLIT_CLEAN_UP = getattr(script_runner, "_clean_problem_modules", None)
"""Streamlit's own clean-up after a script run (it resets Keras), kept for reference."""

class StreamlitHookError(RuntimeError):
    """This Streamlit release has no ``script_runner._clean_problem_modules`` to replace."""


def _clean_up_after_run() -> None:
    """Streamlit's clean-up after a script run, less its Keras reset: closes pyplot figures."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def keep_keras_between_runs() -> None:
    """Stops Streamlit from resetting Keras after every script run; call once, at server start.

    Streamlit's script runner calls ``keras.backend.clear_session()`` after each
    run (``streamlit.runtime.scriptrunner.script_runner._clean_problem_modules``),
    for scripts that build a model on every run. This page builds none: its models
    are loaded once per process and shared. The reset clears TensorFlow's kernel
    cache, so that the next call of every compiled graph is optimised again, and
    runs a full garbage collection. The same clean-up runs without the reset.
    The function is private to Streamlit, so it is replaced once, here, and its
    absence stops the server rather than slowing every run unnoticed. Idempotent.

    Measured: the Grad-CAM graph's next call takes 1.65 s after the reset against
    0.16 s without it (medians of two fresh processes each), on every rerun of
    every session.

    Raises:
        StreamlitHookError: This Streamlit release has no such function (pin
            the one in requirements.txt, or find its new clean-up hook).
    """
    if _STREAMLIT_CLEAN_UP is None:
        raise StreamlitHookError(
            "streamlit.runtime.scriptrunner.script_runner._clean_problem_modules is gone: "
            "this Streamlit release would reset Keras after every run (see "
            "covid.app.resources.keep_keras_between_runs)")
    script_runner._clean_problem_modules = _clean_up_after_run


def _freeze_garbage() -> None:
    """Moves every object alive now (the loaded, traced models) out of the collector's scans.

    What the preload froze uncollected is collected first, with the rest.
    Measured: a full collection with the models loaded takes 0.52 s unfrozen
    (holding the GIL, so every session waits) and under 1 ms frozen.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    LOG.info("%d objects frozen out of the garbage collector", gc.get_freeze_count())


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector (process-wide) while the models load.

    Importing TensorFlow and Keras and building the models create hundreds of
    thousands of tracked objects; the collector would scan them all at every full
    collection it triggers meanwhile, on the way to the first film. This module
    imports no Keras itself, so that the pause covers TensorFlow's import too
    (:func:`preload` imports it). On the way out everything alive is frozen
    rather than collected (a collection of it all is itself slow), so that the
    collector, enabled again, does not scan the models at the first film's
    allocations either; :func:`_freeze_garbage` collects what was left once the
    warm-up is done. The collector's earlier state is restored.

    Measured: the collector ran 1.42 s within the import of TensorFlow and Keras,
    which took 8.65 s paused against 9.58 s not (medians of three pairs).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


KERAS_EXTRAS = ("sklearn", "matplotlib.pyplot")
"""Optional libraries Keras imports at its own import only because they are installed (for
its scikit-learn wrappers, ``keras.wrappers``, and its image-gallery plots,
``keras.visualization``), neither of which the server uses."""


class _RefusedInThisThread(importlib.abc.MetaPathFinder):
    """An import finder that refuses some top-level imports, in one thread only.

    Keras imports each of :data:`KERAS_EXTRAS` inside ``try: ... except
    ImportError``, so a refused one is simply left out of Keras. Other threads
    (a page script importing scikit-learn for the model page meanwhile) are not
    affected, and the finder is removed once Keras is in.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(names)
        self.thread = threading.get_ident()

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        """Refuses a listed module in the owning thread; leaves every other import alone.

        Raises:
            ModuleNotFoundError: ``fullname`` is listed and this is the owning thread.
        """
        del path, target
        if fullname in self.names and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{fullname} is kept out of Keras's import", name=fullname)
        return None


def import_keras_without_extras() -> bool:
    """Imports Keras (and TensorFlow) without :data:`KERAS_EXTRAS`; once, at server start.

    The first film needs neither library, and importing them is a large share of
    Keras's import: TensorFlow and Keras import in 10.56 s without them against
    13.46 s with them (medians of three pairs, machine busy). An extra that is
    already imported (or that another thread imports meanwhile) is simply shared.
    Keras's scikit-learn wrappers and gallery plots are then unavailable in this
    process; the server uses neither.

    Returns:
        Whether this call imported Keras (False: something imported it before, so
        the extras came with it; a warning says so).
    """
    if "keras" in sys.modules:
        LOG.warning("Keras was imported before the preload: %s came with it",
                    ", ".join(KERAS_EXTRAS))
        return False
    finder = _RefusedInThisThread(KERAS_EXTRAS)
    sys.meta_path.insert(0, finder)
    try:
        import keras  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
    return True



def file_stamp(path: Path) -> tuple[int, int]:
    """A model file's (size, mtime_ns), or (0, 0) when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_size, stat.st_mtime_ns)


SERVING_BATCH = 16
"""The most films the server's batching worker runs in one pass. On the 2-core CPU the
classifier's CPU per film (prediction and Grad-CAM) falls from 80 ms alone to 62-65 ms in
passes of 4 to 16, and rises again to 70 ms at 32; smaller passes also answer the first
sessions of a crowd sooner."""


def _stop_batching(classifier: BatchingClassifier) -> None:
    """Stops a dropped classifier's worker once its queued films are answered."""
    classifier.close()


@st.cache_resource(show_spinner=False, max_entries=2, on_release=_stop_batching)
def load_classifier(path: str, stamp: tuple[int, int]) -> BatchingClassifier:
    """Loads and verifies the classifier once per process (per file version).

    Every session gets the same :class:`covid.explain.batching.BatchingClassifier`:
    one worker thread runs the films of every session together, in batches, and
    hands each session its own results (a crowd's films take a few passes of the
    network instead of one each). Its worker stops when the cache drops it.

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns), so that a re-shipped model is reloaded.

    Returns:
        The batching classifier; shared by every session, never mutated.

    Raises:
        ModelFileError: The model or its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.explain.batching import BatchingClassifier  # deferred: imports TensorFlow
    from covid.explain.inference import Classifier

    start = time.perf_counter()
    classifier = Classifier.from_file(path)
    LOG.info("classifier %s loaded in %.2f s", path, time.perf_counter() - start)
    return BatchingClassifier(classifier, batch_size=SERVING_BATCH)


@st.cache_resource(show_spinner=False, max_entries=2)
def load_ood_detector(path: str, stamp: tuple[int, int]) -> OODDetector:
    """Loads the out-of-distribution detector shipped with the model, if any.

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns).

    Returns:
        The detector from :func:`covid.screening.ood.load_detector` (the tag, pixel
        and lung gates only when the model ships no out-of-distribution statistics).
    """
    del stamp
    from covid.screening.ood import load_detector  # deferred: imports Keras

    return load_detector(path)


def load_model(path: Path) -> tuple[BatchingClassifier, OODDetector]:
    """The cached (batching) classifier and detector for a model file.

    Raises:
        ModelFileError: The model or its metadata is missing, or the SHA-256 differs.
    """
    classifier = load_classifier(str(path), file_stamp(path))
    ood = load_ood_detector(str(path), file_stamp(path))
    return classifier, ood


@st.cache_resource(show_spinner=False, max_entries=2)
def load_lung_segmenter(path: str, stamp: tuple[int, int]) -> LungSegmenter:
    """Loads and verifies the lung segmenter once per process (per file version).

    Raises:
        ModelFileError: The file or its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.model.lungs import LungSegmenter

    segmenter = LungSegmenter.from_file(path)
    segmenter.eager_until_traced = True  # traced after the first film: see _trace_segmenters
    return segmenter


def segmenter_for(classifier: BatchingClassifier) -> LungSegmenter | None:
    """The cached lung segmenter to run beside a classifier, or None.

    None when no segmenter file is there and the classifier reads whole films
    (then the page shows no lung outline and no share of evidence).

    Raises:
        ModelFileError: A lung-focused classifier has no segmenter, or another
            one than it was trained with; or the file is altered.
    """
    from covid.explain.loading import check_segmenter, wants_segmenter

    paths, meta = settings(), classifier.metadata
    path = paths.lung_model_path
    if not wants_segmenter(meta, path):
        return None
    segmenter = load_lung_segmenter(str(path), file_stamp(path))
    check_segmenter(meta, segmenter, paths.model_path, path)
    return segmenter


@st.cache_resource(show_spinner=False, max_entries=2)
def load_opacity_segmenter(path: str, stamp: tuple[int, int]) -> OpacitySegmenter | None:
    """Loads and verifies the opacity segmenter once per process (None: no such file).

    Raises:
        ModelFileError: The file is there but its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.explain.loading import load_opacity

    segmenter = load_opacity(path)
    if segmenter is not None:
        segmenter.eager_until_traced = True  # traced after the first film: see _trace_segmenters
    return segmenter


def opacity_for(lungs: LungSegmenter | None) -> OpacitySegmenter | None:
    """The cached opacity segmenter (``$COVID_OPACITY_MODEL_PATH``, else the shipped one).

    None without a lung segmenter (it outlines opacities inside the lungs found)
    or without its file: then no film gets opacity figures.

    Raises:
        ModelFileError: The file is altered.
    """
    if lungs is None:
        return None
    path = settings().opacity_model_path
    return load_opacity_segmenter(str(path), file_stamp(path))


def start_preload() -> None:
    """Server start: stops Streamlit's Keras reset, then loads the models in a thread.

    Raises:
        StreamlitHookError: This Streamlit release has no reset to stop.
    """
    keep_keras_between_runs()  # the shared models stay warm between reruns
    # not a daemon: an interpreter exiting mid-load would abort inside TensorFlow
    threading.Thread(target=preload, name="preload-models", daemon=False).start()


def _trace_segmenters(classifier: BatchingClassifier) -> None:
    """Traces the segmenters' graphs (until then they run eagerly), after the classifier's.

    Tracing a U-Net before the first film took 0.62-0.68 s each; its first eager
    pass takes 0.17-0.35 s (``python -m benchmarks.coldstart``), so a first film
    waiting for the load is answered about 0.8 s sooner with both segmenters.
    """
    from covid.model.metadata import ModelFileError

    try:
        lungs = segmenter_for(classifier)
        for unet in (lungs, opacity_for(lungs)):
            if unet is not None:
                unet.warm_up()
    except ModelFileError as err:  # the page says why; the graphs trace on first use then
        LOG.warning("the segmenters were not traced: %s", err)


def warm_up_when_idle(classifier: BatchingClassifier) -> None:
    """Starts the models' background warm-up, once per process, with every model loaded.

    Each of the classifier's graphs is traced when no film is being answered (see
    ``Classifier.warm_up_in_background``), then the segmenters'; films arriving
    before are answered eagerly (the segmenters' eager passes cost about 0.35 s a
    film more, but a film never waits behind their tracing, as one arriving while
    they were traced right after the Grad-CAM graph did). Afterwards the objects
    alive are frozen out of the garbage collector.
    """
    def then() -> None:
        _trace_segmenters(classifier)
        _freeze_garbage()

    classifier.warm_up_in_background(then=then)


def preload() -> None:
    """Loads the screening models in this thread, before anyone visits (server start).

    A model that cannot be loaded is only logged here: the page explains it to
    whoever visits. The seconds of each part are logged (INFO), for
    ``python -m benchmarks.browser`` to print.
    """
    start = time.perf_counter()
    with _collector_paused():
        import_keras_without_extras()
        imported = time.perf_counter()
        from covid.model.metadata import ModelFileError

        try:
            classifier, _ = load_model(settings().model_path)
            loaded = time.perf_counter()
            opacity_for(segmenter_for(classifier))
        except ModelFileError as err:
            LOG.warning("the models were not preloaded: %s", err)
            return
    warm_up_when_idle(classifier)
    done = time.perf_counter()
    LOG.info("models preloaded in %.2f s: TensorFlow and Keras imported in %.2f s, classifier "
             "and OOD statistics loaded in %.2f s, segmenters loaded in %.2f s",
             done - start, imported - start, loaded - imported, done - loaded)
