"""The classifier's network: building the Keras ResNet-50, model metadata, verified files.

The :class:`covid.explain.inference.Classifier` that serves it lives in the explain
stage; this module builds the network (:func:`build_model`), holds the metadata
types (:class:`ModelMetadata`, and the :class:`JsonMetadata` every model's metadata
shares) and saves and loads model files checked against their SHA-256.

The saved model takes raw grayscale intensities in [0, 255] and does its own
normalisation (:class:`ResNetGrayPreprocess`), so that no caller normalises and
training and serving cannot normalise differently. The model's output is the
softmax over ``logits``; a JSON file beside the ``.keras`` file holds the class
names, input size, Grad-CAM layer, calibration temperature, operating threshold
(on P(any finding)), metrics and the file's SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import keras

from covid.model.classes import CLASS_NAMES, COVID
from covid.settings import MODEL_FILE, MODELS_DIR

DEFAULT_MODEL_PATH = MODELS_DIR / MODEL_FILE
"""The shipped model, beside the package (:func:`covid.settings.settings` adds the variable)."""

GRADCAM_LAYER = "conv5_block3_out"
"""The default Grad-CAM layer, ResNet-50's last block (stride 32); a model's metadata
names the layer it explains."""

LOGITS_LAYER = "logits"

# ResNet-50's ImageNet ("caffe") channel means, in BGR order.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


class ModelFileError(ValueError):
    """A model or metadata file that is missing, altered or unreadable."""


class JsonMetadata:
    """A metadata dataclass as JSON text, both ways (mixed into each model's metadata).

    ``LEGACY`` holds what a file written before a field existed meant by leaving it
    out; a field missing from both the file and ``LEGACY`` with no default of its
    own makes the file malformed.
    """

    LEGACY: ClassVar[dict[str, Any]] = {}

    def to_json(self) -> str:
        """Serialises the metadata as indented JSON, in field order."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls: type[_Meta], text: str) -> _Meta:
        """Parses metadata JSON, ignoring unknown keys from newer versions.

        Raises:
            TypeError: A required field is missing (or the JSON is not an object).
        """
        raw = {**cls.LEGACY, **json.loads(text)}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


_Meta = TypeVar("_Meta", bound=JsonMetadata)


@keras.saving.register_keras_serializable(package="covid")
class ResNetGrayPreprocess(keras.layers.Layer):
    """Turns (B, H, W, 1) grayscale [0, 255] into ResNet-50's (B, H, W, 3) input.

    Repeats the channel and subtracts ImageNet's BGR means, exactly as
    ``keras.applications.resnet50.preprocess_input`` does for an RGB image with
    equal channels, so that ImageNet weights, when a user has them, apply.
    """

    def call(self, inputs):
        """Normalises a batch (see the class docstring)."""
        rgb = keras.ops.repeat(inputs, 3, axis=-1)
        mean = keras.ops.convert_to_tensor(_IMAGENET_BGR_MEAN, dtype=rgb.dtype)
        return rgb - mean

    def compute_output_shape(self, input_shape):
        """Same batch and spatial shape, three channels."""
        return (*input_shape[:-1], 3)


@dataclass(kw_only=True)
class ModelMetadata(JsonMetadata):
    """Everything a consumer of the model needs besides its weights.

    The class names, input size and input mode are the model's own facts, so
    they have no default: a model file states them (every file written since v1
    does; files from before the input mode existed were whole-film models, and
    ``LEGACY`` reads them as ``full``).

    Attributes:
        name: Human-readable model name.
        version: Model version string.
        class_names: Output classes, in order (names from :mod:`covid.model.classes`).
        positive_class: The class whose own probability has its AUC, reliability
            curve and default map (COVID-19); the operating point is not on it
            but on P(any finding), ``1 - P(Normal)`` (:mod:`covid.model.decision`).
        input_size: Square input side, in pixels.
        input_mode: How a film becomes the input: ``full`` (the whole film) or a
            lung-focused mode (``crop``, ``attenuate``, ``crop+attenuate``; see
            ``covid.inputs.preprocess.lung_focus``), which needs the lung segmenter.
        lung_model_sha256: SHA-256 of the lung segmenter the classifier was trained
            with (empty for ``full``).
        input_contrast: How the input's grey levels are standardised
            (``covid.inputs.preprocess.CONTRASTS``): ``none`` (v3 and earlier) or
            ``equalise`` (histogram equalisation over the lung box).
        gradcam_layer: Name of the layer Grad-CAM explains.
        map_grid: ``[rows, cols]`` of the Grad-CAM grid over the input at
            ``input_size`` (empty for models that predate the field).
        temperature: Calibration temperature dividing the logits.
        threshold: Operating point on the calibrated probability of any finding,
            ``1 - P(Normal)``: at or above it the film is admitted.
        sha256: SHA-256 of the ``.keras`` file.
        trained_on: Plain-words description of the training data.
        splits: Split sizes per class.
        metrics: Test-split metrics.
        recipe: The training recipe.
        extra: Further artefacts (e.g. out-of-distribution statistics).
    """

    LEGACY: ClassVar[dict[str, Any]] = {"input_mode": "full"}

    name: str = "COVID-19 chest X-ray ResNet-50"
    version: str = "0"
    class_names: list[str]
    positive_class: str = COVID
    input_size: int
    input_mode: str
    lung_model_sha256: str = ""
    input_contrast: str = "none"
    gradcam_layer: str = GRADCAM_LAYER
    map_grid: list[int] = field(default_factory=list)
    temperature: float = 1.0
    threshold: float = 0.5
    sha256: str = ""
    trained_on: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_index(self) -> int:
        """Index of the positive class in the model's outputs."""
        return self.class_names.index(self.positive_class)


def build_model(
    n_classes: int = len(CLASS_NAMES),
    input_size: int | None = None,
    weights: str | None = None,
    bn_momentum: float = 0.9,
    dropout: float = 0.2,
    output_stride: int = 32,
) -> keras.Model:
    """Builds the ResNet-50 classifier as one flat functional model.

    Args:
        n_classes: Number of output classes.
        input_size: Square input side, or None for any size (progressive resizing).
        weights: None for random initialisation, ``"imagenet"`` (downloads: only
            where the internet is reachable) or the path of a local
            ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` file.
        bn_momentum: BatchNormalization momentum. Keras' default of 0.99 leaves
            the moving statistics far behind the weights in a short from-scratch
            run, and the model then scores at chance in inference mode.
        dropout: Dropout rate before the classifier.
        output_stride: 32 (ResNet-50 as published), or 16: the last stage keeps
            the resolution of the one before and dilates its 3 x 3 convolutions
            by 2 (:func:`_dilate_last_stage`), so ``conv5_block3_out`` is a
            10 x 10 grid at 160 px; every weight keeps its shape.

    Returns:
        A model mapping (B, H, W, 1) intensities in [0, 255] to (B, n_classes)
        probabilities, with a ``logits`` layer before the softmax.

    Raises:
        ValueError: ``output_stride`` is neither 32 nor 16.
    """
    if output_stride not in (32, 16):
        raise ValueError(f"output_stride must be 32 or 16, got {output_stride}")
    inputs = keras.Input((input_size, input_size, 1), name="xray")
    x = ResNetGrayPreprocess(name="resnet_preprocess")(inputs)
    base = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(n_classes, name=LOGITS_LAYER, dtype="float32")(x)
    probs = keras.layers.Activation("softmax", name="probs", dtype="float32")(logits)
    model = keras.Model(inputs, probs, name="covid_resnet50")
    return model if output_stride == 32 else _dilate_last_stage(model)


_STRIDED_LAST_STAGE = ("conv5_block1_1_conv", "conv5_block1_0_conv")
"""ResNet-50's (v1) stride-2 layers entering the last stage: the first 1 x 1
convolution and the shortcut's."""


def _dilate_last_stage(model: keras.Model) -> keras.Model:
    """The same network with a stride-16 last stage (DeepLab's dilated ResNet).

    The last stage's stride-2 convolutions take stride 1, and its 3 x 3
    convolutions a dilation of 2, so that each sees the same neighbourhood of
    the (now twice as fine) grid. The copy's weights are those of ``model``.
    """
    def _clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer.name in _STRIDED_LAST_STAGE:
            config["strides"] = (1, 1)
        elif layer.name.startswith("conv5_") and layer.name.endswith("_2_conv"):
            config["dilation_rate"] = (2, 2)
        return layer.__class__.from_config(config)

    dilated = keras.models.clone_model(model, clone_function=_clone)
    dilated.set_weights(model.get_weights())
    return dilated


def output_stride_of(model: keras.Model) -> int:
    """The input pixels per Grad-CAM cell of a model built by :func:`build_model`."""
    stride = model.get_layer(_STRIDED_LAST_STAGE[0]).strides
    return 32 if tuple(stride) == (2, 2) else 16


def file_sha256(path: str | Path) -> str:
    """Returns a file's SHA-256 as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_path(model_path: str | Path) -> Path:
    """Returns the metadata JSON path beside a ``.keras`` file."""
    return Path(model_path).with_suffix(".json")


def save_with_metadata(model: keras.Model, metadata: _Meta, path: str | Path) -> _Meta:
    """Saves any of the project's models without optimizer state, then its metadata beside it.

    Args:
        model: The model.
        metadata: Its metadata; ``sha256`` is filled in.
        path: The ``.keras`` path; the JSON goes beside it.

    Returns:
        The metadata as written, with the ``.keras`` file's SHA-256.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path, include_optimizer=False)
    metadata.sha256 = file_sha256(path)
    write_metadata(metadata, path)
    return metadata


def write_metadata(metadata: JsonMetadata, model_path: str | Path) -> None:
    """Writes the metadata JSON beside a model file."""
    metadata_path(model_path).write_text(metadata.to_json())


def read_metadata(model_path: str | Path) -> ModelMetadata:
    """Reads the classifier's metadata JSON beside a model file.

    Raises:
        ModelFileError: The JSON is missing or malformed.
    """
    return read_metadata_as(ModelMetadata, model_path)


def read_metadata_as(kind: type[_Meta], model_path: str | Path) -> _Meta:
    """Reads the metadata JSON beside a model file as the given metadata class.

    Raises:
        ModelFileError: The JSON is missing or malformed.
    """
    meta_file = metadata_path(model_path)
    if not meta_file.is_file():
        raise ModelFileError(f"model metadata not found: {meta_file}")
    try:
        return kind.from_json(meta_file.read_text())
    except (json.JSONDecodeError, TypeError) as err:
        raise ModelFileError(f"model metadata is malformed: {meta_file} ({err})") from err


def check_sha256(path: str | Path, expected: str) -> None:
    """Refuses a model file whose SHA-256 is not the one its metadata records.

    Raises:
        ModelFileError: The file is missing, or its SHA-256 differs.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelFileError(
            f"model file {path} does not match its metadata: SHA-256 is {actual[:12]}…, "
            f"expected {expected[:12] or '(none)'}…"
        )


def load_model(path: str | Path = DEFAULT_MODEL_PATH) -> tuple[keras.Model, ModelMetadata]:
    """Loads a model after checking its file against the SHA-256 in its metadata.

    Args:
        path: The ``.keras`` file.

    Returns:
        The model (not compiled) and its metadata.

    Raises:
        ModelFileError: The model or its metadata is missing, or the file's
            SHA-256 does not match the metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    metadata = read_metadata(path)
    check_sha256(path, metadata.sha256)
    model = keras.saving.load_model(path, compile=False)
    return model, metadata
