"""The lung segmenter: a small Keras U-Net, its metadata, and masks at film resolution.

The network maps a (S, S, 1) grayscale film in [0, 255] to a (S, S, 1) lung
probability. :class:`LungSegmenter` wraps a verified, loaded network in one
compiled ``tf.function`` and turns its output into a binary mask at the film's
own resolution (the two largest connected fields, holes filled) and the lungs'
bounding box. Whether that mask looks like a pair of lungs at all is judged by
:func:`lung_field_problem`, which the out-of-distribution gate uses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import keras
import numpy as np
from PIL import Image
from scipy import ndimage

from covid.inputs.preprocess import LungBox, lung_box, to_model_input
from covid.model.metadata import JsonMetadata, ModelFileError, check_sha256, read_metadata_as
from covid.settings import LUNG_MODEL_FILE, MODELS_DIR

DEFAULT_LUNG_MODEL_PATH = MODELS_DIR / LUNG_MODEL_FILE
"""The shipped segmenter, beside the package (:func:`covid.settings.settings` adds the variable)."""

MASK_THRESHOLD = 0.5
"""Probability above which a pixel counts as lung."""

UNET_FILTERS = (16, 32, 64, 128, 192)
"""The shipped U-Net's channels per level, from the finest to the bottleneck."""


@keras.saving.register_keras_serializable(package="covid")
class PerImageStandardize(keras.layers.Layer):
    """Standardises each image to zero mean and unit variance.

    Makes the segmenter indifferent to a film's exposure and contrast, which
    differ between hospitals and between PNG, JPEG and DICOM windowing.
    """

    def call(self, inputs):
        """(B, H, W, C) -> (B, H, W, C) standardised per image."""
        mean = keras.ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        var = keras.ops.var(inputs, axis=(1, 2, 3), keepdims=True)
        return (inputs - mean) / keras.ops.sqrt(var + 1.0)


def _conv_block(x, filters: int, name: str):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(
            x
        )
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    input_size: int | None = None,
    filters: tuple[int, ...] = UNET_FILTERS,
    name: str = "lung_unet",
    output: str = "lungs",
) -> keras.Model:
    """Builds a U-Net (Ronneberger et al., MICCAI 2015) small enough for a CPU.

    The lung segmenter and the opacity segmenter (:mod:`covid.model.opacity`) are
    both this network; only their names and training differ.

    Args:
        input_size: Square input side (a multiple of ``2 ** (len(filters) - 1)``), or
            None for any such size.
        filters: Channels per level, from the finest to the bottleneck.
        name: The model's name.
        output: The name of its last (sigmoid) layer.

    Returns:
        A model mapping (B, S, S, 1) intensities in [0, 255] to (B, S, S, 1) float32
        probabilities.
    """
    inputs = keras.Input((input_size, input_size, 1), name="xray")
    x = PerImageStandardize(name="standardize")(inputs)
    skips = []
    for level, width in enumerate(filters[:-1]):
        x = _conv_block(x, width, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level}")(x)
    x = _conv_block(x, filters[-1], "bottleneck")
    for level in reversed(range(len(filters) - 1)):
        x = keras.layers.UpSampling2D(interpolation="bilinear", name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters[level], f"dec{level}")
    probs = keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=output)(x)
    return keras.Model(inputs, probs, name=name)


@dataclass
class LungModelMetadata(JsonMetadata):
    """What a consumer of the segmenter needs besides its weights.

    Attributes:
        name: Human-readable model name.
        version: Model version string.
        input_size: Square input side, in pixels.
        threshold: Probability above which a pixel is lung.
        sha256: SHA-256 of the ``.keras`` file.
        trained_on: Plain-words description of the training data.
        splits: Split sizes.
        metrics: Held-out metrics (Dice, IoU).
        recipe: The training recipe, backend and precision included.
    """

    name: str = "Lung-field U-Net"
    version: str = "0"
    input_size: int = 256
    threshold: float = MASK_THRESHOLD
    sha256: str = ""
    trained_on: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


_SegMeta = TypeVar("_SegMeta", bound=JsonMetadata)


