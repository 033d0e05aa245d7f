"""Evaluates a trained model on its held-out test split, and calibrates it.

Usage::

    python -m covid.evaluate --model RUN/model.keras --compare models/covid_resnet50.keras

The temperature and the operating point are fitted on the validation split, never
on test: the temperature by log-loss, the operating point as the highest
threshold on P(any finding) = 1 - P(Normal) that still admits 98% of the
validation films of each finding, COVID-19 and other pneumonia alike
(:func:`covid.model.calibration.choose_finding_threshold`, :mod:`covid.model.decision`).
Test figures (:func:`covid.evaluation.metrics.screening_figures`: AUCs with bootstrap CIs, the
3 x 3 confusion matrix, sensitivity, specificity, pneumonias sent home, every
figure by source and by age group), calibration, the share of each film's map
inside its segmented lungs, and the localisation of the COVID-19 map against the
radiologists' masks are written into the model's metadata, with ROC curves,
plots and per-film scores beside the model. ``--compare`` scores another model
(the shipped one, with its own temperature and operating point) on the same test
films, and records its figures beside the new ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covid.evaluation.comparison import ship_verdict
from covid.evaluation.metrics import flagged_by_class, roc_points, screening_figures
from covid.model.calibration import (
    calibrated_probs,
    choose_finding_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from covid.model.decision import decide_labels, p_finding
from covid.model.network import ModelMetadata, metadata_path, read_metadata, write_metadata
from covid.model.ood_stats import mahalanobis_score, ood_path, read_model_stats
from covid.training.catalogue import Catalogue, catalogue_side, data_dir
from covid.training.lung_data import FocusedSet, MaskSet, focused_dataset, match_masks

LOG = logging.getLogger("covid.evaluation.evaluate")
MIN_SENSITIVITY = 0.98
"""Share of validation films with a finding that the operating point must admit."""


def artefact_paths(model_path: str | Path) -> dict[str, Path]:
    """Where the evaluation artefacts of a model live, beside its file.

    Returns:
        Paths keyed ``split``, ``scores``, ``evaluation``, ``roc_png``, ``reliability_png``.
    """
    stem = Path(model_path).with_suffix("")
    return {
        "split": Path(f"{stem}.split.json"), "scores": Path(f"{stem}.test_scores.csv"),
        "evaluation": Path(f"{stem}.evaluation.json"), "roc_png": Path(f"{stem}.roc.png"),
        "reliability_png": Path(f"{stem}.reliability.png"),
    }


def split_side(record: dict, side: str, root: Path | None = None) -> Catalogue:
    """One side of a split record; a two-class record's class is each file's first folder."""
    if root is None and not Path(record["root"]).is_dir():
        recorded = Path(record["root"])
        root = data_dir() / recorded.name if "labels" not in record else data_dir()
    if "labels" in record:
        return catalogue_side(record, side, root)
    names = record["files"][side]
    lookup = {"covid": 0, "normal": 2}
    labels = np.asarray([lookup[Path(n).parts[0].lower()] for n in names], np.int64)
    return Catalogue(Path(root or record["root"]), tuple(names), labels,
                     tuple(Path(n).parts[0] for n in names), tuple("unknown" for _ in names))


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


def true_names(films: Catalogue) -> np.ndarray:
    """(N,) true class names of catalogue films."""
    from covid.training.catalogue import CLASS_NAMES

    return np.asarray(CLASS_NAMES)[films.labels]


def calibrate(val: Scored, class_names: list[str]) -> tuple[float, float]:
    """Temperature and operating point, both from the validation split.

    Films of a class the model does not have (other pneumonias for a two-class
    model) take no part in the temperature, but count as findings.

    Returns:
        ``(temperature, threshold)``.
    """
    names = true_names(val.films)
    known = np.isin(names, class_names)
    index = np.asarray([class_names.index(n) if n in class_names else -1 for n in names])
    temperature = fit_temperature(val.logits[known], index[known])
    probs = calibrated_probs(val.logits, temperature)
    threshold = choose_finding_threshold(p_finding(probs, class_names), names, MIN_SENSITIVITY)
    return temperature, threshold


def calibration_figures(test: Scored, class_names: list[str], temperature: float) -> dict:
    """Top-label ECE before and after scaling, and reliability curves of P(any finding)."""
    names = true_names(test.films)
    known = np.isin(names, class_names)
    index = np.asarray([class_names.index(n) for n in names[known]])
    raw, cal = (calibrated_probs(test.logits, t) for t in (1.0, temperature))
    finding = names != "Normal"
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

    target = classifier.metadata.class_names.index("COVID")
    energies, peaks = [], []
    for j, i in enumerate(masks.index):
        cam = classifier.explain(focused.x[i].astype(np.float32), target=target).cam
        film_cam = cam_to_film(cam, focused.box(i), tuple(int(v) for v in focused.shapes[i]))
        energies.append(energy_inside(film_cam, masks.lungs[j]))
        peaks.append(peak_position(film_cam))
    figures = localisation_summary(np.asarray(energies), np.asarray(peaks).reshape(-1, 2),
                                   masks.lungs, masks.infection)
    return {**with_constant_map(figures, masks.lungs, masks.infection),
            "map": f"Grad-CAM of COVID at {classifier.gradcam_layer}"}


def covid_masks(test: Scored, mask_root: Path, cache_dir: Path | None) -> MaskSet:
    """Radiologists' masks for the test split's COVID films (matched by perceptual hash)."""
    positive = np.flatnonzero(test.films.labels == 0)
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
              "roc_finding": roc_points(p_finding(probs, names), truth != "Normal"),
              **calibration}
    return metrics, curves, shares


def score_column(class_name: str) -> str:
    """A class's column in the scores CSV: ``"Other pneumonia"`` -> ``"p_other_pneumonia"``."""
    return f"p_{class_name.lower().replace(' ', '_')}"


