"""Trains the lung U-Net on COVID-QU-Ex's radiologist-checked lung masks.

Usage::

    python -m covid.train_lungs --run runs/lungs   # --data: DATA/covid-qu-ex-masks

Near-duplicate films are grouped by perceptual hash and kept within one side of
an 80/10/10 split stratified by folder (COVID-19, Non-COVID, Normal). Training
uses the fastest Keras backend of the machine (see :mod:`covid.training.backend`),
Adam with cosine decay, binary cross-entropy plus soft Dice, and joint random
affine and intensity augmentation of film and mask. Every epoch writes a
checkpoint and the validation Dice; ``--resume`` continues. The held-out Dice is
measured at the masks' own resolution through the serving path
(:class:`covid.model.lungs.LungSegmenter`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covid.training.backend import probe_record
from covid.training.catalogue import data_dir

LOG = logging.getLogger("covid.train_lungs")
MASK_FOLDER = "covid-qu-ex-masks"
"""The COVID-QU-Ex lung masks' folder in the data folder (:func:`data_dir`)."""
FOLDERS = ("COVID-19", "Non-COVID", "Normal")

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


def find_mask_dataset(root: str | Path) -> tuple[list[Path], list[Path], np.ndarray]:
    """Finds the films and lung masks of a COVID-QU-Ex style folder.

    Args:
        root: Folder with ``<class>/images/NAME.jpg`` and ``<class>/lungs/NAME.png``.

    Returns:
        ``(images, masks, folder_index)``: N film paths, N mask paths and (N,) ints.

    Raises:
        FileNotFoundError: The folder, a class folder or a film's mask is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mask dataset folder not found: {root}")
    images, masks, folders = [], [], []
    for index, name in enumerate(FOLDERS):
        found = sorted((root / name / "images").glob("*"))
        if not found:
            raise FileNotFoundError(f"no films in {root / name / 'images'}")
        for path in found:
            mask = root / name / "lungs" / (path.stem + ".png")
            if not mask.is_file():
                raise FileNotFoundError(f"no lung mask for {path}: expected {mask}")
            images.append(path)
            masks.append(mask)
            folders.append(index)
    return images, masks, np.asarray(folders)


def load_pairs(images: list[Path], masks: list[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Loads films through the serving path and their masks at ``size``.

    Returns:
        ``(x, y)``: (N, size, size, 1) uint8 films and (N, size, size, 1) uint8 0/1 masks.
    """
    from PIL import Image

    from covid.inputs.decode import read_image
    from covid.inputs.preprocess import to_model_input

    x = np.stack([to_model_input(read_image(p).pixels, size) for p in images])
    y = np.stack([
        (np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.BILINEAR))
         > 127)[..., None] for p in masks
    ]).astype(np.uint8)
    return x, y


def read_masks(masks: list[Path]) -> list[np.ndarray]:
    """Reads masks at their own resolution as (H, W) bool arrays."""
    from PIL import Image

    return [np.asarray(Image.open(p).convert("L")) > 127 for p in masks]


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


def _batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int):
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


def mean_dice(model, x: np.ndarray, masks: list[np.ndarray], threshold: float = 0.5) -> float:
    """Mean Dice at each mask's own resolution, through the serving post-processing."""
    from covid.model.lungs import dice, mask_from_probs

    probs = model.predict(x.astype(np.float32), batch_size=32, verbose=0)[..., 0]
    return float(np.mean([
        dice(mask_from_probs(p, m.shape, threshold), m) for p, m in zip(probs, masks, strict=True)
    ]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(prog="python -m covid.train_lungs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help=f"the COVID-QU-Ex folder (default: DATA/{MASK_FOLDER}, DATA being "
                             "$COVID_DATA_DIR or ../shared/data)")
    parser.add_argument("--run", type=Path, default=Path("runs/lungs"))
    parser.add_argument("--size", type=int, default=128, help="network input side")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-images", type=int, default=0, help="tiny runs: films kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", help="chosen by covid.train_lungs")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--ship", type=Path, default=None, help="copy the result here")
    args = parser.parse_args(argv)
    args.data = args.data or data_dir() / MASK_FOLDER
    return args


def _split(images: list[Path], folders: np.ndarray, seed: int, cache_dir: Path) -> dict:
    from covid.training.data import group_near_duplicates, perceptual_hashes, split_indices

    cache = cache_dir / "lung_phash.npy"
    if cache.exists() and len(np.load(cache)) == len(images):
        hashes = np.load(cache)
    else:
        hashes = perceptual_hashes(tuple(images))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, hashes)
    groups = group_near_duplicates(hashes)
    return split_indices(folders, groups, seed=seed, val_fraction=0.1, test_fraction=0.1)


def _to_float32(model):
    """An uncompiled float32 copy of a (possibly mixed-precision) U-Net, for serving.

    Saving it carries no optimizer state and no bf16 policy, so that it loads
    on any backend and runs at full speed on CPUs without native bf16.
    """
    import keras

    from covid.model.lungs import build_unet

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = build_unet(None)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    clean.set_weights(model.get_weights())
    return clean


@dataclass(frozen=True)
class LungData:
    """The mask dataset, its split and the films and masks at the network's size.

    Attributes:
        images: N film paths.
        masks: N mask paths.
        split: ``train``, ``val`` and ``test`` index arrays.
        x: (N, S, S, 1) uint8 films.
        y: (N, S, S, 1) uint8 0/1 masks.
    """

    images: list[Path]
    masks: list[Path]
    split: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray

    def masks_of(self, side: str) -> list[np.ndarray]:
        """The masks of one side at their own resolution."""
        return read_masks([self.masks[i] for i in self.split[side]])


def load_lung_data(args: argparse.Namespace) -> LungData:
    """Finds, subsamples (``--max-images``), splits and loads the mask dataset."""
    images, masks, folders = find_mask_dataset(args.data)
    if args.max_images:
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(images))[: args.max_images])
        images, masks, folders = [images[i] for i in keep], [masks[i] for i in keep], folders[keep]
    split = _split(images, folders, args.seed, args.cache_dir)
    LOG.info("split %s", {k: len(v) for k, v in split.items()})
    return LungData(images, masks, split, *load_pairs(images, masks, args.size))


