"""Trains the opacity U-Net on COVID-QU-Ex's radiologists' infection masks.

Usage::

    python -m covid.train_opacity --run runs/opacity --ship models/opacity_unet.keras

The films are the ``COVID-19`` folder's, whose infection masks outline the
opacities, and the ``Normal`` folder's, whose empty masks mean clear lungs. The
``Non-COVID`` folder is left out entirely: its infection masks are empty because
nobody drew them, not because those lungs are clear, so they would teach the
network to miss other pneumonias' opacities.

Each film is cut to its lungs' square box by :func:`covid.model.opacity.opacity_input`,
the crop path serving takes; training cuts it with the radiologists' lung mask,
serving with the lung segmenter's, and the shift and zoom augmentation covers the
difference. Near-duplicate films are grouped by perceptual hash and kept within one
side of an 80/10/10 split stratified by folder. Training is the loop the lung
segmenter uses (:func:`covid.training.unet_training.fit_unet`); the checkpoint kept
is the one with the best mean Dice on the validation COVID films, and the opacity
post-processing (threshold and smallest opacity kept) is then chosen on the same
films (:func:`choose_setting`).

The held-out test films are then segmented twice by the serving class
(:class:`covid.model.opacity.OpacitySegmenter`): inside the shipped lung segmenter's
lungs, as the page does (the metrics that count), and inside the radiologists'
lungs. Both are judged against the radiologists' masks at their own resolution:
Dice, the error of the extent of both lungs, the modified RALE score's agreement
and the normal films' extent (:func:`opacity_metrics`).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covid.model.classes import COVID, NORMAL, OTHER_PNEUMONIA
from covid.model.opacity import MIN_COMPONENT, OPACITY_THRESHOLD
from covid.training.catalogue import QUEX_CLASS_FOLDERS, QUEX_FOLDER, data_dir
from covid.training.unet_training import fit_unet, hash_split, recipe, subsample, training_parser

LOG = logging.getLogger("covid.train_opacity")
FOLDERS = (QUEX_CLASS_FOLDERS[COVID], QUEX_CLASS_FOLDERS[NORMAL])
"""The class folders trained on: outlined opacities, and clear lungs."""
EXCLUDED_FOLDER = QUEX_CLASS_FOLDERS[OTHER_PNEUMONIA]
"""Left out: its empty infection masks were never drawn, so they are not negatives."""
CHUNK = 64
"""Films segmented per batch when testing."""
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
"""Opacity thresholds tried on the validation films once training ends."""
MIN_COMPONENTS = (0.005, 0.01, 0.02, 0.04)
"""Smallest opacities kept (share of the lungs) tried with each threshold."""
SETTINGS = tuple((t, m) for t in THRESHOLDS for m in MIN_COMPONENTS)
"""Every post-processing setting tried on the validation films."""
NORMAL_EXTENT_GOAL = 0.01
"""Normal films' median extent a shipped setting must keep (issue 29's target: 1%)."""


def find_opacity_dataset(root: str | Path) -> tuple[list[Path], np.ndarray]:
    """Finds the COVID-19 and Normal films of a COVID-QU-Ex style folder.

    Args:
        root: Folder with ``<class>/images/NAME.jpg``, ``<class>/lungs/NAME.png`` and
            ``<class>/infection/NAME.png``.

    Returns:
        ``(images, folder_index)``: N film paths and (N,) indices into :data:`FOLDERS`.

    Raises:
        FileNotFoundError: The folder, a class folder or a film's mask is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mask dataset folder not found: {root}")
    images, folders = [], []
    for index, name in enumerate(FOLDERS):
        found = sorted((root / name / "images").glob("*"))
        if not found:
            raise FileNotFoundError(f"no films in {root / name / 'images'}")
        for path in found:
            for kind in ("lungs", "infection"):
                if not mask_path(path, kind).is_file():
                    raise FileNotFoundError(f"no {kind} mask for {path}: expected "
                                            f"{mask_path(path, kind)}")
            images.append(path)
            folders.append(index)
    return images, np.asarray(folders)


def mask_path(image: Path, kind: str) -> Path:
    """The ``lungs`` or ``infection`` mask of a film in a COVID-QU-Ex style folder."""
    return image.parent.parent / kind / f"{image.stem}.png"


