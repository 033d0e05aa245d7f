"""The opacity segmenter, and the extent and grade of the opacities it finds.

A separate segmentation, not the classifier's evidence: a U-Net (the lung
segmenter's network, :func:`covid.model.lungs.build_unet`) trained on COVID-QU-Ex's
radiologists' infection masks of COVID-19 films and the empty masks of normal
films. It sees the lungs' square box only, cut by :func:`opacity_input`, the one
crop path: training cuts it with the radiologists' lung masks, serving with the
lung segmenter's (:class:`covid.model.lungs.LungSegmentation`). Its probabilities
are put back on the film, thresholded, kept inside the lung fields and cleared
of specks.

:func:`grade` then turns a lung mask and an opacity mask into the share of each
lung covered and the modified RALE score (Wong et al., Radiology 2020): each lung
0-4 for involvement of none, < 25%, 25-50%, 50-75% or > 75%, the two added (0-8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from scipy import ndimage

from covid.inputs.preprocess import LungBox, lung_focus
from covid.model.lungs import (
    UNET_FILTERS,
    CompiledUNet,
    LungSegmentation,
    build_unet,
    load_verified,
    resize_map,
    to_film,
    work_shape,
)
from covid.model.metadata import JsonMetadata
from covid.model.network import save_with_metadata
from covid.settings import MODELS_DIR, OPACITY_MODEL_FILE

DEFAULT_OPACITY_MODEL_PATH = MODELS_DIR / OPACITY_MODEL_FILE
"""The shipped opacity segmenter, beside the package (:func:`covid.settings.settings` adds
the variable)."""

OPACITY_THRESHOLD = 0.5
"""Probability above which a pixel counts as opacity."""

MIN_COMPONENT = 0.005
"""Smallest opacity kept, as a share of the lung fields' area: smaller specks are noise."""

RALE_BANDS = (0.25, 0.50, 0.75)
"""Shares of a lung at which its modified RALE score steps up (each band includes its
lower bound): none 0, below 25% 1, 25-50% 2, 50-75% 3, 75% and over 4."""

MAX_SCORE = 8
"""The highest total modified RALE score (4 per lung)."""


def build_opacity_unet(
    input_size: int | None = None, filters: tuple[int, ...] = UNET_FILTERS
) -> keras.Model:
    """The opacity U-Net: the lung segmenter's network under its own name.

    Returns:
        A model mapping (B, S, S, 1) lung-box crops in [0, 255] to (B, S, S, 1)
        float32 opacity probabilities.
    """
    return build_unet(input_size, filters, name="opacity_unet", output="opacity")


@dataclass
class OpacityModelMetadata(JsonMetadata):
    """What a consumer of the opacity segmenter needs besides its weights.

    Attributes:
        name: Human-readable model name.
        version: Model version string.
        input_size: Square input side (the lungs' box is resized to it), in pixels.
        threshold: Probability above which a pixel is opacity.
        min_component: Smallest opacity kept, as a share of the lung fields.
        sha256: SHA-256 of the ``.keras`` file.
        trained_on: Plain-words description of the training data.
        splits: Split sizes.
        metrics: Held-out metrics (Dice, extent error, grade agreement).
        recipe: The training recipe, backend and precision included.
    """

    name: str = "Opacity U-Net"
    version: str = "0"
    input_size: int = 128
    threshold: float = OPACITY_THRESHOLD
    min_component: float = MIN_COMPONENT
    sha256: str = ""
    trained_on: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


def save_opacity_model(
    model: keras.Model, metadata: OpacityModelMetadata, path: str | Path
) -> OpacityModelMetadata:
    """Saves the segmenter without optimizer state, and its metadata with the SHA-256."""
    return save_with_metadata(model, metadata, path)


def load_opacity_model(
    path: str | Path = DEFAULT_OPACITY_MODEL_PATH,
) -> tuple[keras.Model, OpacityModelMetadata]:
    """Loads the segmenter after checking its SHA-256 against its metadata.

    Raises:
        ModelFileError: A file is missing or malformed, or the SHA-256 differs.
    """
    return load_verified(path, OpacityModelMetadata, "opacity model")


# ------------------------------------------------------------------ extent and grade


