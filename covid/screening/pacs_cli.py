"""``python -m covid pacs``: score every chest radiograph a PACS holds, and send the results back.

One row per CR or DX instance that the search finds, as CSV, JSON or an aligned table on
stdout (``--format``, :func:`covid.screening.output.write_rows`): the ``predict``
columns (:data:`covid.screening.scoring.COLUMNS`: ``flag``, ``advice``,
``opacity_extent`` and ``severity`` among them) with ``study_uid`` and
``sop_instance_uid`` in place of ``path``, plus ``sent`` (``yes``: stored now;
``already``: the study held them; ``no``: not asked, or nothing to send, as for a film
refused as not a chest X-ray; ``failed``: the reason is in ``error``). Films are
retrieved in memory and go through the same pipeline as an uploaded ``.dcm`` file, so
each row is what ``predict`` gives for the same pixels. The Structured Report sent
carries the opacity figures when the opacity segmenter ran. CSV text cells are guarded
against formula injection by the project's one guard
(:func:`covid.screening.table.spreadsheet_safe`). The shared flags (models,
``--format``) are :mod:`covid.flags`'.

The address comes from ``--url`` or ``COVID_PACS_URL``; the user name and the
password only from ``COVID_PACS_USER`` and ``COVID_PACS_PASSWORD``. A failure to
search (wrong password, server down or slow) exits with status 1 and a message on
stderr. A film that cannot be retrieved, decoded or given results gets its row
with the reason in ``error``, and the run goes on; at the end a line on stderr
says how many failed, and the exit status is 1. No patient name is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covid.flags import add_format, add_model_flags
from covid.inputs.pacs import (
    InstanceRecord,
    Listing,
    PacsClient,
    PacsConfig,
    PacsError,
    StudyQuery,
    parse_date,
)
from covid.model.metadata import ModelFileError
from covid.screening import scoring
from covid.screening.engine import missing_model_message
from covid.screening.output import write_rows
from covid.screening.pipeline import StudyResult, analyse

if TYPE_CHECKING:
    from covid.screening.engine import ScreeningModels

COLUMNS = ("study_uid", "sop_instance_uid",
           *(c for c in scoring.COLUMNS if c != "path"), "sent")
"""The ``predict`` columns, with the instance's UIDs in place of ``path``, plus ``sent``."""

CHUNK = 16
"""Instances held in memory at a time."""


def pacs_row(record: InstanceRecord, result: StudyResult, class_names: list[str],
             sent: str) -> dict[str, Any]:
    """One output row: ``predict``'s row for the result, keyed by the instance."""
    row = scoring.row(Path(record.sop_instance_uid), result, class_names)
    del row["path"]
    return {"study_uid": record.study_uid, "sop_instance_uid": record.sop_instance_uid,
            **row, "sent": sent}


def _retrieve(client: PacsClient, records: Sequence[InstanceRecord]) -> list[bytes | str]:
    """Each instance's bytes, or the message saying why it could not be retrieved."""
    found: list[bytes | str] = []
    for record in records:
        try:
            found.append(client.retrieve(record))
        except PacsError as err:
            found.append(f"{record.sop_instance_uid}: {err}")
    return found


def _send(client: PacsClient, data: bytes, result: StudyResult,
          models: ScreeningModels) -> tuple[str, str]:
    """Sends one film's results.

    Returns:
        The ``sent`` value, and the reason when it is ``failed`` (also on stderr).
    """
    from covid.screening.pacs_results import ResultsError, nothing_to_send, send_film

    if nothing_to_send(result) is not None:  # failed, or refused as not a chest X-ray
        return "no", ""
    meta = models.classifier.metadata
    try:
        sent = send_film(client, data, result, meta, meta.threshold, opacity=models.opacity)
        return ("yes" if sent else "already"), ""
    except (PacsError, ResultsError) as err:
        print(f"error: sending the results of {result.name}: {err}", file=sys.stderr)
        return "failed", f"the results could not be sent: {err}"


def score_listing(client: PacsClient, listing: Listing, models: ScreeningModels,
                  send: bool) -> Iterator[dict[str, Any]]:
    """Retrieves, scores (and sends) every listed instance, a chunk at a time.

    Yields:
        One row per instance (see :func:`pacs_row`), in listing order.
    """
    classifier = models.classifier
    names = classifier.metadata.class_names
    records = listing.instances
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        contents = _retrieve(client, chunk)
        readable = [(r.sop_instance_uid, c) for r, c in zip(chunk, contents, strict=True)
                    if isinstance(c, bytes)]
        # The very call predict makes: the same decoding, focusing, scoring and map.
        scored = iter(analyse(readable, classifier, ood=models.ood, segmenter=models.segmenter,
                              opacity=models.opacity))
        for record, content in zip(chunk, contents, strict=True):
            if not isinstance(content, bytes):
                yield pacs_row(record, StudyResult(name=record.sop_instance_uid, error=content),
                               names, "no")
                continue
            result = next(scored)
            sent, failure = _send(client, content, result, models) if send else ("no", "")
            row = pacs_row(record, result, names, sent)
            yield {**row, "error": failure} if failure else row


def _date(text: str) -> str:
    """The ``--since`` and ``--until`` type: a ``YYYYMMDD`` date."""
    if parse_date(text) is None:
        raise argparse.ArgumentTypeError(f"not a date as YYYYMMDD: {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``pacs`` sub-command's arguments."""
    parser.add_argument("--url", default=None,
                        help="the DICOMweb root (default: COVID_PACS_URL); the user name and "
                             "password come from COVID_PACS_USER and COVID_PACS_PASSWORD")
    parser.add_argument("--since", type=_date, default=None, metavar="YYYYMMDD",
                        help="first study date")
    parser.add_argument("--until", type=_date, default=None, metavar="YYYYMMDD",
                        help="last study date")
    parser.add_argument("--send", action="store_true",
                        help="store each film's results (SR and map) back in its study")
    add_format(parser)
    add_model_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Runs ``pacs``; returns the exit status."""
    from covid.screening.engine import load_models

    try:
        config = PacsConfig.from_settings(os.environ, url=args.url)
        if config is None:
            print("error: no PACS is configured: give --url or set COVID_PACS_URL "
                  "(and COVID_PACS_USER, COVID_PACS_PASSWORD).", file=sys.stderr)
            return 1
        client = PacsClient(config)
        listing = client.find_instances(StudyQuery(since=args.since, until=args.until))
        for note in listing.notes:
            print(f"note: {note}", file=sys.stderr)
        models = load_models(args.model, args.lung_model, warm_up=False,
                             opacity_path=args.opacity_model)
        rows = write_rows(score_listing(client, listing, models, args.send), COLUMNS,
                          args.format, sys.stdout)
    except PacsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ModelFileError as err:
        print(missing_model_message(err), file=sys.stderr)
        return 1
    failed = sum(1 for r in rows if r["error"])
    if failed:
        print(f"error: {failed} of {len(rows)} instance{'s' if len(rows) > 1 else ''} failed; "
              "the error column of each says why.", file=sys.stderr)
        return 1
    return 0
