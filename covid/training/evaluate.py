"""Evaluates a trained model on its held-out test split, and calibrates it.

Usage::

    python -m covid.evaluate --model runs/main/model.keras --ship models/covid_resnet50.keras

The temperature and the operating threshold are fitted on the validation split,
never on test. Test metrics (AUC with a bootstrap 95% CI, sensitivity,
specificity, PPV, NPV, the confusion matrix, ECE before and after temperature
scaling) are computed with the model in inference mode and written into the
model's metadata. ROC and reliability plots, the per-image test scores and the
evaluation data behind the plots are saved next to the model.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from covid.model.calibration import (
    calibrated_probs,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from covid.model.classifier import ModelMetadata, metadata_path, read_metadata, write_metadata
from covid.training.lung_data import FocusedSet, MaskSet, focused_dataset, match_masks
from covid.training.metrics import auc_with_ci, operating_point, roc_points

LOG = logging.getLogger("covid.training.evaluate")


def artefact_paths(model_path: str | Path) -> dict[str, Path]:
    """Where the evaluation artefacts of a model live, beside its file.

    Args:
        model_path: The ``.keras`` file.

    Returns:
        Paths keyed ``split``, ``scores``, ``evaluation``, ``roc_png``, ``reliability_png``.
    """
    model_path = Path(model_path)
    stem = model_path.with_suffix("")
    return {
        "split": Path(f"{stem}.split.json"),
        "scores": Path(f"{stem}.test_scores.csv"),
        "evaluation": Path(f"{stem}.evaluation.json"),
        "roc_png": Path(f"{stem}.roc.png"),
        "reliability_png": Path(f"{stem}.reliability.png"),
    }


def load_split_side(split: dict, side: str, class_names: list[str], data_root: Path | None):
    """Paths and labels of one side of a stored split.

    Args:
        split: The split record written by training.
        side: ``"train"``, ``"val"`` or ``"test"``.
        class_names: Class names; a file's class is its first folder.
        data_root: Dataset folder (None: the one recorded in the split).

    Returns:
        (relative names, absolute paths, (N,) labels).
    """
    root = Path(data_root or split["root"])
    names = split["files"][side]
    lowered = [c.lower() for c in class_names]
    labels = np.asarray([lowered.index(Path(n).parts[0].lower()) for n in names])
    return names, tuple(root / n for n in names), labels


def summarise(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    positive_index: int = 0,
    min_sensitivity: float = 0.98,
) -> dict:
    """Calibrates on validation and measures on test.

    Args:
        val_logits: (Nv, C) validation logits.
        val_labels: (Nv,) validation class indices.
        test_logits: (Nt, C) test logits.
        test_labels: (Nt,) test class indices.
        positive_index: Index of the positive class.
        min_sensitivity: Validation sensitivity the threshold must keep.

    Returns:
        ``temperature``, ``threshold``, ``metrics`` (for the metadata) and
        ``curves`` (ROC and reliability data for plots and the model page).
    """
    temperature = fit_temperature(val_logits, val_labels)
    val_p = calibrated_probs(val_logits, temperature)[:, positive_index]
    threshold = choose_threshold(val_p, val_labels == positive_index, min_sensitivity)
    raw = calibrated_probs(test_logits, 1.0)
    cal = calibrated_probs(test_logits, temperature)
    is_pos = test_labels == positive_index
    auc, low, high = auc_with_ci(cal[:, positive_index], is_pos)
    point = operating_point(cal[:, positive_index], is_pos, threshold)
    metrics = {
        "split": "test",
        "mode": "inference (BatchNorm moving statistics)",
        "n": len(test_labels),
        "auc": auc,
        "auc_ci95": [low, high],
        **{k: point[k] for k in ("sensitivity", "specificity", "ppv", "npv")},
        "confusion": {"tp": point["tp"], "fn": point["fn"], "fp": point["fp"], "tn": point["tn"]},
        "ece_before_scaling": expected_calibration_error(raw, test_labels),
        "ece_after_scaling": expected_calibration_error(cal, test_labels),
        "val_ece_before_scaling": expected_calibration_error(
            calibrated_probs(val_logits, 1.0), val_labels
        ),
        "val_ece_after_scaling": expected_calibration_error(
            calibrated_probs(val_logits, temperature), val_labels
        ),
        "val_sensitivity_target": min_sensitivity,
    }
    curves = {
        "roc": roc_points(cal[:, positive_index], is_pos),
        "reliability_before": reliability_curve(raw[:, positive_index], is_pos),
        "reliability_after": reliability_curve(cal[:, positive_index], is_pos),
    }
    return {"temperature": temperature, "threshold": threshold, "metrics": metrics,
            "curves": curves}


def _save_plots(summary: dict, meta: ModelMetadata, paths: dict[str, Path]) -> None:
    from covid.training.plots import reliability_figure, roc_figure

    m = summary["metrics"]
    fig = roc_figure(summary["curves"]["roc"], m["auc"], tuple(m["auc_ci95"]),
                     (1 - m["specificity"], m["sensitivity"]))
    fig.savefig(paths["roc_png"], dpi=110)
    fig = reliability_figure({
        "before scaling": summary["curves"]["reliability_before"],
        f"after scaling (T = {summary['temperature']:.2f})": summary["curves"]["reliability_after"],
    })
    fig.savefig(paths["reliability_png"], dpi=110)


def _write_scores(path: Path, names: list[str], labels: np.ndarray, logits: np.ndarray,
                  temperature: float, meta: ModelMetadata,
                  lung_evidence: list[float | None]) -> None:
    probs = calibrated_probs(logits, temperature)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "p_covid", "logit_covid", "logit_normal",
                         "lung_evidence"])
        for name, label, p, z, share in zip(names, labels, probs, logits, lung_evidence,
                                            strict=True):
            writer.writerow([name, meta.class_names[label], f"{p[meta.positive_index]:.6f}",
                             f"{z[0]:.5f}", f"{z[1]:.5f}",
                             "" if share is None else f"{share:.4f}"])


def cam_energy(classifier, focused: FocusedSet, labels: np.ndarray, targets: np.ndarray) -> dict:
    """Where the labelled class's Grad-CAM puts its energy on the test split.

    In the model's input: chest centre, border and corners. On the film: the
    share inside the segmented lungs, as the page shows it.

    Args:
        classifier: The loaded :class:`covid.explain.inference.Classifier`.
        focused: The test films' inputs, boxes and lung masks.
        labels: (N,) true class indices.
        targets: (N,) class indices explained (the labels at the operating point).

    Returns:
        Mean energy shares ``overall``, ``per_class`` (true class) and
        ``by_predicted``, each region's share of the image ``area``, and
        ``lung_evidence``: the per-film share inside the lungs (None without lungs).
    """
    from covid.explain.cam_stats import area_shares, energy_shares, summarise_shares
    from covid.explain.localisation import cam_to_film, energy_inside

    shares, lung_evidence = [], []
    for i, image in enumerate(focused.x.astype(np.float32)):
        explanation = classifier.explain(image, target=int(targets[i]))
        shares.append(energy_shares(explanation.cam))
        if focused.lungs is None:
            lung_evidence.append(None)
            continue
        film = cam_to_film(explanation.cam, focused.box(i), focused.lungs[i].shape)
        lung_evidence.append(energy_inside(film, focused.lungs[i]))
    names = classifier.metadata.class_names
    summary = summarise_shares(shares, labels.tolist(), names, targets.tolist())
    return {"overall": summary["overall"], "per_class": summary["by_class"],
            "by_predicted": summary["by_predicted"], "area": area_shares(*focused.x.shape[1:3]),
            "method": "Grad-CAM of the class labelled at the operating point",
            "layer": classifier.gradcam_layer, "lung_evidence": lung_evidence}


PAEDIATRIC_MAX_NUMBER = 1341
"""Normal films numbered up to this are the paediatric (Kermany) part of the database."""


def is_paediatric(name: str) -> bool:
    """Whether a Normal film's name (``Normal/Normal-123.jpg``) marks it as paediatric."""
    stem = Path(name).stem
    number = stem.rsplit("-", 1)[-1]
    return stem.lower().startswith("normal") and number.isdigit() and (
        int(number) <= PAEDIATRIC_MAX_NUMBER
    )