def load_lung_model(
    path: str | Path = DEFAULT_LUNG_MODEL_PATH,
) -> tuple[keras.Model, LungModelMetadata]:
    """Loads the segmenter after checking its SHA-256 against its metadata.

    Raises:
        ModelFileError: A file is missing or malformed, or the SHA-256 differs.
    """
    return load_verified(path, LungModelMetadata, "lung model")


def load_verified(
    path: str | Path, kind: type[_SegMeta], what: str
) -> tuple[keras.Model, _SegMeta]:
    """Loads a segmenter's ``.keras`` file after checking its SHA-256 against its metadata.

    Args:
        path: The ``.keras`` file; its metadata JSON lies beside it.
        kind: The metadata class.
        what: The model in words, for the error message ("lung model").

    Raises:
        ModelFileError: A file is missing or malformed, or the SHA-256 differs.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}")
    metadata = read_metadata_as(kind, path)
    check_sha256(path, metadata.sha256)
    return keras.saving.load_model(path, compile=False), metadata


WORK_SIDE = 256
"""Longest side at which masks are thresholded and cleaned before going to film size."""


def resize_map(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes a 2-D map bilinearly.

    Args:
        values: (h, w) numbers (bool masks become 0/1).
        height: Rows wanted.
        width: Columns wanted.

    Returns:
        (height, width) float32 map.
    """
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def work_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) at which masks of a film of ``shape`` are cleaned: at most :data:`WORK_SIDE`."""
    height, width = shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def mask_from_probs(probs: np.ndarray, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """Turns a network probability map into a clean binary mask at film resolution.

    The map is resized bilinearly to the film (or, for a film larger than
    :data:`WORK_SIDE`, to that working size first), thresholded, reduced to its
    two largest connected components (the lung fields) and its holes are
    filled; a working-size mask is then resized smoothly to the film.

    Args:
        probs: (S, S) float lung probabilities in [0, 1].
        shape: The film's (H, W).
        threshold: Probability above which a pixel is lung.

    Returns:
        (H, W) bool mask.
    """
    return to_film(_clean_mask(probs, shape, threshold), shape)


def _clean_mask(probs: np.ndarray, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """The thresholded, cleaned mask at the working size of a film of ``shape``."""
    mask = resize_map(probs, *work_shape(shape)) > threshold
    labels, count = ndimage.label(mask)
    if count > 2:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        keep = 1 + np.argsort(sizes)[::-1][:2]
        mask = np.isin(labels, keep)
    return ndimage.binary_fill_holes(mask)


def to_film(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A working-size (h, w) bool mask resized smoothly to the film's (H, W)."""
    if mask.shape == tuple(shape):
        return mask
    return resize_map(mask, *shape) > 0.5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """The Dice overlap of two binary masks of one shape (1.0 when both are empty).

    Args:
        a: (H, W) bool mask.
        b: (H, W) bool mask.

    Returns:
        ``2 |a & b| / (|a| + |b|)``.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def lung_field_problem(mask: np.ndarray) -> str | None:
    """Says why a mask is not a plausible pair of lung fields, or None if it is.

    A chest X-ray shows two lung fields: together 8-60% of the film, each at
    least a sixth of the pair, one on each side of the film's midline, at
    similar heights, not both running along the image's edges.

    Args:
        mask: (H, W) bool lung mask from :func:`mask_from_probs`.

    Returns:
        A plain-words reason, or None.
    """
    height, width = mask.shape
    area = mask.mean()
    if area < 0.08:
        return f"no lung fields found (lungs would cover {area:.0%} of the image)"
    if area > 0.60:
        return f"no distinct lung fields found (the 'lungs' cover {area:.0%} of the image)"
    labels, count = ndimage.label(mask)
    if count < 2:
        return "only one lung field found, not two"
    sizes = ndimage.sum_labels(mask, labels, index=[1, 2])
    if sizes.min() < sizes.sum() / 6:
        return "the two lung fields differ too much in size"
    centres = np.array(ndimage.center_of_mass(mask, labels, index=[1, 2]))
    left, right = sorted(centres[:, 1])
    if not (left < width / 2 < right):
        return "the two lung fields are not on either side of the midline"
    if abs(centres[0, 0] - centres[1, 0]) > 0.25 * height:
        return "the two lung fields are at different heights"
    if min(_edge_contact(labels == k) for k in (1, 2)) > EDGE_CONTACT:
        return "both 'lung fields' run along the image's edges (air around a body?)"
    return None


EDGE_CONTACT = 0.4
"""Largest share of a lung field's height that may lie on the image's border when both
fields do. Measured on the 9,208 training films: 1 exceeds it; pydicom's CT slice's
'fields' (the air beside the body) reach 0.62 and 0.77."""


def _edge_contact(field: np.ndarray) -> float:
    """Pixels of a field on the image's outermost frame, per row the field spans."""
    border = field[0].sum() + field[-1].sum() + field[:, 0].sum() + field[:, -1].sum()
    return float(border) / max(int(field.any(axis=1).sum()), 1)