def _write_scores(path: Path, test: Scored, meta: ModelMetadata, shares: np.ndarray) -> None:
    probs = calibrated_probs(test.logits, meta.temperature)
    labels = np.asarray(meta.class_names)[decide_labels(probs, meta.class_names, meta.threshold)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "source", "age", "label",
                         *(score_column(n) for n in meta.class_names),
                         "lung_evidence"])
        for i, name in enumerate(test.films.names):
            share = "" if np.isnan(shares[i]) else f"{shares[i]:.4f}"
            writer.writerow([name, true_names(test.films)[i], test.films.sources[i],
                             test.films.ages[i], labels[i], *(f"{p:.6f}" for p in probs[i]),
                             share])


def _save_plots(metrics: dict, curves: dict, paths: dict[str, Path]) -> None:
    from covid.evaluation.plots import reliability_figure, roc_figure

    finding = metrics["auc_finding"]
    fig = roc_figure(curves["roc_finding"], finding["auc"], tuple(finding["ci95"]),
                     (1 - metrics["specificity"], metrics["admitted_findings"]))
    fig.savefig(paths["roc_png"], dpi=110)
    fig = reliability_figure({
        "before scaling": curves["reliability_before"],
        f"after scaling (T = {metrics['temperature']:.2f})": curves["reliability_after"]})
    fig.savefig(paths["reliability_png"], dpi=110)


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
    lung_model: Path = Path("models/lung_unet.keras")
    compare: Path | None = None
    cache_dir: Path | None = None
    gate_against: Path | None = None


def _loaded(model_path: Path, lung_model: Path):
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter

    classifier = Classifier.from_file(model_path)
    return classifier, LungSegmenter.from_file(lung_model)


def compare_with(model_path: Path, test_films: Catalogue, opts: Options,
                 per_film_maps: bool = True) -> dict:
    """Another model's figures on these films at its own shipped temperature and operating point.

    With out-of-distribution statistics beside it, the share of each true class
    they flag is added as ``ood_flagged``.
    """
    classifier, segmenter = _loaded(model_path, opts.lung_model)
    meta = classifier.metadata
    test = score(classifier, segmenter, test_films, opts.cache_dir)
    metrics, _, _ = test_figures(classifier, test, meta.temperature, meta.threshold,
                                 opts.mask_root, opts.cache_dir, per_film_maps)
    flags = ood_flagged(model_path, test)
    if flags is not None:
        metrics["ood_flagged"] = flags
    return {"model": f"{meta.name} v{meta.version}", "sha256": meta.sha256, **metrics}


