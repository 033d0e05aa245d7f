"""Batch-scoring throughput on real chest X-rays, with and without heatmaps.

Usage::

    python -m benchmarks.throughput --model models/covid_resnet50.keras --n 64 --batch 16

Scores ``--n`` real X-rays from the data folder's ``covid19-radiography/`` (both
classes, alternating, in a fixed order) and prints the throughput, in images per
second (the median of ``--repeats`` timed runs, after a warm-up that traces the
graphs), of:

* ``model.predict``: Keras' ``predict`` on the already preprocessed
  (N, S, S, 1) batch, the reference (no decoding, no calibration);
* ``analyse``, heatmaps off: :func:`covid.screening.pipeline.analyse` from the files'
  bytes (decode, preprocess, batched forward pass, calibration, labels, triage,
  and the out-of-distribution check with ``--ood``), what the page does for a
  batch before a study is opened;
* ``analyse``, heatmaps on: the same plus
  :meth:`covid.explain.inference.Classifier.explain` for every image (the Grad-CAM map
  of its label, as the page draws it when a study is opened).

Each is also given as a ratio to ``model.predict``; the goal is heatmaps off at
0.9x or better (``--check`` exits with status 1 when it is missed). Nothing is
written anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from benchmarks.common import median_seconds, model_parser, pick_images, run_and_print

GOAL = 0.9
"""Heatmaps-off throughput the pipeline should keep, as a fraction of ``model.predict``'s."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = model_parser(__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="images (alternating classes)")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measure")
    parser.add_argument("--ood", action="store_true",
                        help="include the model's out-of-distribution check in analyse")
    parser.add_argument("--check", action="store_true",
                        help=f"exit with status 1 when heatmaps off is below {GOAL}x predict")
    args = parser.parse_args(argv)
    for name in ("n", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures the three throughputs; returns them with the set-up."""
    import numpy as np
    import tensorflow as tf

    from covid.explain.inference import Classifier
    from covid.screening.pipeline import analyse

    paths = pick_images(args.data, args.n)
    files = [(p.name, p.read_bytes()) for p in paths]
    classifier = Classifier.from_file(args.model, batch_size=args.batch)
    meta, model = classifier.metadata, classifier.model
    ood = None
    if args.ood:
        from covid.screening.ood import load_detector

        ood = load_detector(args.model)

    def score() -> list:
        return analyse(files, classifier, ood=ood, batch_size=args.batch)

    def score_and_explain() -> None:
        for result in score():
            if result.error is None:
                target = meta.class_names.index(result.label)
                classifier.explain(result.model_input.astype(np.float32), target=target)

    results = score()  # warm-up: traces the forward pass
    failed = [r.name for r in results if r.error is not None]
    if failed:
        raise SystemExit(f"unreadable X-rays: {', '.join(failed)}")
    x = np.stack([r.model_input for r in results]).astype(np.float32)
    model.predict(x[: args.batch], batch_size=args.batch, verbose=0)  # warm-up
    first = results[0]
    classifier.explain(first.model_input.astype(np.float32),
                       target=meta.class_names.index(first.label))  # warm-up: traces Grad-CAM

    predict_s = median_seconds(
        lambda: model.predict(x, batch_size=args.batch, verbose=0), args.repeats
    )
    off_s = median_seconds(score, args.repeats)
    on_s = median_seconds(score_and_explain, args.repeats)
    n = len(files)
    return {
        "model": str(args.model),
        "model_sha256": meta.sha256[:12],
        "input_size": meta.input_size,
        "images": n,
        "covid_images": sum(p.parent.name.lower() == "covid" for p in paths),
        "batch_size": args.batch,
        "repeats": args.repeats,
        "ood": ood is not None,
        "devices": [d.device_type for d in tf.config.list_logical_devices()],
        "cpu_count": os.cpu_count(),
        "predict_img_s": n / predict_s,
        "analyse_img_s": n / off_s,
        "analyse_gradcam_img_s": n / on_s,
        "analyse_over_predict": predict_s / off_s,
        "gradcam_over_predict": predict_s / on_s,
        "goal": GOAL,
        "goal_met": predict_s / off_s >= GOAL,
    }


def report(r: dict[str, Any]) -> str:
    """Formats the measurements as a plain-text table."""
    verdict = "met" if r["goal_met"] else "NOT met"
    gpu = "GPU" if "GPU" in r["devices"] else "CPU only"
    lines = [
        f"model    {r['model']} (sha256 {r['model_sha256']}…, {r['input_size']} px)",
        f"images   {r['images']} real X-rays ({r['covid_images']} COVID), batch "
        f"{r['batch_size']}, median of {r['repeats']} run(s)"
        + (", with the out-of-distribution check" if r["ood"] else ""),
        f"device   {gpu}, {r['cpu_count']} CPU cores",
        "",
        f"{'':40}{'img/s':>9}{'x predict':>12}",
        f"{'model.predict (preprocessed batch)':40}{r['predict_img_s']:9.1f}{1.0:12.2f}",
        f"{'analyse, heatmaps off (from bytes)':40}{r['analyse_img_s']:9.1f}"
        f"{r['analyse_over_predict']:12.2f}   goal >= {r['goal']:.2f}x: {verdict}",
        f"{'analyse + Grad-CAM per image':40}{r['analyse_gradcam_img_s']:9.1f}"
        f"{r['gradcam_over_predict']:12.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args, results = run_and_print(argv, parse_args, run, report)
    return 1 if args.check and not results["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