def read_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask as an (H, W) bool array, resized to ``shape`` when given and different."""
    from PIL import Image

    image = Image.open(path).convert("L")
    if shape is not None and image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image) > 127


@dataclass(frozen=True)
class OpacityData:
    """The films, their radiologists' masks, the split and the network's pairs.

    Attributes:
        images: N film paths.
        covid: (N,) bool, True for COVID-19 films (False: normal).
        split: ``train``, ``val`` and ``test`` index arrays.
        films: N (H, W) uint8 films as decoded for serving.
        lungs: N (H, W) bool radiologists' lung masks, at each film's size.
        infection: N (H, W) bool radiologists' infection masks, at each film's size.
        x: (N, S, S, 1) uint8 lung-box crops.
        y: (N, S, S, 1) uint8 0/1 infection masks over the same crops.
    """

    images: list[Path]
    covid: np.ndarray
    split: dict[str, np.ndarray]
    films: list[np.ndarray]
    lungs: list[np.ndarray]
    infection: list[np.ndarray]
    x: np.ndarray
    y: np.ndarray


def opacity_pair(film: np.ndarray, lungs: np.ndarray, infection: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """One training pair: the lung-box crop and the infection mask over it.

    Returns:
        (size, size, 1) uint8 crop and (size, size, 1) uint8 0/1 mask.
    """
    from covid.inputs.preprocess import crop_to_box
    from covid.model.lungs import resize_map
    from covid.model.opacity import opacity_input

    x, box = opacity_input(film, lungs, size)
    y = resize_map(crop_to_box(infection, box), size, size) > 0.5
    return x, y[..., None].astype(np.uint8)


def load_opacity_data(args: argparse.Namespace) -> OpacityData:
    """Finds, subsamples (``--max-images``), reads, splits and crops the films.

    Films whose radiologists' lung mask is empty (no box to cut) are left out and named.
    """
    from covid.inputs.decode import read_image

    images, folders = find_opacity_dataset(args.data)
    keep = subsample(len(images), args.max_images, args.seed)
    films, lungs, infection, kept = [], [], [], []
    for i in keep:
        film = read_image(images[i]).pixels
        lung = read_mask(mask_path(images[i], "lungs"), film.shape)
        if not lung.any():
            LOG.warning("left out %s: its lung mask is empty", images[i])
            continue
        films.append(film)
        lungs.append(lung)
        infection.append(read_mask(mask_path(images[i], "infection"), film.shape))
        kept.append(i)
    images, folders = [images[i] for i in kept], folders[kept]
    split = hash_split(images, folders, args.seed, args.cache_dir / "opacity_phash.npy")
    LOG.info("split %s", {k: len(v) for k, v in split.items()})
    pairs = [opacity_pair(f, m, inf, args.size) for f, m, inf in zip(films, lungs, infection,
                                                                     strict=True)]
    x, y = (np.stack(part) for part in zip(*pairs, strict=True))
    covid = folders == FOLDERS.index(QUEX_CLASS_FOLDERS[COVID])
    return OpacityData(images, covid, split, films, lungs, infection, x, y)


def _val_outlines(model, data: OpacityData, covid: bool):
    """The validation films of one kind, each with a function of a setting giving its outline.

    The network runs once per film; a setting only re-thresholds its map.

    Returns:
        ``[(film index, outline(threshold, min_component) -> (H, W) bool), ...]``.
    """
    from covid.inputs.preprocess import lung_box
    from covid.model.opacity import opacity_from_probs

    index = [i for i in data.split["val"] if bool(data.covid[i]) == covid]
    if not index:
        return []
    probs = model.predict(data.x[index].astype(np.float32), batch_size=32, verbose=0)[..., 0]

    def outline(p: np.ndarray, i: int):
        box = lung_box(data.lungs[i])
        return lambda t, m: opacity_from_probs(p, box, data.films[i].shape, data.lungs[i], t, m)

    return [(i, outline(p, i)) for p, i in zip(probs, index, strict=True)]


def _mean_dice(data: OpacityData, covid_films: list, setting: tuple[float, float]) -> float:
    """Mean Dice of the COVID films' outlines at one setting (0 without any)."""
    from covid.model.lungs import dice

    dices = [dice(outline(*setting), data.infection[i]) for i, outline in covid_films]
    return float(np.mean(dices)) if dices else 0.0


def val_settings(model, data: OpacityData, settings: tuple[tuple[float, float], ...]
                 ) -> dict[tuple[float, float], dict[str, float]]:
    """Each post-processing setting's validation figures, inside the radiologists' lungs.

    Args:
        model: The network.
        data: The dataset (its ``val`` split is used).
        settings: ``(threshold, min_component)`` pairs, as
            :func:`covid.model.opacity.opacity_from_probs` takes them.

    Returns:
        For each setting, ``dice``: the mean Dice of the validation COVID films (0
        without any), and ``normal_extent``: the median extent of both lungs on the
        validation normal films, as a share of the lungs (0 without any).
    """
    from covid.model.opacity import grade

    covid_films, normal_films = (_val_outlines(model, data, kind) for kind in (True, False))
    figures = {}
    for setting in settings:
        extents = [grade(data.lungs[i], outline(*setting)).extent for i, outline in normal_films]
        figures[setting] = {"dice": _mean_dice(data, covid_films, setting),
                            "normal_extent": float(np.median(extents)) if extents else 0.0}
    return figures