def evaluate(model_path: Path, opts: Options) -> dict:
    """Calibrates on validation, measures on test, and writes metadata and artefacts.

    Returns:
        The test metrics written into the metadata.
    """
    classifier, segmenter = _loaded(model_path, opts.lung_model)
    meta = read_metadata(model_path)
    record = json.loads(opts.split.read_text())
    val, test = (score(classifier, segmenter, split_side(record, side, opts.data_root),
                       opts.cache_dir) for side in ("val", "test"))
    meta.temperature, meta.threshold = calibrate(val, meta.class_names)
    LOG.info("temperature %.3f, threshold %.4f on P(any finding)", meta.temperature,
             meta.threshold)
    metrics, curves, shares = test_figures(classifier, test, meta.temperature, meta.threshold,
                                           opts.mask_root, opts.cache_dir)
    metrics["split"] = "test"
    flags = ood_flagged(model_path, test)
    if flags is not None:
        metrics["ood_flagged"] = flags
    if opts.compare is not None:
        metrics["comparison"] = {"previous": compare_with(opts.compare, test.films, opts)}
    if opts.gate_against is not None:
        metrics["ship_gate"] = gate(classifier, val, meta.temperature, meta.threshold,
                                    opts.gate_against, opts)
    meta.metrics = metrics
    write_metadata(meta, model_path)
    paths = artefact_paths(model_path)
    if opts.split.resolve() != paths["split"].resolve():
        shutil.copyfile(opts.split, paths["split"])
    _write_scores(paths["scores"], test, meta, shares)
    paths["evaluation"].write_text(json.dumps(
        {"metrics": metrics, "temperature": meta.temperature, "threshold": meta.threshold,
         "curves": curves}) + "\n")
    _save_plots(metrics, curves, paths)
    return metrics


def validation_figures(model_path: Path, opts: Options, limit: int = 0,
                       per_film_maps: bool = True) -> dict:
    """Validation figures alone, to compare candidates; nothing is written.

    The temperature and operating point are fitted on the same validation films,
    so the figures flatter every candidate alike.

    Args:
        model_path: The candidate.
        opts: What to evaluate against.
        limit: Score at most this many validation films per class (0: all).
        per_film_maps: Also each film's map share inside its lungs (see :func:`test_figures`).
    """
    from covid.training.inputs import stratified_subset

    classifier, segmenter = _loaded(model_path, opts.lung_model)
    films = split_side(json.loads(opts.split.read_text()), "val", opts.data_root)
    if limit:
        films = films.subset(stratified_subset(films.labels, 3 * limit, 0))
    val = score(classifier, segmenter, films, opts.cache_dir)
    temperature, threshold = calibrate(val, classifier.metadata.class_names)
    metrics, _, _ = test_figures(classifier, val, temperature, threshold, opts.mask_root,
                                 opts.cache_dir, per_film_maps)
    return metrics


def gate(classifier, val: Scored, temperature: float, threshold: float, shipped: Path,
         opts: Options) -> dict:
    """The ship gate on the validation split, as recorded in the candidate's metrics.

    The candidate is measured on its already scored validation films at the
    temperature and operating point it fitted there, the shipped model at its
    own, on the same films (:func:`covid.evaluation.comparison.ship_verdict`).

    Returns:
        ``split``, ``ship``, ``reasons``, ``summary`` (the verdict in a sentence),
        ``figures`` (each gate figure: ``key``, ``title``, ``candidate``, ``ci95``,
        ``shipped``, ``worse``) and both models' values by key (the shipped
        model's with its name under ``model``; None where nothing is shipped).
    """
    candidate, _, _ = test_figures(classifier, val, temperature, threshold, opts.mask_root,
                                   opts.cache_dir, per_film_maps=False)
    previous = None
    if shipped.is_file():
        previous = compare_with(shipped, val.films, opts, per_film_maps=False)
    verdict = ship_verdict(candidate, previous)
    judged = verdict.figures
    return {
        "split": "val", "ship": verdict.ship, "reasons": list(verdict.reasons),
        "summary": verdict.summary,
        "figures": [{"key": j.figure.key, "title": j.figure.title, "candidate": j.candidate,
                     "ci95": None if j.ci is None else list(j.ci), "shipped": j.shipped,
                     "worse": j.worse} for j in judged],
        "candidate": {j.figure.key: j.candidate for j in judged},
        "shipped": None if previous is None else {
            "model": previous["model"], **{j.figure.key: j.shipped for j in judged}},
    }