def specificity_by_source(names: list[str], labels: np.ndarray, p_positive: np.ndarray,
                          threshold: float, positive_index: int) -> dict:
    """Specificity at the operating point, for paediatric and adult normal films apart.

    Args:
        names: N file names relative to the dataset.
        labels: (N,) class indices.
        p_positive: (N,) calibrated positive-class probabilities.
        threshold: The operating point.
        positive_index: The positive class's index.

    Returns:
        ``{"paediatric": {...}, "adult": {...}}`` with ``n``, ``false_alarms`` and
        ``specificity`` (None for a group without films).
    """
    normal = labels != positive_index
    child = np.array([is_paediatric(n) for n in names], bool)
    out = {}
    for group, chosen in (("paediatric", normal & child), ("adult", normal & ~child)):
        n = int(chosen.sum())
        flagged = int((p_positive[chosen] >= threshold).sum())
        out[group] = {"n": n, "false_alarms": flagged,
                      "specificity": None if n == 0 else 1.0 - flagged / n}
    return out


def localisation(classifier, focused: FocusedSet, masks: MaskSet) -> dict:
    """How the positive class's maps sit against radiologists' lung and infection masks.

    Each map is computed on the unaltered model input, placed back on the film
    (:func:`covid.explain.localisation.cam_to_film`) and compared with the masks.

    Args:
        classifier: The loaded :class:`covid.explain.inference.Classifier`.
        focused: The inputs of the films the masks index into.
        masks: The matched masks (all positive-class films).

    Returns:
        Means of the energy share inside the lungs, of the peak inside the lungs
        and inside the infection, each beside what a uniform map scores (the
        masks' mean area share), and ``n``.
    """
    from covid.explain.localisation import cam_to_film, energy_inside, peak_inside

    target = classifier.metadata.positive_index
    share, peak_lungs, peak_infection, lung_area, infection_area = [], [], [], [], []
    for j, i in enumerate(masks.index):
        cam = classifier.explain(focused.x[i], target=target).cam
        film_cam = cam_to_film(cam, focused.box(i), tuple(int(v) for v in focused.shapes[i]))
        share.append(energy_inside(film_cam, masks.lungs[j]))
        peak_lungs.append(peak_inside(film_cam, masks.lungs[j]))
        lung_area.append(masks.lungs[j].mean())
        if masks.infection[j].any():
            peak_infection.append(peak_inside(film_cam, masks.infection[j]))
            infection_area.append(masks.infection[j].mean())

    def _mean(values) -> float | None:
        return float(np.mean(values)) if len(values) else None

    return {
        "n": len(masks.index), "n_with_infection": len(peak_infection),
        "energy_in_lungs": _mean(share), "energy_in_lungs_uniform": _mean(lung_area),
        "peak_in_lungs": _mean(peak_lungs), "peak_in_lungs_uniform": _mean(lung_area),
        "peak_in_infection": _mean(peak_infection),
        "peak_in_infection_uniform": _mean(infection_area),
        "share_per_film": [round(v, 4) for v in share],
        "map": f"Grad-CAM of {classifier.metadata.positive_class} at {classifier.gradcam_layer}",
    }


