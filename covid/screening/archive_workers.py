"""The Ray side of the archive engine: read tasks, scoring actors and the tries ledger.

See :mod:`covid.screening.archive`, which builds the pipeline from these and is
the only writer. Everything here runs in Ray's worker processes; Ray sends the
in-process engine's functions (a :class:`Scoring`) by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covid.screening.archive_parts import Key

if TYPE_CHECKING:
    from covid.screening.engine import ScreeningModels

MAX_TRIES = 3
"""Times a film may be scored while its actor dies before it gets an error row instead."""


@dataclass(frozen=True)
class Scoring:
    """The in-process engine's pieces that this engine runs (see :mod:`covid.screening.scoring`).

    Attributes:
        columns: The rows' columns, in order (the Parquet schema's, the opacity
            segmenter's ``opacity_extent`` and ``severity`` among them).
        iter_files: Expands files and folders into files.
        read_file: A file's bytes, or the message saying why it cannot be read.
        score_chunk: ``(paths, contents, models) -> rows``: the rows of files
            already read (a message as content gives that file's error row).
    """

    columns: tuple[str, ...]
    iter_files: Callable[[list[Path]], Iterator[Path]]
    read_file: Callable[[Path], bytes | str]
    score_chunk: Callable[[list[Path], list[bytes | str], ScreeningModels],
                          list[dict[str, Any]]]


def read_films(batch: dict[str, np.ndarray], done: dict[str, str]) -> dict[str, np.ndarray]:
    """Ray read task: reads and hashes films, dropping those that already have a row.

    Runs without TensorFlow. A file that cannot be read here goes on without
    content; the actor asks the in-process engine's ``read_file`` why, so the
    error row says what that engine says.

    Args:
        batch: ``path`` (as given) and ``abspath`` arrays, (N,) each.
        done: The content SHA-256 of the row each path has (a film whose bytes
            changed since has another and is kept), by absolute path.

    Returns:
        ``path``, ``abspath``, ``sha256`` (empty if unread) and ``content``, (M,) each.
    """
    from covid.inputs.decode import MAX_FILE_BYTES

    out: dict[str, list[Any]] = {"path": [], "abspath": [], "sha256": [], "content": []}
    for path, absolute in zip(batch["path"], batch["abspath"], strict=True):
        try:
            info = os.stat(absolute)
            # Neither a huge file nor a pipe or device (whose read might never end) is read here.
            plain = stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE_BYTES
            content = Path(absolute).read_bytes() if plain else None
        except OSError:
            content = None
        sha = "" if content is None else hashlib.sha256(content).hexdigest()  # "": unread
        content = content or b""
        if done.get(str(absolute)) == sha:
            continue
        for name, value in (("path", path), ("abspath", absolute), ("sha256", sha),
                            ("content", content)):
            out[name].append(value)
    return {name: np.array(values, dtype=object) for name, values in out.items()}


class TryLedger:
    """Ray actor (one per run): the films whose scoring began and has not ended.

    A film's count goes up each time an actor begins scoring it and is cleared
    when the actor returns its row, so a count above one means that an actor
    died while scoring it (or beside it, in its batch).
    """

    def __init__(self) -> None:
        self.open: dict[Key, int] = {}

    def begin(self, keys: list[Key]) -> list[int]:
        """Notes that scoring ``keys`` begins; returns each one's count, this try included."""
        for key in keys:
            self.open[key] = self.open.get(key, 0) + 1
        return [self.open[key] for key in keys]

    def end(self, keys: list[Key]) -> None:
        """Notes that ``keys`` have their rows."""
        for key in keys:
            self.open.pop(key, None)


def crash_message(path: Path, tries: int) -> str:
    """The error row's message for a film that ended its actor's process ``tries`` times."""
    return (f"{path.name}: scoring this file stopped the scoring process {tries} times "
            "(a crash in a decoder or the network); it was not scored.")


class ScoreFilms:
    """Ray actor: holds the models once and scores batches of films.

    Args:
        scoring: The in-process engine's pieces (Ray sends its functions by name).
        model_path: The classifier's ``.keras`` file.
        lung_path: The lung segmenter's ``.keras`` file.
        threads: TensorFlow intra-op threads (the actor's share of its node).
        ledger: The run's :class:`TryLedger` actor.
        max_tries: Tries a film gets while its actor dies (see :data:`MAX_TRIES`).
        opacity_path: The opacity segmenter's ``.keras`` file (None: the settings'
            one, found from the package, whatever the worker's folder; without
            the file, the rows carry no opacity figures).
    """

    def __init__(self, scoring: Scoring, model_path: str, lung_path: str, threads: int,
                 ledger: Any, max_tries: int = MAX_TRIES, opacity_path: str | None = None,
                 ) -> None:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow already ran in this worker process: keep its pools
            logging.getLogger(__name__).warning("TensorFlow thread pools already set")
        from covid.screening.engine import load_models  # the one verified loader, as served

        self.scoring, self.ledger, self.max_tries = scoring, ledger, max_tries
        self.models = load_models(model_path, lung_path, warm_up=False,
                                  opacity_path=opacity_path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores a batch of films read by :func:`read_films`.

        Args:
            batch: ``path``, ``abspath``, ``sha256`` and ``content``, (N,) each.

        Returns:
            ``row`` (each film's row as JSON), ``abspath`` and ``sha256``, (N,) each.
        """
        if not len(batch["path"]):  # every film of the block already has its row
            return {"row": np.array([], dtype=object), "abspath": np.array([], dtype=object),
                    "sha256": np.array([], dtype=object)}
        contents: list[bytes | str] = []
        shas = [str(sha) for sha in batch["sha256"]]
        for i, (absolute, content) in enumerate(zip(batch["abspath"], batch["content"],
                                                    strict=True)):
            if not shas[i]:  # unread: the in-process engine's read_file says why, in its words
                content = self.scoring.read_file(Path(absolute))
                if isinstance(content, bytes):  # readable after all
                    shas[i] = hashlib.sha256(content).hexdigest()
            contents.append(content if isinstance(content, str) else bytes(content))
        paths = [Path(p) for p in batch["path"]]
        keys = [(str(a), sha) for a, sha in zip(batch["abspath"], shas, strict=True)]
        rows = self._score_counted(paths, contents, keys)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object),
                "abspath": np.asarray(batch["abspath"], dtype=object),
                "sha256": np.array(shas, dtype=object)}

    def _score_counted(self, paths: list[Path], contents: list[bytes | str],
                       keys: list[Key]) -> list[dict[str, Any]]:
        """Scores the batch whole, or, if an actor died on it before, film by film.

        Film by film, each film's try is closed as soon as it has its row, so
        that only the film that stops the process keeps counting; once it has
        had :attr:`max_tries`, it gets an error row without being scored again.
        """
        import ray

        tries = ray.get(self.ledger.begin.remote(keys))
        if max(tries) == 1:  # nobody died on these films: the batch, whole
            rows = self._score(paths, contents)
        else:
            rows = []
            for path, content, key, n in zip(paths, contents, keys, tries, strict=True):
                if n > self.max_tries:
                    content = crash_message(path, n - 1)
                rows += self._score([path], [content])
                ray.get(self.ledger.end.remote([key]))
        ray.get(self.ledger.end.remote(keys))
        return rows

    def _score(self, paths: list[Path], contents: list[bytes | str]) -> list[dict[str, Any]]:
        """The in-process engine's rows; one film that breaks the batch gets an error row."""
        score = self.scoring.score_chunk
        try:
            return score(paths, contents, self.models)
        except Exception:  # any failure: isolate the film below rather than fail the job
            rows = []
            for path, content in zip(paths, contents, strict=True):
                try:
                    rows += score([path], [content], self.models)
                except Exception as err:  # whatever it is, a bad file is an error row
                    message = f"{path.name}: the file could not be scored ({type(err).__name__})."
                    rows += score([path], [message], self.models)
            return rows