def ship(model_path: Path, target: Path) -> None:
    """Copies a model with its metadata, artefacts and OOD statistics to the shipped location.

    Statistics left at the target by the model it replaces are removed: they
    describe another network's features.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, target)
    shutil.copyfile(metadata_path(model_path), metadata_path(target))
    for key, source in artefact_paths(model_path).items():
        if source.exists():
            shutil.copyfile(source, artefact_paths(target)[key])
    meta = read_metadata(target)
    ood_path(target).unlink(missing_ok=True)
    if "ood" in meta.extra:
        shutil.copyfile(Path(model_path).parent / meta.extra["ood"]["file"], ood_path(target))
        meta.extra["ood"]["file"] = ood_path(target).name
        write_metadata(meta, target)


def set_gradcam_layer(model_path: Path, layer: str) -> None:
    """Records ``layer`` as the model's Grad-CAM layer (the ``.keras`` file is untouched).

    Raises:
        SystemExit: The network has no layer of that name.
    """
    from covid.model.network import load_model

    model, meta = load_model(model_path)
    if layer not in {candidate.name for candidate in model.layers}:
        raise SystemExit(f"--layer: {model_path} has no layer named {layer!r}")
    meta.gradcam_layer = layer
    write_metadata(meta, model_path)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m covid.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the trained model.keras")
    parser.add_argument("--split", type=Path, default=None,
                        help="split record (default: split.json beside the model)")
    parser.add_argument("--data", type=Path, default=None, help="data folder override")
    parser.add_argument("--masks", type=Path, default=None,
                        help="COVID-QU-Ex folder (default: in the data folder)")
    parser.add_argument("--lung-model", type=Path, default=Path("models/lung_unet.keras"))
    parser.add_argument("--compare", type=Path, default=None,
                        help="score this model too, on the same test films (e.g. the shipped)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path.home() / ".cache" / "covid-runs" / "cache")
    parser.add_argument("--ship", type=Path, default=None,
                        help="then copy the model and its artefacts here if it loses no "
                             "headline figure beyond its 95%% CI against the model there, on "
                             "validation (covid.evaluation.comparison)")
    parser.add_argument("--val-only", action="store_true",
                        help="print validation figures to compare candidates; write nothing")
    parser.add_argument("--val-limit", type=int, default=0, help="with --val-only: films/class")
    parser.add_argument("--layer", default=None,
                        help="first record this layer as the model's Grad-CAM layer (also with "
                             "--val-only, to compare layers on validation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.layer:
        set_gradcam_layer(args.model, args.layer)
    split = args.split or args.model.parent / "split.json"
    masks = args.masks or (args.data or data_dir()) / "covid-qu-ex-masks"
    opts = Options(split, args.data, masks if masks.is_dir() else None, args.lung_model,
                   args.compare, args.cache_dir, args.ship)
    if args.val_only:
        print(json.dumps(validation_figures(args.model, opts, args.val_limit), indent=1))
        return
    metrics = evaluate(args.model, opts)
    print(json.dumps(metrics, indent=1, default=str))
    if args.ship:
        verdict = metrics["ship_gate"]
        if not verdict["ship"]:
            LOG.warning("not shipped: the candidate loses what the shipped model had on "
                        "validation:\n- %s", "\n- ".join(verdict["reasons"]))
            raise SystemExit(1)
        ship(args.model, args.ship)
        LOG.info("shipped to %s. %s", args.ship, verdict["summary"])
