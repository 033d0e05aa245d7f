"""Training-time augmentation that suits chest X-rays.

Small rotations, shifts, zooms, brightness and contrast changes, and JPEG
re-compression, so that the model cannot lean on the training files' encoding.
Never a left-right flip: the heart's side is anatomy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

_AUGMENTERS: dict[int, keras.Sequential] = {}


def _augmenter(seed: int) -> keras.Sequential:
    """Builds (once per seed) the geometric and photometric augmentation layers."""
    if seed not in _AUGMENTERS:
        _AUGMENTERS[seed] = keras.Sequential(
            [
                keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
                keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 1),
                keras.layers.RandomZoom((-0.12, 0.12), fill_mode="constant", seed=seed + 2),
                keras.layers.RandomBrightness(0.15, value_range=(0.0, 255.0), seed=seed + 3),
                keras.layers.RandomContrast(0.25, value_range=(0.0, 255.0), seed=seed + 4),
            ],
            name="xray_augment",
        )
    return _AUGMENTERS[seed]


def _random_jpeg(image: tf.Tensor) -> tf.Tensor:
    """Re-encodes one (H, W, 1) float image as JPEG at a random quality, half the time."""
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    recompressed = tf.image.random_jpeg_quality(pixels, 40, 95)
    keep = tf.random.uniform(()) < 0.5
    return tf.cast(tf.where(keep, pixels, recompressed), tf.float32)


def augment_batch(images: tf.Tensor, seed: int = 0) -> tf.Tensor:
    """Augments one batch of X-rays.

    Args:
        images: (B, H, W, 1) float32 intensities in [0, 255].
        seed: Seed of the augmentation layers.

    Returns:
        (B, H, W, 1) float32 augmented intensities in [0, 255].
    """
    images = _augmenter(seed)(images, training=True)
    images = tf.clip_by_value(images, 0.0, 255.0)
    return tf.map_fn(_random_jpeg, images, fn_output_signature=tf.float32)