def _model_and_state(args: argparse.Namespace, steps: int):
    """The checkpoint and its training state with ``--resume``, else a new compiled U-Net."""
    import keras

    from covid.model.lungs import build_unet

    checkpoint, state_file = args.run / "checkpoint.keras", args.run / "state.json"
    if args.resume and checkpoint.exists():
        model = keras.saving.load_model(checkpoint, custom_objects={"dice_bce_loss": dice_bce_loss})
        return model, json.loads(state_file.read_text())
    model = build_unet(None)
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr / 10, decay_steps=args.epochs * steps, alpha=0.01,
        warmup_target=args.lr, warmup_steps=min(100, steps),
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=dice_bce_loss)
    return model, {"epoch": 0, "history": [], "best_dice": -1.0}


def _fit(model, state: dict, data: LungData, args: argparse.Namespace, steps: int) -> None:
    """Trains epoch by epoch, checkpointing each and keeping the best validation Dice's weights."""
    run, train, val = args.run, data.split["train"], data.split["val"]
    val_masks = data.masks_of("val")
    batches = _batches(data.x[train], data.y[train], args.batch_size, args.seed)
    for epoch in range(state["epoch"], args.epochs):
        tick = time.time()
        fit = model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
        val_dice = mean_dice(model, data.x[val], val_masks)
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


def _metadata(args: argparse.Namespace, data: LungData, state: dict, test_dice: float,
              seconds: float):
    """The segmenter's metadata: data, split sizes, Dice and the recipe."""
    import keras

    from covid.model.lungs import UNET_FILTERS, LungModelMetadata
    from covid.training.data import HASH_SIZE, NEAR_DUPLICATE_BITS

    return LungModelMetadata(
        input_size=args.size,
        trained_on=(f"{args.data.name}: {len(data.images)} films with radiologist-checked "
                    "lung masks"),
        splits={k: len(v) for k, v in data.split.items()},
        metrics={"test_dice": round(test_dice, 4), "val_dice_best": round(state["best_dice"], 4),
                 "dice_measured_at": "each mask's own resolution (256 px), after post-processing"},
        recipe={
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
            "train_seconds": round(seconds), "split_seed": args.seed,
        },
    )


def train(args: argparse.Namespace) -> Path:
    """Trains (or resumes), evaluates on the held-out split and saves the segmenter.

    Returns:
        The saved ``.keras`` path inside the run folder.
    """
    import keras

    from covid.model.lungs import save_lung_model

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    args.run.mkdir(parents=True, exist_ok=True)
    data = load_lung_data(args)
    steps = max(1, len(data.split["train"]) // args.batch_size)
    model, state = _model_and_state(args, steps)
    _fit(model, state, data, args, steps)
    model.load_weights(args.run / "best.weights.h5")
    model = _to_float32(model)
    test_dice = mean_dice(model, data.x[data.split["test"]], data.masks_of("test"))
    LOG.info("held-out test Dice %.4f", test_dice)
    metadata = _metadata(args, data, state, test_dice, time.time() - started)
    exported = args.run / "lung_unet.keras"
    save_lung_model(model, metadata, exported)
    if args.ship:
        save_lung_model(model, metadata, args.ship)
    LOG.info("saved %s in %.0f s", exported, time.time() - started)
    return exported


def main(argv: list[str] | None = None) -> None:
    """Trains the segmenter (run by ``python -m covid.train_lungs``, which picks the backend)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))
