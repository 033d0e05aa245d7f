"""What the lung and opacity segmenters' trainers share: one U-Net training loop.

Both trainers (:mod:`covid.training.train_lungs`, :mod:`covid.training.train_opacity`)
load their films and masks, split them by perceptual-hash groups
(:func:`hash_split`), then call :func:`fit_unet`: Adam with warm-up and cosine
decay, binary cross-entropy plus soft Dice, joint random affine and intensity
augmentation of film and mask, a checkpoint and a validation score every epoch
(``--resume`` continues), and the best validation epoch's weights returned as
an uncompiled float32 network ready to save. What differs (the data, the
validation score, the held-out metrics, the metadata) stays in each trainer.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from covid.training.probe_record import probe_record

LOG = logging.getLogger("covid.training.unet_training")

ROTATION_DEG = 12.0
"""Largest rotation of a training pair, either way."""
SCALE = (0.85, 1.15)
"""Range of the pair's zoom."""
SHIFT = 0.08
"""Largest shift of the pair, as a share of the side, on each axis."""
LOG_GAMMA = 0.4
"""Range of the film's log-gamma, either way."""
CONTRAST = (0.75, 1.25)
"""Range of the film's contrast factor."""
BRIGHTNESS = 25.0
"""Largest brightness offset of the film (0-255), either way."""
AUGMENTATION = (f"rotation +-{ROTATION_DEG:g} deg, scale {SCALE[0]:g}-{SCALE[1]:g}, shift "
                f"{SHIFT:.0%}, gamma exp(+-{LOG_GAMMA:g}), contrast {CONTRAST[0]:g}-"
                f"{CONTRAST[1]:g}, brightness +-{BRIGHTNESS:g}")
"""The augmentation, in the recipe's words (from the numbers :func:`augment_pairs` uses)."""


def augment_pairs(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                     np.ndarray]:
    """Random joint affine (rotation, scale, shift) and intensity changes.

    Args:
        x: (B, S, S, 1) uint8 films.
        y: (B, S, S, 1) uint8 masks.
        rng: Random generator.

    Returns:
        (B, S, S, 1) float32 films in [0, 255] and (B, S, S, 1) float32 masks.
    """
    from scipy import ndimage

    size = x.shape[1]
    out_x = np.empty(x.shape, np.float32)
    out_y = np.empty(y.shape, np.float32)
    centre = np.array([size / 2, size / 2])
    for i in range(len(x)):
        angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
        scale = rng.uniform(*SCALE)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / scale
        shift = rng.uniform(-SHIFT, SHIFT, 2) * size
        offset = centre - rot @ (centre + shift)
        film = ndimage.affine_transform(x[i, ..., 0].astype(np.float32), rot, offset, order=1)
        mask = ndimage.affine_transform(y[i, ..., 0].astype(np.float32), rot, offset, order=0)
        gamma = np.exp(rng.uniform(-LOG_GAMMA, LOG_GAMMA))
        film = 255.0 * (film / 255.0) ** gamma
        film = film * rng.uniform(*CONTRAST) + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
        out_x[i, ..., 0] = np.clip(film, 0, 255)
        out_y[i, ..., 0] = mask
    return out_x, out_y


def _batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int) -> Iterator[tuple]:
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start : start + batch]
            yield augment_pairs(x[idx], y[idx], rng)


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy plus (1 - soft Dice), per image, on any Keras backend."""
    import keras

    y_true = keras.ops.cast(y_true, "float32")
    y_pred = keras.ops.cast(y_pred, "float32")
    bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    inter = keras.ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = keras.ops.sum(y_true + y_pred, axis=(1, 2, 3))
    return bce + 1.0 - (2.0 * inter + 1.0) / (total + 1.0)


def training_parser(prog: str, description: str, run: str, epochs: int,
                    data_help: str) -> argparse.ArgumentParser:
    """The options every U-Net trainer takes (a trainer adds its own).

    Args:
        prog: The ``python -m`` command, for the help text.
        description: One line saying what the tool trains.
        run: The default run folder (checkpoints, state, the exported model).
        epochs: The default number of epochs.
        data_help: What ``--data`` is and defaults to.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--data", type=Path, default=None, help=data_help)
    parser.add_argument("--run", type=Path, default=Path(run))
    parser.add_argument("--size", type=int, default=128, help="network input side")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-images", type=int, default=0, help="tiny runs: films kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", help=f"chosen by {prog}")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--ship", type=Path, default=None, help="copy the result here")
    return parser


def subsample(count: int, keep: int, seed: int) -> np.ndarray:
    """Sorted indices of ``keep`` of ``count`` items drawn at random (all for ``keep == 0``)."""
    if not keep:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:keep])


