"""The dashboard's server and headless Chromium, as the browser benchmark and tests start them.

One place for the ``streamlit run`` command, the loopback port, the health check
and Chromium's launch flags, so that ``benchmarks.browser`` measures the server
``tests/app/test_browser.py`` checks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
"""The system Chromium that Playwright drives (``$CHROMIUM_PATH`` overrides)."""

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
"""Headless, offline, and nothing running beside the page: no sandbox (containers), no GPU,
no background networking, updates, sync or first-run pages, no QUIC."""


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
"""A page predicate for ``page.wait_for_function(STUDY_SHOWN, name)``: ``"map"`` once the
named study shows its Grad-CAM image (loaded) and its probability bars, ``"flagged"`` once
it shows the out-of-distribution warning instead (no map or bars then), else false."""


class ServerError(RuntimeError):
    """The server exited, or did not answer its health check in time (the log's tail says why)."""


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path, env: dict[str, str] | None = None,
                 options: tuple[str, ...] = ()) -> subprocess.Popen:
    """``streamlit run streamlit_app.py`` on ``port`` (loopback, headless), logging to ``log``.

    Args:
        port: The port to serve on.
        log: File receiving the server's stdout and stderr.
        env: Variables set for the server on top of this process's (e.g. ``COVID_MODEL_PATH``).
        options: Further ``streamlit run`` options.

    Returns:
        The running server process.
    """
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": python_path,
                **(env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true", *options]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float,
                 poll_s: float = 0.05) -> None:
    """Polls Streamlit's health endpoint until it answers.

    Raises:
        ServerError: The server exited, or did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise ServerError(f"streamlit exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(poll_s)
    raise ServerError(f"streamlit not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """Terminates the server, killing it when it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
