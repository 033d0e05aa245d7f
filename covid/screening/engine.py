"""The screening models, loaded together: classifier, lung and opacity segmenters, OOD gate.

The command line, the reports and the page all load the same things, once, and
warm them up before the first film arrives. The models themselves are loaded and
verified by the one loader (:func:`covid.explain.loading.load_verified`); this
module adds the out-of-distribution gate the classifier ships with. The opacity
segmenter is optional: without its file the rest works and no film gets opacity
figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from covid.model.metadata import ModelFileError
from covid.settings import settings

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.ood import OODGate


@dataclass(frozen=True)
class ScreeningModels:
    """Everything the screening pipeline needs besides the files.

    Attributes:
        classifier: The classifier.
        segmenter: The lung segmenter (None only when a whole-film classifier
            runs without one).
        ood: The out-of-distribution gate (:func:`covid.screening.ood.load_detector`
            builds the one a model ships with).
        opacity: The opacity segmenter, or None when its file is missing or no
            lung segmenter runs (it outlines opacities inside the lungs found).
    """

    classifier: Classifier
    segmenter: LungSegmenter | None
    ood: OODGate
    opacity: OpacitySegmenter | None = None


def load_models(
    model_path: str | Path | None = None,
    lung_path: str | Path | None = None,
    warm_up: bool = True,
    opacity_path: str | Path | None = None,
    batch_size: int = 32,
) -> ScreeningModels:
    """Loads and verifies the classifier, the segmenters and the OOD statistics.

    Args:
        model_path: The classifier's ``.keras`` file (None: the settings' one).
        lung_path: The lung segmenter's ``.keras`` file (None: the settings' one).
        warm_up: Trace every compiled graph now, so that no request pays for it.
        opacity_path: The opacity segmenter's ``.keras`` file (None: the
            settings' one; optional: when it is missing, or no lung segmenter
            runs, no film gets opacity figures).
        batch_size: The classifier's images per forward pass.

    Returns:
        The loaded models.

    Raises:
        ModelFileError: A file is missing, altered or unreadable, or a
            lung-focused classifier has no segmenter, or not the one it was
            trained with; or the opacity segmenter's file is there but altered.
    """
    from covid.explain.loading import load_verified
    from covid.screening.ood import load_detector

    paths = settings()
    model_path = paths.model_path if model_path is None else model_path
    opacity_path = paths.opacity_model_path if opacity_path is None else opacity_path
    loaded = load_verified(model_path, lung_path, opacity_path, batch_size=batch_size)
    if warm_up:
        loaded.classifier.warm_up()
        for unet in (loaded.segmenter, loaded.opacity):
            if unet is not None:
                unet.warm_up()
    return ScreeningModels(loaded.classifier, loaded.segmenter, load_detector(model_path),
                           loaded.opacity)


def missing_model_message(err: ModelFileError) -> str:
    """What a command prints when its model cannot be loaded: the reason and the way out."""
    return (f"error: {err}. Train and evaluate a model first "
            "(python -m covid.train, then python -m covid.evaluate).")
