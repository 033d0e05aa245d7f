"""Training the lung U-Net end to end on a tiny COVID-QU-Ex style folder, and its pieces."""

import json

import numpy as np
import pytest
from PIL import Image

from covid.model.lungs import LungSegmenter
from covid.training.train_lungs import FOLDERS, find_mask_dataset, parse_args, train
from covid.training.unet_training import AUGMENTATION, augment_pairs

PER_FOLDER = 20
"""Films per class folder: the split's 20 folds need 20 of a class."""


def _mask_dataset(root, seed=0):
    """Noisy films with two darker ellipses, and the ellipses as their lung masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64]
    for name in FOLDERS:
        (root / name / "images").mkdir(parents=True)
        (root / name / "lungs").mkdir()
        for i in range(PER_FOLDER):
            dy, dx = rng.integers(-6, 7, 2)
            mask = np.zeros((64, 64), bool)
            for centre in (20, 44):
                mask |= ((rows - 32 - dy) / 18) ** 2 + ((cols - centre - dx) / 9) ** 2 <= 1
            film = rng.normal(150, 30, (64, 64)) - 70 * mask
            Image.fromarray(np.clip(film, 0, 255).astype(np.uint8)).save(
                root / name / "images" / f"{name}-{i}.png")
            Image.fromarray((255 * mask).astype(np.uint8)).save(
                root / name / "lungs" / f"{name}-{i}.png")
    return root


def test_a_missing_mask_is_named(tmp_path):
    root = _mask_dataset(tmp_path / "quex")
    (root / "Normal" / "lungs" / "Normal-3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no lung mask for .*Normal-3"):
        find_mask_dataset(root)
    images, masks, folders = find_mask_dataset(_mask_dataset(tmp_path / "whole"))
    assert len(images) == len(masks) == 3 * PER_FOLDER
    assert [m.stem for m in masks] == [p.stem for p in images]
    assert sorted(set(folders.tolist())) == [0, 1, 2]


def test_augmentation_moves_film_and_mask_together():
    rng = np.random.default_rng(0)
    x = np.zeros((4, 32, 32, 1), np.uint8)
    y = np.zeros((4, 32, 32, 1), np.uint8)
    x[:, 10:20, 8:14] = 200
    y[:, 10:20, 8:14] = 1
    out_x, out_y = augment_pairs(x, y, rng)
    assert out_x.dtype == out_y.dtype == np.float32
    assert set(np.unique(out_y)) <= {0.0, 1.0}  # nearest-neighbour: still a mask
    for film, mask in zip(out_x[..., 0], out_y[..., 0], strict=True):
        assert film[mask == 1].mean() > film[mask == 0].mean() + 50  # the bright square moved too


def test_a_tiny_run_trains_saves_ships_and_resumes(tmp_path):
    data = _mask_dataset(tmp_path / "quex")
    run, ship = tmp_path / "run", tmp_path / "shipped" / "lungs.keras"
    common = ["--data", str(data), "--run", str(run), "--size", "32", "--batch-size", "4",
              "--cache-dir", str(tmp_path / "cache")]
    exported = train(parse_args([*common, "--epochs", "1", "--ship", str(ship)]))

    segmenter = LungSegmenter.from_file(ship)  # SHA-checked, loads as served
    meta = segmenter.metadata
    assert exported == run / "lung_unet.keras" and exported.is_file()
    assert meta.input_size == 32 and sum(meta.splits.values()) == 3 * PER_FOLDER
    assert meta.recipe["augmentation"] == AUGMENTATION and meta.recipe["epochs"] == 1
    assert 0.0 <= meta.metrics["test_dice"] <= 1.0
    assert segmenter.segment(np.full((64, 64), 120, np.uint8)).mask.shape == (64, 64)

    train(parse_args([*common, "--epochs", "2", "--resume"]))
    state = json.loads((run / "state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == [1, 2]  # continued, not restarted


def test_the_data_folder_defaults_to_the_shared_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("COVID_DATA_DIR", str(tmp_path))
    assert parse_args([]).data == tmp_path / "covid-qu-ex-masks"
