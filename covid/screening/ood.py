"""Out-of-distribution gates: is this image a chest X-ray, and one like the model knows?

The gates raise one of two flags (:data:`covid.model.decision.FLAGS`); the
decision rule alone says what each means. A film is **not a chest X-ray**
(``not_chest``), first reason found wins, when

* its DICOM tags say so (:func:`dicom_tag_problem`): a modality that is never a
  chest radiograph, or a body part other than the chest;
* cheap checks on the decoded pixels say so (:func:`cheap_checks`): a colour
  image, a shape far from a chest film, a nearly blank image;
* the lung segmenter, when one ran, finds no lung field at all
  (:func:`has_lung_field`).

Otherwise it is an **unusual chest X-ray** (``unusual``) when

* the segmenter found lung fields but no plausible pair (:func:`lung_problem`):
  what opacities, devices, a child's film or poor contrast do to a segmenter;
* or the Mahalanobis distance of the model's pooled features to the training
  split's (:mod:`covid.model.ood_stats`, fitted by ``python -m covid.fit_ood``)
  is above the threshold recorded with the statistics.

Neither can tell a photograph from a chest film with lines, tubes or severe
disease, so neither alone says "not a chest X-ray": the sickest patients' films
are the ones most unlike the training films.

The pipeline takes any :class:`OODGate`; :func:`load_detector` builds the one a
model ships with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import ndimage

from covid.inputs.decode import DecodedImage
from covid.model.decision import FLAG_NONE, FLAG_NOT_CHEST, FLAG_UNUSUAL
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

MIN_LUNG_FIELD = 0.03
"""Smallest share of the film one lung field covers. The largest field the shipped
segmenter finds in real films covers at least 3.9% of the film (2,936 training films,
11 of them without a plausible pair); in the non-chest test images (photos, text,
noise, an MR slice) at most 2.5%."""

CHEST_BODY_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "TORAX", "PORT CHEST", "CHEST PA",
    "CHEST AP", "PECHO", "THORAX PA",
})
"""BodyPartExamined values accepted as a chest (upper-cased)."""


@dataclass(frozen=True)
class OODResult:
    """The verdict on one image.

    Attributes:
        flag: One of :data:`covid.model.decision.FLAGS`.
        score: Mahalanobis score (NaN when no statistics or features were used).
        reason: Why it was flagged, in plain words (a sentence after "Not a chest
            X-ray:" or "Caution:"); None when not flagged.
    """

    flag: str
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


def has_lung_field(mask: np.ndarray) -> bool:
    """Whether a lung mask holds at least one field the size of a lung.

    Args:
        mask: (H, W) bool lung mask.

    Returns:
        True when its largest connected field covers :data:`MIN_LUNG_FIELD` of the film.
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return False
    largest = int(np.bincount(labels.ravel())[1:].max())
    return largest >= MIN_LUNG_FIELD * mask.size


def lung_verdict(lungs: LungSegmentation | None) -> tuple[str, str] | None:
    """The flag and reason the lung fields give, or None when they pass (or none were segmented).

    No lung field at all: not a chest X-ray. Fields that make no plausible
    pair: an unusual chest X-ray, as severe disease or devices can make them.
    """
    problem = lung_problem(lungs)
    if problem is None:
        return None
    if not has_lung_field(lungs.mask):
        return FLAG_NOT_CHEST, problem
    return FLAG_UNUSUAL, (f"its lung fields could not be outlined as a pair ({lungs.problem}), "
                          "as severe disease, devices, a child's film or poor contrast can cause.")


def distance_caution(score: float, threshold: float) -> str:
    """The reason given for an unusual chest X-ray: only its feature distance is high."""
    return (f"it is unlike the chest X-rays the model was trained on (feature distance "
            f"{score:.0f}, above the limit {threshold:.0f}), as films with devices, other "
            "equipment or severe disease can be.")


class OODDetector:
    """Flags films: not a chest X-ray (tags, pixels, lungs), else unusual (Mahalanobis).

    An :class:`OODGate`.

    Attributes:
        stats: Fitted statistics, or None for the tag, pixel and lung checks only.
        threshold: Scores above it flag an unusual chest X-ray (NaN: never).
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
            ``not_chest`` with the first reason found by the tags, pixels or
            lungs (none found); else ``unusual`` with every reason found (lung
            fields that make no pair, a feature distance above the threshold);
            else ``none``.
        """
        score = math.nan
        if features is not None and self.stats is not None:
            score = float(self.score(np.asarray(features).reshape(1, -1))[0])
        reason = dicom_tag_problem(decoded.info) or cheap_checks(decoded)
        if reason is not None:
            return OODResult(FLAG_NOT_CHEST, score, reason)
        flag, reason = lung_verdict(lungs) or (FLAG_NONE, None)
        if flag == FLAG_NOT_CHEST:
            return OODResult(flag, score, reason)
        cautions = [reason] if reason else []
        if score > self.threshold:  # False when either is NaN
            cautions.append(distance_caution(score, self.threshold))
        if cautions:
            return OODResult(FLAG_UNUSUAL, score, " Also, ".join(cautions))
        return OODResult(FLAG_NONE, score)


def load_detector(model_path: str | Path) -> OODDetector:
    """The detector for a model, from the statistics its metadata names.

    Args:
        model_path: The ``.keras`` file, with its metadata JSON beside it.

    Returns:
        The detector; without statistics (tags, pixels and lungs only) when the
        model ships none.

    Raises:
        covid.model.metadata.ModelFileError: The metadata is missing or malformed, or the
            statistics file it names is missing, altered or unreadable.
    """
    return OODDetector(read_model_stats(model_path))
