"""The archive engine's Parquet folder: whole files, each film's key in their metadata.

Every ``part-*.parquet`` file in an ``--out`` folder holds at most
:data:`FLUSH_ROWS` rows with exactly the in-process engine's columns, written
whole or not at all (a temporary file, synced, renamed into place). Its
key-value metadata (:data:`KEYS`) names the classifier's SHA-256, the file's
place in the folder's write order and, row by row, each film's key: its
absolute path and the SHA-256 of its bytes.

**One row per path.** A film whose bytes changed gets a new key, so it is
scored again; its older row is then removed (:func:`drop_replaced`): the row
written last for a path is the one kept. Removing rewrites the older file under
its own name, atomically, so a crash at any point leaves either the old file or
the new one, never a row lost that is not scored again on the next run.

Only :mod:`covid.screening.archive`'s driver writes here, holding the folder's lock.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

FLUSH_ROWS = 64
"""Rows per Parquet file: the driver writes at least this often."""
FLUSH_SECONDS = 30.0
"""Rows waiting longer than this are written even if fewer than :data:`FLUSH_ROWS`."""
KEYS = b"covid.archive.keys"
"""Parquet key-value metadata: the model's SHA-256, the file's sequence and each row's key."""
PART_GLOB = "part-*.parquet"

Key = tuple[str, str]
"""A film's key: (absolute path, SHA-256 of its bytes; empty if they could not be read)."""


class ArchiveError(RuntimeError):
    """The archive run cannot start: DIR is busy, unreadable or not extensible, or Ray unfit."""


@dataclass(frozen=True)
class Part:
    """One Parquet file's keys, as its metadata gives them.

    Attributes:
        path: The file.
        seq: Its place in the folder's write order (files of older versions: 0).
        films: Its rows' keys, in row order.
    """

    path: Path
    seq: int
    films: tuple[Key, ...]


def row_schema(columns: tuple[str, ...]) -> pa.Schema:
    """The Parquet schema: the in-process engine's columns, in order.

    Every column is a string holding exactly the in-process row's value as text
    (empty where it is empty), so that a column added there follows here, typed
    or not, and a file never disagrees with another about a type. Read the
    numbers with ``CAST`` or ``pandas.to_numeric``.
    """
    import pyarrow as pa

    return pa.schema([(column, pa.string()) for column in columns])


