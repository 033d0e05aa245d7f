"""The averaged (EMA) weights, with BatchNorm statistics that match them.

AdamW keeps an exponential moving average of the weights, and the average is
what the trainer validates and exports. BatchNorm's moving statistics followed
the raw weights during training, so before the average is scored they are
re-estimated with forward passes in training mode.

Works on either Keras backend: TensorFlow compiles the forward pass once per
model; PyTorch, the faster trainer on some CPUs (:mod:`covid.training.backend`),
runs it eagerly, since a ``tf.function`` cannot trace a PyTorch model.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_FORWARDS: dict[int, object] = {}


def _training_forward(model: keras.Model):
    """One training-mode forward pass per model, compiled on TensorFlow (retraced per size)."""
    if id(model) not in _FORWARDS:
        if keras.backend.backend() == "tensorflow":
            _FORWARDS[id(model)] = tf.function(lambda x: model(x, training=True))
        else:
            _FORWARDS[id(model)] = lambda x: model(np.asarray(x), training=True)
    return _FORWARDS[id(model)]


def reestimate_batchnorm(model: keras.Model, images: np.ndarray, size: int, batches: int = 40,
                         batch_size: int = 32, seed: int = 0) -> None:
    """Re-estimates BatchNorm moving statistics with forward passes in training mode.

    No weight is updated; only the moving means and variances follow the current
    weights on unaugmented training images.

    Args:
        model: The classifier.
        images: (N, S, S, 1) uint8 (or float) training inputs.
        size: The side to run at.
        batches: Forward passes.
        batch_size: Images per pass.
        seed: Seed of the image choice.
    """
    rng = np.random.default_rng(seed)
    _forward = _training_forward(model)
    for _ in range(batches):
        idx = np.sort(rng.choice(len(images), size=min(batch_size, len(images)), replace=False))
        x = tf.image.resize(tf.cast(images[idx], tf.float32), (size, size), antialias=True)
        _forward(x)


class averaged_weights:  # noqa: N801 (a context manager read as a phrase)
    """Within the block the model holds its EMA weights with matching BatchNorm statistics.

    Args:
        model: The classifier.
        trainer: Its training model (sharing the weights), compiled with the optimizer.
        images: (N, S, S, 1) training inputs for :func:`reestimate_batchnorm`.
        size: The side to run at.
        batches: Forward passes re-estimating BatchNorm.
    """

    def __init__(self, model, trainer, images: np.ndarray, size: int, batches: int) -> None:
        self.model, self.trainer, self.images = model, trainer, images
        self.size, self.batches = size, batches

    def __enter__(self):
        self.backup = [np.asarray(v) for v in self.trainer.weights]
        if self.trainer.optimizer.use_ema:
            self.trainer.optimizer.finalize_variable_values(self.trainer.trainable_variables)
            # The moving statistics followed the raw weights; the average needs its own.
            reestimate_batchnorm(self.model, self.images, self.size, self.batches)
        return self

    def __exit__(self, *exc) -> None:
        for var, value in zip(self.trainer.weights, self.backup, strict=True):
            var.assign(value)
