"""``python -m covid predict``: one row per image, as CSV or JSON, on stdout.

Columns, in order: ``path, label, p_covid, p_normal, error, ood, lung_evidence,
p_other_pneumonia, flag, advice`` (``p_other_pneumonia`` empty for a model
without that class). ``label`` is the class at the shipped operating point;
probabilities are calibrated and sum to 1. ``lung_evidence`` is the share of the
predicted class's Grad-CAM energy inside the segmented lungs, in [0, 1].
``flag`` is ``none``, ``unusual`` (a chest X-ray unlike the training films: kept,
always admitted) or ``not_chest`` (refused: label, probabilities, lung evidence
and advice empty); ``ood`` is ``true`` for either flag. ``advice`` is ``admit``,
``home`` or empty. Every one of them is what the decision rule
(:func:`covid.model.decision.decide`) said. A file that cannot be read gets its
row with the reason in ``error`` (everything else empty), and the run goes on.
Text cells of the CSV are guarded against formula injection
(:func:`covid.screening.table.spreadsheet_safe`). The exit status is 0 whenever
the run completed.

``--engine ray --out DIR`` scores a whole archive on a Ray cluster instead and writes
the same rows as Parquet files into DIR, resumably (see :mod:`covid.screening.archive`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH
from covid.model.network import DEFAULT_MODEL_PATH, ModelFileError
from covid.screening.engine import missing_model_message
from covid.screening.pipeline import StudyResult, analyse
from covid.screening.table import spreadsheet_safe

if TYPE_CHECKING:
    from covid.screening.archive import Scoring
    from covid.screening.engine import ScreeningModels

COLUMNS = ("path", "label", "p_covid", "p_normal", "error", "ood", "lung_evidence",
           "p_other_pneumonia", "flag", "advice")
"""The output columns: the earlier ones first, so that readers of them keep working."""
PROBABILITY_COLUMNS = {"p_covid": "COVID", "p_normal": "Normal",
                       "p_other_pneumonia": "Other pneumonia"}
"""Each probability column's class (empty where the model has no such class)."""
CHUNK = 64
"""Files read into memory at a time."""


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
        class_names: The model's classes (COVID, Normal and perhaps Other pneumonia).

    Returns:
        A dict with the keys of :data:`COLUMNS`; a refused film's probabilities
        are empty, as it was never classified.
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
    }
    return {column: values[column] for column in COLUMNS}


def _decided(result: StudyResult) -> dict[str, str]:
    """The decision's own columns: label, ood, flag and advice (all empty for a failed file)."""
    decision = result.decision
    if decision is None:
        return {"label": "", "ood": "", "flag": "", "advice": ""}
    return {"label": decision.label, "ood": str(decision.ood).lower(), "flag": decision.flag,
            "advice": decision.advice}


def predict_paths(
    paths: list[Path], model_path: Path, lung_path: Path = DEFAULT_LUNG_MODEL_PATH
) -> Iterator[dict[str, Any]]:
    """Scores files and folders, yielding one row per file.

    Args:
        paths: Files and folders.
        model_path: The ``.keras`` model.
        lung_path: The lung segmenter's ``.keras`` file.

    Yields:
        Rows (see :func:`row`), in file order.
    """
    from covid.screening.engine import load_models

    models = load_models(model_path, lung_path, warm_up=False)
    files = list(iter_files(paths))
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        yield from score_chunk(chunk, [read_file(p) for p in chunk], models)


def score_chunk(
    paths: list[Path], contents: list[bytes | str], models: ScreeningModels
) -> list[dict[str, Any]]:
    """Rows for files already read: the one scoring path of both engines.

    The in-process engine and the Ray actors (:mod:`covid.screening.archive`)
    both call this, so that their rows are equal by construction.

    Args:
        paths: The files' paths as given (the ``path`` column).
        contents: Each file's bytes, or the message saying why it cannot be read
            (see :func:`read_file`).
        models: The loaded screening models.

    Returns:
        One row per file (see :func:`row`), in order.
    """
    classifier = models.classifier
    readable = [(p.name, c) for p, c in zip(paths, contents, strict=True) if isinstance(c, bytes)]
    scored = iter(analyse(readable, classifier, ood=models.ood, segmenter=models.segmenter))
    rows = []
    for path, content in zip(paths, contents, strict=True):
        result = next(scored) if isinstance(content, bytes) else StudyResult(
            name=path.name, error=content)
        rows.append(row(path, result, classifier.metadata.class_names))
    return rows


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """Writes rows as CSV with a header, each flushed as soon as it is scored.

    Text cells are guarded against formula injection (:func:`spreadsheet_safe`).

    Args:
        rows: Dicts with the keys of :data:`COLUMNS` (see :func:`row`).
        out: The text stream, e.g. ``sys.stdout``.
    """
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({key: spreadsheet_safe(value) for key, value in r.items()})
        out.flush()


def archive_scoring() -> Scoring:
    """This engine's pieces, for the archive engine to run (it does not import this module)."""
    from covid.screening.archive import Scoring

    return Scoring(COLUMNS, iter_files, read_file, score_chunk)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``predict`` sub-command's arguments."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files or folders (searched recursively)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--lung-model", type=Path, default=DEFAULT_LUNG_MODEL_PATH)
    ray = parser.add_argument_group(
        "archive engine", "score a whole archive on a Ray cluster into Parquet files, "
        "resumably (--engine ray --out DIR)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: in this process, rows on stdout (default); "
                          "ray: Ray Data actors, rows into --out")
    ray.add_argument("--out", type=Path, metavar="DIR",
                     help="folder of Parquet files (ray engine; run again to resume)")
    ray.add_argument("--address", metavar="ADDRESS",
                     help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    ray.add_argument("--actors", type=int, metavar="N",
                     help="scoring actors (default: one per 2 CPUs of the cluster, at least 2)")
    ray.add_argument("--batch-size", type=int, metavar="B",
                     help="films per actor call (default: 16)")


def run(args: argparse.Namespace) -> int:
    """Runs ``predict``; returns the exit status."""
    if getattr(args, "engine", "local") == "ray":
        from covid.screening.archive import run_command  # imports no Ray until it runs

        return run_command(args, archive_scoring())
    if getattr(args, "out", None) is not None:
        print("error: --out is for --engine ray; the local engine writes to stdout",
              file=sys.stderr)
        return 2
    try:
        rows = predict_paths(args.paths, args.model, args.lung_model)
        if args.format == "csv":
            write_csv(rows, sys.stdout)
        else:
            json.dump(list(rows), sys.stdout, indent=1)
            sys.stdout.write("\n")
    except ModelFileError as err:
        print(missing_model_message(err), file=sys.stderr)
        return 1
    return 0
