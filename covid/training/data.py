"""Dataset discovery, duplicate-aware splitting and the ``tf.data`` input pipeline.

Near-duplicate images (the same film re-cropped or re-contrasted, consecutive
studies) are grouped by a perceptual hash so that no group straddles the train,
validation and test splits.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covid.inputs.decode import read_image
from covid.inputs.preprocess import to_model_input

CLASS_NAMES: tuple[str, ...] = ("COVID", "Normal")
"""Class order of the model's outputs."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
HASH_SIZE = 16
"""pHash side: a 16 x 16 DCT gives 256-bit hashes (64 bits chain unrelated films)."""
NEAR_DUPLICATE_BITS = 40
"""Largest Hamming distance between 256-bit perceptual hashes of near-duplicates.

Measured on the shared database: 444 images fall in groups of 2 to 5, no group mixes
classes, and no chaining of unrelated films; with 64-bit hashes a threshold of 6
bits chained 4,444 different films into one group."""


@dataclass(frozen=True)
class Dataset:
    """Labelled image files.

    Attributes:
        paths: N image paths.
        labels: (N,) int array of indices into ``CLASS_NAMES``.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray

    def subset(self, index: np.ndarray) -> Dataset:
        """Returns the images at ``index`` (an int array)."""
        return Dataset(tuple(self.paths[i] for i in index), self.labels[index])


def find_dataset(root: str | Path, class_names: tuple[str, ...] = CLASS_NAMES) -> Dataset:
    """Finds the images of a folder-per-class dataset.

    Accepts ``<root>/<class>/*.png|jpg`` and the Kaggle v4 layout
    ``<root>/<class>/images/*.png``. Class folders match case-insensitively.

    Args:
        root: The dataset's folder.
        class_names: The classes to look for, in output order.

    Returns:
        The images, sorted by class then name.

    Raises:
        FileNotFoundError: ``root`` or a class folder is missing, or a class has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        folder = folders.get(name.lower())
        if folder is None:
            raise FileNotFoundError(f"no '{name}' folder in {root}")
        if (folder / "images").is_dir():
            folder = folder / "images"
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"no PNG or JPEG images in {folder}")
        paths.extend(found)
        labels.extend([index] * len(found))
    return Dataset(tuple(paths), np.asarray(labels, dtype=np.int64))


def perceptual_hashes(paths: tuple[Path, ...], workers: int = 4) -> np.ndarray:
    """Computes a 256-bit perceptual hash (DCT pHash) of each image.

    Args:
        paths: N image paths.
        workers: Threads to decode with.

    Returns:
        (N, 4) uint64 array: each row is one image's 256 hash bits.
    """

    def _hash(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            bits = imagehash.phash(image.convert("L"), hash_size=HASH_SIZE).hash.flatten()
        return np.packbits(bits).view(np.uint64)

    with ThreadPoolExecutor(workers) as pool:
        hashes = list(pool.map(_hash, paths))
    return np.stack(hashes) if hashes else np.zeros((0, HASH_SIZE**2 // 64), np.uint64)


def group_near_duplicates(
    hashes: np.ndarray, max_distance: int = NEAR_DUPLICATE_BITS, block: int = 512
) -> np.ndarray:
    """Groups images whose hashes are within ``max_distance`` bits, transitively.

    Args:
        hashes: (N, K) uint64 perceptual hashes (K words of 64 bits each).
        max_distance: Largest Hamming distance that counts as a near-duplicate.
        block: Rows compared at a time (bounds memory).

    Returns:
        (N,) int array of group ids; near-duplicates share an id.
    """
    n = len(hashes)
    rows, cols = [], []
    for start in range(0, n, block):
        xor = hashes[start : start + block, None, :] ^ hashes[None, :, :]
        distance = np.bitwise_count(xor).sum(axis=-1, dtype=np.int32)
        r, c = np.nonzero(distance <= max_distance)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def split_indices(
    labels: np.ndarray,
    groups: np.ndarray,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, np.ndarray]:
    """Makes a stratified split that keeps every group on one side.

    Args:
        labels: (N,) class indices.
        groups: (N,) group ids from :func:`group_near_duplicates`.
        seed: Seed; the same seed gives the same split.
        val_fraction: Approximate share of images for validation.
        test_fraction: Approximate share of images for test.

    Returns:
        ``{"train", "val", "test"}`` mapped to sorted int index arrays.
    """
    n_folds = 20
    folds = np.empty(len(labels), dtype=np.int64)
    # deferred: the page imports this module (through the catalogue) but never splits
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held] = fold
    n_test = round(test_fraction * n_folds)
    n_val = round(val_fraction * n_folds)
    return {
        "test": np.flatnonzero(folds < n_test),
        "val": np.flatnonzero((folds >= n_test) & (folds < n_test + n_val)),
        "train": np.flatnonzero(folds >= n_test + n_val),
    }


def make_split(
    dataset: Dataset, seed: int = 0, cache_dir: Path | None = None
) -> dict[str, np.ndarray]:
    """Hashes, groups and splits a dataset, caching the hashes.

    Args:
        dataset: The images.
        seed: The split's seed.
        cache_dir: Where to keep the hashes between runs (None: no cache).

    Returns:
        ``{"train", "val", "test"}`` index arrays into ``dataset``.
    """
    hashes = None
    cache = cache_dir / "phash.json" if cache_dir else None
    if cache and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("paths") == [str(p) for p in dataset.paths]:
            hashes = np.asarray(stored["hashes"], dtype=np.uint64)
    if hashes is None:
        hashes = perceptual_hashes(dataset.paths)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            payload = {"paths": [str(p) for p in dataset.paths], "hashes": hashes.tolist()}
            cache.write_text(json.dumps(payload))
    groups = group_near_duplicates(hashes)
    return split_indices(dataset.labels, groups, seed=seed)


def load_images(paths: tuple[Path, ...], size: int, workers: int = 4) -> np.ndarray:
    """Decodes and preprocesses images exactly as serving does.

    Args:
        paths: N image paths.
        size: The model's input side.
        workers: Threads to decode with.

    Returns:
        (N, size, size, 1) uint8 array.
    """

    def _load(path: Path) -> np.ndarray:
        return to_model_input(read_image(path).pixels, size)

    with ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(_load, paths))
    return np.stack(images) if images else np.zeros((0, size, size, 1), np.uint8)


def make_tf_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    image_size: int,
    training: bool,
    seed: int = 0,
    n_classes: int = len(CLASS_NAMES),
):
    """Builds the ``tf.data`` pipeline.

    Training batches are class-balanced (equal sampling of each class), shuffled,
    repeated forever and augmented; evaluation batches keep the order and the
    pixels exactly as given.

    Args:
        images: (N, S, S, 1) uint8 images from :func:`load_images`.
        labels: (N,) class indices.
        batch_size: Images per batch.
        image_size: Side to resize to (progressive resizing); S keeps them as is.
        training: Whether to balance, shuffle, repeat and augment.
        seed: Seed for sampling and augmentation.
        n_classes: Number of classes (one-hot depth).

    Returns:
        A ``tf.data.Dataset`` of ((B, image_size, image_size, 1) float32 in
        [0, 255], (B, n_classes) float32 one-hot) pairs.
    """
    import tensorflow as tf

    from covid.training.augment import augment_batch

    def _prepare(x, y):
        x = tf.cast(x, tf.float32)
        if x.shape[1] != image_size:
            x = tf.image.resize(x, (image_size, image_size), antialias=True)
        return x, tf.one_hot(y, n_classes)

    if not training:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        return ds.batch(batch_size).map(_prepare).prefetch(tf.data.AUTOTUNE)
    per_class = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        ds_c = tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))
        per_class.append(ds_c.shuffle(len(idx), seed=seed + c).repeat())
    ds = tf.data.Dataset.sample_from_datasets(per_class, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True).map(_prepare)
    ds = ds.map(lambda x, y: (augment_batch(x, seed), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
