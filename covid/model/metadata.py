"""Model metadata and verified files, without Keras: what a model file claims and proves.

A JSON file beside each ``.keras`` file holds the class names, input size,
Grad-CAM layer, calibration temperature, operating threshold (on P(any finding)),
metrics and the file's SHA-256 (:class:`ModelMetadata`; every model's metadata
shares :class:`JsonMetadata`). Reading it and checking a file's SHA-256 needs no
TensorFlow, so that the Ray archive's driver, which only checks and never scores,
does not import it (about 5 s of one core); :mod:`covid.model.network` builds,
saves and loads the network itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from covid.model.classes import COVID

GRADCAM_LAYER = "conv5_block3_out"
"""The default Grad-CAM layer, ResNet-50's last block (stride 32); a model's metadata
names the layer it explains."""


class ModelFileError(ValueError):
    """A model or metadata file that is missing, altered or unreadable."""


class JsonMetadata:
    """A metadata dataclass as JSON text, both ways (mixed into each model's metadata).

    ``LEGACY`` holds what a file written before a field existed meant by leaving it
    out; a field missing from both the file and ``LEGACY`` with no default of its
    own makes the file malformed.
    """

    LEGACY: ClassVar[dict[str, Any]] = {}

    def to_json(self) -> str:
        """Serialises the metadata as indented JSON, in field order."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls: type[_Meta], text: str) -> _Meta:
        """Parses metadata JSON, ignoring unknown keys from newer versions.

        Raises:
            TypeError: A required field is missing (or the JSON is not an object).
        """
        raw = {**cls.LEGACY, **json.loads(text)}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


_Meta = TypeVar("_Meta", bound=JsonMetadata)


@dataclass(kw_only=True)
class ModelMetadata(JsonMetadata):
    """Everything a consumer of the model needs besides its weights.

    The class names, input size and input mode are the model's own facts, so
    they have no default: a model file states them (every file written since v1
    does; files from before the input mode existed were whole-film models, and
    ``LEGACY`` reads them as ``full``).

    Attributes:
        name: Human-readable model name.
        version: Model version string.
        class_names: Output classes, in order (names from :mod:`covid.model.classes`).
        positive_class: The class whose own probability has its AUC, reliability
            curve and default map (COVID-19); the operating point is not on it
            but on P(any finding), ``1 - P(Normal)`` (:mod:`covid.model.decision`).
        input_size: Square input side, in pixels.
        input_mode: How a film becomes the input: ``full`` (the whole film) or a
            lung-focused mode (``crop``, ``attenuate``, ``crop+attenuate``; see
            ``covid.inputs.preprocess.lung_focus``), which needs the lung segmenter.
        lung_model_sha256: SHA-256 of the lung segmenter the classifier was trained
            with (empty for ``full``).
        input_contrast: How the input's grey levels are standardised
            (``covid.inputs.preprocess.CONTRASTS``): ``none`` (v3 and earlier),
            ``equalise`` (histogram equalisation over the lung box),
            ``equalise-film`` (over the whole film), ``window-film`` (the film's
            percentiles stretched linearly) or ``standardise-film`` (its median
            and quartiles).
        gradcam_layer: Name of the layer Grad-CAM explains.
        map_grid: ``[rows, cols]`` of the Grad-CAM grid over the input at
            ``input_size`` (empty for models that predate the field).
        temperature: Calibration temperature dividing the logits.
        threshold: Operating point on the calibrated probability of any finding,
            ``1 - P(Normal)``: at or above it the film is admitted.
        sha256: SHA-256 of the ``.keras`` file.
        trained_on: Plain-words description of the training data.
        splits: Split sizes per class.
        metrics: Test-split metrics.
        recipe: The training recipe.
        extra: Further artefacts (e.g. out-of-distribution statistics).
    """

    LEGACY: ClassVar[dict[str, Any]] = {"input_mode": "full"}

    name: str = "COVID-19 chest X-ray ResNet-50"
    version: str = "0"
    class_names: list[str]
    positive_class: str = COVID
    input_size: int
    input_mode: str
    lung_model_sha256: str = ""
    input_contrast: str = "none"
    gradcam_layer: str = GRADCAM_LAYER
    map_grid: list[int] = field(default_factory=list)
    temperature: float = 1.0
    threshold: float = 0.5
    sha256: str = ""
    trained_on: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_index(self) -> int:
        """Index of the positive class in the model's outputs."""
        return self.class_names.index(self.positive_class)


def file_sha256(path: str | Path) -> str:
    """Returns a file's SHA-256 as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_path(model_path: str | Path) -> Path:
    """Returns the metadata JSON path beside a ``.keras`` file."""
    return Path(model_path).with_suffix(".json")


def write_metadata(metadata: JsonMetadata, model_path: str | Path) -> None:
    """Writes the metadata JSON beside a model file."""
    metadata_path(model_path).write_text(metadata.to_json())


def read_metadata(model_path: str | Path) -> ModelMetadata:
    """Reads the classifier's metadata JSON beside a model file.

    Raises:
        ModelFileError: The JSON is missing or malformed.
    """
    return read_metadata_as(ModelMetadata, model_path)


def read_metadata_as(kind: type[_Meta], model_path: str | Path) -> _Meta:
    """Reads the metadata JSON beside a model file as the given metadata class.

    Raises:
        ModelFileError: The JSON is missing or malformed.
    """
    meta_file = metadata_path(model_path)
    if not meta_file.is_file():
        raise ModelFileError(f"model metadata not found: {meta_file}")
    try:
        return kind.from_json(meta_file.read_text())
    except (json.JSONDecodeError, TypeError) as err:
        raise ModelFileError(f"model metadata is malformed: {meta_file} ({err})") from err


def check_sha256(path: str | Path, expected: str) -> None:
    """Refuses a model file whose SHA-256 is not the one its metadata records.

    Raises:
        ModelFileError: The file is missing, or its SHA-256 differs.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelFileError(
            f"model file {path} does not match its metadata: SHA-256 is {actual[:12]}…, "
            f"expected {expected[:12] or '(none)'}…"
        )


