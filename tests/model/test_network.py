import keras
import numpy as np
import pytest

from covid.model.network import (
    GRADCAM_LAYER,
    ModelFileError,
    ModelMetadata,
    ResNetGrayPreprocess,
    build_model,
    file_sha256,
    load_model,
    metadata_path,
    read_metadata,
)


@pytest.fixture(scope="module")
def resnet():
    return build_model(input_size=None)


def test_preprocessing_matches_resnet50_preprocess_input():
    gray = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    ours = keras.ops.convert_to_numpy(ResNetGrayPreprocess()(gray))
    reference = keras.applications.resnet50.preprocess_input(np.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_resnet50_structure(resnet):
    bns = [layer for layer in resnet.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 53
    assert all(layer.momentum == 0.9 for layer in bns)
    assert resnet.get_layer(GRADCAM_LAYER).output.shape[-1] == 2048
    assert resnet.get_layer("logits").units == 2
    assert resnet.output_shape == (None, 2)
    assert 23e6 < resnet.count_params() < 24e6


def test_any_input_size_gives_probabilities(resnet):
    for size in (64, 112):
        probs = resnet.predict(np.full((2, size, size, 1), 128.0, "float32"), verbose=0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_save_load_round_trip_and_sha(tiny_model_file):
    model, meta = load_model(tiny_model_file)
    assert meta.sha256 == file_sha256(tiny_model_file)
    assert meta.class_names == ["COVID", "Normal"]
    assert isinstance(model, keras.Model)


def test_load_refuses_altered_file(tiny_model_file, tmp_path):
    altered = tmp_path / "altered.keras"
    data = bytearray(tiny_model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    metadata_path(altered).write_text(metadata_path(tiny_model_file).read_text())
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        load_model(altered)


def test_load_refuses_missing_files(tiny_model_file, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nothing.keras")
    lonely = tmp_path / "lonely.keras"
    lonely.write_bytes(tiny_model_file.read_bytes())
    with pytest.raises(ModelFileError, match="metadata not found"):
        load_model(lonely)


def test_metadata_ignores_unknown_keys(tmp_path):
    meta = ModelMetadata(threshold=0.3, temperature=1.7)
    text = meta.to_json().replace('"version"', '"future_key": 1,\n  "version"')
    (tmp_path / "m.json").write_text(text)
    loaded = read_metadata(tmp_path / "m.keras")
    assert (loaded.threshold, loaded.temperature, loaded.positive_index) == (0.3, 1.7, 0)
