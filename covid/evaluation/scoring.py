"""A model scored on a split, as served: its outputs, its calibration and every test figure.

The temperature and the operating point are fitted on the validation split, never
on test: the temperature by log-loss, the operating point as the highest
threshold on P(any finding) = 1 - P(Normal) that still admits
:data:`MIN_SENSITIVITY` of the validation films of each finding, COVID-19 and other
pneumonia alike (:func:`covid.model.calibration.choose_finding_threshold`,
:mod:`covid.model.decision`). The figures (:func:`test_figures`) are the
screening figures (:func:`covid.evaluation.metrics.screening_figures`), the
calibration, the share of each film's map inside its segmented lungs and the
localisation of the COVID-19 map against the radiologists' masks. Nothing here
writes a file: :mod:`covid.evaluation.evaluate` writes, :mod:`covid.evaluation.ship`
judges and ships.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covid.evaluation.metrics import flagged_by_class, roc_points, screening_figures
from covid.model.calibration import (
    calibrated_probs,
    choose_finding_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from covid.model.classes import CLASS_NAMES, COVID, NORMAL, index_of
from covid.model.decision import decide_labels, p_finding
from covid.model.ood_stats import mahalanobis_score, read_model_stats
from covid.settings import settings
from covid.training.catalogue import Catalogue, catalogue_side
from covid.training.lung_data import FocusedSet, MaskSet, focused_dataset, match_masks

MIN_SENSITIVITY = 0.98
"""Share of validation films with a finding that the operating point must admit."""


def split_side(record: dict, side: str, root: Path | None = None) -> Catalogue:
    """One side of a split record, from the recorded data folder or the shared one.

    Args:
        record: The split record (JSON) a trainer wrote.
        side: ``train``, ``val`` or ``test``.
        root: Data folder override (None: the recorded root, else the shared data folder
            when the recorded one is absent on this machine).
    """
    if root is None and not Path(record["root"]).is_dir():
        root = settings().data_dir
    return catalogue_side(record, side, root)


def true_names(films: Catalogue) -> np.ndarray:
    """(N,) true class names of catalogue films."""
    return np.asarray(CLASS_NAMES)[films.labels]


@dataclass(frozen=True)
class Options:
    """What to evaluate against.

    Attributes:
        split: The split record (JSON) from training.
        data_root: Data folder override (None: the record's root).
        mask_root: COVID-QU-Ex folder for the localisation figures (None: skipped).
        lung_model: The lung segmenter.
        compare: Another model to score on the same test films (None: none).
        cache_dir: Cache of segmentations and hashes.
        gate_against: The shipped model to run the ship gate against (None: no gate).
    """

    split: Path
    data_root: Path | None = None
    mask_root: Path | None = None
    lung_model: Path = field(default_factory=lambda: settings().lung_model_path)
    compare: Path | None = None
    cache_dir: Path | None = None
    gate_against: Path | None = None

    def side(self, side: str) -> Catalogue:
        """One side of the split record's films."""
        return split_side(json.loads(self.split.read_text()), side, self.data_root)


@dataclass(frozen=True)
class Scored:
    """A model's raw outputs on a set of films.

    Attributes:
        films: The films.
        logits: (N, C) logits over the model's classes.
        features: (N, F) pooled features from the same pass (for the OOD statistics).
        focused: The films' model inputs and lungs.
    """

    films: Catalogue
    logits: np.ndarray
    features: np.ndarray
    focused: FocusedSet


def checked_layer(model, layer: str, model_path: Path) -> str:
    """``layer`` if the network has a layer of that name.

    Raises:
        SystemExit: It has none (the ``--layer`` flag's message).
    """
    if layer not in {candidate.name for candidate in model.layers}:
        raise SystemExit(f"--layer: {model_path} has no layer named {layer!r}")
    return layer


def load_scorer(model_path: Path, lung_model: Path, layer: str | None = None):
    """The classifier as served, and the lung segmenter it was trained with.

    Both come from the one loader (:func:`covid.explain.loading.load_verified`),
    which verifies their SHA-256s and refuses another lung segmenter than the
    classifier's own; the segmenter is loaded for a whole-film classifier too,
    since every map is measured against the lungs.

    Args:
        model_path: The ``.keras`` model with its metadata beside it.
        lung_model: The lung segmenter's file.
        layer: A Grad-CAM layer to use instead of the metadata's, in memory only
            (the metadata is not written).

    Returns:
        ``(classifier, segmenter)``.

    Raises:
        ModelFileError: A file is missing or altered, or the segmenter is not the
            classifier's own.
        SystemExit: The model has no layer ``layer`` (the ``--layer`` flag's message).
    """
    from covid.explain.loading import UnknownLayerError, load_verified

    try:
        loaded = load_verified(model_path, lung_model, lungs_required=True, gradcam_layer=layer)
    except UnknownLayerError as err:
        raise SystemExit(f"--layer: {err}") from err
    return loaded.classifier, loaded.segmenter


def score(classifier, segmenter, films: Catalogue, cache_dir: Path | None) -> Scored:
    """Runs the serving path (focus, then the network) over films."""
    meta = classifier.metadata
    focused = focused_dataset(films.paths, meta.input_size, meta.input_mode, segmenter,
                              cache_dir=cache_dir, contrast=meta.input_contrast)
    logits, features = classifier.forward_batch(focused.x.astype(np.float32))
    return Scored(films, logits, features, focused)


def ood_flagged(model_path: Path, scored: Scored) -> dict[str, float] | None:
    """Share of each true class the model's own OOD statistics flag (None: it has none)."""
    stats = read_model_stats(model_path)
    if stats is None or not np.isfinite(stats.threshold):
        return None
    flagged = mahalanobis_score(stats, scored.features) > stats.threshold
    return flagged_by_class(flagged, true_names(scored.films))


def calibrate(val: Scored, class_names: list[str]) -> tuple[float, float]:
    """Temperature and operating point, both from the validation split.

    Films of a class the model does not have (other pneumonias for a two-class
    model) take no part in the temperature, but count as findings.

    Returns:
        ``(temperature, threshold)``.
    """
    names = true_names(val.films)
    known = np.isin(names, class_names)
    index = np.asarray([index_of(class_names, n) if n in class_names else -1 for n in names])
    temperature = fit_temperature(val.logits[known], index[known])
    probs = calibrated_probs(val.logits, temperature)
    threshold = choose_finding_threshold(p_finding(probs, class_names), names, MIN_SENSITIVITY)
    return temperature, threshold


def calibration_figures(test: Scored, class_names: list[str], temperature: float) -> dict:
    """Top-label ECE before and after scaling, and reliability curves of P(any finding)."""
    names = true_names(test.films)
    known = np.isin(names, class_names)
    index = np.asarray([index_of(class_names, n) for n in names[known]])
    raw, cal = (calibrated_probs(test.logits, t) for t in (1.0, temperature))
    finding = names != NORMAL
    return {
        "ece_before_scaling": expected_calibration_error(raw[known], index),
        "ece_after_scaling": expected_calibration_error(cal[known], index),
        "reliability_before": reliability_curve(p_finding(raw, class_names), finding),
        "reliability_after": reliability_curve(p_finding(cal, class_names), finding),
    }


def localisation(classifier, focused: FocusedSet, masks: MaskSet) -> dict:
    """How the COVID-19 maps sit against radiologists' lung and infection masks.

    Each map is computed on the unaltered model input, placed back on the film
    (:func:`covid.explain.localisation.cam_to_film`) and compared with the masks.

    Returns:
        :func:`covid.evaluation.map_checks.localisation_summary` (energy and peak in
        the lungs, peak in the film's own infection and in other films', the
        busiest sixteenth, with 95% CIs and a uniform map's figures), the same
        figures for the constant map (``<key>_constant``), and the map's name.
    """
    from covid.evaluation.map_checks import localisation_summary, with_constant_map
    from covid.explain.localisation import cam_to_film, energy_inside, peak_position

    target = index_of(classifier.metadata.class_names, COVID)
    energies, peaks = [], []
    for j, i in enumerate(masks.index):
        cam = classifier.explain(focused.x[i].astype(np.float32), target=target).cam
        film_cam = cam_to_film(cam, focused.box(i), tuple(int(v) for v in focused.shapes[i]))
        energies.append(energy_inside(film_cam, masks.lungs[j]))
        peaks.append(peak_position(film_cam))
    figures = localisation_summary(np.asarray(energies), np.asarray(peaks).reshape(-1, 2),
                                   masks.lungs, masks.infection)
    return {**with_constant_map(figures, masks.lungs, masks.infection),
            "map": f"Grad-CAM of {COVID} at {classifier.gradcam_layer}"}


def covid_masks(test: Scored, mask_root: Path, cache_dir: Path | None) -> MaskSet:
    """Radiologists' masks for the test split's COVID films (matched by perceptual hash)."""
    positive = np.flatnonzero(true_names(test.films) == COVID)
    found = match_masks(tuple(test.films.paths[i] for i in positive), mask_root,
                        cache_dir=cache_dir)
    return MaskSet(positive[found.index], found.lungs, found.infection, found.distance)


def lung_evidence(classifier, test: Scored, targets: np.ndarray) -> np.ndarray:
    """(N,) share of each film's labelled-class Grad-CAM inside its segmented lungs (NaN: none)."""
    from covid.explain.localisation import cam_to_film, energy_inside

    shares = np.full(len(targets), np.nan)
    if test.focused.lungs is None:
        return shares
    for i, image in enumerate(test.focused.x.astype(np.float32)):
        cam = classifier.explain(image, target=int(targets[i])).cam
        film = cam_to_film(cam, test.focused.box(i), test.focused.lungs[i].shape)
        shares[i] = energy_inside(film, test.focused.lungs[i])
    return shares


def test_figures(classifier, test: Scored, temperature: float, threshold: float,
                 mask_root: Path | None, cache_dir: Path | None, per_film_maps: bool = True
                 ) -> tuple[dict, dict, np.ndarray]:
    """Every test figure of one model at its temperature and operating point.

    Args:
        classifier: The model, as served.
        test: Its outputs on the films.
        temperature: Calibration temperature.
        threshold: Operating point on P(any finding).
        mask_root: COVID-QU-Ex folder for the localisation figures (None: skipped).
        cache_dir: Cache of the masks' hashes.
        per_film_maps: Also the share of every film's map inside its lungs (a
            Grad-CAM per film; the ship gate does without).

    Returns:
        ``(metrics, curves, lung_shares)`` (shares NaN without ``per_film_maps``).
    """
    names = classifier.metadata.class_names
    probs = calibrated_probs(test.logits, temperature)
    truth = true_names(test.films)
    groups = {"by_source": np.asarray(test.films.sources), "by_age": np.asarray(test.films.ages)}
    metrics = screening_figures(probs, truth, names, threshold, groups)
    calibration = calibration_figures(test, names, temperature)
    metrics.update({k: calibration.pop(k) for k in ("ece_before_scaling", "ece_after_scaling")})
    metrics["temperature"] = temperature
    targets = decide_labels(probs, names, threshold)
    shares = np.full(len(targets), np.nan)
    if per_film_maps:
        shares = lung_evidence(classifier, test, targets)
    metrics["lung_evidence_mean"] = {
        n: float(np.nanmean(shares[truth == n])) for n in np.unique(truth)
        if np.isfinite(shares[truth == n]).any()}
    if mask_root is not None:
        metrics["localisation"] = localisation(classifier, test.focused,
                                               covid_masks(test, mask_root, cache_dir))
    curves = {"roc_per_class": {n: roc_points(probs[:, c], truth == n)
                                for c, n in enumerate(names)},
              "roc_finding": roc_points(p_finding(probs, names), truth != NORMAL),
              **calibration}
    return metrics, curves, shares


def compare_with(model_path: Path, test_films: Catalogue, opts: Options,
                 per_film_maps: bool = True) -> dict:
    """Another model's figures on these films at its own shipped temperature and operating point.

    With out-of-distribution statistics beside it, the share of each true class
    they flag is added as ``ood_flagged``.
    """
    classifier, segmenter = load_scorer(model_path, opts.lung_model)
    meta = classifier.metadata
    test = score(classifier, segmenter, test_films, opts.cache_dir)
    metrics, _, _ = test_figures(classifier, test, meta.temperature, meta.threshold,
                                 opts.mask_root, opts.cache_dir, per_film_maps)
    flags = ood_flagged(model_path, test)
    if flags is not None:
        metrics["ood_flagged"] = flags
    return {"model": f"{meta.name} v{meta.version}", "sha256": meta.sha256, **metrics}


def validation_figures(model_path: Path, opts: Options, limit: int = 0,
                       per_film_maps: bool = True, layer: str | None = None) -> dict:
    """Validation figures alone, to compare candidates; nothing is written.

    The temperature and operating point are fitted on the same validation films,
    so the figures flatter every candidate alike.

    Args:
        model_path: The candidate.
        opts: What to evaluate against.
        limit: Score at most this many validation films per class (0: all).
        per_film_maps: Also each film's map share inside its lungs (see :func:`test_figures`).
        layer: A Grad-CAM layer to try instead of the metadata's (not recorded).
    """
    from covid.training.inputs import stratified_subset

    classifier, segmenter = load_scorer(model_path, opts.lung_model, layer)
    films = opts.side("val")
    if limit:
        films = films.subset(stratified_subset(films.labels, len(CLASS_NAMES) * limit, 0))
    val = score(classifier, segmenter, films, opts.cache_dir)
    temperature, threshold = calibrate(val, classifier.metadata.class_names)
    metrics, _, _ = test_figures(classifier, val, temperature, threshold, opts.mask_root,
                                 opts.cache_dir, per_film_maps)
    return metrics
