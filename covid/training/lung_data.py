"""Lung-focused training data, and radiologists' masks matched to the classifier's films.

:func:`focused_dataset` runs the serving path (:func:`covid.model.focus.focus_films`)
over a list of files and caches the inputs, boxes and lung masks, so that a
training run and its evaluation see exactly what the dashboard would.
:func:`match_masks` pairs films of the classifier's database with the same films
in COVID-QU-Ex (another size, another name) by perceptual hash, so that the
radiologists' lung and infection masks can judge the classifier's maps on its
own validation and test splits.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covid.inputs.decode import read_image
from covid.inputs.preprocess import LungBox
from covid.model.classes import COVID
from covid.training.catalogue import QUEX_CLASS_FOLDERS, perceptual_hashes

LOG = logging.getLogger("covid.training.lung_data")
MATCH_BITS = 24
"""Largest 256-bit pHash distance between a film and its resized copy in the other set."""


@dataclass(frozen=True)
class FocusedSet:
    """Classifier inputs for a list of files, as serving makes them.

    Attributes:
        x: (N, S, S, 1) uint8 inputs.
        boxes: (N, 3) int boxes (top, left, side) on each film.
        shapes: (N, 2) int film shapes (H, W).
        lung_area: (N,) share of each film covered by the segmented lungs.
        ok: (N,) bool, False where the segmenter found no lungs (x is then the whole film).
        lungs: N (H, W) bool lung masks at each film's resolution (None without a segmenter).
    """

    x: np.ndarray
    boxes: np.ndarray
    shapes: np.ndarray
    lung_area: np.ndarray
    ok: np.ndarray
    lungs: list[np.ndarray] | None = None

    def box(self, i: int) -> LungBox:
        """The i-th film's box."""
        return LungBox(*(int(v) for v in self.boxes[i]))


def _cache_key(paths: tuple[Path, ...], *parts: str) -> str:
    digest = hashlib.sha256("\n".join(str(p) for p in paths).encode())
    digest.update("|".join(parts).encode())
    return digest.hexdigest()[:16]


def _segmentations(paths: tuple[Path, ...], segmenter, cache_dir: Path | None, chunk: int):
    """Each file's film and lung segmentation, with the masks cached between runs."""
    from covid.inputs.preprocess import lung_box
    from covid.model.lungs import LungSegmentation

    films = [read_image(p).pixels for p in paths]
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"lungs_{_cache_key(paths, segmenter.metadata.sha256)}.npz"
        if cache.exists():
            with np.load(cache, allow_pickle=False) as stored:
                bits, problems = stored["bits"], stored["problems"]
            segs = []
            for film, packed, problem in zip(films, bits, problems, strict=True):
                mask = np.unpackbits(packed)[: film.size].reshape(film.shape).astype(bool)
                segs.append(LungSegmentation(mask, lung_box(mask), str(problem) or None))
            return films, segs
    segs = []
    for start in range(0, len(films), chunk):
        segs += segmenter.segment_batch(films[start : start + chunk])
        LOG.info("segmented %d/%d films", min(start + chunk, len(films)), len(films))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        width = max(f.size for f in films)
        bits = np.zeros((len(films), (width + 7) // 8), np.uint8)
        for i, seg in enumerate(segs):
            packed = np.packbits(seg.mask.ravel())
            bits[i, : len(packed)] = packed
        np.savez(cache, bits=bits, problems=np.asarray([s.problem or "" for s in segs]))
    return films, segs


def focused_dataset(
    paths: tuple[Path, ...],
    size: int,
    mode: str,
    segmenter,
    cache_dir: Path | None = Path(".cache"),
    chunk: int = 64,
    contrast: str = "none",
) -> FocusedSet:
    """Decodes, segments and focuses files exactly as serving does, with a cache.

    The segmentations are cached per segmenter, so that every input mode and
    size reuses them; the focusing itself is :func:`covid.model.focus.focus_film`,
    the serving path.

    Args:
        paths: N image files.
        size: Classifier input side.
        mode: Input mode (``full``, ``crop``, ``attenuate``, ``crop+attenuate``).
        segmenter: A :class:`covid.model.lungs.LungSegmenter` (None only for ``full``).
        cache_dir: Where to keep the segmentations between runs (None: no cache).
        chunk: Films segmented per batch.
        contrast: The classifier's ``input_contrast``.

    Returns:
        The inputs; a film without lungs falls back to the whole film (``ok`` False).
    """
    from covid.model.focus import focus_film

    if segmenter is None:
        if mode != "full":
            raise ValueError(f"input mode {mode!r} needs the lung segmenter")
        films, segs = [read_image(p).pixels for p in paths], [None] * len(paths)
    else:
        films, segs = _segmentations(paths, segmenter, cache_dir, chunk)
    xs, boxes, areas, oks = [], [], [], []
    for film, seg in zip(films, segs, strict=True):
        done = focus_film(film, seg, size, mode, contrast)
        xs.append(done.x)
        boxes.append((done.box.top, done.box.left, done.box.side))
        areas.append(float(seg.mask.mean()) if seg is not None else 0.0)
        oks.append(not done.fallback)
    return FocusedSet(np.stack(xs), np.asarray(boxes), np.asarray([f.shape for f in films]),
                      np.asarray(areas), np.asarray(oks),
                      None if segmenter is None else [seg.mask for seg in segs])


@dataclass(frozen=True)
class MaskSet:
    """Radiologists' masks for some of the classifier's films.

    Attributes:
        index: (M,) indices into the classifier's file list.
        lungs: M (h, w) bool lung masks.
        infection: M (h, w) bool infection masks.
        distance: (M,) pHash distances of the matches.
    """

    index: np.ndarray
    lungs: list[np.ndarray]
    infection: list[np.ndarray]
    distance: np.ndarray


def match_masks(
    paths: tuple[Path, ...],
    mask_root: Path,
    folder: str = QUEX_CLASS_FOLDERS[COVID],
    max_bits: int = MATCH_BITS,
    cache_dir: Path | None = Path(".cache"),
) -> MaskSet:
    """Finds COVID-QU-Ex masks for the given classifier films, by perceptual hash.

    Args:
        paths: The classifier's films (e.g. the COVID films of a split).
        mask_root: The COVID-QU-Ex folder.
        folder: Its class folder to search.
        max_bits: Largest pHash distance accepted as the same film.
        cache_dir: Where the mask set's hashes are cached.

    Returns:
        The matched masks (each film matched at most once, nearest first).
    """
    from PIL import Image

    films = sorted((mask_root / folder / "images").glob("*"))
    cache = cache_dir / f"quex_{folder}_phash.npy" if cache_dir else None
    if cache is not None and cache.exists() and len(np.load(cache)) == len(films):
        theirs = np.load(cache)
    else:
        theirs = perceptual_hashes(tuple(films))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, theirs)
    ours = perceptual_hashes(paths)
    distance = np.bitwise_count(ours[:, None, :] ^ theirs[None, :, :]).sum(-1)
    nearest = distance.argmin(axis=1)
    best = distance[np.arange(len(paths)), nearest]
    index = np.flatnonzero(best <= max_bits)

    def _mask(kind: str, film: Path) -> np.ndarray:
        path = mask_root / folder / kind / f"{film.stem}.png"
        return np.asarray(Image.open(path).convert("L")) > 127

    return MaskSet(
        index=index,
        lungs=[_mask("lungs", films[nearest[i]]) for i in index],
        infection=[_mask("infection", films[nearest[i]]) for i in index],
        distance=best[index],
    )