def val_dice(model, data: OpacityData) -> float:
    """Mean Dice of the validation COVID films at the default setting: what picks the epoch.

    Only the COVID films run: each epoch calls it.
    """
    return _mean_dice(data, _val_outlines(model, data, True), (OPACITY_THRESHOLD, MIN_COMPONENT))


def choose_setting(figures: dict[tuple[float, float], dict[str, float]],
                   normal_goal: float = NORMAL_EXTENT_GOAL) -> tuple[float, float]:
    """The post-processing setting to ship, from its validation figures.

    Outlining opacity on clear lungs is what a radiologist notices first, so the
    setting must keep normal films' median extent within ``normal_goal``; among
    those, the best COVID Dice wins. When none keeps it, the best Dice wins.

    Args:
        figures: :func:`val_settings`' output.
        normal_goal: Largest median extent on normal films, as a share of the lungs.

    Returns:
        ``(threshold, min_component)``.
    """
    clear = {k: v for k, v in figures.items() if v["normal_extent"] <= normal_goal}
    pool = clear or figures
    return max(pool, key=lambda k: (pool[k]["dice"], -pool[k]["normal_extent"]))


def _percent(values: list[float], q: float) -> float | None:
    return round(100 * float(np.percentile(values, q)), 2) if values else None


def opacity_metrics(predicted: list, lungs: list[np.ndarray], infection: list[np.ndarray],
                    covid: np.ndarray) -> dict:
    """Judges opacity segmentations against the radiologists' masks.

    Args:
        predicted: N :class:`covid.model.opacity.OpacitySegmentation`, None where the
            lungs were not found (counted, then left out).
        lungs: N (H, W) bool radiologists' lung masks.
        infection: N (H, W) bool radiologists' infection masks.
        covid: (N,) bool, True for COVID-19 films.

    Returns:
        Dice on COVID films; absolute errors of the extent of both lungs in
        percentage points; the share of COVID films whose 0-8 score is within 1
        and 2 of the radiologists'; normal films' extent in percent; and the
        confusion of scores (rows: the radiologists', columns: predicted).
    """
    from covid.model.lungs import dice
    from covid.model.opacity import MAX_SCORE, grade

    dices, errors, gaps, normal = [], [], [], []
    confusion = np.zeros((MAX_SCORE + 1, MAX_SCORE + 1), int)
    for pred, lung, inf, is_covid in zip(predicted, lungs, infection, covid, strict=True):
        if pred is None:
            continue
        truth = grade(lung, inf)
        confusion[truth.score, pred.severity.score] += 1
        if is_covid:
            dices.append(dice(pred.mask, inf))
            errors.append(abs(pred.severity.extent - truth.extent))
            gaps.append(abs(pred.severity.score - truth.score))
        else:
            normal.append(pred.severity.extent)
    gaps = np.asarray(gaps)
    return {
        "covid_films": len(dices), "normal_films": len(normal),
        "films_without_lungs": sum(p is None for p in predicted),
        "dice_mean": round(float(np.mean(dices)), 4) if dices else None,
        "dice_median": round(float(np.median(dices)), 4) if dices else None,
        "extent_abs_error_median_pts": _percent(errors, 50),
        "extent_abs_error_p90_pts": _percent(errors, 90),
        "score_within_2": round(float(np.mean(gaps <= 2)), 4) if len(gaps) else None,
        "score_within_1": round(float(np.mean(gaps <= 1)), 4) if len(gaps) else None,
        "score_exact": round(float(np.mean(gaps == 0)), 4) if len(gaps) else None,
        "normal_extent_median_pct": _percent(normal, 50),
        "normal_extent_p90_pct": _percent(normal, 90),
        "normal_score_zero": round(float(np.mean(np.asarray(normal) == 0)), 4) if normal else None,
        "score_confusion": confusion.tolist(),
    }


