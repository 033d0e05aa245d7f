"""The one model loader: SHA-256s, the classifier's own lung segmenter, settings' defaults.

Serving, evaluation, the OOD fit and the archive's actors load through it, so each
refuses a lung segmenter other than the one the classifier was trained with.
"""

import pytest

from covid.evaluation import cli, ood_fit
from covid.evaluation.scoring import load_scorer
from covid.explain.loading import UnknownLayerError, load_verified
from covid.model.metadata import ModelFileError, file_sha256, read_metadata
from covid.model.network import save_with_metadata
from covid.screening.engine import load_models
from covid.settings import LUNG_MODEL_ENV, MODEL_ENV
from tests.conftest import build_tiny_cnn, tiny_metadata_for
from tests.films import three_class_split
from tests.opacity_models import save_tiny_opacity


def _model_trained_with(tmp_path, lung_sha: str, input_mode: str = "full"):
    """A tiny classifier whose metadata names the lung segmenter it was trained with."""
    meta = tiny_metadata_for()
    meta.lung_model_sha256, meta.input_mode = lung_sha, input_mode
    path = tmp_path / "trained" / "model.keras"
    save_with_metadata(build_tiny_cnn(), meta, path)
    return path


@pytest.fixture
def mismatched(tmp_path, tiny_lung_file):
    """A classifier trained with another lung segmenter than ``tiny_lung_file``."""
    return _model_trained_with(tmp_path, "f" * 64)


def test_its_own_segmenter_is_loaded_and_the_opacity_one_only_when_asked(tmp_path,
                                                                         tiny_lung_file):
    own = file_sha256(tiny_lung_file)
    model = _model_trained_with(tmp_path, own)
    loaded = load_verified(model, tiny_lung_file)
    assert loaded.segmenter.metadata.sha256 == own and loaded.opacity is None
    opacity = save_tiny_opacity(tmp_path / "opacity.keras")
    with_opacity = load_verified(model, tiny_lung_file, opacity)
    assert with_opacity.opacity.metadata.sha256 == file_sha256(opacity)
    assert load_verified(model, tmp_path / "none.keras", opacity).opacity is None  # no lungs


def test_serving_refuses_another_lung_segmenter(mismatched, tiny_lung_file):
    with pytest.raises(ModelFileError, match="trained with another lung segmenter"):
        load_verified(mismatched, tiny_lung_file)
    with pytest.raises(ModelFileError, match="trained with another lung segmenter"):
        load_models(mismatched, tiny_lung_file, warm_up=False)


def test_evaluation_refuses_another_lung_segmenter(mismatched, tiny_lung_file, tmp_path):
    with pytest.raises(ModelFileError, match="trained with another lung segmenter"):
        load_scorer(mismatched, tiny_lung_file)
    split = three_class_split(tmp_path, per_source=1)
    with pytest.raises(SystemExit, match=r"^error: .*trained with another lung segmenter"):
        cli.main(["--model", str(mismatched), "--lung-model", str(tiny_lung_file),
                  "--split", str(split), "--masks", str(tmp_path / "none"), "--val-only"])


def test_the_ood_fit_refuses_another_lung_segmenter(mismatched, tiny_lung_file, tmp_path,
                                                    capsys):
    split = three_class_split(tmp_path, per_source=1)
    assert ood_fit.main(["--model", str(mismatched), "--lung-model", str(tiny_lung_file),
                         "--split", str(split)]) == 1
    assert "trained with another lung segmenter" in capsys.readouterr().err
    assert "ood" not in read_metadata(mismatched).extra  # nothing was written


def test_a_lung_focused_classifier_needs_its_segmenter(tmp_path, tiny_lung_file):
    model = _model_trained_with(tmp_path, "", input_mode="crop")
    with pytest.raises(ModelFileError, match="not found"):
        load_verified(model, tmp_path / "none.keras")
    # evaluation measures every map against the lungs: it needs them for any classifier
    whole_film = _model_trained_with(tmp_path / "w", "")
    assert load_verified(whole_film, tmp_path / "none.keras").segmenter is None
    with pytest.raises(ModelFileError, match="not found"):
        load_scorer(whole_film, tmp_path / "none.keras")


def test_an_altered_file_and_an_unknown_layer_are_refused(tmp_path, tiny_model_file):
    with pytest.raises(UnknownLayerError, match="no layer named 'conv9'"):
        load_verified(tiny_model_file, tmp_path / "none.keras", gradcam_layer="conv9")
    loaded = load_verified(tiny_model_file, tmp_path / "none.keras", gradcam_layer="conv1")
    assert loaded.classifier.metadata.gradcam_layer == "conv1"
    assert read_metadata(tiny_model_file).gradcam_layer != "conv1"  # in memory only
    altered = tmp_path / "altered" / "model.keras"
    save_with_metadata(build_tiny_cnn(), tiny_metadata_for(), altered)
    altered.write_bytes(altered.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        load_verified(altered, tmp_path / "none.keras")


def test_the_paths_default_to_the_settings(tmp_path, tiny_model_file, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any folder: the settings, not the working directory
    monkeypatch.setenv(MODEL_ENV, str(tiny_model_file))
    monkeypatch.setenv(LUNG_MODEL_ENV, str(tmp_path / "none.keras"))
    loaded = load_verified()
    assert loaded.classifier.metadata.sha256 == read_metadata(tiny_model_file).sha256
    assert loaded.segmenter is None
