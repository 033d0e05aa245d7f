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
from covid.training.lung_data import FocusedSet, match_masks

LOG = logging.getLogger("covid.training.guided")

MASK_FOLDERS = {0: "COVID-19", 1: "Non-COVID", 2: "Normal"}
"""COVID-QU-Ex class folder holding each class's radiologists' masks."""


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
        for label, folder in MASK_FOLDERS.items():
            chosen = np.flatnonzero(labels == label)
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


MAP_LOSS = "absolute"
"""Which map mass :class:`OutsideLungsLoss` weighs, as each epoch's history records it
(epochs without the entry were trained on the positive part)."""


@keras.saving.register_keras_serializable(package="covid")
class OutsideLungsLoss(keras.losses.Loss):
    """Share of the maps' mass outside the lungs (and of COVID-19's outside the infection).

    ``y_true`` is (B, h, w, 2): the share of each map cell covered by the lungs and
    by the infection. ``y_pred`` is (B, h, w, C) maps. The loss of one film is the
    mean over classes of the share of ``|map|`` outside the lungs, plus
    ``infection_weight`` times the share of the positive COVID-19 map (class 0)
    outside the infection, for films with an infection mask.

    The lung term weighs the map's absolute value, not its positive part: a share
    of ``relu(map)`` is zero for a map negative everywhere, and the softmax does not
    see an offset common to all classes, so a network can meet that loss by pushing
    every map below zero (run v3 did, by 118,400 images) and leave Grad-CAM, which
    keeps the positive part, nothing but noise to show. An offset adds ``|map|``
    outside the lungs too, so here it costs.
    """

    def __init__(self, infection_weight: float = 0.5, name: str = "outside_lungs",
                 **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.infection_weight = infection_weight

    def call(self, y_true, y_pred):
        """Per-film loss (see the class docstring)."""
        ops = keras.ops
        maps = ops.cast(y_pred, "float32")
        mass = ops.abs(maps)
        lungs, infection = y_true[..., 0:1], y_true[..., 1]
        outside = ops.sum(mass * (1.0 - lungs), axis=(1, 2)) / (ops.sum(mass, axis=(1, 2)) + 1e-6)
        covid = ops.relu(maps[..., 0])
        off_target = ops.sum(covid * (1.0 - infection), axis=(1, 2)) / (
            ops.sum(covid, axis=(1, 2)) + 1e-6)
        has_infection = ops.cast(ops.sum(infection, axis=(1, 2)) > 0, "float32")
        return ops.mean(outside, axis=-1) + self.infection_weight * has_infection * off_target

    def get_config(self) -> dict:
        """Serialisable configuration."""
        return {**super().get_config(), "infection_weight": self.infection_weight}


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
