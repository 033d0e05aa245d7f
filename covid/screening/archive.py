"""``python -m covid predict --engine ray --out DIR``: a whole archive, scored on Ray, resumably.

Ray Data's batch-inference pattern: the films' paths become a dataset; read
tasks read and hash each file; a fixed pool of actors, each holding the models
once, scores the films through the in-process engine's own function (handed in
by :mod:`covid.screening.predict` as a :class:`Scoring`, so that the rows are
equal by construction and this module does not import that one); the driver
streams the rows back and writes them as whole Parquet files into DIR
(:mod:`covid.screening.archive_parts`).

**Exactly once, one row per path.** A film is keyed by its absolute path and
the SHA-256 of its bytes, under the classifier's SHA-256. A run first reads the
keys already in DIR; read tasks drop the films that have a row; the driver, the
only writer, drops any row whose key it has already written (a batch that Ray
retried after an actor died). A film whose bytes changed has a new key, so it
is scored again, and its older row is removed. The hash, not size and
modification time, says whether a film changed: a copy that keeps the time or an
edit that keeps the size cannot pass for the scored film. Its cost is one read
of every file on every run, which the read tasks do anyway to hand the bytes to
the actors (hashing runs at several hundred MB/s, the network at about ten films
a second). A run that is killed (SIGKILL, Ctrl-C, a lost node) loses at most the
rows not yet written, and the next run scores just those. A lock file keeps two
runs from writing into one DIR at once.

**A film that kills its actor** (a crash in a native decoder or in TensorFlow)
is tried at most :data:`MAX_TRIES` times, then gets an error row, and the run
goes on. Ray restarts a dead actor and runs its batch again without limit; a
small ledger actor (:class:`TryLedger`) counts the films whose scoring began and
never ended, so a retried batch is scored film by film and the film that keeps
ending its actor is found and refused.

**Small machines.** Read tasks keep a share of every node's CPUs that the actors
cannot take (:func:`plan_resources`): on 2 cores, an actor pool holding all the
CPUs and the reads feeding it would wait on each other for ever. TensorFlow's
thread pools follow each actor's share (Ray sets ``OMP_NUM_THREADS`` only). A
local Ray listens on the loopback interface only (:func:`connect`).

**Start-up.** The driver never imports TensorFlow (only the actors, which
score, do; the model's metadata and SHA-256 come from the Keras-free
:mod:`covid.model.metadata`). It starts or joins Ray in a thread as soon as it
holds DIR's lock and has read its keys, and hashes the model and lists the
films meanwhile; the actors then load the models while the read tasks read the
first films.

Ray is imported only here and only when this engine runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covid.model.decision import ADMIT_CODE, FLAG_NOT_CHEST, FLAG_UNUSUAL
from covid.screening.archive_parts import (
    ArchiveError,
    PartWriter,
    drop_replaced,
    read_parts,
    row_schema,
)
from covid.screening.archive_workers import MAX_TRIES, ScoreFilms, Scoring, TryLedger, read_films

if TYPE_CHECKING:
    import argparse

DEFAULT_BATCH = 16
"""Films per actor call: the in-process engine's forward-pass batch."""
READ_CPUS = 0.25
"""Logical CPUs each read task asks for; two per node are kept free for them."""
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch, read when Ray is imported, that keeps a single-machine Ray on loopback.

Ray 2.60 resolves a node address of 127.0.0.1 to the host's own address and then
listens on every interface; with this set to 0 (clusters off, as on a laptop) it
takes 127.0.0.1 and binds there."""


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

    The counts name what the decision rule said (the rows' ``flag`` and
    ``advice`` columns), never a reading of their own.

    Attributes:
        scored: Rows written by this run.
        errors: Of which files that could not be scored.
        admitted: Of which advised "admit": a finding, or an unusual chest X-ray.
        unusual: Of which unusual chest X-rays (admitted whatever their label).
        not_chest: Of which refused as not chest X-rays (no label, no advice).
        replaced: Older rows removed because their film's bytes changed.
        already: Films given that already had a row (skipped).
        seconds: Wall time of the run, Ray's start-up included.
        startup: Seconds from the run's start until Ray was up (started or
            joined beside the listing of the films) and the ledger made.
        interrupted: Whether the run was stopped before the end.
    """

    scored: int = 0
    errors: int = 0
    admitted: int = 0
    unusual: int = 0
    not_chest: int = 0
    replaced: int = 0
    already: int = 0
    seconds: float = 0.0
    startup: float = 0.0
    interrupted: bool = False

    def count(self, row: dict[str, Any]) -> None:
        """Counts one new row (the in-process engine's, see :mod:`covid.screening.predict`)."""
        self.scored += 1
        self.errors += bool(row["error"])
        self.admitted += row["advice"] == ADMIT_CODE
        self.unusual += row["flag"] == FLAG_UNUSUAL
        self.not_chest += row["flag"] == FLAG_NOT_CHEST

    def counts(self) -> str:
        """The counts in words."""
        return (f"{self.scored} films scored ({self.errors} errors; {self.admitted} admitted, "
                f"{self.unusual} of them unusual chest X-rays; {self.not_chest} not chest "
                "X-rays, refused)")

    def line(self) -> str:
        """The one-line summary the command prints."""
        rate = self.scored / self.seconds if self.seconds > 0 else 0.0
        state = "interrupted" if self.interrupted else "done"
        return (f"archive {state}: {self.counts()}, {self.replaced} older rows replaced, "
                f"{self.already} already had rows; {self.seconds:.1f} s, {rate:.2f} films/s "
                f"(Ray start-up {self.startup:.1f} s included)")


