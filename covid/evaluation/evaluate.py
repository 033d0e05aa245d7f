"""Evaluates a trained model on its held-out test split, calibrates it, and writes the results.

Usage::

    python -m covid.evaluate --model RUN/model.keras --compare models/covid_resnet50.keras

The temperature and the operating point come from the validation split
(:func:`covid.evaluation.scoring.calibrate`); the test figures
(:func:`covid.evaluation.scoring.test_figures`) are written into the model's
metadata, with ROC curves, plots and per-film scores beside the model
(:func:`covid.evaluation.artefacts.artefact_paths`), which the model page reads.
``--compare`` scores another model (the shipped one, with its own temperature and
operating point) on the same test films, and records its figures beside the new
ones; with a model to gate against, the ship gate's verdict on the validation split
(:func:`covid.evaluation.ship.gate`) is recorded too.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.scoring import (
    Options,
    Scored,
    calibrate,
    compare_with,
    load_scorer,
    ood_flagged,
    score,
    test_figures,
    true_names,
)
from covid.evaluation.ship import gate
from covid.model.calibration import calibrated_probs
from covid.model.classes import probability_column
from covid.model.decision import decide_labels
from covid.model.metadata import ModelMetadata, read_metadata, write_metadata

LOG = logging.getLogger(__name__)

SCORES_HEAD = ("file", "true", "source", "age", "label")
"""The scores CSV's first columns; one probability column per class and ``lung_evidence``
follow."""


def evaluate(model_path: Path, opts: Options) -> dict:
    """Calibrates on validation, measures on test, and writes metadata and artefacts.

    Returns:
        The test metrics written into the metadata.
    """
    classifier, segmenter = load_scorer(model_path, opts.lung_model)
    meta = read_metadata(model_path)
    val, test = (score(classifier, segmenter, opts.side(side), opts.cache_dir)
                 for side in ("val", "test"))
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
    write_artefacts(model_path, opts.split, test, meta, curves, shares)
    return metrics


def write_artefacts(model_path: Path, split: Path, test: Scored, meta: ModelMetadata,
                    curves: dict, shares: np.ndarray) -> None:
    """The split record, per-film scores, evaluation JSON and charts, beside the model.

    Args:
        model_path: The evaluated model.
        split: Its split record (copied beside it).
        test: Its outputs on the test films.
        meta: Its metadata, calibrated, with the test metrics.
        curves: The test curves (ROC per class and of any finding, reliability).
        shares: (N,) each test film's map share inside its lungs (NaN: not measured).
    """
    paths = artefact_paths(model_path)
    if split.resolve() != paths["split"].resolve():
        shutil.copyfile(split, paths["split"])
    write_scores(paths["scores"], test, meta, shares)
    paths["evaluation"].write_text(json.dumps(
        {"metrics": meta.metrics, "temperature": meta.temperature, "threshold": meta.threshold,
         "curves": curves}) + "\n")
    save_plots(meta.metrics, curves, paths)


def write_scores(path: Path, test: Scored, meta: ModelMetadata, shares: np.ndarray) -> None:
    """The per-film scores CSV: truth, source, age, decided label, every class's probability.

    Args:
        path: The CSV to write.
        test: The model's outputs on the test films.
        meta: Its calibrated metadata (temperature, threshold, class names).
        shares: (N,) each film's map share inside its lungs (NaN: written empty).
    """
    probs = calibrated_probs(test.logits, meta.temperature)
    labels = np.asarray(meta.class_names)[decide_labels(probs, meta.class_names, meta.threshold)]
    truth = true_names(test.films)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*SCORES_HEAD, *(probability_column(n) for n in meta.class_names),
                         "lung_evidence"])
        for i, name in enumerate(test.films.names):
            share = "" if np.isnan(shares[i]) else f"{shares[i]:.4f}"
            writer.writerow([name, truth[i], test.films.sources[i], test.films.ages[i],
                             labels[i], *(f"{p:.6f}" for p in probs[i]), share])


def save_plots(metrics: dict, curves: dict, paths: dict[str, Path]) -> None:
    """The ROC of P(any finding) with the operating point, and the reliability diagram."""
    from covid.evaluation.plots import reliability_figure, roc_figure

    finding = metrics["auc_finding"]
    fig = roc_figure(curves["roc_finding"], finding["auc"], tuple(finding["ci95"]),
                     (1 - metrics["specificity"], metrics["admitted_findings"]))
    fig.savefig(paths["roc_png"], dpi=110)
    fig = reliability_figure({
        "before scaling": curves["reliability_before"],
        f"after scaling (T = {metrics['temperature']:.2f})": curves["reliability_after"]},
        "any finding")
    fig.savefig(paths["reliability_png"], dpi=110)
