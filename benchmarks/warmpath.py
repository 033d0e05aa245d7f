"""Where a warm film's server time goes: one page run, split into its parts.

Usage::

    python -m benchmarks.warmpath [--films 8] [--json]

Runs the real page (``streamlit_app.py``, the shipped models) in-process through
Streamlit's ``AppTest``: a first film loads the models and traces their graphs,
then each of ``--films`` new sessions drops one unseen film, and every run of the
page script is split into: decoding, the segmenters' passes, the classifier's pass
(prediction and Grad-CAM, through the server's batching worker), drawing the X-ray
and the map, encoding the images for the browser (``st.image``'s conversion to JPEG
or PNG bytes), and the rest of the script (Streamlit elements, the table, state).
It also runs each session's page once more without a change (a rerun, as a widget
click causes) and prints the same split, and the bytes of images sent per film.

What the browser adds (the upload, the websocket, fetching the images and painting)
is the browser benchmark's warm step minus this script's run: ``python -m
benchmarks.browser``. Real X-rays come from the data folder; it prints numbers and
asserts nothing; timings taken while another job loads the CPU are not the page's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_DATA, ROOT, pick_images

PARTS = ("decode", "segmenters", "classifier", "drawing", "image encoding")


class Split:
    """Wall seconds spent in named parts, added up by wrappers around the functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.image_bytes = 0
        self._depth = 0

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed into ``part`` (the outermost timed call only, so nothing counts twice)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self._depth -= 1

        return timed


@contextmanager
def instrumented(split: Split) -> Iterator[None]:
    """Wraps the page's parts in ``split``'s timers while the context is open."""
    import streamlit.elements.lib.image_utils as image_utils

    import covid.app.study as study
    from covid.explain.batching import BatchingClassifier
    from covid.model.lungs import CompiledUNet
    from covid.screening import pipeline

    final = image_utils._ensure_image_size_and_format  # the bytes each image is sent as

    def counted(*args: Any, **kwargs: Any) -> bytes:
        data = final(*args, **kwargs)
        split.image_bytes += len(data)
        return data

    targets = [(pipeline, "_decode_all", "decode"),
               (CompiledUNet, "probs_batch", "segmenters"),
               (BatchingClassifier, "explain_batch", "classifier"),
               (BatchingClassifier, "explain", "classifier"),
               (BatchingClassifier, "forward_batch", "classifier"),
               (study, "render_map", "drawing"), (study, "xray_image", "drawing"),
               (image_utils, "image_to_url", "image encoding")]
    with ExitStack() as stack:
        for owner, name, part in targets:
            original = getattr(owner, name)
            setattr(owner, name, split.wrap(part, original))
            stack.callback(setattr, owner, name, original)
        image_utils._ensure_image_size_and_format = counted
        stack.callback(setattr, image_utils, "_ensure_image_size_and_format", final)
        yield


def page_run(film: Path | None, at: Any = None) -> tuple[Any, float, Split]:
    """One run of the page: a new session dropping ``film``, or ``at`` run again unchanged."""
    from streamlit.testing.v1 import AppTest

    if at is None:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.run()
        at.file_uploader(key="uploads").set_value((film.name, film.read_bytes(), "image/jpeg"))
    split = Split()
    with instrumented(split):
        start = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - start
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception[0].message}")
    return at, seconds, split


def warm_up(film: Path) -> None:
    """Loads the models through the page and waits for the classifier's graphs."""
    from covid.app.resources import load_model
    from covid.settings import settings

    page_run(film)
    classifier, _ = load_model(settings().model_path)
    warmer = classifier.warm_up_in_background()
    warmer.join()


def measure(films: list[Path]) -> dict[str, Any]:
    """The first film, then one new session per film: each run's split, and a rerun's."""
    warm_up(films[0])
    rows: dict[str, list[dict[str, float]]] = {"new film": [], "rerun, nothing changed": []}
    sent = []
    for film in films[1:]:
        at, seconds, split = page_run(film)
        rows["new film"].append({"total": seconds, **split.seconds})
        sent.append(split.image_bytes)
        _, seconds, split = page_run(None, at)
        rows["rerun, nothing changed"].append({"total": seconds, **split.seconds})
    return {kind: {part: statistics.median(r.get(part, 0.0) for r in runs)
                   for part in ("total", *PARTS)} for kind, runs in rows.items()} | {
        "image_kb_per_film": statistics.median(sent) / 1024, "films": len(films) - 1,
        "load_average": os.getloadavg()}


def report(r: dict[str, Any]) -> str:
    """The split as a plain-text table, with each part's share of the run."""
    lines = [f"{'part of the page run (medians)':32}{'new film':>16}{'rerun':>16}"]
    new, rerun = r["new film"], r["rerun, nothing changed"]
    for part in (*PARTS, "rest of the script", "total"):
        if part == "rest of the script":
            a = new["total"] - sum(new[p] for p in PARTS)
            b = rerun["total"] - sum(rerun[p] for p in PARTS)
        else:
            a, b = new[part], rerun[part]
        lines.append(f"{part:32}{a * 1000:9.0f} ms {a / new['total']:4.0%}"
                     f"{b * 1000:9.0f} ms {b / rerun['total']:4.0%}")
    lines += ["", f"images sent per film: {r['image_kb_per_film']:.0f} KiB; {r['films']} films",
              f"CPU: {os.cpu_count()} cores; load average at the end: "
              + ", ".join(f"{v:.2f}" for v in r["load_average"])
              + (" (other work was running: timings are contended)"
                 if r["load_average"][0] > 0.5 else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder")
    parser.add_argument("--films", type=int, default=8, help="warm films measured")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = measure(pick_images(args.data, args.films + 1))
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
