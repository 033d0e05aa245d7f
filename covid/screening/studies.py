"""One session's studies: each upload scored once, each map computed once, drawn as chosen.

The page keeps two per-session stores (plain dicts it owns): results keyed by
model, content and file name (:func:`score_files`), and class-activation maps
keyed by study, class and method (:func:`class_map`). Results are scored at the
shipped threshold and decided again at the threshold in force (:func:`at_threshold`)
without touching the stores, so moving the operating point, the opacity slider or
the colour map never runs the network again. Every map is placed on the displayed
film (:func:`covid.screening.pipeline.film_map`), whatever region the classifier
saw, and the default one (the label's Grad-CAM) is the one the pipeline already
made. :func:`render_map` draws a map the chosen way, with the lung outline if
asked, :func:`evidence_in_lungs` measures the shown map's share inside the lungs,
and :func:`report_pdf` builds a study's one-page PDF in memory.

No Streamlit: everything takes and returns plain values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covid.explain.localisation import draw_outline
from covid.explain.overlay import (
    DEFAULT_OPACITY,
    contour_overlay,
    heatmap_only,
    overlay_heatmap,
)
from covid.screening import pipeline
from covid.screening.pipeline import StudyResult
from covid.screening.report_layout import build_report

if TYPE_CHECKING:
    from covid.explain.inference import Classifier, Explanation
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.ood import OODGate

PREDICTED = "Predicted class"
"""The explained-class choice meaning "the class the study is labelled with"."""

METHODS = {"Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++"}
"""Explanation methods: shown name to :mod:`covid.explain.gradcam` method."""

VIEWS = ("Overlay", "Heatmap alone", "Contour lines")
DEFAULT_COLORMAP = "jet"
CONTOUR_LEVELS = (0.5, 0.75)
"""Iso-lines drawn in the contour view (gold, then red), as fractions of the map's peak."""
XRAY_OUTLINE = (0, 255, 255)
"""The lung outline's colour over the plain X-ray (cyan)."""
MAP_OUTLINE = (255, 255, 255)
"""The lung outline's colour over a map (white: in no colour map offered, unlike cyan)."""
MAX_STUDIES = 50
"""Files one session keeps scored at a time (its memory stays bounded); the rest get an error."""


@dataclass(frozen=True)
class DisplaySettings:
    """How the explanation is computed and shown.

    Attributes:
        target: ``PREDICTED`` or a class name: the class the map explains.
        method: ``"gradcam"`` or ``"gradcam++"``.
        view: One of :data:`VIEWS`.
        colormap: A name from :func:`covid.explain.overlay.colormap_names`.
        opacity: Heatmap opacity over the X-ray, 0 to 1.
        outline: Whether the lung outline is drawn over the X-ray and the map.
    """

    target: str = PREDICTED
    method: str = "gradcam"
    view: str = VIEWS[0]
    colormap: str = DEFAULT_COLORMAP
    opacity: float = DEFAULT_OPACITY
    outline: bool = False


