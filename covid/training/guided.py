"""Teaching the classifier to look at the lungs: training masks, class activation maps, the loss.

The network's head is global average pooling then one dense layer, so the
Grad-CAM of a class's logit at the last convolutional block equals its class
activation map, ``relu(w_c . A_ij)`` up to a constant (Zhou et al. 2016): the
channel weights Grad-CAM averages are the dense kernel itself. The training model
therefore outputs those maps beside the probabilities (:func:`guided_model`), and
:class:`OutsideLungsLoss` penalises the share of each class's map mass that
falls outside the lung fields, and of the COVID-19 map outside the radiologists'
infection mask where there is one, in the spirit of "Right for the Right Reasons"
(Ross et al. 2017) and ISNet (Bassi et al. 2024). The loss shapes the network only
while it trains; the map shown later is the unaltered Grad-CAM of the shipped
network.

The masks come from the radiologists (COVID-QU-Ex lung and infection masks,
matched to the classifier's films by perceptual hash) where they exist, and from
the shipped lung U-Net otherwise; :func:`training_stack` puts them beside each
film's model input, cropped and resized exactly like it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from covid.inputs.preprocess import crop_to_box
from covid.model.classes import CLASS_NAMES, COVID, index_of
from covid.training.catalogue import QUEX_CLASS_FOLDERS
from covid.training.lung_data import FocusedSet, match_masks

LOG = logging.getLogger("covid.training.guided")

COVID_INDEX = index_of(CLASS_NAMES, COVID)
"""The COVID-19 map's channel: the one the infection term of :class:`OutsideLungsLoss` weighs."""


@dataclass(frozen=True)
class FilmMasks:
    """Masks at each film's own resolution.

    Attributes:
        lungs: N (H, W) bool lung masks (radiologists' where matched, else the U-Net's).
        infection: N (H, W) bool infection masks, or None where there is none.
        radiologist: (N,) bool, True where the lung mask is the radiologists'.
    """

    lungs: list[np.ndarray]
    infection: list[np.ndarray | None]
    radiologist: np.ndarray


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool)
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def film_masks(paths: tuple[Path, ...], labels: np.ndarray, focused: FocusedSet,
               mask_root: Path | None, cache_dir: Path | None) -> FilmMasks:
    """The best lung (and infection) mask for every film.

    Args:
        paths: N films.
        labels: (N,) class indices (selects the COVID-QU-Ex folder to match in).
        focused: The films' inputs with the U-Net's lung masks (``focused.lungs``).
        mask_root: The COVID-QU-Ex folder (None or missing: U-Net masks only).
        cache_dir: Cache for the mask set's hashes.

    Returns:
        The masks, resized (nearest) to each film's shape.
    """
    shapes = [tuple(int(v) for v in s) for s in focused.shapes]
    lungs = [m.astype(bool) for m in focused.lungs]
    infection: list[np.ndarray | None] = [None] * len(paths)
    radiologist = np.zeros(len(paths), bool)
    if mask_root is not None and mask_root.is_dir():
        for name, folder in QUEX_CLASS_FOLDERS.items():
            chosen = np.flatnonzero(labels == index_of(CLASS_NAMES, name))
            images = mask_root / folder / "images"
            if not len(chosen) or not images.is_dir() or not any(images.iterdir()):
                continue
            found = match_masks(tuple(paths[i] for i in chosen), mask_root, folder,
                                cache_dir=cache_dir)
            for j, k in enumerate(found.index):
                i = chosen[k]
                lungs[i] = _resize_nearest(found.lungs[j], shapes[i])
                radiologist[i] = True
                if found.infection[j].any():
                    infection[i] = _resize_nearest(found.infection[j], shapes[i])
            LOG.info("%s: radiologists' masks for %d of %d films", folder, len(found.index),
                     len(chosen))
    return FilmMasks(lungs, infection, radiologist)