def connect(address: str | None, cpus: int | None = None) -> bool:
    """Joins the Ray cluster at ``address`` (or ``$RAY_ADDRESS``), else starts a local Ray.

    A local Ray gets no dashboard, no usage reporting, as logical CPUs ``cpus``
    or those this process may use, and listens on 127.0.0.1 only (see
    :data:`LOOPBACK_ONLY`, set here before Ray is imported). Workers find this
    package through ``PYTHONPATH``: on a cluster, every node needs it at the same path.

    Args:
        address: The cluster's address, or None.
        cpus: Logical CPUs of a local Ray (None: this process's CPUs).

    Returns:
        Whether this call started or joined Ray (and so should shut it down).

    Raises:
        ArchiveError: A local Ray would listen beyond loopback (Ray was imported
            before this call, without :data:`LOOPBACK_ONLY` set).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ[LOOPBACK_ONLY] = "0"
    import ray

    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": python_path, "TF_CPP_MIN_LOG_LEVEL": "2"}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a hospital's run phones no one
    cpus = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count())
    ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env,
             logging_level=logging.WARNING)
    bound = {node["NodeManagerAddress"] for node in ray.nodes()}
    if bound != {"127.0.0.1"}:
        ray.shutdown()
        raise ArchiveError(f"a local Ray would listen on {', '.join(sorted(bound))}: set "
                           f"{LOOPBACK_ONLY}=0 before importing Ray")
    return True


def build_dataset(job: Job, films: list[tuple[str, str]], done: dict[str, str], plan: Plan,
                  ledger: Any) -> Any:
    """The streaming pipeline: paths -> read tasks -> actor pool -> rows.

    Args:
        job: The run's models, scoring and batch size.
        films: (path as given, absolute path) pairs.
        done: The content SHA-256 of the row each path has, by absolute path.
        plan: The CPUs' share-out.
        ledger: The run's :class:`TryLedger` actor.

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
                               "lung_path": str(job.lung_path.absolute()),
                               "ledger": ledger, "max_tries": job.max_tries,
                               "opacity_path": None if job.opacity_path is None
                               else str(job.opacity_path.absolute())})


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
        max_tries: Tries a film gets while its actor dies (see :data:`MAX_TRIES`).
        opacity_path: The opacity segmenter's ``.keras`` file (None: the
            settings' one; without the file, no opacity figures).
    """

    paths: list[Path]
    out: Path
    model_path: Path
    lung_path: Path
    scoring: Scoring
    address: str | None = None
    actors: int | None = None
    batch_size: int = DEFAULT_BATCH
    max_tries: int = MAX_TRIES
    opacity_path: Path | None = None


@contextlib.contextmanager
def ray_started(address: str | None) -> Iterator[Future[bool]]:
    """Starts or joins Ray in a thread at once (:func:`connect`); shuts a local Ray down after.

    Yields:
        The start's future: whether this run started or joined Ray (it raises
        what :func:`connect` raised).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="ray-start") as pool:
        start = pool.submit(connect, address)
        try:
            yield start
        finally:
            # Waits for a start still under way even when the run failed before using Ray.
            if start.exception() is None and start.result():
                import ray

                ray.shutdown()


