"""The dashboard as a demo audience meets it: a cold server and headless Chromium.

Usage::

    python -m benchmarks.browser [--sessions 8] [--batch 16] [--json]

Starts ``streamlit run streamlit_app.py`` from cold (headless, on a free port, with
the project's ``.streamlit/config.toml``), then drives the system Chromium
(``/usr/bin/chromium``, or ``$CHROMIUM_PATH``) through Playwright:

1. server start -> the uploader on screen;
2. server start -> the first X-ray's map and bars on screen (the film is dropped
   as soon as the uploader appears);
3. a warm new session: drop one film -> map and bars;
4. a new session drops two films and a truncated file -> the triage table, with
   the broken file named;
5. a click on a table row -> that study's X-ray, map and bars;
6. four sessions drop four different films at once -> all answered;

then prints the server's resident memory, the server's own account of its start
(the seconds its preload took to import TensorFlow and Keras, to load the
classifier and to load and trace the segmenters, logged by
``covid.app.resources.preload`` and shown here through a ``sitecustomize`` that
only this run's server loads), and two throughput figures for the
README's "Scaling" section: ``--sessions`` sessions dropping one film each at
once (sessions per second), and one session dropping ``--batch`` films (films
per second, to the triage table). Every step uses films not seen before, so
nothing is answered from a cache. Every page is checked for a traceback and for
another session's file names.

Real X-rays come from the data folder's ``covid19-radiography/``
(``covid.training.catalogue.data_dir()``: ``$COVID_DATA_DIR``, else
``../shared/data``; the script stops with a message when they are absent). It
prints numbers; it is not a test, and timings taken while another job loads the
CPU are not the dashboard's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STUDY_SHOWN,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)
from covid.training.catalogue import data_dir

DEFAULT_DATA = data_dir() / "covid19-radiography"
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT_S", "300"))
ROW_PX = 35
"""Height of a header or body row of ``st.dataframe`` (Streamlit's default)."""

UPLOADER = '[data-testid="stFileUploader"] input[type="file"]'
DROPZONE = '[data-testid="stFileUploaderDropzone"]'

# True once the triage table is drawn for ``rows`` files and an alert names the broken file.
# (The grid renders only the rows in view, so its caption gives the count.)
TABLE_SHOWN = """([rows, broken]) => {
  const grid = document.querySelector(
    '[data-testid="stDataFrame"] [data-testid="glide-cell-1-0"]');
  const counted = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
    .some(c => c.innerText.startsWith(rows + ' files, most suspicious first'));
  const named = [...document.querySelectorAll('[data-testid="stAlert"]')]
    .some(a => a.innerText.includes(broken));
  return grid !== null && counted && (broken === '' || named);
}"""


@dataclass
class Step:
    """One measured step."""

    name: str
    seconds: float
    goal: str = ""
    note: str = ""


@dataclass
class Run:
    """Everything measured, plus what went wrong."""

    steps: list[Step] = field(default_factory=list)
    rss_mib: float = float("nan")
    peak_rss_mib: float = float("nan")
    problems: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tf_import_s: float = float("nan")
    preload: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder")
    parser.add_argument("--sessions", type=int, default=8,
                        help="sessions dropping one film each at once, for sessions per second")
    parser.add_argument("--batch", type=int, default=16,
                        help="films dropped in one session, for films per second")
    parser.add_argument("--model", type=Path, default=None,
                        help="serve this .keras file (COVID_MODEL_PATH); default: the shipped one")
    parser.add_argument("--cold-only", action="store_true",
                        help="only the cold start and one warm session (steps 1-3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser.parse_args(argv)


LOG_HOOK = """import logging
handler = logging.StreamHandler()
handler.setFormatter(logging.Formatter("%(relativeCreated)d ms %(name)s %(message)s"))
logging.getLogger("covid").addHandler(handler)
logging.getLogger("covid").setLevel(logging.INFO)
"""
"""A ``sitecustomize`` for the server only: the package's INFO lines on its stderr, stamped
with the milliseconds since the process started logging (at its start)."""


def server_env(args: argparse.Namespace, hook: Path) -> dict[str, str]:
    """The server's environment: the log hook first on its path, and ``--model``."""
    from benchmarks.server import ROOT

    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(LOG_HOOK)
    env = {"PYTHONPATH": os.pathsep.join(
        filter(None, [str(hook), str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.model:
        env["COVID_MODEL_PATH"] = str(args.model)
    return env


def preload_line(log: Path) -> str:
    """The server's account of its preload, from its log ("" when it logged none)."""
    for line in log.read_text(errors="replace").splitlines():
        if "models preloaded in" in line:
            at_ms, _, rest = line.partition(" ms ")
            return f"done {int(at_ms) / 1000:.2f} s after the server process started; " + \
                rest.split("models ", 1)[1]
    return ""


def films(data: Path, n: int) -> list[Path]:
    """``n`` real X-rays alternating between the classes, each class sorted by name."""
    from benchmarks.common import pick_images

    if not data.is_dir():
        raise SystemExit(f"skipped: no X-rays at {data} (the COVID-19 Radiography Database)")
    picked = pick_images(data, n)
    if len(picked) < n:
        raise SystemExit(f"skipped: {n} X-rays needed, {len(picked)} found under {data}")
    return picked


def tensorflow_import_seconds() -> float:
    """Seconds a fresh Python takes to import TensorFlow here, now.

    Most of a cold start is this import, and on a shared virtual machine it drifts
    with the neighbours' load (4.6 to 7 s on the machine the README's figures come
    from), so it is printed beside the cold-start figures.
    """
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True)
    return time.perf_counter() - start


def memory_mib(pid: int) -> tuple[float, float]:
    """A process's resident and peak resident memory, in MiB (Linux ``/proc``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def file_payload(path: Path, name: str | None = None, cut: float | None = None) -> dict:
    """A file for ``set_input_files``; ``cut`` keeps only that fraction of its bytes."""
    data = path.read_bytes()
    if cut is not None:
        data = data[: int(len(data) * cut)]
    return {"name": name or path.name, "mimeType": "image/jpeg", "buffer": data}


class Session:
    """One browser session (its own context, so its own Streamlit session)."""

    def __init__(self, browser: Any, url: str) -> None:
        self.browser, self.url = browser, url
        self.context = self.page = None
        self.mine: set[str] = set()
        self.flagged: set[str] = set()

    async def open(self) -> Session:
        """Opens the page and waits for the uploader."""
        self.context = await self.browser.new_context(viewport={"width": 1440, "height": 1600})
        self.page = await self.context.new_page()
        await self.page.goto(self.url, wait_until="commit")
        await self.page.locator(DROPZONE).wait_for(state="visible", timeout=TIMEOUT_S * 1000)
        return self

    async def drop(self, payloads: list[dict]) -> None:
        """Drops files on the uploader."""
        self.mine |= {p["name"] for p in payloads}
        await self.page.locator(UPLOADER).set_input_files(payloads)

    async def study_shown(self, name: str) -> float:
        """Waits until the study's map and bars are on screen; returns the monotonic time.

        A film flagged as not looking like a chest X-ray has no map or bars on
        screen: its warning counts as the answer (and is counted in ``flagged``).
        """
        shown = await self.page.wait_for_function(STUDY_SHOWN, arg=name,
                                                  timeout=TIMEOUT_S * 1000, polling=20)
        done = time.perf_counter()
        if await shown.json_value() == "flagged":
            self.flagged.add(name)
        return done

    async def table_shown(self, rows: int, broken: str = "") -> float:
        """Waits until the triage table has ``rows`` rows and names ``broken``."""
        await self.page.wait_for_function(TABLE_SHOWN, arg=[rows, broken],
                                          timeout=TIMEOUT_S * 1000, polling=20)
        return time.perf_counter()

    async def check(self, others: set[str], run: Run, label: str) -> None:
        """Records a traceback, or another session's file name, on this page."""
        if await self.page.locator('[data-testid="stException"]').count():
            run.problems.append(f"{label}: a traceback is on the page")
        text = await self.page.locator("body").inner_text()
        leaked = sorted(n for n in others - self.mine if n in text)
        if leaked:
            run.problems.append(f"{label}: shows another session's files {leaked}")

    async def close(self) -> None:
        """Closes the session's context."""
        if self.context is not None:
            await self.context.close()


@dataclass
class Demo:
    """What every step shares: the browser, the server's address, the unseen films, the record."""

    browser: Any
    url: str
    pool: Iterator[Path]
    run: Run
    sessions: list[Session] = field(default_factory=list)

    async def session(self) -> Session:
        """A new session, opened (its page loaded) and kept for the final checks."""
        session = await Session(self.browser, self.url).open()
        self.sessions.append(session)
        return session

    def step(self, name: str, seconds: float, goal: str = "", note: str = "") -> None:
        """Records one measured step."""
        self.run.steps.append(Step(name, seconds, goal, note))


async def cold_start_steps(demo: Demo, start: float) -> None:
    """Steps 1-3: the uploader and the first map after a cold start, then a warm session."""
    first = await demo.session()
    demo.step("server start -> uploader on screen", time.perf_counter() - start)
    film = next(demo.pool)  # dropped as soon as the uploader shows
    await first.drop([file_payload(film)])
    done = await first.study_shown(film.name)
    demo.step("server start -> first X-ray's map and bars", done - start, "<= 10 s")

    second = await demo.session()
    film = next(demo.pool)
    t0 = time.perf_counter()
    await second.drop([file_payload(film)])
    done = await second.study_shown(film.name)
    demo.step("warm new session: one film -> map and bars", done - t0, "<= 1.0 s")


async def table_steps(demo: Demo) -> None:
    """Steps 4-5: two films and a truncated one give a table; a click on a row opens it."""
    batch = await demo.session()
    two, cut = [next(demo.pool), next(demo.pool)], next(demo.pool)
    broken = f"truncated-{cut.name}"
    t0 = time.perf_counter()
    await batch.drop([file_payload(p) for p in two] + [file_payload(cut, broken, 0.5)])
    done = await batch.table_shown(3, broken)
    demo.step("two films + a truncated file -> table, broken file named", done - t0, "<= 3 s")
    table = batch.page.locator('[data-testid="stDataFrame"]')
    chosen = await table.locator('[data-testid="glide-cell-1-0"]').inner_text()
    box = await table.locator("canvas").first.bounding_box()
    t0 = time.perf_counter()
    await batch.page.mouse.click(box["x"] + 16, box["y"] + ROW_PX * 1.5)
    done = await batch.study_shown(chosen.strip())
    demo.step("click a table row -> its X-ray, map and bars", done - t0, "<= 1.0 s")


async def throughput_steps(demo: Demo, n_sessions: int, n_batch: int) -> None:
    """Many sessions dropping one film each at once, then one session dropping a batch."""
    if n_sessions > 0:
        seconds = await at_once(demo.browser, demo.url,
                                [next(demo.pool) for _ in range(n_sessions)], demo.sessions)
        demo.step(f"{n_sessions} sessions drop one film each at once -> all answered",
                  max(seconds), "", f"{n_sessions / max(seconds):.1f} sessions/s, median "
                  f"{sorted(seconds)[len(seconds) // 2]:.2f} s")
    if n_batch > 0:
        big = await demo.session()
        payloads = [file_payload(next(demo.pool)) for _ in range(n_batch)]
        t0 = time.perf_counter()
        await big.drop(payloads)
        done = await big.table_shown(n_batch)
        demo.step(f"one session drops {n_batch} films -> table", done - t0, "",
                  f"{n_batch / (done - t0):.1f} films/s")


async def all_steps(demo: Demo, args: argparse.Namespace, start: float, proc) -> None:
    """Every step in order, with the server's memory after the four-session step."""
    await cold_start_steps(demo, start)
    if args.cold_only:
        demo.run.rss_mib, demo.run.peak_rss_mib = memory_mib(proc.pid)
        return
    await table_steps(demo)
    seconds = await at_once(demo.browser, demo.url, [next(demo.pool) for _ in range(4)],
                            demo.sessions)
    demo.step("four sessions drop four films at once -> all answered", max(seconds), "<= 4 s",
              "each " + " / ".join(f"{s:.2f}" for s in sorted(seconds)))
    demo.run.rss_mib, demo.run.peak_rss_mib = memory_mib(proc.pid)
    await throughput_steps(demo, args.sessions, args.batch)


async def record_failure(demo: Demo, err: Exception, log: Path) -> None:
    """Notes where the demo stopped, with a screenshot of every session."""
    demo.run.problems.append(f"stopped after {len(demo.run.steps)} steps: "
                             f"{type(err).__name__}: {str(err).splitlines()[0]}")
    for i, session in enumerate(demo.sessions):
        if session.page is not None:
            shot = log.with_name(f"session-{i + 1}.png")
            with contextlib.suppress(Exception):
                await session.page.screenshot(path=str(shot), full_page=True)
    demo.run.problems.append(f"screenshots and the server log are in {log.parent}")


async def check_pages(demo: Demo, log: Path) -> None:
    """Every page: no traceback, no other session's file; the server logged no traceback."""
    demo.run.flagged = sorted(set().union(*(s.flagged for s in demo.sessions)))
    everyone = set().union(*(s.mine for s in demo.sessions))
    for i, session in enumerate(demo.sessions):
        await session.check(everyone, demo.run, f"session {i + 1}")
    if "Traceback" in log.read_text(errors="replace"):
        demo.run.problems.append(f"the server logged a traceback (see {log})")


async def measure(args: argparse.Namespace) -> Run:
    """Starts the server from cold and drives Chromium through every step."""
    from playwright.async_api import async_playwright

    pool = iter(films(args.data, 9 + max(args.sessions, 0) + max(args.batch, 0)))
    run = Run()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="browser-bench-")) / "server.log"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS)
        run.tf_import_s = tensorflow_import_seconds()
        run.load = os.getloadavg()
        demo = Demo(browser, url, pool, run)
        start = time.perf_counter()
        proc = start_server(port, log, server_env(args, log.parent / "hook"))
        try:
            wait_healthy(url, proc, log, TIMEOUT_S)
            await all_steps(demo, args, start, proc)
        except Exception as err:  # report what was measured, and where it stopped
            await record_failure(demo, err, log)
        try:
            await check_pages(demo, log)
            run.preload = preload_line(log)
        finally:
            for session in demo.sessions:
                await session.close()
            await browser.close()
            stop_server(proc)
    return run


async def at_once(browser: Any, url: str, paths: list[Path], sessions: list[Session]
                  ) -> list[float]:
    """Opens one session per film (added to ``sessions``), then drops them all at once.

    Returns:
        The seconds from the drop to each session's map and bars.
    """
    group = [Session(browser, url) for _ in paths]
    sessions += group
    await asyncio.gather(*(s.open() for s in group))
    t0 = time.perf_counter()
    await asyncio.gather(*(s.drop([file_payload(p)]) for s, p in zip(group, paths, strict=True)))
    done = await asyncio.gather(*(s.study_shown(p.name)
                                  for s, p in zip(group, paths, strict=True)))
    return [d - t0 for d in done]


def report(run: Run) -> str:
    """The measurements as a plain-text table."""
    width = max(len(s.name) for s in run.steps) if run.steps else 40
    lines = [f"{'step'.ljust(width)}  {'measured':>9}  {'goal':>8}  note",
             f"{'-' * width}  {'-' * 9}  {'-' * 8}  ----"]
    for s in run.steps:
        lines.append(f"{s.name.ljust(width)}  {s.seconds:8.2f}s  {s.goal:>8}  {s.note}")
    lines += [
        "",
        f"server resident memory after the four-session step: {run.rss_mib:.0f} MiB "
        f"(peak {run.peak_rss_mib:.0f} MiB)",
        f"CPU: {os.cpu_count()} cores; load average when the server started: "
        + ", ".join(f"{v:.2f}" for v in run.load)
        + (" (other work was running: timings are contended)" if run.load[0] > 0.5 else ""),
        f"TensorFlow import alone, in a fresh process just before the server started: "
        f"{run.tf_import_s:.2f} s (most of the cold start)",
        f"server's preload: {run.preload or 'not logged'}",
    ]
    if run.flagged:
        lines.append("flagged as not a chest X-ray (the warning counted as the answer): "
                     + ", ".join(run.flagged))
    lines += [f"PROBLEM: {p}" for p in run.problems] or ["no traceback, no file of another "
                                                           "session on any page"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; non-zero when a page showed a problem."""
    args = parse_args(argv)
    run = asyncio.run(measure(args))  # a server that fails to start is one of run.problems
    if args.json:
        print(json.dumps({
            "steps": [vars(s) for s in run.steps], "rss_mib": run.rss_mib,
            "peak_rss_mib": run.peak_rss_mib, "load_average": run.load,
            "tf_import_s": run.tf_import_s, "preload": run.preload,
            "flagged": run.flagged, "problems": run.problems,
        }, indent=2))
    else:
        print(report(run))
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