def _to_input_frame(mask: np.ndarray, box, size: int) -> np.ndarray:
    """A film-resolution mask cut to the input's box and resized to it, as uint8 0-255."""
    crop = crop_to_box(mask.astype(np.float32), box)
    image = Image.fromarray(crop, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


def training_stack(focused: FocusedSet, masks: FilmMasks) -> np.ndarray:
    """Stacks each model input with its lung and infection masks in the input's frame.

    Args:
        focused: N model inputs (S, S, 1) and the boxes they show.
        masks: The films' masks.

    Returns:
        (N, S, S, 3) uint8: the input, the lungs (0-255) and the infection (0-255,
        all zero without a mask).
    """
    n, size = focused.x.shape[0], focused.x.shape[1]
    stack = np.zeros((n, size, size, 3), np.uint8)
    stack[..., 0] = focused.x[..., 0]
    for i in range(n):
        box = focused.box(i)
        stack[i, ..., 1] = _to_input_frame(masks.lungs[i], box, size)
        if masks.infection[i] is not None:
            stack[i, ..., 2] = _to_input_frame(masks.infection[i], box, size)
    return stack


@keras.saving.register_keras_serializable(package="covid")
class ClassActivationMaps(keras.layers.Layer):
    """(B, h, w, K) features to (B, h, w, C) class activation maps ``w_c . A_ij``.

    Uses the kernel of the model's own logits layer (no bias), so each map is the
    class's Grad-CAM at this layer before its ReLU, times the number of cells.
    """

    def __init__(self, logits_layer: keras.layers.Dense, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logits_layer = logits_layer

    def call(self, features):
        """Projects every cell's features on every class's weights."""
        kernel = keras.ops.cast(self.logits_layer.kernel, "float32")
        return keras.ops.einsum("bhwk,kc->bhwc", keras.ops.cast(features, "float32"), kernel)


def guided_model(model: keras.Model, layer: str = "conv5_block3_out") -> keras.Model:
    """The training model: ``{"probs": (B, C), "cams": (B, h, w, C)}`` from one pass.

    Args:
        model: The classifier (:func:`covid.model.network.build_model`); its
            weights are shared, so training this trains it.
        layer: The last convolutional block, just before global average pooling.

    Returns:
        A functional model over the same input.
    """
    logits_layer = model.get_layer("logits")
    cams = ClassActivationMaps(logits_layer, name="cams")(model.get_layer(layer).output)
    return keras.Model(model.input, {"probs": model.output, "cams": cams}, name="guided")


PEAK_TEMPERATURE = 0.1
"""Softmax temperature of the peak term, on maps scaled to a range (max - min) of 1:
a cell a tenth of the range below the peak weighs e^-1 of it, so the term follows the
peak, not the mass."""


def map_loss_kind(peak_weight: float) -> str:
    """The map loss's kind as each epoch's history records it.

    Epochs without the entry were trained on the positive part; "absolute" alone
    means no peak term.
    """
    return f"absolute + peak x{peak_weight:g}" if peak_weight > 0 else "absolute"


def _softmax_cells(maps, temperature: float):
    """(B, h, w, C) maps to a softmax over each map's cells, blind to scale and offset."""
    ops = keras.ops
    # The soft-max ignores an offset already; dividing by the range removes the scale.
    # The 1e-3 keeps a flat map's gradient finite (maps span units, not thousandths).
    top = ops.max(maps, axis=(1, 2), keepdims=True)
    scale = top - ops.min(maps, axis=(1, 2), keepdims=True) + 1e-3
    # Written out over the cell axes, as the grid's size is unknown while tracing.
    weights = ops.exp((maps - top) / (scale * temperature))
    return weights / ops.sum(weights, axis=(1, 2), keepdims=True)


@keras.saving.register_keras_serializable(package="covid")
class OutsideLungsLoss(keras.losses.Loss):
    """Share of the maps' mass, and of their peak, outside the lungs (and the infection).

    ``y_true`` is (B, h, w, 2): the share of each map cell covered by the lungs and
    by the infection. ``y_pred`` is (B, h, w, C) maps. The loss of one film is the
    mean over classes of the share of ``|map|`` outside the lungs, plus
    ``infection_weight`` times the share of the positive COVID-19 map (:data:`COVID_INDEX`)
    outside the infection, for films with an infection mask.

    The lung term weighs the map's absolute value, not its positive part: a share
    of ``relu(map)`` is zero for a map negative everywhere, and the softmax does not
    see an offset common to all classes, so a network can meet that loss by pushing
    every map below zero (run v3 did, by 118,400 images) and leave Grad-CAM, which
    keeps the positive part, nothing but noise to show. An offset adds ``|map|``
    outside the lungs too, so here it costs.

    A share of mass can fall while the highest cell stays outside the lungs (run
    v3 at 204,800 images: half the energy inside, the peak inside on 29% of COVID
    films), and the peak is what a reader's eye goes to. With ``peak_weight`` > 0
    the loss adds, with that weight, the same shares under a soft-max over each
    map's cells (:data:`PEAK_TEMPERATURE`), which concentrates on the peak. The map
    is scaled by its range first, so neither scaling nor offsetting the map changes
    the term; only moving the peak does.
    """

    def __init__(self, infection_weight: float = 0.5, peak_weight: float = 0.0,
                 name: str = "outside_lungs", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.infection_weight = infection_weight
        self.peak_weight = peak_weight

    @staticmethod
    def _outside(weights, mask):
        """(B, h, w, C) non-negative weights, (B, h, w, 1) cell shares: (B, C) shares outside."""
        ops = keras.ops
        return ops.sum(weights * (1.0 - mask), axis=(1, 2)) / (ops.sum(weights, axis=(1, 2)) + 1e-6)

    def _term(self, weights, covid, y_true):
        """Per film: the mean share of ``weights`` outside the lungs, and of ``covid``.

        The classes' mean share of ``weights`` (B, h, w, C) outside the lungs, plus
        ``infection_weight`` times the share of ``covid`` (B, h, w, 1) outside the
        infection, for films with an infection mask.
        """
        ops = keras.ops
        lungs, infection = y_true[..., 0:1], y_true[..., 1:2]
        has_infection = ops.cast(ops.sum(infection, axis=(1, 2, 3)) > 0, "float32")
        return (ops.mean(self._outside(weights, lungs), axis=-1)
                + self.infection_weight * has_infection * self._outside(covid, infection)[:, 0])

    def call(self, y_true, y_pred):
        """Per-film loss (see the class docstring)."""
        maps = keras.ops.cast(y_pred, "float32")
        covid = slice(COVID_INDEX, COVID_INDEX + 1)
        loss = self._term(keras.ops.abs(maps), keras.ops.relu(maps[..., covid]), y_true)
        if self.peak_weight > 0:
            peaks = _softmax_cells(maps, PEAK_TEMPERATURE)
            loss = loss + self.peak_weight * self._term(peaks, peaks[..., covid], y_true)
        return loss

    def get_config(self) -> dict:
        """Serialisable configuration."""
        return {**super().get_config(), "infection_weight": self.infection_weight,
                "peak_weight": self.peak_weight}


def cell_shares(masks: np.ndarray, cells: int) -> np.ndarray:
    """Area shares of (B, S, S, k) uint8 masks (0-255) in a (cells x cells) grid.

    Returns:
        (B, cells, cells, k) float32 in [0, 1].
    """
    b, s, _, k = masks.shape
    step = s // cells
    trimmed = masks[:, : step * cells, : step * cells].astype(np.float32) / 255.0
    return trimmed.reshape(b, cells, step, cells, step, k).mean(axis=(2, 4))


def share_inside(cams: np.ndarray, shares: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Share of each film's explained-class positive map inside the lungs, on the cell grid.

    Args:
        cams: (B, h, w, C) maps.
        shares: (B, h, w, 2) lung and infection shares per cell.
        targets: (B,) explained classes.

    Returns:
        (B,) shares in [0, 1] (0 for a map with no positive energy).
    """
    chosen = np.maximum(cams[np.arange(len(targets)), ..., targets], 0.0)
    total = chosen.sum(axis=(1, 2))
    inside = (chosen * shares[..., 0]).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.maximum(total, 1e-12), 0.0)


def peak_inside_cells(cams: np.ndarray, shares: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Whether each film's explained-class map peaks in a cell that is mostly lung.

    Args:
        cams: (B, h, w, C) maps.
        shares: (B, h, w, 2) lung and infection shares per cell.
        targets: (B,) explained classes.

    Returns:
        (B,) bool (False for a map with no positive cell).
    """
    chosen = cams[np.arange(len(targets)), ..., targets].reshape(len(targets), -1)
    best = chosen.argmax(axis=1)
    lung = shares[..., 0].reshape(len(targets), -1)[np.arange(len(targets)), best]
    return (chosen.max(axis=1) > 0) & (lung >= 0.5)
