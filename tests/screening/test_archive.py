"""The Ray archive engine on a real local Ray (2 logical CPUs): rows, resume, faults.

A named pipe (FIFO) among the films stalls a run at a known point: reading it
blocks, inside an actor's batch, until the test writes into it. The driver or
the actor is killed there, so that "mid-run" is a place, not a time. A film
named ``crash-*`` ends its actor's process with a segmentation fault whenever the actor
scores it (:func:`crashing_score_chunk`, the in-process engine's scoring with
that one difference, run by the real actors).
"""

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import importlib.util
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from covid.__main__ import main
from covid.screening import archive, archive_parts
from covid.screening.archive_parts import read_parts, read_rows
from covid.screening.archive_workers import crash_message
from covid.screening.scoring import COLUMNS, archive_scoring, score_chunk, score_paths
from tests.opacity_models import save_tiny_opacity

ROOT = Path(__file__).resolve().parents[2]
REAL_PER_CLASS = 20
COPIES = 5
"""Names each real film gets in ``many_films``: 200 films."""
WAIT = 300.0
"""Seconds any one wait may take before the test fails: a liveness bound, not a speed goal.
Under ``nice`` beside a training run, a driver and its actors take minutes to import
TensorFlow and load the model."""
CRASH = "crash-"
"""Films named so end the process that scores them (see :func:`crashing_score_chunk`)."""


def crashing_score_chunk(paths, contents, models):
    """predict's ``score_chunk``, except that a ``crash-*`` film's bytes crash the process.

    Each try is noted, before the process dies, as a line of the hidden file
    ``.NAME.tries`` beside the film (hidden files are not films). A message in
    place of the bytes (an error row) is scored as usual.
    """
    for path, content in zip(paths, contents, strict=True):
        if path.name.startswith(CRASH) and isinstance(content, bytes):
            with open(path.with_name(f".{path.name}.tries"), "a") as tries:
                tries.write(f"{os.getpid()}\n")
            ctypes.string_at(0)  # a real segmentation fault, as in a native decoder
    return score_chunk(paths, contents, models)


def planted_score_chunk(paths, contents, models):
    """predict's ``score_chunk``, with the lung segmenter finding planted lungs in the actor too."""
    from covid.inputs.preprocess import lung_box
    from covid.model.lungs import LungSegmentation, lung_field_problem
    from tests.conftest import planted_lungs

    def segment_batch(self, films):
        masks = [planted_lungs(film.shape) for film in films]
        return [LungSegmentation(m, lung_box(m), lung_field_problem(m)) for m in masks]

    type(models.segmenter).segment_batch = segment_batch  # this actor's process only
    return score_chunk(paths, contents, models)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray on 2 logical CPUs, no dashboard; its address, for drivers in subprocesses.

    Ray is first imported by :func:`archive.connect`, as in the command, which sets
    the switch that keeps it on loopback before the import.
    """
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed")
    saved = os.environ.pop("RAY_ADDRESS", None)  # start our own, never join someone's
    assert archive.connect(None, cpus=2)
    import ray

    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def real_films(shared_data_dir, tmp_path_factory) -> Path:
    """A folder of links to 20 COVID and 20 Normal real films, plus three broken files."""
    folder = tmp_path_factory.mktemp("films")
    for label in ("COVID", "Normal"):
        found = sorted((shared_data_dir / label).glob("*.png"))[:REAL_PER_CLASS] or sorted(
            (shared_data_dir / label).glob("*.jpg"))[:REAL_PER_CLASS]
        if len(found) < REAL_PER_CLASS:
            pytest.skip(f"fewer than {REAL_PER_CLASS} {label} films in {shared_data_dir}")
        for film in found:
            (folder / film.name).symlink_to(film)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def many_films(real_films, tmp_path_factory) -> Path:
    """200 links (each real film under five names): several Parquet files' worth."""
    folder = tmp_path_factory.mktemp("many")
    for film in sorted(real_films.glob("*")):
        if film.is_symlink():
            for copy in range(COPIES):
                (folder / f"{copy}-{film.name}").symlink_to(film.resolve())
    return folder


def _paths(rows):
    return Counter(r["path"] for r in rows)


def _films(folder: Path) -> Counter:
    """Each film of a folder once (hidden files are not films)."""
    return Counter(str(p) for p in folder.iterdir() if not p.name.startswith("."))


