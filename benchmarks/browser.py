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

then prints the server's resident memory, and two throughput figures for the
README's "Scaling" section: ``--sessions`` sessions dropping one film each at
once (sessions per second), and one session dropping ``--batch`` films (films
per second, to the triage table). Every step uses films not seen before, so
nothing is answered from a cache. Every page is checked for a traceback and for
another session's file names.

Real X-rays come from ``../shared/data/covid19-radiography`` (the script stops
with a message when they are absent). It prints numbers; it is not a test, and
timings taken while another job loads the CPU are not the dashboard's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "covid19-radiography"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_S = float(os.environ.get("BENCH_TIMEOUT_S", "300"))
ROW_PX = 35
"""Height of a header or body row of ``st.dataframe`` (Streamlit's default)."""

UPLOADER = '[data-testid="stFileUploader"] input[type="file"]'
DROPZONE = '[data-testid="stFileUploaderDropzone"]'

# "map" once the named study shows its Grad-CAM image (loaded) and its probability bars;
# "flagged" once it shows the out-of-distribution warning instead (no map or bars then).
STUDY_SHOWN = """name => {
  const heading = [...document.querySelectorAll('h1, h2, h3')]
    .some(h => h.innerText.trim() === name);
  if (!heading) return false;
  const map = [...document.querySelectorAll('img')].some(img =>
    (img.alt || '').startsWith('Grad-CAM') && img.alt.endsWith(' for ' + name)
    && img.complete && img.naturalWidth > 0);
  const bars = [...document.querySelectorAll('[data-testid="stProgress"]')]
    .filter(bar => /\\d+\\.\\d%/.test(bar.innerText)).length;
  if (map && bars >= 2) return "map";
  const flagged = [...document.querySelectorAll('[data-testid="stAlert"]')]
    .some(a => a.innerText.includes('does not look like'));
  return flagged ? "flagged" : false;
}"""

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
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser.parse_args(argv)


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


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path, model: Path | None) -> subprocess.Popen:
    """``streamlit run streamlit_app.py`` on ``port``, as the README's command starts it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if model is not None:
        env["COVID_MODEL_PATH"] = str(model)
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true"]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Polls Streamlit's health endpoint until it answers."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"streamlit not healthy after {TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


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
        start = time.perf_counter()
        proc = start_server(port, log, args.model)
        sessions: list[Session] = []
        try:
            wait_healthy(url, proc, log)
            # 1-2: cold start, the film dropped as soon as the uploader shows
            first = await Session(browser, url).open()
            sessions.append(first)
            run.steps.append(Step("server start -> uploader on screen",
                                  time.perf_counter() - start))
            film = next(pool)
            await first.drop([file_payload(film)])
            done = await first.study_shown(film.name)
            run.steps.append(Step("server start -> first X-ray's map and bars",
                                  done - start, "<= 10 s"))

            # 3: a warm new session, one film
            second = await Session(browser, url).open()
            sessions.append(second)
            film = next(pool)
            t0 = time.perf_counter()
            await second.drop([file_payload(film)])
            done = await second.study_shown(film.name)
            run.steps.append(Step("warm new session: one film -> map and bars",
                                  done - t0, "<= 1.0 s"))

            # 4-5: two films and a truncated one, then a click on a row
            batch = await Session(browser, url).open()
            sessions.append(batch)
            two, cut = [next(pool), next(pool)], next(pool)
            broken = f"truncated-{cut.name}"
            t0 = time.perf_counter()
            await batch.drop([file_payload(p) for p in two] + [file_payload(cut, broken, 0.5)])
            done = await batch.table_shown(3, broken)
            run.steps.append(Step("two films + a truncated file -> table, broken file named",
                                  done - t0, "<= 3 s"))
            table = batch.page.locator('[data-testid="stDataFrame"]')
            chosen = await table.locator('[data-testid="glide-cell-1-0"]').inner_text()
            box = await table.locator("canvas").first.bounding_box()
            t0 = time.perf_counter()
            await batch.page.mouse.click(box["x"] + 16, box["y"] + ROW_PX * 1.5)
            done = await batch.study_shown(chosen.strip())
            run.steps.append(Step("click a table row -> its X-ray, map and bars",
                                  done - t0, "<= 1.0 s"))

            # 6: four sessions at once
            seconds = await at_once(browser, url, [next(pool) for _ in range(4)], sessions)
            run.steps.append(Step("four sessions drop four films at once -> all answered",
                                  max(seconds), "<= 4 s",
                                  "each " + " / ".join(f"{s:.2f}" for s in sorted(seconds))))
            run.rss_mib, run.peak_rss_mib = memory_mib(proc.pid)

            # throughput: many sessions at once, and one big batch
            if args.sessions > 0:
                seconds = await at_once(browser, url, [next(pool) for _ in range(args.sessions)],
                                        sessions)
                run.steps.append(Step(
                    f"{args.sessions} sessions drop one film each at once -> all answered",
                    max(seconds), "",
                    f"{args.sessions / max(seconds):.1f} sessions/s, median "
                    f"{sorted(seconds)[len(seconds) // 2]:.2f} s"))
            if args.batch > 0:
                big = await Session(browser, url).open()
                sessions.append(big)
                payloads = [file_payload(next(pool)) for _ in range(args.batch)]
                t0 = time.perf_counter()
                await big.drop(payloads)
                done = await big.table_shown(args.batch)
                run.steps.append(Step(f"one session drops {args.batch} films -> table",
                                      done - t0, "",
                                      f"{args.batch / (done - t0):.1f} films/s"))

        except Exception as err:  # report what was measured, and where it stopped
            run.problems.append(f"stopped after {len(run.steps)} steps: "
                                f"{type(err).__name__}: {str(err).splitlines()[0]}")
            for i, session in enumerate(sessions):
                if session.page is not None:
                    shot = log.with_name(f"session-{i + 1}.png")
                    with contextlib.suppress(Exception):
                        await session.page.screenshot(path=str(shot), full_page=True)
            run.problems.append(f"screenshots and the server log are in {log.parent}")
        try:
            run.flagged = sorted(set().union(*(s.flagged for s in sessions)))
            everyone = set().union(*(s.mine for s in sessions))
            for i, session in enumerate(sessions):
                await session.check(everyone, run, f"session {i + 1}")
            if "Traceback" in log.read_text(errors="replace"):
                run.problems.append(f"the server logged a traceback (see {log})")
        finally:
            for session in sessions:
                await session.close()
            await browser.close()
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
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
    run = asyncio.run(measure(args))
    if args.json:
        print(json.dumps({
            "steps": [vars(s) for s in run.steps], "rss_mib": run.rss_mib,
            "peak_rss_mib": run.peak_rss_mib, "load_average": run.load,
            "tf_import_s": run.tf_import_s,
            "flagged": run.flagged, "problems": run.problems,
        }, indent=2))
    else:
        print(report(run))
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
