"""Training-time augmentation that suits chest X-rays.

Small rotations, shifts and zooms; strong exposure, contrast, gamma, blur and
noise changes on every film of every class, so that a film's grey level and
sharpness say nothing about its class; and JPEG re-compression of every film at
a random quality, so that PNG against JPEG (the children's pneumonias are PNG,
their normals JPEG) is no cue. Never a left-right flip: the heart's side is
anatomy. The geometric part moves every channel of a stack alike (a film and its
masks); the photometric part touches the film only.
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
BRIGHTNESS = 0.2
"""Largest brightness (exposure) change, as a share of the intensity range."""
CONTRAST = 0.4
"""Largest contrast change factor."""
GAMMA = 1.6
"""Largest gamma factor: gamma is drawn log-uniformly in [1/GAMMA, GAMMA]."""
BLUR_SIGMA = 1.5
"""Largest Gaussian blur, in input pixels (drawn uniformly from 0)."""
NOISE_STD = 8.0
"""Largest standard deviation of added Gaussian noise, in grey levels (drawn uniformly from 0)."""
JPEG_QUALITY = (30, 95)
"""Range of the JPEG re-compression quality (every film is re-compressed)."""

# Layer tuples, not a keras.Sequential: a random layer called on its own inside tf.data
# runs on TensorFlow whatever the Keras backend, a Sequential on the backend (PyTorch fails).
_GEOMETRIC: dict[int, tuple[keras.layers.Layer, ...]] = {}
_PHOTOMETRIC: dict[int, tuple[keras.layers.Layer, ...]] = {}


def describe() -> str:
    """The augmentation in words, for a model's recipe (from the constants above)."""
    return (f"rotation +-{ROTATION * 360:.1f} deg, shift {SHIFT:.0%}, zoom {ZOOM:.0%}, "
            f"brightness {BRIGHTNESS:.0%}, contrast {CONTRAST:.0%}, gamma 1/{GAMMA:g}-{GAMMA:g}, "
            f"blur sigma 0-{BLUR_SIGMA:g} px, noise sd 0-{NOISE_STD:g}, JPEG quality "
            f"{JPEG_QUALITY[0]}-{JPEG_QUALITY[1]} on every film; masks follow the "
            "geometric part; no flips")


def _geometric(seed: int) -> tuple[keras.layers.Layer, ...]:
    if seed not in _GEOMETRIC:
        _GEOMETRIC[seed] = (
            keras.layers.RandomRotation(ROTATION, fill_mode="constant", seed=seed, dtype="float32"),
            keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="constant", seed=seed + 1,
                                           dtype="float32"),
            keras.layers.RandomZoom((-ZOOM, ZOOM), fill_mode="constant", seed=seed + 2,
                                    dtype="float32"),
        )
    return _GEOMETRIC[seed]


def _photometric(seed: int) -> tuple[keras.layers.Layer, ...]:
    if seed not in _PHOTOMETRIC:
        _PHOTOMETRIC[seed] = (
            keras.layers.RandomBrightness(BRIGHTNESS, value_range=(0.0, 255.0), seed=seed + 3,
                                          dtype="float32"),
            keras.layers.RandomContrast(CONTRAST, value_range=(0.0, 255.0), seed=seed + 4,
                                        dtype="float32"),
        )
    return _PHOTOMETRIC[seed]


def _through(layers: tuple[keras.layers.Layer, ...], x: tf.Tensor) -> tf.Tensor:
    """``x`` through each random layer in turn, in training mode (so they draw)."""
    for layer in layers:
        x = layer(x, training=True)
    return x


def _random_gamma(films: tf.Tensor) -> tf.Tensor:
    """(B, H, W, 1) films in [0, 255], each under its own gamma, log-uniform in [1/GAMMA, GAMMA]."""
    log_gamma = tf.random.uniform((tf.shape(films)[0], 1, 1, 1), -1.0, 1.0) * tf.math.log(GAMMA)
    return 255.0 * tf.pow(films / 255.0 + 1e-6, tf.exp(log_gamma))


def _blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """One (H, W, 1) image under a 7-tap separable Gaussian of width ``sigma`` (0: unchanged)."""
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-(taps**2) / (2.0 * tf.maximum(sigma, 1e-3) ** 2))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[tf.newaxis], [[0, 0], [3, 3], [3, 3], [0, 0]], mode="SYMMETRIC")
    rows = tf.nn.conv2d(padded, tf.reshape(kernel, (7, 1, 1, 1)), 1, "VALID")
    return tf.nn.conv2d(rows, tf.reshape(kernel, (1, 7, 1, 1)), 1, "VALID")[0]


def _degrade(image: tf.Tensor) -> tf.Tensor:
    """Blurs, adds noise to and JPEG-recompresses one (H, W, 1) float image, all at random."""
    image = _blur(image, tf.random.uniform((), 0.0, BLUR_SIGMA))
    image = image + tf.random.normal(tf.shape(image)) * tf.random.uniform((), 0.0, NOISE_STD)
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.cast(tf.image.random_jpeg_quality(pixels, *JPEG_QUALITY), tf.float32)


def augment_stack(stack: tf.Tensor, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Augments a batch of films together with their masks.

    Args:
        stack: (B, H, W, 1 + k) float32: the film in [0, 255], then k masks.
        seed: Seed of the augmentation layers.

    Returns:
        ``(films, masks)``: (B, H, W, 1) float32 in [0, 255], and (B, H, W, k)
        float32 masks moved exactly like their films.
    """
    moved = _through(_geometric(seed), stack)
    films, masks = moved[..., :1], moved[..., 1:]
    films = tf.clip_by_value(_through(_photometric(seed), films), 0.0, 255.0)
    films = _random_gamma(films)
    return tf.map_fn(_degrade, films, fn_output_signature=tf.float32), masks
