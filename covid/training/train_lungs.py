"""Trains the lung U-Net on COVID-QU-Ex's radiologist-checked lung masks.

Usage::

    python -m covid.train_lungs --run runs/lungs   # --data: DATA/covid-qu-ex-masks

Near-duplicate films are grouped by perceptual hash and kept within one side of
an 80/10/10 split stratified by folder (COVID-19, Non-COVID, Normal). Training
uses the fastest Keras backend of the machine (see :mod:`covid.training.backend`)
and the loop both segmenters share (:func:`covid.training.unet_training.fit_unet`):
Adam with cosine decay, binary cross-entropy plus soft Dice, and joint random
affine and intensity augmentation of film and mask. Every epoch writes a
checkpoint and the validation Dice; ``--resume`` continues. The held-out Dice is
measured at the masks' own resolution through the serving path
(:class:`covid.model.lungs.LungSegmenter`).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covid.training.catalogue import QUEX_CLASS_FOLDERS, QUEX_FOLDER, data_dir
from covid.training.unet_training import fit_unet, hash_split, recipe, subsample, training_parser

LOG = logging.getLogger("covid.train_lungs")
FOLDERS = tuple(QUEX_CLASS_FOLDERS.values())
"""COVID-QU-Ex's class folders, every one of which has radiologists' lung masks."""


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


def mean_dice(model, x: np.ndarray, masks: list[np.ndarray], threshold: float = 0.5) -> float:
    """Mean Dice at each mask's own resolution, through the serving post-processing."""
    from covid.model.lungs import dice, mask_from_probs

    probs = model.predict(x.astype(np.float32), batch_size=32, verbose=0)[..., 0]
    return float(np.mean([
        dice(mask_from_probs(p, m.shape, threshold), m) for p, m in zip(probs, masks, strict=True)
    ]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = training_parser(
        "python -m covid.train_lungs", __doc__.split("\n")[0], run="runs/lungs", epochs=8,
        data_help=(f"the COVID-QU-Ex folder (default: DATA/{QUEX_FOLDER}, DATA being "
                   "$COVID_DATA_DIR or ../shared/data)"))
    args = parser.parse_args(argv)
    args.data = args.data or data_dir() / QUEX_FOLDER
    return args


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
    keep = subsample(len(images), args.max_images, args.seed)
    images, masks, folders = [images[i] for i in keep], [masks[i] for i in keep], folders[keep]
    split = hash_split(images, folders, args.seed, args.cache_dir / "lung_phash.npy")
    LOG.info("split %s", {k: len(v) for k, v in split.items()})
    return LungData(images, masks, split, *load_pairs(images, masks, args.size))


def _metadata(args: argparse.Namespace, data: LungData, state: dict, test_dice: float):
    """The segmenter's metadata: data, split sizes, Dice and the recipe."""
    from covid.model.lungs import LungModelMetadata

    return LungModelMetadata(
        input_size=args.size,
        trained_on=(f"{args.data.name}: {len(data.images)} films with radiologist-checked "
                    "lung masks"),
        splits={k: len(v) for k, v in data.split.items()},
        metrics={"test_dice": round(test_dice, 4), "val_dice_best": round(state["best_dice"], 4),
                 "dice_measured_at": "each mask's own resolution (256 px), after post-processing"},
        recipe=recipe(args, state),
    )


def train(args: argparse.Namespace) -> Path:
    """Trains (or resumes), evaluates on the held-out split and saves the segmenter.

    Returns:
        The saved ``.keras`` path inside the run folder.
    """
    import keras

    from covid.model.lungs import build_unet
    from covid.model.network import save_with_metadata

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    data = load_lung_data(args)
    fit, val = data.split["train"], data.split["val"]
    val_masks = data.masks_of("val")
    model, state = fit_unet(args, data.x[fit], data.y[fit], lambda: build_unet(None),
                            lambda m: mean_dice(m, data.x[val], val_masks))
    test_dice = mean_dice(model, data.x[data.split["test"]], data.masks_of("test"))
    LOG.info("held-out test Dice %.4f", test_dice)
    metadata = _metadata(args, data, state, test_dice)
    exported = args.run / "lung_unet.keras"
    save_with_metadata(model, metadata, exported)
    if args.ship:
        save_with_metadata(model, metadata, args.ship)
    LOG.info("saved %s in %.0f s", exported, time.time() - started)
    return exported


def main(argv: list[str] | None = None) -> None:
    """Trains the segmenter (run by ``python -m covid.train_lungs``, which picks the backend)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))
