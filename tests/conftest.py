"""Shared fixtures: a tiny 3-class CNN with the real model's interface, its metadata and file."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import keras
import numpy as np
import pytest

from covid.model.classes import CLASS_NAMES
from covid.model.metadata import ModelMetadata
from covid.model.network import LOGITS_LAYER, save_with_metadata


def _expected_seconds(item: pytest.Item) -> float:
    """A test's rough length alone: ``slow(seconds=N)`` says it, a bare ``slow`` is 30."""
    slow = item.get_closest_marker("slow")
    return 0.0 if slow is None else float(slow.kwargs.get("seconds", 30))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts the slowest tests (and so their files) first.

    Spread over workers (``-n``), the longest file then starts at once instead of
    running alone at the end (the trainer's end-to-end test takes about five minutes).
    """
    items.sort(key=_expected_seconds, reverse=True)


TINY_SIZE = 32
TINY_LAYER = "last_conv"


def build_tiny_cnn(size: int = TINY_SIZE, seed: int = 0,
                   n_classes: int = len(CLASS_NAMES)) -> keras.Model:
    """A small CNN with the real model's interface.

    (B, size, size, 1) float32 intensities in [0, 255] -> (B, n_classes) softmax,
    with layers named ``last_conv`` (4-D), ``avg_pool``, ``logits`` and ``probs``.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="xray")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=TINY_LAYER)(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(n_classes, name=LOGITS_LAYER)(x)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    return keras.Model(inputs, probs, name="tiny_cnn")


def tiny_metadata_for(temperature: float = 1.5, threshold: float = 0.5) -> ModelMetadata:
    """Metadata matching :func:`build_tiny_cnn`."""
    return ModelMetadata(
        name="tiny test CNN",
        version="test",
        class_names=list(CLASS_NAMES),
        input_size=TINY_SIZE,
        input_mode="full",
        gradcam_layer=TINY_LAYER,
        temperature=temperature,
        threshold=threshold,
        trained_on="nothing (random weights, for tests)",
    )


@pytest.fixture
def tiny_cnn() -> keras.Model:
    """A fresh, seeded, untrained tiny CNN (32 x 32 x 1 input, the three classes)."""
    return build_tiny_cnn()


@pytest.fixture
def tiny_metadata() -> ModelMetadata:
    """Metadata for ``tiny_cnn``: input 32, layer ``last_conv``, T = 1.5, threshold 0.5."""
    return tiny_metadata_for()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A saved tiny model (``.keras`` + metadata JSON with its SHA-256)."""
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    save_with_metadata(build_tiny_cnn(), tiny_metadata_for(), path)
    return path


@pytest.fixture(scope="session")
def shipped_models():
    """The shipped models as the page and CLI load them (segmenter required and SHA-checked
    if the classifier is lung-focused), loaded once for the whole run."""
    from covid.model.network import DEFAULT_MODEL_PATH
    from covid.screening.engine import load_models

    return load_models(DEFAULT_MODEL_PATH, warm_up=False)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The COVID-19 Radiography Database in the data folder (``COVID_DATA_DIR``), or skip."""
    from covid.training.catalogue import data_dir

    path = data_dir() / "covid19-radiography"
    if not path.is_dir():
        pytest.skip(f"dataset not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_cnn_factory():
    """``build_tiny_cnn(size=32, seed=0, n_classes=3)``, for tests needing several models."""
    return build_tiny_cnn


@pytest.fixture(scope="session")
def tiny_lung_file(tmp_path_factory) -> Path:
    """A saved tiny, untrained lung U-Net (input 32; ``.keras`` + metadata JSON)."""
    from covid.model.lungs import LungModelMetadata, build_unet

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("lungs") / "tiny_unet.keras"
    save_with_metadata(build_unet(None, filters=(4, 8)), LungModelMetadata(input_size=32), path)
    return path


def planted_lungs(shape: tuple[int, int]) -> np.ndarray:
    """Two upright elliptical lung fields, one each side of the midline (a plausible pair)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    h, w = shape
    left = ((rows - 0.45 * h) / (0.3 * h)) ** 2 + ((cols - 0.3 * w) / (0.12 * w)) ** 2 <= 1
    right = ((rows - 0.45 * h) / (0.3 * h)) ** 2 + ((cols - 0.7 * w) / (0.12 * w)) ** 2 <= 1
    return left | right


class PlantedLungs:
    """What the patched segmenter returns: ``mask(shape)``; change it with ``mask_for``."""

    def __init__(self) -> None:
        self.mask_for = planted_lungs

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        return self.mask_for(shape)


@pytest.fixture
def plant_lungs(monkeypatch) -> PlantedLungs:
    """Makes every LungSegmenter return planted masks (default: :func:`planted_lungs`)."""
    from covid.inputs.preprocess import lung_box
    from covid.model.lungs import LungSegmentation, LungSegmenter, lung_field_problem

    planted = PlantedLungs()

    def segment_batch(self, films):
        masks = [planted.mask(film.shape) for film in films]
        return [LungSegmentation(m, lung_box(m), lung_field_problem(m)) for m in masks]

    monkeypatch.setattr(LungSegmenter, "segment_batch", segment_batch)
    return planted
