"""The training run's films in memory: catalogue, split, model inputs and their masks.

:func:`prepare_data` lists the films (:mod:`covid.training.catalogue`), splits
them, makes every model input through the serving path
(:func:`covid.training.lung_data.focused_dataset`) and stacks each with its lung
and infection masks in the input's frame (:mod:`covid.training.guided`).
:func:`balanced_batches` then draws class-balanced batches from the stacks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from covid.training.catalogue import CLASS_NAMES, Catalogue, find_films, make_split, split_record
from covid.training.guided import film_masks, training_stack
from covid.training.lung_data import focused_dataset

LOG = logging.getLogger("covid.training.inputs")


@dataclass(frozen=True)
class TrainingData:
    """Everything a run trains and validates on.

    Attributes:
        train: The training films.
        val: The validation films scored after every epoch (a stratified subset).
        train_stack: (N, S, S, 3) uint8 training inputs with lung and infection masks.
        val_stack: (M, S, S, 3) uint8, the same for ``val``.
        split_record: The whole split (every side), as written beside the model.
        mask_counts: How many training films have radiologists' lung and infection masks.
        lung_model_sha256: The lung segmenter used to focus the inputs.
        description: The data in plain words, for the metadata.
    """

    train: Catalogue
    val: Catalogue
    train_stack: np.ndarray
    val_stack: np.ndarray
    split_record: dict
    mask_counts: dict
    lung_model_sha256: str
    description: str


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` items, equally many per class where possible."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = limit // len(classes)
    keep = [rng.choice(np.flatnonzero(labels == c),
                       size=min(per_class, int((labels == c).sum())), replace=False)
            for c in classes]
    return np.sort(np.concatenate(keep))


def _stack(films: Catalogue, size: int, mode: str, segmenter, mask_root, cache_dir):
    focused = focused_dataset(films.paths, size, mode, segmenter, cache_dir=cache_dir)
    masks = film_masks(films.paths, films.labels, focused, mask_root, cache_dir)
    counts = {"radiologists_lungs": int(masks.radiologist.sum()),
              "infection": int(sum(m is not None for m in masks.infection)),
              "no_lungs_found": int((~focused.ok).sum()), "films": len(films.names)}
    return training_stack(focused, masks), counts


def prepare_data(args, size: int) -> TrainingData:
    """Lists, splits, focuses and stacks the films for a run.

    Args:
        args: The trainer's options (``data``, ``base_split``, ``focus``,
            ``lung_model``, ``cache_dir``, ``val_limit``, ``max_images``, ``seed``).
        size: The final input side (inputs are made at this size and shrunk per stage).

    Returns:
        The run's data.
    """
    from covid.model.lungs import LungSegmenter

    films = find_films(args.data)
    base = json.loads(args.base_split.read_text()) if args.base_split.is_file() else None
    split = make_split(films, base, seed=args.seed, cache_dir=args.cache_dir)
    record = split_record(films, split)
    train, val = films.subset(split["train"]), films.subset(split["val"])
    if args.max_images:
        train = train.subset(stratified_subset(train.labels, args.max_images * 3, args.seed))
    val = val.subset(stratified_subset(val.labels, args.val_limit, args.seed))
    LOG.info("train %s, val %s (per class)", np.bincount(train.labels), np.bincount(val.labels))
    segmenter = LungSegmenter.from_file(args.lung_model)
    mask_root = args.data / "covid-qu-ex-masks"
    train_stack, counts = _stack(train, size, args.focus, segmenter, mask_root, args.cache_dir)
    val_stack, _ = _stack(val, size, args.focus, segmenter, mask_root, args.cache_dir)
    LOG.info("training masks: %s", counts)
    totals = np.bincount(films.labels, minlength=len(CLASS_NAMES))
    description = (f"{len(films.names)} films: " + ", ".join(
        f"{int(n)} {c}" for c, n in zip(CLASS_NAMES, totals, strict=True))
        + " (COVID-19 Radiography Database, its Viral Pneumonia films, COVID-QU-Ex Non-COVID)")
    return TrainingData(train, val, train_stack, val_stack, record, counts,
                        segmenter.metadata.sha256, description)


def balanced_batches(stack: np.ndarray, labels: np.ndarray, batch_size: int, steps: int,
                     seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Class-balanced random batches: every film's class drawn uniformly, then a film of it.

    Args:
        stack: (N, S, S, k) uint8 inputs and masks.
        labels: (N,) class indices.
        batch_size: Films per batch.
        steps: Batches to yield.
        seed: Sampling seed.

    Yields:
        ``(stack[idx], labels[idx])`` for ``steps`` batches.
    """
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(steps):
        classes = rng.integers(0, len(by_class), size=batch_size)
        idx = np.sort([rng.choice(by_class[c]) for c in classes])
        yield stack[idx], labels[idx]
