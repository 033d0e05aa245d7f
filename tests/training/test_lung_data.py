"""Training and serving make the same lung-focused inputs; radiologists' masks match by hash."""

from pathlib import Path

import numpy as np
import pytest

from covid.model.classes import CLASS_NAMES
from covid.model.metadata import ModelMetadata
from covid.training.catalogue import SOURCES, data_dir, find_films
from covid.training.lung_data import focused_dataset, match_masks

ROOT = Path(__file__).resolve().parents[2]
DATA = data_dir() / "covid19-radiography"
MASKS = data_dir() / "covid-qu-ex-masks"
LUNGS = ROOT / "models/lung_unet.keras"


def _need_real_data():
    if not DATA.is_dir():
        pytest.skip(f"dataset not found at {DATA}")
    if not LUNGS.is_file():
        pytest.skip(f"shipped lung segmenter not found at {LUNGS}")


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "contrast"), [
    ("crop+attenuate", "none"), ("crop", "none"), ("attenuate", "none"), ("crop+mask", "none"),
    ("crop", "equalise"), ("full", "equalise")])
def test_training_inputs_equal_the_served_inputs(mode, contrast, tiny_cnn_factory, tmp_path):
    """One preprocessing path: the training loader and the page's pipeline agree byte for byte."""
    _need_real_data()
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.screening.pipeline import analyse

    radiography = tuple(s for s in SOURCES if s.folder.startswith(f"{DATA.name}/"))
    films = find_films(data_dir(), radiography)
    paths = films.paths[:3] + films.paths[-3:]
    segmenter = LungSegmenter.from_file(LUNGS)
    trained_on = focused_dataset(paths, 64, mode, segmenter, cache_dir=tmp_path,
                                 contrast=contrast)
    meta = ModelMetadata(class_names=list(CLASS_NAMES), input_size=64, input_mode=mode,
                         input_contrast=contrast, gradcam_layer="last_conv")
    classifier = Classifier(tiny_cnn_factory(size=64), meta)
    served = analyse([(p.name, p.read_bytes()) for p in paths], classifier, segmenter=segmenter)
    for i, result in enumerate(served):
        assert result.error is None
        assert np.array_equal(result.model_input, trained_on.x[i]), paths[i].name
        assert (result.box.top, result.box.left, result.box.side) == tuple(trained_on.boxes[i])
    cached = focused_dataset(paths, 64, mode, segmenter, cache_dir=tmp_path, contrast=contrast)
    assert np.array_equal(cached.x, trained_on.x)


def test_whole_film_mode_needs_no_segmenter(tmp_path):
    from PIL import Image

    path = tmp_path / "film.png"
    Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (80, 1))).save(path)
    focused = focused_dataset((path,), 32, "full", None, cache_dir=None)
    assert focused.x.shape == (1, 32, 32, 1) and focused.ok.all()
    with pytest.raises(ValueError, match="segmenter"):
        focused_dataset((path,), 32, "crop", None, cache_dir=None)


@pytest.mark.slow
def test_the_same_film_resized_is_matched_to_its_masks(tmp_path):
    if not MASKS.is_dir():
        pytest.skip(f"COVID-QU-Ex masks not found at {MASKS}")
    from PIL import Image

    films = sorted((MASKS / "COVID-19" / "images").glob("*.jpg"))[:3]
    copies = []
    for i, film in enumerate(films):  # the same films at the other database's size and name
        copy = tmp_path / f"COVID-{i}.png"
        Image.open(film).convert("L").resize((224, 224), Image.Resampling.BILINEAR).save(copy)
        copies.append(copy)
    unrelated = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224), np.uint8)).save(
        unrelated)
    found = match_masks((*copies, unrelated), MASKS, cache_dir=tmp_path)
    assert found.index.tolist() == [0, 1, 2]
    for j, film in enumerate(films):
        expected = np.asarray(Image.open(MASKS / "COVID-19" / "lungs" / f"{film.stem}.png")) > 0
        assert np.array_equal(found.lungs[j], expected)
