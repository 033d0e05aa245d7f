"""``python -m covid predict``: one row per image, as CSV or JSON, on stdout.

The rows and their columns are :mod:`covid.screening.scoring`'s (the opacity
segmenter's ``opacity_extent`` and ``severity`` among them, empty without it). A
file that cannot be read gets its row with the reason in ``error``, and the run
goes on. Text cells of the CSV are guarded against formula injection
(:func:`covid.screening.table.spreadsheet_safe`). The exit status is 0 whenever
the run completed.

``--engine ray --out DIR`` scores a whole archive on a Ray cluster instead and writes
the same rows as Parquet files into DIR, resumably (see :mod:`covid.screening.archive`).
The model paths default to the shipped models, or to ``$COVID_MODEL_PATH``,
``$COVID_LUNG_MODEL_PATH`` and ``$COVID_OPACITY_MODEL_PATH`` (:mod:`covid.settings`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from covid.model.network import ModelFileError
from covid.screening.engine import missing_model_message
from covid.screening.scoring import COLUMNS, archive_scoring, score_paths
from covid.screening.table import spreadsheet_safe
from covid.settings import settings


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """Writes rows as CSV with a header, each flushed as soon as it is scored.

    Text cells are guarded against formula injection (:func:`spreadsheet_safe`).

    Args:
        rows: Dicts with the keys of :data:`COLUMNS` (see
            :func:`covid.screening.scoring.row`).
        out: The text stream, e.g. ``sys.stdout``.
    """
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({key: spreadsheet_safe(value) for key, value in r.items()})
        out.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``predict`` sub-command's arguments."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files or folders (searched recursively)")
    paths = settings()
    parser.add_argument("--format", choices=("csv", "json"), default="csv")
    parser.add_argument("--model", type=Path, default=paths.model_path)
    parser.add_argument("--lung-model", type=Path, default=paths.lung_model_path)
    parser.add_argument("--opacity-model", type=Path, default=paths.opacity_model_path,
                        help="the opacity segmenter (optional: without it, opacity_extent "
                             "and severity stay empty)")
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
        rows = score_paths(args.paths, args.model, args.lung_model, args.opacity_model)
        if args.format == "csv":
            write_csv(rows, sys.stdout)
        else:
            json.dump(list(rows), sys.stdout, indent=1)
            sys.stdout.write("\n")
    except ModelFileError as err:
        print(missing_model_message(err), file=sys.stderr)
        return 1
    return 0