@dataclass(frozen=True)
class Severity:
    """How much of the lungs the opacities cover.

    Right and left are the patient's: on a posterior-anterior film the patient's
    right lung is on the image's left.

    Attributes:
        right: Share (0-1) of the right lung field covered, or None when no right lung.
        left: Share (0-1) of the left lung field covered, or None when no left lung.
        extent: Share (0-1) of both lung fields together covered (0 without lungs).
        right_score: The right lung's modified RALE score, 0-4 (0 when missing).
        left_score: The left lung's, 0-4 (0 when missing).
        score: Their sum, 0-8.
    """

    right: float | None
    left: float | None
    extent: float
    right_score: int
    left_score: int
    score: int

    def summary(self) -> str:
        """The figures in words, e.g. ``right lung 35% · left lung 10% · score 3/8``."""
        sides = [f"{name} lung {'not found' if share is None else f'{share:.0%}'}"
                 for name, share in (("right", self.right), ("left", self.left))]
        return " · ".join([*sides, f"score {self.score}/{MAX_SCORE}"])


def lung_score(share: float | None) -> int:
    """One lung's modified RALE score (0-4) from the share of it covered (None: no lung)."""
    if share is None or share <= 0:
        return 0
    return 1 + int(np.searchsorted(RALE_BANDS, share, side="right"))


