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
    map_loss_kind,
    peak_inside_cells,
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


def _lungs_in_the_middle():
    """(1, 4, 4, 2) cell shares: the middle four cells are lung, no infection."""
    shares = np.zeros((1, 4, 4, 2), "float32")
    shares[0, 1:3, 1:3, 0] = 1.0
    return shares


def test_the_peak_term_follows_the_peak_not_the_mass():
    """Most of the mass inside but the peak outside: the mass term barely sees it."""
    shares = _lungs_in_the_middle()
    maps = np.zeros((1, 4, 4, 3), "float32")
    maps[0, 1:3, 1:3, :] = 4.0  # 16 units inside
    maps[0, 0, 0, :] = 5.0  # 5 outside, but the highest cell
    mass_only = float(OutsideLungsLoss(0.0)(shares, maps))
    with_peak = float(OutsideLungsLoss(0.0, peak_weight=1.0)(shares, maps))
    assert mass_only == pytest.approx(5 / 21, abs=1e-4)
    assert with_peak - mass_only > 0.6  # the soft-max sits on the peak, outside
    maps[0, 0, 0, :] = 3.0  # the peak moves inside, the mass outside hardly changes
    peak_inside = float(OutsideLungsLoss(0.0, peak_weight=1.0)(shares, maps))
    assert peak_inside - float(OutsideLungsLoss(0.0)(shares, maps)) < 0.2


def test_neither_scale_nor_offset_changes_the_peak_term():
    shares = _lungs_in_the_middle()
    maps = np.random.default_rng(3).normal(size=(1, 4, 4, 3)).astype("float32")
    maps[0, 0, 0, :] = 4.0  # the peak outside the lungs

    def peak_term(m):
        return float(OutsideLungsLoss(0.0, 1.0)(shares, m) - OutsideLungsLoss(0.0)(shares, m))

    start = peak_term(maps)
    assert start > 0.9
    for changed in (maps * 10.0, maps * 0.1, maps - 10.0, maps + 10.0):
        assert peak_term(changed) == pytest.approx(start, abs=1e-3)


def test_the_peak_term_moves_the_peak_into_the_lungs():
    shares = _lungs_in_the_middle()
    start = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype("float32")
    start[0, 0, 0, :] = 3.0
    maps = tf.Variable(start)
    loss = OutsideLungsLoss(0.0, peak_weight=1.0)
    for _ in range(300):
        with tf.GradientTape() as tape:
            value = loss(shares, maps)
        maps.assign_sub(0.5 * tape.gradient(value, maps))
    moved = maps.numpy()
    for target in range(3):
        assert peak_inside_cells(moved, shares, np.array([target]))[0]
    assert not peak_inside_cells(start, shares, np.array([0]))[0]


def test_peak_inside_cells_needs_a_positive_peak_in_a_mostly_lung_cell():
    shares = _lungs_in_the_middle()
    shares[0, 1, 1, 0] = 0.4  # this lung cell is mostly not lung
    cams = np.full((3, 4, 4, 3), -1.0)
    cams[0, 2, 2, 0] = 1.0  # peak in a lung cell
    cams[1, 1, 1, 0] = 1.0  # peak in the 40% cell
    shares = shares.repeat(3, axis=0)
    # film 2: nothing positive at all
    np.testing.assert_array_equal(peak_inside_cells(cams, shares, np.array([0, 0, 0])),
                                  [True, False, False])


def test_each_epoch_names_its_map_loss():
    assert map_loss_kind(0.0) == "absolute"
    assert map_loss_kind(0.5) == "absolute + peak x0.5"


def test_the_peak_term_traces_with_an_unknown_grid():
    """Run v3 crashed at its 224-px stage: the map's grid size is unknown in the graph."""
    loss = OutsideLungsLoss(0.0, peak_weight=1.0)
    spec = tf.TensorSpec((None, None, None, 3), tf.float32)
    traced = tf.function(lambda t, m: loss(t, m), input_signature=[
        tf.TensorSpec((None, None, None, 2), tf.float32), spec])
    shares = _lungs_in_the_middle()
    maps = np.random.default_rng(1).normal(size=(1, 4, 4, 3)).astype("float32")
    assert float(traced(shares, maps)) == pytest.approx(float(loss(shares, maps)), abs=1e-6)
