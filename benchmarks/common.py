"""Helpers shared by the benchmark scripts: picking real X-rays and timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covid.training.data import find_dataset


def pick_images(data: Path, n: int) -> list[Path]:
    """The first ``n`` images, alternating between the classes, each sorted by name.

    Raises:
        SystemExit: The dataset folder is missing or holds no images.
    """
    try:
        dataset = find_dataset(data)
    except FileNotFoundError as err:
        raise SystemExit(f"no X-rays found under {data} ({err})") from err
    per_class = [
        [p for p, label in zip(dataset.paths, dataset.labels, strict=True) if label == c]
        for c in sorted(set(dataset.labels.tolist()))
    ]
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
