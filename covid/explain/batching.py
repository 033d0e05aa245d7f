"""Cross-session micro-batching: one worker thread runs every caller's films together.

A server answers many sessions at once, each with a few films. Run on their own,
their batches take turns through the network, each paying a whole pass for a
handful of images. :class:`BatchingClassifier` has the :class:`Classifier`'s
interface; each call becomes a request with its own future on one queue, and a
single worker thread takes the queued requests of one kind (the bare forward
pass, or a CAM method), up to the batch size, runs them through the classifier
in one call, and hands each caller its own rows. A request waits at most
:data:`MAX_WAIT_S` for others to fill its batch when the network is idle; when
the network is busy, the requests that queued meanwhile go together at once.

Nothing is shared between callers but the worker: every request carries its own
images and classes, and gets back exactly its rows, in its order. A request is
checked in its caller's thread before it is queued, so a malformed one never
joins a batch; if a batch fails all the same, each of its requests is run again
on its own, so that only the one that fails alone gets the exception.

The batcher lives beside the classifier it wraps (``covid.explain``), so that
both the screening stage and the app can use it without either importing the
other.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from covid.explain.inference import FORWARD, Classifier, Explanation
from covid.model.calibration import calibrated_probs
from covid.model.metadata import ModelMetadata

LOG = logging.getLogger(__name__)

MAX_WAIT_S = 0.005
"""The longest a request waits for others to fill its batch when the network is idle: a
few milliseconds, nothing beside a pass of the network (tens of milliseconds a film)."""


@dataclass(frozen=True)
class _Request:
    """One caller's images, waiting for the worker.

    Attributes:
        kind: :data:`FORWARD` or a CAM method; only requests of one kind share a batch.
        x: (n, S, S, 1) float32 checked images, n at most the batch size.
        targets: (n,) int32 classes to explain, -1 for the predicted one (unused
            by the forward pass).
        future: Receives the n rows (or the exception), for the caller only.
        arrived: When it was queued (``time.monotonic``).
    """

    kind: str
    x: np.ndarray
    targets: np.ndarray
    future: Future
    arrived: float


class BatchingClassifier:
    """A :class:`Classifier` shared by many threads, whose calls are batched together.

    Same public interface as the classifier (its attributes are read through);
    every call blocks its caller until its own rows are ready. After
    :meth:`close`, calls run in the caller's thread, on the classifier directly.

    Attributes:
        classifier: The wrapped classifier (the worker's only caller once wrapped).
        batch_size: The most images the worker runs in one call.
        max_wait_s: How long a request waits to fill an idle network's batch.
    """

    def __init__(self, classifier: Classifier, batch_size: int | None = None,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        """Wraps a classifier and starts the worker.

        Args:
            classifier: The loaded classifier.
            batch_size: Images per worker call (None: the classifier's own, one
                compiled pass).
            max_wait_s: See :data:`MAX_WAIT_S`.

        Raises:
            ValueError: A batch size below 1 or a negative wait.
        """
        batch_size = classifier.batch_size if batch_size is None else batch_size
        if batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"batch_size must be positive and max_wait_s not negative, got "
                             f"{batch_size} and {max_wait_s}")
        self.classifier = classifier
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._pending: deque[_Request] = deque()
        self._ready = threading.Condition()  # guards _pending and _closed
        self._closed = False
        # a daemon, closed (and joined) at exit: a worker waiting for requests must not
        # keep the server from exiting, nor be cut off in the middle of a batch
        self._worker = threading.Thread(target=self._serve, name="classifier-batcher",
                                        daemon=True)
        self._worker.start()
        atexit.register(self.close)

    # ------------------------------------------------------------ the classifier's interface

    @property
    def metadata(self) -> ModelMetadata:
        """The classifier's metadata (class names, input size, temperature, threshold)."""
        return self.classifier.metadata

    @property
    def model(self) -> keras.Model:
        """The wrapped Keras model (never modified)."""
        return self.classifier.model

    @property
    def gradcam_layer(self) -> str:
        """The layer the maps explain."""
        return self.classifier.gradcam_layer

    @property
    def n_classes(self) -> int:
        """Classes the model outputs (C)."""
        return self.classifier.n_classes

    @property
    def n_features(self) -> int:
        """Pooled features per image (F)."""
        return self.classifier.n_features

    @property
    def map_cells(self) -> int:
        """The maps' resolution before upsampling (see ``Classifier.map_cells``)."""
        return self.classifier.map_cells

    def explain_batch(self, x: np.ndarray, targets: np.ndarray | None = None,
                      method: str = "gradcam") -> list[Explanation]:
        """``Classifier.explain_batch``, run in the worker's batches.

        Args:
            x: (N, S, S, 1) raw intensities in [0, 255].
            targets: (N,) class indices; None (or -1 entries) for each image's
                predicted class.
            method: ``"gradcam"`` or ``"gradcam++"``.

        Returns:
            One :class:`Explanation` per image, in order.

        Raises:
            ValueError: Wrong shape, unknown method or target out of range (raised
                here, before the request is queued).
        """
        x = self.classifier.check_batch(x)
        return self._submit(method, x, self.classifier.check_targets(len(x), targets, method))

    def explain(self, x: np.ndarray, target: int | None = None,
                method: str = "gradcam") -> Explanation:
        """``Classifier.explain`` (one image), run in the worker's batches.

        Raises:
            ValueError: Wrong shape, unknown method or target out of range.
        """
        batch, targets = self.classifier.check_one(x, target)
        return self._submit(method, batch, targets)[0]

    def forward_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``Classifier.forward_batch``: (N, C) logits and (N, F) features, batched.

        Raises:
            ValueError: ``x`` is not (N, S, S, 1) with S the model's input size.
        """
        x = self.classifier.check_batch(x)
        rows = self._submit(FORWARD, x, np.full(len(x), -1, np.int32))
        if not rows:
            return self.classifier.forward_batch(x)  # the empty arrays, shaped
        logits, features = zip(*rows, strict=True)
        return np.stack(logits), np.stack(features)

    def logits_batch(self, x: np.ndarray) -> np.ndarray:
        """``Classifier.logits_batch``: (N, C) float32 raw logits, batched."""
        return self.forward_batch(x)[0]

    def features_batch(self, x: np.ndarray) -> np.ndarray:
        """``Classifier.features_batch``: (N, F) float32 pooled features, batched."""
        return self.forward_batch(x)[1]

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """``Classifier.predict_batch``: (N, C) calibrated probabilities, batched."""
        return calibrated_probs(self.logits_batch(x), self.metadata.temperature)

    def warm_up(self) -> None:
        """Traces the classifier's graphs now (see ``Classifier.warm_up``)."""
        self.classifier.warm_up()

    def warm_up_in_background(self, *args: Any, **kwargs: Any) -> threading.Thread:
        """Traces the graphs when the network is idle (``Classifier.warm_up_in_background``)."""
        return self.classifier.warm_up_in_background(*args, **kwargs)

    def tracing_counts(self) -> dict[str, int]:
        """How many times each compiled graph has been traced."""
        return self.classifier.tracing_counts()

    # ------------------------------------------------------------ the queue and the worker

    def waiting(self) -> int:
        """Images queued and not yet taken by the worker."""
        with self._ready:
            return sum(len(r.x) for r in self._pending)

    def close(self) -> None:
        """Stops the worker once the queued requests are answered; later calls run directly.

        Idempotent; called at interpreter exit, and when the server drops the model.
        """
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()
        atexit.unregister(self.close)

    def __enter__(self) -> BatchingClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, kind: str, x: np.ndarray, targets: np.ndarray) -> list:
        """Queues checked images in requests of at most a batch, and waits for their rows.

        Returns:
            One row per image, in order: an :class:`Explanation`, or a
            (logits, features) pair for :data:`FORWARD`.
        """
        if len(x) == 0:
            return []
        now = time.monotonic()
        requests = [_Request(kind, x[i : i + self.batch_size], targets[i : i + self.batch_size],
                             Future(), now) for i in range(0, len(x), self.batch_size)]
        with self._ready:
            queued = not self._closed
            if queued:
                self._pending.extend(requests)
                self._ready.notify_all()
        if not queued:  # closed: answered here, on the classifier directly
            return self._rows(kind, x, targets)
        return [row for request in requests for row in request.future.result()]

    def _serve(self) -> None:
        """The worker: takes batches off the queue and answers them until closed and drained."""
        while (batch := self._next_batch()) is not None:
            self._answer(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The next batch: the oldest request and the later ones of its kind that fit.

        Waits for a first request, then until its batch is full or it has waited
        :attr:`max_wait_s` since it arrived (no wait once closed).

        Returns:
            The requests, oldest first; None once closed with nothing queued.
        """
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            if not self._pending:
                return None
            first = self._pending[0]
            while not self._closed and self._queued(first.kind) < self.batch_size:
                left = first.arrived + self.max_wait_s - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            return self._take(first.kind)

    def _queued(self, kind: str) -> int:
        """Images queued of one kind (the lock is held)."""
        return sum(len(r.x) for r in self._pending if r.kind == kind)

    def _take(self, kind: str) -> list[_Request]:
        """Removes the oldest requests of a kind that fit in one batch (the lock is held).

        They are taken in arrival order, stopping at the first that does not fit,
        so that no request is overtaken by a later one of its kind.
        """
        taken, size, full, kept = [], 0, False, deque()
        for request in self._pending:
            if request.kind == kind and not full:
                if size + len(request.x) <= self.batch_size:
                    taken.append(request)
                    size += len(request.x)
                    continue
                full = True  # later requests of this kind wait for the next batch
            kept.append(request)
        self._pending = kept
        return taken

    def _answer(self, batch: list[_Request]) -> None:
        """Runs a batch in one call and hands each request its rows.

        If the call fails, each request is run again on its own, so that one bad
        request fails only itself.
        """
        kind = batch[0].kind
        try:
            rows = self._rows(kind, np.concatenate([r.x for r in batch]),
                              np.concatenate([r.targets for r in batch]))
        except Exception as err:  # the callers' to see; the worker must keep serving
            if len(batch) == 1:
                batch[0].future.set_exception(err)
                return
            LOG.warning("a batch of %d requests failed (%s); answering each alone",
                        len(batch), type(err).__name__)
            for request in batch:
                self._answer([request])
            return
        start = 0
        for request in batch:
            request.future.set_result(rows[start : start + len(request.x)])
            start += len(request.x)

    def _rows(self, kind: str, x: np.ndarray, targets: np.ndarray) -> list:
        """One call of the classifier, as one row per image (see :meth:`_submit`)."""
        if kind == FORWARD:
            logits, features = self.classifier.forward_batch(x)
            return list(zip(logits, features, strict=True))
        return self.classifier.explain_batch(x, targets, kind)