def score_archive(job: Job, progress: Callable[[str], None] | None = None) -> Summary:
    """Scores every film of ``job`` that has no row in ``job.out`` for its present bytes.

    Rows that a newer row of the same path replaces are removed before the run
    (those a killed run left) and after it. Ray starts (:func:`ray_started`)
    once the folder is known to be this run's, while the model is hashed and
    the films are listed.

    Args:
        job: What to score, where to and how.
        progress: Called with a progress line after every file written (and at
            least every 10 s while rows arrive).

    Returns:
        The run's summary (``interrupted`` after Ctrl-C, whose rows are written).

    Raises:
        ArchiveError: ``job.out`` is in use by another run or holds foreign files
            or another model's rows, or the cluster is too small.
        ModelFileError: The model's metadata is missing or malformed, or the
            file does not match it.
    """
    from covid.model.metadata import check_sha256, read_metadata

    started, summary = time.monotonic(), Summary()
    meta, columns = read_metadata(job.model_path), job.scoring.columns
    job.out.mkdir(parents=True, exist_ok=True)
    with open(job.out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if killed
        except BlockingIOError as err:
            raise ArchiveError(f"another run is writing into {job.out}") from err
        for stale in job.out.glob(".part-*.tmp"):  # a killed run's half-written file
            stale.unlink()
        summary.replaced = drop_replaced(job.out, meta.sha256, columns)
        parts = read_parts(job.out, meta.sha256, columns)
        with ray_started(job.address) as ray_up:
            check_sha256(job.model_path, meta.sha256)
            films = list_films(job.paths, job.scoring.iter_files)
            has_row = {absolute: sha for part in parts for absolute, sha in part.films}
            done = {a: has_row[a] for _, a in films if a in has_row}
            writer = PartWriter(job.out, row_schema(columns), meta.sha256, parts)
            try:
                _stream(job, films, done, writer, summary, started, progress, ray_up.result())
            except KeyboardInterrupt:
                summary.interrupted = True
            finally:
                writer.flush()  # what was scored before a Ctrl-C is kept
                summary.replaced += drop_replaced(job.out, meta.sha256, columns)
        summary.already = 0 if summary.interrupted else len(films) - summary.scored
        summary.seconds = time.monotonic() - started
    return summary


def _stream(job: Job, films: list[tuple[str, str]], done: dict[str, str], writer: PartWriter,
            summary: Summary, started: float, progress: Callable[[str], None] | None,
            owned: bool) -> None:
    """Runs the pipeline on the Ray started or joined (``owned``: started) and writes every row."""
    import ray

    ledger = None
    try:
        nodes = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        plan = plan_resources(nodes, job.actors)
        ledger = ray.remote(num_cpus=0)(TryLedger).remote()
        summary.startup = time.monotonic() - started
        ds = build_dataset(job, films, done, plan, ledger)
        shown = time.monotonic()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            parts = writer.parts
            for text, absolute, sha in zip(batch["row"], batch["abspath"], batch["sha256"],
                                           strict=True):
                row = json.loads(text)
                if writer.add(row, (str(absolute), str(sha))):
                    summary.count(row)
            if progress is not None and (writer.parts != parts or time.monotonic() - shown > 10):
                shown = time.monotonic()
                rate = summary.scored / (shown - started)
                progress(f"archive: {len(films)} films listed, {summary.counts()}, "
                         f"{rate:.2f} films/s")
    finally:
        if ledger is not None and not owned:
            ray.kill(ledger)  # a joined cluster outlives this run; a local Ray goes with it


def run_command(args: argparse.Namespace, scoring: Scoring) -> int:
    """``predict --engine ray``: runs the archive job; returns the exit status.

    Args:
        args: ``predict``'s arguments.
        scoring: The in-process engine's pieces.

    Returns:
        0 when every film has its row, 1 when the run cannot start, 2 for a
        usage error, 130 after Ctrl-C.
    """
    from covid.model.metadata import ModelFileError

    if args.out is None:
        print("error: --engine ray needs --out DIR", file=sys.stderr)
        return 2
    if (args.actors is not None and args.actors < 1) or (
            args.batch_size is not None and args.batch_size < 1):
        print("error: --actors and --batch-size must be at least 1", file=sys.stderr)
        return 2
    job = Job(args.paths, args.out, args.model, args.lung_model, scoring, args.address,
              args.actors, args.batch_size or DEFAULT_BATCH, opacity_path=args.opacity_model)
    try:
        summary = score_archive(job, lambda line: print(line, file=sys.stderr, flush=True))
    except (ArchiveError, ModelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.line(), file=sys.stderr)
    return 130 if summary.interrupted else 0
