"""Lung segmenter latency per film: ``python -m benchmarks.lungs``.

Times :meth:`covid.model.lungs.LungSegmenter.segment` (network pass, threshold,
cleaning and the mask at the film's resolution) on real X-rays, at their own
224 px and upscaled to 1024 px, and prints the medians. It prints numbers; it is
not a test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import DEFAULT_DATA, pick_images
from covid.inputs.decode import read_image
from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH, LungSegmenter


def _median_ms(fn, films: list[np.ndarray], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        for film in films:
            tick = time.perf_counter()
            fn(film)
            times.append(time.perf_counter() - tick)
    return 1000 * float(np.median(times))


def main() -> None:
    """Prints the segmenter's median latency per film."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_LUNG_MODEL_PATH))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    segmenter = LungSegmenter.from_file(args.model)
    tick = time.perf_counter()
    segmenter.warm_up()
    print(f"warm-up (tracing)            {1000 * (time.perf_counter() - tick):8.1f} ms")
    films = [read_image(p).pixels for p in pick_images(Path(args.data), args.images)]
    big = [np.asarray(Image.fromarray(f).resize((1024, 1024))) for f in films]
    small = _median_ms(segmenter.segment, films, args.repeats)
    large = _median_ms(segmenter.segment, big, args.repeats)
    print(f"segment, 224 px film          {small:8.1f} ms")
    print(f"segment, 1024 px film         {large:8.1f} ms")
    batch = _median_ms(lambda _: segmenter.segment_batch(films), films[:1], args.repeats)
    print(f"segment_batch of {len(films)}, per film  {batch / len(films):8.1f} ms")


if __name__ == "__main__":
    main()