def _donors(real_films: Path, n: int) -> list[Path]:
    """The first ``n`` real films, COVID and Normal alternating."""
    links = sorted(p.resolve() for p in real_films.iterdir() if p.is_symlink())
    covid = [p for p in links if "COVID" in p.parent.name]
    normal = [p for p in links if p not in covid]
    return [film for pair in zip(covid, normal, strict=False) for film in pair][:n]


def _listening(pids: set[int]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the TCP sockets of ``pids`` listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            words = fields[1].split(":")[0]
            raw = b"".join(bytes.fromhex(words[i:i + 8])[::-1] for i in range(0, len(words), 8))
            found.append(ipaddress.ip_address(raw))
    return found


def _ray_processes() -> set[int]:
    """This process and Ray's own (GCS, raylet, workers) on this machine."""
    pids = {os.getpid()}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            name = (proc / "comm").read_text().strip()
            if proc.name.isdigit() and (name in ("gcs_server", "raylet")
                                        or name.startswith("ray::")):
                pids.add(int(proc.name))
    return pids


def _text(value) -> str:
    return str(value)


def _same_row(got, want):
    for column in COLUMNS:
        if isinstance(want[column], float):
            assert float(got[column]) == pytest.approx(want[column], abs=1e-3), column
        else:
            assert _text(got[column]) == _text(want[column]), column


def _wait_for(condition, what, driver=None, log=None):
    """Polls ``condition`` until it holds; fails with the driver's log if it ends first."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if driver is not None and driver.poll() is not None:
            break
        time.sleep(0.05)
    state = "timed out" if driver is None or driver.poll() is None else (
        f"the driver exited ({driver.returncode})")
    tail = "" if log is None else "; its log ends:\n" + log.read_text()[-2000:]
    pytest.fail(f"{state} waiting for {what}{tail}")


def _writer_end(fifo: Path) -> int | None:
    """Opens the pipe for writing once a reader (an actor mid-batch) has it open."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
            raise
        return None


def _readers(fifo: Path) -> list[int]:
    """The processes other than this one that hold the pipe open."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == str(fifo) for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to look at
            continue
    return pids


def _write_all(fd: int, data: bytes) -> None:
    """Writes all of ``data`` into the pipe, then closes it (the reader sees its end)."""
    os.set_blocking(fd, True)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _cli(address, out, model, *sources, actors=1):
    return [sys.executable, "-m", "covid", "predict", "--engine", "ray", "--address", address,
            "--actors", str(actors), "--batch-size", "4", "--out", str(out),
            "--model", str(model), "--lung-model", str(out.parent / "none.keras"),
            *map(str, sources)]


def _model_sha(model: Path) -> str:
    from covid.model.metadata import read_metadata

    return read_metadata(model).sha256


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def _ctrl_c_reaches_children():
    """Children started inside take Ctrl-C as a terminal's foreground job would.

    A shell without job control starts a background job (``pytest … &``) with
    SIGINT ignored, and exec keeps an ignored signal ignored, so a driver started
    from such a pytest would shrug off the test's Ctrl-C. A handled signal is reset
    to the default at exec, where Python raises KeyboardInterrupt.
    """
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


@contextlib.contextmanager
def _stalled_run(address, out, model, films, fifo, log_path):
    """A driver (two actors) in its own process group, stalled mid-run on the pipe ``fifo``.

    One actor blocks on the pipe (with at most one more batch queued behind it)
    while the other scores the other batches, so rows are written and the run
    cannot end. Yields once both have happened; on leaving, the driver's group is
    SIGKILLed if still alive and the pipe's writer end is closed. Its stderr goes
    to ``log_path``.
    """
    os.mkfifo(fifo)
    with log_path.open("w") as log:  # a file: a full pipe would stall the driver
        with _ctrl_c_reaches_children():
            run = subprocess.Popen(_cli(address, out, model, films, fifo, actors=2), cwd=ROOT,
                                   env=_env(), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=log)
        held = None
        try:
            held = _wait_for(lambda: _writer_end(fifo), "an actor reading the stalled film",
                             run, log_path)
            _wait_for(lambda: list(out.glob("part-*.parquet")), "the first Parquet file", run,
                      log_path)
            yield run
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
            if held is not None:
                os.close(held)


def test_plan_keeps_cpus_for_the_read_tasks_on_every_node():
    one = archive.plan_resources([2.0], 1)
    assert one.actors == 1 and one.actor_cpus + 2 * archive.READ_CPUS <= 2 and one.threads == 2
    two = archive.plan_resources([2.0], 2)
    assert 2 * two.actor_cpus + 2 * archive.READ_CPUS <= 2 and two.threads == 1
    cluster = archive.plan_resources([8.0, 8.0], 3)  # two actors on one node, one on the other
    assert 2 * cluster.actor_cpus + 2 * archive.READ_CPUS <= 8 and cluster.read_tasks == 4
    assert archive.plan_resources([8.0, 8.0]).actors == 8
    assert archive.plan_resources([2.0]).actors == 2  # measured faster than one on 2 cores
    with pytest.raises(archive.ArchiveError):
        archive.plan_resources([2.0], 20)


def test_ray_engine_needs_out_and_local_engine_refuses_it(tmp_path, capsys):
    assert main(["predict", "--engine", "ray", str(tmp_path)]) == 2
    assert main(["predict", "--out", str(tmp_path), str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, tiny_model_file):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        job = archive.Job([tmp_path], out, tiny_model_file, tmp_path / "none.keras",
                          archive_scoring())
        with pytest.raises(archive.ArchiveError, match="another run"):
            archive.score_archive(job)


def test_rows_equal_the_in_process_engines(
    ray_address, real_films, tiny_model_file, tiny_lung_file, tmp_path
):
    sources = [real_films, real_films / "missing.png"]
    job = archive.Job(sources, tmp_path / "out", tiny_model_file, tiny_lung_file,
                      archive_scoring(), actors=2, batch_size=8)
    summary = archive.score_archive(job)
    got = {r["path"]: r for r in read_rows(job.out)}
    want = {r["path"]: r for r in score_paths(sources, tiny_model_file, tiny_lung_file)}
    assert len(read_rows(job.out)) == len(got) == len(want) == 2 * REAL_PER_CLASS + 4
    assert got.keys() == want.keys()
    for path, row in want.items():
        _same_row(got[path], row)
    errors = [r for r in want.values() if r["error"]]
    assert {Path(r["path"]).name for r in errors} == {
        "corrupt.png", "notes.txt", "empty.png", "missing.png"}
    assert summary.scored == len(want) and summary.errors == len(errors)
    assert summary.admitted == sum(r["advice"] == "admit" for r in want.values())
    assert summary.unusual == sum(r["flag"] == "unusual" for r in want.values())
    assert summary.not_chest == sum(r["flag"] == "not_chest" for r in want.values())
    assert summary.admitted + summary.not_chest > 0  # the counts count something
    assert summary.replaced == 0
    for part in job.out.glob("part-*.parquet"):
        assert pq.read_schema(part).names == list(COLUMNS)
        assert pq.read_metadata(part).num_rows <= archive_parts.FLUSH_ROWS


def test_driver_killed_mid_run_then_resumed_scores_every_film_exactly_once(
    ray_address, many_films, tiny_model_file, tmp_path
):
    out, total = tmp_path / "out", 2 * REAL_PER_CLASS * COPIES
    with _stalled_run(ray_address, out, tiny_model_file, many_films, tmp_path / "stall.png",
                      tmp_path / "first.log") as first:
        os.killpg(first.pid, signal.SIGKILL)  # the driver's whole process group
        first.wait()
    before = read_rows(out)
    assert 0 < len(before) < total and max(_paths(before).values()) == 1

    resumed = subprocess.run(_cli(ray_address, out, tiny_model_file, many_films), cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{total - len(before)} films scored" in resumed.stderr
    after = read_rows(out)
    assert _paths(after) == Counter(str(p) for p in many_films.iterdir())  # each once
    kept = {r["path"]: r for r in after}
    assert all(kept[r["path"]] == r for r in before)  # the first run's rows, untouched

    parts = sorted(out.glob("part-*.parquet"))
    third = subprocess.run(_cli(ray_address, out, tiny_model_file, many_films), cwd=ROOT,
                           env=_env(), capture_output=True, text=True, timeout=WAIT)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "0 films scored" in third.stderr and f"{total} already had rows" in third.stderr
    assert sorted(out.glob("part-*.parquet")) == parts and read_rows(out) == after


def test_ctrl_c_writes_every_row_scored_so_far_and_exits_130(
    ray_address, many_films, tiny_model_file, tmp_path
):
    out, fifo, log = tmp_path / "out", tmp_path / "stall.png", tmp_path / "run.log"
    with _stalled_run(ray_address, out, tiny_model_file, many_films, fifo, log) as run:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group
        assert run.wait(WAIT) == 130
    summary = [line for line in log.read_text().splitlines()
               if line.startswith("archive interrupted: ")]
    rows = read_rows(out)
    assert summary[0].startswith(f"archive interrupted: {len(rows)} films scored")  # none lost
    assert max(_paths(rows).values()) == 1 and str(fifo) not in _paths(rows)


def test_an_actor_killed_mid_batch_is_replaced_and_the_job_completes(
    ray_address, real_films, tiny_model_file, tmp_path
):
    fifo = tmp_path / "late.png"
    donor = next(p for p in sorted(real_films.iterdir()) if p.is_symlink())  # a real film
    os.mkfifo(fifo)
    job = archive.Job([real_films, fifo], tmp_path / "out", tiny_model_file,
                      tmp_path / "none.keras", archive_scoring(), actors=1, batch_size=4)
    done = {}
    driver = threading.Thread(target=lambda: done.update(summary=archive.score_archive(job)),
                              daemon=True)
    driver.start()
    held = None
    try:
        held = _wait_for(lambda: _writer_end(fifo), "the actor reading the stalled film")
        (victim,) = _wait_for(lambda: _readers(fifo), "the reader's open to return")
        os.kill(victim, signal.SIGKILL)  # the actor dies in the middle of its batch
        _wait_for(lambda: victim not in _readers(fifo), "the actor's death")
        os.close(held)
        held = _wait_for(lambda: _writer_end(fifo), "a new actor retrying the batch")
        assert victim not in _wait_for(lambda: _readers(fifo), "the new reader's open")
        # From now on the film arrives whenever it is read: Ray may run a retried batch
        # more than once, and the driver keeps one row per film.
        deadline = time.monotonic() + WAIT
        while driver.is_alive() and time.monotonic() < deadline:
            if held is not None:
                fd, held = held, None
                with contextlib.suppress(BrokenPipeError):  # that reader went away
                    _write_all(fd, donor.read_bytes())
            held = _writer_end(fifo)
            time.sleep(0.05)
    finally:
        if held is not None:
            os.close(held)
        driver.join(WAIT)
    assert not driver.is_alive() and not done["summary"].interrupted
    rows = read_rows(job.out)
    assert _paths(rows) == Counter(
        [str(p) for p in real_films.iterdir()] + [str(fifo)])  # every film once
    by_path = {r["path"]: r for r in rows}
    late, original = by_path[str(fifo)], by_path[str(donor)]
    assert late["error"] == "" and late["label"] == original["label"]
    assert float(late["p_covid"]) == pytest.approx(float(original["p_covid"]), abs=1e-3)


def test_a_local_ray_listens_on_loopback_only(ray_address):
    import ray

    assert ray_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    pids = _ray_processes()
    assert len(pids) >= 3  # this driver, the GCS and the raylet at least
    bound = _listening(pids)
    assert bound and all(a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None
                                           and a.ipv4_mapped.is_loopback) for a in bound), bound


def test_a_film_that_kills_its_actor_is_tried_max_tries_times_then_gets_an_error_row(
    ray_address, real_films, tiny_model_file, tmp_path
):
    folder = tmp_path / "films"
    folder.mkdir()
    donors = _donors(real_films, 4)
    for film in donors:
        (folder / film.name).symlink_to(film)
    crash = folder / f"{CRASH}{donors[0].name}"  # a real film: only its name kills
    crash.symlink_to(donors[0])
    scoring = dataclasses.replace(archive_scoring(), score_chunk=crashing_score_chunk)
    job = archive.Job([folder], tmp_path / "out", tiny_model_file, tmp_path / "none.keras",
                      scoring, actors=1, batch_size=4, max_tries=2)
    summary = archive.score_archive(job)

    tries = (folder / f".{crash.name}.tries").read_text().split()
    assert len(tries) == 2 and len(set(tries)) == 2  # two tries, each in a process it ended
    listed = read_rows(job.out)
    assert _paths(listed) == _films(folder)  # every film once; the run went on
    rows = {r["path"]: r for r in listed}
    assert rows[str(crash)]["error"] == crash_message(crash, 2)
    assert rows[str(crash)]["label"] == rows[str(crash)]["flag"] == ""
    assert all(r["error"] == "" for path, r in rows.items() if path != str(crash))
    assert summary.scored == len(donors) + 1 and summary.errors == 1


def test_a_film_whose_bytes_changed_replaces_its_row(
    ray_address, real_films, tiny_model_file, tmp_path
):
    folder, none = tmp_path / "films", tmp_path / "none.keras"
    folder.mkdir()
    first, second, *others = _donors(real_films, 4)
    for film in others:
        (folder / film.name).symlink_to(film)
    changing = folder / "changing.png"
    changing.write_bytes(first.read_bytes())
    job = archive.Job([folder], tmp_path / "out", tiny_model_file, none, archive_scoring(),
                      actors=1, batch_size=4)
    assert archive.score_archive(job).scored == 3
    before = {r["path"]: r for r in read_rows(job.out)}

    changing.write_bytes(second.read_bytes())
    summary = archive.score_archive(job)
    assert (summary.scored, summary.replaced, summary.already) == (1, 1, 2)
    rows = read_rows(job.out)
    assert _paths(rows) == _films(folder)  # one row for the changed film: the new one
    after = {r["path"]: r for r in rows}
    _same_row(after[str(changing)], next(score_paths([changing], tiny_model_file, none)))
    assert after[str(changing)] != before[str(changing)]
    assert all(after[path] == before[path] for path in before if path != str(changing))
    keys = {a: sha for part in read_parts(job.out, _model_sha(tiny_model_file), COLUMNS)
            for a, sha in part.films}
    assert keys[str(changing.absolute())] == hashlib.sha256(second.read_bytes()).hexdigest()


def test_the_opacity_model_given_is_the_one_the_actors_run(
    ray_address, real_films, tiny_model_file, tiny_lung_file, plant_lungs, tmp_path
):
    opacity = save_tiny_opacity(tmp_path / "opacity.keras")  # opacity all over the lungs
    folder = tmp_path / "films"
    folder.mkdir()
    for film in _donors(real_films, 4):
        (folder / film.name).symlink_to(film)
    scoring = dataclasses.replace(archive_scoring(), score_chunk=planted_score_chunk)
    job = archive.Job([folder], tmp_path / "out", tiny_model_file, tiny_lung_file, scoring,
                      actors=1, batch_size=4, opacity_path=opacity)
    archive.score_archive(job)

    got = {r["path"]: r for r in read_rows(job.out)}
    want = {r["path"]: r for r in score_paths([folder], tiny_model_file, tiny_lung_file,
                                                 opacity_path=opacity)}  # lungs planted here
    assert got.keys() == want.keys() and len(got) == 4
    for path, row in want.items():
        _same_row(got[path], row)
    chest = [r for r in got.values() if r["flag"] != "not_chest"]
    assert chest and all(float(r["opacity_extent"]) == pytest.approx(1.0) for r in chest)


def test_predict_hands_its_opacity_model_to_the_archive_job(tmp_path, monkeypatch):
    jobs = []
    monkeypatch.setattr(archive, "score_archive", lambda job, progress: jobs.append(job)
                        or archive.Summary())
    opacity = tmp_path / "mine.keras"
    assert main(["predict", "--engine", "ray", "--out", str(tmp_path / "out"),
                 "--opacity-model", str(opacity), str(tmp_path)]) == 0
    assert [job.opacity_path for job in jobs] == [opacity]


def test_the_driver_never_imports_tensorflow(ray_address, real_films, tiny_model_file, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    for film in _donors(real_films, 2):
        (folder / film.name).symlink_to(film)
    out = tmp_path / "out"
    check = ("import sys\nfrom covid.__main__ import main\nrc = main(sys.argv[1:])\n"
             "print(rc, sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", check, *_cli(ray_address, out, tiny_model_file,
                                                               folder)[3:]],
                          env=_env(), capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.stdout.split("\n")[-2] == "0 []", done.stderr[-2000:]
    assert _paths(read_rows(out)) == _films(folder)
