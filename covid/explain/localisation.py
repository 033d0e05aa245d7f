"""Where a map's evidence lies on the film: back onto the film, and inside the lungs or not.

A classifier that sees a lung crop gives a map over that crop; :func:`cam_to_film`
places it back on the whole film, at the film's resolution, with zero evidence
where the classifier saw nothing. The map is never masked, cropped or reweighted
to look better: :func:`energy_inside` and :func:`inside_own` measure the
unaltered map against a mask, and :func:`lung_outline` only draws the lungs'
edge for display.

A map's peak is also a position on the film as a share of its height and width
(:func:`peak_position`), so that it can be looked up in any film's mask, whatever
its resolution (:func:`inside_own`, :func:`inside_each`): a map that follows the
film lands in its own film's infection far more often than in other films'. The
baselines a map must beat are a map that is the same for every film
(:func:`constant_map`, the average infection mask) and peaks that pile up in one
sixteenth of the film (:func:`busiest_cell`).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    resized = resize_map(cam, (box.side, box.side))
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


def resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float map resized (bilinear) to ``shape`` (H, W); returns (H, W) float32."""
    image = Image.fromarray(np.asarray(cam, np.float32), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def peak_position(cam: np.ndarray) -> np.ndarray:
    """Where a map's highest point lies, as shares of the film's height and width.

    Args:
        cam: (H, W) map.

    Returns:
        (2,) float64 (row, column) of the peak pixel's centre, each in (0, 1); NaN
        for a map with no positive value (it has no peak to place).
    """
    cam = np.asarray(cam)
    if cam.size == 0 or cam.max() <= 0:
        return np.full(2, np.nan)
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return np.array([(row + 0.5) / cam.shape[0], (col + 0.5) / cam.shape[1]])


def _sample(mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(N,) bool: the mask at each (row, column) share; False for a NaN position.

    The pixel whose span holds the position answers, which is what a nearest-neighbour
    resize of the mask to any map's resolution would give there.
    """
    mask = np.asarray(mask, bool)
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    out = np.zeros(len(positions), bool)
    valid = np.isfinite(positions).all(axis=1)
    rows = np.minimum((positions[valid, 0] * mask.shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum((positions[valid, 1] * mask.shape[1]).astype(int), mask.shape[1] - 1)
    out[valid] = mask[rows, cols]
    return out


def inside_own(positions: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Whether each film's peak lies inside its own film's mask.

    Args:
        positions: (N, 2) peak positions (:func:`peak_position`; NaN: no peak).
        masks: N (h, w) bool masks, one per film, each at any resolution.

    Returns:
        (N,) bool.
    """
    return np.array([_sample(mask, position)[0]
                     for position, mask in zip(positions, masks, strict=True)], bool)


def inside_each(positions: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """Whether each film's peak, placed on every film, lies inside that film's mask.

    Args:
        positions: (N, 2) peak positions (:func:`peak_position`; NaN: no peak).
        masks: M (h, w) bool masks, each at any resolution.

    Returns:
        (N, M) bool: [i, j] is film i's peak inside film j's mask. The diagonal of
        a square result is :func:`inside_own`; the rest says how often a peak lands
        in an infection that is not its film's (what a prior, blind to the film, gets).
    """
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    out = np.zeros((len(positions), len(masks)), bool)
    for j, mask in enumerate(masks):
        out[:, j] = _sample(mask, positions)
    return out


def own_and_others(hits: np.ndarray) -> tuple[float | None, float | None]:
    """Mean of the diagonal and of the rest of a square (N, N) :func:`inside_each`.

    Returns:
        ``(own, others)``: how often a peak lies in its own film's mask, and in
        another film's; None where there is nothing to average (others: one film).
    """
    hits = np.asarray(hits, bool)
    n = len(hits)
    if n == 0:
        return None, None
    own = float(np.diag(hits).mean())
    others = float((hits.sum() - np.trace(hits)) / (n * n - n)) if n > 1 else None
    return own, others


def busiest_cell(positions: np.ndarray, cells: int = 4) -> tuple[float | None, tuple[int, int]]:
    """The share of peaks in the busiest cell of a cells x cells grid over the film.

    Args:
        positions: (N, 2) peak positions (:func:`peak_position`); a map without a
            peak counts among the N but in no cell.
        cells: Cells along each side (4: sixteenths of the film).

    Returns:
        ``(share, (row, column))`` of the busiest cell; ``(None, (-1, -1))`` for no film.
    """
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    valid = positions[np.isfinite(positions).all(axis=1)]
    if not len(positions):
        return None, (-1, -1)
    index = np.minimum((valid * cells).astype(int), cells - 1)
    counts = np.zeros((cells, cells), np.int64)
    np.add.at(counts, (index[:, 0], index[:, 1]), 1)
    row, col = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return float(counts[row, col] / len(positions)), (int(row), int(col))


def constant_map(masks: Sequence[np.ndarray], shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The average of masks over a common grid: a map that is the same for every film.

    Args:
        masks: N (h, w) bool masks (e.g. radiologists' infection masks), any resolution.
        shape: The grid (H, W) they are averaged on (nearest resize).

    Returns:
        (H, W) float32 in [0, 1]; zeros for no mask.
    """
    total = np.zeros(shape, np.float64)
    for mask in masks:
        total += _resize_mask(np.asarray(mask, bool), shape)
    return (total / max(len(masks), 1)).astype(np.float32)


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


OPACITY_RGB = (255, 0, 255)
"""The opacity segmenter's outline in every output (page, PDF, PACS picture): magenta,
a colour neither the X-ray's greys, the lung outline nor the jet colour map uses."""
OPACITY_COLOUR = "magenta"
""":data:`OPACITY_RGB` in words, for captions and legends."""


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
