import numpy as np
import tensorflow as tf

from covid.training.augment import augment_stack, describe


def test_masks_move_with_their_film():
    rng = np.random.default_rng(0)
    film = np.zeros((8, 64, 64, 1), "float32")
    film[:, 20:44, 10:30] = 200.0
    film += rng.uniform(0, 20, film.shape).astype("float32")
    mask = (film > 100).astype("float32") * 255.0
    films, masks = augment_stack(tf.constant(np.concatenate([film, mask], -1)), seed=3)
    assert films.shape == (8, 64, 64, 1) and masks.shape == (8, 64, 64, 1)
    moved = masks.numpy()[..., 0] > 127
    assert (moved != (mask[..., 0] > 127)).any()  # something moved
    for i in range(8):  # the bright block is where the mask went
        inside = films.numpy()[i, ..., 0][moved[i]].mean()
        outside = films.numpy()[i, ..., 0][~moved[i]].mean()
        assert inside > outside + 80


def test_description_comes_from_the_constants():
    text = describe()
    assert "10.8 deg" in text and "no flips" in text and "on every film" in text
    assert "gamma" in text and "blur" in text and "noise" in text


def test_every_film_is_recompressed(monkeypatch):
    """The JPEG step's output is what every film of a batch becomes (none keeps its PNG pixels)."""
    calls = []

    def marked(pixels, low, high):
        calls.append((low, high))
        return tf.fill(tf.shape(pixels), tf.constant(7, tf.uint8))

    monkeypatch.setattr(tf.image, "random_jpeg_quality", marked)
    stack = tf.constant(np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 2)), tf.float32)
    films, _ = augment_stack(stack, seed=5)
    assert calls and (films.numpy() == 7).all()


def test_photometric_changes_are_strong_on_every_film():
    flat = np.full((16, 48, 48, 2), 128.0, "float32")
    flat[..., 1] = 255.0
    films, _ = augment_stack(tf.constant(flat), seed=9)
    centre = films.numpy()[:, 16:32, 16:32, 0]
    means = centre.mean(axis=(1, 2))
    assert means.max() - means.min() > 25  # exposure, contrast and gamma differ per film
    assert (centre.std(axis=(1, 2)) > 0).mean() > 0.5  # noise on most films


def test_augmentation_never_flips_left_right():
    film = np.zeros((1, 64, 64, 1), np.float32)
    film[:, :, 40:, :] = 220.0  # bright right side, like a marker on one side
    stack = np.repeat(np.concatenate([film, film], -1), 64, axis=0)
    films, masks = augment_stack(tf.constant(stack), seed=3)
    for out in (films.numpy(), masks.numpy()):
        left, right = out[:, :, :24].mean(axis=(1, 2, 3)), out[:, :, 40:].mean(axis=(1, 2, 3))
        assert np.all(right > left)
