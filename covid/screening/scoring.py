"""Scoring files into rows: the one scoring path of ``predict`` and the Ray archive.

Columns, in order: ``path, label, p_covid, p_normal, error, ood, lung_evidence,
p_other_pneumonia, flag, advice, opacity_extent, severity`` (a probability
column is empty for a class the model lacks). ``label`` is the class at the
shipped operating point; probabilities are calibrated and sum to 1.
``lung_evidence`` is the share of the predicted class's Grad-CAM energy inside
the segmented lungs, in [0, 1]. ``flag`` is ``none``, ``unusual`` (a chest X-ray
unlike the training films: kept, always admitted) or ``not_chest`` (refused:
label, probabilities, lung evidence, advice and opacity figures empty); ``ood``
is ``true`` for either flag. ``advice`` is ``admit``, ``home`` or empty. Every
one of them is what the decision rule (:func:`covid.model.decision.decide`)
said. ``opacity_extent`` (the share of both lung fields covered by opacity, 0-1)
and ``severity`` (the modified RALE score, 0-8) come from the opacity segmenter,
a separate segmentation (:mod:`covid.model.opacity`); both are empty without it.
A file that cannot be read gets its row with the reason in ``error``
(everything else empty).

The in-process engine (:mod:`covid.screening.predict`) and the Ray actors
(:mod:`covid.screening.archive_workers`) both score through
:func:`score_chunk`, so that their rows are equal by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covid.model.classes import COVID, NORMAL, OTHER_PNEUMONIA, PROBABILITY_COLUMNS
from covid.model.classes import probability_column as p_column

if TYPE_CHECKING:
    from covid.screening.archive_workers import Scoring
    from covid.screening.engine import ScreeningModels
    from covid.screening.pipeline import StudyResult

OPACITY_EXTENT, SEVERITY = "opacity_extent", "severity"
"""The opacity segmenter's columns: share of both lungs (0-1) and score (0-8)."""
COLUMNS = ("path", "label", p_column(COVID), p_column(NORMAL), "error", "ood", "lung_evidence",
           p_column(OTHER_PNEUMONIA), "flag", "advice", OPACITY_EXTENT, SEVERITY)
"""The output columns: the earlier ones first, so that readers of them keep working."""
BATCH = 16
"""Films scored together by default (``--batch-size``): read into memory, segmented and
passed through the networks in one batch (the page's server runs passes of 16 too)."""


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Expands folders recursively (sorted, hidden files skipped); files pass through.

    Args:
        paths: Files and folders, as given.

    Yields:
        File paths; a missing path is yielded as is so that it gets an error row.
    """
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in found.relative_to(path).parts)
                if found.is_file() and not hidden:
                    yield found
        else:
            yield path


def read_file(path: Path) -> bytes | str:
    """The file's bytes, or a message saying why it cannot be read."""
    from covid.inputs.decode import MAX_FILE_BYTES

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return f"{path.name}: the file is larger than the {MAX_FILE_BYTES // 2**20} MB limit."
        return path.read_bytes()
    except FileNotFoundError:
        return f"{path.name}: no such file."
    except OSError as err:
        return f"{path.name}: the file cannot be read ({err.strerror})."


def row(path: Path, result: StudyResult, class_names: list[str]) -> dict[str, Any]:
    """One output row for one file.

    Args:
        path: The file's path as found.
        result: Its result.
        class_names: The model's classes, in output order.

    Returns:
        A dict with the keys of :data:`COLUMNS`; a refused film's probabilities
        are empty, as it was never classified, and so are its opacity figures.
    """
    shown = result.probs is not None and not result.refused
    probs = dict(zip(class_names, result.probs, strict=True)) if shown else {}
    values = {
        "path": str(path),
        **{column: round(float(probs[name]), 6) if name in probs else ""
           for column, name in PROBABILITY_COLUMNS.items()},
        "error": result.error or "",
        "lung_evidence": "" if result.lung_evidence is None else round(result.lung_evidence, 4),
        **_decided(result),
        **_opacity(result),
    }
    return {column: values[column] for column in COLUMNS}


def _decided(result: StudyResult) -> dict[str, str]:
    """The decision's own columns: label, ood, flag and advice (all empty for a failed file)."""
    decision = result.decision
    if decision is None:
        return {"label": "", "ood": "", "flag": "", "advice": ""}
    return {"label": decision.label, "ood": str(decision.ood).lower(), "flag": decision.flag,
            "advice": decision.advice}


def _opacity(result: StudyResult) -> dict[str, Any]:
    """The opacity segmenter's columns (empty without an outline: refused, or no segmenter)."""
    if result.opacity is None:
        return {OPACITY_EXTENT: "", SEVERITY: ""}
    severity = result.opacity.severity
    return {OPACITY_EXTENT: round(severity.extent, 4), SEVERITY: severity.score}


def score_paths(
    paths: list[Path], model_path: Path | None = None, lung_path: Path | None = None,
    opacity_path: Path | None = None, batch_size: int = BATCH,
) -> Iterator[dict[str, Any]]:
    """Scores files and folders, yielding one row per file.

    Args:
        paths: Files and folders.
        model_path: The ``.keras`` model (None: the settings' one).
        lung_path: The lung segmenter's ``.keras`` file (None: the settings' one).
        opacity_path: The opacity segmenter's ``.keras`` file (None: the
            settings' one; optional).
        batch_size: Films read and scored together, in one pass of the networks.

    Yields:
        Rows (see :func:`row`), in file order.

    Raises:
        ModelFileError: A model cannot be loaded.
    """
    from covid.screening.engine import load_models

    models = load_models(model_path, lung_path, warm_up=False, opacity_path=opacity_path,
                         batch_size=batch_size)
    files = list(iter_files(paths))
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        yield from score_chunk(chunk, [read_file(p) for p in chunk], models)


def score_chunk(
    paths: list[Path], contents: list[bytes | str], models: ScreeningModels
) -> list[dict[str, Any]]:
    """Rows for files already read: the one scoring path of both engines.

    The files given are scored together, in one pass of the networks (the
    classifier splits a pass larger than its own batch size), so that
    ``--batch-size`` means the same to both engines.

    Args:
        paths: The files' paths as given (the ``path`` column).
        contents: Each file's bytes, or the message saying why it cannot be read
            (see :func:`read_file`).
        models: The loaded screening models.

    Returns:
        One row per file (see :func:`row`), in order.
    """
    # Imported here: the pipeline imports TensorFlow, which the Ray archive's driver,
    # needing only the columns and the file listing from this module, never does.
    from covid.screening.pipeline import StudyResult, analyse

    classifier = models.classifier
    readable = [(p.name, c) for p, c in zip(paths, contents, strict=True) if isinstance(c, bytes)]
    scored = iter(analyse(readable, classifier, ood=models.ood, segmenter=models.segmenter,
                          opacity=models.opacity, batch_size=max(1, len(readable))))
    rows = []
    for path, content in zip(paths, contents, strict=True):
        result = next(scored) if isinstance(content, bytes) else StudyResult(
            name=path.name, error=content)
        rows.append(row(path, result, classifier.metadata.class_names))
    return rows


def archive_scoring() -> Scoring:
    """This module's pieces, for the archive engine to run (it does not import this module)."""
    from covid.screening.archive_workers import Scoring

    return Scoring(COLUMNS, iter_files, read_file, score_chunk)
