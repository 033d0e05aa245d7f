"""The screening models, loaded together: classifier, lung and opacity segmenters, OOD gate.

The command line, the reports and the page all load the same things, once, and
warm them up before the first film arrives. The opacity segmenter is optional:
without its file the rest works and no film gets opacity figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH
from covid.model.network import DEFAULT_MODEL_PATH, ModelFileError, ModelMetadata
from covid.model.opacity import DEFAULT_OPACITY_MODEL_PATH

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


def wants_segmenter(meta: ModelMetadata, lung_path: str | Path) -> bool:
    """Whether to load the segmenter: it is there, or the classifier cannot work without it.

    A whole-film classifier runs without a segmenter (then no lung outline, no
    share of evidence and no lung-field gate); a lung-focused one needs it, so
    loading it reports the missing file.
    """
    return Path(lung_path).is_file() or meta.input_mode != "full"


def check_segmenter(
    meta: ModelMetadata, segmenter: LungSegmenter, model_path: str | Path, lung_path: str | Path
) -> None:
    """Refuses a segmenter other than the one the classifier was trained with.

    Raises:
        ModelFileError: The classifier names another segmenter's SHA-256.
    """
    wanted = meta.lung_model_sha256
    if wanted and segmenter.metadata.sha256 != wanted:
        raise ModelFileError(
            f"{model_path} was trained with another lung segmenter than {lung_path}"
        )


def load_opacity(path: str | Path = DEFAULT_OPACITY_MODEL_PATH) -> OpacitySegmenter | None:
    """The verified opacity segmenter, or None when its file is not there.

    Raises:
        ModelFileError: The file is there but its metadata is missing, or its
            SHA-256 differs from the one its metadata records.
    """
    from covid.model.opacity import OpacitySegmenter

    return OpacitySegmenter.from_file(path) if Path(path).is_file() else None


def load_models(
    model_path: str | Path = DEFAULT_MODEL_PATH,
    lung_path: str | Path = DEFAULT_LUNG_MODEL_PATH,
    warm_up: bool = True,
    opacity_path: str | Path = DEFAULT_OPACITY_MODEL_PATH,
) -> ScreeningModels:
    """Loads and verifies the classifier, the segmenters and the OOD statistics.

    Args:
        model_path: The classifier's ``.keras`` file.
        lung_path: The lung segmenter's ``.keras`` file.
        warm_up: Trace every compiled graph now, so that no request pays for it.
        opacity_path: The opacity segmenter's ``.keras`` file (optional: when it
            is missing, or no lung segmenter runs, no film gets opacity figures).

    Returns:
        The loaded models.

    Raises:
        ModelFileError: A file is missing, altered or unreadable, or a
            lung-focused classifier has no segmenter, or not the one it was
            trained with; or the opacity segmenter's file is there but altered.
    """
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.screening.ood import load_detector

    classifier = Classifier.from_file(model_path)
    meta = classifier.metadata
    segmenter = None
    if wants_segmenter(meta, lung_path):
        segmenter = LungSegmenter.from_file(lung_path)
        check_segmenter(meta, segmenter, model_path, lung_path)
    opacity = None if segmenter is None else load_opacity(opacity_path)
    if warm_up:
        classifier.warm_up()
        for unet in (segmenter, opacity):
            if unet is not None:
                unet.warm_up()
    return ScreeningModels(classifier, segmenter, load_detector(model_path), opacity)


def missing_model_message(err: ModelFileError) -> str:
    """What a command prints when its model cannot be loaded: the reason and the way out."""
    return (f"error: {err}. Train and evaluate a model first "
            "(python -m covid.train, then python -m covid.evaluate).")
