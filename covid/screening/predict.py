"""``python -m covid predict``: one row per image, as CSV or JSON, on stdout.

Columns, in order: ``path, label, p_covid, p_normal, error, ood, lung_evidence``.
``label`` is the class at the shipped operating point; probabilities are
calibrated and sum to 1. ``lung_evidence`` is the share of the predicted class's
Grad-CAM energy inside the segmented lungs, in [0, 1] (empty for a file that
could not be scored). A file that cannot be read gets its row with the reason in ``error``, and
the run goes on. The exit status is 0 whenever the run completed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from covid.model.classifier import DEFAULT_MODEL_PATH, ModelFileError
from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH
from covid.screening.pipeline import StudyResult, analyse

COLUMNS = ("path", "label", "p_covid", "p_normal", "error", "ood", "lung_evidence")
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
        class_names: The model's classes (COVID, Normal).

    Returns:
        A dict with the keys of :data:`COLUMNS`.
    """
    probs = None if result.probs is None else dict(zip(class_names, result.probs, strict=True))
    return {
        "path": str(path),
        "label": result.label or "",
        "p_covid": "" if probs is None else round(float(probs["COVID"]), 6),
        "p_normal": "" if probs is None else round(float(probs["Normal"]), 6),
        "error": result.error or "",
        "ood": "" if result.ood is None else str(result.ood).lower(),
        "lung_evidence": "" if result.lung_evidence is None else round(result.lung_evidence, 4),
    }


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
    classifier = models.classifier
    files = list(iter_files(paths))
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        contents = [read_file(p) for p in chunk]
        readable = [(p.name, c) for p, c in zip(chunk, contents, strict=True)
                    if isinstance(c, bytes)]
        scored = iter(analyse(readable, classifier, ood=models.ood, segmenter=models.segmenter))
        for path, content in zip(chunk, contents, strict=True):
            result = next(scored) if isinstance(content, bytes) else StudyResult(
                name=path.name, error=content)
            yield row(path, result, classifier.metadata.class_names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``predict`` sub-command's arguments."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files or folders (searched recursively)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--lung-model", type=Path, default=DEFAULT_LUNG_MODEL_PATH)


def run(args: argparse.Namespace) -> int:
    """Runs ``predict``; returns the exit status."""
    try:
        rows = predict_paths(args.paths, args.model, args.lung_model)
        if args.format == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow(r)
                sys.stdout.flush()
        else:
            json.dump(list(rows), sys.stdout, indent=1)
            sys.stdout.write("\n")
    except ModelFileError as err:
        print(f"error: {err}. Train and evaluate a model first "
              "(python -m covid.train, then python -m covid.evaluate).", file=sys.stderr)
        return 1
    return 0
