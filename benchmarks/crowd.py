"""A crowd at the dashboard: N headless Chromium sessions each drop K films at once.

Usage::

    python -m benchmarks.crowd [--sessions 16] [--films 4] [--settle 8] [--json]

Starts ``streamlit run streamlit_app.py`` from cold (as ``benchmarks.browser`` does),
has one session drop one film and waits ``--settle`` seconds (the models loaded and
their graphs traced: the crowd meets a warm server), opens ``--sessions`` sessions,
then has every one drop its own ``--films`` films at the same moment and waits for
each page's answer (the triage table with all its rows; for one film, its map and
bars). It prints:

- the slowest and the median session, from the drop to its page's answer;
- films per second (all films over the slowest session);
- the server's resident memory before and after the crowd (and its peak);
- the CPU seconds the server and Chromium each spent during the crowd, against the
  machine's cores times the wall time (Chromium's pages share the CPU with the
  server, as they do in every measurement on one machine);
- any cross-talk: a page showing another session's file, a table row whose file is
  not the session's own, or a label other than the one the same models give that
  film alone (computed in this process after the server stops; ``--no-labels``
  skips it), and any traceback on a page or in the server's log.

Real X-rays come from the data folder's ``covid19-radiography/``, read at run time
(never copied into the repository). It prints numbers; it is not a test, and
timings taken while another job loads the CPU are not the dashboard's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.browser import (
    DEFAULT_DATA,
    TABLE_SHOWN,
    TIMEOUT_S,
    Run,
    Session,
    file_payload,
    films,
    memory_mib,
)
from benchmarks.common import cpu_model
from benchmarks.server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STUDY_SHOWN,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)

TABLE_ROWS = """() => {
  const rows = {};
  for (const cell of document.querySelectorAll('[data-testid^="glide-cell-"]')) {
    const [, col, row] = cell.dataset.testid.match(/glide-cell-(\\d+)-(\\d+)/);
    (rows[row] = rows[row] || {})[col] = cell.innerText.trim();
  }
  return Object.keys(rows).sort((a, b) => a - b).map(r => Object.values(rows[r]));
}"""
"""The triage table's body rows as lists of cell texts (the grid keeps the rows in view in
its accessible table; a crowd's few films are all in view)."""

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Crowd:
    """What one crowd measured."""

    sessions: int
    films: int
    seconds: list[float] = field(default_factory=list)
    first_film_s: float = float("nan")
    rss_before_mib: float = float("nan")
    rss_after_mib: float = float("nan")
    peak_rss_mib: float = float("nan")
    server_cpu_s: float = float("nan")
    chromium_cpu_s: dict[str, float] = field(default_factory=dict)
    machine_cpu_s: float = float("nan")
    cores: int = os.cpu_count() or 1
    cpu: str = ""
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    problems: list[str] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)
    labels_checked: int = 0
    poll_ms: float = float("nan")

    @property
    def slowest(self) -> float:
        """Seconds from the drop to the last page's answer."""
        return max(self.seconds) if self.seconds else float("nan")

    @property
    def films_per_s(self) -> float:
        """Every session's films over the slowest session's time."""
        return self.sessions * self.films / self.slowest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder")
    parser.add_argument("--sessions", type=int, default=16, help="sessions in the crowd")
    parser.add_argument("--films", type=int, default=4, help="films each session drops")
    parser.add_argument("--settle", type=float, default=8.0,
                        help="seconds between the first film and the crowd (graphs traced)")
    parser.add_argument("--poll-ms", type=float, default=100.0,
                        help="how often each page is checked for its answer, in ms")
    parser.add_argument("--no-labels", action="store_true",
                        help="skip the labels' check against the same models run here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser.parse_args(argv)


def process_cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds, all threads (0 once it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def chromium_cpu_s() -> dict[str, float]:
    """CPU seconds of every Chromium process now running, by kind.

    Kinds are Chromium's ``--type`` (``renderer``, ``gpu-process``, ``utility``, ...),
    and ``browser`` for the main process.
    """
    binary = str(Path(CHROMIUM).resolve().parent)
    by_kind: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if "chromium" not in Path(exe).name and not exe.startswith(f"{binary}/chromium"):
            continue
        # Chromium rewrites its children's command lines into one space-separated string
        words = b" ".join(args).split()
        kind = next((w.decode().partition("=")[2] for w in words if w.startswith(b"--type=")),
                    "browser")
        by_kind[kind] = by_kind.get(kind, 0.0) + process_cpu_s(int(entry.name))
    return by_kind


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``, not idle)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICKS


async def warm_server(browser: Any, url: str, film: Path, crowd: Crowd, start: float) -> None:
    """One session drops one film after the cold start; its map is the first film's time."""
    first = await Session(browser, url).open()
    await first.drop([file_payload(film)])
    crowd.first_film_s = await first.study_shown(film.name) - start
    await first.close()


async def answered(session: Session, names: list[str], poll_ms: float) -> float:
    """Waits for a session's answer to its drop: the table with every row, or one film's map.

    The page is polled every ``poll_ms``: sixteen pages polled every 20 ms (as
    ``benchmarks.browser`` polls its few) would cost Chromium more CPU than the
    pages themselves.
    """
    if len(names) == 1:
        shown, arg = STUDY_SHOWN, names[0]
    else:
        shown, arg = TABLE_SHOWN, [len(names), ""]
    await session.page.wait_for_function(shown, arg=arg, timeout=TIMEOUT_S * 1000,
                                         polling=poll_ms)
    return time.perf_counter()


async def drop_all(crowd: Crowd, sessions: list[Session], batches: list[list[Path]],
                   server_pid: int, poll_ms: float) -> None:
    """Every session drops its films at once; records the times, CPU and memory around it."""
    crowd.rss_before_mib = memory_mib(server_pid)[0]
    cpu = (process_cpu_s(server_pid), chromium_cpu_s(), machine_cpu_s())
    t0 = time.perf_counter()
    await asyncio.gather(*(s.drop([file_payload(p) for p in batch])
                           for s, batch in zip(sessions, batches, strict=True)))
    done = await asyncio.gather(*(answered(s, [p.name for p in batch], poll_ms)
                                  for s, batch in zip(sessions, batches, strict=True)))
    crowd.seconds = [d - t0 for d in done]
    crowd.server_cpu_s = process_cpu_s(server_pid) - cpu[0]
    after = chromium_cpu_s()
    crowd.chromium_cpu_s = {kind: after[kind] - cpu[1].get(kind, 0.0) for kind in after}
    crowd.machine_cpu_s = machine_cpu_s() - cpu[2]
    crowd.rss_after_mib, crowd.peak_rss_mib = memory_mib(server_pid)


async def check_pages(crowd: Crowd, sessions: list[Session], batches: list[list[Path]],
                      log: Path) -> None:
    """Each page shows its own films only (and each table row is one of them); no traceback."""
    everyone = {p.name for batch in batches for p in batch}
    run = Run()
    for i, (session, batch) in enumerate(zip(sessions, batches, strict=True)):
        await session.check(everyone, run, f"session {i + 1}")
        if len(batch) < 2:
            continue
        rows = await session.page.evaluate(TABLE_ROWS)
        mine = {p.name for p in batch}
        named = [next((c for c in row if c in everyone), None) for row in rows]
        if sorted(filter(None, named)) != sorted(mine):
            run.problems.append(f"session {i + 1}: its table lists {named}, not its own files")
        crowd.rows.update({name: row for name, row in zip(named, rows, strict=True) if name})
    crowd.problems += run.problems
    if "Traceback" in log.read_text(errors="replace"):
        crowd.problems.append(f"the server logged a traceback (see {log})")


def check_labels(crowd: Crowd, batches: list[list[Path]]) -> None:
    """Each table row shows the label the same models give its film alone, run here."""
    from covid.screening.engine import load_models
    from covid.screening.pipeline import analyse

    models = load_models(warm_up=False)  # the settings' models, as the server's
    paths = [p for batch in batches for p in batch]
    alone = analyse([(p.name, p.read_bytes()) for p in paths], models.classifier,
                    ood=models.ood, segmenter=models.segmenter)
    for result in alone:
        row = crowd.rows.get(result.name)
        if row is None or not result.label:  # not in a table, or refused (no label)
            continue
        crowd.labels_checked += 1
        if result.label not in row:
            crowd.problems.append(f"{result.name}: the page shows {row}, not its label "
                                  f"{result.label!r} alone")


async def measure(args: argparse.Namespace) -> Crowd:
    """Starts the server from cold, warms it with one film, then runs the crowd."""
    from playwright.async_api import async_playwright

    pool = films(args.data, 1 + args.sessions * args.films)
    batches = [pool[1 + i * args.films : 1 + (i + 1) * args.films] for i in range(args.sessions)]
    crowd = Crowd(args.sessions, args.films, cpu=cpu_model(), poll_ms=args.poll_ms)
    port, log = free_port(), Path(tempfile.mkdtemp(prefix="crowd-bench-")) / "server.log"
    url = f"http://127.0.0.1:{port}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS)
        crowd.load = os.getloadavg()
        # SIGTERM (e.g. from `timeout`) cancels the run: it still reports and stops its server
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM,
                                                      asyncio.current_task().cancel)
        start = time.perf_counter()
        proc = start_server(port, log)
        sessions = [Session(browser, url) for _ in batches]
        try:
            wait_healthy(url, proc, log, TIMEOUT_S)
            await warm_server(browser, url, pool[0], crowd, start)
            await asyncio.sleep(args.settle)
            await asyncio.gather(*(s.open() for s in sessions))
            await drop_all(crowd, sessions, batches, proc.pid, args.poll_ms)
            await check_pages(crowd, sessions, batches, log)
        except (Exception, asyncio.CancelledError) as err:  # report what was measured
            why = (str(err).splitlines() or ["cancelled (SIGTERM)"])[0]
            crowd.problems.append(f"stopped: {type(err).__name__}: {why} (server log: {log})")
        finally:
            for session in sessions:
                await session.close()
            await browser.close()
            stop_server(proc)
    if not args.no_labels and crowd.rows and not crowd.problems:
        check_labels(crowd, batches)
    return crowd


