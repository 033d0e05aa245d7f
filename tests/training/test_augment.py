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
    assert "10.8 deg" in text and "no flips" in text
