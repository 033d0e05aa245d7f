import keras
import numpy as np
import pytest
import tensorflow as tf

from covid.explain.gradcam import gradcam_step, split_at_layer
from covid.training.guided import (
    ClassActivationMaps,
    OutsideLungsLoss,
    cell_shares,
    guided_model,
    share_inside,
)


def _gap_dense_model(n_classes=3):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="feat")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    logits = keras.layers.Dense(n_classes, name="logits")(x)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    return keras.Model(inputs, probs)


def test_class_activation_map_is_the_grad_cam_of_the_logit():
    model = _gap_dense_model()
    trainer = guided_model(model, "feat")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    cams = trainer.predict(x, verbose=0)["cams"]
    backbone, head = split_at_layer(model, "feat", "logits")
    for target in range(3):
        grad_maps, *_ = gradcam_step(backbone, head, tf.constant(x), tf.constant([target] * 2))
        mine = tf.image.resize(np.maximum(cams[..., target:target + 1], 0), (32, 32))[..., 0]
        peak = tf.reduce_max(mine, axis=(1, 2), keepdims=True)
        mine = np.where(peak > 0, mine / np.maximum(peak, 1e-12), 0)
        np.testing.assert_allclose(mine, grad_maps.numpy(), atol=1e-4)


def test_guided_model_shares_the_classifier_weights():
    model = _gap_dense_model()
    trainer = guided_model(model, "feat")
    assert {id(v) for v in trainer.trainable_variables} == {id(v) for v in
                                                             model.trainable_variables}
    assert isinstance(trainer.get_layer("cams"), ClassActivationMaps)


def test_outside_lungs_loss_counts_the_share_outside():
    maps = np.zeros((2, 2, 2, 3), "float32")
    maps[0, 0, 0, :] = 1.0  # all energy in one cell
    maps[1, :, :, :] = -1.0  # negative everywhere: no way out of the loss
    target = np.zeros((2, 2, 2, 2), "float32")
    target[0, 0, 0, 0] = 1.0  # that cell is lung: nothing outside
    target[1, 0, :, 0] = 1.0  # half of film 1 is lung
    loss = OutsideLungsLoss(infection_weight=0.5)
    per_film = keras.ops.convert_to_numpy(loss.call(target, maps))
    np.testing.assert_allclose(per_film, [0.0, 0.5], atol=1e-5)
    target[0, 0, 0, 0] = 0.25  # a quarter of the cell is lung
    target[0, 1, 1, 1] = 1.0  # an infection elsewhere: the COVID map misses it
    per_film = keras.ops.convert_to_numpy(loss.call(target, maps))
    np.testing.assert_allclose(per_film[0], 0.75 + 0.5 * 1.0, atol=1e-5)


def test_an_offset_below_zero_does_not_escape_the_loss():
    """Run v3's maps went negative everywhere, which a share of relu(map) rewards."""
    lungs = np.zeros((1, 4, 4, 2), "float32")
    lungs[0, 1:3, 1:3, 0] = 1.0
    focused = lungs[..., :1].repeat(3, axis=-1) * 5.0  # evidence in the lungs only
    loss = OutsideLungsLoss(0.0)
    in_lungs = float(loss(lungs, focused))
    for offset in (-1.0, -10.0, -100.0):
        assert float(loss(lungs, focused + offset)) > in_lungs + 0.1


def test_loss_pushes_evidence_into_the_lungs():
    maps = tf.Variable(np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype("float32"))
    lungs = np.zeros((1, 4, 4, 2), "float32")
    lungs[0, 1:3, 1:3, 0] = 1.0
    loss = OutsideLungsLoss(0.0)
    before = float(loss(lungs, maps))
    for _ in range(200):
        with tf.GradientTape() as tape:
            value = loss(lungs, maps)
        maps.assign_sub(0.5 * tape.gradient(value, maps))
    assert float(loss(lungs, maps)) < before * 2 / 3


def test_cell_shares_and_share_inside():
    masks = np.zeros((1, 8, 8, 2), np.uint8)
    masks[0, :4, :4, 0] = 255
    shares = cell_shares(masks, 2)
    assert shares.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(shares[0, ..., 0], [[1, 0], [0, 0]])
    cams = np.zeros((1, 2, 2, 3))
    cams[0, 0, 0, 1], cams[0, 1, 1, 1] = 3.0, 1.0
    assert share_inside(cams, shares, np.array([1]))[0] == pytest.approx(0.75)
    assert share_inside(cams, shares, np.array([0]))[0] == 0.0
