"""From uploaded bytes to per-study results: the path the page and the CLI share.

Every file gets its own :class:`StudyResult`. A file that cannot be read gets a
clear ``error`` naming it and the reason; the other files are still scored, in
batches. Nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from covid.explain.localisation import cam_to_film, energy_inside
from covid.inputs.decode import DecodedImage, ImageDecodeError, decode_image
from covid.inputs.preprocess import LungBox, fit_within
from covid.model.decision import (
    FLAG_NONE,
    FLAG_NOT_CHEST,
    FLAG_UNUSUAL,
    Decision,
    decide,
    decide_labels,
)
from covid.model.focus import focus_films

if TYPE_CHECKING:
    from covid.explain.inference import Classifier, Explanation
    from covid.model.lungs import LungSegmentation, LungSegmenter
    from covid.model.metadata import ModelMetadata
    from covid.model.opacity import OpacitySegmentation, OpacitySegmenter
    from covid.screening.ood import OODGate, OODResult


DISPLAY_MAX_SIDE = 1024
"""Longest side of the X-ray kept for display and reports."""

FLAG_HEADINGS = {FLAG_UNUSUAL: "Caution", FLAG_NOT_CHEST: "Not a chest X-ray"}
"""What each flag's reason is introduced with, in every output that shows it."""


@dataclass(frozen=True)
class StudyResult:
    """The outcome for one file, an immutable value.

    A new operating point gives a new value (:func:`relabel`); nothing changes a
    result in place.

    Attributes:
        name: The file name.
        error: A clear message naming the file and the reason, or None.
        probs: (C,) calibrated class probabilities summing to 1, or None.
        class_names: The C classes ``probs`` refers to, in output order.
        p_positive: Calibrated probability of the positive (COVID) class.
        decision: Label, flag and triage at the operating point
            (:func:`covid.model.decision.decide`), or None for a failed file.
            Every output shows what it says, never its own reading of the rest.
        flag: The out-of-distribution gates' verdict, one of
            :data:`covid.model.decision.FLAGS` (None: no detector ran, and the
            film was decided as ``none``).
        flag_reason: Why it was flagged, in plain words (None when not flagged).
        pixels: (H, W) uint8 upright X-ray for display (at most 1024 px a side on
            the page; the film's own resolution for the command line).
        model_input: (S, S, 1) uint8 model input.
        box: The region of ``pixels`` that ``model_input`` shows.
        lungs: (H, W) bool lung mask over ``pixels``, or None without a segmenter.
        cam: (H, W) float32 Grad-CAM over ``pixels`` for the explained class, in [0, 1];
            None for a film refused as not a chest X-ray (nothing was classified).
        cam_target: The class index ``cam`` explains (the label's class), or None.
        lung_evidence: Share of ``cam``'s energy inside ``lungs``, in [0, 1], or
            None (no lungs, or the label changed and its map was not measured).
        opacity: The opacity segmenter's outline over ``pixels`` and its grade: a
            separate segmentation, not the classifier's evidence. None for a film
            refused as not a chest X-ray, without lungs, or without the segmenter.
        info: Safe, non-identifying DICOM fields.
    """

    name: str
    error: str | None = None
    probs: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    p_positive: float | None = None
    decision: Decision | None = None
    flag: str | None = None
    flag_reason: str | None = None
    pixels: np.ndarray | None = None
    model_input: np.ndarray | None = None
    box: LungBox | None = None
    lungs: np.ndarray | None = None
    cam: np.ndarray | None = None
    cam_target: int | None = None
    lung_evidence: float | None = None
    opacity: OpacitySegmentation | None = None
    info: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The class name at the operating point (None for a failed file, "" for a refused one)."""
        return None if self.decision is None else self.decision.label

    @property
    def ood(self) -> bool | None:
        """Whether either flag was raised (None when no detector ran)."""
        return None if self.flag is None else self.flag != FLAG_NONE

    @property
    def refused(self) -> bool:
        """Whether the film was refused as not a chest X-ray: scored, never classified."""
        return self.decision is not None and self.decision.refused

    @property
    def flag_note(self) -> str | None:
        """The flag's reason as shown, e.g. "Caution: it is unlike..." (None if not flagged)."""
        if self.decision is None or not self.decision.ood or not self.flag_reason:
            return None
        return f"{FLAG_HEADINGS[self.decision.flag]}: {self.flag_reason}"

    @property
    def triage(self) -> str | None:
        """The triage advice with the disclaimer (None for a failed file)."""
        return None if self.decision is None else self.decision.triage

    @property
    def p_finding(self) -> float | None:
        """Calibrated probability of any finding, ``1 - P(Normal)``."""
        return None if self.decision is None else self.decision.p_finding


