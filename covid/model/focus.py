"""From films to the classifier's lung-focused inputs: segment, then focus.

The one path from decoded films to classifier inputs, used by training,
evaluation and serving alike: the lung segmenter finds the lung fields, then
:func:`covid.inputs.preprocess.lung_focus` crops and/or attenuates as the
classifier's metadata says (``input_mode``). A classifier trained on whole films
(``input_mode == "full"``) needs no segmenter, but one is still run when given,
so that the page can show the lung fields and the share of evidence inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covid.inputs.preprocess import LungBox, lung_focus
from covid.model.lungs import LungSegmentation, LungSegmenter


@dataclass(frozen=True)
class FocusedFilm:
    """One film made ready for the classifier.

    Attributes:
        x: (S, S, 1) uint8 classifier input.
        box: The film region the input shows (the whole film for ``full``).
        lungs: The lung segmentation at the film's resolution, or None when no
            segmenter ran.
        fallback: True where the input mode needs lungs and the segmenter found
            none: ``x`` is then the whole film (as ``full`` makes it), and
            ``lungs`` says why for the out-of-distribution gate.
    """

    x: np.ndarray
    box: LungBox
    lungs: LungSegmentation | None
    fallback: bool = False


def focus_films(
    films: list[np.ndarray],
    size: int,
    mode: str,
    segmenter: LungSegmenter | None,
    contrast: str = "none",
) -> list[FocusedFilm]:
    """Segments and focuses a batch of films.

    Args:
        films: (H, W) uint8 grayscale films of any sizes.
        size: The classifier's input side.
        mode: The classifier's input mode (see ``covid.inputs.preprocess.FOCUS_MODES``).
        segmenter: The lung segmenter; required unless ``mode == "full"``.
        contrast: The classifier's ``input_contrast`` (``none`` for v3 and earlier).

    Returns:
        One :class:`FocusedFilm` per film (a whole-film ``fallback`` where the
        mode needs lungs and none were found).

    Raises:
        ValueError: A lung-focused mode without a segmenter.
    """
    if mode != "full" and segmenter is None:
        raise ValueError(f"input mode {mode!r} needs the lung segmenter")
    lungs = segmenter.segment_batch(films) if segmenter is not None else [None] * len(films)
    return [focus_film(f, seg, size, mode, contrast) for f, seg in zip(films, lungs, strict=True)]


def focus_film(
    film: np.ndarray, lungs: LungSegmentation | None, size: int, mode: str,
    contrast: str = "none",
) -> FocusedFilm:
    """Focuses one film given its lung segmentation (see :func:`focus_films`).

    Args:
        film: (H, W) uint8 grayscale film.
        lungs: Its segmentation, or None where no segmenter ran (``full`` only).
        size: The classifier's input side.
        mode: The classifier's input mode.
        contrast: The classifier's ``input_contrast``.

    Returns:
        The focused film; the whole film, marked ``fallback``, where the mode
        needs lungs and none were found.
    """
    if mode != "full" and (lungs is None or lungs.box is None):
        x, box = lung_focus(film, None, size, "full", contrast=contrast)
        return FocusedFilm(x, box, lungs, fallback=True)
    x, box = lung_focus(film, None if lungs is None else lungs.mask, size, mode,
                        contrast=contrast)
    return FocusedFilm(x, box, lungs)
