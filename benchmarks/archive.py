"""Archive scoring: the in-process engine against Ray Data with 1 and 2 actors, same films.

Usage::

    python -m benchmarks.archive --n 64 --actors 1,2

Scores ``--n`` real X-rays from the data folder's ``covid19-radiography/`` (both
classes, alternating) with the shipped classifier and lung segmenter, and prints:

* films/s of the in-process engine, ``python -m covid predict --format json``,
  timed from the command's start to its end (importing TensorFlow and loading
  the models included), and its peak resident memory;
* films/s of ``python -m covid predict --engine ray`` with each actor count, timed
  the same way, each on a fresh local Ray (Ray's start-up, the actors loading the
  models and the Parquet files included), and the ratio to in-process (the goal
  is 0.9x or better on a 2-core machine, issue 30);
* Ray's start-up time as the command reports it, and each actor's peak resident
  memory;
* whether the Ray rows match the in-process rows (same labels and errors,
  probabilities within 1e-3).

The Parquet files go to a temporary folder, removed afterwards. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, cpu_model, model_parser, pick_images, run_and_print

GOAL = 0.9
"""Ray's throughput, start-up included, as a fraction of the in-process engine's."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    from covid.settings import settings

    parser = model_parser(__doc__.split("\n")[0])
    parser.add_argument("--lung-model", type=Path, default=settings().lung_model_path)
    parser.add_argument("--n", type=int, default=64, help="films (alternating classes)")
    parser.add_argument("--actors", default="1,2", help="actor counts to try, comma-separated")
    parser.add_argument("--batch", type=int, default=16, help="films per actor call")
    args = parser.parse_args(argv)
    try:
        args.actors = [int(a) for a in args.actors.split(",")]
    except ValueError:
        parser.error("--actors takes comma-separated numbers, e.g. 1,2")
    if args.n < 1 or args.batch < 1 or min(args.actors) < 1:
        parser.error("--n, --batch and every actor count must be at least 1")
    return args


def peak_memory(stop: threading.Event, marker: bytes, peaks: dict[int, int]) -> None:
    """Samples the resident memory of the processes named ``marker`` until ``stop`` is set.

    Args:
        stop: Set when the run is over.
        marker: Bytes of the command line (or Ray's process title) that pick the processes.
        peaks: Filled with each one's peak resident set, in bytes, by process id.
    """
    while not stop.wait(0.2):
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit() or marker not in (proc / "cmdline").read_bytes():
                    continue
                rss = re.search(r"VmRSS:\s+(\d+) kB", (proc / "status").read_text())
            except OSError:  # the process ended meanwhile
                continue
            if rss:
                pid = int(proc.name)
                peaks[pid] = max(peaks.get(pid, 0), int(rss.group(1)) * 1024)


def timed(command: list[str], marker: bytes) -> tuple[float, str, str, list[int]]:
    """Runs a command; its wall time, stdout, stderr and the peak memory (MB) of ``marker``'s."""
    peaks: dict[int, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=peak_memory, args=(stop, marker, peaks), daemon=True)
    watcher.start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}… failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout, done.stderr, [round(v / 2**20) for v in peaks.values()]


def predict_command(args: argparse.Namespace, paths: list[Path]) -> list[str]:
    """``python -m covid predict`` on the films with the benchmark's models."""
    return [sys.executable, "-m", "covid", "predict", "--model", str(args.model),
            "--lung-model", str(args.lung_model), *map(str, paths)]


def ray_run(args: argparse.Namespace, paths: list[Path], actors: int) -> dict[str, Any]:
    """One ``--engine ray`` run into a temporary folder: wall time, start-up, memory, rows."""
    from covid.screening.archive_parts import read_rows

    with tempfile.TemporaryDirectory() as out:
        command = [*predict_command(args, paths), "--engine", "ray", "--out", out,
                   "--actors", str(actors), "--batch-size", str(args.batch)]
        seconds, _, err, memory = timed(command, b"ScoreFilms")
        rows = read_rows(Path(out))
    startup = re.search(r"Ray start-up ([\d.]+) s", err)
    return {"actors": actors, "seconds": seconds, "films_s": len(paths) / seconds,
            "startup_s": float(startup.group(1)) if startup else float("nan"),
            "actor_rss_mb": memory, "rows": rows}


def mismatches(local: list[dict[str, Any]], ray: list[dict[str, Any]]) -> tuple[int, float]:
    """Rows that differ (label, error or a probability beyond 1e-3), and the largest |dp|."""
    from covid.screening.scoring import COLUMNS

    def text(value: Any) -> str:  # Pillow's messages name an object's address
        return re.sub(r" at 0x[0-9a-f]+", "", str(value))

    by_path = {r["path"]: r for r in ray}
    bad, worst = abs(len(ray) - len(local)), 0.0
    for want in local:
        got = by_path.get(want["path"])
        if got is None:
            bad += 1
            continue
        numbers = [c for c in COLUMNS if isinstance(want[c], float)]
        gaps = [abs(float(got[c]) - want[c]) for c in numbers if got[c] != ""]
        worst = max([worst, *gaps])
        same = all(text(got[c]) == text(want[c]) for c in COLUMNS if c not in numbers)
        bad += not same or len(gaps) != len(numbers) or any(g > 1e-3 for g in gaps)
    return bad, worst


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures the in-process engine, then Ray with each actor count, on the same films."""
    paths = pick_images(args.data, args.n)
    load_before = os.getloadavg()[0]
    command = [*predict_command(args, paths), "--format", "json"]
    local_s, out, _, local_rss = timed(command, b"--format\0json")  # cmdline: NUL-separated
    local = json.loads(out)
    runs = [ray_run(args, paths, actors) for actors in args.actors]
    for r in runs:
        r["mismatched_rows"], r["max_dp"] = mismatches(local, r.pop("rows"))
        r["over_local"] = r["films_s"] / (len(paths) / local_s)
    return {"model": str(args.model), "films": len(paths), "batch": args.batch,
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "load_before": load_before,
            "load_avg": os.getloadavg()[0],
            "local_films_s": len(paths) / local_s, "local_seconds": local_s,
            "local_peak_rss_mb": max(local_rss, default=0), "ray": runs, "goal": GOAL}


def report(r: dict[str, Any]) -> str:
    """Formats the measurements as a plain-text table."""
    lines = [
        f"model    {r['model']}",
        f"films    {r['films']} real X-rays, {r['batch']} per actor call",
        f"machine  {r['cpu']}, {r['cpu_count']} CPU cores; load average "
        f"{r['load_before']:.1f} at the start, {r['load_avg']:.1f} at the end",
        "timing   each engine's command from start to end, everything included",
        "",
        f"{'engine':24}{'films/s':>9}{'seconds':>9}{'x local':>9}{'start-up s':>12}"
        f"{'rows differing':>16}   memory",
        f"{'in-process':24}{r['local_films_s']:9.2f}{r['local_seconds']:9.1f}{1.0:9.2f}"
        f"{'':12}{'':16}   peak {r['local_peak_rss_mb']} MB (the process)",
    ]
    for run_ in r["ray"]:
        verdict = "goal met" if run_["over_local"] >= r["goal"] else f"below {r['goal']}x"
        lines.append(
            f"{'ray, ' + str(run_['actors']) + ' actor(s)':24}{run_['films_s']:9.2f}"
            f"{run_['seconds']:9.1f}{run_['over_local']:9.2f}{run_['startup_s']:12.1f}"
            f"{run_['mismatched_rows']:16d}   actors' peaks {run_['actor_rss_mb']} MB; {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run_and_print(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
