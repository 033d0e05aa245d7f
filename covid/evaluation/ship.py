"""The ship gate, shipping a model, and the one metadata edit made by hand (the map layer).

A candidate replaces the shipped model only if it loses nothing on validation
(:func:`gate`, judged by :func:`covid.evaluation.comparison.ship_verdict`);
:func:`ship` then copies it with its metadata, evaluation artefacts and
out-of-distribution statistics. :func:`set_gradcam_layer` records the Grad-CAM layer
chosen beforehand (``python -m covid.evaluate --val-only --layer`` compares layers
without writing).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.comparison import ship_verdict
from covid.evaluation.scoring import Options, Scored, checked_layer, compare_with, test_figures
from covid.model.metadata import metadata_path, read_metadata, write_metadata
from covid.model.ood_stats import ood_path


def gate(classifier, val: Scored, temperature: float, threshold: float, shipped: Path,
         opts: Options) -> dict:
    """The ship gate on the validation split, as recorded in the candidate's metrics.

    The candidate is measured on its already scored validation films at the
    temperature and operating point it fitted there, the shipped model at its
    own, on the same films (:func:`covid.evaluation.comparison.ship_verdict`).

    Args:
        classifier: The candidate, as served.
        val: Its outputs on the validation films.
        temperature: Its temperature, fitted on them.
        threshold: Its operating point, fitted on them.
        shipped: The shipped model (it may not exist yet).
        opts: What to evaluate against.

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
    meta.gradcam_layer = checked_layer(model, layer, model_path)
    write_metadata(meta, model_path)