def relabel(result: StudyResult, threshold: float) -> StudyResult:
    """The result decided at another operating point (the decision rule, nothing else).

    When the label changes, the film map (which explains the old label) no longer
    describes it, so its share inside the lungs is cleared; the caller may
    measure the new label's map (:func:`covid.screening.studies.measure_relabelled`).
    A refused film stays refused at every operating point.

    Args:
        result: A scored result (a failed one is returned as it is).
        threshold: Operating point on P(any finding).

    Returns:
        A new result; the input is untouched.
    """
    if result.error is not None or result.probs is None:
        return result
    decision = decide(result.probs, result.class_names, threshold, result.flag or FLAG_NONE)
    if decision == result.decision:
        return result
    evidence = result.lung_evidence
    if decision.refused or result.class_names.index(decision.label) != result.cam_target:
        evidence = None
    return replace(result, decision=decision, lung_evidence=evidence)


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
           segmenter: LungSegmenter | None) -> tuple[list[StudyResult], list[Any]]:
    """Segments and focuses a chunk; a film without lungs falls back to the whole film.

    Returns:
        The chunk's results with their model inputs, boxes and lung masks, and the
        segmentations (None where there is none) for the OOD gate.
    """
    meta = classifier.metadata
    focused = focus_films([r.pixels for r in chunk], meta.input_size, meta.input_mode,
                          segmenter, meta.input_contrast)
    results = [replace(result, model_input=done.x, box=done.box,  # whole film where fallback
                       lungs=None if done.lungs is None else done.lungs.mask)
               for result, done in zip(chunk, focused, strict=True)]
    return results, [done.lungs for done in focused]


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


def _scored(result: StudyResult, explained: Explanation, meta: ModelMetadata,
            threshold: float, verdict: OODResult | None) -> StudyResult:
    """A focused result completed with its probabilities, decision and map.

    A film refused as not a chest X-ray keeps its probabilities (the decision
    needs them at another operating point) but no map: nothing was classified.
    """
    names = tuple(meta.class_names)
    flag = None if verdict is None else verdict.flag
    decision = decide(explained.probs, names, threshold, flag or FLAG_NONE)
    result = replace(
        result, probs=explained.probs, class_names=names,
        p_positive=float(explained.probs[meta.positive_index]), decision=decision,
        flag=flag, flag_reason=None if verdict is None else verdict.reason,
    )
    if decision.refused:
        return result
    cam = film_map(result, explained)
    return replace(result, cam=cam, cam_target=explained.target,
                   lung_evidence=lung_share(result, cam))


