import json

import numpy as np
import pytest
from PIL import Image

from covid.inputs.decode import decode_image
from covid.model.focus import focus_film
from covid.training.augment import augment_batch
from covid.training.data import (
    CLASS_NAMES,
    find_dataset,
    group_near_duplicates,
    load_images,
    make_split,
    make_tf_dataset,
    perceptual_hashes,
    split_indices,
)


def _film(seed: int, size: int = 96) -> np.ndarray:
    """A synthetic 'film': smooth random blobs, distinct per seed."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 6)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _write(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_find_dataset_flat_and_kaggle_layouts(tmp_path):
    for i in range(3):
        _write(tmp_path / "flat" / "COVID" / f"c{i}.png", _film(i))
        _write(tmp_path / "flat" / "normal" / f"n{i}.jpg", _film(10 + i))
        _write(tmp_path / "kaggle" / "COVID" / "images" / f"c{i}.png", _film(i))
        _write(tmp_path / "kaggle" / "Normal" / "images" / f"n{i}.png", _film(10 + i))
    (tmp_path / "kaggle" / "COVID" / "masks").mkdir()
    for layout in ("flat", "kaggle"):
        ds = find_dataset(tmp_path / layout)
        assert len(ds.paths) == 6
        assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
        assert all(p.parent.name in ("COVID", "normal", "Normal", "images") for p in ds.paths)


def test_find_dataset_missing_class_is_clear(tmp_path):
    _write(tmp_path / "COVID" / "a.png", _film(0))
    with pytest.raises(FileNotFoundError, match="Normal"):
        find_dataset(tmp_path)


def test_near_duplicates_grouped_and_distinct_films_not(tmp_path):
    base = _film(1, 224)
    brighter = (base.astype(float) * 0.85 + 20).astype(np.uint8)  # re-contrasted copy
    cropped = np.asarray(Image.fromarray(base[2:-2, 2:-2]).resize((224, 224)))
    paths = [
        _write(tmp_path / "a.png", base),
        _write(tmp_path / "b.png", brighter),
        _write(tmp_path / "c.png", cropped),
    ] + [_write(tmp_path / f"other{i}.png", _film(100 + i, 224)) for i in range(8)]
    groups = group_near_duplicates(perceptual_hashes(tuple(paths)))
    assert groups[0] == groups[1] == groups[2]
    assert len(set(groups[3:])) == 8
    assert groups[0] not in set(groups[3:])


def test_split_keeps_groups_whole_is_stratified_and_reproducible():
    rng = np.random.default_rng(0)
    groups = np.arange(1200) // 3  # triples of near-duplicates
    labels = np.repeat(rng.integers(0, 4, 400) != 0, 3).astype(int)  # ~25% COVID, one class a group
    split = split_indices(labels, groups, seed=7)
    again = split_indices(labels, groups, seed=7)
    other = split_indices(labels, groups, seed=8)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not all(np.array_equal(split[k], other[k]) for k in split)
    sides = {k: set(groups[v]) for k, v in split.items()}
    assert not sides["train"] & sides["val"]
    assert not sides["train"] & sides["test"]
    assert not sides["val"] & sides["test"]
    assert sum(len(v) for v in split.values()) == len(labels)
    for side, index in split.items():
        share = len(index) / len(labels)
        assert abs(share - {"train": 0.7, "val": 0.15, "test": 0.15}[side]) < 0.05
        assert abs(labels[index].mean() - labels.mean()) < 0.06


def test_real_split_never_straddles_a_near_duplicate_group(shared_data_dir, tmp_path):
    ds = find_dataset(shared_data_dir)
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(ds.labels == c), 600, replace=False) for c in (0, 1)
    ]))
    sub = ds.subset(keep)
    split = make_split(sub, seed=0, cache_dir=tmp_path)
    groups = group_near_duplicates(perceptual_hashes(sub.paths))
    side_of = np.empty(len(sub.paths), dtype=object)
    for side, index in split.items():
        side_of[index] = side
    for g in np.unique(groups):
        assert len(set(side_of[groups == g])) == 1
    cached = json.loads((tmp_path / "phash.json").read_text())
    assert len(cached["hashes"]) == len(sub.paths)


def test_golden_image_gives_identical_input_in_training_and_serving(tmp_path):
    odd_size = np.asarray(Image.fromarray(_film(3, 300)).resize((300, 260)))
    for pixels in (_film(5, 224), odd_size):
        path = _write(tmp_path / "golden.png", pixels)
        train_images = load_images((path,), 224)
        ds = make_tf_dataset(train_images, np.array([0]), 1, 224, training=False)
        train_x = next(iter(ds))[0].numpy()
        served = focus_film(decode_image(path.read_bytes(), "golden.png").pixels, None, 224, "full")
        serve_x = served.x[None].astype(np.float32)  # as the pipeline hands it to the network
        assert train_x.shape == serve_x.shape == (1, 224, 224, 1)
        assert train_x.dtype == serve_x.dtype
        np.testing.assert_array_equal(train_x, serve_x)


def test_training_batches_are_balanced_and_augmented():
    images = np.repeat(_film(1, 64)[None, :, :, None], 40, axis=0)
    labels = np.array([0] * 4 + [1] * 36)
    ds = make_tf_dataset(images, labels, 32, 48, training=True, seed=1)
    x, y = next(iter(ds))
    assert x.shape == (32, 48, 48, 1)
    assert 8 <= int(y.numpy()[:, 0].sum()) <= 24  # ~half COVID despite 10% prevalence
    assert float(x.numpy().min()) >= 0 and float(x.numpy().max()) <= 255
    assert np.std(x.numpy() - x.numpy()[0:1]) > 1  # augmented: images differ
    assert y.shape == (32, len(CLASS_NAMES))


def test_augmentation_never_flips_left_right():
    image = np.zeros((1, 64, 64, 1), np.float32)
    image[:, :, 40:, :] = 220.0  # bright right side, like a marker on one side
    batch = np.repeat(image, 64, axis=0)
    out = augment_batch(batch, seed=3).numpy()
    left, right = out[:, :, :24].mean(axis=(1, 2, 3)), out[:, :, 40:].mean(axis=(1, 2, 3))
    assert np.all(right > left)
