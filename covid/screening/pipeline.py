"""From uploaded bytes to per-study results: the path the page and the CLI share.

Every file gets its own :class:`StudyResult`. A file that cannot be read gets a
clear ``error`` naming it and the reason; the other files are still scored, in
batches. Nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from covid.explain.localisation import cam_to_film, energy_inside
from covid.inputs.decode import DecodedImage, ImageDecodeError, decode_image
from covid.inputs.preprocess import LungBox, fit_within, lung_focus
from covid.model.focus import focus_films
from covid.screening.triage import triage_message

if TYPE_CHECKING:
    from covid.explain.inference import Classifier, Explanation
    from covid.model.lungs import LungSegmenter


DISPLAY_MAX_SIDE = 1024
"""Longest side of the X-ray kept for display and reports."""


@dataclass
class StudyResult:
    """The outcome for one file.

    Attributes:
        name: The file name.
        error: A clear message naming the file and the reason, or None.
        probs: (C,) calibrated class probabilities summing to 1, or None.
        p_positive: Calibrated probability of the positive (COVID) class.
        label: Class name at the operating point.
        ood: Whether the image was flagged as not a chest X-ray.
        ood_reason: Why it was flagged.
        pixels: (H, W) uint8 upright X-ray for display (at most 1024 px a side on
            the page; the film's own resolution for the command line).
        model_input: (S, S, 1) uint8 model input.
        box: The region of ``pixels`` that ``model_input`` shows.
        lungs: (H, W) bool lung mask over ``pixels``, or None without a segmenter.
        cam: (H, W) float32 Grad-CAM over ``pixels`` for the explained class, in [0, 1].
        cam_target: The class index ``cam`` explains (the predicted class).
        lung_evidence: Share of ``cam``'s energy inside ``lungs``, in [0, 1], or None.
        info: Safe, non-identifying DICOM fields.
        triage: The triage message (with the disclaimer), or None.
    """

    name: str
    error: str | None = None
    probs: np.ndarray | None = None
    p_positive: float | None = None
    label: str | None = None
    ood: bool | None = None
    ood_reason: str | None = None
    pixels: np.ndarray | None = None
    model_input: np.ndarray | None = None
    box: LungBox | None = None
    lungs: np.ndarray | None = None
    cam: np.ndarray | None = None
    cam_target: int | None = None
    lung_evidence: float | None = None
    info: dict[str, str] = field(default_factory=dict)
    triage: str | None = None


def percentages(probs: np.ndarray, decimals: int = 1) -> list[float]:
    """Rounds probabilities to percentages that sum to exactly 100.

    Uses largest-remainder rounding, so displayed bars never sum to 99.9 or 100.1.

    Args:
        probs: (C,) probabilities summing to 1.
        decimals: Decimal places of the percentages.

    Returns:
        C percentages summing to 100.
    """
    scale = 10**decimals
    units = np.asarray(probs, dtype=np.float64) * 100 * scale
    floors = np.floor(units).astype(np.int64)
    short = 100 * scale - int(floors.sum())
    order = np.argsort(-(units - floors), kind="stable")
    floors[order[:short]] += 1
    return [float(v) / scale for v in floors]


def _decode_all(
    files: Sequence[tuple[str, bytes]], max_side: int | None
) -> tuple[list[StudyResult], list[DecodedImage | None]]:
    """Decodes every file, turning failures into error results."""
    results, decoded = [], []
    for name, data in files:
        try:
            image = decode_image(data, name)
        except ImageDecodeError as err:
            results.append(StudyResult(name=name, error=str(err)))
            decoded.append(None)
            continue
        pixels = image.pixels if max_side is None else fit_within(image.pixels, max_side)
        results.append(StudyResult(name=name, pixels=pixels, info=dict(image.info)))
        decoded.append(image)
    return results, decoded


def _focus(chunk: list[StudyResult], classifier: Classifier,
           segmenter: LungSegmenter | None) -> list[Any]:
    """Segments and focuses a chunk; a film without lungs falls back to the whole film."""
    meta = classifier.metadata
    films = [r.pixels for r in chunk]
    focused = focus_films(films, meta.input_size, meta.input_mode, segmenter)
    lungs = []
    for result, done, film in zip(chunk, focused, films, strict=True):
        if isinstance(done, Exception):
            result.model_input, result.box = lung_focus(film, None, meta.input_size, "full")
            result.lungs = np.zeros(film.shape, bool)
            lungs.append(done.lungs)
            continue
        result.model_input, result.box = done.x, done.box
        result.lungs = None if done.lungs is None else done.lungs.mask
        lungs.append(done.lungs)
    return lungs


def film_map(result: StudyResult, explanation: Explanation) -> np.ndarray:
    """A map over a study's model input, placed back on its displayed film.

    Args:
        result: A scored study (with ``pixels`` and ``box``).
        explanation: An explanation of ``result.model_input``.

    Returns:
        (H, W) float32 map in [0, 1] over ``result.pixels``.
    """
    return cam_to_film(explanation.cam, result.box, result.pixels.shape)


def lung_share(result: StudyResult, cam: np.ndarray) -> float | None:
    """The share of a film map's energy inside the study's lungs (None without lungs)."""
    return None if result.lungs is None else energy_inside(cam, result.lungs)


def analyse(
    files: Sequence[tuple[str, bytes]],
    classifier: Classifier,
    threshold: float | None = None,
    ood: Any | None = None,
    progress: Callable[[float], None] | None = None,
    batch_size: int = 16,
    segmenter: LungSegmenter | None = None,
    max_side: int | None = DISPLAY_MAX_SIDE,
) -> list[StudyResult]:
    """Decodes, segments, scores, explains and triages a set of files in batches.

    Each batch takes one pass of the segmenter and one compiled pass of the
    classifier, which gives the probabilities and the predicted class's
    Grad-CAM together. The map is placed back on the film and its share inside
    the lungs is measured on the unaltered map.

    Args:
        files: (name, content) pairs, in upload order.
        classifier: The loaded classifier.
        threshold: Operating point on the positive-class probability
            (None: the model's shipped operating point).
        ood: An out-of-distribution detector with
            ``assess(decoded, features, lungs) -> result(flagged, score, reason)``, or None.
        progress: Called with the fraction done, from 0 to 1.
        batch_size: Images per forward pass.
        segmenter: The lung segmenter (required by lung-focused classifiers).
        max_side: Longest side the film is kept at (None: its own resolution).

    Returns:
        One result per file, in the same order.
    """
    meta = classifier.metadata
    results, decoded = _decode_all(files, max_side)
    ready = [i for i, r in enumerate(results) if r.error is None]
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        lungs = _focus([results[i] for i in chunk], classifier, segmenter)
        x = np.stack([results[i].model_input for i in chunk]).astype(np.float32)
        explanations = _explain_labels(classifier, x, threshold)
        for row, i in enumerate(chunk):
            result, explained = results[i], explanations[row]
            _fill(result, explained.probs, classifier, threshold)
            result.cam, result.cam_target = film_map(result, explained), explained.target
            result.lung_evidence = lung_share(result, result.cam)
            if ood is not None:
                verdict = ood.assess(decoded[i], explained.features, lungs[row])
                result.ood, result.ood_reason = bool(verdict.flagged), verdict.reason
                result.triage = triage_message(result.label, meta.positive_class, ood=result.ood)
        if progress is not None:
            progress(min(1.0, (start + len(chunk)) / max(len(ready), 1)))
    if progress is not None:
        progress(1.0)
    return results


def _explain_labels(classifier: Classifier, x: np.ndarray, threshold: float | None) -> list:
    """Explanations of each image's label at the operating point, in one pass where possible.

    The first pass explains the most probable class; the few images whose label
    at the operating point differs (a low threshold labels some COVID below 50%)
    are explained again for their label.
    """
    meta = classifier.metadata
    explanations = classifier.explain_batch(x)
    labels = [meta.class_names.index(classifier.label_for(float(e.probs[meta.positive_index]),
                                                          threshold)) for e in explanations]
    redo = [i for i, (e, label) in enumerate(zip(explanations, labels, strict=True))
            if e.target != label]
    if redo:
        again = classifier.explain_batch(x[redo], np.asarray([labels[i] for i in redo]))
        for i, explained in zip(redo, again, strict=True):
            explanations[i] = explained
    return explanations


def _fill(
    result: StudyResult, probs: np.ndarray, classifier: Classifier, threshold: float | None
) -> None:
    """Writes probabilities, label and triage into a result."""
    meta = classifier.metadata
    result.probs = probs
    result.p_positive = float(probs[meta.positive_index])
    result.label = classifier.label_for(result.p_positive, threshold)
    result.triage = triage_message(result.label, meta.positive_class)


def rank_by_suspicion(results: Sequence[StudyResult]) -> list[StudyResult]:
    """Orders results most suspicious first; errors last, in upload order.

    Args:
        results: Results from :func:`analyse`.

    Returns:
        The same results, sorted by descending positive-class probability.
    """
    scored = [r for r in results if r.p_positive is not None]
    failed = [r for r in results if r.p_positive is None]
    return sorted(scored, key=lambda r: -r.p_positive) + failed
