"""Training-time augmentation that suits chest X-rays.

Small rotations, shifts and zooms, brightness and contrast changes, and JPEG
re-compression, so that the model cannot lean on the training files' encoding.
Never a left-right flip: the heart's side is anatomy. The geometric part moves
every channel of a stack alike (a film and its masks); the photometric part
touches the film only.
"""

from __future__ import annotations

import keras
import tensorflow as tf

ROTATION = 0.03
"""Largest rotation, as a share of a full turn (0.03 = 10.8 degrees)."""
SHIFT = 0.06
"""Largest shift, as a share of the side."""
ZOOM = 0.12
"""Largest zoom in or out, as a share of the side."""
BRIGHTNESS = 0.15
"""Largest brightness change, as a share of the intensity range."""
CONTRAST = 0.25
"""Largest contrast change factor."""
JPEG_QUALITY = (40, 95)
"""Range of the JPEG re-compression quality (applied to half the films)."""

_GEOMETRIC: dict[int, keras.Sequential] = {}
_PHOTOMETRIC: dict[int, keras.Sequential] = {}


def describe() -> str:
    """The augmentation in words, for a model's recipe (from the constants above)."""
    return (f"rotation +-{ROTATION * 360:.1f} deg, shift {SHIFT:.0%}, zoom {ZOOM:.0%}, "
            f"brightness {BRIGHTNESS:.0%}, contrast {CONTRAST:.0%}, JPEG quality "
            f"{JPEG_QUALITY[0]}-{JPEG_QUALITY[1]} on half the films; masks follow the "
            "geometric part; no flips")


def _geometric(seed: int) -> keras.Sequential:
    if seed not in _GEOMETRIC:
        _GEOMETRIC[seed] = keras.Sequential([
            keras.layers.RandomRotation(ROTATION, fill_mode="constant", seed=seed, dtype="float32"),
            keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="constant", seed=seed + 1,
                                           dtype="float32"),
            keras.layers.RandomZoom((-ZOOM, ZOOM), fill_mode="constant", seed=seed + 2,
                                    dtype="float32"),
        ], name="xray_geometric")
    return _GEOMETRIC[seed]


def _photometric(seed: int) -> keras.Sequential:
    if seed not in _PHOTOMETRIC:
        _PHOTOMETRIC[seed] = keras.Sequential([
            keras.layers.RandomBrightness(BRIGHTNESS, value_range=(0.0, 255.0), seed=seed + 3,
                                          dtype="float32"),
            keras.layers.RandomContrast(CONTRAST, value_range=(0.0, 255.0), seed=seed + 4,
                                        dtype="float32"),
        ], name="xray_photometric")
    return _PHOTOMETRIC[seed]


def _random_jpeg(image: tf.Tensor) -> tf.Tensor:
    """Re-encodes one (H, W, 1) float image as JPEG at a random quality, half the time."""
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    recompressed = tf.image.random_jpeg_quality(pixels, *JPEG_QUALITY)
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
    return augment_stack(images, seed)[0]


def augment_stack(stack: tf.Tensor, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Augments a batch of films together with their masks.

    Args:
        stack: (B, H, W, 1 + k) float32: the film in [0, 255], then k masks.
        seed: Seed of the augmentation layers.

    Returns:
        ``(films, masks)``: (B, H, W, 1) float32 in [0, 255], and (B, H, W, k)
        float32 masks moved exactly like their films.
    """
    moved = _geometric(seed)(stack, training=True)
    films, masks = moved[..., :1], moved[..., 1:]
    films = tf.clip_by_value(_photometric(seed)(films, training=True), 0.0, 255.0)
    return tf.map_fn(_random_jpeg, films, fn_output_signature=tf.float32), masks
