"""Latency and memory of the shipped model on real chest X-rays.

Usage::

    python -m benchmarks.latency --model models/covid_resnet50.keras --n 20 --repeats 5

Prints medians (over ``--repeats`` timed runs of each of ``--n`` images, after
one warm-up) of:

* decoding and preprocessing one file (bytes to model input);
* the bare forward pass of one image through the compiled model (a
  ``tf.function`` of the Keras model, the lower bound for any prediction);
* a prediction with its Grad-CAM and Grad-CAM++ maps
  (:meth:`covid.explain.inference.Classifier.explain`: one forward and one backward pass),
  and its ratio to the bare forward pass;
* batched scoring throughput (:meth:`covid.explain.inference.Classifier.predict_batch`);
* the lung segmenter per film, and the cost the opacity segmenter adds per film
  after it (one film, and per film in a batch of ``--batch``), on films kept at the
  page's 1,024 px (:data:`covid.screening.pipeline.DISPLAY_MAX_SIDE`);
* the cold start, in a fresh subprocess: importing TensorFlow, loading and
  verifying the model, and the first (tracing) prediction and Grad-CAM calls;
* this process's peak resident memory (``resource.getrusage``).

Images are read from the data folder's ``covid19-radiography/`` (both classes, in a
fixed order); nothing is written anywhere. The CPU's model name and the load
average while measuring are printed with the figures: other work on the machine
(a training) slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    cpu_model,
    median_seconds,
    model_parser,
    pick_images,
    run_and_print,
)
from covid.settings import settings

_COLD_LOAD = """
import json, sys, time
t0 = time.perf_counter()
import tensorflow  # noqa: F401
from covid.explain.inference import Classifier
t1 = time.perf_counter()
clf = Classifier.from_file(sys.argv[1])
t2 = time.perf_counter()
import numpy as np
s = clf.metadata.input_size
clf.predict_batch(np.zeros((1, s, s, 1), np.float32))
t3 = time.perf_counter()
clf.explain(np.zeros((s, s, 1), np.float32))
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2,
                  "first_explain_s": t4 - t3}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = model_parser(__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="images (half per class)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per image")
    parser.add_argument("--batch", type=int, default=16, help="batch size for throughput")
    paths = settings()
    parser.add_argument("--lung-model", type=Path, default=paths.lung_model_path)
    parser.add_argument("--opacity-model", type=Path, default=paths.opacity_model_path,
                        help="the opacity segmenter (its figures are skipped without it)")
    return parser.parse_args(argv)


def segmenter_costs(args: argparse.Namespace, films: list[Any]) -> dict[str, Any]:
    """Median seconds per film of the lung segmenter and of the opacity segmenter after it.

    Args:
        args: The command line (``--lung-model``, ``--opacity-model``, ``--batch``,
            ``--repeats``).
        films: (H, W) uint8 films as the page keeps them.

    Returns:
        ``lung_s``, ``opacity_s`` (one film) and ``opacity_batch_s`` (per film in a
        batch); the opacity figures None without its file.
    """
    from covid.explain.loading import load_opacity
    from covid.model.lungs import LungSegmenter

    lungs = LungSegmenter.from_file(args.lung_model)
    lungs.warm_up()
    found = [lungs.segment(film) for film in films]
    lung_s = statistics.median(median_seconds(lambda f=f: lungs.segment(f), args.repeats,
                                              warmup=True) for f in films)
    opacity = load_opacity(args.opacity_model)
    if opacity is None:
        return {"lung_s": lung_s, "opacity_s": None, "opacity_batch_s": None}
    opacity.warm_up()
    one = statistics.median(median_seconds(lambda f=f, g=g: opacity.segment(f, g),
                                           args.repeats, warmup=True)
                            for f, g in zip(films, found, strict=True))
    batch = films[: args.batch], found[: args.batch]
    batch_s = median_seconds(lambda: opacity.segment_batch(*batch), args.repeats, warmup=True)
    return {"lung_s": lung_s, "opacity_s": one, "opacity_batch_s": batch_s / len(batch[0])}