def analyse(
    files: Sequence[tuple[str, bytes]],
    classifier: Classifier,
    threshold: float | None = None,
    ood: OODGate | None = None,
    progress: Callable[[float], None] | None = None,
    batch_size: int = 16,
    segmenter: LungSegmenter | None = None,
    max_side: int | None = DISPLAY_MAX_SIDE,
    opacity: OpacitySegmenter | None = None,
) -> list[StudyResult]:
    """Decodes, segments, scores, explains and triages a set of files in batches.

    Each batch takes one pass of the lung segmenter and one compiled pass of the
    classifier, which gives the probabilities and the Grad-CAM of each film's
    label together. The map is placed back on the film and its share inside the
    lungs is measured on the unaltered map. With the opacity segmenter, one more
    pass outlines the opacities of the batch's chest films inside the lungs that
    the lung segmenter found (a refused film gets none).

    Args:
        files: (name, content) pairs, in upload order.
        classifier: The loaded classifier.
        threshold: Operating point on P(any finding) (None: the model's shipped one).
        ood: The out-of-distribution gate, or None.
        progress: Called with the fraction done, from 0 to 1.
        batch_size: Images per forward pass.
        segmenter: The lung segmenter (required by lung-focused classifiers).
        max_side: Longest side the film is kept at (None: its own resolution).
        opacity: The opacity segmenter, or None (then no outline or grade).

    Returns:
        One result per file, in the same order.
    """
    meta = classifier.metadata
    threshold = meta.threshold if threshold is None else threshold
    results, decoded = _decode_all(files, max_side)
    ready = [i for i, r in enumerate(results) if r.error is None]
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        focused, lungs = _focus([results[i] for i in chunk], classifier, segmenter)
        x = np.stack([r.model_input for r in focused]).astype(np.float32)
        explanations = _explain_labels(classifier, x, threshold)
        scored = []
        for row, i in enumerate(chunk):
            explained = explanations[row]
            verdict = None if ood is None else ood.assess(decoded[i], explained.features,
                                                          lungs[row])
            scored.append(_scored(focused[row], explained, meta, threshold, verdict))
        if opacity is not None:
            scored = _outlined(scored, lungs, opacity)
        for i, result in zip(chunk, scored, strict=True):
            results[i] = result
        if progress is not None:
            progress(min(1.0, (start + len(chunk)) / max(len(ready), 1)))
    if progress is not None:
        progress(1.0)
    return results


def _outlined(scored: list[StudyResult], lungs: list[LungSegmentation | None],
              opacity: OpacitySegmenter) -> list[StudyResult]:
    """A scored batch with the opacity segmenter's outlines and grades, in one pass.

    A refused film is not segmented: it gets no opacity figures.

    Args:
        scored: The batch's scored results.
        lungs: Their lung segmentations over ``pixels`` (None where none ran).
        opacity: The opacity segmenter.

    Returns:
        The same results, each with its :attr:`StudyResult.opacity`.
    """
    wanted = [None if r.refused else seg for r, seg in zip(scored, lungs, strict=True)]
    found = opacity.segment_batch([r.pixels for r in scored], wanted)
    return [replace(r, opacity=seg) for r, seg in zip(scored, found, strict=True)]


def _explain_labels(classifier: Classifier, x: np.ndarray, threshold: float) -> list:
    """Explanations of each image's label at the operating point, in one pass where possible.

    The first pass explains the most probable class; the few images whose label
    at the operating point differs (a low threshold labels some findings below
    50%) are explained again for their label.
    """
    names = classifier.metadata.class_names
    explanations = classifier.explain_batch(x)
    labels = decide_labels(np.stack([e.probs for e in explanations]), names, threshold)
    redo = [i for i, e in enumerate(explanations) if e.target != labels[i]]
    if redo:
        again = classifier.explain_batch(x[redo], labels[redo])
        for i, explained in zip(redo, again, strict=True):
            explanations[i] = explained
    return explanations


def rank_by_suspicion(results: Sequence[StudyResult]) -> list[StudyResult]:
    """Orders results most suspicious first; refused films, then errors, last in upload order.

    Args:
        results: Results from :func:`analyse`.

    Returns:
        The same results: the classified ones by descending probability of any
        finding, then the films refused as not chest X-rays (never classified,
        so never ranked), then the failed files.
    """
    classified = [r for r in results if r.decision is not None and not r.refused]
    refused = [r for r in results if r.refused]
    failed = [r for r in results if r.decision is None]
    # P(any finding) first; P(COVID) orders films equally likely to hold a finding
    return sorted(classified, key=lambda r: (-r.p_finding, -r.p_positive)) + refused + failed
