"""Explanation sanity: where does a class activation map put its energy?

A classifier that reads the lungs should put most of its Grad-CAM energy (the
sum of the map's values) over the chest, not in the film's borders or corners,
where markers, labels, rulers and collimation edges (shortcuts a network can
learn from a database's sources) sit.

Regions, as fractions of the image's width (x) and height (y), pixel centres:

* ``central``: x in [0.15, 0.85), y in [0.10, 0.90). On a PA or AP chest film
  this box holds both lungs and the heart: the lungs span roughly the middle
  70% of the width, and from the apices (near the top, below the neck) to the
  costophrenic angles (above the bottom edge, where the abdomen starts).
* ``border``: everything outside the central box (central + border = 1).
* ``corners``: the four 15% x 15% boxes in the corners (part of the border),
  where text labels and side markers usually are.

Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CENTRAL_X = (0.15, 0.85)
"""Central box, horizontal extent, as fractions of the width."""
CENTRAL_Y = (0.10, 0.90)
"""Central box, vertical extent, as fractions of the height."""
CORNER = 0.15
"""Side of each corner box, as a fraction of the width and of the height."""
REGIONS = ("central", "border", "corners")


def _centres(n: int) -> np.ndarray:
    """(n,) pixel-centre positions as fractions of the side."""
    return (np.arange(n) + 0.5) / n


def region_masks(height: int, width: int) -> dict[str, np.ndarray]:
    """Boolean masks of the regions (see the module docstring).

    Args:
        height: Image height, in pixels.
        width: Image width, in pixels.

    Returns:
        ``{"central", "border", "corners"}`` -> (height, width) bool masks.

    Raises:
        ValueError: A side is not positive.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image sides must be positive, got {height} x {width}")
    ys, xs = _centres(height)[:, np.newaxis], _centres(width)[np.newaxis, :]
    central = ((xs >= CENTRAL_X[0]) & (xs < CENTRAL_X[1])
               & (ys >= CENTRAL_Y[0]) & (ys < CENTRAL_Y[1]))
    near_x = (xs < CORNER) | (xs >= 1.0 - CORNER)
    near_y = (ys < CORNER) | (ys >= 1.0 - CORNER)
    return {"central": central, "border": ~central, "corners": near_x & near_y}


def _check_cam(cam: np.ndarray) -> np.ndarray:
    """Validates a (H, W) finite, non-negative map; returns it as float64."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"expected a non-empty (H, W) map, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("the map has NaN or infinite values")
    if (cam < 0).any():
        raise ValueError("the map has negative values; Grad-CAM maps are non-negative")
    return cam


def energy_shares(cam: np.ndarray) -> dict[str, float]:
    """Shares of a map's total energy in the central box, the border and the corners.

    Args:
        cam: (H, W) non-negative map (e.g. a Grad-CAM in [0, 1]), at any resolution.

    Returns:
        ``{"central", "border", "corners"}`` -> share in [0, 1]; central + border
        = 1. An all-zero map gives zeros (no NaN).

    Raises:
        ValueError: ``cam`` is not 2-D, is empty, or has negative or non-finite values.
    """
    cam = _check_cam(cam)
    total = float(cam.sum())
    if total <= 0.0:
        return dict.fromkeys(REGIONS, 0.0)
    masks = region_masks(*cam.shape)
    return {name: float(cam[masks[name]].sum() / total) for name in REGIONS}


def area_shares(height: int, width: int) -> dict[str, float]:
    """The regions' area fractions: the shares a uniform map would get.

    Args:
        height: Image height, in pixels.
        width: Image width, in pixels.

    Returns:
        ``{"central", "border", "corners"}`` -> fraction of the pixels.
    """
    masks = region_masks(height, width)
    return {name: float(masks[name].mean()) for name in REGIONS}


def _mean_shares(shares: Sequence[dict[str, float]], chosen: np.ndarray) -> dict[str, object]:
    """Mean shares over the chosen maps that have energy, with counts."""
    picked = [s for s, keep in zip(shares, chosen, strict=True) if keep]
    lit = [s for s in picked if s["central"] + s["border"] > 0.0]
    means = {name: (float(np.mean([s[name] for s in lit])) if lit else None) for name in REGIONS}
    return {"n": len(picked), "n_empty": len(picked) - len(lit), **means}


def _by_class(
    shares: Sequence[dict[str, float]], indices: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, object]]:
    """Mean shares per class index."""
    return {name: _mean_shares(shares, indices == k) for k, name in enumerate(class_names)}


def _check_indices(indices: Sequence[int], n: int, n_classes: int, what: str) -> np.ndarray:
    """Validates class indices; returns them as an int array."""
    array = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(array) != n:
        raise ValueError(f"expected {n} {what}, got {len(array)}")
    if len(array) and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(f"{what} must be class indices in [0, {n_classes})")
    return array


def summarise_shares(
    shares: Sequence[dict[str, float]],
    labels: Sequence[int],
    class_names: Sequence[str],
    predicted: Sequence[int] | None = None,
) -> dict[str, object]:
    """Mean energy shares overall, per true class and per predicted class.

    Maps with no energy (all zeros) are counted in ``n_empty`` and left out of
    the means, since they say nothing about where the evidence lies.

    Args:
        shares: N dicts from :func:`energy_shares`.
        labels: (N,) true class indices.
        class_names: The C class names, in index order.
        predicted: (N,) predicted class indices, or None.

    Returns:
        ``{"overall": group, "by_class": {name: group}}`` plus ``"by_predicted"``
        when ``predicted`` is given, where a group is ``{"n", "n_empty",
        "central", "border", "corners"}``; a mean is None when its group has no
        map with energy.

    Raises:
        ValueError: Lengths differ or an index is out of range.
    """
    n = len(shares)
    true = _check_indices(labels, n, len(class_names), "labels")
    summary: dict[str, object] = {
        "overall": _mean_shares(shares, np.ones(n, dtype=bool)),
        "by_class": _by_class(shares, true, class_names),
    }
    if predicted is not None:
        guessed = _check_indices(predicted, n, len(class_names), "predictions")
        summary["by_predicted"] = _by_class(shares, guessed, class_names)
    return summary