def cold_start(model: Path) -> dict[str, float]:
    """Imports and loads the model in a fresh interpreter; returns its timings."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _COLD_LOAD, str(model)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures everything; returns the numbers (seconds, MiB)."""
    import numpy as np
    import tensorflow as tf

    from covid.explain.inference import Classifier
    from covid.inputs.decode import decode_image
    from covid.inputs.preprocess import fit_within, to_model_input
    from covid.model.network import load_model
    from covid.screening.pipeline import DISPLAY_MAX_SIDE

    cold = cold_start(args.model)

    paths = pick_images(args.data, args.n)
    contents = [p.read_bytes() for p in paths]
    model, meta = load_model(args.model)
    classifier = Classifier(model, meta)
    size = meta.input_size

    def prepare(data: bytes, name: str) -> np.ndarray:
        return to_model_input(decode_image(data, name).pixels, size)

    inputs = [prepare(c, p.name).astype(np.float32) for c, p in zip(contents, paths, strict=True)]
    forward = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)],
        reduce_retracing=True,
    )

    decode_t, forward_t, cam_t, campp_t = [], [], [], []

    def timed(fn: Callable[[], Any]) -> float:
        return median_seconds(fn, args.repeats, warmup=True)

    for data, path, x in zip(contents, paths, inputs, strict=True):
        batch = tf.constant(x[np.newaxis])
        decode_t.append(timed(lambda d=data, n=path.name: prepare(d, n)))
        forward_t.append(timed(lambda b=batch: forward(b).numpy()))
        cam_t.append(timed(lambda x=x: classifier.explain(x, method="gradcam")))
        campp_t.append(timed(lambda x=x: classifier.explain(x, method="gradcam++")))

    batch = np.stack(inputs[: args.batch])
    batch_t = timed(lambda: classifier.predict_batch(batch))
    shown = [fit_within(decode_image(c, p.name).pixels, DISPLAY_MAX_SIDE)
             for c, p in zip(contents, paths, strict=True)]
    load = os.getloadavg()[0]
    segmenters = segmenter_costs(args, shown)

    fwd = statistics.median(forward_t)
    cam = statistics.median(cam_t)
    return {
        "model": str(args.model),
        "model_sha256": meta.sha256[:12],
        "input_size": size,
        "images": len(paths),
        "repeats": args.repeats,
        "threads": {"cpu_count": os.cpu_count(), "tf_intra": tf.config.threading
                    .get_intra_op_parallelism_threads()},
        "cpu_model": cpu_model(),
        "load_average_1min": max(load, os.getloadavg()[0]),
        "decode_preprocess_s": statistics.median(decode_t),
        "forward_s": fwd,
        "predict_gradcam_s": cam,
        "predict_gradcam_pp_s": statistics.median(campp_t),
        "gradcam_over_forward": cam / fwd if fwd > 0 else float("nan"),
        "batch_size": len(batch),
        "batch_predict_s": batch_t,
        "images_per_s": len(batch) / batch_t if batch_t > 0 else float("nan"),
        "lung_segmenter_s": segmenters["lung_s"],
        "opacity_added_s": segmenters["opacity_s"],
        "opacity_added_batch_s": segmenters["opacity_batch_s"],
        "cold_import_s": cold["import_s"],
        "cold_load_s": cold["load_s"],
        "cold_first_predict_s": cold["first_predict_s"],
        "cold_first_gradcam_s": cold["first_explain_s"],
        "peak_rss_mib": peak_rss_mib(),
        "cold_subprocess_peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
    }


def report(r: dict[str, Any]) -> str:
    """Formats the measurements as a plain-text table."""
    ms = 1000.0
    lines = [
        f"model            {r['model']} (sha256 {r['model_sha256']}…, {r['input_size']} px)",
        f"images           {r['images']} real X-rays x {r['repeats']} repeats (medians)",
        f"CPU              {r['cpu_model']}, {r['threads']['cpu_count']} cores "
        f"(TF intra-op threads: {r['threads']['tf_intra'] or 'default'}); load average "
        f"{r['load_average_1min']:.1f} while measuring (other work slows every figure)",
        "",
        f"decode + preprocess          {r['decode_preprocess_s'] * ms:9.1f} ms / image",
        f"bare forward pass (compiled) {r['forward_s'] * ms:9.1f} ms / image",
        f"prediction + Grad-CAM        {r['predict_gradcam_s'] * ms:9.1f} ms / image",
        f"prediction + Grad-CAM++      {r['predict_gradcam_pp_s'] * ms:9.1f} ms / image",
        f"Grad-CAM / forward ratio     {r['gradcam_over_forward']:9.2f} x",
        f"batch scoring ({r['batch_size']:>2})          {r['batch_predict_s'] * ms:9.1f} ms "
        f"({r['images_per_s']:.1f} images/s)",
        f"lung segmenter               {r['lung_segmenter_s'] * ms:9.1f} ms / film",
        *_opacity_lines(r),
        "",
        f"cold: import TensorFlow      {r['cold_import_s']:9.2f} s",
        f"cold: load + verify model    {r['cold_load_s']:9.2f} s",
        f"cold: first prediction       {r['cold_first_predict_s']:9.2f} s",
        f"cold: first Grad-CAM         {r['cold_first_gradcam_s']:9.2f} s",
        "",
        f"peak memory (this process)   {r['peak_rss_mib']:9.0f} MiB",
        f"peak memory (cold subprocess){r['cold_subprocess_peak_rss_mib']:9.0f} MiB",
    ]
    return "\n".join(lines)


def _opacity_lines(r: dict[str, Any]) -> list[str]:
    """The opacity segmenter's added cost per film, or why it is missing."""
    if r["opacity_added_s"] is None:
        return ["opacity segmenter            not measured (no opacity model file)"]
    return [f"+ opacity segmenter          {r['opacity_added_s'] * 1000:9.1f} ms / film added "
            f"({r['opacity_added_batch_s'] * 1000:.1f} ms / film in a batch of "
            f"{r['batch_size']})"]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    run_and_print(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
