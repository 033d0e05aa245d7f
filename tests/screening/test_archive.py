"""The Ray archive engine on a real local Ray (2 logical CPUs): rows, resume, faults.

A named pipe (FIFO) among the films stalls a run at a known point: reading it
blocks, inside an actor's batch, until the test writes into it. The driver or
the actor is killed there, so that "mid-run" is a place, not a time.
"""

import contextlib
import errno
import fcntl
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
from covid.screening import archive
from covid.screening.predict import COLUMNS, archive_scoring, predict_paths

ROOT = Path(__file__).resolve().parents[2]
REAL_PER_CLASS = 20
COPIES = 5
"""Names each real film gets in ``many_films``: 200 films."""
WAIT = 300.0
"""Seconds any one wait may take before the test fails: a liveness bound, not a speed goal.
Under ``nice`` beside a training run, a driver and its actors take minutes to import
TensorFlow and load the model."""


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray on 2 logical CPUs, no dashboard; its address, for drivers in subprocesses."""
    ray = pytest.importorskip("ray")
    saved = os.environ.pop("RAY_ADDRESS", None)  # start our own, never join someone's
    assert archive.connect(None, cpus=2)
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


def test_a_folder_holding_another_models_rows_is_refused(tmp_path, tiny_model_file):
    out = tmp_path / "out"
    out.mkdir()
    scoring = archive_scoring()
    row = dict.fromkeys(COLUMNS, "")
    archive.PartWriter(out, archive.row_schema(COLUMNS), "0" * 64, set()).add(
        row, ("/films/a.png", "1" * 64))  # pending: not written yet
    assert not list(out.glob("part-*.parquet"))
    writer = archive.PartWriter(out, archive.row_schema(COLUMNS), "0" * 64, set())
    writer.add(row, ("/films/a.png", "1" * 64))
    writer.flush()
    assert archive.read_keys(out, "0" * 64) == {("/films/a.png", "1" * 64)}
    job = archive.Job([tmp_path], out, tiny_model_file, tmp_path / "none.keras", scoring)
    with pytest.raises(archive.ArchiveError, match="another model"):
        archive.score_archive(job)


def test_rows_equal_the_in_process_engines(
    ray_address, real_films, tiny_model_file, tiny_lung_file, tmp_path
):
    sources = [real_films, real_films / "missing.png"]
    job = archive.Job(sources, tmp_path / "out", tiny_model_file, tiny_lung_file,
                      archive_scoring(), actors=2, batch_size=8)
    summary = archive.score_archive(job)
    got = {r["path"]: r for r in archive.read_rows(job.out)}
    want = {r["path"]: r for r in predict_paths(sources, tiny_model_file, tiny_lung_file)}
    assert len(archive.read_rows(job.out)) == len(got) == len(want) == 2 * REAL_PER_CLASS + 4
    assert got.keys() == want.keys()
    for path, row in want.items():
        _same_row(got[path], row)
    errors = [r for r in want.values() if r["error"]]
    assert {Path(r["path"]).name for r in errors} == {
        "corrupt.png", "notes.txt", "empty.png", "missing.png"}
    assert summary.scored == len(want) and summary.errors == len(errors)
    assert summary.flagged == sum(r["label"] == "COVID" for r in want.values())
    for part in job.out.glob("part-*.parquet"):
        assert pq.read_schema(part).names == list(COLUMNS)
        assert pq.read_metadata(part).num_rows <= archive.FLUSH_ROWS


def test_driver_killed_mid_run_then_resumed_scores_every_film_exactly_once(
    ray_address, many_films, tiny_model_file, tmp_path
):
    out, total = tmp_path / "out", 2 * REAL_PER_CLASS * COPIES
    with _stalled_run(ray_address, out, tiny_model_file, many_films, tmp_path / "stall.png",
                      tmp_path / "first.log") as first:
        os.killpg(first.pid, signal.SIGKILL)  # the driver's whole process group
        first.wait()
    before = archive.read_rows(out)
    assert 0 < len(before) < total and max(_paths(before).values()) == 1

    resumed = subprocess.run(_cli(ray_address, out, tiny_model_file, many_films), cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{total - len(before)} films scored" in resumed.stderr
    after = archive.read_rows(out)
    assert _paths(after) == Counter(str(p) for p in many_films.iterdir())  # each once
    kept = {r["path"]: r for r in after}
    assert all(kept[r["path"]] == r for r in before)  # the first run's rows, untouched

    parts = sorted(out.glob("part-*.parquet"))
    third = subprocess.run(_cli(ray_address, out, tiny_model_file, many_films), cwd=ROOT,
                           env=_env(), capture_output=True, text=True, timeout=WAIT)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "0 films scored" in third.stderr and f"{total} already had rows" in third.stderr
    assert sorted(out.glob("part-*.parquet")) == parts and archive.read_rows(out) == after


def test_ctrl_c_writes_every_row_scored_so_far_and_exits_130(
    ray_address, many_films, tiny_model_file, tmp_path
):
    out, fifo, log = tmp_path / "out", tmp_path / "stall.png", tmp_path / "run.log"
    with _stalled_run(ray_address, out, tiny_model_file, many_films, fifo, log) as run:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group
        assert run.wait(WAIT) == 130
    summary = [line for line in log.read_text().splitlines()
               if line.startswith("archive interrupted: ")]
    rows = archive.read_rows(out)
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
    rows = archive.read_rows(job.out)
    assert _paths(rows) == Counter(
        [str(p) for p in real_films.iterdir()] + [str(fifo)])  # every film once
    by_path = {r["path"]: r for r in rows}
    late, original = by_path[str(fifo)], by_path[str(donor)]
    assert late["error"] == "" and late["label"] == original["label"]
    assert float(late["p_covid"]) == pytest.approx(float(original["p_covid"]), abs=1e-3)
