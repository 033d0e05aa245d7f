"""The figures behind each piece of process-wide state the server sets (``covid.app.resources``).

Usage::

    python -m benchmarks.server_state [--runs 3] [--json]

Each figure is measured in fresh processes, with and without the piece, on the
shipped classifier:

* **Keras kept out of Streamlit's reset**: the Grad-CAM graph's next call after
  ``keras.backend.clear_session()`` (what Streamlit runs after every script run)
  against its next call without it;
* **collector paused while TensorFlow and Keras import**: the import's wall time
  and the collector's seconds within it, paused or not;
* **collector's view frozen after the load**: one full ``gc.collect()`` with the
  loaded, traced models, frozen or not;
* **scikit-learn and pyplot kept out of Keras**: the import of TensorFlow and Keras
  with and without them;
* **no Grappler rewrites** (``disable_meta_optimizer``, which the server once set and
  no longer does): the Grad-CAM graph's trace and first call, and a warm call
  (median of 7), without Grappler and with it.

It prints medians; nothing is asserted, and timings taken while another job loads
the CPU are not the server's own.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = ("reset", "collector", "freeze", "extras", "grappler")


def _gc_seconds() -> list[float]:
    """A list the collector adds each collection's seconds to (``gc.callbacks``)."""
    spent: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        del info
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    return spent


def _import(extras: bool) -> float:
    start = time.perf_counter()
    if extras:
        import keras  # noqa: F401
    else:
        from covid.app.resources import import_keras_without_extras

        import_keras_without_extras()
    return time.perf_counter() - start


def _classifier(grappler: bool = True) -> Any:
    import tensorflow as tf

    from covid.explain.inference import Classifier
    from covid.settings import settings

    if not grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    return Classifier.from_file(settings().model_path)


def _call_seconds(classifier: Any) -> float:
    import numpy as np

    size = classifier.metadata.input_size
    film = np.full((1, size, size, 1), 128, np.float32)
    start = time.perf_counter()
    classifier.explain_batch(film)
    return time.perf_counter() - start


def child(case: str, on: bool) -> dict[str, float]:
    """One measurement of ``case`` with its piece ``on`` (or off), in this fresh process."""
    if case == "collector":
        spent = _gc_seconds()
        if on:
            gc.disable()
        seconds = _import(extras=False)
        return {"import_s": seconds, "gc_s": sum(spent)}
    if case == "extras":
        return {"import_s": _import(extras=not on)}
    _import(extras=False)
    if case == "grappler":
        classifier = _classifier(grappler=not on)
        first = _call_seconds(classifier)
        warm = statistics.median(_call_seconds(classifier) for _ in range(7))
        return {"trace_and_first_call_s": first, "warm_call_s": warm}
    classifier = _classifier()
    _call_seconds(classifier)
    _call_seconds(classifier)
    if case == "reset":
        if not on:
            import keras

            keras.backend.clear_session()
        return {"next_call_s": _call_seconds(classifier)}
    if on:
        gc.freeze()
    start = time.perf_counter()
    gc.collect()
    return {"full_collection_s": time.perf_counter() - start}


def run_child(case: str, on: bool) -> dict[str, float]:
    """One fresh interpreter measuring ``case`` with the piece on or off."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "benchmarks.server_state", "--child", case,
               "--on" if on else "--off"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(cases: tuple[str, ...], runs: int) -> dict[str, Any]:
    """Alternating on/off pairs of fresh processes for each case; the medians."""
    out: dict[str, Any] = {}
    for case in cases:
        pairs = [(run_child(case, True), run_child(case, False)) for _ in range(runs)]
        out[case] = {side: {key: statistics.median(p[i][key] for p in pairs)
                            for key in pairs[0][i]}
                     for i, side in enumerate(("with", "without"))}
    out["load_average"] = os.getloadavg()
    return out


def report(r: dict[str, Any]) -> str:
    """One line per figure: with the piece, without it."""
    lines = [f"{'piece / figure (medians)':52}{'with':>9}{'without':>10}"]
    for case in CASES:
        if case not in r:
            continue
        for key, value in r[case]["with"].items():
            lines.append(f"{case + ': ' + key:52}{value:8.3f}s{r[case]['without'][key]:9.3f}s")
    load = r["load_average"]
    lines += ["", f"CPU: {os.cpu_count()} cores; load average at the end: "
              + ", ".join(f"{v:.2f}" for v in load)
              + (" (other work was running: timings are contended)" if load[0] > 0.5 else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="on/off pairs per figure")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.on)))
        return
    result = measure(tuple(args.cases.split(",")), args.runs)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