def hash_split(images: list[Path], folders: np.ndarray, seed: int,
               cache: Path) -> dict[str, np.ndarray]:
    """An 80/10/10 split stratified by folder that keeps near-duplicate films together.

    Args:
        images: N film paths.
        folders: (N,) class-folder indices (the strata).
        seed: The split's seed.
        cache: ``.npy`` file for the films' perceptual hashes (reused when its length fits).

    Returns:
        ``train``, ``val`` and ``test`` index arrays.
    """
    from covid.training.catalogue import group_near_duplicates, perceptual_hashes, split_indices

    if cache.exists() and len(np.load(cache)) == len(images):
        hashes = np.load(cache)
    else:
        hashes = perceptual_hashes(tuple(images))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, hashes)
    groups = group_near_duplicates(hashes)
    return split_indices(folders, groups, seed=seed, val_fraction=0.1, test_fraction=0.1)


Build = Callable[[], "object"]
"""Builds the untrained network at any input size (``build_unet(None, ...)``)."""


def _to_float32(model, build: Build):
    """An uncompiled float32 copy of a (possibly mixed-precision) U-Net, for serving.

    Saving it carries no optimizer state and no bf16 policy, so that it loads
    on any backend and runs at full speed on CPUs without native bf16.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = build()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    clean.set_weights(model.get_weights())
    return clean


def _model_and_state(args: argparse.Namespace, steps: int, build: Build):
    """The checkpoint and its training state with ``--resume``, else a new compiled U-Net."""
    import keras

    checkpoint, state_file = args.run / "checkpoint.keras", args.run / "state.json"
    if args.resume and checkpoint.exists():
        model = keras.saving.load_model(checkpoint, custom_objects={"dice_bce_loss": dice_bce_loss})
        return model, json.loads(state_file.read_text())
    model = build()
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr / 10, decay_steps=args.epochs * steps, alpha=0.01,
        warmup_target=args.lr, warmup_steps=min(100, steps),
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=dice_bce_loss)
    return model, {"epoch": 0, "history": [], "best_dice": -1.0}


def fit_unet(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, build: Build,
             val_score: Callable[[object], float]):
    """Trains (or resumes) epoch by epoch, checkpointing each, and keeps the best epoch.

    Args:
        args: The trainer's options (:func:`training_parser`).
        x: (N, S, S, 1) uint8 training films.
        y: (N, S, S, 1) uint8 0/1 training masks.
        build: Builds the untrained network.
        val_score: The validation Dice of a model (higher is better).

    Returns:
        ``(model, state)``: the best validation epoch's weights in an uncompiled
        float32 network, and the run's state (``history``, ``best_dice``).
    """
    run = args.run
    run.mkdir(parents=True, exist_ok=True)
    steps = max(1, len(x) // args.batch_size)
    model, state = _model_and_state(args, steps, build)
    batches = _batches(x, y, args.batch_size, args.seed + state["epoch"])
    for epoch in range(state["epoch"], args.epochs):
        tick = time.time()
        fit = model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
        val_dice = val_score(model)
        record = {"epoch": epoch + 1, "loss": float(fit.history["loss"][-1]),
                  "val_dice": val_dice, "seconds": round(time.time() - tick, 1)}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        LOG.info("epoch %s", json.dumps(record))
        if val_dice > state["best_dice"]:
            state["best_dice"] = val_dice
            model.save_weights(run / "best.weights.h5")
        model.save(run / "checkpoint.keras")
        (run / "state.json").write_text(json.dumps(state, indent=1))
    model.load_weights(run / "best.weights.h5")
    return _to_float32(model, build), state


def recipe(args: argparse.Namespace, state: dict) -> dict:
    """The recipe both segmenters record in their metadata.

    ``train_seconds`` adds up the epochs' times, so that a resumed run counts them all.
    """
    import keras

    from covid.model.lungs import UNET_FILTERS
    from covid.training.catalogue import HASH_SIZE, NEAR_DUPLICATE_BITS

    return {
        "architecture": (f"U-Net, filters {'-'.join(map(str, UNET_FILTERS))}, BatchNorm, "
                         "bilinear upsampling"),
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "Adam",
        "peak_lr": args.lr, "lr_schedule": "warm-up + cosine decay",
        "loss": "binary cross-entropy + soft Dice",
        "augmentation": AUGMENTATION,
        "duplicate_grouping": (f"{HASH_SIZE**2}-bit pHash, Hamming <= {NEAR_DUPLICATE_BITS}, "
                               "groups kept within one split"),
        "backend": keras.backend.backend(), "precision": args.precision,
        "backend_probe": probe_record(), "history": state["history"],
        "train_seconds": round(sum(r["seconds"] for r in state["history"])),
        "split_seed": args.seed,
    }