def read_parts(out: Path, model_sha256: str, columns: tuple[str, ...]) -> list[Part]:
    """Every Parquet file in ``out``, in write order.

    Raises:
        ArchiveError: A file is not one of this engine's, holds another model's
            rows (the columns do not say which model) or other columns (rows of
            an older version of the command).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for path in sorted(out.glob(PART_GLOB)):
        try:
            schema = pq.read_schema(path)
            meta = json.loads((schema.metadata or {})[KEYS])
            model, films = meta["model_sha256"], meta["films"]
            part = Part(path, int(meta.get("seq", 0)), tuple((a, s) for a, s in films))
        except (KeyError, TypeError, ValueError, OSError, pa.ArrowException) as err:
            raise ArchiveError(f"{path} is not a file this command wrote ({err})") from err
        if model != model_sha256:
            raise ArchiveError(f"{out} holds another model's rows ({path.name}, model "
                             f"{model[:12]}…): use another --out folder")
        if tuple(schema.names) != columns:
            raise ArchiveError(f"{out} holds rows with other columns ({path.name}: "
                             f"{', '.join(schema.names)}), written by another version of this "
                             "command: use another --out folder")
        parts.append(part)
    return sorted(parts, key=lambda p: (p.seq, p.path.name))


def read_rows(out: Path) -> list[dict[str, str]]:
    """Every row in the ``--out`` folder ``out``, file by file, as text."""
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(out.glob(PART_GLOB)):
        rows += pq.read_table(part).to_pylist()
    return rows


def stale_rows(parts: list[Part]) -> dict[Path, set[int]]:
    """The rows of a path that a later row of the same path replaces.

    Args:
        parts: The folder's files, in write order.

    Returns:
        Row indices to drop, by file (only files that have some).
    """
    latest: dict[str, tuple[int, int]] = {}
    for p, part in enumerate(parts):
        for i, (absolute, _) in enumerate(part.films):
            latest[absolute] = (p, i)  # a later file, or a later row of one file, wins
    stale: dict[Path, set[int]] = {}
    for p, part in enumerate(parts):
        for i, (absolute, _) in enumerate(part.films):
            if latest[absolute] != (p, i):
                stale.setdefault(part.path, set()).add(i)
    return stale


def drop_replaced(out: Path, model_sha256: str, columns: tuple[str, ...]) -> int:
    """Removes every row that a later row of the same path replaces.

    Each file holding such rows is rewritten without them under its own name
    (or removed if none are left), keeping its place in the write order.

    Returns:
        Rows removed.
    """
    import pyarrow.parquet as pq

    parts = read_parts(out, model_sha256, columns)
    stale = stale_rows(parts)
    for part in parts:
        drop = stale.get(part.path)
        if not drop:
            continue
        keep = [i for i in range(len(part.films)) if i not in drop]
        if not keep:
            part.path.unlink()
            _sync_folder(out)
            continue
        rows = pq.read_table(part.path).take(keep).to_pylist()
        write_part(part.path, rows, [part.films[i] for i in keep], row_schema(columns),
                   model_sha256, part.seq)
    return sum(map(len, stale.values()))


def write_part(path: Path, rows: list[dict[str, Any]], keys: Iterable[Key], schema: pa.Schema,
               model_sha256: str, seq: int) -> None:
    """Writes one file whole: a hidden temporary file, synced, then renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [str(r[name]) for r in rows] for name in schema.names}
    meta = {KEYS: json.dumps({"model_sha256": model_sha256, "seq": seq,
                              "films": [list(k) for k in keys]})}
    table = pa.table(columns, schema=schema.with_metadata(meta))
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Makes a rename or removal in ``folder`` survive a crash of the machine."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class PartWriter:
    """Writes rows into ``out`` as whole Parquet files, never the same film twice.

    Args:
        out: The folder.
        schema: See :func:`row_schema`.
        model_sha256: The classifier's SHA-256.
        parts: The folder's files already there (the new ones follow them in write order).
    """

    def __init__(self, out: Path, schema: pa.Schema, model_sha256: str, parts: list[Part]) -> None:
        self.out, self.schema, self.model_sha256 = out, schema, model_sha256
        self.written = {key for part in parts for key in part.films}
        self.seq = max((part.seq for part in parts), default=0)
        self.pending: list[tuple[dict[str, Any], Key]] = []
        self.since = time.monotonic()
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.parts = 0

    def add(self, row: dict[str, Any], key: Key) -> bool:
        """Queues a row unless its film already has one; writes when enough wait.

        Returns:
            Whether the row was new.
        """
        if key in self.written:
            return False  # a retried batch's second answer, or a path listed twice
        self.written.add(key)
        if not self.pending:
            self.since = time.monotonic()
        self.pending.append((row, key))
        if len(self.pending) >= FLUSH_ROWS or time.monotonic() - self.since > FLUSH_SECONDS:
            self.flush()
        return True

    def flush(self) -> None:
        """Writes the waiting rows, :data:`FLUSH_ROWS` a file."""
        while self.pending:
            chunk, self.pending = self.pending[:FLUSH_ROWS], self.pending[FLUSH_ROWS:]
            self.parts += 1
            self.seq += 1
            # Named by its place in the folder's write order: no two files share it.
            write_part(self.out / f"part-{self.run_id}-{self.seq:06d}.parquet",
                       [r for r, _ in chunk], [k for _, k in chunk], self.schema,
                       self.model_sha256, self.seq)
