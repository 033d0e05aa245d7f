"""The loaded classifier: batched logits, calibrated probabilities, features and Grad-CAM.

:class:`Classifier` builds its gradient model and its ``tf.function`` graphs once,
when it is created; every later call reuses them. :meth:`Classifier.warm_up`
traces the graphs before the first request; :meth:`Classifier.warm_up_in_background`
does it in a thread whenever the network is idle, while calls run eagerly, so that a
server answers at once.
Calls from several threads (sessions) are safe: they take turns through the
network, one batch at a time (a server runs them together instead, through
:mod:`covid.explain.batching`). The wrapped Keras model is never modified.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from covid.explain.gradcam import METHODS, find_last_conv_layer, gradcam_step, split_at_layer
from covid.model.calibration import calibrated_probs
from covid.model.metadata import ModelMetadata
from covid.model.network import DEFAULT_MODEL_PATH, LOGITS_LAYER, load_model

LOG = logging.getLogger(__name__)

FORWARD = "forward"
"""The name of the bare forward graph (the explainers are named by their method)."""
WARM_UP_ORDER = (*METHODS, FORWARD)
"""The graphs in the order they are traced: what every film needs comes first, then the
other map method, then the bare forward pass (which only the command line uses)."""
WARM_UP_DELAY_S = 1.0
"""How long a background warm-up waits before its first graph: the first film, sent right
after the models load, is answered (eagerly) before tracing competes with it."""
WARM_UP_IDLE_S = 0.1
"""How long the network must have been idle before a background warm-up traces its first
graph (the one every film needs)."""
WARM_UP_LATER_IDLE_S = 2.0
"""How long it must have been idle before each later graph, which no film is waiting for."""


@dataclass(frozen=True)
class Explanation:
    """A prediction and its class activation map, from one forward pass.

    Attributes:
        probs: (C,) float32 calibrated class probabilities summing to 1.
        cam: (S, S) float32 map in [0, 1] at the model's input resolution.
        target: The class index the map explains.
        method: ``"gradcam"`` or ``"gradcam++"``.
        logits: (C,) float32 raw logits.
        features: (F,) float32 pooled penultimate features, or None.
    """

    probs: np.ndarray
    cam: np.ndarray
    target: int
    method: str = "gradcam"
    logits: np.ndarray | None = None
    features: np.ndarray | None = None


class Classifier:
    """A loaded model with its metadata, ready for batched scoring and Grad-CAM.

    Attributes:
        model: The wrapped Keras model (never modified).
        metadata: Its metadata (class names, input size, temperature, threshold).
        batch_size: Images per forward pass in the ``*_batch`` methods.
        gradcam_layer: The layer the maps explain.
    """

    def __init__(self, model: keras.Model, metadata: ModelMetadata, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.metadata = metadata
        self.batch_size = batch_size
        self.gradcam_layer = self._resolve_layer(model, metadata.gradcam_layer)
        self._backbone, self._head = split_at_layer(model, self.gradcam_layer, LOGITS_LAYER)
        self.n_classes = int(self._head.outputs[0].shape[-1])
        self.n_features = int(self._head.outputs[1].shape[-1])
        size = metadata.input_size
        image_spec = tf.TensorSpec((None, size, size, 1), tf.float32)
        target_spec = tf.TensorSpec((None,), tf.int32)
        # No AutoGraph: the steps have no Python control flow on tensors, and
        # converting the model's code would make every trace longer.
        self._forward = tf.function(
            self._forward_impl, input_signature=[image_spec], reduce_retracing=True,
            autograph=False,
        )
        self._explainers = {
            method: tf.function(
                self._explainer_impl(method),
                input_signature=[image_spec, target_spec],
                reduce_retracing=True,
                autograph=False,
            )
            for method in METHODS
        }
        self._lock = threading.Lock()  # one batch at a time through the network
        self._traced: set[str] = set()  # graphs traced by the warm-up
        self._warming = False  # a background warm-up is running: untraced graphs run eagerly
        self._warmer: threading.Thread | None = None
        self._idle = threading.Condition()  # guards the three fields below
        self._calls = 0  # batches running or waiting for the network
        self._last_call = time.monotonic()  # when the last batch finished
        self._tracing: str | None = None  # the graph the warm-up is tracing now

    @functools.cached_property
    def map_cells(self) -> int:
        """The maps' resolution before upsampling: cells a side at the input size.

        Worked out on first use (the model page), not while a server starts.
        """
        size = self.metadata.input_size
        return int(self._backbone.compute_output_shape((1, size, size, 1))[1])

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_MODEL_PATH, batch_size: int = 32) -> Classifier:
        """Loads a verified model file (see ``covid.model.network.load_model``).

        Args:
            path: The ``.keras`` file, with its metadata JSON beside it.
            batch_size: Images per forward pass.

        Returns:
            The classifier.

        Raises:
            covid.model.metadata.ModelFileError: Missing, altered or unreadable files.
        """
        model, metadata = load_model(path)
        return cls(model, metadata, batch_size=batch_size)

    @staticmethod
    def _resolve_layer(model: keras.Model, name: str) -> str:
        """The metadata's Grad-CAM layer if the model has it, else the last 4-D layer."""
        if any(layer.name == name for layer in model.layers):
            return name
        return find_last_conv_layer(model)

    def _forward_impl(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(N, S, S, 1) -> (N, C) logits and (N, F) features, in inference mode."""
        logits, features = self._head(self._backbone(images, training=False), training=False)
        return tf.cast(logits, tf.float32), tf.cast(features, tf.float32)

    def _explainer_impl(self, method: str):
        """A graph-compilable one-pass prediction-and-map function for ``method``."""

        def explain_step(images: tf.Tensor, targets: tf.Tensor):
            return gradcam_step(self._backbone, self._head, images, targets, method)

        return explain_step

    def check_batch(self, x: np.ndarray) -> np.ndarray:
        """Validates a (N, S, S, 1) batch and returns it as float32.

        Public so that a caller batching several requests together
        (:mod:`covid.explain.batching`) refuses a bad one before it joins a batch.

        Raises:
            ValueError: ``x`` is not (N, S, S, 1) with S the model's input size.
        """
        x = np.asarray(x, dtype=np.float32)
        size = self.metadata.input_size
        if x.ndim != 4 or x.shape[1:] != (size, size, 1):
            raise ValueError(f"expected a (N, {size}, {size}, 1) batch, got shape {x.shape}")
        return x

    def check_targets(self, n: int, targets: np.ndarray | None, method: str) -> np.ndarray:
        """Validates an explanation request's method and classes.

        Args:
            n: Images in the request.
            targets: (n,) class indices, -1 entries (or None) for the predicted class.
            method: ``"gradcam"`` or ``"gradcam++"``.

        Returns:
            (n,) int32 class indices, -1 for the predicted class.

        Raises:
            ValueError: Unknown method, or targets of another length or out of range.
        """
        if method not in self._explainers:
            raise ValueError(f"unknown CAM method {method!r}; expected one of {METHODS}")
        wanted = np.full(n, -1, np.int32) if targets is None else np.asarray(targets, np.int32)
        if wanted.shape != (n,) or wanted.max(initial=-1) >= self.n_classes:
            raise ValueError(f"targets must be {n} class indices below {self.n_classes}")
        return wanted

    def check_one(self, x: np.ndarray, target: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validates one image and its class for :meth:`explain`.

        Args:
            x: (S, S, 1) or (1, S, S, 1) raw intensities in [0, 255].
            target: The class index to explain; None for the predicted class.

        Returns:
            The (1, S, S, 1) float32 batch and its (1,) int32 target (None: predicted).

        Raises:
            ValueError: Wrong shape, more than one image, or target out of range.
        """
        if target is not None and not 0 <= target < self.n_classes:
            raise ValueError(f"target must be in [0, {self.n_classes}), got {target}")
        x = np.asarray(x, dtype=np.float32)
        batch = self.check_batch(x[np.newaxis] if x.ndim == 3 else x)
        if len(batch) != 1:
            raise ValueError(f"explain takes one image, got a batch of {len(batch)}")
        return batch, None if target is None else np.array([target], np.int32)

    def forward_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits and pooled features for a batch, in one pass per chunk.

        Args:
            x: (N, S, S, 1) raw intensities in [0, 255].

        Returns:
            ``(logits, features)``: (N, C) and (N, F) float32 arrays.

        Raises:
            ValueError: ``x`` is not (N, S, S, 1) with S the model's input size.
        """
        x = self.check_batch(x)
        logits = [np.zeros((0, self.n_classes), np.float32)]
        features = [np.zeros((0, self.n_features), np.float32)]
        for start in range(0, len(x), self.batch_size):
            with self._call():  # held for one batch only, so that sessions interleave
                chunk_logits, chunk_features = self._runnable(FORWARD)(
                    tf.constant(x[start : start + self.batch_size])
                )
                chunk_logits, chunk_features = chunk_logits.numpy(), chunk_features.numpy()
            logits.append(chunk_logits)
            features.append(chunk_features)
        return np.concatenate(logits), np.concatenate(features)

    def logits_batch(self, x: np.ndarray) -> np.ndarray:
        """Raw (pre-softmax, uncalibrated) logits.

        Args:
            x: (N, S, S, 1) raw intensities in [0, 255].

        Returns:
            (N, C) float32 logits.
        """
        return self.forward_batch(x)[0]

    def features_batch(self, x: np.ndarray) -> np.ndarray:
        """Pooled penultimate features (e.g. for an out-of-distribution detector).

        Args:
            x: (N, S, S, 1) raw intensities in [0, 255].

        Returns:
            (N, F) float32 features (F = 2048 for ResNet-50).
        """
        return self.forward_batch(x)[1]

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of the logits over the temperature.

        Args:
            x: (N, S, S, 1) raw intensities in [0, 255].

        Returns:
            (N, C) float32 probabilities; each row sums to 1.
        """
        return calibrated_probs(self.logits_batch(x), self.metadata.temperature)

    def explain_batch(
        self, x: np.ndarray, targets: np.ndarray | None = None, method: str = "gradcam"
    ) -> list[Explanation]:
        """Predicts a batch and maps each image's evidence, one pass per chunk.

        Grad-CAM at the last convolutional block needs only the gradient through
        the pooling and the dense head, so a batch with maps costs about what a
        bare forward pass does.

        Args:
            x: (N, S, S, 1) raw intensities in [0, 255].
            targets: (N,) class indices to explain; None (or -1 entries) for each
                image's predicted class.
            method: ``"gradcam"`` or ``"gradcam++"``.

        Returns:
            One :class:`Explanation` per image.

        Raises:
            ValueError: Wrong shape, unknown method or target out of range.
        """
        return self._explain_chunks(self.check_batch(x), targets, method)

    def _explain_chunks(
        self, x: np.ndarray, targets: np.ndarray | None, method: str
    ) -> list[Explanation]:
        """:meth:`explain_batch` on a checked batch."""
        wanted = self.check_targets(len(x), targets, method)
        out: list[Explanation] = []
        for start in range(0, len(x), self.batch_size):
            stop = start + self.batch_size
            with self._call():  # held for one batch only, so that sessions interleave
                outputs = self._runnable(method)(tf.constant(x[start:stop]),
                                                 tf.constant(wanted[start:stop]))
                cams, logits, features, used = (t.numpy() for t in outputs)
            probs = calibrated_probs(logits, self.metadata.temperature)
            # each image's arrays are copies, not views of the batch's: a batch may hold
            # several sessions' films (covid.explain.batching), which share nothing
            for i, cam in enumerate(cams):
                out.append(Explanation(probs=probs[i].copy(), cam=cam.astype(np.float32),
                                       target=int(used[i]), method=method,
                                       logits=logits[i].copy(), features=features[i].copy()))
        return out

    def explain(
        self, x: np.ndarray, target: int | None = None, method: str = "gradcam"
    ) -> Explanation:
        """Predicts one image and maps the evidence for a class, in one pass.

        Args:
            x: (S, S, 1) or (1, S, S, 1) raw intensities in [0, 255].
            target: The class index to explain; None for the predicted class.
            method: ``"gradcam"`` or ``"gradcam++"``.

        Returns:
            The calibrated probabilities, the (S, S) map and the class explained.

        Raises:
            ValueError: Wrong shape, unknown method or target out of range.
        """
        batch, targets = self.check_one(x, target)
        return self._explain_chunks(batch, targets, method)[0]

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Holds the network for one batch, and tells a waiting warm-up when it is idle."""
        with self._idle:
            self._calls += 1
        try:
            with self._lock:
                yield
        finally:
            with self._idle:
                self._calls -= 1
                self._last_call = time.monotonic()
                self._idle.notify_all()

    def _wait_until_idle(self, idle_s: float) -> None:
        """Blocks until no batch has run or waited (nor a graph been traced) for ``idle_s`` s."""
        with self._idle:
            while True:
                quiet = time.monotonic() - self._last_call
                if self._calls == 0 and quiet >= idle_s:
                    return
                self._idle.wait(None if self._calls else idle_s - quiet)

    def _start_tracing(self, name: str | None) -> None:
        """Records the graph being traced (None: done), waking calls that wait for it.

        A finished trace counts as activity, so that the quiet before the next
        graph is counted from its end.
        """
        with self._idle:
            self._tracing = name
            if name is None:
                self._last_call = max(self._last_call, time.monotonic())
            self._idle.notify_all()

    def _graph(self, name: str):
        """The compiled graph called ``name`` (:data:`FORWARD` or a CAM method)."""
        return self._forward if name == FORWARD else self._explainers[name]

    def _runnable(self, name: str):
        """The graph to call, or its eager twin while a background warm-up has not traced it.

        A call that comes while the warm-up is tracing its very graph waits for
        the graph (soon ready, and then several times faster than running
        eagerly beside the tracing). Without a background warm-up, the graph is
        returned even when untraced (the first call traces it, as
        ``tf.function`` does).
        """
        with self._idle:
            while self._tracing == name:
                self._idle.wait()
        if self._warming and name not in self._traced:
            return self._forward_impl if name == FORWARD else self._explainer_impl(name)
        return self._graph(name)

    def _trace(self, name: str) -> None:
        """Traces (and runs once, on a blank image) one compiled graph."""
        size = self.metadata.input_size
        zeros = tf.zeros((1, size, size, 1), tf.float32)
        graph = self._graph(name)
        if name == FORWARD:
            graph(zeros)
        else:
            graph(zeros, tf.constant([-1], tf.int32))
        self._traced.add(name)

    def _trace_once(self, name: str) -> None:
        """Traces one graph unless it is traced; calls that need it meanwhile wait for it."""
        if name in self._traced:
            return
        self._start_tracing(name)
        try:
            self._trace(name)
        finally:
            self._start_tracing(None)

    def warm_up(self) -> None:
        """Traces every compiled graph once, so that no user request pays for tracing.

        The graph a first film needs (prediction with its Grad-CAM) comes first.
        """
        for name in WARM_UP_ORDER:
            self._trace_once(name)

    def warm_up_in_background(
        self,
        idle_s: float = WARM_UP_IDLE_S,
        delay_s: float = WARM_UP_DELAY_S,
        later_idle_s: float = WARM_UP_LATER_IDLE_S,
        then: Callable[[], None] | None = None,
    ) -> threading.Thread:
        """Traces every compiled graph in a thread, when the network is idle; returns at once.

        Until a graph is traced, the calls that need it run eagerly (the same
        operations, unfused): a film arriving meanwhile is answered without
        waiting for the tracing. The first graph is traced once the network has
        been idle for ``idle_s`` seconds, and not before ``delay_s`` seconds from
        now; each later one after ``later_idle_s`` seconds of quiet, so that
        tracing, which holds the GIL most of the time, does not slow down the
        films being answered. Starting it again returns the same thread.

        Args:
            idle_s: Quiet time before the first graph is traced.
            delay_s: Time from now before the first graph is traced (a call
                ending earlier ends it).
            later_idle_s: Quiet time before each later graph is traced.
            then: Called in the thread once every graph is traced (e.g. to
                freeze the garbage collector's view of the loaded model).

        Returns:
            The warm-up thread (``join`` it to wait for every graph).
        """
        if self._warmer is None:
            self._warming = True
            with self._idle:  # the quiet before the first graph counts from now
                self._last_call = time.monotonic() + max(delay_s - idle_s, 0.0)
            # not a daemon: an interpreter exiting mid-trace would abort in TensorFlow
            self._warmer = threading.Thread(
                target=self._warm_up_then_compile, args=(idle_s, later_idle_s, then),
                name="classifier-warm-up", daemon=False,
            )
            self._warmer.start()
        return self._warmer

    def _warm_up_then_compile(
        self, idle_s: float, later_idle_s: float, then: Callable[[], None] | None
    ) -> None:
        """The background warm-up; afterwards every call uses the compiled graphs.

        Args:
            idle_s: Quiet time before the first graph.
            later_idle_s: Quiet time before each later one.
            then: Called once every graph is traced.
        """
        try:
            for i, name in enumerate(WARM_UP_ORDER):
                if name not in self._traced:
                    self._wait_until_idle(idle_s if i == 0 else later_idle_s)
                    self._trace_once(name)
        except Exception:  # never fatal: the graphs would then trace on first use
            LOG.exception("warming up the classifier failed")
        finally:
            self._warming = False
        if then is not None:
            then()

    def tracing_counts(self) -> dict[str, int]:
        """How many times each compiled graph has been traced (for tests and checks)."""
        return {name: self._graph(name).experimental_get_tracing_count()
                for name in WARM_UP_ORDER}
