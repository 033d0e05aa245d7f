"""The classifier's network: building the Keras ResNet-50, saving and loading verified files.

The :class:`covid.explain.inference.Classifier` that serves it lives in the explain
stage; this module builds the network (:func:`build_model`) and saves and loads
model files checked against their SHA-256. The metadata types and the checks
themselves need no Keras and live in :mod:`covid.model.metadata`.

The saved model takes raw grayscale intensities in [0, 255] and does its own
normalisation (:class:`ResNetGrayPreprocess`), so that no caller normalises and
training and serving cannot normalise differently. The model's output is the
softmax over ``logits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import keras

from covid.model.classes import CLASS_NAMES
from covid.model.metadata import (
    JsonMetadata,
    ModelFileError,
    ModelMetadata,
    check_sha256,
    file_sha256,
    read_metadata,
    write_metadata,
)
from covid.settings import MODEL_FILE, MODELS_DIR

DEFAULT_MODEL_PATH = MODELS_DIR / MODEL_FILE
"""The shipped model, beside the package (:func:`covid.settings.settings` adds the variable)."""

LOGITS_LAYER = "logits"

# ResNet-50's ImageNet ("caffe") channel means, in BGR order.
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


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


_Meta = TypeVar("_Meta", bound=JsonMetadata)


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
