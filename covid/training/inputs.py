"""The training run's films in memory: catalogue, split, model inputs and their masks.

:func:`prepare_data` lists the films (:mod:`covid.training.catalogue`), splits
them, makes every model input through the serving path
(:func:`covid.training.lung_data.focused_dataset`) and stacks each with its lung
and infection masks in the input's frame (:mod:`covid.training.guided`).
:func:`sampling_weights` says how often each training film is drawn, and
:func:`balanced_batches` draws batches from the stacks with those weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from covid.model.classes import CLASS_NAMES, NORMAL, index_of
from covid.training.catalogue import (
    QUEX_FOLDER,
    Catalogue,
    find_films,
    make_split,
    split_record,
)
from covid.training.guided import film_masks, training_stack
from covid.training.lung_data import focused_dataset

LOG = logging.getLogger("covid.training.inputs")
NORMAL_INDEX = index_of(CLASS_NAMES, NORMAL)
AGES = ("adult", "child")
MIXED_AGE = "mixed"
ADULT_SHARE = 2 / 3
"""Share of the draws that go to the adults' strata; the children's take the rest."""


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


def sampling_weights(films: Catalogue, adult_share: float = ADULT_SHARE) -> np.ndarray:
    """How often each training film is drawn: strata of (age, class) that leave no age prior.

    v3's class-balanced batches made a child's film mostly a pneumonia (half the
    training pneumonias were children's, against one normal in seven), and it
    learnt age as a prior: most children's normals were labelled pneumonia. Here
    every age group gives Normal the same share of its draws, ``1 / len(CLASS_NAMES)``
    (a third, as if every class were present), so that P(Normal | child) =
    P(Normal | adult) and the admit-or-home prior carries no age. The rest of an
    age group's draws go equally to the pathological classes it has: adults a
    third each to COVID-19 and other pneumonia, children (who have no COVID-19
    films) two thirds to pneumonia. That P(COVID | child) is zero is a fact of
    the data, not of sampling; it cannot send a sick child home.

    Films of mixed age (COVID-QU-Ex's non-COVID pneumonias, adults and children
    not told apart) are pneumonias whatever their age, so they serve the
    pneumonia stratum of both age groups. Within a stratum every film is drawn
    equally often (COVID-QU-Ex's two folders are one database, so sources are
    not balanced against each other).

    Args:
        films: The training films, with ``labels``, ``ages`` and ``sources``.
        adult_share: Share of the draws for the adults' strata (the children's
            take the rest; an age group without films gives its share away).

    Returns:
        (N,) float64 probabilities summing to 1.
    """
    ages = np.asarray(films.ages)
    weights = np.zeros(len(films.names))
    present = [a for a in AGES if (ages == a).any()]
    for age in present:
        share = (adult_share if age == "adult" else 1 - adult_share) if len(present) > 1 else 1.0
        own = (ages == age) | ((ages == MIXED_AGE) & (films.labels != NORMAL_INDEX))
        classes = np.unique(films.labels[own])
        sick = [c for c in classes if c != NORMAL_INDEX]
        has_normal = NORMAL_INDEX in classes
        normal = 1 / len(CLASS_NAMES) if has_normal and sick else float(has_normal)
        for c in classes:
            stratum = own & (films.labels == c)
            per_class = normal if c == NORMAL_INDEX else (1 - normal) / len(sick)
            weights[stratum] += share * per_class / stratum.sum()
    return weights / weights.sum()


def _stack(films: Catalogue, size: int, mode: str, segmenter, mask_root, cache_dir,
           contrast: str = "none"):
    focused = focused_dataset(films.paths, size, mode, segmenter, cache_dir=cache_dir,
                              contrast=contrast)
    masks = film_masks(films.paths, films.labels, focused, mask_root, cache_dir)
    counts = {"radiologists_lungs": int(masks.radiologist.sum()),
              "infection": int(sum(m is not None for m in masks.infection)),
              "no_lungs_found": int((~focused.ok).sum()), "films": len(films.names)}
    return training_stack(focused, masks), counts


def prepare_data(args, size: int) -> TrainingData:
    """Lists, splits, focuses and stacks the films for a run.

    Args:
        args: The trainer's options (``data``, ``base_split``, ``focus``, ``contrast``,
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
    mask_root = args.data / QUEX_FOLDER
    stack_args = (size, args.focus, segmenter, mask_root, args.cache_dir, args.contrast)
    train_stack, counts = _stack(train, *stack_args)
    val_stack, _ = _stack(val, *stack_args)
    LOG.info("training masks: %s", counts)
    totals = np.bincount(films.labels, minlength=len(CLASS_NAMES))
    description = (f"{len(films.names)} films: " + ", ".join(
        f"{int(n)} {c}" for c, n in zip(CLASS_NAMES, totals, strict=True))
        + " (COVID-19 Radiography Database, its Viral Pneumonia films, COVID-QU-Ex Non-COVID "
          "with its Test subset's)")
    return TrainingData(train, val, train_stack, val_stack, record, counts,
                        segmenter.metadata.sha256, description)


def balanced_batches(stack: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                     batch_size: int, steps: int,
                     seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Random batches, each film drawn with its weight (:func:`sampling_weights`).

    Args:
        stack: (N, S, S, k) uint8 inputs and masks.
        labels: (N,) class indices.
        weights: (N,) probabilities of drawing each film.
        batch_size: Films per batch.
        steps: Batches to yield.
        seed: Sampling seed.

    Yields:
        ``(stack[idx], labels[idx])`` for ``steps`` batches.
    """
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = np.sort(rng.choice(len(labels), size=batch_size, p=weights))
        yield stack[idx], labels[idx]
