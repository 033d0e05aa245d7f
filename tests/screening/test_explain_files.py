"""``python -m covid explain``: map, lungs, overlay and opacities per film, at its resolution."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid.__main__ import main
from covid.explain.inference import Classifier
from covid.model.lungs import LungSegmenter
from covid.screening.explain_files import unique_stems
from covid.screening.pipeline import analyse

NO_OPACITY = ["--opacity-model", "/nonexistent/opacity.keras"]
"""No opacity segmenter (the shipped one is found from the package otherwise)."""


def _png(path, seed, shape):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    pixels = 120 + 50 * np.sin(cols / 7.0 + seed) * np.cos(rows / 11.0) + rng.normal(0, 9, shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def films(tmp_path):
    root = tmp_path / "in"
    _png(root / "a.png", 1, (70, 80))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _png(root / "sub" / "a.png", 2, (96, 64))  # the same name again, another size
    return root


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_unique_stems_name_repeats_apart():
    paths = [Path(p) for p in ("x/a.png", "y/a.png", "A.dcm", "b", "y/a.jpg")]
    assert unique_stems(paths) == ["a", "a-2", "A-3", "b", "a-4"]


def test_explain_writes_three_files_per_film_and_survives_a_broken_one(
    films, tmp_path, tiny_model_file, tiny_lung_file, plant_lungs, capsys
):
    out = tmp_path / "out"
    status = main(["explain", "--out", str(out), "--model", str(tiny_model_file), *NO_OPACITY,
                   "--lung-model", str(tiny_lung_file), str(films), str(films / "missing.png")])
    assert status == 0
    err = capsys.readouterr().err
    assert "error: broken.png: " in err and "error: missing.png: no such file." in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.{kind}.png" for name in ("a", "a-2") for kind in ("cam", "lungs", "overlay"))

    classifier = Classifier.from_file(tiny_model_file)
    segmenter = LungSegmenter.from_file(tiny_lung_file)
    for name, film in (("a", films / "a.png"), ("a-2", films / "sub" / "a.png")):
        pixels = _read(film)
        cam, lungs, overlay = (_read(out / f"{name}.{kind}.png")
                               for kind in ("cam", "lungs", "overlay"))
        assert cam.shape == lungs.shape == pixels.shape  # the film's own resolution
        assert overlay.shape == (*pixels.shape, 3)
        assert cam.dtype == lungs.dtype == overlay.dtype == np.uint8
        np.testing.assert_array_equal(lungs > 127, plant_lungs.mask(pixels.shape))
        assert set(np.unique(lungs)) <= {0, 255}
        result = analyse([(film.name, film.read_bytes())], classifier, segmenter=segmenter,
                         max_side=None)[0]
        np.testing.assert_array_equal(cam, np.clip(np.rint(result.cam * 255), 0, 255))


def test_explain_a_chosen_class_and_method(films, tmp_path, tiny_model_file, tiny_lung_file,
                                           plant_lungs, capsys):
    out = tmp_path / "out"
    for target in ("COVID", "Normal"):
        assert main(["explain", "--out", str(out / target), "--target", target,
                     "--method", "gradcam++", "--model", str(tiny_model_file), *NO_OPACITY,
                     "--lung-model", str(tiny_lung_file), str(films / "a.png")]) == 0
        assert _read(out / target / "a.cam.png").shape == (70, 80)
    assert "explained" in capsys.readouterr().err


def test_explain_without_a_model_is_a_clear_error(films, tmp_path, capsys):
    status = main(["explain", "--out", str(tmp_path / "out"), "--model",
                   str(tmp_path / "none.keras"), str(films)])
    assert status == 1
    assert "error: model file not found" in capsys.readouterr().err


def test_explain_writes_the_opacity_mask_at_the_film_size(
    films, tmp_path, tiny_model_file, tiny_lung_file, plant_lungs
):
    from tests.opacity_models import save_tiny_opacity

    opacity = save_tiny_opacity(tmp_path / "opacity.keras")  # opacity over all of the lungs
    out = tmp_path / "out"
    assert main(["explain", "--out", str(out), "--model", str(tiny_model_file),
                 "--lung-model", str(tiny_lung_file), "--opacity-model", str(opacity),
                 str(films)]) == 0
    for name, film in (("a", films / "a.png"), ("a-2", films / "sub" / "a.png")):
        pixels = _read(film)
        mask = _read(out / f"{name}.opacity.png")
        assert mask.shape == pixels.shape and mask.dtype == np.uint8  # the film's own size
        assert set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask == 255, plant_lungs.mask(pixels.shape))

    none = tmp_path / "none"  # no lung field: refused, so nothing at all is written
    plant_lungs.mask_for = lambda shape: np.zeros(shape, bool)
    assert main(["explain", "--out", str(none), "--model", str(tiny_model_file),
                 "--lung-model", str(tiny_lung_file), "--opacity-model", str(opacity),
                 str(films / "a.png")]) == 0
    assert list(none.iterdir()) == []


def test_explain_without_the_opacity_segmenter_writes_no_mask(
    films, tmp_path, tiny_model_file, tiny_lung_file, plant_lungs
):
    out = tmp_path / "out"
    assert main(["explain", "--out", str(out), "--model", str(tiny_model_file), *NO_OPACITY,
                 "--lung-model", str(tiny_lung_file), str(films / "a.png")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.cam.png", "a.lungs.png",
                                                     "a.overlay.png"]


def test_explain_targets_any_class_of_the_model(films, tmp_path, tiny_cnn_factory,
                                                tiny_metadata, capsys):
    from covid.model.network import save_with_metadata

    tiny_metadata.class_names = ["COVID", "Other pneumonia", "Normal"]
    model = tmp_path / "three.keras"
    save_with_metadata(tiny_cnn_factory(n_classes=3), tiny_metadata, model)
    args = ["--model", str(model), "--lung-model", str(tmp_path / "none.keras"),
            str(films / "a.png")]
    maps = {}
    for target in ("Other pneumonia", "normal"):  # any case
        assert main(["explain", "--out", str(tmp_path / target), "--target", target,
                     *args]) == 0
        maps[target] = _read(tmp_path / target / "a.cam.png")
    assert not np.array_equal(maps["Other pneumonia"], maps["normal"])
    assert main(["explain", "--out", str(tmp_path / "x"), "--target", "Pneumothorax",
                 *args]) == 2
    err = capsys.readouterr().err
    assert "no class 'Pneumothorax'" in err and "COVID, Other pneumonia, Normal" in err
    assert "Traceback" not in err
