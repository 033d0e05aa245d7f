"""Class activation maps: Grad-CAM and Grad-CAM++ for any Keras functional CNN.

Both maps are computed on the *logits* (pre-softmax scores): the softmax couples
the classes and saturates, so gradients of probabilities vanish for confident
predictions (Selvaraju et al., 2017). The helpers here never modify the model
they explain: :func:`build_gradcam_model` wires a second functional model that
shares the original's layers and weights, and :func:`split_at_layer` cuts one into
a backbone up to the explained layer and a head from it to the logits, so that the
gradient tape records only the head (the map needs nothing below the layer).

References:
    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.
    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks", WACV 2018.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

METHODS = ("gradcam", "gradcam++")
"""The supported map methods."""

POOL_LAYER = "avg_pool"
"""Name of the global-average-pooling layer whose output is the feature vector."""


def find_last_conv_layer(model: keras.Model) -> str:
    """Finds the last layer with a 4-D (B, H, W, C) output.

    Args:
        model: A Keras functional model.

    Returns:
        The layer's name.

    Raises:
        ValueError: No layer other than the input has a 4-D output.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if len(_output_shape(layer)) == 4:
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-D output")


def _output_shape(layer: keras.layers.Layer) -> tuple[Any, ...]:
    """The layer's (single) output shape, or () when it has several or none."""
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return ()
    return tuple(output.shape) if hasattr(output, "shape") else ()


def _has_layer(model: keras.Model, name: str) -> bool:
    """Whether the model has a layer called ``name``."""
    return any(layer.name == name for layer in model.layers)


def _logits_tensor(model: keras.Model, logits_layer: str) -> Any:
    """The symbolic pre-softmax scores of a model.

    The output of the layer called ``logits_layer`` if there is one; else the
    input of a final softmax ``Activation`` layer; else the model's output.
    """
    if _has_layer(model, logits_layer):
        return model.get_layer(logits_layer).output
    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and _is_softmax(last):
        return last.input
    return model.outputs[0]


def _is_softmax(layer: keras.layers.Activation) -> bool:
    """Whether an Activation layer applies the softmax."""
    activation = layer.get_config().get("activation")
    return activation == "softmax" or getattr(activation, "__name__", "") == "softmax"


def build_gradcam_model(
    model: keras.Model, layer_name: str | None = None, logits_layer: str = "logits"
) -> keras.Model:
    """Wires a model from the input to a conv layer's activations, logits and features.

    The new model shares the original's layers (and so its weights); the original
    model's layers, activations and configuration are left untouched.

    Args:
        model: A Keras functional CNN.
        layer_name: The convolutional layer to explain; None for the last layer
            with a 4-D output (:func:`find_last_conv_layer`).
        logits_layer: Name of the pre-softmax layer. When the model has no such
            layer, the input of a final softmax ``Activation`` is used, else the
            model's output.

    Returns:
        A model mapping the original inputs to ``[activations (B, h, w, K),
        logits (B, C), features (B, F)]``. ``features`` is the output of a layer
        called ``avg_pool`` if there is one, else the global average of the
        activations (F = K).

    Raises:
        ValueError: ``layer_name`` is not a layer of the model or its output is
            not 4-D.
    """
    layer_name = layer_name or find_last_conv_layer(model)
    if not _has_layer(model, layer_name):
        raise ValueError(f"model {model.name!r} has no layer named {layer_name!r}")
    activations = model.get_layer(layer_name).output
    if len(activations.shape) != 4:
        raise ValueError(
            f"layer {layer_name!r} has a {len(activations.shape)}-D output, expected 4-D"
        )
    logits = _logits_tensor(model, logits_layer)
    if _has_layer(model, POOL_LAYER):
        features = model.get_layer(POOL_LAYER).output
    else:
        features = keras.layers.GlobalAveragePooling2D(name="gradcam_features")(activations)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [activations, logits, features], name=f"{model.name}_gradcam")


def split_at_layer(
    model: keras.Model, layer_name: str | None = None, logits_layer: str = "logits"
) -> tuple[keras.Model, keras.Model]:
    """Cuts a CNN at the explained layer into a backbone and a head, sharing its weights.

    The gradient of a class score with respect to the layer's activations
    involves only the layers above it, so :func:`gradcam_step` runs the backbone
    outside the gradient tape and records only the head: the same values as one
    pass through :func:`build_gradcam_model`'s model, with a backward graph of
    the head alone (shorter to trace, cheaper to run eagerly).

    Args:
        model: A Keras functional CNN (left unchanged).
        layer_name: The convolutional layer to explain; None for the last layer
            with a 4-D output.
        logits_layer: Name of the pre-softmax layer (see :func:`build_gradcam_model`).

    Returns:
        ``(backbone, head)``: the backbone maps the model's inputs to the
        (B, h, w, K) activations; the head maps those to ``[logits (B, C),
        features (B, F)]``.

    Raises:
        ValueError: No such 4-D layer, or the logits depend on more than that
            layer's activations (a connection bypasses it).
    """
    grad_model = build_gradcam_model(model, layer_name, logits_layer)
    activations, logits, features = grad_model.outputs
    backbone = keras.Model(grad_model.inputs, activations, name=f"{model.name}_backbone")
    try:
        head = keras.Model(activations, [logits, features], name=f"{model.name}_head")
    except ValueError as err:
        raise ValueError(
            f"layer {layer_name!r} does not separate the input of {model.name!r} from its "
            f"logits: {err}"
        ) from err
    return backbone, head


