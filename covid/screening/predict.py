"""``python -m covid predict``: one row per image, as CSV, JSON or a table, on stdout.

The rows and their columns are :mod:`covid.screening.scoring`'s (the opacity
segmenter's ``opacity_extent`` and ``severity`` among them, empty without it),
written by :func:`covid.screening.output.write_rows`. A file that cannot be read
gets its row with the reason in ``error``, and the run goes on. Text cells of the
CSV are guarded against formula injection
(:func:`covid.screening.table.spreadsheet_safe`). The exit status is 0 whenever
the run completed.

``--engine ray --out DIR`` scores a whole archive on a Ray cluster instead and writes
the same rows as Parquet files into DIR, resumably (see :mod:`covid.screening.archive`).
``--batch-size`` is the films scored together by either engine. The shared flags
(models, ``--out``, ``--format``, ``--batch-size``) are :mod:`covid.flags`'.

Importing this module imports no TensorFlow: the Ray engine's driver never
needs it (its actors import it), and the local engine imports it with the models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covid.flags import add_batch_size, add_format, add_model_flags, add_out
from covid.model.metadata import ModelFileError
from covid.screening.engine import missing_model_message
from covid.screening.scoring import BATCH, COLUMNS, archive_scoring, score_paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``predict`` sub-command's arguments."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files or folders (searched recursively)")
    add_format(parser)
    add_model_flags(parser)
    add_batch_size(parser, BATCH)
    ray = parser.add_argument_group(
        "archive engine", "score a whole archive on a Ray cluster into Parquet files, "
        "resumably (--engine ray --out DIR)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: in this process, rows on stdout (default); "
                          "ray: Ray Data actors, rows into --out")
    add_out(ray, "folder of Parquet files (ray engine only; run again to resume)")
    ray.add_argument("--address", metavar="ADDRESS",
                     help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    ray.add_argument("--actors", type=int, metavar="N",
                     help="scoring actors (default: one per 2 CPUs of the cluster, at least 2)")


def run(args: argparse.Namespace) -> int:
    """Runs ``predict``; returns the exit status."""
    if getattr(args, "engine", "local") == "ray":
        from covid.screening.archive import run_command  # imports no Ray until it runs

        return run_command(args, archive_scoring())
    if getattr(args, "out", None) is not None:
        print("error: --out is for --engine ray; the local engine writes to stdout",
              file=sys.stderr)
        return 2
    from covid.screening.output import write_rows  # its table module imports TensorFlow

    try:
        rows = score_paths(args.paths, args.model, args.lung_model, args.opacity_model,
                           args.batch_size)
        write_rows(rows, COLUMNS, args.format, sys.stdout)
    except ModelFileError as err:
        print(missing_model_message(err), file=sys.stderr)
        return 1
    return 0
