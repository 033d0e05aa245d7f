"""Does a film's grey level, sharpness or compression move the model's decision?

Issue 27 asks that a film's look say nothing about its class: v4 trains on films
that are all JPEG-recompressed and put under strong exposure, contrast, gamma, blur
and noise changes, and its served input's grey levels are standardised (``input_contrast``).
This measures whether that worked, on the validation split and film by film: each
film is altered the way sites and scanners differ (:data:`ALTERATIONS`) *before*
the one serving path (segmentation, focus, the network), and its calibrated
P(any finding) and its admit/home decision are compared with the unaltered film's,
at the model's own temperature and operating point. A model that reads the lungs
moves little; one that has learnt what a source's films look like moves that
source's normal films across its operating point.

The alterations are milder than the training augmentation (:mod:`covid.training.augment`)
and within what both v3's and v4's training saw, so that neither is judged on films
unlike its training films.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from covid.evaluation.metrics import mean_ci
from covid.inputs.decode import read_image
from covid.model.calibration import calibrated_probs
from covid.model.classes import CLASS_NAMES, NORMAL
from covid.model.decision import decide_labels, p_finding
from covid.model.focus import focus_film
from covid.training.catalogue import Catalogue

Alteration = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""(H, W) uint8 film and a random generator -> the altered (H, W) uint8 film."""

UNALTERED = "unaltered"
"""The name of the films as they are, the baseline of every comparison."""


