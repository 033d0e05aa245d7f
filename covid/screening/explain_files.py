"""``python -m covid explain``: the map, the lungs and the overlay of each film, as PNG files.

For each film, named after the file without its extension (``name``, then
``name-2``, ``name-3``... when a name occurs again), it writes into ``--out``:

* ``<name>.cam.png``: the 8-bit Grad-CAM at the film's own resolution, brighter
  meaning more evidence for the explained class;
* ``<name>.lungs.png``: the segmented lung mask at the film's resolution, white inside;
* ``<name>.overlay.png``: the map over the film.

Without ``--target`` the predicted class is explained. A file that cannot be read
gets a message on stderr, and the run goes on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from covid.explain.gradcam import METHODS
from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH
from covid.model.network import DEFAULT_MODEL_PATH, ModelFileError
from covid.screening.pipeline import StudyResult, analyse, film_map
from covid.screening.predict import iter_files, read_file


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names: each file's stem, with ``-2``, ``-3``... for repeats.

    Args:
        paths: Input files, in order.

    Returns:
        One distinct name per file.
    """
    used: set[str] = set()
    names = []
    for path in paths:
        stem = path.stem or "film"
        name, n = stem, 1
        while name.lower() in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name.lower())
        names.append(name)
    return names


def film_outputs(result: StudyResult, cam: np.ndarray) -> dict[str, np.ndarray]:
    """The three images written for one film.

    Args:
        result: A scored study at the film's own resolution.
        cam: (H, W) float map in [0, 1] over the film.

    Returns:
        ``{"cam": (H, W) uint8, "lungs": (H, W) uint8, "overlay": (H, W, 3) uint8}``.
    """
    from covid.explain.overlay import overlay_heatmap

    lungs = result.lungs if result.lungs is not None else np.zeros(cam.shape, bool)
    return {
        "cam": np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8),
        "lungs": lungs.astype(np.uint8) * 255,
        "overlay": overlay_heatmap(result.pixels, cam),
    }


def explain_paths(
    paths: list[Path], out: Path, target: str | None, method: str, model_path: Path,
    lung_path: Path,
) -> Iterator[tuple[Path, str | None]]:
    """Explains every film and writes its three PNG files.

    Yields:
        ``(path, error)`` per file; ``error`` is None when its files were written.
    """
    from covid.screening.engine import load_models

    models = load_models(model_path, lung_path, warm_up=False)
    classifier = models.classifier
    names = classifier.metadata.class_names
    target_index = None if target is None else names.index(target)
    files = list(iter_files(paths))
    out.mkdir(parents=True, exist_ok=True)
    for path, name in zip(files, unique_stems(files), strict=True):
        content = read_file(path)
        if isinstance(content, str):
            yield path, content
            continue
        result = analyse([(path.name, content)], classifier, segmenter=models.segmenter,
                         max_side=None)[0]
        if result.error is not None:
            yield path, result.error
            continue
        cam = result.cam
        if target_index is not None or method != "gradcam":
            explained = classifier.explain(result.model_input.astype(np.float32),
                                           target=target_index, method=method)
            cam = film_map(result, explained)
        for kind, image in film_outputs(result, cam).items():
            Image.fromarray(image).save(out / f"{name}.{kind}.png")
        yield path, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``explain`` sub-command's arguments."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--target", choices=("COVID", "Normal"), default=None,
                        help="class to explain (default: the predicted class)")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--lung-model", type=Path, default=DEFAULT_LUNG_MODEL_PATH)


def run(args: argparse.Namespace) -> int:
    """Runs ``explain``; returns the exit status (0 once the run completed)."""
    try:
        for path, error in explain_paths(args.paths, args.out, args.target, args.method,
                                         args.model, args.lung_model):
            if error is not None:
                print(f"error: {error}", file=sys.stderr, flush=True)
            else:
                print(f"explained {path}", file=sys.stderr, flush=True)
    except ModelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
