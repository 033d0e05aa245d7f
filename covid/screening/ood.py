"""Out-of-distribution gates: is this image like the chest X-rays the model knows?

A film is judged, first reason found wins, by

* its DICOM tags (:func:`dicom_tag_problem`): a modality that is never a chest
  radiograph, or a body part other than the chest;
* cheap checks on the decoded pixels (:func:`cheap_checks`): a colour image, a
  shape far from a chest film, a nearly blank image;
* its segmented lung fields, when a segmenter ran (:func:`lung_problem`);
* the Mahalanobis distance of the model's pooled features to the training
  split's (:mod:`covid.model.ood_stats`, fitted by ``python -m covid.fit_ood``),
  above the threshold recorded with the statistics.

The pipeline takes any :class:`OODGate`; :func:`load_detector` builds the one a
model ships with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from covid.inputs.decode import DecodedImage
from covid.model.ood_stats import OODStats, mahalanobis_score, read_model_stats

if TYPE_CHECKING:
    from covid.model.lungs import LungSegmentation

ASPECT_RANGE = (0.5, 2.0)
"""Accepted width / height: chest films are roughly square (14 x 17 in, 17 x 14 in)."""

MIN_STD = 6.0
"""Smallest pixel standard deviation (0-255) of a real film. The 13,156 shared
training X-rays have 14.1 at least; a blank or near-uniform image has far less."""

NON_CHEST_MODALITIES = {"CT": "CT", "MR": "MR", "US": "ultrasound", "NM": "nuclear medicine",
                        "PT": "PET"}
"""DICOM Modality values that are never a chest radiograph, with plain names."""

CHEST_BODY_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "TORAX", "PORT CHEST", "CHEST PA",
    "CHEST AP", "PECHO", "THORAX PA",
})
"""BodyPartExamined values accepted as a chest (upper-cased)."""


@dataclass(frozen=True)
class OODResult:
    """The verdict on one image.

    Attributes:
        flagged: Whether the image looks unlike the training X-rays.
        score: Mahalanobis score (NaN when no statistics or features were used).
        reason: Why it was flagged, in plain words; None when not flagged.
    """

    flagged: bool
    score: float
    reason: str | None = None


class OODGate(Protocol):
    """What the screening pipeline asks of an out-of-distribution detector."""

    def assess(
        self,
        decoded: DecodedImage,
        features: np.ndarray | None,
        lungs: LungSegmentation | None = None,
    ) -> OODResult:
        """Judges one image from its pixels and tags, its (D,) features and its lungs."""
        ...


def cheap_checks(decoded: DecodedImage) -> str | None:
    """Pixel-level reasons an image cannot be a chest X-ray.

    Args:
        decoded: The decoded image ((H, W) uint8 pixels and its colour flag).

    Returns:
        The reason in plain words, or None when nothing is wrong.
    """
    if decoded.is_color:
        return "it is a colour image; chest X-rays are grey."
    height, width = decoded.pixels.shape[:2]
    aspect = width / height
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return (f"its shape ({width} x {height} pixels) is far from a chest film's "
                "(roughly square).")
    step = max(1, max(height, width) // 512)
    if float(decoded.pixels[::step, ::step].std()) < MIN_STD:
        return "it is nearly blank (almost no contrast)."
    return None


def dicom_tag_problem(info: dict[str, str]) -> str | None:
    """Why a DICOM's own tags say it is not a chest radiograph, or None.

    Args:
        info: The safe DICOM fields of a decoded image (empty for PNG and JPEG).

    Returns:
        A reason naming the tag and its value, or None.
    """
    modality = info.get("Modality", "").strip().upper()
    if modality in NON_CHEST_MODALITIES:
        return (f"its DICOM tag Modality is {modality} ({NON_CHEST_MODALITIES[modality]}), "
                "not a radiograph.")
    part = info.get("BodyPartExamined", "").strip().upper()
    if part and part not in CHEST_BODY_PARTS:
        return f"its DICOM tag BodyPartExamined is {part}, not the chest."
    return None


def lung_problem(lungs: LungSegmentation | None) -> str | None:
    """Why the segmented lung fields are implausible, or None (also when no segmenter ran).

    Args:
        lungs: The film's lung segmentation, or None.
    """
    if lungs is None or lungs.problem is None:
        return None
    return f"no plausible pair of lung fields: {lungs.problem}."


class OODDetector:
    """Flags images unlike the training X-rays: tags, cheap checks, lungs, then Mahalanobis.

    An :class:`OODGate`.

    Attributes:
        stats: Fitted statistics, or None for the tag, pixel and lung checks only.
        threshold: Scores above it are flagged (NaN: never flagged by score).
    """

    def __init__(self, stats: OODStats | None = None, threshold: float | None = None) -> None:
        self.stats = stats
        if threshold is None:
            threshold = stats.threshold if stats is not None else math.nan
        self.threshold = float(threshold)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis scores of a batch.

        Args:
            features: (N, D) features.

        Returns:
            (N,) float64 scores, NaN when the detector has no statistics.
        """
        features = np.asarray(features)
        if self.stats is None:
            return np.full(len(features), math.nan)
        return mahalanobis_score(self.stats, features)

    def assess(self, decoded: DecodedImage, features: np.ndarray | None,
               lungs: LungSegmentation | None = None) -> OODResult:
        """Judges one image: DICOM tags, cheap pixel checks, lung fields, then features.

        Args:
            decoded: The decoded image.
            features: (D,) pooled features of the image, or None.
            lungs: Its lung segmentation, or None.

        Returns:
            Flagged with the first reason found, or not flagged.
        """
        score = math.nan
        if features is not None and self.stats is not None:
            score = float(self.score(np.asarray(features).reshape(1, -1))[0])
        reason = dicom_tag_problem(decoded.info) or cheap_checks(decoded) or lung_problem(lungs)
        if reason is None and score > self.threshold:  # False when either is NaN
            reason = ("it does not look like the chest X-rays the model was trained on "
                      f"(feature distance {score:.0f}, above the limit {self.threshold:.0f}).")
        return OODResult(flagged=reason is not None, score=score, reason=reason)


def load_detector(model_path: str | Path) -> OODDetector:
    """The detector for a model, from the statistics its metadata names.

    Args:
        model_path: The ``.keras`` file, with its metadata JSON beside it.

    Returns:
        The detector; without statistics (tags, pixels and lungs only) when the
        model ships none.

    Raises:
        covid.model.network.ModelFileError: The metadata is missing or malformed, or the
            statistics file it names is missing, altered or unreadable.
    """
    return OODDetector(read_model_stats(model_path))
