"""Where a model's evaluation artefacts lie: beside its ``.keras`` file.

The evaluation writes them (:mod:`covid.evaluation.evaluate`), shipping copies them
(:mod:`covid.evaluation.ship`), the model page reads them back
(:mod:`covid.evaluation.results`). A plain module, so that the page pays for no
import to find them.
"""

from __future__ import annotations

from pathlib import Path


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


def default_split(model_path: str | Path) -> Path:
    """The split copied beside a shipped model (``NAME.split.json``), else its run's."""
    beside = artefact_paths(model_path)["split"]
    return beside if beside.is_file() else Path(model_path).parent / "split.json"