@dataclass(frozen=True)
class LungSegmentation:
    """The lung fields of one film.

    Attributes:
        mask: (H, W) bool mask at the film's resolution, True inside the lungs.
        box: The lungs' bounding box on the film (None when the mask is empty).
        problem: Why the mask is not a plausible pair of lungs, or None.
    """

    mask: np.ndarray
    box: LungBox | None
    problem: str | None


class CompiledUNet:
    """A loaded U-Net with one compiled forward pass, safe to share between threads.

    Attributes:
        model: The wrapped Keras model (never modified).
        input_size: Its square input side.
    """

    def __init__(self, model: keras.Model, input_size: int):
        import tensorflow as tf

        self.model = model
        self.input_size = input_size
        spec = tf.TensorSpec((None, input_size, input_size, 1), tf.float32)
        self._forward = tf.function(
            lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True
        )
        self._lock = threading.Lock()  # one batch at a time, whatever the thread (session)
        self.eager_until_traced = False
        """Run eagerly until :meth:`warm_up` has traced the graph (a server that traces
        later: one eager film costs about a third of a trace)."""
        self._traced = False

    def warm_up(self) -> None:
        """Traces the compiled graph once, so that the first real film pays nothing."""
        size = self.input_size
        with self._lock:
            self._forward(np.zeros((1, size, size, 1), np.float32))
            self._traced = True

    def probs_batch(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for a batch.

        Args:
            x: (N, S, S, 1) intensities in [0, 255].

        Returns:
            (N, S, S) float32 probabilities.
        """
        x = np.asarray(x, np.float32)
        if len(x) == 0:
            size = self.input_size
            return np.zeros((0, size, size), np.float32)
        with self._lock:
            if keras.backend.backend() != "tensorflow":  # a trainer on PyTorch segments too
                return np.asarray(self.model.predict_on_batch(x))[..., 0]
            if self.eager_until_traced and not self._traced:
                return self.model(x, training=False).numpy()[..., 0]
            return self._forward(x).numpy()[..., 0]


class LungSegmenter(CompiledUNet):
    """A loaded lung U-Net with one compiled forward pass.

    Attributes:
        model: The wrapped Keras model (never modified).
        metadata: Its metadata (input size, threshold, metrics).
    """

    def __init__(self, model: keras.Model, metadata: LungModelMetadata):
        super().__init__(model, metadata.input_size)
        self.metadata = metadata

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_LUNG_MODEL_PATH) -> LungSegmenter:
        """Loads a verified segmenter (see :func:`load_lung_model`)."""
        return cls(*load_lung_model(path))

    def segment_batch(self, films: list[np.ndarray]) -> list[LungSegmentation]:
        """Segments films of any sizes.

        Args:
            films: (H, W) uint8 grayscale films.

        Returns:
            One :class:`LungSegmentation` per film, at that film's resolution.
        """
        size = self.metadata.input_size
        if not films:
            return []
        batch = np.stack([to_model_input(f, size) for f in films]).astype(np.float32)
        return [
            self._finish(p, f.shape) for p, f in zip(self.probs_batch(batch), films, strict=True)
        ]

    def segment(self, film: np.ndarray) -> LungSegmentation:
        """Segments one (H, W) uint8 film (see :meth:`segment_batch`)."""
        return self.segment_batch([film])[0]

    def _finish(self, probs: np.ndarray, shape: tuple[int, int]) -> LungSegmentation:
        work = _clean_mask(probs, shape, self.metadata.threshold)
        mask = to_film(work, shape)
        return LungSegmentation(mask, lung_box(mask), lung_field_problem(work))