def _segmenter_for(meta: ModelMetadata, lung_model: Path):
    """The lung segmenter a classifier needs (None for whole-film input)."""
    if meta.input_mode == "full" and not lung_model.exists():
        return None
    from covid.model.lungs import LungSegmenter

    return LungSegmenter.from_file(lung_model)


def evaluate(model_path: Path, split_path: Path, data_root: Path | None = None,
             mask_root: Path | None = None, lung_model: Path = Path("models/lung_unet.keras"),
             sides: tuple[str, ...] = ("val", "test"), gradcam_layer: str | None = None) -> dict:
    """Runs the evaluation and writes the metadata and artefacts beside the model.

    Args:
        model_path: The ``.keras`` model (its metadata JSON beside it).
        split_path: The split record from training.
        data_root: Dataset folder override.
        mask_root: COVID-QU-Ex folder for the localisation figures (None: skipped).
        lung_model: The lung segmenter (needed by lung-focused classifiers).
        sides: ``("val", "test")`` for the full evaluation; ``("val",)`` to compare
            candidates on validation alone (nothing is written then).
        gradcam_layer: Explain this layer instead of the metadata's (to compare
            layers on validation; the metadata records the chosen one).

    Returns:
        The summary from :func:`summarise` (test) or the validation figures.
    """
    from covid.explain.inference import Classifier

    classifier = Classifier.from_file(model_path)
    meta = read_metadata(model_path)
    if gradcam_layer:
        meta.gradcam_layer = gradcam_layer
        classifier = Classifier(classifier.model, meta)
    segmenter = _segmenter_for(meta, lung_model)
    split = json.loads(split_path.read_text())
    size = meta.input_size
    logits, labels, names, local = {}, {}, {}, {}
    for side in sides:
        names[side], files, labels[side] = load_split_side(split, side, meta.class_names,
                                                          data_root)
        focused = focused_dataset(files, size, meta.input_mode, segmenter)
        logits[side] = classifier.logits_batch(focused.x.astype(np.float32))
        if mask_root is not None:
            positive = np.flatnonzero(labels[side] == meta.positive_index)
            found = match_masks(tuple(files[i] for i in positive), mask_root)
            found = MaskSet(positive[found.index], found.lungs, found.infection, found.distance)
            local[side] = localisation(classifier, focused, found)
            LOG.info("%s localisation: %s", side,
                     {k: v for k, v in local[side].items() if k != "share_per_film"})
        if side == "test":
            test_focused = focused
        LOG.info("%s: %d images scored", side, len(files))
    if "test" not in sides:
        from sklearn.metrics import roc_auc_score

        return {"val_auc": float(roc_auc_score(labels["val"] == meta.positive_index,
                                               logits["val"][:, meta.positive_index]
                                               - logits["val"][:, 1 - meta.positive_index])),
                "val_localisation": local.get("val")}
    summary = summarise(logits["val"], labels["val"], logits["test"], labels["test"],
                        meta.positive_index)
    meta.temperature, meta.threshold = summary["temperature"], summary["threshold"]
    p_test = calibrated_probs(logits["test"], meta.temperature)[:, meta.positive_index]
    other = 1 - meta.positive_index
    targets = np.where(p_test >= meta.threshold, meta.positive_index, other)
    energy = cam_energy(classifier, test_focused, labels["test"], targets)
    evidence = np.array([np.nan if v is None else v for v in energy["lung_evidence"]])
    if np.isfinite(evidence).any():
        summary["metrics"]["lung_evidence_mean"] = {
            "all": float(np.nanmean(evidence)),
            **{name: float(np.nanmean(evidence[labels["test"] == c]))
               for c, name in enumerate(meta.class_names)},
            "below_half": float(np.nanmean(evidence < 0.5)),
            "what": "share of the labelled class's Grad-CAM energy inside the segmented lungs",
        }
    summary["metrics"]["specificity_by_source"] = specificity_by_source(
        names["test"], labels["test"], p_test, meta.threshold, meta.positive_index)
    if "test" in local:
        summary["metrics"]["localisation"] = {
            k: v for k, v in local["test"].items() if k != "share_per_film"}
        summary["metrics"]["localisation"]["split"] = "test (COVID films with COVID-QU-Ex masks)"
    meta.metrics = {**summary["metrics"], "cam_energy_central": energy["overall"]["central"]}
    write_metadata(meta, model_path)
    paths = artefact_paths(model_path)
    if split_path.resolve() != paths["split"].resolve():
        shutil.copyfile(split_path, paths["split"])
    _write_scores(paths["scores"], names["test"], labels["test"], logits["test"],
                  meta.temperature, meta, energy.pop("lung_evidence"))
    paths["evaluation"].write_text(json.dumps(
        {"metrics": summary["metrics"], "temperature": meta.temperature,
         "threshold": meta.threshold, "curves": summary["curves"], "cam_energy": energy,
         "localisation": local}) + "\n")
    _save_plots(summary, meta, paths)
    return summary


