"""Pixel operations from a decoded film to a model's input: resize, lung box, crop, contrast.

:func:`lung_focus` makes the classifier's input as its ``input_mode`` says: the
whole film resized (``full``), or the lungs' box cut out and resized (the
``crop`` modes), or the film with the outside of the lungs attenuated. It is
called for every classifier input through :mod:`covid.model.focus`, which runs
the lung segmenter first. :func:`to_model_input` resizes a whole film to a square
(the ``full`` mode, and the lung segmenter's input). Intensity normalisation
(ResNet-50's mean subtraction) happens inside the saved model itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def to_model_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resizes a whole grayscale image to a square input, without cropping.

    The aspect ratio is not kept: a film is squeezed to the square, as the
    ``full`` input mode and the lung segmenter's training films were.

    Args:
        pixels: (H, W) uint8 grayscale image.
        size: The model's input side, in pixels.

    Returns:
        (size, size, 1) uint8 array.

    Raises:
        ValueError: ``pixels`` is not a 2-D uint8 array.
    """
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 image, got {pixels.shape} {pixels.dtype}")
    if pixels.shape != (size, size):
        image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, np.newaxis]


def fit_within(pixels: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Shrinks an image for display so that its longer side is at most ``max_side``.

    Args:
        pixels: (H, W) uint8 grayscale image.
        max_side: Longest side allowed.

    Returns:
        (h, w) uint8 image with the same aspect ratio (the input itself if small enough).
    """
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


LUNG_MARGIN = 0.08
"""Margin added on every side of the lungs' bounding box, as a share of its size."""

FOCUS_MODES = ("full", "crop", "attenuate", "crop+attenuate", "crop+mask")
"""Lung-focused inputs: the whole film, the lungs' square box, the whole film with
the outside of the lungs attenuated, both together, or the box with the outside
of the (slightly grown, softened) lungs blacked out."""

CONTRASTS = ("none", "equalise", "equalise-film", "window-film", "standardise-film")
"""How the input's grey levels are standardised: kept as the film has them (v3 and
earlier), histogram-equalised over the film inside the lung box, or over the whole film
before the box is cut; windowed over the whole film (:data:`WINDOW_PERCENTILES`); or
standardised by the whole film's median and interquartile range (:data:`STANDARD_SPREAD`).

Either equalisation makes a film's exposure, contrast and processing say nothing about
its class (DeGrave et al. 2021), since it is unchanged by any increasing map of the grey
levels, but it keeps only their order. The two linear maps keep their spacing, and are
unchanged by a shift or scaling of the grey levels. The window's percentiles sit where a
darker exposure clips the film to black, so it follows exposure after all; the median
and quartiles lie inside the body, away from the clipping."""

WINDOW_PERCENTILES = (1.0, 99.0)
"""The film's percentiles that ``window-film`` stretches to black and white."""

STANDARD_SPREAD = 64.0
"""Grey levels that ``standardise-film`` gives the film's interquartile range, about
the median at 128: wide enough to use the range, narrow enough that few lung pixels
clip on films of low contrast (the model card's v4 section)."""

OUTSIDE_WEIGHT = 0.3
"""Intensity kept outside the (dilated, softened) lung fields by ``attenuate``."""


@dataclass(frozen=True)
class LungBox:
    """A square region of a film, in film pixels; it may reach past the film's edges.

    Attributes:
        top: First row.
        left: First column.
        side: Side length, in pixels.
    """

    top: int
    left: int
    side: int

    @classmethod
    def whole(cls, shape: tuple[int, int]) -> LungBox:
        """The square box that holds a whole (H, W) film, centred on it."""
        height, width = shape
        side = max(height, width)
        return cls((height - side) // 2, (width - side) // 2, side)


def lung_box(mask: np.ndarray, margin: float = LUNG_MARGIN) -> LungBox | None:
    """The square box around the lungs, with a margin, centred on them.

    Args:
        mask: (H, W) bool lung mask.
        margin: Share of the lungs' extent added on every side.

    Returns:
        The box (which may reach past the film), or None for an empty mask.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    side = round(max(height, width) * (1 + 2 * margin))
    centre_row, centre_col = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    return LungBox(round(centre_row - side / 2), round(centre_col - side / 2), side)


def crop_to_box(pixels: np.ndarray, box: LungBox) -> np.ndarray:
    """Cuts a box out of an image, with zeros where the box reaches past it.

    Args:
        pixels: (H, W) image of any dtype.
        box: The region.

    Returns:
        (side, side) array of the image's dtype.
    """
    out = np.zeros((box.side, box.side), dtype=pixels.dtype)
    height, width = pixels.shape
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.top + box.side, height), min(box.left + box.side, width)
    if bottom > top and right > left:
        out[top - box.top : bottom - box.top, left - box.left : right - box.left] = pixels[
            top:bottom, left:right
        ]
    return out


def _resize_float(values: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def equalise(x: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Histogram-equalises an input, the histogram taken over the film inside its box.

    Padding where the box reaches past the film stays black, so it neither
    shifts the histogram nor takes a grey level.

    Args:
        x: (S, S) uint8 input.
        inside: (S, S) bool, True where the input shows the film.

    Returns:
        (S, S) uint8 equalised input.
    """
    from PIL import ImageOps

    mask = Image.fromarray(inside.astype(np.uint8) * 255, mode="L")
    out = np.asarray(ImageOps.equalize(Image.fromarray(x, mode="L"), mask=mask))
    return np.where(inside, out, 0).astype(np.uint8)


def window(pixels: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES
           ) -> np.ndarray:
    """Stretches a film linearly so that two of its percentiles become black and white.

    Args:
        pixels: (H, W) uint8 film.
        percentiles: The low and high percentile of the film's grey levels.

    Returns:
        (H, W) uint8 film; a film with one grey level is returned unchanged.
    """
    low, high = np.percentile(pixels, percentiles)
    if high <= low:
        return pixels
    out = (pixels.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def standardise(pixels: np.ndarray, spread: float = STANDARD_SPREAD) -> np.ndarray:
    """Maps a film's median to grey 128 and its interquartile range to ``spread`` levels.

    Args:
        pixels: (H, W) uint8 film.
        spread: Grey levels between the mapped quartiles.

    Returns:
        (H, W) uint8 film; a film whose quartiles coincide is returned unchanged.
    """
    low, median, high = np.percentile(pixels, (25, 50, 75))
    if high <= low:
        return pixels
    out = 128.0 + (pixels.astype(np.float32) - median) * (spread / (high - low))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_FILM_STANDARDISERS = {
    "equalise-film": lambda pixels: equalise(pixels, np.ones(pixels.shape, bool)),
    "window-film": window,
    "standardise-film": standardise,
}
"""The standardisations applied to the whole film, before the box is cut, by name."""


def _soft_weight(mask: np.ndarray, outside: float) -> np.ndarray:
    """Per-pixel weights: 1 in the (slightly dilated) lungs, ``outside`` far from them."""
    from scipy import ndimage

    side = mask.shape[0]
    grown = ndimage.binary_dilation(mask, iterations=max(1, side // 25))
    soft = ndimage.gaussian_filter(grown.astype(np.float32), sigma=max(1.0, side / 80))
    return outside + (1.0 - outside) * np.clip(soft, 0.0, 1.0)


def lung_focus(
    pixels: np.ndarray,
    mask: np.ndarray | None,
    size: int,
    mode: str = "crop+attenuate",
    outside: float = OUTSIDE_WEIGHT,
    contrast: str = "none",
) -> tuple[np.ndarray, LungBox]:
    """Makes the classifier's input from a film and its lung mask, as ``mode`` says.

    Training, evaluation and serving reach it through
    :func:`covid.model.focus.focus_film`.

    Args:
        pixels: (H, W) uint8 film.
        mask: (H, W) bool lung mask (ignored, and may be None, for ``full``).
        size: The classifier's input side.
        mode: One of :data:`FOCUS_MODES`.
        outside: Intensity weight outside the lungs for the ``attenuate`` modes.
        contrast: One of :data:`CONTRASTS`: ``equalise`` over the box (the whole
            film for ``full``); the ``-film`` ones over the film before the box
            is cut; each before any attenuation.

    Returns:
        ``(x, box)``: the (size, size, 1) uint8 model input, and the film region
        it shows, with which a map over the input is placed back on the film.

    Raises:
        ValueError: Unknown mode, bad image, or a missing or empty mask where
            the mode needs one.
    """
    if mode not in FOCUS_MODES:
        raise ValueError(f"unknown focus mode {mode!r}; expected one of {FOCUS_MODES}")
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {CONTRASTS}")
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 image, got {pixels.shape} {pixels.dtype}")
    if contrast in _FILM_STANDARDISERS:
        pixels = _FILM_STANDARDISERS[contrast](pixels)
    if mode == "full":
        x = to_model_input(pixels, size)
        if contrast == "equalise":
            x = equalise(x[..., 0], np.ones((size, size), bool))[..., np.newaxis]
        return x, LungBox.whole(pixels.shape)
    if mask is None or mask.shape != pixels.shape or not mask.any():
        raise ValueError(f"mode {mode!r} needs a non-empty lung mask of the film's shape")
    box = lung_box(mask) if mode.startswith("crop") else LungBox.whole(pixels.shape)
    film = crop_to_box(pixels, box).astype(np.float32)
    lungs = crop_to_box(mask.astype(bool), box)
    film = _resize_float(film, size)
    if contrast == "equalise":
        on_film = _resize_float(crop_to_box(np.ones(pixels.shape, np.float32), box), size) > 0.5
        film = equalise(np.clip(np.rint(film), 0, 255).astype(np.uint8), on_film)
        film = film.astype(np.float32)
    if mode.endswith(("attenuate", "mask")):
        lungs_small = _resize_float(lungs.astype(np.float32), size) > 0.5
        film = film * _soft_weight(lungs_small, 0.0 if mode.endswith("mask") else outside)
    x = np.clip(np.rint(film), 0, 255).astype(np.uint8)
    return x[:, :, np.newaxis], box
