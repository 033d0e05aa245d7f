"""Where a map's evidence lies on the film: back onto the film, and inside the lungs or not.

A classifier that sees a lung crop gives a map over that crop; :func:`cam_to_film`
places it back on the whole film, at the film's resolution, with zero evidence
where the classifier saw nothing. The map is never masked, cropped or reweighted
to look better: :func:`energy_inside` and :func:`peak_inside` measure the
unaltered map against a mask, and :func:`lung_outline` only draws the lungs'
edge for display.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from covid.inputs.preprocess import LungBox

CAUTION_SHARE = 0.5
"""Below this share of evidence inside the lungs, the page cautions the reader."""


def cam_to_film(cam: np.ndarray, box: LungBox, shape: tuple[int, int]) -> np.ndarray:
    """Places a map over a classifier input back onto the film it came from.

    Args:
        cam: (S, S) float map in [0, 1] over the classifier's input.
        box: The film region the input showed.
        shape: The film's (H, W).

    Returns:
        (H, W) float32 map in [0, 1]; zero outside the box.
    """
    height, width = shape
    resized = np.asarray(
        Image.fromarray(np.asarray(cam, np.float32), mode="F").resize(
            (box.side, box.side), Image.Resampling.BILINEAR
        )
    )
    out = np.zeros((height, width), np.float32)
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.top + box.side, height), min(box.left + box.side, width)
    if bottom > top and right > left:
        out[top:bottom, left:right] = resized[
            top - box.top : bottom - box.top, left - box.left : right - box.left
        ]
    return np.clip(out, 0.0, 1.0)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool)
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """The share of a map's energy (its sum) that lies inside a mask.

    Args:
        cam: (H, W) non-negative map.
        mask: (h, w) bool mask, resized (nearest) to the map's shape if needed.

    Returns:
        A share in [0, 1]; 0.0 for a map with no energy at all.
    """
    cam = np.asarray(cam, np.float64)
    total = cam.sum()
    if total <= 0:
        return 0.0
    return float(cam[_resize_mask(mask, cam.shape)].sum() / total)


def peak_inside(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's highest point lies inside a mask (False for an empty map)."""
    cam = np.asarray(cam)
    if cam.max() <= 0:
        return False
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(_resize_mask(mask, cam.shape)[row, col])


def lung_outline(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The edge of a mask, for drawing over an image.

    Args:
        mask: (H, W) bool mask.
        width: Line width in pixels (None: about 0.4% of the longer side, at least 1).

    Returns:
        (H, W) bool array, True on the mask's inner edge.
    """
    mask = np.asarray(mask, bool)
    width = width or max(1, round(max(mask.shape) / 250))
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def draw_outline(
    rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 255),
    width: int | None = None,
) -> np.ndarray:
    """Draws a mask's outline onto an RGB image.

    Args:
        rgb: (H, W, 3) uint8 image.
        mask: (h, w) bool mask, resized (nearest) to the image if needed.
        color: The line's RGB colour.
        width: Line width (see :func:`lung_outline`).

    Returns:
        (H, W, 3) uint8 copy with the outline drawn.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[lung_outline(_resize_mask(mask, rgb.shape[:2]), width)] = color
    return out


EVIDENCE_MEANING = (
    "The share is the part of the map's total weight that falls inside the segmented lung "
    "fields; a model that reads the lungs puts most of its evidence there, so a low share "
    "means the result rests on something else on the film (bones, tubes, text markers, "
    "borders) and deserves suspicion."
)
"""One sentence on what the share of evidence inside the lungs means (for the report)."""


def share_percent(share: float) -> int:
    """A share as a whole percentage, rounded down (49.9% shows as 49, never as 50)."""
    return int(np.floor(100.0 * float(share) + 1e-9))


def evidence_sentence(share: float | None) -> str | None:
    """E.g. "62% of the evidence lies inside the lung fields" (None without lungs).

    Args:
        share: The share of the shown map's energy inside the lungs, in [0, 1],
            or None when no lungs were segmented.
    """
    if share is None:
        return None
    return f"{share_percent(share)}% of the evidence lies inside the lung fields"


def evidence_caution(share: float | None) -> str | None:
    """The caution shown when less than half of the evidence lies in the lungs, else None.

    Args:
        share: The share of the shown map's energy inside the lungs, or None.

    Returns:
        A plain caution below :data:`CAUTION_SHARE`; None at or above it, and
        None when no lungs were segmented.
    """
    if share is None or share >= CAUTION_SHARE:
        return None
    return (f"Only {share_percent(share)}% of the evidence lies inside the lung fields: the "
            "model's evidence lies mostly outside the lungs, so treat this result with "
            "suspicion.")