def cam_from_gradients(
    activations: Any,
    grads: Any,
    method: str = "gradcam",
    size: tuple[int, int] | None = None,
) -> tf.Tensor:
    """Turns activations and the gradients of a class score into normalised maps.

    Grad-CAM weights each channel by the spatial mean of its gradient.
    Grad-CAM++ uses the closed form of Chattopadhay et al. (2018) for an
    exponential of the score, whose higher derivatives are powers of the first:
    ``alpha = g**2 / (2 g**2 + sum(A) g**3)`` and ``w = sum(alpha * relu(g))``.
    Either way the map is the ReLU of the weighted channel sum, resized
    (bilinear) and divided by its maximum; an all-zero map stays zero.

    Works eagerly and inside ``tf.function``.

    Args:
        activations: (N, h, w, K) activations of the explained layer.
        grads: (N, h, w, K) gradients of the class score with respect to them.
        method: ``"gradcam"`` or ``"gradcam++"``.
        size: (H, W) output size, or None to keep (h, w).

    Returns:
        (N, H, W) float32 maps in [0, 1], each with maximum 1 unless all zero.

    Raises:
        ValueError: Unknown ``method`` or inputs that are not 4-D.
    """
    _check_method(method)
    acts = tf.cast(tf.convert_to_tensor(activations), tf.float32)
    grads = tf.cast(tf.convert_to_tensor(grads), tf.float32)
    if acts.shape.rank != 4 or grads.shape.rank != 4:
        raise ValueError(f"expected 4-D activations and gradients, got {acts.shape}, {grads.shape}")
    weights = _gradcam_weights(grads) if method == "gradcam" else _gradcampp_weights(acts, grads)
    cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", acts, weights))
    if size is not None:
        cam = tf.image.resize(cam[..., tf.newaxis], size, method="bilinear")[..., 0]
    return _normalise(cam)


def _check_method(method: str) -> None:
    """Raises ValueError for an unknown map method."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {METHODS}")


def _gradcam_weights(grads: tf.Tensor) -> tf.Tensor:
    """(N, K) Grad-CAM channel weights: spatial means of (N, h, w, K) gradients."""
    return tf.reduce_mean(grads, axis=(1, 2))


def _gradcampp_weights(acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """(N, K) Grad-CAM++ channel weights from (N, h, w, K) activations and gradients."""
    g2 = tf.square(grads)
    g3 = g2 * grads
    sum_acts = tf.reduce_sum(acts, axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + sum_acts * g3
    safe = tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
    alpha = tf.where(denominator != 0.0, g2 / safe, tf.zeros_like(g2))
    return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))


def _normalise(cam: tf.Tensor) -> tf.Tensor:
    """Divides each (N, H, W) map by its maximum; all-zero maps stay zero."""
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    scaled = cam / tf.where(peak > 0.0, peak, tf.ones_like(peak))
    return tf.clip_by_value(scaled, 0.0, 1.0)


def gradcam_step(
    backbone: keras.Model,
    head: keras.Model,
    images: tf.Tensor,
    targets: tf.Tensor,
    method: str = "gradcam",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """One forward pass and the head's backward pass: predictions and maps for a batch.

    Suitable for wrapping in ``tf.function`` (``method`` is a Python constant).

    Args:
        backbone: The model's part up to the explained layer (:func:`split_at_layer`).
        head: Its part from that layer to the logits and features.
        images: (N, H, W, ch) float32 model input.
        targets: (N,) int32 class indices; a negative entry means the image's
            predicted class (argmax of its logits, from this same pass).
        method: ``"gradcam"`` or ``"gradcam++"``.

    Returns:
        ``(cams, logits, features, targets)``: (N, H, W) float32 maps in [0, 1],
        (N, C) logits, (N, F) features and the (N,) int32 classes explained.
    """
    _check_method(method)
    activations = backbone(images, training=False)
    with tf.GradientTape() as tape:
        tape.watch(activations)
        logits, features = head(activations, training=False)
        logits = tf.cast(logits, tf.float32)
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
        targets = tf.where(targets < 0, predicted, tf.cast(targets, tf.int32))
        scores = tf.gather(logits, targets, axis=1, batch_dims=1)
    grads = tape.gradient(scores, activations)
    cams = cam_from_gradients(activations, grads, method, size=tf.shape(images)[1:3])
    return cams, logits, features, targets
