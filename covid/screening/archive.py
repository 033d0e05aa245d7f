"""``python -m covid predict --engine ray --out DIR``: a whole archive, scored on Ray, resumably.

Ray Data's batch-inference pattern: the films' paths become a dataset; read
tasks read and hash each file; a fixed pool of actors, each holding the models
once, scores the films through the in-process engine's own function (handed in
by :mod:`covid.screening.predict` as a :class:`Scoring`, so that the rows are
equal by construction and this module does not import that one); the driver
streams the rows back and writes them as Parquet files into DIR, at most
:data:`FLUSH_ROWS` rows a file, each one written whole or not at all (a
temporary file renamed into place).

**Exactly once.** A film is keyed by its absolute path, the SHA-256 of its
content and the classifier's SHA-256. Each Parquet file carries the keys of its
rows in its key-value metadata, so that its columns stay exactly the CSV's. A
run first reads the keys already in DIR; read tasks drop the films that have a
row; the driver, the only writer, drops any row whose key it has already
written (a batch that Ray retried after an actor died). A run that is killed
(SIGKILL, Ctrl-C, a lost node) loses at most the rows not yet written, and the
next run scores just those. A lock file keeps two runs from writing into one
DIR at once.

**Small machines.** Read tasks keep a share of every node's CPUs that the actors
cannot take (:func:`plan_resources`): on 2 cores, an actor pool holding all the
CPUs and the reads feeding it would wait on each other for ever. TensorFlow's
thread pools follow each actor's share (Ray sets ``OMP_NUM_THREADS`` only).

Ray is imported only here and only when this engine runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import argparse

    import pyarrow as pa

    from covid.screening.engine import ScreeningModels

FLUSH_ROWS = 64
"""Rows per Parquet file: the driver writes at least this often."""
FLUSH_SECONDS = 30.0
"""Rows waiting longer than this are written even if fewer than :data:`FLUSH_ROWS`."""
DEFAULT_BATCH = 16
"""Films per actor call: the in-process engine's forward-pass batch."""
READ_CPUS = 0.25
"""Logical CPUs each read task asks for; two per node are kept free for them."""
KEYS = b"covid.archive.keys"
"""Parquet key-value metadata holding the model's SHA-256 and each row's film key."""
PART_GLOB = "part-*.parquet"


class ArchiveError(RuntimeError):
    """The archive run cannot start: DIR is busy or unreadable, or the cluster too small."""