def split_lungs(lungs: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The patient's right and left lung fields: the mask's two largest components.

    The component further to the image's left is the patient's right lung (a PA
    film). A lone component is the lung on its side of the image's midline.

    Args:
        lungs: (H, W) bool lung mask.

    Returns:
        ``(right, left)`` (H, W) bool masks, each None when that lung is missing.
    """
    labels, count = ndimage.label(lungs)
    if count == 0:
        return None, None
    sizes = ndimage.sum_labels(lungs, labels, index=np.arange(1, count + 1))
    keep = 1 + np.argsort(sizes)[::-1][:2]
    cols = [ndimage.center_of_mass(lungs, labels, int(k))[1] for k in keep]
    fields = [labels == k for _, k in sorted(zip(cols, keep, strict=True))]
    if len(fields) == 2:
        return fields[0], fields[1]
    return (fields[0], None) if cols[0] < lungs.shape[1] / 2 else (None, fields[0])


def grade(lungs: np.ndarray, opacity: np.ndarray) -> Severity:
    """The share of each lung covered by opacity, and the modified RALE score.

    Only opacity inside the two lung fields counts.

    Args:
        lungs: (H, W) bool lung mask.
        opacity: (H, W) bool opacity mask.

    Returns:
        The :class:`Severity`.

    Raises:
        ValueError: The masks differ in shape.
    """
    lungs, opacity = np.asarray(lungs, bool), np.asarray(opacity, bool)
    if lungs.shape != opacity.shape:
        raise ValueError(f"lung and opacity masks differ in shape: {lungs.shape} and "
                         f"{opacity.shape}")
    fields = split_lungs(lungs)
    right, left = (None if f is None else float((opacity & f).sum() / f.sum()) for f in fields)
    present = [f for f in fields if f is not None]
    area = sum(int(f.sum()) for f in present)
    extent = sum(int((opacity & f).sum()) for f in present) / area if area else 0.0
    right_score, left_score = lung_score(right), lung_score(left)
    return Severity(right, left, float(extent), right_score, left_score, right_score + left_score)


# ------------------------------------------------------------------ the segmenter


def opacity_input(film: np.ndarray, lungs: np.ndarray, size: int) -> tuple[np.ndarray, LungBox]:
    """The one crop path into the opacity U-Net: the lungs' square box, resized.

    Args:
        film: (H, W) uint8 film.
        lungs: (H, W) bool non-empty lung mask (the radiologists' in training, the
            lung segmenter's in serving).
        size: The network's input side.

    Returns:
        ``(x, box)``: the (size, size, 1) uint8 input and the film region it shows.
    """
    return lung_focus(film, lungs, size, "crop")


def _paste(values: np.ndarray, top: int, left: int, shape: tuple[int, int]) -> np.ndarray:
    """A square map placed at (top, left) on a zero image of ``shape``, cut at its edges."""
    out = np.zeros(shape, np.float32)
    side = values.shape[0]
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, shape[0]), min(left + side, shape[1])
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = values[r0 - top : r1 - top, c0 - left : c1 - left]
    return out


def opacity_from_probs(
    probs: np.ndarray,
    box: LungBox,
    film_shape: tuple[int, int],
    lungs: np.ndarray,
    threshold: float = OPACITY_THRESHOLD,
    min_component: float = MIN_COMPONENT,
) -> np.ndarray:
    """Puts the network's map back on the film, inside the lungs, without specks.

    Args:
        probs: (S, S) opacity probabilities over ``box``.
        box: The film region the network saw, in film pixels.
        film_shape: The film's (H, W).
        lungs: (h, w) bool lung mask at the resolution wanted (the film's, or
            smaller with the same aspect).
        threshold: Probability above which a pixel is opacity.
        min_component: Smallest connected opacity kept, as a share of ``lungs``.

    Returns:
        (h, w) bool opacity mask, inside ``lungs``.
    """
    scale = lungs.shape[0] / film_shape[0]
    side = max(1, round(box.side * scale))
    placed = _paste(resize_map(probs, side, side), round(box.top * scale),
                    round(box.left * scale), lungs.shape)
    mask = (placed > threshold) & lungs
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        small = 1 + np.flatnonzero(sizes < min_component * lungs.sum())
        mask &= ~np.isin(labels, small)
    return mask


@dataclass(frozen=True)
class OpacitySegmentation:
    """The opacities of one film.

    Attributes:
        mask: (H, W) bool mask at the film's resolution, True inside the opacities
            (always inside the lung fields).
        severity: Their extent per lung and the modified RALE score.
    """

    mask: np.ndarray
    severity: Severity


class OpacitySegmenter(CompiledUNet):
    """A loaded opacity U-Net with one compiled forward pass.

    Attributes:
        model: The wrapped Keras model (never modified).
        metadata: Its metadata (input size, threshold, metrics).
    """

    def __init__(self, model: keras.Model, metadata: OpacityModelMetadata):
        super().__init__(model, metadata.input_size)
        self.metadata = metadata

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_OPACITY_MODEL_PATH) -> OpacitySegmenter:
        """Loads a verified segmenter (see :func:`load_opacity_model`)."""
        return cls(*load_opacity_model(path))

    def segment_batch(
        self, films: Sequence[np.ndarray], lungs: Sequence[LungSegmentation | None]
    ) -> list[OpacitySegmentation | None]:
        """Outlines the opacities of films whose lungs were segmented, in one batch.

        Args:
            films: (H, W) uint8 grayscale films of any sizes.
            lungs: Their lung segmentations (:meth:`LungSegmenter.segment_batch`), None
                where none ran.

        Returns:
            One :class:`OpacitySegmentation` per film, None where no lungs were found.
        """
        if len(films) != len(lungs):
            raise ValueError(f"{len(films)} films but {len(lungs)} lung segmentations")
        todo = [i for i, seg in enumerate(lungs) if seg is not None and seg.box is not None]
        out: list[OpacitySegmentation | None] = [None] * len(films)
        if not todo:
            return out
        inputs = [opacity_input(films[i], lungs[i].mask, self.input_size) for i in todo]
        probs = self.probs_batch(np.stack([x for x, _ in inputs]))
        for i, p, (_, box) in zip(todo, probs, inputs, strict=True):
            out[i] = self._finish(p, box, lungs[i].mask)
        return out

    def segment(
        self, film: np.ndarray, lungs: LungSegmentation | None
    ) -> OpacitySegmentation | None:
        """Outlines one film's opacities (see :meth:`segment_batch`)."""
        return self.segment_batch([film], [lungs])[0]

    def _finish(self, probs: np.ndarray, box: LungBox, lungs: np.ndarray) -> OpacitySegmentation:
        """Cleans and grades at the lung segmenter's working size, then returns to the film."""
        work = work_shape(lungs.shape)
        lungs_work = lungs if work == lungs.shape else resize_map(lungs, *work) > 0.5
        meta = self.metadata
        opacity = opacity_from_probs(probs, box, lungs.shape, lungs_work, meta.threshold,
                                     meta.min_component)
        mask = to_film(opacity, lungs.shape) & lungs
        return OpacitySegmentation(mask, grade(lungs_work, opacity))
