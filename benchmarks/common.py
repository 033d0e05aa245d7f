"""Helpers shared by the benchmark scripts: real X-rays, the model, timing and printing."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covid.settings import settings
from covid.training.catalogue import IMAGE_SUFFIXES, data_dir

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = data_dir() / "covid19-radiography"
"""The COVID-19 Radiography Database in the data folder (``$COVID_DATA_DIR``)."""


def model_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options of every model benchmark: ``--model``, ``--data``, ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, default=settings().model_path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def run_and_print(
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parses the command line, checks ``args.model`` is there, measures, then prints.

    Prints one JSON object with ``--json``, else ``report``'s text.

    Raises:
        SystemExit: The model file is missing (saying how to make it).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
    args = parse_args(argv)
    if not args.model.is_file():
        raise SystemExit(
            f"model not found: {args.model} (make it: python -m covid.train, then "
            "python -m covid.evaluate --ship models/covid_resnet50.keras, then "
            "python -m covid.fit_ood --model models/covid_resnet50.keras)"
        )
    results = run(args)
    print(json.dumps(results, indent=2) if args.json else report(results))
    return args, results


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` gives it (from ``/proc/cpuinfo``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def pick_images(data: Path, n: int) -> list[Path]:
    """The first ``n`` images, alternating between the class folders, each sorted by name.

    Raises:
        SystemExit: The dataset folder is missing or holds no images.
    """
    folders = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    per_class = [sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                 for folder in folders]
    per_class = [files for files in per_class if files]
    if not per_class:
        raise SystemExit(f"no X-rays found under {data} (one folder of images per class)")
    picked: list[Path] = []
    for i in range(max(len(files) for files in per_class)):
        picked += [files[i] for files in per_class if i < len(files)]
    return picked[:n]


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: bool = False) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, in seconds."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