@dataclass(frozen=True)
class Scoring:
    """The in-process engine's pieces that this engine runs (see :mod:`covid.screening.predict`).

    Attributes:
        columns: The CSV's columns, in order.
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


@dataclass(frozen=True)
class Plan:
    """How the cluster's CPUs are shared out.

    Attributes:
        actors: Scoring actors.
        actor_cpus: Logical CPUs each actor asks for.
        threads: TensorFlow intra-op threads per actor.
        read_tasks: Read tasks running at once.
    """

    actors: int
    actor_cpus: float
    threads: int
    read_tasks: int


def plan_resources(node_cpus: list[float], actors: int | None = None) -> Plan:
    """Shares the nodes' CPUs between the actors and the read tasks.

    Two read tasks' worth of CPU is kept free on every node; the actors are
    spread evenly and share the rest of the smallest node.

    Args:
        node_cpus: Logical CPUs of each live node.
        actors: Actors wanted (None: one per 2 CPUs of the cluster, at least two: on a
            2-core machine two actors overlap one's reading and segmenting with the
            other's network, which one actor cannot; docs/scaling.md has the figures).

    Returns:
        The plan.

    Raises:
        ArchiveError: No node has CPUs, or more actors are asked for than fit.
    """
    node_cpus = [c for c in node_cpus if c > 0]
    if not node_cpus:
        raise ArchiveError("the Ray cluster has no CPUs")
    actors = actors or max(2, int(sum(node_cpus)) // 2)
    per_node = math.ceil(actors / len(node_cpus))
    share = math.floor((min(node_cpus) - 2 * READ_CPUS) / per_node * 100) / 100
    if share < 0.1:
        raise ArchiveError(f"{actors} actors do not fit on nodes of {min(node_cpus):g} CPUs")
    return Plan(actors, share, max(1, int(share + 0.5)), 2 * len(node_cpus))


@dataclass
class Summary:
    """What one run did.

    Attributes:
        scored: Rows written by this run.
        errors: Of which files that could not be scored.
        flagged: Of which labelled the model's positive class.
        ood: Of which flagged as not a chest X-ray.
        already: Films given that already had a row (skipped).
        seconds: Wall time of the run, Ray's start-up included.
        startup: Seconds spent starting or joining Ray.
        interrupted: Whether the run was stopped before the end.
    """

    scored: int = 0
    errors: int = 0
    flagged: int = 0
    ood: int = 0
    already: int = 0
    seconds: float = 0.0
    startup: float = 0.0
    interrupted: bool = False

    def line(self) -> str:
        """The one-line summary the command prints."""
        rate = self.scored / self.seconds if self.seconds > 0 else 0.0
        state = "interrupted" if self.interrupted else "done"
        return (f"archive {state}: {self.scored} films scored ({self.errors} errors, "
                f"{self.flagged} flagged, {self.ood} not chest X-rays), {self.already} "
                f"already had rows; {self.seconds:.1f} s, {rate:.2f} films/s "
                f"(Ray start-up {self.startup:.1f} s included)")


def row_schema(columns: tuple[str, ...]) -> pa.Schema:
    """The Parquet schema: the CSV's columns, in order.

    Every column is a string holding exactly the in-process CSV's cell (empty
    where the CSV is empty), so that a column added there follows here, typed
    or not, and a file never disagrees with another about a type. Read the
    numbers with ``CAST`` or ``pandas.to_numeric``.
    """
    import pyarrow as pa

    return pa.schema([(column, pa.string()) for column in columns])


def read_keys(out: Path, model_sha256: str) -> set[tuple[str, str]]:
    """The (absolute path, content SHA-256) of every film with a row in ``out``.

    Raises:
        ArchiveError: A Parquet file in ``out`` is not one of this engine's, or
            holds another model's rows (the columns do not say which model).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = set()
    for part in sorted(out.glob(PART_GLOB)):
        try:
            meta = json.loads((pq.read_schema(part).metadata or {})[KEYS])
            other, films = meta["model_sha256"] != model_sha256, meta["films"]
            keys.update((path, sha) for path, sha in films)
        except (KeyError, TypeError, ValueError, OSError, pa.ArrowException) as err:
            raise ArchiveError(f"{part} is not a file this command wrote ({err})") from err
        if other:
            raise ArchiveError(f"{out} holds another model's rows ({part.name}, model "
                               f"{meta['model_sha256'][:12]}…): use another --out folder")
    return keys


def read_rows(out: Path) -> list[dict[str, str]]:
    """Every row in the ``--out`` folder ``out``, file by file, as the CSV's text."""
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(out.glob(PART_GLOB)):
        rows += pq.read_table(part).to_pylist()
    return rows