def report(crowd: Crowd) -> str:
    """The measurements as plain text."""
    wall = crowd.slowest
    lines = [
        f"{crowd.sessions} sessions x {crowd.films} films, dropped at once, on {crowd.cpu} "
        f"({crowd.cores} cores; load average before the server started: "
        + ", ".join(f"{v:.2f}" for v in crowd.load) + ")",
        f"first film after the cold start (map and bars): {crowd.first_film_s:.2f} s",
        f"slowest session: {wall:.2f} s; median session: "
        f"{statistics.median(crowd.seconds) if crowd.seconds else float('nan'):.2f} s",
        f"films per second: {crowd.films_per_s:.2f}",
        f"server resident memory: {crowd.rss_before_mib:.0f} MiB before, "
        f"{crowd.rss_after_mib:.0f} MiB after (peak {crowd.peak_rss_mib:.0f} MiB)",
        f"CPU during the crowd ({crowd.cores} cores x {wall:.1f} s = {crowd.cores * wall:.1f} "
        f"core-seconds): server {crowd.server_cpu_s:.1f} s, Chromium "
        f"{sum(crowd.chromium_cpu_s.values()):.1f} s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(crowd.chromium_cpu_s.items()))
        + f"; each page polled every {crowd.poll_ms:.0f} ms), whole machine "
        f"{crowd.machine_cpu_s:.1f} s",
    ]
    lines.append(f"labels checked against the same models run here: {crowd.labels_checked} of "
                 f"{crowd.sessions * crowd.films} films")
    lines += [f"PROBLEM: {p}" for p in crowd.problems] or [
        "no cross-talk: every page shows its own films only"
        + (", and each table row the label the same models give its film alone"
           if crowd.labels_checked else "") + "; no traceback"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; non-zero when a page showed a problem."""
    args = parse_args(argv)
    if args.sessions < 1 or args.films < 1:
        raise SystemExit("--sessions and --films must be at least 1")
    crowd = asyncio.run(measure(args))
    if args.json:
        out = {k: v for k, v in asdict(crowd).items() if k != "rows"}
        print(json.dumps({**out, "slowest_s": crowd.slowest, "films_per_s": crowd.films_per_s,
                          "median_s": statistics.median(crowd.seconds) if crowd.seconds
                          else None}, indent=2))
    else:
        print(report(crowd))
    return 1 if crowd.problems else 0


if __name__ == "__main__":
    sys.exit(main())