def _grey(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def jpeg(film: np.ndarray, rng: np.random.Generator, quality: int) -> np.ndarray:
    """The film through a JPEG encoder at ``quality`` and back (Pillow)."""
    buffer = io.BytesIO()
    Image.fromarray(film).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def gamma(film: np.ndarray, rng: np.random.Generator, power: float) -> np.ndarray:
    """Grey levels ``g`` mapped to ``255 (g / 255) ** power`` (below 1: brighter mid-greys)."""
    return _grey(255.0 * (film / 255.0) ** power)


def exposure(film: np.ndarray, rng: np.random.Generator, shift: float) -> np.ndarray:
    """Every grey level moved by ``shift`` of the range (clipped)."""
    return _grey(film.astype(np.float64) + 255.0 * shift)


def contrast(film: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """Grey levels scaled by ``factor`` about the film's mean."""
    mean = film.mean()
    return _grey(mean + factor * (film.astype(np.float64) - mean))


def blur(film: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """A Gaussian blur of ``share`` of the film's longer side (SciPy)."""
    return _grey(gaussian_filter(film.astype(np.float64), share * max(film.shape)))


def noise(film: np.ndarray, rng: np.random.Generator, sd: float) -> np.ndarray:
    """Gaussian noise of ``sd`` grey levels added."""
    return _grey(film + rng.normal(0.0, sd, film.shape))


ALTERATIONS: dict[str, Alteration] = {
    "JPEG quality 40": partial(jpeg, quality=40),
    "gamma 0.75": partial(gamma, power=0.75),
    "gamma 1.33": partial(gamma, power=1.33),
    "exposure -15%": partial(exposure, shift=-0.15),
    "exposure +15%": partial(exposure, shift=0.15),
    "contrast x0.75": partial(contrast, factor=0.75),
    "blur 1/200 of the side": partial(blur, share=1 / 200),
    "noise sd 5": partial(noise, sd=5.0),
}
"""Each alteration by name: the ways films differ between sites, scanners and exports."""


def group_names(films: Catalogue) -> np.ndarray:
    """(N,) each film's group: ``<true class> / <source> (<age>)``."""
    return np.asarray([f"{CLASS_NAMES[label]} / {source} ({age})" for label, source, age
                       in zip(films.labels, films.sources, films.ages, strict=True)])


def sample_groups(films: Catalogue, per_group: int, seed: int = 0) -> Catalogue:
    """At most ``per_group`` films of each group (:func:`group_names`), drawn at random."""
    groups = group_names(films)
    rng = np.random.default_rng(seed)
    pick = [rng.permutation(np.flatnonzero(groups == g))[:per_group] for g in np.unique(groups)]
    return films.subset(np.sort(np.concatenate(pick)))


def _altered_chunks(segmenter, films: Catalogue, alterations: dict[str, Alteration],
                    chunk: int, seed: int):
    """Yields ``(start, name, altered films, their lung segmentations)``, chunk by chunk.

    Within a chunk, :data:`UNALTERED` comes first; the segmenter runs on each altered
    film, as serving would (None: whole-film inputs only, no segmentation).
    """
    steps = {UNALTERED: lambda film, rng: film, **alterations}
    for start in range(0, len(films.names), chunk):
        raw = [read_image(p).pixels for p in films.paths[start:start + chunk]]
        for name, alter in steps.items():
            rng = np.random.default_rng([seed, start])
            altered = [alter(film, rng) for film in raw]
            lungs = (segmenter.segment_batch(altered) if segmenter is not None
                     else [None] * len(altered))
            yield start, name, altered, lungs


def score_altered(classifiers: Sequence, segmenter, films: Catalogue,
                  alterations: dict[str, Alteration], chunk: int = 32, seed: int = 0
                  ) -> list[dict[str, np.ndarray]]:
    """Every classifier's logits on every film, unaltered and under each alteration.

    Each altered film goes through the serving path: the lung segmenter runs on it
    (once for all classifiers), then each classifier's own focus and network.

    Args:
        classifiers: :class:`covid.explain.inference.Classifier` s.
        segmenter: The lung segmenter they were trained with (None: whole-film
            classifiers only).
        films: The films.
        alterations: Alterations by name (:data:`UNALTERED` is added first).
        chunk: Films read and segmented at a time.
        seed: Seed of the random alterations (the same noise for every classifier).

    Returns:
        Per classifier, ``{name: (N, C) logits}`` for :data:`UNALTERED` and each alteration.
    """
    out: list[dict[str, list]] = [{} for _ in classifiers]
    for _, name, altered, lungs in _altered_chunks(segmenter, films, alterations, chunk, seed):
        for logits, classifier in zip(out, classifiers, strict=True):
            meta = classifier.metadata
            x = np.stack([focus_film(f, s, meta.input_size, meta.input_mode,
                                     meta.input_contrast).x
                          for f, s in zip(altered, lungs, strict=True)])
            logits.setdefault(name, []).append(classifier.forward_batch(x.astype(np.float32))[0])
    return [{name: np.concatenate(parts) for name, parts in per.items()} for per in out]


def input_changes(segmenter, films: Catalogue, alterations: dict[str, Alteration],
                  contrasts: Sequence[str], size: int, mode: str, chunk: int = 32,
                  seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """How far each alteration moves the model's input, per standardisation; no network.

    Screens a standardisation (:data:`covid.inputs.preprocess.CONTRASTS`) before a
    network is trained on it: an input that does not move cannot move a decision.

    Args:
        segmenter: The lung segmenter (None for ``mode`` ``full``).
        films: The films.
        alterations: Alterations by name.
        contrasts: The standardisations to compare.
        size: The input side.
        mode: The input's focus mode.
        chunk: Films read and segmented at a time.
        seed: Seed of the random alterations.

    Returns:
        ``{contrast: {alteration: {group: mean absolute change}}}``, in grey levels per
        input pixel, averaged over each group's films (:func:`group_names`).
    """
    groups = group_names(films)
    change = {c: {a: np.zeros(len(films.names)) for a in alterations} for c in contrasts}
    plain: dict[str, list[np.ndarray]] = {}
    for start, name, altered, lungs in _altered_chunks(segmenter, films, alterations, chunk,
                                                        seed):
        for contrast in contrasts:
            x = [focus_film(f, s, size, mode, contrast).x.astype(np.float32)
                 for f, s in zip(altered, lungs, strict=True)]
            if name == UNALTERED:
                plain[contrast] = x
                continue
            change[contrast][name][start:start + len(x)] = [
                np.abs(a - b).mean() for a, b in zip(x, plain[contrast], strict=True)]
    return {c: {a: {str(g): float(v[groups == g].mean()) for g in np.unique(groups)}
                for a, v in per.items()} for c, per in change.items()}


@dataclass(frozen=True)
class Shift:
    """How one alteration moved one group of films.

    Attributes:
        n: Films in the group.
        delta_p_finding: Mean change of calibrated P(any finding), altered minus unaltered.
        delta_ci95: Its 95% bootstrap interval.
        sent_home: Share sent home, altered.
        sent_home_unaltered: Share sent home, unaltered.
        flipped: Share whose decision (admit or home) changed.
    """

    n: int
    delta_p_finding: float
    delta_ci95: list[float] | None
    sent_home: float
    sent_home_unaltered: float
    flipped: float


def shifts(logits: dict[str, np.ndarray], films: Catalogue, class_names: Sequence[str],
           temperature: float, threshold: float) -> dict[str, dict[str, Shift]]:
    """Each alteration's effect on each group, at one model's calibration and operating point.

    Args:
        logits: ``{name: (N, C) logits}`` from :func:`score_altered`.
        films: The N films.
        class_names: The model's classes.
        temperature: Its calibration temperature.
        threshold: Its operating point on P(any finding).

    Returns:
        ``{alteration: {group: Shift}}``, every group of :func:`group_names`.
    """
    groups = group_names(films)

    def outputs(name: str) -> tuple[np.ndarray, np.ndarray]:
        probs = calibrated_probs(logits[name], temperature)
        home = np.asarray(class_names)[decide_labels(probs, class_names, threshold)] == NORMAL
        return p_finding(probs, class_names), home

    base_p, base_home = outputs(UNALTERED)
    out: dict[str, dict[str, Shift]] = {}
    for name in logits:
        if name == UNALTERED:
            continue
        p, home = outputs(name)
        out[name] = {}
        for group in np.unique(groups):
            m = groups == group
            delta = p[m] - base_p[m]
            out[name][str(group)] = Shift(
                int(m.sum()), float(delta.mean()), mean_ci(delta), float(home[m].mean()),
                float(base_home[m].mean()), float((home[m] != base_home[m]).mean()))
    return out
