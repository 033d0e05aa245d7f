"""The one loader of the classifier and its segmenters, for every stage that runs them.

Serving (:func:`covid.screening.engine.load_models`), evaluation
(:func:`covid.evaluation.scoring.load_scorer`), the OOD fit
(:mod:`covid.evaluation.ood_fit`) and the archive's actors all load through
:func:`load_verified`, so that each of them refuses the same things: a file whose
SHA-256 is not the one its metadata records, a lung-focused classifier without a
lung segmenter, and a lung segmenter other than the one the classifier was
trained with (its inputs would be cropped to other lungs than it learnt on).

The paths default to :func:`covid.settings.settings`'s, so the shipped models are
found from any working directory and the environment variables are honoured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from covid.model.metadata import ModelFileError, ModelMetadata
from covid.settings import settings

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import OpacitySegmenter


class UnknownLayerError(ValueError):
    """A Grad-CAM layer asked for that the classifier does not have."""


@dataclass(frozen=True)
class VerifiedModels:
    """The classifier and the segmenters that run beside it, each SHA-256 verified.

    Attributes:
        classifier: The classifier.
        segmenter: The lung segmenter the classifier was trained with (None only
            when a whole-film classifier runs without one).
        opacity: The opacity segmenter, or None (not asked for, its file is
            missing, or no lung segmenter runs: it outlines inside the lungs found).
    """

    classifier: Classifier
    segmenter: LungSegmenter | None
    opacity: OpacitySegmenter | None = None


def wants_segmenter(meta: ModelMetadata, lung_path: str | Path) -> bool:
    """Whether to load the lung segmenter: it is there, or the classifier cannot work without it.

    A whole-film classifier runs without a segmenter (then no lung outline, no
    share of evidence and no lung-field gate); a lung-focused one needs it, so
    loading it reports the missing file.
    """
    return Path(lung_path).is_file() or meta.input_mode != "full"


def check_segmenter(
    meta: ModelMetadata, segmenter: LungSegmenter, model_path: str | Path, lung_path: str | Path
) -> None:
    """Refuses a lung segmenter other than the one the classifier was trained with.

    A classifier whose metadata names no segmenter (a whole-film model from
    before the lungs were recorded) accepts any.

    Raises:
        ModelFileError: The classifier names another segmenter's SHA-256.
    """
    wanted = meta.lung_model_sha256
    if wanted and segmenter.metadata.sha256 != wanted:
        raise ModelFileError(
            f"{model_path} was trained with another lung segmenter than {lung_path} "
            f"(SHA-256 {segmenter.metadata.sha256[:12]}…, expected {wanted[:12]}…)"
        )


def load_opacity(path: str | Path | None = None) -> OpacitySegmenter | None:
    """The verified opacity segmenter, or None when its file is not there.

    Args:
        path: Its ``.keras`` file (None: the settings' one).

    Raises:
        ModelFileError: The file is there but its metadata is missing, or its
            SHA-256 differs from the one its metadata records.
    """
    from covid.model.opacity import OpacitySegmenter

    path = settings().opacity_model_path if path is None else Path(path)
    return OpacitySegmenter.from_file(path) if path.is_file() else None


def load_verified(
    model_path: str | Path | None = None,
    lung_path: str | Path | None = None,
    opacity_path: str | Path | None = None,
    *,
    lungs_required: bool = False,
    batch_size: int = 32,
    gradcam_layer: str | None = None,
) -> VerifiedModels:
    """Loads and verifies the classifier, its lung segmenter and (if asked) the opacity one.

    Args:
        model_path: The classifier's ``.keras`` file (None: the settings' one).
        lung_path: The lung segmenter's ``.keras`` file (None: the settings' one).
        opacity_path: The opacity segmenter's ``.keras`` file, optional at run
            time (None: no opacity segmenter is loaded; evaluation needs none).
        lungs_required: Load the lung segmenter even for a whole-film classifier
            (evaluation measures every map against the lungs); else it is loaded
            when its file is there or the classifier is lung-focused.
        batch_size: The classifier's images per forward pass.
        gradcam_layer: A Grad-CAM layer to use instead of the metadata's, in
            memory only (the metadata file is not written).

    Returns:
        The loaded models.

    Raises:
        ModelFileError: A file is missing, altered or unreadable; a lung-focused
            classifier (or ``lungs_required``) finds no segmenter, or not the one
            the classifier was trained with; or the opacity file is there but altered.
        UnknownLayerError: The classifier has no layer named ``gradcam_layer``.
    """
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.model.network import load_model

    paths = settings()
    model_path = paths.model_path if model_path is None else Path(model_path)
    lung_path = paths.lung_model_path if lung_path is None else Path(lung_path)
    model, meta = load_model(model_path)
    if gradcam_layer is not None:
        if gradcam_layer not in {layer.name for layer in model.layers}:
            raise UnknownLayerError(f"{model_path} has no layer named {gradcam_layer!r}")
        meta.gradcam_layer = gradcam_layer
    classifier = Classifier(model, meta, batch_size=batch_size)
    segmenter = None
    if lungs_required or wants_segmenter(meta, lung_path):
        segmenter = LungSegmenter.from_file(lung_path)
        check_segmenter(meta, segmenter, model_path, lung_path)
    opacity = None
    if segmenter is not None and opacity_path is not None:
        opacity = load_opacity(opacity_path)
    return VerifiedModels(classifier, segmenter, opacity)