def ship(model_path: Path, target: Path) -> None:
    """Copies a model with its metadata and artefacts to the shipped location."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, target)
    shutil.copyfile(metadata_path(model_path), metadata_path(target))
    for key, source in artefact_paths(model_path).items():
        if source.exists():
            shutil.copyfile(source, artefact_paths(target)[key])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m covid.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/main/model.keras"))
    parser.add_argument("--split", type=Path, default=None,
                        help="split record (default: split.json in the model's run folder, "
                        "else <model>.split.json)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder override")
    parser.add_argument("--masks", type=Path, default=Path("../shared/data/covid-qu-ex-masks"),
                        help="COVID-QU-Ex folder for the localisation figures")
    parser.add_argument("--lung-model", type=Path, default=Path("models/lung_unet.keras"))
    parser.add_argument("--layer", default=None, help="Grad-CAM layer override (with --val-only "
                        "to compare; without, it is recorded in the metadata)")
    parser.add_argument("--val-only", action="store_true",
                        help="compare candidates on validation; writes nothing")
    parser.add_argument("--ship", type=Path, default=None,
                        help="also copy the evaluated model and its artefacts here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    split = args.split
    if split is None:
        beside = args.model.parent / "split.json"
        split = beside if beside.exists() else artefact_paths(args.model)["split"]
    masks = args.masks if args.masks.is_dir() else None
    if args.val_only:
        found = evaluate(args.model, split, args.data, masks, args.lung_model, ("val",),
                         args.layer)
        found["val_localisation"].pop("share_per_film", None)
        print(json.dumps(found, indent=1, default=str))
        return
    summary = evaluate(args.model, split, args.data, masks, args.lung_model,
                       gradcam_layer=args.layer)
    print(json.dumps({k: summary[k] for k in ("temperature", "threshold", "metrics")}, indent=2))
    if args.ship:
        ship(args.model, args.ship)
        LOG.info("shipped to %s", args.ship)


if __name__ == "__main__":
    main()