@dataclass(frozen=True)
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
    ood: OODGate | None = None,
    progress: Callable[[float], None] | None = None,
    segmenter: LungSegmenter | None = None,
    limit: int = MAX_STUDIES,
    analyse: Callable[..., list[StudyResult]] = pipeline.analyse,
    opacity: OpacitySegmenter | None = None,
) -> list[Study]:
    """Scores uploads, running the network only for files not scored before.

    Args:
        files: (name, bytes) pairs in upload order.
        classifier: The loaded classifier.
        store: Per-session results keyed by models, content and name; pruned to
            the current uploads so that it never outgrows them, and never holding
            more than ``limit`` results.
        ood: The out-of-distribution detector, or None.
        progress: Called with the fraction done while new files are scored.
        segmenter: The lung segmenter, or None (then no lungs, outline or share).
        limit: The most files scored; later ones get an error naming them and
            the limit (nothing of theirs is kept).
        analyse: What scores the new files (:func:`covid.screening.pipeline.analyse`).
        opacity: The opacity segmenter, or None (then no opacity outline or figures).

    Returns:
        One :class:`Study` per file, in upload order.
    """
    models = classifier.metadata.sha256[:16]
    # a segmenter shipped (or removed) meanwhile gives new results
    for kind, unet in (("lungs", segmenter), ("opacity", opacity)):
        if unet is not None:
            models += f"+{kind}:{unet.metadata.sha256[:8]}"
    digests = [content_digest(data) for _, data in files]
    keys = [f"{models}:{d}:{name}" for (name, _), d in zip(files, digests, strict=True)]
    kept = set(keys[:limit])
    for stale in set(store) - kept:  # removed files are dropped before new ones are scored
        del store[stale]
    missing = [i for i, key in enumerate(keys[:limit]) if key not in store]
    if missing:
        fresh = analyse([files[i] for i in missing], classifier, ood=ood,
                        progress=progress, segmenter=segmenter, opacity=opacity)
        for i, result in zip(missing, fresh, strict=True):
            store[keys[i]] = result
    over = [StudyResult(name=name, error=f"{name}: not scored; a session scores at most "
                        f"{limit} files at a time. Remove some files to score this one.")
            for name, _ in files[limit:]]
    results = [store[k] for k in keys[:limit]] + over
    return [Study(k, d, r) for k, d, r in zip(keys, digests, results, strict=True)]


def at_threshold(studies: Sequence[Study], threshold: float) -> list[Study]:
    """The studies decided at an operating point (the decision rule only; no network).

    Args:
        studies: Scored studies (their results were made at the shipped threshold).
        threshold: The operating point in force on P(any finding).

    Returns:
        New studies (same keys); a study whose label changed has no lung share
        until :func:`measure_relabelled` measures its new label's map. The cached
        results are not modified.
    """
    return [replace(s, result=pipeline.relabel(s.result, threshold)) for s in studies]


def measure_relabelled(
    studies: Sequence[Study],
    classifier: Classifier,
    maps: MutableMapping[tuple[str, int, str], Explanation],
) -> list[Study]:
    """Measures the lung share of each changed label's own Grad-CAM (runs the network).

    A study whose label changed with the operating point must never show the
    share of the old label's map; this explains the new label once (kept in
    ``maps``) and measures its map.

    Args:
        studies: Studies from :func:`at_threshold`.
        classifier: The loaded classifier.
        maps: Per-session explanations (see :func:`class_map`).

    Returns:
        The studies, those with a changed label carrying their own share.
    """
    out = []
    for study in studies:
        result = study.result
        if result.lungs is not None and result.lung_evidence is None and result.label:
            target = result.class_names.index(result.label)
            cam = class_map(study, classifier, target, "gradcam", maps)
            study = replace(study, result=replace(result, lung_evidence=evidence_in_lungs(
                result, cam)))
        out.append(study)
    return out


def target_index(result: StudyResult, target: str, class_names: Sequence[str]) -> int:
    """The class index a map explains: the shown label for ``PREDICTED``."""
    name = result.label if target == PREDICTED else target
    return list(class_names).index(name)


def known_map(
    study: Study, target: int, method: str, store: Mapping[tuple[str, int, str], Explanation]
) -> np.ndarray | None:
    """The study's film map for a class and method if already computed, else None.

    The pipeline's own map (the Grad-CAM of the class the study was scored
    with) is always known; others once :func:`class_map` made them.

    Args:
        study: A successfully scored study.
        target: Index of the explained class.
        method: ``"gradcam"`` or ``"gradcam++"``.
        store: Per-session explanations keyed by (study key, target, method).

    Returns:
        (H, W) float32 map in [0, 1] over ``study.result.pixels``, or None.
    """
    result = study.result
    if method == "gradcam" and target == result.cam_target and result.cam is not None:
        return result.cam
    explained = store.get((study.key, target, method))
    return None if explained is None else pipeline.film_map(result, explained)


