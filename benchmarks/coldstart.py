"""Where a cold server's seconds go, from a fresh interpreter to the first film's map.

Usage::

    python -m benchmarks.coldstart [--runs 3] [--extras] [--json]

Each run is a fresh Python that does, one step after another and timed alone, what
the server does from ``streamlit run`` to the first film's answer: import Streamlit,
TensorFlow and Keras (without scikit-learn and pyplot, as the server's preload does;
``--extras`` lets them in), import the pages' modules, check the classifier's
SHA-256, build the network from its config, read its weights, wrap it (the cut at
the Grad-CAM layer), read the OOD statistics, load the lung and opacity
segmenters, score a first real film eagerly (the server answers films eagerly until
its graphs are traced), trace the Grad-CAM graph, then score a second film warm.

It prints each step's median seconds and share of the total, and the seconds the
garbage collector ran during each step (``gc.callbacks``; paused during the load,
as in the server). The steps run on the main thread one after another, where the
server overlaps the import of the pages with the preload; their sum up to the first
film is an upper bound on the server's own part of the cold start, and the shares
say where it goes. ``--trace-first`` traces the segmenters before the first film, as
the server did before 2026-12-07, for the before/after pair. Real X-rays come from the data folder
(``covid.training.catalogue.data_dir()``). It prints numbers; nothing is asserted,
and timings taken while another job loads the CPU are not the dashboard's own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """Times named steps and the garbage collector's work within each."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._gc_start = 0.0
        self._gc_s = 0.0
        self._gc_runs = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Adds the collector's time; ``gc.callbacks`` calls it around every collection."""
        del info
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self._gc_s += time.perf_counter() - self._gc_start
            self._gc_runs += 1

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` and records its seconds and the collector's seconds within."""
        self._gc_s, self._gc_runs = 0.0, 0
        start = time.perf_counter()
        value = fn()
        self.steps.append({"step": name, "seconds": time.perf_counter() - start,
                           "gc_seconds": self._gc_s, "gc_runs": self._gc_runs})
        return value


def _import_keras(extras: bool) -> None:
    if extras:
        import keras  # noqa: F401
    else:
        from covid.app.resources import import_keras_without_extras

        import_keras_without_extras()


def _import_pages() -> None:
    import covid.app.screening
    import covid.explain.batching  # noqa: F401


def child(extras: bool, trace_first: bool, films: list[Path]) -> list[dict[str, Any]]:
    """One cold start's steps, in this (fresh) process, the collector paused as the server's."""
    clock = Clock()
    clock.step("import streamlit", lambda: __import__("streamlit.runtime.scriptrunner"))
    gc.disable()  # as the server's preload (covid.app.resources._collector_paused)
    clock.step("import TensorFlow and Keras" + (" (with sklearn, pyplot)" if extras else ""),
               lambda: _import_keras(extras))
    clock.step("import the pages' modules", _import_pages)

    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.model.metadata import check_sha256, read_metadata
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.ood import load_detector
    from covid.screening.pipeline import analyse
    from covid.settings import settings

    paths = settings()
    path = paths.model_path
    meta = read_metadata(path)
    clock.step("classifier: SHA-256 of the file", lambda: check_sha256(path, meta.sha256))
    model = clock.step("classifier: build the network from its config",
                       lambda: _build_only(path))
    clock.step("classifier: read the weights", lambda: _load_weights(model, path))
    classifier = clock.step("classifier: wrap (cut at the Grad-CAM layer)",
                            lambda: Classifier(model, meta))
    ood = clock.step("OOD statistics", lambda: load_detector(path))
    unets = [clock.step("lung segmenter: load",
                        lambda: LungSegmenter.from_file(paths.lung_model_path))]
    if paths.opacity_model_path.is_file():
        unets.append(clock.step("opacity segmenter: load", lambda: OpacitySegmenter.from_file(
            paths.opacity_model_path)))
    for unet in unets:
        if trace_first:
            clock.step(f"{type(unet).__name__}: trace", unet.warm_up)
        unet.eager_until_traced = True  # as the server: eager until the warm-up traces it
    gc.freeze()
    gc.enable()
    classifier._warming = True  # as the server's background warm-up: untraced graphs run eagerly
    files = [(p.name, p.read_bytes()) for p in films]

    def run(file: tuple[str, bytes]) -> Any:
        return analyse([file], classifier, ood=ood, segmenter=unets[0],
                       opacity=unets[1] if len(unets) > 1 else None)

    clock.step("first film (decode, segmenters, network and map, eagerly)", lambda: run(files[0]))
    classifier._warming = False
    clock.step("later, in the background: trace the Grad-CAM graph",
               lambda: classifier._trace_once("gradcam"))
    for unet in unets:
        if not trace_first:
            clock.step(f"later, in the background: trace {type(unet).__name__}", unet.warm_up)
    clock.step("second film, warm", lambda: run(files[1]))
    return clock.steps


def _build_only(path: Path) -> Any:
    """The network built from the ``.keras`` file's config, without its weights."""
    import zipfile

    import keras

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return keras.saving.deserialize_keras_object(config)


def _load_weights(model: Any, path: Path) -> None:
    """The ``.keras`` file's weights into ``model``, as ``keras.saving.load_model`` reads them.

    (The whole weights file read into memory, then loaded through an in-memory HDF5
    store: Keras's own path when memory suffices, taken apart here only to time it.)
    """
    import io
    import zipfile

    from keras.src.saving import saving_lib

    with zipfile.ZipFile(path) as archive:
        store = saving_lib.H5IOStore(io.BytesIO(archive.read("model.weights.h5")), mode="r")
    try:
        saving_lib._load_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_saveables=set(), failed_saveables=set(), error_msgs={})
    finally:
        store.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes")
    parser.add_argument("--extras", action="store_true",
                        help="let Keras import scikit-learn and pyplot")
    parser.add_argument("--trace-first", action="store_true",
                        help="trace the segmenters before the first film (the server until "
                        "2026-12-07) rather than after it")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_child(extras: bool, trace_first: bool) -> list[dict[str, Any]]:
    """One cold start in a fresh interpreter; its steps."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "benchmarks.coldstart", "--child"]
    command += ["--extras"] if extras else []
    command += ["--trace-first"] if trace_first else []
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"the cold start failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each step's median seconds, median collector seconds and share of the total."""
    rows = []
    for i, first in enumerate(runs[0]):
        rows.append({"step": first["step"],
                     "seconds": statistics.median(r[i]["seconds"] for r in runs),
                     "gc_seconds": statistics.median(r[i]["gc_seconds"] for r in runs),
                     "each": [round(r[i]["seconds"], 2) for r in runs]})
    total = sum(r["seconds"] for r in rows if _before_first_map(r["step"]))
    for row in rows:
        row["share"] = row["seconds"] / total if _before_first_map(row["step"]) else float("nan")
    return rows


def _before_first_map(step: str) -> bool:
    """Whether a step lies on the way to the first film's map (not the later warm-up)."""
    return not step.startswith(("later", "second"))


def report(rows: list[dict[str, Any]], load: tuple[float, ...]) -> str:
    """The breakdown as a plain-text table."""
    width = max(len(r["step"]) for r in rows)
    lines = [f"{'step'.ljust(width)}  {'median':>7}  {'share':>6}  {'gc':>6}  each run",
             f"{'-' * width}  {'-' * 7}  {'-' * 6}  {'-' * 6}  --------"]
    for r in rows:
        share = "" if r["share"] != r["share"] else f"{r['share']:6.1%}"
        lines.append(f"{r['step'].ljust(width)}  {r['seconds']:6.2f}s  {share:>6}  "
                     f"{r['gc_seconds']:5.2f}s  {' / '.join(map(str, r['each']))}")
    total = sum(r["seconds"] for r in rows if _before_first_map(r["step"]))
    lines += [f"{'to the first map, in all'.ljust(width)}  {total:6.2f}s", "",
              f"CPU: {os.cpu_count()} cores; load average before: "
              + ", ".join(f"{v:.2f}" for v in load)
              + (" (other work was running: timings are contended)" if load[0] > 0.5 else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    if args.child:
        from benchmarks.common import DEFAULT_DATA, pick_images

        print(json.dumps(child(args.extras, args.trace_first, pick_images(DEFAULT_DATA, 2))))
        return
    load = os.getloadavg()
    rows = summary([run_child(args.extras, args.trace_first) for _ in range(args.runs)])
    print(json.dumps({"steps": rows, "load_average": load}, indent=2) if args.json
          else report(rows, load))


if __name__ == "__main__":
    main()