class PartWriter:
    """Writes rows into ``out`` as whole Parquet files, never the same film twice."""

    def __init__(self, out: Path, schema: pa.Schema, model_sha256: str,
                 written: set[tuple[str, str]]) -> None:
        self.out, self.schema, self.model_sha256 = out, schema, model_sha256
        self.written = written  # shared with the caller: the keys DIR already holds
        self.pending: list[tuple[dict[str, Any], tuple[str, str]]] = []
        self.since = time.monotonic()
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.parts = 0

    def add(self, row: dict[str, Any], key: tuple[str, str]) -> bool:
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
            self._write([r for r, _ in chunk], [list(k) for _, k in chunk])

    def _write(self, rows: list[dict[str, Any]], keys: list[list[str]]) -> None:
        """Writes one file whole: a hidden temporary file, synced, then renamed into place."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: [str(r[name]) for r in rows] for name in self.schema.names}
        meta = {KEYS: json.dumps({"model_sha256": self.model_sha256, "films": keys})}
        table = pa.table(columns, schema=self.schema.with_metadata(meta))
        self.parts += 1
        name = f"part-{self.run_id}-{self.parts:06d}.parquet"
        temporary = self.out / f".{name}.tmp"
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.out / name)
        directory = os.open(self.out, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash of the machine
        finally:
            os.close(directory)


def read_films(batch: dict[str, np.ndarray], done: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Ray read task: reads and hashes films, dropping those that already have a row.

    Runs without TensorFlow. A file that cannot be read here goes on without
    content; the actor asks the in-process engine's ``read_file`` why, so the
    error row says what that engine says.

    Args:
        batch: ``path`` (as given) and ``abspath`` arrays, (N,) each.
        done: Content SHA-256s that have a row, by absolute path.

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
        if sha in done.get(str(absolute), ()):
            continue
        for name, value in (("path", path), ("abspath", absolute), ("sha256", sha),
                            ("content", content)):
            out[name].append(value)
    return {name: np.array(values, dtype=object) for name, values in out.items()}


class ScoreFilms:
    """Ray actor: holds the models once and scores batches of films.

    Args:
        scoring: The in-process engine's pieces (Ray sends its functions by name).
        model_path: The classifier's ``.keras`` file.
        lung_path: The lung segmenter's ``.keras`` file.
        threads: TensorFlow intra-op threads (the actor's share of its node).
    """

    def __init__(self, scoring: Scoring, model_path: str, lung_path: str, threads: int) -> None:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow already ran in this worker process: keep its pools
            logging.getLogger(__name__).warning("TensorFlow thread pools already set")
        from covid.screening.engine import load_models

        self.scoring = scoring
        self.models = load_models(model_path, lung_path, warm_up=False)

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
        rows = self._score(paths, contents)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object),
                "abspath": np.asarray(batch["abspath"], dtype=object),
                "sha256": np.array(shas, dtype=object)}

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


def connect(address: str | None, cpus: int | None = None) -> bool:
    """Joins the Ray cluster at ``address`` (or ``$RAY_ADDRESS``), else starts a local Ray.

    A local Ray gets no dashboard, no usage reporting and, as logical CPUs,
    ``cpus`` or those this process may use. Workers find this package through
    ``PYTHONPATH``: on a cluster, every node needs it at the same path.

    Args:
        address: The cluster's address, or None.
        cpus: Logical CPUs of a local Ray (None: this process's CPUs).

    Returns:
        Whether this call started or joined Ray (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": python_path, "TF_CPP_MIN_LOG_LEVEL": "2"}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a hospital's run phones no one
        cpus = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count())
        ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    return True


def build_dataset(job: Job, films: list[tuple[str, str]], done: dict[str, list[str]],
                  plan: Plan) -> Any:
    """The streaming pipeline: paths -> read tasks -> actor pool -> rows.

    Args:
        job: The run's models, scoring and batch size.
        films: (path as given, absolute path) pairs.
        done: Content SHA-256s that have a row, by absolute path.
        plan: The CPUs' share-out.

    Returns:
        A lazy ``ray.data.Dataset`` of ``row`` (JSON), ``abspath`` and ``sha256``.
    """
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints its own progress
    items = [{"path": path, "abspath": absolute} for path, absolute in films]
    # One block of at most batch_size films per read task and per actor task (one call):
    # an actor that dies takes at most one batch with it, which Ray runs again whole, and
    # rows come back to the driver batch by batch.
    blocks = max(1, math.ceil(len(items) / job.batch_size))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(read_films, fn_kwargs={"done": done}, batch_size=None,
                        batch_format="numpy", num_cpus=READ_CPUS,
                        compute=ray.data.TaskPoolStrategy(size=min(plan.read_tasks, blocks)))
    return ds.map_batches(
        ScoreFilms, batch_size=None, batch_format="numpy", num_cpus=plan.actor_cpus,
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        fn_constructor_kwargs={"scoring": job.scoring, "threads": plan.threads,
                               "model_path": str(job.model_path.absolute()),
                               "lung_path": str(job.lung_path.absolute())})


def list_films(paths: list[Path], iter_files: Callable[[list[Path]], Iterator[Path]]
               ) -> list[tuple[str, str]]:
    """(path as given, absolute path) of every file, each absolute path once, in order."""
    films, seen = [], set()
    for path in iter_files(paths):
        absolute = str(path.absolute())
        if absolute not in seen:
            seen.add(absolute)
            films.append((str(path), absolute))
    return films


@dataclass
class Job:
    """One archive run's inputs.

    Attributes:
        paths: Files and folders.
        out: The Parquet folder.
        model_path: The classifier's ``.keras`` file.
        lung_path: The lung segmenter's ``.keras`` file.
        scoring: The in-process engine's pieces.
        address: Ray cluster to join (None: ``$RAY_ADDRESS``, else a local Ray).
        actors: Scoring actors (None: one per 2 CPUs, at least two).
        batch_size: Films per actor call.
    """

    paths: list[Path]
    out: Path
    model_path: Path
    lung_path: Path
    scoring: Scoring
    address: str | None = None
    actors: int | None = None
    batch_size: int = DEFAULT_BATCH


def score_archive(job: Job, progress: Callable[[str], None] | None = None) -> Summary:
    """Scores every film of ``job`` that has no row in ``job.out`` yet.

    Args:
        job: What to score, where to and how.
        progress: Called with a progress line after every file written (and at
            least every 10 s while rows arrive).

    Returns:
        The run's summary (``interrupted`` after Ctrl-C, whose rows are written).

    Raises:
        ArchiveError: ``job.out`` is in use by another run or holds foreign files
            or another model's rows, or the cluster is too small.
        ModelFileError: The model's metadata is missing or malformed.
    """
    from covid.model.network import check_sha256, read_metadata

    started, summary = time.monotonic(), Summary()
    meta = read_metadata(job.model_path)
    check_sha256(job.model_path, meta.sha256)
    job.out.mkdir(parents=True, exist_ok=True)
    with open(job.out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if killed
        except BlockingIOError as err:
            raise ArchiveError(f"another run is writing into {job.out}") from err
        for stale in job.out.glob(".part-*.tmp"):  # a killed run's half-written file
            stale.unlink()
        written = read_keys(job.out, meta.sha256)
        films = list_films(job.paths, job.scoring.iter_files)
        done: dict[str, list[str]] = {}
        for absolute, sha in written:
            done.setdefault(absolute, []).append(sha)
        done = {a: done[a] for _, a in films if a in done}
        writer = PartWriter(job.out, row_schema(job.scoring.columns), meta.sha256, written)
        try:
            _stream(job, films, done, writer, summary, meta.positive_class, started, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            writer.flush()  # what was scored before a Ctrl-C is kept
        summary.already = 0 if summary.interrupted else len(films) - summary.scored
        summary.seconds = time.monotonic() - started
    return summary


def _stream(job: Job, films: list[tuple[str, str]], done: dict[str, list[str]],
            writer: PartWriter, summary: Summary, positive: str, started: float,
            progress: Callable[[str], None] | None) -> None:
    """Starts (or joins) Ray, runs the pipeline and hands every row to the writer."""
    import ray

    owned = connect(job.address)
    try:
        nodes = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        plan = plan_resources(nodes, job.actors)
        summary.startup = time.monotonic() - started
        ds = build_dataset(job, films, done, plan)
        shown = time.monotonic()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            parts = writer.parts
            for text, absolute, sha in zip(batch["row"], batch["abspath"], batch["sha256"],
                                           strict=True):
                row = json.loads(text)
                if writer.add(row, (str(absolute), str(sha))):
                    summary.scored += 1
                    summary.errors += bool(row["error"])
                    summary.flagged += row["label"] == positive
                    summary.ood += row["ood"] == "true"
            if progress is not None and (writer.parts != parts or time.monotonic() - shown > 10):
                shown = time.monotonic()
                rate = summary.scored / (shown - started)
                progress(f"archive: {summary.scored}/{len(films)} films scored, "
                         f"{summary.errors} errors, {summary.flagged} flagged, "
                         f"{rate:.2f} films/s")
    finally:
        if owned:
            ray.shutdown()


def run_command(args: argparse.Namespace, scoring: Scoring) -> int:
    """``predict --engine ray``: runs the archive job; returns the exit status.

    Args:
        args: ``predict``'s arguments.
        scoring: The in-process engine's pieces.

    Returns:
        0 when every film has its row, 1 when the run cannot start, 2 for a
        usage error, 130 after Ctrl-C.
    """
    from covid.model.network import ModelFileError

    if args.out is None:
        print("error: --engine ray needs --out DIR", file=sys.stderr)
        return 2
    if (args.actors is not None and args.actors < 1) or (
            args.batch_size is not None and args.batch_size < 1):
        print("error: --actors and --batch-size must be at least 1", file=sys.stderr)
        return 2
    job = Job(args.paths, args.out, args.model, args.lung_model, scoring, args.address,
              args.actors, args.batch_size or DEFAULT_BATCH)
    try:
        summary = score_archive(job, lambda line: print(line, file=sys.stderr, flush=True))
    except (ArchiveError, ModelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.line(), file=sys.stderr)
    return 130 if summary.interrupted else 0