def class_map(
    study: Study,
    classifier: Classifier,
    target: int,
    method: str,
    store: MutableMapping[tuple[str, int, str], Explanation],
) -> np.ndarray:
    """The study's map for a class and method, on its film; explained once at most.

    The classifier may have seen only a lung crop of the film, so every map is
    placed back on the displayed film (:func:`covid.screening.pipeline.film_map`),
    never stretched over it.

    Args:
        study: A successfully scored study.
        classifier: The loaded classifier.
        target: Index of the class to explain.
        method: ``"gradcam"`` or ``"gradcam++"``.
        store: Per-session explanations keyed by (study key, target, method).

    Returns:
        (H, W) float32 map in [0, 1] over ``study.result.pixels``.
    """
    cam = known_map(study, target, method, store)
    if cam is None:
        x = study.result.model_input.astype(np.float32)
        store[(study.key, target, method)] = classifier.explain(x, target=target, method=method)
        cam = known_map(study, target, method, store)
    return cam


def evidence_in_lungs(result: StudyResult, cam: np.ndarray) -> float | None:
    """The share of a shown map's energy inside the study's lungs (None without lungs).

    Measured on the unaltered map, whatever class and method it explains.
    """
    return pipeline.lung_share(result, cam)


def prune_maps(store: MutableMapping[tuple[str, int, str], Any], keys: set[str]) -> None:
    """Drops maps of studies that are no longer uploaded."""
    for stale in [k for k in store if k[0] not in keys]:
        del store[stale]


def render_map(
    pixels: np.ndarray, cam: np.ndarray, settings: DisplaySettings,
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """Draws the map the chosen way (cheap: no network involved).

    Args:
        pixels: (H, W) uint8 X-ray.
        cam: (h, w) map in [0, 1] (the film map: same shape as ``pixels``).
        settings: The display settings.
        lungs: (H, W) bool lung mask; its outline is drawn when ``settings.outline``.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    if settings.view == "Heatmap alone":
        image = heatmap_only(cam, settings.colormap, pixels.shape[:2])
    elif settings.view == "Contour lines":
        image = contour_overlay(pixels, cam, levels=CONTOUR_LEVELS)
    else:
        image = overlay_heatmap(pixels, cam, colormap=settings.colormap, opacity=settings.opacity)
    if settings.outline and lungs is not None:
        image = draw_outline(image, lungs, MAP_OUTLINE)
    return image


def xray_image(result: StudyResult, outline: bool) -> np.ndarray:
    """The X-ray as shown: grey, or in colour with the lung outline drawn over it.

    Args:
        result: A scored study.
        outline: Whether to draw the lung outline (ignored without lungs).

    Returns:
        (H, W) uint8, or (H, W, 3) uint8 with the outline.
    """
    if not outline or result.lungs is None:
        return result.pixels
    rgb = np.repeat(result.pixels[:, :, np.newaxis], 3, axis=2)
    return draw_outline(rgb, result.lungs, XRAY_OUTLINE)


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

    The report's map explains the study's label with the current method; the
    lung outline is always drawn over it (when the lungs were segmented), and
    the share of its evidence inside the lungs is printed. A film refused as not
    a chest X-ray has no label, so no map: its report gives the refusal.

    Args:
        study: A scored study, re-labelled at ``threshold`` (:func:`at_threshold`).
        classifier: The loaded classifier.
        settings: The display settings: the map is drawn with their method,
            display, colour map and opacity.
        threshold: The operating point in force (shipped or this session's).
        cam: The film map of the evidence for the study's label, when already
            computed (see :func:`known_map`); unused for a refused film.

    Returns:
        The PDF's bytes (see :func:`covid.screening.report_layout.build_report`).
    """
    meta, result = classifier.metadata, study.result
    if result.refused:
        return build_report(result, None, meta, threshold)
    if cam is None:
        target = meta.class_names.index(result.label)
        cam = class_map(study, classifier, target, settings.method, {})
    overlay = render_map(result.pixels, cam, replace(settings, outline=True), result.lungs)
    return build_report(result, overlay, meta, threshold,
                        lung_evidence=evidence_in_lungs(result, cam))
