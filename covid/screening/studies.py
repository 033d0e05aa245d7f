"""One session's studies: each upload scored once, each map computed once, drawn as chosen.

The page keeps two per-session stores (plain dicts it owns): results keyed by
model, content and file name (:func:`score_files`), and class-activation maps
keyed by study, class and method (:func:`class_map`). Results are scored at the
shipped threshold and re-labelled at the threshold in force (:func:`at_threshold`)
without touching the stores, so moving the operating point, the opacity slider or
the colour map never runs the network again. :func:`render_map` draws a map the
chosen way and :func:`report_pdf` builds a study's one-page PDF in memory.

No Streamlit: everything takes and returns plain values.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covid.explain.overlay import contour_overlay, heatmap_only, overlay_heatmap
from covid.screening import pipeline
from covid.screening.pipeline import StudyResult
from covid.screening.report import build_report
from covid.screening.table import relabel

if TYPE_CHECKING:
    from covid.explain.inference import Classifier

PREDICTED = "Predicted class"
"""The explained-class choice meaning "the class the study is labelled with"."""

METHODS = {"Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++"}
"""Explanation methods: shown name to :mod:`covid.explain.gradcam` method."""

VIEWS = ("Overlay", "Heatmap alone", "Contour lines")
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.4
CONTOUR_LEVELS = (0.5, 0.75)
"""Iso-lines drawn in the contour view (gold, then red), as fractions of the map's peak."""


@dataclass(frozen=True)
class DisplaySettings:
    """How the explanation is computed and shown.

    Attributes:
        target: ``PREDICTED`` or a class name: the class the map explains.
        method: ``"gradcam"`` or ``"gradcam++"``.
        view: One of :data:`VIEWS`.
        colormap: A name from :func:`covid.explain.overlay.colormap_names`.
        opacity: Heatmap opacity over the X-ray, 0 to 1.
    """

    target: str = PREDICTED
    method: str = "gradcam"
    view: str = VIEWS[0]
    colormap: str = DEFAULT_COLORMAP
    opacity: float = DEFAULT_OPACITY


@dataclass
class Study:
    """One uploaded file with its result and the key its cached work lives under.

    Attributes:
        key: Content digest plus file name (unique per upload).
        digest: SHA-256 of the file's bytes.
        result: The pipeline's result.
    """

    key: str
    digest: str
    result: StudyResult


def content_digest(data: bytes) -> str:
    """SHA-256 of a file's bytes, as hex."""
    return hashlib.sha256(data).hexdigest()


def score_files(
    files: Sequence[tuple[str, bytes]],
    classifier: Classifier,
    store: MutableMapping[str, StudyResult],
    ood: Any | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[Study]:
    """Scores uploads, running the network only for files not scored before.

    Args:
        files: (name, bytes) pairs in upload order.
        classifier: The loaded classifier.
        store: Per-session results keyed by model, content and name; pruned to
            the current uploads so that it never outgrows them.
        ood: The out-of-distribution detector, or None.
        progress: Called with the fraction done while new files are scored.

    Returns:
        One :class:`Study` per file, in upload order.
    """
    model_sha = classifier.metadata.sha256
    digests = [content_digest(data) for _, data in files]
    keys = [f"{model_sha[:16]}:{d}:{name}" for (name, _), d in zip(files, digests, strict=True)]
    missing = [i for i, key in enumerate(keys) if key not in store]
    if missing:
        # looked up on the module at call time, so that a substituted pipeline is used
        fresh = pipeline.analyse([files[i] for i in missing], classifier, ood=ood,
                                 progress=progress)
        for i, result in zip(missing, fresh, strict=True):
            store[keys[i]] = result
    for stale in set(store) - set(keys):
        del store[stale]
    return [Study(k, d, store[k]) for k, d in zip(keys, digests, strict=True)]


def at_threshold(studies: Sequence[Study], classifier: Classifier, threshold: float) -> list[Study]:
    """The studies with labels and triage re-derived at an operating point.

    Args:
        studies: Scored studies (their results were made at the shipped threshold).
        classifier: The loaded classifier (its ``label_for`` applies the threshold).
        threshold: The operating point in force on P(positive class).

    Returns:
        New studies (same keys) whose results carry the label and triage advice
        at ``threshold``; the cached results are not modified.
    """
    label_for = functools.partial(classifier.label_for, threshold=threshold)
    positive = classifier.metadata.positive_class
    return [Study(s.key, s.digest, relabel(s.result, label_for, positive)) for s in studies]


def target_index(result: StudyResult, target: str, class_names: Sequence[str]) -> int:
    """The class index a map explains: the shown label for ``PREDICTED``."""
    name = result.label if target == PREDICTED else target
    return list(class_names).index(name)


def class_map(
    study: Study,
    classifier: Classifier,
    target: int,
    method: str,
    store: MutableMapping[tuple[str, int, str], np.ndarray],
) -> np.ndarray:
    """The study's (S, S) class-activation map, computed once per class and method.

    Args:
        study: A successfully scored study.
        classifier: The loaded classifier.
        target: Index of the class to explain.
        method: ``"gradcam"`` or ``"gradcam++"``.
        store: Per-session maps keyed by (study key, target, method).

    Returns:
        The map, in [0, 1].
    """
    key = (study.key, target, method)
    if key not in store:
        x = study.result.model_input.astype(np.float32)
        store[key] = classifier.explain(x, target=target, method=method).cam
    return store[key]


def prune_maps(store: MutableMapping[tuple[str, int, str], np.ndarray], keys: set[str]) -> None:
    """Drops maps of studies that are no longer uploaded."""
    for stale in [k for k in store if k[0] not in keys]:
        del store[stale]


def render_map(pixels: np.ndarray, cam: np.ndarray, settings: DisplaySettings) -> np.ndarray:
    """Draws the map the chosen way (cheap: no network involved).

    Args:
        pixels: (H, W) uint8 X-ray.
        cam: (S, S) map in [0, 1].
        settings: The display settings.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    if settings.view == "Heatmap alone":
        return heatmap_only(cam, settings.colormap, pixels.shape[:2])
    if settings.view == "Contour lines":
        return contour_overlay(pixels, cam, levels=CONTOUR_LEVELS)
    return overlay_heatmap(pixels, cam, colormap=settings.colormap, opacity=settings.opacity)


def report_name(file_name: str) -> str:
    """The PDF's file name for a study, e.g. ``COVID-1-report.pdf``."""
    stem = Path(file_name).stem.strip() or "study"
    return f"{stem}-report.pdf"


def report_pdf(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    threshold: float,
    cam: np.ndarray | None = None,
) -> bytes:
    """The study's one-page PDF report, in memory.

    Args:
        study: A scored study, re-labelled at ``threshold`` (:func:`at_threshold`).
        classifier: The loaded classifier.
        settings: The display settings: the map is drawn with their method,
            display, colour map and opacity.
        threshold: The operating point in force (shipped or this session's).
        cam: The map of the evidence for the study's label, when already computed.

    Returns:
        The PDF's bytes (see :func:`covid.screening.report.build_report`).
    """
    meta, result = classifier.metadata, study.result
    if cam is None:
        target = meta.class_names.index(result.label)
        x = result.model_input.astype(np.float32)
        cam = classifier.explain(x, target=target, method=settings.method).cam
    overlay = render_map(result.pixels, cam, settings)
    return build_report(result, overlay, meta, threshold)
