"""Heat-map and contour overlays of class activation maps on X-rays.

Pure array functions (numpy, matplotlib colormaps, contourpy, Pillow): nothing
is written to disk and no figure is opened.
"""

from __future__ import annotations

from collections.abc import Sequence

import contourpy
import matplotlib
import numpy as np
from PIL import Image, ImageDraw

_COLORMAPS = ("jet", "turbo", "inferno", "magma", "viridis", "hot")
DEFAULT_OPACITY = 0.6
"""The map's opacity at its peak on the page, in reports and in the PACS capture (the
opacity follows the map, so the film shows through where the map is low)."""

RGB = tuple[int, int, int]

DEFAULT_CONTOUR_COLORS: tuple[RGB, ...] = ((255, 215, 0), (255, 48, 48))
"""Gold for the lower level, red for the upper one."""


def colormap_names() -> list[str]:
    """Colormaps offered in the interface, the Grad-CAM convention (jet) first."""
    return list(_COLORMAPS)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 image -> (H, W, 3) uint8 copy."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, np.newaxis], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"expected a (H, W), (H, W, 1) or (H, W, 3) image, got {image.shape}")


def _size_of(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or (height, width) pair -> a validated (height, width)."""
    height, width = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(height), int(width)


def _resize_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map in [0, 1] -> (H, W) float32 map in [0, 1], bilinear."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"expected a non-empty (h, w) map, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("the map has NaN or infinite values")
    cam = np.clip(cam, 0.0, 1.0)
    if cam.shape != size:
        resized = Image.fromarray(cam).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        cam = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return cam


def _colormap(name: str) -> matplotlib.colors.Colormap:
    """The matplotlib colormap called ``name``."""
    try:
        return matplotlib.colormaps[name]
    except KeyError as err:
        raise ValueError(f"unknown colormap {name!r}") from err


def heatmap_only(
    cam: np.ndarray, colormap: str = "jet", size: int | Sequence[int] | None = None
) -> np.ndarray:
    """Colours a map.

    Args:
        cam: (h, w) float map in [0, 1] (values outside are clipped).
        colormap: A matplotlib colormap name.
        size: Output (height, width), a side for a square, or None for (h, w).

    Returns:
        (H, W, 3) uint8 RGB image.

    Raises:
        ValueError: Bad map shape or values, unknown colormap or bad size.
    """
    cmap = _colormap(colormap)
    shape = _size_of(size) if size is not None else np.shape(cam)[:2]
    cam = _resize_cam(cam, tuple(shape))
    return cmap(cam, bytes=True)[:, :, :3]


def overlay_heatmap(
    image: np.ndarray, cam: np.ndarray, colormap: str = "jet", opacity: float = DEFAULT_OPACITY,
    follow_map: bool = True,
) -> np.ndarray:
    """Blends a coloured map over an image.

    ``result = (1 - a) * image + a * colormap(cam)``, with the map resized to the
    image and ``a = opacity * cam`` (``follow_map``, the default), so that the film
    stays readable where the map is low and the colour is strongest at its peak; or
    ``a = opacity`` everywhere. Only the blending follows the map: the colours are
    the unaltered map's.

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3) uint8 image.
        cam: (h, w) float map in [0, 1].
        colormap: A matplotlib colormap name.
        opacity: Weight of the coloured map (at the map's peak with ``follow_map``),
            in [0, 1].
        follow_map: Whether the weight follows the map's value.

    Returns:
        (H, W, 3) uint8 RGB image.

    Raises:
        ValueError: Opacity outside [0, 1], unknown colormap, bad shapes or dtype.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rgb = _to_rgb(image)
    colour = heatmap_only(cam, colormap, rgb.shape[:2])
    alpha = np.float32(opacity)
    if follow_map:
        alpha = opacity * _resize_cam(cam, rgb.shape[:2])[:, :, np.newaxis]
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _level_colors(levels: Sequence[float], color: RGB | Sequence[RGB] | None) -> list[RGB]:
    """One RGB colour per contour level."""
    if color is None:
        palette = DEFAULT_CONTOUR_COLORS
        return [palette[min(i, len(palette) - 1)] for i in range(len(levels))]
    if len(color) == 3 and all(isinstance(c, int | np.integer) for c in color):
        return [tuple(int(c) for c in color)] * len(levels)
    if len(color) != len(levels):
        raise ValueError(f"expected one colour or {len(levels)} colours, got {len(color)}")
    return [tuple(int(c) for c in rgb) for rgb in color]


def contour_lines(cam: np.ndarray, level: float) -> list[np.ndarray]:
    """Iso-lines of a map at one level.

    Args:
        cam: (H, W) float map.
        level: The iso-value.

    Returns:
        (M, 2) float arrays of (x, y) = (column, row) pixel coordinates.
    """
    generator = contourpy.contour_generator(z=np.asarray(cam, np.float64), line_type="Separate")
    return list(generator.lines(level))


def contour_overlay(
    image: np.ndarray,
    cam: np.ndarray,
    levels: Sequence[float] = (0.5, 0.75),
    color: RGB | Sequence[RGB] | None = None,
    width: int = 1,
) -> np.ndarray:
    """Draws iso-lines of a map over an image, leaving the rest untouched.

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3) uint8 image.
        cam: (h, w) float map in [0, 1], resized to the image.
        levels: Iso-values in (0, 1).
        color: One RGB colour for all levels, one per level, or None for the
            default (gold, then red).
        width: Line width in pixels.

    Returns:
        (H, W, 3) uint8 RGB image.

    Raises:
        ValueError: Levels outside (0, 1), bad colours, width, shapes or dtype.
    """
    if not levels or not all(0.0 < level < 1.0 for level in levels):
        raise ValueError(f"levels must be in (0, 1), got {levels}")
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    rgb = _to_rgb(image)
    cam = _resize_cam(cam, rgb.shape[:2])
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    for level, rgb_colour in zip(levels, _level_colors(levels, color), strict=True):
        for line in contour_lines(cam, level):
            draw.line([tuple(point) for point in line.tolist()], fill=rgb_colour, width=width)
    return np.asarray(canvas, dtype=np.uint8).copy()
