"""Training the opacity U-Net end to end on a tiny COVID-QU-Ex style folder, and its pieces."""

import json

import numpy as np
import pytest
from PIL import Image

from covid.model.opacity import OpacitySegmentation, OpacitySegmenter, grade
from covid.training.train_opacity import (
    EXCLUDED_FOLDER,
    SETTINGS,
    OpacityData,
    choose_setting,
    find_opacity_dataset,
    opacity_metrics,
    opacity_pair,
    parse_args,
    train,
    val_settings,
)

PER_FOLDER = 20
"""Films per class folder: the split's 20 folds need 20 of a class."""


def _lungs(rows, cols, dy, dx) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    for centre in (20, 44):
        mask |= ((rows - 32 - dy) / 18) ** 2 + ((cols - centre - dx) / 9) ** 2 <= 1
    return mask


def _save(root, folder, name, film, lungs, infection):
    for kind, image in (("images", film), ("lungs", 255 * lungs), ("infection", 255 * infection)):
        (root / folder / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(root / folder / kind / f"{name}.png")


def _mask_dataset(root, seed=0):
    """Noisy films with two darker lungs; COVID films have a bright opacity in the lower
    image-left lung, outlined by their infection mask. One extra normal film has an empty
    lung mask, and the Non-COVID folder holds unreadable files that must never be opened."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64]
    for folder in ("COVID-19", "Normal"):
        for i in range(PER_FOLDER):
            dy, dx = rng.integers(-5, 6, 2)
            lungs = _lungs(rows, cols, dy, dx)
            infection = np.zeros_like(lungs)
            if folder == "COVID-19":
                infection = lungs & (rows > 32 + dy) & (cols < 32)
            film = rng.normal(150, 20, (64, 64)) - 70 * lungs + 90 * infection
            _save(root, folder, f"{folder}-{i}", np.clip(film, 0, 255), lungs, infection)
    blank = np.zeros((64, 64), bool)
    _save(root, "Normal", "Normal-no-lungs", np.full((64, 64), 120), blank, blank)
    for kind in ("images", "lungs", "infection"):
        (root / EXCLUDED_FOLDER / kind).mkdir(parents=True)
        (root / EXCLUDED_FOLDER / kind / "broken.png").write_bytes(b"not an image")
    return root


def test_the_dataset_leaves_non_covid_out_and_names_a_missing_mask(tmp_path):
    root = _mask_dataset(tmp_path / "quex")
    images, folders = find_opacity_dataset(root)
    assert len(images) == 2 * PER_FOLDER + 1
    assert not any(EXCLUDED_FOLDER in str(p) for p in images)
    assert sorted(set(folders.tolist())) == [0, 1]
    (root / "COVID-19" / "infection" / "COVID-19-3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no infection mask for .*COVID-19-3"):
        find_opacity_dataset(root)


def test_a_pair_is_the_lung_box_with_its_infection():
    rows, cols = np.mgrid[:64, :64]
    lungs = _lungs(rows, cols, 0, 0)
    infection = lungs & (rows > 32) & (cols < 32)
    film = np.where(infection, 250, np.where(lungs, 60, 160)).astype(np.uint8)
    x, y = opacity_pair(film, lungs, infection, 32)
    assert x.shape == y.shape == (32, 32, 1) and set(np.unique(y)) == {0, 1}
    assert x[y == 1].mean() > 200  # the mask lies on the bright opacity in the crop
    assert y[:16].sum() == 0 and y[:, 16:].sum() == 0  # lower image-left quarter only


def _segmentation(lungs, opacity):
    return OpacitySegmentation(opacity, grade(lungs, opacity))


def test_metrics_of_perfect_and_of_empty_predictions():
    rows, cols = np.mgrid[:64, :64]
    lungs = _lungs(rows, cols, 0, 0)
    infection = lungs & (cols < 32)  # all of the patient's right lung: score 4
    empty = np.zeros_like(lungs)
    covid = np.array([True, True, False, True])
    perfect = opacity_metrics(
        [_segmentation(lungs, infection), _segmentation(lungs, infection),
         _segmentation(lungs, empty), None],
        [lungs] * 4, [infection, infection, empty, infection], covid)
    assert perfect["dice_mean"] == 1.0 and perfect["extent_abs_error_median_pts"] == 0.0
    assert perfect["score_within_2"] == perfect["score_exact"] == 1.0
    assert perfect["normal_extent_median_pct"] == 0.0 and perfect["normal_score_zero"] == 1.0
    assert (perfect["covid_films"], perfect["normal_films"], perfect["films_without_lungs"]) \
        == (2, 1, 1)
    assert perfect["score_confusion"][4][4] == 2 and perfect["score_confusion"][0][0] == 1

    missed = opacity_metrics([_segmentation(lungs, empty)], [lungs], [infection], covid[:1])
    assert missed["dice_mean"] == 0.0 and missed["extent_abs_error_median_pts"] == 50.0
    assert missed["score_within_2"] == 0.0 and missed["normal_extent_median_pct"] is None


def test_a_tiny_run_trains_saves_ships_and_resumes(tmp_path, tiny_lung_file):
    data = _mask_dataset(tmp_path / "quex")
    run, ship = tmp_path / "run", tmp_path / "shipped" / "opacity.keras"
    common = ["--data", str(data), "--run", str(run), "--size", "32", "--batch-size", "4",
              "--cache-dir", str(tmp_path / "cache"), "--lung-model", str(tiny_lung_file)]
    exported = train(parse_args([*common, "--epochs", "1", "--ship", str(ship)]))

    segmenter = OpacitySegmenter.from_file(ship)  # SHA-checked, loads as served
    meta = segmenter.metadata
    assert exported == run / "opacity_unet.keras" and exported.is_file()
    assert meta.input_size == 32 and meta.recipe["epochs"] == 1
    assert (meta.threshold, meta.min_component) in SETTINGS
    tried = [(r["threshold"], r["min_component"]) for r in meta.metrics["val_by_setting"]]
    assert tried == list(SETTINGS)
    assert sum(meta.splits.values()) == 2 * PER_FOLDER  # no Non-COVID, no film without lungs
    assert EXCLUDED_FOLDER in meta.trained_on
    drawn, served = (meta.metrics[k] for k in ("radiologists_lungs", "lung_segmenter_lungs"))
    assert drawn["films_without_lungs"] == 0
    assert drawn["covid_films"] + drawn["normal_films"] == meta.splits["test"]
    assert served["covid_films"] + served["normal_films"] + served["films_without_lungs"] \
        == meta.splits["test"]
    assert 0.0 <= drawn["dice_mean"] <= 1.0

    train(parse_args([*common, "--epochs", "2", "--resume"]))
    state = json.loads((run / "state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == [1, 2]  # continued, not restarted


def test_the_data_folder_defaults_to_the_shared_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("COVID_DATA_DIR", str(tmp_path))
    assert parse_args([]).data == tmp_path / "covid-qu-ex-masks"


def test_the_setting_keeps_normal_lungs_clear_before_it_maximises_dice():
    figures = {(0.4, 0.005): {"dice": 0.74, "normal_extent": 0.025},
               (0.5, 0.02): {"dice": 0.73, "normal_extent": 0.0},
               (0.6, 0.02): {"dice": 0.70, "normal_extent": 0.0}}
    assert choose_setting(figures) == (0.5, 0.02)  # 0.4 has the best Dice but outlines normals
    assert choose_setting(figures, normal_goal=0.03) == (0.4, 0.005)
    unclear = {k: {**v, "normal_extent": 0.05} for k, v in figures.items()}
    assert choose_setting(unclear) == (0.4, 0.005)  # none keeps the goal: best Dice


def _opacity_data() -> OpacityData:
    """Two validation films (one COVID with half a lung outlined, one normal) and a training one."""
    rows, cols = np.mgrid[:64, :64]
    lungs = _lungs(rows, cols, 0, 0)
    infection = lungs & (rows > 32) & (cols < 32)
    films = [np.full((64, 64), 120, np.uint8)] * 3
    return OpacityData(
        images=[], covid=np.array([True, False, True]),
        split={"train": np.array([2]), "val": np.array([0, 1]), "test": np.array([], int)},
        films=films, lungs=[lungs] * 3, infection=[infection, np.zeros_like(lungs), infection],
        x=np.zeros((3, 16, 16, 1), np.uint8), y=np.zeros((3, 16, 16, 1), np.uint8))


def test_validation_figures_of_a_network_that_outlines_everything():
    class Everywhere:
        def predict(self, x, batch_size, verbose):
            return np.ones((*x.shape[:3], 1), np.float32)

    data = _opacity_data()
    figures = val_settings(Everywhere(), data, ((0.5, 0.005), (0.5, 2.0)))
    assert figures[0.5, 0.005]["normal_extent"] == 1.0  # whole lungs outlined on normals
    assert 0.0 < figures[0.5, 0.005]["dice"] < 1.0
    # a smallest opacity larger than the lungs removes every outline
    assert figures[0.5, 2.0] == {"dice": 0.0, "normal_extent": 0.0}