def held_out_metrics(segmenter, data: OpacityData, lung_model: Path) -> dict:
    """The held-out metrics inside the lung segmenter's lungs and inside the radiologists'.

    Args:
        segmenter: The trained :class:`covid.model.opacity.OpacitySegmenter`.
        data: The dataset (its ``test`` split is used).
        lung_model: The lung segmenter's ``.keras`` file (SHA-checked).
    """
    from covid.inputs.preprocess import lung_box
    from covid.model.lungs import LungSegmentation, LungSegmenter

    test = data.split["test"]
    films = [data.films[i] for i in test]
    truth = ([data.lungs[i] for i in test], [data.infection[i] for i in test], data.covid[test])
    lung_segmenter = LungSegmenter.from_file(lung_model)
    served, drawn = [], []
    for start in range(0, len(films), CHUNK):
        chunk = films[start : start + CHUNK]
        served += segmenter.segment_batch(chunk, lung_segmenter.segment_batch(chunk))
        radiologists = [LungSegmentation(m, lung_box(m), None)
                        for m in truth[0][start : start + CHUNK]]
        drawn += segmenter.segment_batch(chunk, radiologists)
    return {"lung_segmenter_lungs": opacity_metrics(served, *truth),
            "radiologists_lungs": opacity_metrics(drawn, *truth)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH

    parser = training_parser(
        "python -m covid.train_opacity", __doc__.split("\n")[0], run="runs/opacity", epochs=12,
        data_help=(f"the COVID-QU-Ex folder (default: DATA/{QUEX_FOLDER}, DATA being "
                   "$COVID_DATA_DIR or ../shared/data)"))
    parser.add_argument("--lung-model", type=Path, default=DEFAULT_LUNG_MODEL_PATH,
                        help="the lung segmenter the test films are segmented with, as served")
    args = parser.parse_args(argv)
    args.data = args.data or data_dir() / QUEX_FOLDER
    return args


def _metadata(args: argparse.Namespace, data: OpacityData, state: dict,
              setting: tuple[float, float], tried: dict, metrics: dict):
    """The segmenter's metadata: data, split sizes, post-processing, held-out metrics, recipe.

    ``setting`` is the ``(threshold, min_component)`` chosen and ``tried`` each
    setting's validation figures (:func:`val_settings`).
    """
    from covid.model.opacity import RALE_BANDS, OpacityModelMetadata

    covid = int(data.covid.sum())
    return OpacityModelMetadata(
        input_size=args.size,
        threshold=setting[0],
        min_component=setting[1],
        trained_on=(f"{args.data.name}: {covid} COVID-19 films with radiologists' infection "
                    f"masks and {len(data.images) - covid} normal films (empty masks); the "
                    f"{EXCLUDED_FOLDER} films left out (their masks were never drawn)"),
        splits={k: len(v) for k, v in data.split.items()},
        metrics={**metrics, "val_dice_best": round(state["best_dice"], 4),
                 "val_by_setting": [
                     {"threshold": t, "min_component": m, "dice": round(f["dice"], 4),
                      "normal_extent_median_pct": round(100 * f["normal_extent"], 2)}
                     for (t, m), f in tried.items()],
                 "measured_at": "each mask's own resolution (256 px), after post-processing; "
                                "COVID films for Dice, extent error and score agreement",
                 "score": f"modified RALE (Wong et al. 2020), per lung 0-4 at {RALE_BANDS}"},
        recipe={**recipe(args, state),
                "crop": ("the lungs' square box (covid.inputs.preprocess.lung_box): the "
                         "radiologists' lung mask in training, the lung segmenter's in serving"),
                "val_selection": (
                    f"epoch: mean Dice of the validation COVID films at threshold "
                    f"{OPACITY_THRESHOLD:g}, smallest opacity {MIN_COMPONENT:g} of the lungs; "
                    f"then threshold and smallest opacity: the best such Dice among the "
                    f"settings whose median extent on validation normal films is at most "
                    f"{100 * NORMAL_EXTENT_GOAL:g}% (radiologists' lungs)")},
    )


def train(args: argparse.Namespace) -> Path:
    """Trains (or resumes), tests on the held-out split and saves the segmenter.

    Returns:
        The saved ``.keras`` path inside the run folder.
    """
    import keras

    from covid.model.opacity import (
        OpacityModelMetadata,
        OpacitySegmenter,
        build_opacity_unet,
        save_opacity_model,
    )

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    data = load_opacity_data(args)
    fit = data.split["train"]
    model, state = fit_unet(args, data.x[fit], data.y[fit], lambda: build_opacity_unet(None),
                            lambda m: val_dice(m, data))
    tried = val_settings(model, data, SETTINGS)
    setting = choose_setting(tried)
    LOG.info("threshold %g, smallest opacity %g chosen on validation from %s",
             *setting, tried)
    segmenter = OpacitySegmenter(model, OpacityModelMetadata(
        input_size=args.size, threshold=setting[0], min_component=setting[1]))
    metrics = held_out_metrics(segmenter, data, args.lung_model)
    LOG.info("held-out test %s", metrics)
    metadata = _metadata(args, data, state, setting, tried, metrics)
    exported = args.run / "opacity_unet.keras"
    save_opacity_model(model, metadata, exported)
    if args.ship:
        save_opacity_model(model, metadata, args.ship)
    LOG.info("saved %s in %.0f s", exported, time.time() - started)
    return exported


def main(argv: list[str] | None = None) -> None:
    """Trains the segmenter (run by ``python -m covid.train_opacity``, which picks the backend)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))
