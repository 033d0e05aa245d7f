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

from covid.inputs.decode import DecodedImage, ImageDecodeError, decode_image
from covid.inputs.preprocess import fit_within, to_model_input
from covid.model.calibration import calibrated_probs
from covid.screening.triage import triage_message

if TYPE_CHECKING:
    from covid.explain.inference import Classifier


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
        pixels: (H, W) uint8 upright X-ray for display, at most 1024 px a side.
        model_input: (S, S, 1) uint8 model input.
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
    files: Sequence[tuple[str, bytes]], size: int
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
        results.append(
            StudyResult(
                name=name,
                pixels=fit_within(image.pixels, DISPLAY_MAX_SIDE),
                model_input=to_model_input(image.pixels, size),
                info=dict(image.info),
            )
        )
        decoded.append(image)
    return results, decoded


def analyse(
    files: Sequence[tuple[str, bytes]],
    classifier: Classifier,
    threshold: float | None = None,
    ood: Any | None = None,
    progress: Callable[[float], None] | None = None,
    batch_size: int = 16,
) -> list[StudyResult]:
    """Decodes, scores and triages a set of files in batches.

    Args:
        files: (name, content) pairs, in upload order.
        classifier: The loaded classifier.
        threshold: Operating point on the positive-class probability
            (None: the model's shipped operating point).
        ood: An out-of-distribution detector with
            ``assess(decoded, features) -> result(flagged, score, reason)``, or None.
        progress: Called with the fraction done, from 0 to 1.
        batch_size: Images per forward pass.

    Returns:
        One result per file, in the same order.
    """
    meta = classifier.metadata
    results, decoded = _decode_all(files, meta.input_size)
    ready = [i for i, r in enumerate(results) if r.error is None]
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        x = np.stack([results[i].model_input for i in chunk]).astype(np.float32)
        logits, features = classifier.forward_batch(x)
        probs = calibrated_probs(logits, meta.temperature)
        for row, i in enumerate(chunk):
            _fill(results[i], probs[row], classifier, threshold)
            if ood is not None:
                verdict = ood.assess(decoded[i], features[row])
                results[i].ood, results[i].ood_reason = bool(verdict.flagged), verdict.reason
                results[i].triage = triage_message(
                    results[i].label, meta.positive_class, ood=results[i].ood
                )
        if progress is not None:
            progress(min(1.0, (start + len(chunk)) / max(len(ready), 1)))
    if progress is not None:
        progress(1.0)
    return results


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
