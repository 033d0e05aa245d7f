"""``python -m covid explain``: the map, the lungs, the overlay and the opacities, as PNG files.

For each film, named after the file without its extension (``name``, then
``name-2``, ``name-3``... when a name occurs again), it writes into ``--out``:

* ``<name>.cam.png``: the 8-bit Grad-CAM at the film's own resolution, brighter
  meaning more evidence for the explained class;
* ``<name>.lungs.png``: the segmented lung mask at the film's resolution, white inside;
* ``<name>.overlay.png``: the map over the film;
* ``<name>.opacity.png``: the opacity segmenter's mask at the film's resolution,
  white inside the opacities (a separate segmentation, not the classifier's
  evidence; not written without the opacity segmenter or without lungs).

Without ``--target`` the predicted class is explained; ``--target`` takes any of
the model's classes (its metadata's). A film refused as not a chest X-ray gets no
files, only a line on stderr saying why; a file that cannot be read gets a message
on stderr, and the run goes on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from covid.explain.gradcam import METHODS
from covid.flags import add_model_flags, add_out
from covid.model.classes import CLASS_NAMES, index_of
from covid.model.metadata import ModelFileError
from covid.screening.engine import missing_model_message
from covid.screening.pipeline import StudyResult, analyse, film_map
from covid.screening.scoring import iter_files, read_file


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
    """The images written for one film.

    Args:
        result: A scored (not refused) study at the film's own resolution.
        cam: (H, W) float map in [0, 1] over the film.

    Returns:
        ``{"cam": (H, W) uint8, "lungs": (H, W) uint8, "overlay": (H, W, 3) uint8}``,
        and ``"opacity": (H, W) uint8`` (255 inside the opacities, 0 elsewhere)
        where the opacity segmenter outlined the film.
    """
    from covid.explain.overlay import overlay_heatmap

    lungs = result.lungs if result.lungs is not None else np.zeros(cam.shape, bool)
    images = {
        "cam": np.clip(np.rint(cam * 255), 0, 255).astype(np.uint8),
        "lungs": lungs.astype(np.uint8) * 255,
        "overlay": overlay_heatmap(result.pixels, cam),
    }
    if result.opacity is not None:
        images["opacity"] = result.opacity.mask.astype(np.uint8) * 255
    return images


def target_index(class_names: list[str], target: str | None) -> int | None:
    """The output index of the class ``--target`` names (any case), or None for the label's.

    Raises:
        KeyError: The model has no such class (the message lists those it has).
    """
    if target is None:
        return None
    same = [name for name in class_names if name.lower() == target.lower()]
    return index_of(class_names, same[0] if same else target)


def explain_paths(
    paths: list[Path], out: Path, target: str | None, method: str,
    model_path: Path | None = None, lung_path: Path | None = None,
    opacity_path: Path | None = None,
) -> Iterator[tuple[Path, str | None]]:
    """Explains every film and writes its PNG files (see :func:`film_outputs`).

    Args:
        paths: Files and folders.
        out: The folder written into.
        target: The class to explain (None: each film's label).
        method: The map's method (:data:`covid.explain.gradcam.METHODS`).
        model_path: The classifier's ``.keras`` file (None: the settings' one).
        lung_path: The lung segmenter's ``.keras`` file (None: the settings' one).
        opacity_path: The opacity segmenter's (None: the settings' one; optional).

    Yields:
        ``(path, error)`` per file; ``error`` is None when its files were written,
        else why not (unreadable, or refused as not a chest X-ray).

    Raises:
        ModelFileError: A model cannot be loaded.
        KeyError: The model has no class ``target``.
    """
    from covid.screening.engine import load_models

    models = load_models(model_path, lung_path, warm_up=False, opacity_path=opacity_path)
    classifier = models.classifier
    chosen = target_index(classifier.metadata.class_names, target)
    files = list(iter_files(paths))
    out.mkdir(parents=True, exist_ok=True)
    for path, name in zip(files, unique_stems(files), strict=True):
        content = read_file(path)
        if isinstance(content, str):
            yield path, content
            continue
        result = analyse([(path.name, content)], classifier, ood=models.ood,
                         segmenter=models.segmenter, max_side=None, opacity=models.opacity)[0]
        if result.error is not None or result.refused:
            yield path, result.error or f"{path.name}: not explained. {result.flag_note}"
            continue
        cam = result.cam
        if chosen is not None or method != "gradcam":
            explained = classifier.explain(result.model_input.astype(np.float32),
                                           target=chosen, method=method)
            cam = film_map(result, explained)
        for kind, image in film_outputs(result, cam).items():
            Image.fromarray(image).save(out / f"{name}.{kind}.png")
        yield path, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``explain`` sub-command's arguments."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files or folders (searched recursively)")
    add_out(parser, "the folder the PNG files are written into", required=True)
    parser.add_argument("--target", metavar="CLASS", default=None,
                        help="class to explain, one of the model's classes (the shipped "
                             f"model's: {', '.join(CLASS_NAMES)}; default: the predicted "
                             "class)")
    parser.add_argument("--method", choices=METHODS, default="gradcam")
    add_model_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Runs ``explain``; returns the exit status (0 once the run completed)."""
    try:
        for path, error in explain_paths(args.paths, args.out, args.target, args.method,
                                         args.model, args.lung_model, args.opacity_model):
            if error is not None:
                print(f"error: {error}", file=sys.stderr, flush=True)
            else:
                print(f"explained {path}", file=sys.stderr, flush=True)
    except ModelFileError as err:
        print(missing_model_message(err), file=sys.stderr)
        return 1
    except KeyError as err:  # --target names a class the model lacks
        print(f"error: --target: {err.args[0]}", file=sys.stderr)
        return 2
    return 0
